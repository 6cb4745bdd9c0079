//! Day-end classification and provisioning of the whole book with polars.
//!
//! The job computes, per loan, the same results as the pure rules of
//! `underwrite_domain`: [`days_past_due`](underwrite_domain::classification::days_past_due),
//! borrower-wise NPA with [`classify_borrower`](underwrite_domain::classification::classify_borrower)
//! and [`ProvisioningPolicy::provision`]. It reads the `positions` partition of
//! the date and the previous day's `snapshot` (for the NPA dates that carry
//! over), and writes the date's `snapshot` and `changes` partitions.
//!
//! Every money column is Int64 paise and the provision is computed in
//! integer paise, so no amount passes through a float.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use polars::prelude::*;
use underwrite_domain::classification::{
    DOUBTFUL2_FROM_MONTHS, DOUBTFUL3_FROM_MONTHS, SMA1_FROM_DPD, SMA2_FROM_DPD, SUBSTANDARD_MONTHS,
    npa_class,
};
use underwrite_domain::provisioning::{FULL, is_unsecured_exposure};
use underwrite_domain::{
    AssetClass, BusinessDate, ClassificationPolicy, Paise, ProvisioningPolicy, ProvisioningRegime,
};

use crate::lake::{
    self, CHANGES, POSITIONS, SNAPSHOT, check_schema, partition_path, positions_schema,
    read_partition_if_exists, write_parquet_atomic,
};

/// Largest outstanding principal, in paise, that the integer arithmetic
/// supports: the provision units (`outstanding × 10 000 bp + 5 000`) and the
/// rate numerator (`provision × 10 000 + outstanding / 2`) are both at most
/// `outstanding × 10 001`, which must fit in i64. This is about ₹9.2 lakh
/// crore per loan; polars integer arithmetic wraps on overflow, so larger
/// amounts are rejected.
pub const MAX_OUTSTANDING_PAISE: i64 = i64::MAX / (FULL + 1);

/// The rules a day-end run applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobPolicy {
    /// NPA threshold.
    pub classification: ClassificationPolicy,
    /// Provisioning regime and standard-asset rate.
    pub provisioning: ProvisioningPolicy,
}

impl JobPolicy {
    /// Encodes the policy as Parquet key-value metadata. Day-end stores it
    /// with each snapshot so that a report can check it uses the same rules.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let regime = match self.provisioning.regime {
            ProvisioningRegime::Bank => "bank",
            ProvisioningRegime::Nbfc => "nbfc",
        };
        vec![
            (REGIME_KEY.to_string(), regime.to_string()),
            (
                STANDARD_BP_KEY.to_string(),
                self.provisioning.standard_bp.to_string(),
            ),
            (
                NPA_AFTER_DPD_KEY.to_string(),
                self.classification.npa_after_dpd.to_string(),
            ),
        ]
    }
}

/// Snapshot metadata key of the provisioning regime, `bank` or `nbfc`.
pub const REGIME_KEY: &str = "underwrite.provisioning_regime";
/// Snapshot metadata key of the standard-asset rate in basis points.
pub const STANDARD_BP_KEY: &str = "underwrite.standard_bp";
/// Snapshot metadata key of the NPA threshold in days past due.
pub const NPA_AFTER_DPD_KEY: &str = "underwrite.npa_after_dpd";

/// Per-class totals: class, loans, outstanding principal, provision.
pub type ClassTotal = (AssetClass, usize, Paise, Paise);

/// The outcome of one day-end run.
#[derive(Debug, Clone, PartialEq)]
pub struct DayEndSummary {
    /// Business date classified.
    pub as_of: BusinessDate,
    /// Loans in the snapshot.
    pub loans: usize,
    /// Loans whose class differs from the previous snapshot.
    pub changes: usize,
    /// Totals for each of the nine classes, in [`AssetClass::ALL`] order.
    pub by_class: Vec<ClassTotal>,
    /// Outstanding principal of the whole book.
    pub total_outstanding: Paise,
    /// Provision of the whole book.
    pub total_provision: Paise,
    /// Date of the snapshot whose NPA dates carried over (the previous
    /// day), or `None` when there was none.
    pub prior_snapshot: Option<BusinessDate>,
    /// Path of the written `snapshot` partition.
    pub snapshot_path: PathBuf,
    /// Path of the written `changes` partition.
    pub changes_path: PathBuf,
    /// Wall-clock seconds from reading the positions to writing the changes.
    pub seconds: f64,
}

/// Returns the column names and types of the `snapshot` table, in file order.
pub fn snapshot_schema() -> Schema {
    Schema::from_iter([
        Field::new("loan_id".into(), DataType::String),
        Field::new("borrower_id".into(), DataType::String),
        Field::new("as_of".into(), DataType::Date),
        Field::new("dpd".into(), DataType::Int32),
        Field::new("asset_class".into(), DataType::String),
        Field::new("npa_date".into(), DataType::Date),
        Field::new("overdue".into(), DataType::Int64),
        Field::new("outstanding_principal".into(), DataType::Int64),
        Field::new("secured_value".into(), DataType::Int64),
        Field::new("provision_rate_bp".into(), DataType::Int64),
        Field::new("provision".into(), DataType::Int64),
    ])
}

/// Returns the column names and types a prior snapshot must have: the subset of
/// [`snapshot_schema`] that [`classify_frame`] and [`changes_frame`] read.
pub fn prior_schema() -> Schema {
    Schema::from_iter([
        Field::new("loan_id".into(), DataType::String),
        Field::new("borrower_id".into(), DataType::String),
        Field::new("asset_class".into(), DataType::String),
        Field::new("npa_date".into(), DataType::Date),
    ])
}

/// Runs day-end for `as_of`: reads the `positions` partition of `as_of` and
/// the `snapshot` of the previous day if present, then writes the `snapshot`
/// and `changes` partitions of `as_of`.
///
/// Without a snapshot for the previous day the run starts a new chain: no
/// NPA date carries over, so an NPA borrower whose DPD has fallen to the
/// threshold or below is classified as performing. A warning is logged when
/// an older snapshot exists, because that means a day was skipped.
pub fn run_day_end(
    lake: &Path,
    as_of: BusinessDate,
    policy: &JobPolicy,
) -> anyhow::Result<DayEndSummary> {
    let started = Instant::now();
    let positions_path = partition_path(lake, POSITIONS, as_of);
    let positions = read_partition_if_exists(lake, POSITIONS, as_of)?.with_context(|| {
        format!(
            "positions for {as_of} not found: {} does not exist. Export the loan positions \
             for {as_of} to the lake first, then run day-end again.",
            positions_path.display()
        )
    })?;

    let prior_date = as_of.pred();
    let prior = read_partition_if_exists(lake, SNAPSHOT, prior_date)?;
    if prior.is_none()
        && let Some(older) = lake::latest_snapshot_before(lake, prior_date)?
    {
        tracing::warn!(
            %as_of,
            missing = %prior_date,
            latest = %older,
            "no snapshot for the previous day; NPA dates before the gap do not carry over"
        );
    }
    let prior_snapshot = prior.as_ref().map(|_| prior_date);

    let mut snapshot = classify_frame(positions, prior.clone(), as_of, policy)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("day-end classification for {as_of} failed"))?;
    let mut changes = changes_frame(&snapshot, prior.as_ref())
        .map_err(anyhow::Error::from)
        .with_context(|| format!("comparing the {as_of} snapshot with {prior_date} failed"))?;
    let by_class = class_totals(&snapshot)?;

    let snapshot_path = lake::write_partition_with_metadata(
        lake,
        SNAPSHOT,
        as_of,
        &mut snapshot,
        &policy.to_metadata(),
    )?;
    let changes_path = lake::write_partition(lake, CHANGES, as_of, &mut changes)?;

    let summary = DayEndSummary {
        as_of,
        loans: snapshot.height(),
        changes: changes.height(),
        total_outstanding: by_class.iter().map(|total| total.2).sum(),
        total_provision: by_class.iter().map(|total| total.3).sum(),
        by_class,
        prior_snapshot,
        snapshot_path,
        changes_path,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        %as_of,
        loans = summary.loans,
        changes = summary.changes,
        seconds = summary.seconds,
        "day-end written"
    );
    Ok(summary)
}

/// Classifies and provisions every loan of `positions` at the end of
/// `as_of`, given the previous day's snapshot (`None` on the first day).
///
/// `positions` has the columns of [`positions_schema`] and `prior` at least
/// those of [`prior_schema`]. Returns one row per loan with the columns of
/// [`snapshot_schema`], sorted by `loan_id`.
pub fn classify_frame(
    positions: DataFrame,
    prior: Option<DataFrame>,
    as_of: BusinessDate,
    policy: &JobPolicy,
) -> PolarsResult<DataFrame> {
    check_schema(&positions, &positions_schema(), POSITIONS)?;
    check_no_nulls(
        &positions,
        &[
            "loan_id",
            "borrower_id",
            "overdue",
            "outstanding_principal",
            "secured_value",
            "unsecured_exposure",
            "loss_identified",
        ],
        POSITIONS,
    )?;
    check_unique_loans(&positions, POSITIONS)?;
    check_outstanding_range(&positions)?;
    let npa_after_dpd = i32::try_from(policy.classification.npa_after_dpd).map_err(|_| {
        polars_err!(
            InvalidOperation: "invalid npa_after_dpd {}: at most {} days are supported",
            policy.classification.npa_after_dpd,
            i32::MAX
        )
    })?;
    let as_of_days = as_of.epoch_days();

    let frame = positions
        .lazy()
        .with_column(dpd_expr(as_of_days).alias("dpd"))
        .with_column(facility_npa_expr(as_of_days, npa_after_dpd).alias("facility_npa"));
    let frame = join_prior_npa(frame, prior)?;
    let borrower = [col("borrower_id")];
    frame
        .with_columns([
            col("dpd")
                .max()
                .over(borrower.clone())?
                .alias("borrower_max_dpd"),
            col("facility_npa")
                .min()
                .over(borrower)?
                .alias("borrower_new_npa"),
        ])
        .with_column(npa_date_expr().alias("npa_days"))
        .with_column(class_code_expr(as_of).alias("class_code"))
        .with_columns(provision_base_exprs())
        .with_columns([
            rate_expr(&policy.provisioning, |rates| rates.0).alias("secured_bp"),
            rate_expr(&policy.provisioning, |rates| rates.1).alias("unsecured_bp"),
        ])
        .with_column(provision_expr().alias("provision"))
        .select([
            col("loan_id"),
            col("borrower_id"),
            lit(as_of_days).cast(DataType::Date).alias("as_of"),
            col("dpd"),
            class_name_expr().alias("asset_class"),
            col("npa_days").cast(DataType::Date).alias("npa_date"),
            col("overdue"),
            col("outstanding_principal"),
            col("secured_value"),
            effective_rate_expr().alias("provision_rate_bp"),
            col("provision"),
        ])
        .sort(["loan_id"], SortMultipleOptions::default())
        .collect()
}

/// Lists the loans of `snapshot` whose class differs from `prior`, with
/// columns `loan_id, borrower_id, previous_class, asset_class, dpd`, sorted
/// by `loan_id`. A loan absent from `prior`, or every loan when there is no
/// prior snapshot, counts as previously STANDARD. Loans only in `prior` are
/// not listed.
pub fn changes_frame(snapshot: &DataFrame, prior: Option<&DataFrame>) -> PolarsResult<DataFrame> {
    let standard = lit(AssetClass::Standard.as_str());
    let frame = match prior {
        Some(prior) => {
            check_prior(prior)?;
            let previous = prior
                .clone()
                .lazy()
                .select([col("loan_id"), col("asset_class").alias("previous_class")]);
            snapshot
                .clone()
                .lazy()
                .left_join(previous, col("loan_id"), col("loan_id"))
                .with_column(col("previous_class").fill_null(standard))
        }
        None => snapshot
            .clone()
            .lazy()
            .with_column(standard.alias("previous_class")),
    };
    frame
        .filter(col("previous_class").neq(col("asset_class")))
        .select([
            col("loan_id"),
            col("borrower_id"),
            col("previous_class"),
            col("asset_class"),
            col("dpd"),
        ])
        .sort(["loan_id"], SortMultipleOptions::default())
        .collect()
}

/// Sums a snapshot's loans, outstanding principal and provision for each of
/// the nine classes, in [`AssetClass::ALL`] order, zeros included.
pub fn class_totals(snapshot: &DataFrame) -> anyhow::Result<Vec<ClassTotal>> {
    let grouped = snapshot
        .clone()
        .lazy()
        .group_by([col("asset_class")])
        .agg([
            len().alias("loans"),
            col("outstanding_principal").sum().alias("outstanding"),
            col("provision").sum().alias("provision"),
        ])
        .collect()?;
    let names = grouped.column("asset_class")?.str()?;
    let loans = grouped.column("loans")?.cast(&DataType::UInt64)?;
    let loans = loans.u64()?;
    let outstanding = grouped.column("outstanding")?.i64()?;
    let provision = grouped.column("provision")?.i64()?;

    let mut totals: Vec<ClassTotal> = AssetClass::ALL
        .iter()
        .map(|class| (*class, 0, Paise::ZERO, Paise::ZERO))
        .collect();
    for index in 0..grouped.height() {
        let name = names.get(index).unwrap_or("");
        let class: AssetClass = name
            .parse()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("invalid snapshot: unknown asset class {name:?}"))?;
        let total = &mut totals[class_code(class) as usize];
        total.1 = loans.get(index).unwrap_or(0) as usize;
        total.2 = Paise::new(outstanding.get(index).unwrap_or(0));
        total.3 = Paise::new(provision.get(index).unwrap_or(0));
    }
    Ok(totals)
}

/// Returns the position of a class in [`AssetClass::ALL`], the code used
/// inside the polars plan.
fn class_code(class: AssetClass) -> i32 {
    AssetClass::ALL
        .iter()
        .position(|candidate| *candidate == class)
        .expect("AssetClass::ALL lists every class") as i32
}

fn check_prior(prior: &DataFrame) -> PolarsResult<()> {
    check_schema(prior, &prior_schema(), SNAPSHOT)?;
    check_no_nulls(prior, &["loan_id", "borrower_id", "asset_class"], SNAPSHOT)?;
    check_unique_loans(prior, SNAPSHOT)
}

fn check_no_nulls(frame: &DataFrame, columns: &[&str], table: &str) -> PolarsResult<()> {
    for name in columns {
        let nulls = frame.column(name)?.null_count();
        if nulls > 0 {
            polars_bail!(
                ComputeError: "invalid {table} frame: column {name:?} has {nulls} null values"
            );
        }
    }
    Ok(())
}

fn check_unique_loans(frame: &DataFrame, table: &str) -> PolarsResult<()> {
    let unique = frame.column("loan_id")?.n_unique()?;
    if unique != frame.height() {
        polars_bail!(
            Duplicate: "invalid {table} frame: {} rows but {unique} distinct loan_id values",
            frame.height()
        );
    }
    Ok(())
}

fn check_outstanding_range(positions: &DataFrame) -> PolarsResult<()> {
    let largest = positions.column("outstanding_principal")?.i64()?.max();
    if let Some(largest) = largest.filter(|value| *value > MAX_OUTSTANDING_PAISE) {
        polars_bail!(
            ComputeError: "outstanding principal {} exceeds the supported maximum {}",
            Paise::new(largest),
            Paise::new(MAX_OUTSTANDING_PAISE)
        );
    }
    Ok(())
}

/// DPD as in `days_past_due`: `as_of − oldest unpaid due + 1` when the due
/// date is on or before `as_of`, else 0. Dates are compared as epoch days.
fn dpd_expr(as_of_days: i32) -> Expr {
    let due = col("oldest_unpaid_due").cast(DataType::Int32);
    when(
        due.clone()
            .is_not_null()
            .and(due.clone().lt_eq(lit(as_of_days))),
    )
    .then(lit(as_of_days) - due + lit(1i32))
    .otherwise(lit(0i32))
}

/// Computes the date a facility first exceeded the NPA threshold, as in
/// `ClassificationPolicy::npa_date`: `as_of − (dpd − threshold − 1)` when
/// `dpd > threshold`, else null.
fn facility_npa_expr(as_of_days: i32, npa_after_dpd: i32) -> Expr {
    let dpd = col("dpd");
    when(dpd.clone().gt(lit(npa_after_dpd)))
        .then(lit(as_of_days) - (dpd - lit(npa_after_dpd) - lit(1i32)))
        .otherwise(lit(NULL).cast(DataType::Int32))
}

/// Adds `prior_npa`, the borrower's NPA date in the previous snapshot as
/// epoch days, or null. It is the earliest of the borrower's loan dates,
/// which are all equal in a snapshot written by this job.
fn join_prior_npa(frame: LazyFrame, prior: Option<DataFrame>) -> PolarsResult<LazyFrame> {
    let Some(prior) = prior else {
        return Ok(frame.with_column(lit(NULL).cast(DataType::Int32).alias("prior_npa")));
    };
    check_prior(&prior)?;
    let by_borrower = prior
        .lazy()
        .group_by([col("borrower_id")])
        .agg([col("npa_date")
            .cast(DataType::Int32)
            .min()
            .alias("prior_npa")]);
    Ok(frame.left_join(by_borrower, col("borrower_id"), col("borrower_id")))
}

/// Computes the borrower's NPA date as in `classify_borrower`: null without arrears
/// on any facility, else the earlier of the prior NPA date and the earliest
/// facility NPA date, either of which may be null.
fn npa_date_expr() -> Expr {
    let prior = col("prior_npa");
    let new = col("borrower_new_npa");
    let earlier = when(prior.clone().is_null())
        .then(new.clone())
        .when(new.clone().is_null())
        .then(prior.clone())
        .when(prior.clone().lt(new.clone()))
        .then(prior)
        .otherwise(new);
    when(col("borrower_max_dpd").gt(lit(0i32)))
        .then(earlier)
        .otherwise(lit(NULL).cast(DataType::Int32))
}

/// Returns the latest NPA date whose anniversary `months` later is on or
/// before `as_of`: `npa_date.add_months(months) <= as_of` is true exactly
/// for NPA dates up to the returned date.
///
/// `add_months` (clamping to a shorter month's end) never decreases as the
/// date increases, so the dates that satisfy the inequality are all those
/// up to one boundary, found here by bisection with the domain's own
/// `add_months`. NPA ageing then needs only date comparisons in polars.
pub fn anniversary_cutoff(as_of: BusinessDate, months: u32) -> BusinessDate {
    // One month adds at most 31 days, so `low` satisfies the inequality,
    // and `high = as_of` does not because any positive month count moves
    // the date forward.
    let mut low = as_of.add_days(-(31 * i64::from(months)) - 1);
    let mut high = as_of;
    while high.days_since(low) > 1 {
        let middle = low.add_days(high.days_since(low) / 2);
        if middle.add_months(months) <= as_of {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

/// Computes the class code: by DPD band for a performing borrower
/// (`performing_class`), LOSS for a loss-identified loan of an NPA borrower,
/// else by the NPA's age as in `npa_class`.
fn class_code_expr(as_of: BusinessDate) -> Expr {
    let code = |class: AssetClass| lit(class_code(class));
    let days = |date: BusinessDate| lit(date.epoch_days());
    let dpd = col("dpd");
    let npa = col("npa_days");

    let performing = when(dpd.clone().eq(lit(0i32)))
        .then(code(AssetClass::Standard))
        .when(dpd.clone().lt(lit(SMA1_FROM_DPD as i32)))
        .then(code(AssetClass::Sma0))
        .when(dpd.lt(lit(SMA2_FROM_DPD as i32)))
        .then(code(AssetClass::Sma1))
        .otherwise(code(AssetClass::Sma2));

    // `as_of < npa_date.add_months(m)` is `npa_date > anniversary_cutoff(as_of, m)`.
    let substandard_after = anniversary_cutoff(as_of, SUBSTANDARD_MONTHS);
    let doubtful1_after = anniversary_cutoff(as_of, DOUBTFUL2_FROM_MONTHS);
    let doubtful2_after = anniversary_cutoff(as_of, DOUBTFUL3_FROM_MONTHS);
    let non_performing = when(col("loss_identified"))
        .then(code(AssetClass::Loss))
        .when(npa.clone().gt(days(substandard_after)))
        .then(code(AssetClass::Substandard))
        .when(npa.clone().gt(days(doubtful1_after)))
        .then(code(AssetClass::Doubtful1))
        .when(npa.clone().gt(days(doubtful2_after)))
        .then(code(AssetClass::Doubtful2))
        .otherwise(code(AssetClass::Doubtful3));

    when(npa.is_null())
        .then(performing)
        .otherwise(non_performing)
}

/// Maps `class_code` to the class name (`AssetClass::as_str`).
fn class_name_expr() -> Expr {
    let mut name = lit(NULL).cast(DataType::String);
    for class in AssetClass::ALL.iter().rev() {
        name = when(col("class_code").eq(lit(class_code(*class))))
            .then(lit(class.as_str()))
            .otherwise(name);
    }
    name
}

/// `outstanding_base` (outstanding floored at zero) and `secured_part`
/// (security floored at zero and capped at the outstanding), as in
/// `ProvisioningPolicy::provision`.
fn provision_base_exprs() -> [Expr; 2] {
    let outstanding = col("outstanding_principal");
    let outstanding_base = when(outstanding.clone().gt(lit(0i64)))
        .then(outstanding)
        .otherwise(lit(0i64));
    let secured = col("secured_value");
    let secured = when(secured.clone().gt(lit(0i64)))
        .then(secured)
        .otherwise(lit(0i64));
    let secured_part = when(secured.clone().gt(outstanding_base.clone()))
        .then(outstanding_base.clone())
        .otherwise(secured);
    [
        outstanding_base.alias("outstanding_base"),
        secured_part.alias("secured_part"),
    ]
}

/// Looks up one of the two rates of `ProvisioningPolicy::rates_bp` for each
/// row's class and unsecured-exposure flag. The table is built by calling the
/// domain function for every class, so the rates cannot drift from it.
fn rate_expr(policy: &ProvisioningPolicy, pick: fn((i64, i64)) -> i64) -> Expr {
    let mut rate = lit(NULL).cast(DataType::Int64);
    for class in AssetClass::ALL.iter().rev() {
        let secured_loan = pick(policy.rates_bp(*class, false));
        let unsecured_loan = pick(policy.rates_bp(*class, true));
        let value = if secured_loan == unsecured_loan {
            lit(secured_loan)
        } else {
            when(col("unsecured_exposure"))
                .then(lit(unsecured_loan))
                .otherwise(lit(secured_loan))
        };
        rate = when(col("class_code").eq(lit(class_code(*class))))
            .then(value)
            .otherwise(rate);
    }
    rate
}

/// `(secured_part × secured_bp + unsecured_part × unsecured_bp + 5 000) div
/// 10 000`: half-up rounding to the paisa, as `div_round_half_up` does.
/// Every operand is non-negative, so polars' truncating integer `/` is the
/// floor division of the domain rule. [`MAX_OUTSTANDING_PAISE`] keeps the
/// product within i64.
fn provision_expr() -> Expr {
    let secured_part = col("secured_part");
    let unsecured_part = col("outstanding_base") - secured_part.clone();
    let units = secured_part * col("secured_bp") + unsecured_part * col("unsecured_bp");
    (units + lit(FULL / 2)) / lit(FULL)
}

/// `effective_rate_bp(provision, outstanding_principal)`: the provision in
/// basis points of the outstanding, rounded half-up, 0 when nothing is
/// outstanding. The division is used only where the outstanding is
/// positive, so truncation is floor division there.
fn effective_rate_expr() -> Expr {
    let outstanding = col("outstanding_principal");
    let rate =
        (col("provision") * lit(FULL) + outstanding.clone() / lit(2i64)) / outstanding.clone();
    when(outstanding.gt(lit(0i64)))
        .then(rate)
        .otherwise(lit(0i64))
}

/// A small deterministic generator (splitmix64), so that a seed always
/// gives the same book on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound` (`bound > 0`). The modulo bias does not
    /// matter for test data.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn percent(&mut self, chance: u64) -> bool {
        self.below(100) < chance
    }
}

/// DPD values at the edges of the bands and of the usual NPA thresholds.
const BOUNDARY_DPD: [u32; 27] = [
    1, 2, 29, 30, 31, 32, 59, 60, 61, 62, 89, 90, 91, 92, 119, 120, 121, 150, 151, 180, 181, 365,
    366, 730, 731, 1461, 1462,
];

/// Generates a synthetic book of `loans` loans for `as_of` from `seed`:
/// the positions (columns of [`positions_schema`]) and the previous day's
/// snapshot (columns of [`prior_schema`] plus `as_of`).
///
/// About 30% of loans share a borrower with the loan before them. DPD is 0
/// for about 45% of loans, a band or threshold edge for 15%, else spread
/// over 1–2000. About 20% of borrowers have an NPA date in the prior
/// snapshot, half of them on a month end (29 February included), and 10% of
/// loans are missing from it. Security, the unsecured-exposure flag and
/// loss flags vary. Loan ids are `L` and nine digits, in row order.
pub fn generate_book(loans: usize, seed: u64, as_of: BusinessDate) -> (DataFrame, DataFrame) {
    let mut random = SplitMix64(seed);
    let mut positions = Vec::with_capacity(loans);
    let mut prior_rows: Vec<(usize, AssetClass, Option<BusinessDate>)> = Vec::new();
    let mut borrower = 0usize;
    let mut prior_npa: Option<BusinessDate> = None;

    for index in 0..loans {
        if index == 0 || !random.percent(30) {
            borrower += 1;
            prior_npa = random
                .percent(20)
                .then(|| random_prior_npa(&mut random, as_of));
        }
        let dpd = match random.below(100) {
            0..45 => 0,
            45..60 => BOUNDARY_DPD[random.below(BOUNDARY_DPD.len() as u64) as usize],
            _ => 1 + random.below(2000) as u32,
        };
        let oldest_unpaid_due = if dpd > 0 {
            Some(as_of.add_days(1 - i64::from(dpd)))
        } else if random.percent(5) {
            // Not yet due: DPD stays 0.
            Some(as_of.add_days(1 + random.below(30) as i64))
        } else {
            None
        };
        let outstanding = if random.percent(3) {
            0
        } else {
            // Up to ₹50 lakh, in paise.
            random.below(500_000_000 + 1) as i64
        };
        let overdue = if dpd > 0 {
            1 + random.below(outstanding as u64 / 4 + 1) as i64
        } else {
            0
        };
        let secured = if random.percent(40) {
            0
        } else {
            random.below(outstanding as u64 * 3 / 2 + 1) as i64
        };
        let loss_identified = random.percent(3);
        positions.push(lake::PositionRow {
            loan_id: format!("L{index:09}"),
            borrower_id: format!("B{borrower:09}"),
            oldest_unpaid_due,
            overdue: Paise::new(overdue),
            outstanding_principal: Paise::new(outstanding),
            secured_value: Paise::new(secured),
            unsecured_exposure: is_unsecured_exposure(Paise::new(outstanding), Paise::new(secured)),
            loss_identified,
        });

        if !random.percent(10) {
            let yesterday = as_of.pred();
            let class = match prior_npa {
                Some(_) if loss_identified => AssetClass::Loss,
                Some(npa) => npa_class(yesterday, npa),
                None => ClassificationPolicy::default().performing_class(dpd.saturating_sub(1)),
            };
            prior_rows.push((index, class, prior_npa));
        }
    }

    let positions = lake::positions_frame(&positions).expect("generated positions form a frame");
    let prior = prior_frame(&positions, &prior_rows, as_of.pred());
    (positions, prior)
}

/// Picks an NPA date before `as_of`: any day up to about five and a half
/// years back, a month end, or the latest 29 February.
fn random_prior_npa(random: &mut SplitMix64, as_of: BusinessDate) -> BusinessDate {
    let back = as_of.add_days(-1 - random.below(2000) as i64);
    match random.below(4) {
        0 | 1 => back,
        2 => {
            let end = back.month_end();
            if end < as_of {
                end
            } else {
                back.add_days(-31).month_end()
            }
        }
        _ => {
            let mut year = as_of.year();
            loop {
                if let Some(leap_day) = BusinessDate::from_ymd(year, 2, 29)
                    && leap_day < as_of
                {
                    return leap_day;
                }
                year -= 1;
            }
        }
    }
}

fn prior_frame(
    positions: &DataFrame,
    rows: &[(usize, AssetClass, Option<BusinessDate>)],
    date: BusinessDate,
) -> DataFrame {
    let loan_ids = positions
        .column("loan_id")
        .expect("loan_id column")
        .str()
        .expect("text");
    let borrower_ids = positions
        .column("borrower_id")
        .expect("borrower_id column")
        .str()
        .expect("text");
    let pick = |ids: &StringChunked| -> Vec<String> {
        rows.iter()
            .map(|(index, _, _)| ids.get(*index).unwrap_or_default().to_string())
            .collect()
    };
    let npa: Int32Chunked = rows
        .iter()
        .map(|(_, _, npa)| npa.map(BusinessDate::epoch_days))
        .collect();
    let as_of: Int32Chunked = rows.iter().map(|_| Some(date.epoch_days())).collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("loan_id".into(), pick(loan_ids)),
            Column::new("borrower_id".into(), pick(borrower_ids)),
            as_of.with_name("as_of".into()).into_date().into_column(),
            Column::new(
                "asset_class".into(),
                rows.iter()
                    .map(|(_, class, _)| class.as_str())
                    .collect::<Vec<_>>(),
            ),
            npa.with_name("npa_date".into()).into_date().into_column(),
        ],
    )
    .expect("generated prior snapshot forms a frame")
}

/// Generates a book of `loans` loans and times its day-end in memory:
/// [`classify_frame`], [`changes_frame`] and writing both Parquet files to a
/// temporary folder, which is removed afterwards. Returns the seconds taken
/// and the process's peak resident memory in bytes (`VmHWM` in
/// `/proc/self/status`, 0 where that file does not exist). The peak
/// includes the generated book and anything the process did before.
pub fn bench_day_end(loans: usize) -> anyhow::Result<(f64, u64)> {
    let as_of = BusinessDate::from_ymd(2025, 3, 31).expect("valid date");
    let (positions, prior) = generate_book(loans, 0x5EED_0001, as_of);
    let folder = std::env::temp_dir().join(format!(
        "underwrite-day-end-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default()
    ));

    let started = Instant::now();
    let result = (|| {
        let mut snapshot =
            classify_frame(positions, Some(prior.clone()), as_of, &JobPolicy::default())?;
        let mut changes = changes_frame(&snapshot, Some(&prior))?;
        write_parquet_atomic(&folder.join("snapshot.parquet"), &mut snapshot)?;
        write_parquet_atomic(&folder.join("changes.parquet"), &mut changes)?;
        anyhow::Ok(())
    })();
    let seconds = started.elapsed().as_secs_f64();
    let cleanup = std::fs::remove_dir_all(&folder);
    result?;
    cleanup.with_context(|| format!("failed to remove {}", folder.display()))?;
    Ok((seconds, peak_resident_bytes()))
}

/// `VmHWM` of `/proc/self/status` in bytes, or 0 where it is unavailable.
fn peak_resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kilobytes| kilobytes * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    #[test]
    fn anniversary_cutoff_matches_add_months() {
        let as_of_dates = [
            "2021-02-28",
            "2021-03-01",
            "2024-02-28",
            "2024-02-29",
            "2024-03-01",
            "2025-04-30",
            "2025-05-31",
            "2025-12-31",
        ];
        for as_of in as_of_dates.map(date) {
            for months in [1, 12, 24, 48] {
                let cutoff = anniversary_cutoff(as_of, months);
                assert!(cutoff.add_months(months) <= as_of, "{as_of} {months}");
                assert!(cutoff.succ().add_months(months) > as_of, "{as_of} {months}");
            }
        }
    }

    #[test]
    fn leap_day_npa_reaches_d1_on_28_february() {
        let npa = date("2020-02-29");
        assert_eq!(npa.add_months(12), date("2021-02-28"));
        assert!(npa > anniversary_cutoff(date("2021-02-27"), 12));
        assert!(npa <= anniversary_cutoff(date("2021-02-28"), 12));
    }

    #[test]
    fn generated_book_is_deterministic() {
        let as_of = date("2024-03-01");
        let (first, first_prior) = generate_book(200, 7, as_of);
        let (second, second_prior) = generate_book(200, 7, as_of);
        assert!(first.equals_missing(&second));
        assert!(first_prior.equals_missing(&second_prior));
        let (other, _) = generate_book(200, 8, as_of);
        assert!(!first.equals_missing(&other));
    }
}

//! The NPA classification report of one business date, from its day-end
//! `snapshot`.
//!
//! Files written to the output folder, for `as_of` = YYYY-MM-DD:
//!
//! - `npa_report_<as_of>.csv` and `npa_report_<as_of>.parquet`: one row per
//!   loan, sorted by `loan_id`, with the columns `loan_id, borrower_id,
//!   as_of, outstanding_principal, overdue_amount, dpd, asset_class,
//!   npa_date, secured_value, provision_rate, provision_amount`. Money is a
//!   rupee string with two decimals (`"1234.50"`) and `provision_rate` a
//!   percent string with two decimals (`"0.40"`) in both files, so the
//!   Parquet file contains exactly the CSV's values. The lake's `snapshot`
//!   table has the same amounts as Int64 paise. Dates are `YYYY-MM-DD` in
//!   the CSV and Parquet dates in the Parquet file; `npa_date` is empty (null)
//!   for a performing loan. `dpd` is an integer.
//! - `npa_summary_<as_of>.csv`: count, outstanding and provision of each of
//!   the nine classes, from STANDARD to LOSS, then a TOTAL row.
//! - `npa_summary_<as_of>.md`: the same table with the gross NPA ratio, for
//!   a compliance officer to read.
//!
//! The files depend only on the snapshot, the date and the policy, so a
//! rerun writes byte-identical files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polars::prelude::*;
use underwrite_domain::provisioning::effective_rate_bp;
use underwrite_domain::{BusinessDate, Paise, ProvisioningRegime};

use crate::day_end::{ClassTotal, JobPolicy, class_totals, snapshot_schema};
use crate::lake::{
    SNAPSHOT, check_schema, partition_path, read_parquet_metadata, read_partition_if_exists,
    write_atomic, write_csv_atomic, write_parquet_atomic,
};

/// Columns of the per-loan report, in file order.
pub const REPORT_COLUMNS: [&str; 11] = [
    "loan_id",
    "borrower_id",
    "as_of",
    "outstanding_principal",
    "overdue_amount",
    "dpd",
    "asset_class",
    "npa_date",
    "secured_value",
    "provision_rate",
    "provision_amount",
];

/// Files and totals written by [`npa_report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// Business date reported.
    pub as_of: BusinessDate,
    /// Loans in the report.
    pub loans: usize,
    /// Outstanding principal of all loans.
    pub total_outstanding: Paise,
    /// Provision of all loans.
    pub total_provision: Paise,
    /// Class, loans, outstanding and provision for each of the nine classes,
    /// in [`AssetClass::ALL`] order.
    pub by_class: Vec<ClassTotal>,
    /// Paths of the files written: report CSV, report Parquet, summary CSV,
    /// summary Markdown.
    pub files: Vec<PathBuf>,
}

/// Writes the NPA report of `as_of` into `out_dir` (created if missing) from
/// the lake's `snapshot` partition of that date. `policy` must be the one
/// day-end recorded in the snapshot; it names the regime and NPA threshold
/// in the Markdown summary.
pub fn npa_report(
    lake: &Path,
    as_of: BusinessDate,
    out_dir: &Path,
    policy: &JobPolicy,
) -> anyhow::Result<ReportSummary> {
    let snapshot_path = partition_path(lake, SNAPSHOT, as_of);
    let snapshot = read_partition_if_exists(lake, SNAPSHOT, as_of)?.with_context(|| {
        format!(
            "snapshot for {as_of} not found: {} does not exist. Run day-end for {as_of} \
             first, then create the report again.",
            snapshot_path.display()
        )
    })?;
    check_schema(&snapshot, &snapshot_schema(), SNAPSHOT)?;
    check_policy(&snapshot_path, as_of, policy)?;
    let snapshot = snapshot.sort(["loan_id"], SortMultipleOptions::default())?;

    let by_class = class_totals(&snapshot)?;
    let summary = ReportSummary {
        as_of,
        loans: snapshot.height(),
        total_outstanding: by_class.iter().map(|total| total.2).sum(),
        total_provision: by_class.iter().map(|total| total.3).sum(),
        by_class,
        files: vec![
            out_dir.join(format!("npa_report_{as_of}.csv")),
            out_dir.join(format!("npa_report_{as_of}.parquet")),
            out_dir.join(format!("npa_summary_{as_of}.csv")),
            out_dir.join(format!("npa_summary_{as_of}.md")),
        ],
    };

    let mut rows = report_frame(&snapshot)?;
    write_csv_atomic(&summary.files[0], &mut rows)?;
    write_parquet_atomic(&summary.files[1], &mut rows)?;
    let mut table = summary_frame(&summary)?;
    write_csv_atomic(&summary.files[2], &mut table)?;
    let markdown = summary_markdown(&summary, policy);
    write_atomic(&summary.files[3], |file| {
        std::io::Write::write_all(file, markdown.as_bytes())?;
        Ok(())
    })?;

    tracing::info!(%as_of, loans = summary.loans, folder = %out_dir.display(), "NPA report written");
    Ok(summary)
}

/// Rejects a report whose policy differs from the one recorded in the
/// snapshot's metadata by day-end. A snapshot without that metadata (not
/// written by [`run_day_end`](crate::day_end::run_day_end)) is accepted.
fn check_policy(
    snapshot_path: &Path,
    as_of: BusinessDate,
    policy: &JobPolicy,
) -> anyhow::Result<()> {
    let expected = policy.to_metadata();
    let recorded: Vec<(String, String)> = read_parquet_metadata(snapshot_path)?
        .into_iter()
        .filter(|(key, _)| expected.iter().any(|(expected_key, _)| expected_key == key))
        .collect();
    if recorded.is_empty() || recorded == expected {
        return Ok(());
    }
    let describe = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    bail!(
        "the snapshot for {as_of} was computed with {} but the report was requested with {}. \
         Create the report with the policy day-end used, or rerun day-end for {as_of} with \
         this policy.",
        describe(&recorded),
        describe(&expected)
    )
}

/// Builds the per-loan report rows of a snapshot, with the columns of
/// [`REPORT_COLUMNS`].
pub fn report_frame(snapshot: &DataFrame) -> anyhow::Result<DataFrame> {
    let rupees = |name: &str, alias: &str| -> anyhow::Result<Column> {
        let values: StringChunked = snapshot
            .column(name)?
            .i64()?
            .iter()
            .map(|paise| paise.map(|paise| Paise::new(paise).to_string()))
            .collect();
        Ok(values.with_name(alias.into()).into_column())
    };
    let rate: StringChunked = snapshot
        .column("provision_rate_bp")?
        .i64()?
        .iter()
        .map(|bp| bp.map(format_bp_as_percent))
        .collect();

    let columns = vec![
        snapshot.column("loan_id")?.clone(),
        snapshot.column("borrower_id")?.clone(),
        snapshot.column("as_of")?.clone(),
        rupees("outstanding_principal", "outstanding_principal")?,
        rupees("overdue", "overdue_amount")?,
        snapshot.column("dpd")?.clone(),
        snapshot.column("asset_class")?.clone(),
        snapshot.column("npa_date")?.clone(),
        rupees("secured_value", "secured_value")?,
        rate.with_name("provision_rate".into()).into_column(),
        rupees("provision", "provision_amount")?,
    ];
    Ok(DataFrame::new(snapshot.height(), columns)?)
}

/// Builds the summary table: one row per class in [`AssetClass::ALL`] order, then
/// TOTAL; amounts as rupee strings.
fn summary_frame(summary: &ReportSummary) -> PolarsResult<DataFrame> {
    let mut names: Vec<&str> = Vec::with_capacity(10);
    let mut counts: Vec<u64> = Vec::with_capacity(10);
    let mut outstanding: Vec<String> = Vec::with_capacity(10);
    let mut provision: Vec<String> = Vec::with_capacity(10);
    for (class, loans, class_outstanding, class_provision) in &summary.by_class {
        names.push(class.as_str());
        counts.push(*loans as u64);
        outstanding.push(class_outstanding.to_string());
        provision.push(class_provision.to_string());
    }
    names.push("TOTAL");
    counts.push(summary.loans as u64);
    outstanding.push(summary.total_outstanding.to_string());
    provision.push(summary.total_provision.to_string());

    DataFrame::new(
        names.len(),
        vec![
            Column::new("asset_class".into(), names),
            Column::new("count".into(), counts),
            Column::new("outstanding".into(), outstanding),
            Column::new("provision".into(), provision),
        ],
    )
}

/// Renders the Markdown summary.
fn summary_markdown(summary: &ReportSummary, policy: &JobPolicy) -> String {
    let npa: Vec<&ClassTotal> = summary
        .by_class
        .iter()
        .filter(|total| total.0.is_npa())
        .collect();
    let npa_loans: usize = npa.iter().map(|total| total.1).sum();
    let npa_outstanding: Paise = npa.iter().map(|total| total.2).sum();
    let gross_npa_bp = effective_rate_bp(npa_outstanding, summary.total_outstanding);
    let regime = match policy.provisioning.regime {
        ProvisioningRegime::Bank => "bank (RBI IRACP norms)",
        ProvisioningRegime::Nbfc => "NBFC (RBI prudential norms for NBFCs)",
    };

    let mut text = String::new();
    let _ = writeln!(text, "# NPA classification report, {}", summary.as_of);
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "- As of: end of day {} (IST business date)",
        summary.as_of
    );
    let _ = writeln!(
        text,
        "- Regime: {regime}; NPA after {} days past due; standard-asset provision {}%",
        policy.classification.npa_after_dpd,
        format_bp_as_percent(policy.provisioning.standard_bp)
    );
    let _ = writeln!(text, "- Loans: {}", summary.loans);
    let _ = writeln!(
        text,
        "- NPA loans (SUBSTANDARD, DOUBTFUL-1 to 3, LOSS): {npa_loans}"
    );
    let _ = writeln!(
        text,
        "- Gross NPA: ₹{} of ₹{} outstanding principal = {}%",
        indian_rupees(npa_outstanding),
        indian_rupees(summary.total_outstanding),
        format_bp_as_percent(gross_npa_bp)
    );
    let _ = writeln!(
        text,
        "- Provision required: ₹{}",
        indian_rupees(summary.total_provision)
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "| Asset class | Loans | Outstanding (₹) | Provision (₹) |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|");
    for (class, loans, outstanding, provision) in &summary.by_class {
        let _ = writeln!(
            text,
            "| {class} | {loans} | {} | {} |",
            indian_rupees(*outstanding),
            indian_rupees(*provision)
        );
    }
    let _ = writeln!(
        text,
        "| **TOTAL** | **{}** | **{}** | **{}** |",
        summary.loans,
        indian_rupees(summary.total_outstanding),
        indian_rupees(summary.total_provision)
    );
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "Gross NPA ratio: outstanding principal of NPA loans divided by the total outstanding \
         principal, rounded half-up to 0.01%. Per-loan detail: npa_report_{}.csv.",
        summary.as_of
    );
    text
}

/// Basis points as a percent with two decimals: 40 → `"0.40"`.
fn format_bp_as_percent(bp: i64) -> String {
    let sign = if bp < 0 { "-" } else { "" };
    let bp = bp.unsigned_abs();
    format!("{sign}{}.{:02}", bp / 100, bp % 100)
}

/// Formats an amount with Indian digit grouping (lakh and crore): 520000.00 →
/// `"5,20,000.00"`.
fn indian_rupees(amount: Paise) -> String {
    let plain = amount.to_string();
    let (sign, unsigned) = match plain.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", plain.as_str()),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "00"));
    let mut grouped = String::new();
    if whole.len() > 3 {
        let (head, last_three) = whole.split_at(whole.len() - 3);
        let mut pairs = Vec::new();
        let mut rest = head;
        while rest.len() > 2 {
            let (front, pair) = rest.split_at(rest.len() - 2);
            pairs.push(pair);
            rest = front;
        }
        grouped.push_str(rest);
        for pair in pairs.iter().rev() {
            grouped.push(',');
            grouped.push_str(pair);
        }
        grouped.push(',');
        grouped.push_str(last_three);
    } else {
        grouped.push_str(whole);
    }
    format!("{sign}{grouped}.{fraction}")
}

#[cfg(test)]
mod tests {
    use underwrite_domain::AssetClass;

    use super::*;

    #[test]
    fn percent_from_basis_points() {
        assert_eq!(format_bp_as_percent(40), "0.40");
        assert_eq!(format_bp_as_percent(5_500), "55.00");
        assert_eq!(format_bp_as_percent(3_333), "33.33");
        assert_eq!(format_bp_as_percent(0), "0.00");
    }

    #[test]
    fn indian_grouping() {
        let cases = [
            (0, "0.00"),
            (99_999, "999.99"),
            (100_000, "1,000.00"),
            (52_000_000, "5,20,000.00"),
            (1_000_000_000, "1,00,00,000.00"),
            (123_456_789_012, "1,23,45,67,890.12"),
            (-52_000_000, "-5,20,000.00"),
        ];
        for (paise, expected) in cases {
            assert_eq!(indian_rupees(Paise::new(paise)), expected, "{paise}");
        }
    }

    #[test]
    fn summary_lists_all_classes() {
        let summary = ReportSummary {
            as_of: "2024-03-31".parse().unwrap(),
            loans: 0,
            total_outstanding: Paise::ZERO,
            total_provision: Paise::ZERO,
            by_class: AssetClass::ALL
                .iter()
                .map(|class| (*class, 0, Paise::ZERO, Paise::ZERO))
                .collect(),
            files: Vec::new(),
        };
        let text = summary_markdown(&summary, &JobPolicy::default());
        for class in AssetClass::ALL {
            assert!(text.contains(&format!("| {class} |")), "{class}");
        }
        assert!(text.contains("= 0.00%"), "{text}");
    }
}

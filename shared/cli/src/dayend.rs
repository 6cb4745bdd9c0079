//! Day-end and report commands: export loan positions from the ledgers to the
//! lake, run the polars day-end job over a range of dates, and build the NPA
//! report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use underwrite_domain::ledger::LedgerIndex;
use underwrite_domain::provisioning::is_unsecured_exposure;
use underwrite_domain::{BusinessDate, Paise};
use underwrite_jobs::day_end::{JobPolicy, run_day_end};
use underwrite_jobs::lake::{PositionRow, write_positions};
use underwrite_jobs::report::{ReportSummary, npa_report};
use underwrite_mechanism::{LOAN_PREFIX, LoanRecord};
use underwrite_runtime::Store;

use crate::config::Config;

/// Arguments of `underwrite day-end`.
#[derive(Args)]
pub struct DayEndArgs {
    /// Run for this one business date (YYYY-MM-DD). Its previous day's snapshot must exist for NPA status to carry over.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub date: Option<BusinessDate>,
    /// First date of a range; by default the earliest disbursal date.
    #[arg(long)]
    pub from: Option<BusinessDate>,
    /// Last date of a range.
    #[arg(long)]
    pub to: Option<BusinessDate>,
}

/// Arguments of `underwrite report npa`.
#[derive(Args)]
pub struct ReportArgs {
    /// The business date reported (YYYY-MM-DD).
    #[arg(long)]
    pub as_of: BusinessDate,
    /// Folder for the report files.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

/// Builds the job settings from the config.
pub fn job_policy(config: &Config) -> JobPolicy {
    JobPolicy {
        classification: config.classification,
        provisioning: config.provisioning,
    }
}

/// Loads every loan record in the store, by loan id.
pub async fn load_loans(store: &dyn Store) -> anyhow::Result<Vec<LoanRecord>> {
    let mut loans = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(LOAN_PREFIX, after.as_deref(), 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, read) in page {
            let record: LoanRecord = read
                .parse(&key)
                .with_context(|| format!("stored value at key {key:?} is not a loan record"))?;
            loans.push(record);
        }
    }
    Ok(loans)
}

/// Positions of the loans live at the end of `as_of`: disbursed on or before
/// it and with principal outstanding or an amount overdue.
/// `indexes` holds each loan's running totals, in the order of `loans`, so
/// that a range of dates builds them once.
pub fn positions_on(
    loans: &[LoanRecord],
    indexes: &[LedgerIndex<'_>],
    as_of: BusinessDate,
) -> Vec<PositionRow> {
    loans
        .iter()
        .zip(indexes)
        .filter(|(loan, _)| loan.terms.disbursed_on <= as_of)
        .filter_map(|(loan, index)| {
            let position = index.position(as_of);
            if position.outstanding_principal == Paise::ZERO && position.overdue == Paise::ZERO {
                return None;
            }
            Some(PositionRow {
                loan_id: loan.terms.loan_id.to_string(),
                borrower_id: loan.terms.borrower_id.to_string(),
                oldest_unpaid_due: position.oldest_unpaid_due,
                overdue: position.overdue,
                outstanding_principal: position.outstanding_principal,
                secured_value: loan.terms.secured_value,
                unsecured_exposure: is_unsecured_exposure(
                    loan.terms.principal,
                    loan.terms.secured_value,
                ),
                loss_identified: false,
            })
        })
        .collect()
}

/// Principal outstanding over every loan at the end of `as_of`, straight
/// from the ledgers: what the report's total must reconcile to.
pub fn ledger_outstanding(loans: &[LoanRecord], as_of: BusinessDate) -> Paise {
    loans
        .iter()
        .filter(|loan| loan.terms.disbursed_on <= as_of)
        .map(|loan| loan.ledger.position(as_of).outstanding_principal)
        .sum()
}

/// Exports positions and runs the day-end job for every date from `from` to
/// `to`, showing progress. Each date's snapshot carries NPA status to the
/// next, so a range is run in date order.
pub fn run_range(
    config: &Config,
    loans: &[LoanRecord],
    from: BusinessDate,
    to: BusinessDate,
) -> anyhow::Result<usize> {
    if from > to {
        bail!("invalid range: --from {from} is after --to {to}");
    }
    let policy = job_policy(config);
    let days = to.days_since(from) as u64 + 1;
    let bar = ProgressBar::new(days);
    bar.set_style(
        ProgressStyle::with_template("day-end {bar:30} {pos}/{len} days, {msg}")
            .expect("template is valid"),
    );
    let indexes: Vec<LedgerIndex<'_>> = loans.iter().map(|loan| loan.ledger.index()).collect();
    let mut day = from;
    let mut last_report = std::time::Instant::now();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while day <= to {
        let rows = positions_on(loans, &indexes, day);
        write_positions(&config.lake_path, day, &rows)
            .with_context(|| format!("Failed to export positions for {day}"))?;
        let summary = run_day_end(&config.lake_path, day, &policy)
            .with_context(|| format!("Failed to run day-end for {day}"))?;
        bar.set_message(format!(
            "{day}: {} loans, {} changes",
            summary.loans, summary.changes
        ));
        bar.inc(1);
        if !interactive && last_report.elapsed().as_secs() >= 5 {
            eprintln!(
                "day-end: {day} done ({} loans, {} changes)",
                summary.loans, summary.changes
            );
            last_report = std::time::Instant::now();
        }
        day = day.succ();
    }
    bar.finish_and_clear();
    Ok(days as usize)
}

/// Finds the earliest disbursal date in the book.
pub fn first_disbursal(loans: &[LoanRecord]) -> Option<BusinessDate> {
    loans.iter().map(|loan| loan.terms.disbursed_on).min()
}

pub async fn day_end(config: &Config, args: DayEndArgs) -> anyhow::Result<ExitCode> {
    let store = crate::commands::open_store(config)?;
    let loans = load_loans(store.as_ref()).await?;
    let (from, to) = match (args.date, args.from, args.to) {
        (Some(date), _, _) => (date, date),
        (None, from, Some(to)) => {
            let Some(first) = from.or_else(|| first_disbursal(&loans)) else {
                bail!(
                    "no loans in the store {}; nothing to classify",
                    config.store_path.display()
                );
            };
            (first, to)
        }
        (None, _, None) => bail!("give --date DATE, or --to DATE with an optional --from DATE"),
    };
    let days = tokio::task::block_in_place(|| run_range(config, &loans, from, to))?;
    println!(
        "Day-end ran for {days} dates, {from} to {to}; snapshots are under {}.",
        config.lake_path.join("snapshot").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Builds the NPA report for `as_of` after running day-end from the first
/// disbursal to `as_of`, and checks that its total reconciles to the ledger.
pub async fn build_npa_report(
    config: &Config,
    as_of: BusinessDate,
    out: &Path,
) -> anyhow::Result<(ReportSummary, Paise)> {
    let store = crate::commands::open_store(config)?;
    let loans = load_loans(store.as_ref()).await?;
    let Some(first) = first_disbursal(&loans) else {
        bail!(
            "no loans in the store {}; run `underwrite run --input FILE --until-idle` first",
            config.store_path.display()
        );
    };
    if as_of < first {
        bail!("--as-of {as_of} is before the first disbursal ({first}); no loan existed then");
    }
    // Day-end runs from the first disbursal so that every snapshot reflects
    // the ledger as it is now, backdated payments and reversals included.
    tokio::task::block_in_place(|| run_range(config, &loans, first, as_of))?;
    let closed = underwrite_npa::closed_through(store.as_ref())
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if closed.is_none_or(|closed| closed < as_of) {
        let last = closed.map_or("no date".to_string(), |d| d.to_string());
        eprintln!(
            "warning: --as-of {as_of} is after the last closed business date ({last}); the report assumes no payment arrived after the ledger's last entry"
        );
    }
    let summary = npa_report(&config.lake_path, as_of, out, &job_policy(config))?;
    let ledger_total = ledger_outstanding(&loans, as_of);
    Ok((summary, ledger_total))
}

/// Prints a report summary a person can scan.
pub fn print_report(summary: &ReportSummary, ledger_total: Paise) {
    println!(
        "NPA classification as of {}: {} loans",
        summary.as_of, summary.loans
    );
    println!(
        "{:<12} {:>7} {:>18} {:>16}",
        "class", "loans", "outstanding", "provision"
    );
    // Paise's Display ignores width, so amounts are padded as text.
    for (class, count, outstanding, provision) in &summary.by_class {
        println!(
            "{:<12} {count:>7} {:>18} {:>16}",
            class.as_str(),
            outstanding.to_string(),
            provision.to_string()
        );
    }
    println!(
        "{:<12} {:>7} {:>18} {:>16}",
        "TOTAL",
        summary.loans,
        summary.total_outstanding.to_string(),
        summary.total_provision.to_string()
    );
    let status = if summary.total_outstanding == ledger_total {
        "reconciles"
    } else {
        "DOES NOT reconcile"
    };
    println!("Outstanding {status} to the ledger ({ledger_total}).");
    for file in &summary.files {
        println!("  {}", file.display());
    }
}

pub async fn report_npa(config: &Config, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let (summary, ledger_total) = build_npa_report(config, args.as_of, &args.out).await?;
    print_report(&summary, ledger_total);
    Ok(if summary.total_outstanding == ledger_total {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! Day-end and report commands: export loan positions from the ledgers to the
//! lake, run the polars day-end job over a range of dates, and build the NPA
//! report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use underwrite_domain::{BusinessDate, Paise};
use underwrite_jobs::day_end::{DayEndSummary, JobPolicy};
use underwrite_jobs::ledgers::{
    classify_range, first_disbursal, load_loans, npa_report_from_loans,
};
use underwrite_jobs::report::ReportSummary;
use underwrite_mechanism::LoanRecord;

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

/// Exports positions and runs the day-end job for every date from `from` to
/// `to`, showing progress.
pub fn run_range(
    config: &Config,
    loans: &[LoanRecord],
    from: BusinessDate,
    to: BusinessDate,
) -> anyhow::Result<usize> {
    let policy = job_policy(config);
    let mut progress = DayEndProgress::new(from, to);
    let days = classify_range(&config.lake_path, &policy, loans, from, to, |summary| {
        progress.day_done(summary)
    })?;
    progress.finish();
    Ok(days)
}

/// A progress bar over a range of dates, or a line every 5 s when stderr
/// is not a terminal.
struct DayEndProgress {
    bar: ProgressBar,
    last_report: std::time::Instant,
    interactive: bool,
}

impl DayEndProgress {
    fn new(from: BusinessDate, to: BusinessDate) -> Self {
        let days = if from > to {
            0
        } else {
            to.days_since(from) as u64 + 1
        };
        let bar = ProgressBar::new(days);
        bar.set_style(
            ProgressStyle::with_template("day-end {bar:30} {pos}/{len} days, {msg}")
                .expect("template is valid"),
        );
        DayEndProgress {
            bar,
            last_report: std::time::Instant::now(),
            interactive: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn day_done(&mut self, summary: &DayEndSummary) {
        let day = summary.as_of;
        self.bar.set_message(format!(
            "{day}: {} loans, {} changes",
            summary.loans, summary.changes
        ));
        self.bar.inc(1);
        if !self.interactive && self.last_report.elapsed().as_secs() >= 5 {
            eprintln!(
                "day-end: {day} done ({} loans, {} changes)",
                summary.loans, summary.changes
            );
            self.last_report = std::time::Instant::now();
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
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
    let policy = job_policy(config);
    let store_name = config.store_path.display().to_string();
    let from = first_disbursal(&loans).unwrap_or(as_of);
    let mut progress = DayEndProgress::new(from, as_of);
    let (summary, ledger_total) = tokio::task::block_in_place(|| {
        npa_report_from_loans(
            &config.lake_path,
            &policy,
            &loans,
            as_of,
            out,
            &store_name,
            |day| progress.day_done(day),
        )
    })?;
    progress.finish();
    let closed = underwrite_npa::closed_through(store.as_ref())
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if closed.is_none_or(|closed| closed < as_of) {
        let last = closed.map_or("none yet: no day.closed was handled".to_string(), |d| {
            d.to_string()
        });
        eprintln!(
            "warning: --as-of {as_of} is after the last closed business date ({last}); the report assumes no payment arrived after the ledger's last entry"
        );
    }
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

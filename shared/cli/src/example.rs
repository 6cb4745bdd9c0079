//! `underwrite example german-credit`: the main job on the bundled real
//! applicants, from the CSV to the NPA report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use underwrite_domain::BusinessDate;
use underwrite_jobs::german_credit::{ConversionOptions, convert};

use crate::config::Config;

/// Arguments of `underwrite example german-credit`.
#[derive(Args)]
pub struct GermanCreditArgs {
    /// The applicants CSV (Statlog German Credit Data, CC BY 4.0).
    #[arg(long, default_value = "examples/german_credit/german_credit.csv")]
    pub csv: PathBuf,
    /// Output folder: events, store, lake and report go here.
    #[arg(long, default_value = "out/german-credit")]
    pub out: PathBuf,
    /// Seed of the repayment-behaviour generator; the same seed gives the same events.
    #[arg(long, default_value_t = ConversionOptions::default().seed)]
    pub seed: u64,
    /// Last business date simulated and the report's as-of date.
    #[arg(long, default_value_t = ConversionOptions::default().as_of)]
    pub as_of: BusinessDate,
}

pub async fn german_credit(config: &Config, args: GermanCreditArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("Failed to create output folder {}", args.out.display()))?;
    let mut config = config.clone();
    config.store_path = args.out.join("underwrite.db");
    config.lake_path = args.out.join("lake");
    // The example signs its events with keys of its own, created on first
    // use, so that it runs on a fresh clone with no set-up step.
    config.identities.key_dir = args.out.join("keys");
    config.identities.create_missing = true;

    // 1. Applicants to input events.
    let csv = std::fs::read_to_string(&args.csv).with_context(|| {
        format!(
            "Failed to read {}; run from the repository root or pass --csv PATH",
            args.csv.display()
        )
    })?;
    let defaults = ConversionOptions::default();
    let options = ConversionOptions {
        seed: args.seed,
        as_of: args.as_of,
        last_disbursal: defaults.last_disbursal.min(args.as_of),
        ..defaults
    };
    let conversion = convert(&csv, &options)?;
    let events_path = args.out.join("events.jsonl");
    let mut text = conversion.lines.join("\n");
    text.push('\n');
    std::fs::write(&events_path, text)
        .with_context(|| format!("Failed to write {}", events_path.display()))?;
    println!(
        "1/4 Converted {} applicants into {} loans: {} repayments, {} reversals, {} days closed -> {}",
        csv.lines().count().saturating_sub(1),
        conversion.loans,
        conversion.repayments,
        conversion.reversals,
        conversion.days_closed,
        events_path.display()
    );

    // 2. Events through the configured services.
    let runtime = crate::commands::open_runtime(&config)?;
    let published = crate::commands::publish_input(&runtime, &events_path, false, false).await?;
    let totals = crate::commands::run_services(&runtime, config.services.clone(), true).await?;
    let dead = runtime.store().dead_letter_count()?;
    println!(
        "2/4 Published {published} events; services handled {} records and emitted {} events (classification changes and penal charges); {dead} dead letters",
        totals.handled, totals.emitted
    );

    // 3 and 4. Day-end for every date, then the report.
    let report_dir = args.out.join("report");
    let (summary, ledger_total) =
        crate::dayend::build_npa_report(&config, args.as_of, &report_dir).await?;
    println!("3/4 Day-end ran for every date to {}", args.as_of);
    println!("4/4 NPA report written to {}", report_dir.display());
    println!();
    crate::dayend::print_report(&summary, ledger_total);
    let verification = underwrite_audit::verify(runtime.store().as_ref()).await?;
    match &verification.first_broken {
        None => println!("Audit ledger intact: {} entries.", verification.entries),
        Some((seq, reason)) => println!("Audit ledger BROKEN at entry {seq}: {reason}"),
    }
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    let ok = summary.total_outstanding == ledger_total && verification.first_broken.is_none();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `underwrite example german-credit`: the main job on the bundled real
//! applicants, from their applications through origination to the NPA
//! report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use underwrite_domain::BusinessDate;
use underwrite_events::payloads::LoanDisbursed;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_jobs::german_credit::{ConversionOptions, origination_inputs, repayment_events};
use underwrite_kfs::{StoredKfs, kfs_key};
use underwrite_runtime::{EmbeddedRuntime, Store};
use underwrite_saga::steps::find_event;
use underwrite_saga::{
    SagaRecord, SagaRunner, SagaStatus, StatusCounts, StepStatus, list_sagas, load_saga,
    origination, summarise,
};

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

fn write_lines(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("Failed to write {}", path.display()))
}

pub async fn german_credit(config: &Config, args: GermanCreditArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("Failed to create output folder {}", args.out.display()))?;
    let mut config = config.clone();
    config.store_path = args.out.join("underwrite.db");
    config.lake_path = args.out.join("lake");
    // The example signs its events with keys of its own, created on first
    // use, so that it runs on a fresh clone with no set-up step. Its policy
    // file is rewritten from the default, so that a folder left by an
    // earlier release allows the types this one emits.
    config.identities.key_dir = args.out.join("keys");
    config.identities.create_missing = true;
    let policy_path = underwrite_identity::KeyDir::new(&config.identities.key_dir).policy_path();
    if policy_path.exists() {
        crate::identity::default_policy().save(&policy_path)?;
    }

    // 1. Applicants to consents and applications.
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
    let inputs = origination_inputs(&csv, &options)?;
    let consents_path = args.out.join("consents.jsonl");
    let applications_path = args.out.join("applications.jsonl");
    write_lines(&consents_path, &inputs.consents)?;
    write_lines(&applications_path, &inputs.applications)?;
    println!(
        "1/6 Read {} applicants: {} consents, {} applications -> {}",
        csv.lines().count().saturating_sub(1),
        inputs.consents.len(),
        inputs.applications.len(),
        applications_path.display()
    );

    // 2. Origination: consent, fraud, risk, pricing, KFS, acceptance,
    // sanction and disbursal, as one saga per application.
    let runtime = crate::commands::open_runtime(&config)?;
    crate::commands::publish_input(&runtime, &consents_path, false, false, None).await?;
    crate::commands::run_services(&runtime, config.services.clone(), true, None).await?;
    let definition = origination();
    let runner = SagaRunner::new(&runtime, &definition)?;
    let mut applications = inputs
        .applications
        .iter()
        .map(|line| parse_input_line(line))
        .collect::<Result<Vec<Envelope>, _>>()?;
    runtime.sign_input(&mut applications)?;
    for application in &applications {
        runner.start(application)?;
    }
    settle(&runner, "applications").await?;
    let accepted = accept_issued_kfs(&runtime, &runner)?;
    settle(&runner, "accepted KFSs").await?;
    let sagas = load_sagas(&runtime, None)?;
    let summary = summarise(runtime.store())?;
    let origination_dir = args.out.join("origination");
    std::fs::create_dir_all(&origination_dir)
        .with_context(|| format!("Failed to create {}", origination_dir.display()))?;
    let samples = write_sample_kfs(&runtime, &sagas, &origination_dir).await?;
    let report = origination_report(&sagas, &summary, accepted, &samples);
    let summary_path = origination_dir.join("origination_summary.md");
    std::fs::write(&summary_path, &report.markdown)
        .with_context(|| format!("Failed to write {}", summary_path.display()))?;
    let decisions_path = origination_dir.join("decisions.csv");
    std::fs::write(&decisions_path, &report.csv)
        .with_context(|| format!("Failed to write {}", decisions_path.display()))?;
    println!(
        "2/6 Origination ran for {} applications: {} approved and disbursed, {} declined -> {}",
        summary.applications,
        summary.completed,
        summary.declined_total(),
        origination_dir.display()
    );
    println!();
    print!("{}", report.text);
    println!();

    // 3. Repayment histories of the loans disbursed.
    let disbursals = disbursals(&sagas)?;
    let products = config.products.clone();
    let conversion = repayment_events(&csv, &options, &disbursals, &|product| {
        products.settings(product).due_day_rule
    })?;
    let events_path = args.out.join("events.jsonl");
    write_lines(&events_path, &conversion.lines)?;
    println!(
        "3/6 Drew the repayment histories of {} loans: {} repayments, {} reversals, {} days closed -> {}",
        conversion.loans,
        conversion.repayments,
        conversion.reversals,
        conversion.days_closed,
        events_path.display()
    );

    // 4. Events through the configured services.
    let published = crate::commands::publish_input(&runtime, &events_path, false, false, None)
        .await?
        .published;
    let totals =
        crate::commands::run_services(&runtime, config.services.clone(), true, None).await?;
    let dead = runtime.store().dead_letter_count()?;
    println!(
        "4/6 Published {published} events; services handled {} records and emitted {} events (classification changes and penal charges); {dead} dead letters",
        totals.handled, totals.emitted
    );

    // 5 and 6. Day-end for every date, then the report.
    let report_dir = args.out.join("report");
    let (npa_summary, ledger_total) =
        crate::dayend::build_npa_report(&config, args.as_of, &report_dir).await?;
    println!("5/6 Day-end ran for every date to {}", args.as_of);
    println!("6/6 NPA report written to {}", report_dir.display());
    println!();
    crate::dayend::print_report(&npa_summary, ledger_total);
    let verification = underwrite_audit::verify(runtime.store().as_ref()).await?;
    match &verification.first_broken {
        None => println!("Audit ledger intact: {} entries.", verification.entries),
        Some((seq, reason)) => println!("Audit ledger BROKEN at entry {seq}: {reason}"),
    }
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    let ok = npa_summary.total_outstanding == ledger_total && verification.first_broken.is_none();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the services and the sagas until both are idle, showing the
/// sagas by status.
async fn settle(runner: &SagaRunner<'_>, inputs: &str) -> anyhow::Result<StatusCounts> {
    let bar = crate::commands::progress_bar(&format!("origination of the {inputs}"));
    let mut last_line = std::time::Instant::now();
    let counts = runner
        .run_until_settled(&mut |counts| {
            let line = format!(
                "origination of the {inputs}: {}",
                crate::saga::format_counts(counts)
            );
            bar.set_message(line.clone());
            if last_line.elapsed() >= std::time::Duration::from_secs(5) {
                bar.suspend(|| eprintln!("{line}"));
                last_line = std::time::Instant::now();
            }
        })
        .await?;
    bar.finish_and_clear();
    Ok(counts)
}

/// Sends `kfs.accepted` to each saga waiting for it, as the borrower's
/// acceptance on the KFS's issue date. Returns how many were sent.
fn accept_issued_kfs(runtime: &EmbeddedRuntime, runner: &SagaRunner<'_>) -> anyhow::Result<usize> {
    let mut acceptances = Vec::new();
    for saga in load_sagas(runtime, Some(SagaStatus::Started))? {
        let waiting = saga
            .forward("acceptance")
            .is_some_and(|step| step.status == StepStatus::Waiting);
        let Some(issued) = waiting.then(|| kfs_issued(&saga)).flatten() else {
            continue;
        };
        let issued_on = issued.payload["issued_on"].as_str().unwrap_or_default();
        let line = serde_json::json!({
            "id": format!("accept-{}", saga.saga_id),
            "type": "kfs.accepted",
            "occurred_at": format!("{issued_on}T16:00:00+05:30"),
            "payload": {
                "application_id": saga.saga_id,
                "proposal_number": issued.payload["proposal_number"],
                "accepted_on": issued_on,
            }
        });
        acceptances.push(parse_input_line(&line.to_string())?);
    }
    runtime.sign_input(&mut acceptances)?;
    for acceptance in &acceptances {
        runner.signal(acceptance)?;
    }
    Ok(acceptances.len())
}

/// Loads the sagas with their steps; `list_sagas` leaves the steps out.
fn load_sagas(
    runtime: &EmbeddedRuntime,
    status: Option<SagaStatus>,
) -> anyhow::Result<Vec<SagaRecord>> {
    let mut sagas = Vec::new();
    for listed in list_sagas(runtime.store(), status)? {
        if let Some(saga) = load_saga(runtime.store(), &listed.saga_id)? {
            sagas.push(saga);
        }
    }
    Ok(sagas)
}

fn reply_event(saga: &SagaRecord, step: &str, event_type: &str) -> Option<Envelope> {
    let answer = saga.forward(step)?.answer.as_deref()?;
    let text = find_event(answer, event_type)?;
    Envelope::from_slice(text.as_bytes()).ok()
}

fn kfs_issued(saga: &SagaRecord) -> Option<Envelope> {
    reply_event(saga, "kfs", "kfs.issued")
}

/// Collects the `loan.disbursed` of every completed saga, as mechanism
/// emitted it.
fn disbursals(sagas: &[SagaRecord]) -> anyhow::Result<Vec<LoanDisbursed>> {
    let mut loans = Vec::new();
    for saga in sagas.iter().filter(|s| s.status == SagaStatus::Completed) {
        let event = reply_event(saga, "disbursal", "loan.disbursed")
            .with_context(|| format!("saga {} completed without a loan.disbursed", saga.saga_id))?;
        let terms: LoanDisbursed = serde_json::from_value(event.payload.clone())
            .with_context(|| format!("saga {}: invalid loan.disbursed", saga.saga_id))?;
        loans.push(terms);
    }
    Ok(loans)
}

/// Paths of the sample KFS written: the first approval's, in English and
/// Hindi.
struct SampleKfs {
    proposal_number: String,
    english: PathBuf,
    hindi: PathBuf,
}

async fn write_sample_kfs(
    runtime: &EmbeddedRuntime,
    sagas: &[SagaRecord],
    dir: &Path,
) -> anyhow::Result<Option<SampleKfs>> {
    let Some(issued) = sagas
        .iter()
        .filter(|s| s.status == SagaStatus::Completed)
        .find_map(kfs_issued)
    else {
        return Ok(None);
    };
    let proposal_number = issued.payload["proposal_number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = kfs_key(&proposal_number);
    let store: &dyn Store = runtime.store().as_ref();
    let Some(read) = store.get(&key).await? else {
        return Ok(None);
    };
    let stored: StoredKfs = read.parse(&key)?;
    let english = dir.join(format!("{proposal_number}.en.html"));
    let hindi = dir.join(format!("{proposal_number}.hi.html"));
    std::fs::write(&english, &stored.html_en)
        .with_context(|| format!("Failed to write {}", english.display()))?;
    std::fs::write(&hindi, &stored.html_hi)
        .with_context(|| format!("Failed to write {}", hindi.display()))?;
    Ok(Some(SampleKfs {
        proposal_number,
        english,
        hindi,
    }))
}

/// The origination summary for the terminal, as Markdown and the decisions
/// as CSV.
struct OriginationReport {
    text: String,
    markdown: String,
    csv: String,
}

fn origination_report(
    sagas: &[SagaRecord],
    summary: &underwrite_saga::SagaSummary,
    accepted: usize,
    sample: &Option<SampleKfs>,
) -> OriginationReport {
    let mut fraud_rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut csv = String::from(
        "application_id,status,failed_step,reason_codes,grade,pd,annual_rate,apr,proposal_number,principal\n",
    );
    for saga in sagas {
        // A failed step keeps the events its service emitted, so a
        // decline's fraud.alert is there.
        let rules: Vec<String> = reply_event(saga, "fraud", "fraud.alert")
            .map(|alert| {
                alert.payload["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|rule| rule["rule"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for rule in &rules {
            *fraud_rules.entry(rule.clone()).or_default() += 1;
        }
        let reasons = if rules.is_empty() {
            saga.failure_code().unwrap_or_default().to_string()
        } else {
            rules.join(";")
        };
        let scored = reply_event(saga, "risk", "risk.scored");
        let quoted = reply_event(saga, "pricing", "pricing.quoted");
        let field = |event: &Option<Envelope>, pointer: &str| {
            event
                .as_ref()
                .and_then(|e| e.payload.pointer(pointer))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{}",
            saga.saga_id,
            saga.status,
            saga.failed_step.as_deref().unwrap_or_default(),
            reasons,
            field(&scored, "/grade"),
            field(&scored, "/pd"),
            field(&quoted, "/quote/annual_rate"),
            field(&quoted, "/quote/apr"),
            field(&kfs_issued(saga), "/proposal_number"),
            field(&quoted, "/quote/amount"),
        );
    }
    let mut text = String::from("Origination\n");
    text.push_str(&underwrite_saga::summary::render(summary));
    if !fraud_rules.is_empty() {
        text.push_str("  fraud rules fired on declined applications\n");
        for (rule, count) in &fraud_rules {
            let _ = writeln!(text, "    {:<38} {count:>7}", rule);
        }
    }
    let _ = writeln!(
        text,
        "  {:<40} {accepted:>7}",
        "KFS accepted by the borrower this run"
    );
    if let Some(sample) = sample {
        let _ = writeln!(
            text,
            "Sample KFS {}: {} (English), {} (Hindi)",
            sample.proposal_number,
            sample.english.display(),
            sample.hindi.display()
        );
    }
    let markdown = format!(
        "# Origination of the German credit applicants\n\nOne origination saga per application (`docs/sagas.md`); one row per application in `decisions.csv`.\n\n```text\n{text}```\n"
    );
    OriginationReport {
        text,
        markdown,
        csv,
    }
}

//! `underwrite saga`: list and show the sagas in the store, resume them
//! after a crash, and write the state machine generated from the saga
//! definition.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use std::collections::BTreeSet;
use underwrite_events::Envelope;
use underwrite_saga::steps::find_event;

use underwrite_saga::{
    Phase, SagaDefinition, SagaError, SagaRecord, SagaRunner, SagaStatus, Source, StatusCounts,
    StepStatus, list_sagas, load_saga, origination, replay_saga,
};

use crate::config::Config;

/// Subcommands of `underwrite saga`.
#[derive(Subcommand)]
pub enum SagaCommand {
    /// List sagas by id with their status and, for a failed one, the step and reason.
    List {
        /// Only sagas with this status: started, completed, compensating or rolled_back.
        #[arg(long)]
        status: Option<String>,
    },
    /// List the sagas waiting for an event from outside, such as the borrower's kfs.accepted, with the KFS to accept and the last day it is valid.
    Waiting {
        /// Print one JSON object per saga instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sum up the sagas: applications, approvals, declines by step and reason, KFS issued, loans disbursed.
    Summary,
    /// Show one saga's steps and compensations with their commands and replies.
    Show {
        /// The saga's id: the application id for origination.
        saga_id: String,
    },
    /// Resume sagas after a crash or a stop: handle the queued commands and move each saga on from the state in the store.
    Replay {
        /// Only report on this saga; every unfinished saga is resumed.
        saga_id: Option<String>,
    },
    /// Write the origination state machine (Amazon States Language) generated from the saga definition, after linting it.
    Asl {
        /// File to write.
        #[arg(long, default_value = "infra/statemachines/origination.asl.json")]
        out: PathBuf,
        /// Write nothing; exit 1 if the file differs from the generated document.
        #[arg(long)]
        check: bool,
    },
    /// Lint a state machine file: transitions, reachability, Retry and Catch on every task, task tokens, compensation order.
    Lint {
        /// The ASL file.
        #[arg(default_value = "infra/statemachines/origination.asl.json")]
        file: PathBuf,
    },
}

pub async fn saga(config: &Config, command: SagaCommand) -> anyhow::Result<ExitCode> {
    match command {
        SagaCommand::List { status } => list(config, status.as_deref()),
        SagaCommand::Waiting { json } => waiting(config, json),
        SagaCommand::Summary => summary(config),
        SagaCommand::Show { saga_id } => show(config, &saga_id),
        SagaCommand::Replay { saga_id } => replay(config, saga_id.as_deref()).await,
        SagaCommand::Asl { out, check } => write_asl(&out, check),
        SagaCommand::Lint { file } => lint_file(&file),
    }
}

fn parse_status(text: &str) -> anyhow::Result<SagaStatus> {
    match SagaStatus::parse(text) {
        Some(status) => Ok(status),
        None => bail!(
            "unknown saga status {text:?}: use one of {}",
            SagaStatus::ALL.map(SagaStatus::as_str).join(", ")
        ),
    }
}

fn list(config: &Config, status: Option<&str>) -> anyhow::Result<ExitCode> {
    let status = status.map(parse_status).transpose()?;
    let store = crate::commands::open_store(config)?;
    let sagas = list_sagas(&store, status)?;
    if sagas.is_empty() {
        println!("No sagas.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<12} {:<13} failed at",
        "saga", "definition", "status"
    );
    for saga in &sagas {
        let failure = match (&saga.failed_step, saga.failure_code()) {
            (Some(step), Some(code)) => format!("{step}: {code}"),
            _ => String::new(),
        };
        println!(
            "{:<24} {:<12} {:<13} {failure}",
            saga.saga_id, saga.definition, saga.status
        );
    }
    let mut counts = StatusCounts::new();
    for saga in &sagas {
        *counts.entry(saga.status).or_default() += 1;
    }
    println!("{} sagas: {}", sagas.len(), format_counts(&counts));
    Ok(ExitCode::SUCCESS)
}

/// Formats counts by status, such as `3 completed, 1 rolled_back`.
pub fn format_counts(counts: &StatusCounts) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(status, count)| format!("{count} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns the `kfs.issued` event of the saga's kfs step: the KFS the
/// borrower is to accept.
fn issued_kfs(saga: &SagaRecord) -> Option<serde_json::Value> {
    saga.forward("kfs")
        .and_then(|kfs| kfs.answer.as_deref())
        .and_then(|answer| find_event(answer, "kfs.issued"))
        .and_then(|event| serde_json::from_str(&event).ok())
}

/// Returns why the saga signal `event` (such as `kfs.accepted`) cannot be
/// taken, or `None` when it can. The signal must name a saga that is in the
/// store or that an application in the same input starts (`starting`).
/// An acceptance must name the proposal number of the KFS its saga issued:
/// one naming another KFS would be dead-lettered by the kfs service and
/// leave the saga waiting, so it is rejected at input instead.
pub fn signal_problem(
    store: &underwrite_runtime::SqliteStore,
    definition: &SagaDefinition,
    event: &Envelope,
    starting: &BTreeSet<String>,
) -> anyhow::Result<Option<String>> {
    let Some(saga) = load_saga(store, &event.subject)? else {
        if starting.contains(&event.subject) {
            return Ok(None);
        }
        return Ok(Some(format!(
            "{} for {:?}, which has no {} saga: send its {} first, earlier in the same input or in an earlier one",
            event.event_type, event.subject, definition.name, definition.input_type
        )));
    };
    let issued = issued_kfs(&saga).filter(|_| event.event_type == "kfs.accepted");
    let Some(issued) = issued else {
        return Ok(None);
    };
    let expected = issued["payload"]["proposal_number"]
        .as_str()
        .unwrap_or_default();
    let named = event.payload["proposal_number"]
        .as_str()
        .unwrap_or_default();
    if named == expected {
        return Ok(None);
    }
    Ok(Some(format!(
        "kfs.accepted for {:?} names proposal number {named:?}, but the KFS issued for it is {expected:?}: send the issued number (`underwrite saga waiting` lists it)",
        event.subject
    )))
}

/// Starts a saga for each application in `events` and records each
/// signal, in order; both are idempotent. Returns a line for people.
pub fn feed(runner: &SagaRunner<'_>, events: &[Envelope]) -> Result<String, SagaError> {
    let input_type = runner.definition().input_type;
    let (mut started, mut already_started, mut signalled, mut repeated) = (0, 0, 0, 0);
    for event in events {
        if event.event_type == input_type {
            if runner.start(event)? {
                started += 1;
            } else {
                already_started += 1;
            }
        } else if runner.signal(event)? {
            signalled += 1;
        } else {
            repeated += 1;
        }
    }
    Ok(format!(
        "Started {started} {} sagas ({already_started} had started before); recorded {signalled} signals ({repeated} repeats ignored).",
        runner.definition().name
    ))
}

/// A saga whose step waits for an event from outside.
#[derive(serde::Serialize)]
struct Waiting {
    saga_id: String,
    step: String,
    waits_for: String,
    proposal_number: Option<String>,
    issued_on: Option<String>,
    valid_until: Option<String>,
}

fn waiting(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let store = crate::commands::open_store(config)?;
    let definition = origination();
    let mut rows = Vec::new();
    for listed in list_sagas(&store, Some(SagaStatus::Started))? {
        let Some(saga) = load_saga(&store, &listed.saga_id)? else {
            continue;
        };

        let Some(step) = saga
            .steps
            .iter()
            .rev()
            .find(|s| s.phase == Phase::Forward && s.status == StepStatus::Waiting)
        else {
            continue;
        };
        let waits_for = match definition.step(&step.step).map(|s| s.source) {
            Some(Source::Signal { event_type }) => event_type.to_string(),
            _ => continue,
        };
        let issued = issued_kfs(&saga);
        let field = |name: &str| {
            issued
                .as_ref()
                .and_then(|event| event["payload"][name].as_str())
                .map(str::to_string)
        };
        rows.push(Waiting {
            saga_id: saga.saga_id.clone(),
            step: step.step.clone(),
            waits_for,
            proposal_number: field("proposal_number"),
            issued_on: field("issued_on"),
            valid_until: field("valid_until"),
        });
    }

    if json {
        crate::commands::print_json_lines(&rows);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("No saga waits for an event.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<11} {:<13} {:<32} {:<10} valid until",
        "saga", "step", "waits for", "proposal number", "issued on"
    );
    let none = || "-".to_string();
    for row in &rows {
        println!(
            "{:<24} {:<11} {:<13} {:<32} {:<10} {}",
            row.saga_id,
            row.step,
            row.waits_for,
            row.proposal_number.clone().unwrap_or_else(none),
            row.issued_on.clone().unwrap_or_else(none),
            row.valid_until.clone().unwrap_or_else(none),
        );
    }
    let sagas = if rows.len() == 1 {
        "saga waits"
    } else {
        "sagas wait"
    };
    println!(
        "{} {sagas}. Send each borrower's acceptance as a kfs.accepted input event with `underwrite run --input FILE`; an acceptance after the valid-until date ends the saga rolled back.",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn summary(config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::commands::open_store(config)?;
    let summary = underwrite_saga::summarise(&store)?;
    println!("Origination sagas in {}:", config.store_path.display());
    print!("{}", underwrite_saga::summary::render(&summary));
    Ok(ExitCode::SUCCESS)
}

fn show(config: &Config, saga_id: &str) -> anyhow::Result<ExitCode> {
    let store = crate::commands::open_store(config)?;
    let Some(saga) = load_saga(&store, saga_id)? else {
        bail!("saga {saga_id} not found; `underwrite saga list` shows the sagas in the store");
    };
    println!(
        "Saga {} ({}): {}",
        saga.saga_id, saga.definition, saga.status
    );
    if let (Some(step), Some(failure)) = (&saga.failed_step, &saga.failure) {
        println!(
            "Failed at {step}: {}",
            underwrite_telemetry::redact::redact(failure)
        );
    }
    println!(
        "{:<13} {:<11} {:<10} {:<21} {:<10} answer",
        "phase", "step", "service", "command", "status"
    );
    for step in &saga.steps {
        let answer = match (&step.error_code, &step.answer) {
            (Some(code), _) => code.clone(),
            (None, Some(answer)) => answer_types(answer),
            (None, None) => String::new(),
        };
        println!(
            "{:<13} {:<11} {:<10} {:<21} {:<10} {answer}",
            step.phase.as_str(),
            step.step,
            step.service,
            step.command_type,
            step.status.as_str(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the event types in a stored answer, or `(no events)`.
fn answer_types(answer: &str) -> String {
    let events: Vec<serde_json::Value> = serde_json::from_str(answer).unwrap_or_default();
    if events.is_empty() {
        return "(no events)".into();
    }
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn replay(config: &Config, saga_id: Option<&str>) -> anyhow::Result<ExitCode> {
    let runtime = crate::commands::open_runtime(config)?;
    let definition = origination();
    let mut rounds = 0;
    let (counts, record) = replay_saga(&runtime, &definition, saga_id, &mut |counts| {
        rounds += 1;
        eprintln!("round {rounds}: {}", format_counts(counts));
    })
    .await?;
    println!("Sagas: {}.", format_counts(&counts));
    if let Some(record) = record {
        println!("Saga {}: {}.", record.saga_id, record.status);
    }
    Ok(ExitCode::SUCCESS)
}

fn write_asl(out: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let document = underwrite_saga::asl::generate(&origination());
    let problems = underwrite_saga::lint::lint(&document);
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        bail!("the generated state machine fails the lint; fix the saga definition");
    }
    let text = underwrite_saga::asl::to_pretty_json(&document);
    if check {
        let current = std::fs::read_to_string(out).unwrap_or_default();
        if current == text {
            println!("{} matches the saga definition.", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} differs from the saga definition; run `underwrite saga asl` to regenerate it",
            out.display()
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("Failed to create folder {}", parent.display()))?;
    }
    std::fs::write(out, text).with_context(|| format!("Failed to write {}", out.display()))?;
    println!(
        "Wrote {} ({} states); it passes the lint.",
        out.display(),
        document["States"].as_object().map_or(0, |s| s.len())
    );
    Ok(ExitCode::SUCCESS)
}

fn lint_file(file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("Failed to read {}", file.display()))?;
    let document: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let problems = underwrite_saga::lint::lint(&document);
    if problems.is_empty() {
        println!("{}: no problems.", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("{}: {problem}", file.display());
    }
    println!("{} problems.", problems.len());
    Ok(ExitCode::from(1))
}

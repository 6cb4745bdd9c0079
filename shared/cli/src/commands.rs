//! Runtime commands: init, list, migrate, run, dlq, health, metrics,
//! backup, restore, audit verify.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use underwrite_events::Envelope;
use underwrite_runtime::{EmbeddedRuntime, Progress, RunOptions, SqliteStore, StateWrite, Store};
use underwrite_saga::{SagaDefinition, SagaRunner, SagaStatus, origination};

use crate::config::Config;

/// Opens the store named by the config.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<SqliteStore>> {
    let store = SqliteStore::open(&config.store_path)
        .with_context(|| format!("Failed to open store {}", config.store_path.display()))?;
    Ok(Arc::new(store))
}

/// Opens the runtime over the configured store with every service
/// registered, signing and verifying events when `identities.enabled` is set.
pub fn open_runtime(config: &Config) -> anyhow::Result<EmbeddedRuntime> {
    let runtime = EmbeddedRuntime::new(
        open_store(config)?,
        crate::services::all(config),
        config.queues,
    )
    .with_resilience(config.resilience());
    match crate::identity::load_authority(&config.identities)? {
        Some(authority) => Ok(runtime.with_authority(authority)?),
        None => Ok(runtime),
    }
}

pub fn init(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    std::fs::write(path, Config::documented_default())
        .with_context(|| format!("Failed to write {}", path.display()))?;
    println!(
        "Wrote {}. Each key is described under \"_comments\" and in docs/configuration.md.",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn list(config: &Config) -> anyhow::Result<ExitCode> {
    let runtime = open_runtime(config)?;
    println!(
        "{:<10} {:>8} {:>9}  subscribes to",
        "service", "queued", "in flight"
    );
    for service in runtime.services() {
        let (visible, hidden) = runtime.store().queue_depth(service.name())?;
        println!(
            "{:<10} {visible:>8} {hidden:>9}  {}",
            service.name(),
            service.subscriptions().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    // Opening applies pending migrations.
    let store = open_store(config)?;
    let applied = store.applied_migrations()?;
    println!(
        "Store {} is at schema version {}.",
        config.store_path.display(),
        applied.last().copied().unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `underwrite run`.
#[derive(Args)]
pub struct RunArgs {
    /// Services to run; by default those listed under `services` in the config.
    pub services: Vec<String>,
    /// JSONL file of input events to publish before running, one event per line.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Stop once every queue of the services run is empty (retries included) instead of polling for more.
    #[arg(long)]
    pub until_idle: bool,
    /// Publish the valid lines of --input even when some lines are invalid; the invalid ones are written to FILE.rejected.jsonl.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Publish --input again even if the same file (by SHA-256) was published before.
    #[arg(long)]
    pub republish: bool,
}

/// The outcome of `publish_input` for one file.
#[derive(Default)]
pub struct PublishedInput {
    /// Events published to the services' queues; 0 when the file was
    /// published before.
    pub published: usize,
    /// Events for the saga runner, signed: applications that start a saga
    /// and signals (such as `kfs.accepted`) for steps that wait. They are
    /// returned even when the file was published before, as starting and
    /// signalling are idempotent and a stop may have come between the two.
    pub saga: Vec<Envelope>,
}

/// Publishes an input file unless it was published before. Invalid lines
/// stop the publication unless `skip_invalid`, in which case they are written
/// beside the file.
///
/// With a saga definition, the events that start or signal its sagas are
/// set aside for the runner instead of being published. A signal must name
/// a saga that exists or that an application in the same file starts; any
/// other is an invalid line.
pub async fn publish_input(
    runtime: &EmbeddedRuntime,
    path: &Path,
    skip_invalid: bool,
    republish: bool,
    saga: Option<&SagaDefinition>,
) -> anyhow::Result<PublishedInput> {
    let mut file = crate::input::read(path)?;
    let mut saga_events = Vec::new();
    if let Some(definition) = saga {
        saga_events = take_saga_events(runtime, definition, path, &mut file)?;
    }
    if !file.rejected.is_empty() {
        for rejected in file.rejected.iter().take(20) {
            // Rejected lines may quote personal data, so they are redacted
            // like log lines.
            eprintln!(
                "{}:{}: {}",
                path.display(),
                rejected.line,
                underwrite_telemetry::redact::redact(&rejected.reason)
            );
        }
        if file.rejected.len() > 20 {
            eprintln!("... and {} more invalid lines", file.rejected.len() - 20);
        }
        let valid = file.events.len() + saga_events.len();
        if !skip_invalid {
            bail!(
                "{} of {} lines in {} are invalid; nothing was published. Fix them, or pass --skip-invalid to publish the valid lines",
                file.rejected.len(),
                file.rejected.len() + valid,
                path.display()
            );
        }
        let rejected_path = PathBuf::from(format!("{}.rejected.jsonl", path.display()));
        let text: String = file
            .rejected
            .iter()
            .map(|r| format!("{}\n", r.text))
            .collect();
        std::fs::write(&rejected_path, text)
            .with_context(|| format!("Failed to write {}", rejected_path.display()))?;
        eprintln!(
            "Wrote {} invalid lines to {}.",
            file.rejected.len(),
            rejected_path.display()
        );
    }
    runtime.sign_input(&mut saga_events)?;
    let marker_key = format!("input/{}", file.digest);
    let store: &dyn Store = runtime.store().as_ref();
    let marker = store.get(&marker_key).await?;
    if marker.is_some() && !republish {
        eprintln!(
            "{} was already published (SHA-256 {}); skipping it (`underwrite run --republish` publishes a file again).",
            path.display(),
            &file.digest[..12]
        );
        return Ok(PublishedInput {
            published: 0,
            saga: saga_events,
        });
    }
    let record = serde_json::json!({
        "path": path.display().to_string(),
        "events": file.events.len(),
        "saga_events": saga_events.len(),
        "rejected": file.rejected.len(),
    });
    let write = StateWrite::put_any(marker_key, &record);
    let mut events = file.events;
    runtime.sign_input(&mut events)?;
    runtime.publish_with(&events, &[write])?;
    Ok(PublishedInput {
        published: events.len(),
        saga: saga_events,
    })
}

/// Moves the events that start or signal a saga of `definition` out of
/// `file.events`. A signal for a saga that neither exists nor starts in
/// the file becomes a rejected line.
fn take_saga_events(
    runtime: &EmbeddedRuntime,
    definition: &SagaDefinition,
    path: &Path,
    file: &mut crate::input::InputFile,
) -> anyhow::Result<Vec<Envelope>> {
    let signal_types = definition.signal_types();
    let events = std::mem::take(&mut file.events);
    let lines = std::mem::take(&mut file.lines);
    let starting: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|event| event.event_type == definition.input_type)
        .map(|event| event.subject.clone())
        .collect();
    let mut saga = Vec::new();
    for (event, line) in events.into_iter().zip(lines) {
        if event.event_type == definition.input_type {
            saga.push(event);
        } else if signal_types.contains(&event.event_type.as_str()) {
            let problem =
                crate::saga::signal_problem(runtime.store(), definition, &event, &starting)?;
            match problem {
                Some(reason) => file.rejected.push(crate::input::Rejected {
                    line,
                    reason,
                    text: line_text(path, line)?,
                }),
                None => saga.push(event),
            }
        } else {
            file.events.push(event);
            file.lines.push(line);
        }
    }
    file.rejected.sort_by_key(|rejected| rejected.line);
    Ok(saga)
}

/// Reads line `line` (1-based) of `path` again, for a line rejected after
/// parsing.
fn line_text(path: &Path, line: usize) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read input file {}", path.display()))?;
    Ok(text.lines().nth(line - 1).unwrap_or_default().to_string())
}

/// Starts a spinner on stderr; indicatif draws nothing when stderr is not a terminal.
pub fn progress_bar(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("template is valid"),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn describe(progress: &Progress) -> String {
    format!(
        "handled {}, emitted {}, duplicates dropped {}, retries {}, dead-lettered {}, queued {}",
        progress.handled,
        progress.emitted,
        progress.duplicates,
        progress.retried,
        progress.dead_lettered,
        progress.queued
    )
}

/// Runs services until idle (or until stopped), showing progress. With a
/// saga runner, the sagas move on whenever the queues fall idle, so that
/// each completed step sends the next command within the same run.
pub async fn run_services(
    runtime: &EmbeddedRuntime,
    services: Vec<String>,
    until_idle: bool,
    sagas: Option<&SagaRunner<'_>>,
) -> anyhow::Result<Progress> {
    let options = RunOptions {
        services,
        until_idle,
        snapshot_as: Some("run"),
        ..RunOptions::default()
    };
    let stop = options.stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.store(true, Ordering::SeqCst);
        }
    });
    let bar = progress_bar("starting");
    let mut last_line = std::time::Instant::now();
    let interactive = console_is_terminal();
    let mut advance = || match sagas {
        Some(runner) => runner.advance().map_err(|error| error.to_string()),
        None => Ok(0),
    };
    let totals = runtime
        .run_with_idle_work(
            &options,
            &mut |progress| {
                bar.set_message(describe(progress));
                if !interactive && last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{}", describe(progress));
                    last_line = std::time::Instant::now();
                }
            },
            &mut advance,
        )
        .await?;
    bar.finish_and_clear();
    Ok(totals)
}

/// Describes the sagas in the store by status, naming the command that
/// lists those waiting for the borrower; empty when there are none.
fn saga_line(runtime: &EmbeddedRuntime) -> anyhow::Result<Option<String>> {
    let counts = underwrite_saga::status_counts(runtime)?;
    if counts.is_empty() {
        return Ok(None);
    }
    let mut line = format!("sagas: {}", crate::saga::format_counts(&counts));
    if counts.get(&SagaStatus::Started).is_some_and(|n| *n > 0) {
        line.push_str(
            "; `underwrite saga waiting` lists those waiting for an event such as kfs.accepted",
        );
    }
    Ok(Some(line))
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

pub async fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = open_runtime(config)?;
    let definition = origination();
    let runner = SagaRunner::new(&runtime, &definition)?;
    let services = if args.services.is_empty() {
        config.services.clone()
    } else {
        args.services
    };
    let mut totals = Progress::default();
    if let Some(path) = &args.input {
        let input = publish_input(
            &runtime,
            path,
            args.skip_invalid,
            args.republish,
            Some(&definition),
        )
        .await?;
        eprintln!(
            "Published {} events from {}, and took {} for the origination sagas.",
            input.published,
            path.display(),
            input.saga.len()
        );
        if !input.saga.is_empty() {
            if input.published > 0 {
                // The services handle the published events first, so that a
                // consent granted in the same file is on record before the
                // consent step of its application runs.
                let first = run_services(&runtime, services.clone(), true, Some(&runner)).await?;
                totals.add(&first);
            }
            eprintln!("{}", crate::saga::feed(&runner, &input.saga)?);
        }
    }
    let rest = run_services(&runtime, services, args.until_idle, Some(&runner)).await?;
    totals.add(&rest);
    println!("{}", describe(&totals));
    if let Some(line) = saga_line(&runtime)? {
        println!("{line}");
    }
    if totals.dead_lettered > 0 {
        eprintln!(
            "{} events went to the dead-letter queue; list them with `underwrite dlq`.",
            totals.dead_lettered
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `underwrite dlq`.
#[derive(Args)]
pub struct DlqArgs {
    /// Move dead letters back to their source queues (all, or --max).
    #[arg(long)]
    pub replay: bool,
    /// With --replay, move at most this many, oldest first.
    #[arg(long, value_name = "N", requires = "replay")]
    pub max: Option<usize>,
    /// Only this queue (service).
    #[arg(long)]
    pub queue: Option<String>,
    /// Print the dead letters as JSON lines, bodies included.
    #[arg(long)]
    pub json: bool,
}

/// Prints each item as one line of JSON.
pub fn print_json_lines<T: serde::Serialize>(items: &[T]) {
    for item in items {
        println!(
            "{}",
            serde_json::to_string(item).expect("the item serialises")
        );
    }
}

/// Lists or replays dead letters: those of the AWS deployment when
/// `aws.enabled` is set, else those of the embedded store.
pub async fn dlq(config: &Config, args: DlqArgs) -> anyhow::Result<ExitCode> {
    if let Some(queue) = &args.queue
        && !crate::services::NAMES.contains(&queue.as_str())
    {
        anyhow::bail!(
            "unknown queue {queue:?}: queues are named after the services, {}",
            crate::services::NAMES.join(", ")
        );
    }
    if config.aws.enabled {
        return crate::dlq_aws::dlq(config, args).await;
    }
    let store = open_store(config)?;
    if args.replay {
        let moved = store.replay_dead_letters(args.queue.as_deref(), args.max)?;
        println!(
            "Moved {moved} dead letters back to their queues; run `underwrite run --until-idle` to handle them."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let letters = store.dead_letters(args.queue.as_deref())?;
    if args.json {
        print_json_lines(&letters);
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        println!("No dead letters.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<10} {:<40} {:<18} {:<18} {:>8}  reason",
        "seq", "queue", "event id", "kind", "code", "receives"
    );
    for letter in &letters {
        println!(
            "{:>5}  {:<10} {:<40} {:<18} {:<18} {:>8}  {}",
            letter.seq,
            letter.queue,
            letter.message_id,
            letter.error_kind,
            letter.error_code,
            letter.receive_count,
            letter.error_message
        );
    }
    println!(
        "{} dead letters. Replay with `underwrite dlq --replay [--max N]`.",
        letters.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn health(config: &Config) -> anyhow::Result<ExitCode> {
    let store = match open_store(config) {
        Ok(store) => store,
        Err(error) => {
            println!("{:<11} {:<8} {error:#}", "store", "FAILED");
            println!("summary: FAILED (0 ok, 0 warnings, 1 failed)");
            return Ok(ExitCode::from(1));
        }
    };
    let latest = store
        .run_snapshots()
        .map(|snapshots| {
            crate::health::latest_run(&snapshots, underwrite_runtime::sqlite::now_ms())
        })
        .unwrap_or(None);
    let checks = crate::health::collect(&store, &crate::services::NAMES, latest);
    print!("{}", crate::health::render_checks(&checks));
    Ok(if checks.status == crate::health::Status::Failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Arguments of `underwrite metrics`.
#[derive(Args)]
pub struct MetricsArgs {
    /// Print Prometheus text (format 0.0.4) instead of tables.
    #[arg(long)]
    pub prometheus: bool,
}

/// Prints the counters and timers of every run stored, summed. Each process
/// that runs services stores its own snapshot (every 5 s and when it stops),
/// so a run still going counts up to its last snapshot.
pub fn metrics(config: &Config, args: MetricsArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let snapshots = store.run_snapshots()?;
    let mut total = underwrite_runtime::MetricsSnapshot::default();
    for counter in underwrite_runtime::Counter::ALL {
        total.counters.insert(counter.name().to_string(), 0);
    }
    for snapshot in &snapshots {
        total.merge(&snapshot.metrics);
    }
    if args.prometheus {
        print!("{}", total.to_prometheus());
    } else {
        print!("{}", crate::health::render_metrics(&total, snapshots.len()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `underwrite backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// File to write; must not exist unless --force.
    pub path: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn backup(config: &Config, args: BackupArgs) -> anyhow::Result<ExitCode> {
    if args.path.exists() {
        if !args.force {
            bail!(
                "{} already exists; pass --force to replace it or choose another path",
                args.path.display()
            );
        }
        std::fs::remove_file(&args.path)
            .with_context(|| format!("Failed to remove {}", args.path.display()))?;
    }
    let store = open_store(config)?;
    store.backup_to(&args.path)?;
    println!(
        "Backed up {} to {}.",
        config.store_path.display(),
        args.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `underwrite restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// Backup file written by `underwrite backup`.
    pub path: PathBuf,
}

pub fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    store.restore_from(&args.path)?;
    println!(
        "Restored {} from {}.",
        config.store_path.display(),
        args.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn audit_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let verification = underwrite_audit::verify(store.as_ref()).await?;
    match verification.first_broken {
        None => {
            println!(
                "Audit ledger intact: {} entries verified.",
                verification.entries
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, reason)) => {
            println!("Audit ledger BROKEN at entry {seq}: {reason}");
            println!("{} entries before it verified.", verification.entries);
            Ok(ExitCode::from(1))
        }
    }
}

//! `underwrite bench`: throughput of the embedded runtime against raw SQLite,
//! and day-end speed, measured in one run.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use rusqlite::{Connection, params};
use underwrite_jobs::german_credit::{ConversionOptions, convert};
use underwrite_runtime::{EmbeddedRuntime, RunOptions, SqliteStore};

use crate::config::Config;

/// The services measured, in the order they drain their queues: npa's
/// events reach audit, which runs last.
const PIPELINE: [&str; 3] = ["mechanism", "npa", "audit"];

/// Arguments of `underwrite bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// What to measure instead of the embedded services and day-end.
    #[command(subcommand)]
    pub target: Option<BenchTarget>,
    /// Input events pushed through the services (the first N of the German credit example).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Loans in the generated day-end book.
    #[arg(long, default_value_t = 1_000_000)]
    pub loans: usize,
    /// Records per batch for the services; by default `queues.batch_size` from the config.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// The applicants CSV.
    #[arg(long, default_value = "examples/german_credit/german_credit.csv")]
    pub csv: std::path::PathBuf,
    /// Rounds of the throughput comparison, each on fresh SQLite files. The medians are compared with the target, so that one round slowed by another process does not decide the verdict.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One round of the throughput comparison.
struct Round {
    /// Input events through the three services, per second.
    pipeline_rate: f64,
    /// Raw durable enqueue+dequeue, per second.
    raw_rate: f64,
    /// Records handled per second.
    record_rate: f64,
}

/// Returns the median of `values`, the lower middle one for an even count.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// Benchmarks other than the default one.
#[derive(clap::Subcommand)]
pub enum BenchTarget {
    /// Each Lambda function's deployment zip size, and the time from process start to the first SQS batch answered under a local runtime API.
    Lambda(crate::bench_lambda::LambdaBenchArgs),
}

/// Enqueues then dequeues each body with one committed transaction each, with
/// the embedded store's pragmas: the floor any durable queue pays.
fn raw_sqlite(path: &Path, bodies: &[String]) -> anyhow::Result<f64> {
    let connection = Connection::open(path)?;
    connection.execute_batch(underwrite_runtime::sqlite::PRAGMAS)?;
    connection.execute_batch(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);",
    )?;
    let started = Instant::now();
    for body in bodies {
        connection.execute("INSERT INTO q (body) VALUES (?1)", [body])?;
    }
    loop {
        let row: Option<(i64, String)> = connection
            .query_row("SELECT seq, body FROM q ORDER BY seq LIMIT 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .ok();
        let Some((seq, _body)) = row else { break };
        connection.execute("DELETE FROM q WHERE seq = ?1", params![seq])?;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn bench(config: &Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(BenchTarget::Lambda(lambda)) = args.target {
        return crate::bench_lambda::bench_lambda(lambda).await;
    }
    let csv = std::fs::read_to_string(&args.csv)
        .with_context(|| format!("Failed to read {}", args.csv.display()))?;
    let conversion = convert(&csv, &ConversionOptions::default())?;
    let lines: Vec<String> = conversion.lines.into_iter().take(args.events).collect();
    if args.rounds == 0 {
        anyhow::bail!("--rounds is 0: measure at least one round");
    }
    println!(
        "machine: {} logical CPUs; build: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        build_profile()
    );
    let mut config = config.clone();
    if let Some(batch_size) = args.batch_size {
        config.queues.batch_size = batch_size;
        config.validate().context("--batch-size is out of range")?;
    }
    println!(
        "signing: {}",
        if config.identities.enabled {
            "on (Ed25519, identities.enabled)"
        } else {
            "off (identities.enabled is false)"
        }
    );
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        println!("round {round} of {}:", args.rounds);
        let dir = tempfile::tempdir()?;
        rounds.push(throughput_round(&config, &lines, dir.path()).await?);
    }
    let pipeline_rate = median(rounds.iter().map(|r| r.pipeline_rate).collect());
    let raw_rate = median(rounds.iter().map(|r| r.raw_rate).collect());
    let record_rate = median(rounds.iter().map(|r| r.record_rate).collect());
    let ratio = pipeline_rate / raw_rate;
    let verdict = if ratio >= 0.25 { "meets" } else { "MISSES" };
    println!(
        "medians of {} round(s): services {pipeline_rate:.0} events/s, raw SQLite {raw_rate:.0} events/s",
        rounds.len()
    );
    println!(
        "ratio:      {ratio:.3} (input events through all three services / raw, medians); {verdict} the target of >= 0.25"
    );
    // Each input event is delivered to up to three queues and npa's events
    // to audit, so the runtime moves more messages than there are input
    // events. This ratio compares the cost per delivered record instead.
    println!(
        "per record: {:.3} (records handled per second / raw messages per second, medians)",
        record_rate / raw_rate
    );

    if args.loans > 0 {
        eprintln!(
            "bench: day-end over a generated book of {} loans...",
            args.loans
        );
        let (seconds, peak) =
            tokio::task::block_in_place(|| underwrite_jobs::day_end::bench_day_end(args.loans))?;
        let verdict = if seconds <= 10.0 { "meets" } else { "MISSES" };
        println!(
            "day-end:    {} loans in {seconds:.2} s, peak memory {:.0} MiB; {verdict} the target of <= 10 s",
            args.loans,
            peak as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one round: the input events through mechanism, npa and audit on a
/// fresh store in `dir`, then the same bytes through a raw SQLite queue.
async fn throughput_round(config: &Config, lines: &[String], dir: &Path) -> anyhow::Result<Round> {
    let mut events: Vec<_> = lines
        .iter()
        .map(|line| underwrite_events::parse_input_line(line))
        .collect::<Result<_, _>>()?;
    // Services: publish, then run until every queue is empty.
    let store = std::sync::Arc::new(SqliteStore::open(dir.join("pipeline.db"))?);
    let queues = config.queues;
    // The servicing pipeline only: the input events reach no other service's
    // queue, so the figures stay comparable as services are added.
    let services: Vec<_> = crate::services::all(config)
        .into_iter()
        .filter(|service| PIPELINE.contains(&service.name()))
        .collect();
    let mut runtime = EmbeddedRuntime::new(store, services, queues);
    // With signing on, the bench pays for it as a real run does: input is
    // signed at the edge, each delivery verified, each output signed. Its
    // keys live in the bench's temporary folder.
    let mut identities = config.identities.clone();
    identities.key_dir = dir.join("keys");
    identities.create_missing = true;
    if let Some(authority) = crate::identity::load_authority(&identities)? {
        runtime = runtime.with_authority(authority)?;
    }
    eprintln!(
        "bench: pushing {} events through mechanism, npa and audit in batches of {}...",
        events.len(),
        queues.batch_size
    );
    let started = Instant::now();
    runtime.sign_input(&mut events)?;
    runtime.publish(&events)?;
    // Each service drains its own queue in turn, so its time is measured
    // alone; npa's events then reach audit, which runs last.
    let mut totals = underwrite_runtime::Progress::default();
    for name in PIPELINE {
        let service_started = Instant::now();
        let options = RunOptions {
            services: vec![name.to_string()],
            ..RunOptions::default()
        };
        let progress = runtime.run(&options, &mut |_| {}).await?;
        println!(
            "    {name:<10} {} records in {:.2} s",
            progress.handled,
            service_started.elapsed().as_secs_f64()
        );
        totals.add(&progress);
    }
    let pipeline_seconds = started.elapsed().as_secs_f64();
    let pipeline_rate = events.len() as f64 / pipeline_seconds;
    println!(
        "  services: {} input events ({} records handled, {} emitted) in {pipeline_seconds:.2} s = {pipeline_rate:.0} events/s",
        events.len(),
        totals.handled,
        totals.emitted
    );

    eprintln!("bench: raw SQLite enqueue+dequeue of the same bytes...");
    let raw_seconds = raw_sqlite(&dir.join("raw.db"), lines)?;
    let raw_rate = lines.len() as f64 / raw_seconds;
    println!(
        "  raw:      {} durable enqueue+dequeue in {raw_seconds:.2} s = {raw_rate:.0} events/s",
        lines.len()
    );
    println!("  ratio:    {:.3} in this round", pipeline_rate / raw_rate);
    Ok(Round {
        pipeline_rate,
        raw_rate,
        record_rate: totals.handled as f64 / pipeline_seconds,
    })
}

fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug (use --release for figures worth recording)"
    } else {
        "release"
    }
}

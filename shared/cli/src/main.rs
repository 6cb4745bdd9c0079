//! `underwrite`: run the servicing services on the embedded runtime, inspect
//! queues and dead letters, run day-end and reports, and verify the audit
//! ledger.

mod bench;
mod bench_lambda;
mod commands;
mod config;
mod dayend;
mod dlq_aws;
mod example;
mod health;
mod identity;
mod input;
mod saga;
mod serve;
mod services;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// mimalloc instead of the system allocator: handlers build and drop many
/// small strings and maps per event, where glibc's malloc spends a fifth of
/// the runtime's time (measured with `perf` on the bench command).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "underwrite",
    version,
    about = "Loan origination, servicing and RBI asset classification for Indian digital lenders, on one machine."
)]
struct Cli {
    /// Config file; by default ./underwrite.json if present, else built-in defaults.
    #[arg(long, global = true, env = "UNDERWRITE_CONFIG")]
    config: Option<PathBuf>,

    /// SQLite store file; overrides `store_path` from the config.
    #[arg(long, global = true, env = "UNDERWRITE_DB")]
    db: Option<PathBuf>,

    /// Lake folder of Parquet partitions; overrides `lake_path` from the config.
    #[arg(long, global = true, env = "UNDERWRITE_LAKE")]
    lake: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a default underwrite.json (every key is described in docs/configuration.md).
    Init {
        /// Path of the file to write.
        #[arg(default_value = "underwrite.json")]
        path: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// List the services, the event types each subscribes to, and their queue depths.
    List,
    /// Apply pending schema migrations to the store.
    Migrate,
    /// Run services on the embedded runtime.
    Run(commands::RunArgs),
    /// List dead letters, or move them back to their queues.
    Dlq(commands::DlqArgs),
    /// Check the bus, the store and its circuit, each service and the supervisor.
    Health,
    /// Print the counters and handling timers recorded by every run on this store.
    Metrics(commands::MetricsArgs),
    /// Serve HTTP: ingest events, run the services, report health and metrics.
    Serve(serve::ServeArgs),
    /// Copy the store to a new file with SQLite's online backup.
    Backup(commands::BackupArgs),
    /// Replace the store with a backup; stop `serve` and `run` first.
    Restore(commands::RestoreArgs),
    /// Run the day-end job (DPD, class and provision of every loan) for a date or a range.
    DayEnd(dayend::DayEndArgs),
    /// Build a report.
    Report {
        #[command(subcommand)]
        report: ReportCommand,
    },
    /// Work with the audit ledger.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Run a bundled example end to end.
    Example {
        #[command(subcommand)]
        example: ExampleCommand,
    },
    /// Inspect and resume sagas (loan origination).
    Saga {
        #[command(subcommand)]
        action: saga::SagaCommand,
    },
    /// Measure throughput and day-end speed; prints ratios measured in this run.
    Bench(bench::BenchArgs),
    /// Train a model from bundled data and write its model file.
    Train {
        #[command(subcommand)]
        model: TrainCommand,
    },
    /// Create an Ed25519 key pair for a service (or `input`, the ingest edge) and register its public key.
    Identity(identity::IdentityArgs),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// NPA classification report: one row per loan and a summary by asset class.
    Npa(dayend::ReportArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and name the first broken entry.
    Verify,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// The risk scorecard, on the German credit applicants (docs/risk-model.md).
    Risk(train::TrainRiskArgs),
}

#[derive(Subcommand)]
enum ExampleCommand {
    /// Real applicants (German credit data) → loans and repayments → services → day-end → NPA report.
    GermanCredit(example::GermanCreditArgs),
}

fn main() -> std::process::ExitCode {
    // Like other command-line tools, stop quietly when the reader of stdout
    // goes away (`underwrite dlq | head`) instead of panicking on the write.
    // SAFETY: restoring the default SIGPIPE action before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let _log_guard = match underwrite_telemetry::init_from_env() {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "error: {}",
                underwrite_telemetry::redact::redact(&format!("{error:#}"))
            );
            std::process::ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::Init { path, force } = &cli.command {
        return commands::init(path, *force);
    }
    if let Command::Train {
        model: TrainCommand::Risk(args),
    } = cli.command
    {
        return train::train_risk(args);
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(db) = cli.db {
        config.store_path = db;
    }
    if let Some(lake) = cli.lake {
        config.lake_path = lake;
    }
    match cli.command {
        Command::Init { .. } | Command::Train { .. } => unreachable!("handled above"),
        Command::List => commands::list(&config),
        Command::Migrate => commands::migrate(&config),
        Command::Run(args) => commands::run(&config, args).await,
        Command::Dlq(args) => commands::dlq(&config, args).await,
        Command::Health => commands::health(&config),
        Command::Metrics(args) => commands::metrics(&config, args),
        Command::Serve(args) => serve::serve(&config, args).await,
        Command::Backup(args) => commands::backup(&config, args),
        Command::Restore(args) => commands::restore(&config, args),
        Command::DayEnd(args) => dayend::day_end(&config, args).await,
        Command::Report {
            report: ReportCommand::Npa(args),
        } => dayend::report_npa(&config, args).await,
        Command::Audit {
            action: AuditCommand::Verify,
        } => commands::audit_verify(&config).await,
        Command::Example {
            example: ExampleCommand::GermanCredit(args),
        } => example::german_credit(&config, args).await,
        Command::Saga { action } => saga::saga(&config, action).await,
        Command::Bench(args) => bench::bench(&config, args).await,
        Command::Identity(args) => identity::identity(&config, args),
    }
}

//! `underwrite dlq` on the AWS backend (`aws.enabled`). It lists the dead
//! letters of each service's SQS dead-letter queue with their reasons, and
//! replays them to the source queues with body and attributes. Both go
//! through the SQS bus the functions use, which replays with a message-move
//! task where the endpoint supports one and by receive, send and delete
//! where it does not or for `--max`.

use std::process::ExitCode;

use anyhow::Context as _;
use underwrite_aws::AwsBackend;
use underwrite_runtime::ports::{Bus, ReplayMethod, Routes};

use crate::commands::DlqArgs;
use crate::config::Config;

/// The identity the CLI's bus writes claim checks under; listing and
/// replaying write none.
const CLI_OWNER: &str = "cli";

/// Lists or replays the dead letters of the AWS deployment named by
/// `config.aws`.
pub async fn dlq(config: &Config, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let routes = Routes::from_pairs(
        crate::services::NAMES
            .iter()
            .map(|name| (*name, &[] as &[&str])),
    );
    let backend = AwsBackend::connect(&config.aws, CLI_OWNER, routes)
        .await
        .context("invalid config")?;
    let bus = backend.bus;
    let queue = args.queue.as_deref();

    if args.replay {
        let replayed = bus
            .replay(queue, args.max)
            .await
            .context("Failed to replay dead letters")?;
        let how = match replayed.method {
            ReplayMethod::MoveTask => "with SQS message-move tasks",
            ReplayMethod::ReceiveSendDelete => "by receive, send and delete",
        };
        println!(
            "Moved {} dead letters back to their queues {how}; the functions handle them as they arrive.",
            replayed.moved
        );
        return Ok(ExitCode::SUCCESS);
    }

    let letters = bus
        .dead_letters(queue)
        .await
        .context("Failed to list dead letters")?;
    if args.json {
        crate::commands::print_json_lines(&letters);
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        println!("No dead letters.");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<40} {:<18} {:<18} {:>8}  reason",
        "queue", "event id", "kind", "code", "receives"
    );
    for letter in &letters {
        let reason = &letter.reason;
        println!(
            "{:<10} {:<40} {:<18} {:<18} {:>8}  {}",
            letter.queue,
            letter.message_id,
            reason.error_kind,
            reason.error_code,
            reason.receive_count,
            reason.error_message
        );
    }
    println!(
        "{} dead letters. Replay with `underwrite dlq --replay [--max N]`.",
        letters.len()
    );
    Ok(ExitCode::SUCCESS)
}

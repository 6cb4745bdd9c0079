//! The batch loop: one SQS batch in, the ids of the records to retry out.
//!
//! Lambda's SQS event source mapping with `ReportBatchItemFailures` deletes
//! every record of a batch except those listed in `batchItemFailures`. An
//! empty or unknown `itemIdentifier` fails the whole batch, and so does a
//! function error (Lambda developer guide, "Handling errors for an SQS event
//! source"). So each record is parsed and processed on its own, and only
//! the ids of records that a retry can help are returned.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use futures_util::FutureExt;
use lambda_runtime::LambdaEvent;
use serde::Deserialize as _;
use serde_json::Value;
use tracing::{Instrument, error, info_span, warn};

/// One SQS record, as passed to the processor.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The SQS message id, reported back when the record is to be retried.
    pub message_id: &'a str,
    /// The message body: an event envelope as JSON text, or a claim check.
    pub body: &'a str,
    /// The message attributes that carry a string value.
    pub attributes: &'a BTreeMap<String, String>,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// The receipt handle, for changing the message's visibility timeout.
    pub receipt_handle: Option<&'a str>,
    /// The ARN of the queue the record came from.
    pub queue_arn: Option<&'a str>,
}

/// The outcome of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Handled and committed, or a duplicate of a completed record.
    Handled,
    /// Failed permanently and sent to the dead-letter queue with its reason,
    /// so SQS may delete it.
    DeadLettered {
        /// The error's code, such as `invalid_event`.
        code: String,
    },
    /// Failed in a way a retry can help; SQS redelivers it after its
    /// visibility timeout and counts the receive towards `maxReceiveCount`.
    Retry {
        /// The error's code, such as `version_conflict`.
        code: String,
    },
}

/// Processes one record: verify, lease, handle, commit, publish.
#[async_trait]
pub trait RecordProcessor: Send + Sync {
    /// Processes `record` and reports what became of it. A panic inside is
    /// caught by the batch loop and counts as a retryable failure.
    async fn process(&self, record: &Record<'_>) -> Disposition;
}

/// Batch loop settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// No record is started when less than this remains before the
    /// invocation's deadline; the unstarted ones are reported as failures.
    pub deadline_margin: Duration,
}

/// Variable holding the deadline margin in milliseconds.
pub const DEADLINE_MARGIN_VARIABLE: &str = "UNDERWRITE_LAMBDA_DEADLINE_MARGIN_MS";

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            deadline_margin: Duration::from_millis(2_000),
        }
    }
}

impl BatchSettings {
    /// Reads `UNDERWRITE_LAMBDA_DEADLINE_MARGIN_MS` (0 to 900000; 2000 when
    /// unset). Fails with the value and the allowed range.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(DEADLINE_MARGIN_VARIABLE) {
            Err(_) => Ok(BatchSettings::default()),
            Ok(text) => {
                parse_margin(&text).map(|deadline_margin| BatchSettings { deadline_margin })
            }
        }
    }
}

/// Parses a deadline margin in milliseconds. Lambda's maximum timeout is
/// 900 s, so a larger margin would start no record at all.
fn parse_margin(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(ms) if ms <= 900_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "invalid {DEADLINE_MARGIN_VARIABLE} {text:?}: allowed values are whole milliseconds from 0 to 900000, such as 2000"
        )),
    }
}

/// Counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records handled (duplicates included).
    pub handled: u32,
    /// Records sent to the dead-letter queue.
    pub dead_lettered: u32,
    /// Records that failed and will be retried, panics included.
    pub retried: u32,
    /// Records not started because the deadline was near.
    pub unstarted: u32,
}

/// A batch whose records cannot be reported one by one.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The payload is not an SQS event, so no record id can be reported.
    #[error("invalid SQS event: {0}; the function must be fed by an SQS event source mapping")]
    NotAnSqsEvent(String),
    /// A record without a message id failed. Lambda rejects an empty item
    /// identifier, so the only way to have it retried is to fail the batch.
    #[error("a record without a messageId failed ({code}); the whole batch is retried")]
    UnidentifiedFailure {
        /// The failure's code.
        code: String,
    },
}

/// Runs `processor` over every record of the SQS event in `event` and
/// returns the ids of the records to retry.
pub async fn handle_batch(
    processor: &dyn RecordProcessor,
    settings: &BatchSettings,
    event: LambdaEvent<Value>,
) -> Result<(SqsBatchResponse, BatchSummary), BatchError> {
    let (payload, context) = event.into_parts();
    let records = match payload.get("Records") {
        Some(Value::Array(records)) => records,
        _ => {
            return Err(BatchError::NotAnSqsEvent(
                "the payload has no \"Records\" array".into(),
            ));
        }
    };
    let deadline = invocation_deadline(context.deadline);
    let span = info_span!("batch", request_id = %context.request_id, records = records.len());
    async {
        let mut response = SqsBatchResponse::default();
        let mut summary = BatchSummary::default();
        let mut unidentified: Option<String> = None;
        for (index, raw) in records.iter().enumerate() {
            let message = parse_message(raw);
            let message_id = record_id(raw);
            if let Some(deadline) = deadline
                && near(deadline, settings.deadline_margin)
            {
                let rest = &records[index..];
                summary.unstarted = rest.len() as u32;
                for raw in rest {
                    match record_id(raw) {
                        Some(id) => response.add_failure(id),
                        None => unidentified = Some("deadline".into()),
                    }
                }
                warn!(
                    unstarted = rest.len(),
                    margin_ms = settings.deadline_margin.as_millis() as u64,
                    deadline_ms = context.deadline,
                    "Stopped before the invocation deadline; the unstarted records return to the queue."
                );
                break;
            }
            let disposition = match &message {
                Err(reason) => {
                    // Lambda builds every record itself, so this one did not
                    // come from an event source mapping. It is reported as
                    // failed, so that SQS keeps it and its redrive policy
                    // moves it to the dead-letter queue untouched.
                    error!(index, error_code = "invalid_record", %reason, "A record is not an SQS message.");
                    Disposition::Retry {
                        code: "invalid_record".into(),
                    }
                }
                Ok(message) => process_one(processor, message).await,
            };
            match disposition {
                Disposition::Handled => summary.handled += 1,
                Disposition::DeadLettered { .. } => summary.dead_lettered += 1,
                Disposition::Retry { code } => {
                    summary.retried += 1;
                    match message_id {
                        Some(id) => response.add_failure(id),
                        None => unidentified = Some(code),
                    }
                }
            }
        }
        if let Some(code) = unidentified {
            return Err(BatchError::UnidentifiedFailure { code });
        }
        Ok((response, summary))
    }
    .instrument(span)
    .await
}

/// Returns the record's `messageId` when it is a non-empty string: Lambda
/// fails the whole batch on an empty or unknown item identifier.
fn record_id(raw: &Value) -> Option<&str> {
    raw.get("messageId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
}

fn parse_message(raw: &Value) -> Result<SqsMessage, String> {
    SqsMessage::deserialize(raw).map_err(|error| error.to_string())
}

/// Lambda sends the deadline as Unix milliseconds. `Context::default()`
/// carries 0, and cargo-lambda 1.9.2's emulator sends the function timeout
/// itself (600000, seen under `cargo lambda watch`). A value more than a day
/// in the past is therefore not a deadline, and the batch runs unbounded.
fn invocation_deadline(deadline_ms: u64) -> Option<SystemTime> {
    const DAY: Duration = Duration::from_secs(86_400);
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let earliest = SystemTime::now().checked_sub(DAY).unwrap_or(UNIX_EPOCH);
    if deadline < earliest {
        if deadline_ms > 0 {
            warn!(
                deadline_ms,
                "The invocation's deadline is not a Unix time in milliseconds; records are started without a deadline."
            );
        }
        return None;
    }
    Some(deadline)
}

/// Checks whether less than `margin` remains before `deadline`.
fn near(deadline: SystemTime, margin: Duration) -> bool {
    match deadline.duration_since(SystemTime::now()) {
        Ok(left) => left <= margin,
        Err(_) => true,
    }
}

/// Processes one parsed message under `catch_unwind`, so that a panic fails
/// this record only (release builds keep `panic = "unwind"`).
async fn process_one(processor: &dyn RecordProcessor, message: &SqsMessage) -> Disposition {
    let message_id = message.message_id.as_deref().unwrap_or("");
    let receive_count = message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1);
    // SQS rejects an empty body, so a missing one only comes from another
    // source; the processor rejects it as an invalid event.
    let body = message.body.as_deref().unwrap_or("");
    let attributes: BTreeMap<String, String> = message
        .message_attributes
        .iter()
        .filter_map(|(name, value)| Some((name.clone(), value.string_value.clone()?)))
        .collect();
    let record = Record {
        message_id,
        body,
        attributes: &attributes,
        receive_count,
        receipt_handle: message.receipt_handle.as_deref(),
        queue_arn: message.event_source_arn.as_deref(),
    };
    let span = info_span!("record", message_id, receive_count);
    let started = std::time::Instant::now();
    let outcome = AssertUnwindSafe(processor.process(&record))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match outcome {
        Ok(disposition) => {
            tracing::debug!(
                elapsed_us = started.elapsed().as_micros() as u64,
                ?disposition,
                "Processed a record."
            );
            disposition
        }
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-text panic payload".into());
            error!(error_code = "panic", panic = %text, "The handler panicked; the record will be retried.");
            Disposition::Retry {
                code: "panic".into(),
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for EMF timestamps.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_needs_unix_time() {
        assert_eq!(invocation_deadline(0), None);
        assert_eq!(invocation_deadline(600_000), None, "a timeout, not a time");
        let soon = now_ms() as u64 + 5_000;
        assert_eq!(
            invocation_deadline(soon),
            Some(UNIX_EPOCH + Duration::from_millis(soon))
        );
        let passed = now_ms() as u64 - 5_000;
        assert!(
            invocation_deadline(passed).is_some(),
            "a deadline just passed still stops the batch"
        );
    }

    #[test]
    fn margin_parses_and_rejects() {
        assert_eq!(parse_margin("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_margin("0"), Ok(Duration::ZERO));
        let error = parse_margin("2s").unwrap_err();
        assert!(error.contains("\"2s\""), "{error}");
        assert!(error.contains("0 to 900000"), "{error}");
        assert!(parse_margin("900001").is_err());
        assert!(parse_margin("-1").is_err());
    }
}

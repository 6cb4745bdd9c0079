//! The backend-agnostic per-record processor: architecture §4 applied to
//! one delivered message over the [ports](crate::ports). The Lambda driver
//! calls [`process_record`] once per SQS record; the adapter contract suite
//! calls it over both backends.
//!
//! The steps, in order:
//! 1. resolve a claim-check reference to the body it names;
//! 2. parse the event (failure: dead letter at once);
//! 3. verify its signature and emitter when an [`Authority`] is given
//!    (failure: dead letter at once);
//! 4. claim the idempotency lease: a complete event has its stored outputs
//!    re-published and is acknowledged; a lease held by another consumer
//!    fails the record as retryable;
//! 5. handle it under `catch_unwind`, so that a panic fails this record only;
//! 6. sign the outputs as the service;
//! 7. commit the writes and the completed record with its outputs;
//! 8. publish the outputs, then acknowledge.
//!
//! A permanent error, or a retryable one on the last allowed receive, sends
//! the record to the queue's dead-letter queue with its reason, and the
//! record is acknowledged: the driver deletes it from the source queue. Any
//! other failure leaves the record to be redelivered.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tracing::{Instrument, debug, info_span, warn};
use underwrite_events::{Envelope, trace_id};
use underwrite_identity::Authority;

use crate::clock::Clock;
use crate::ports::{Bus, Claim, DeadLetterReason, EffectStore, Outbound};
use crate::service::{Context, HandlerError, Service};

/// Settings for the processor's leases and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSettings {
    /// How long a claimed lease holds, in milliseconds. Set it to at least
    /// the handler's longest run (on Lambda, the function timeout) and below
    /// the queue's visibility timeout, so that a redelivery after a crash
    /// finds the lease expired.
    pub lease_ms: u64,
    /// The queue's `maxReceiveCount`: a retryable failure on this receive
    /// goes to the dead-letter queue with its reason.
    pub max_receive_count: u32,
}

impl Default for RecordSettings {
    fn default() -> Self {
        RecordSettings {
            lease_ms: 30_000,
            max_receive_count: 5,
        }
    }
}

/// The ports one record is processed over.
#[derive(Clone, Copy)]
pub struct Backend<'a> {
    /// State reads and writes, and idempotency records.
    pub effects: &'a dyn EffectStore,
    /// Publishing, claim checks and dead letters.
    pub bus: &'a dyn Bus,
    /// The time leases are taken and checked at.
    pub clock: &'a dyn Clock,
    /// Leases and retries.
    pub settings: RecordSettings,
}

/// One delivered message.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The message id (SQS's on AWS), for logs.
    pub message_id: &'a str,
    /// The body as delivered: an event, or a claim-check reference.
    pub body: &'a str,
    /// The message attributes, kept on a dead letter.
    pub attributes: &'a BTreeMap<String, String>,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// The outcome of one record.
#[derive(Debug)]
pub enum RecordOutcome {
    /// Handled and committed; its outputs were published.
    Done {
        /// The events published, as JSON texts in emission order.
        outputs: Vec<String>,
    },
    /// Already complete: its stored outputs were published again.
    Duplicate {
        /// The stored outputs, as JSON texts in emission order.
        outputs: Vec<String>,
    },
    /// Failed; leave it on the queue to be redelivered (on Lambda, report
    /// it in `batchItemFailures`).
    Retry(HandlerError),
    /// Failed permanently or for the last time and sent to the dead-letter
    /// queue with the error as its reason; acknowledge it.
    DeadLettered(HandlerError),
    /// Failed permanently and kept out of the dead-letter queue, because
    /// the caller sends the failure to the saga, whose compensations handle
    /// it. Acknowledge it.
    Answered(HandlerError),
}

impl RecordOutcome {
    /// Checks whether the driver should delete the record from its queue
    /// (on Lambda: leave it out of `batchItemFailures`).
    pub fn acknowledges(&self) -> bool {
        !matches!(self, RecordOutcome::Retry(_))
    }
}

/// Processes one record for `service` over `backend`; see the module
/// documentation for the steps. Never panics on a handler panic and never
/// returns an error: every failure is an outcome.
pub async fn process_record(
    service: &dyn Service,
    backend: &Backend<'_>,
    authority: Option<&Authority>,
    record: &Record<'_>,
) -> RecordOutcome {
    process(service, backend, authority, record, false).await
}

/// Processes a saga step's command like [`process_record`], except that a
/// permanent failure is [`RecordOutcome::Answered`] instead of a dead
/// letter: the failure goes to the saga as the step's result and the saga
/// compensates, as the embedded runtime does for a command that carries a
/// task token. A
/// retryable failure on the last receive still goes to the dead-letter
/// queue, where a replay resumes the step.
pub async fn process_saga_command(
    service: &dyn Service,
    backend: &Backend<'_>,
    authority: Option<&Authority>,
    record: &Record<'_>,
) -> RecordOutcome {
    process(service, backend, authority, record, true).await
}

async fn process(
    service: &dyn Service,
    backend: &Backend<'_>,
    authority: Option<&Authority>,
    record: &Record<'_>,
    answers_failures: bool,
) -> RecordOutcome {
    let queue = service.name();
    let span = info_span!(
        "record",
        service = queue,
        message_id = record.message_id,
        receive_count = record.receive_count,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    async {
        let outcome = run_steps(service, backend, authority, record).await;
        match outcome {
            Err(error) if answers_failures && !error.is_retryable() => {
                warn!(service = queue, error_code = error.code(), %error, "A saga command failed permanently; the failure is the saga step's result.");
                RecordOutcome::Answered(error)
            }
            Err(error) => fail(service, backend, record, error).await,
            Ok(outcome) => outcome,
        }
    }
    .instrument(span)
    .await
}

async fn run_steps(
    service: &dyn Service,
    backend: &Backend<'_>,
    authority: Option<&Authority>,
    record: &Record<'_>,
) -> Result<RecordOutcome, HandlerError> {
    let queue = service.name();
    let body = backend.bus.resolve(record.body).await?;
    let event = Envelope::from_slice(body.as_bytes())
        .map_err(|error| HandlerError::permanent("invalid_event", error.to_string()))?;
    let span = tracing::Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.event_type.as_str());
    span.record("correlation_id", event.correlation_id.as_str());
    span.record("trace_id", trace_id(&event.correlation_id).to_string());
    if let Some(authority) = authority {
        authority
            .verify(&event)
            .map_err(|error| HandlerError::permanent(error.code(), error.to_string()))?;
    }
    let now = backend.clock.now_ms();
    let lease = match backend
        .effects
        .claim(queue, event.id.as_str(), now, backend.settings.lease_ms)
        .await?
    {
        Claim::Complete { outputs } => {
            let outbound = outputs
                .iter()
                .cloned()
                .map(Outbound::from_json)
                .collect::<Result<Vec<_>, _>>()?;
            backend.bus.publish(&outbound).await?;
            debug!(
                republished = outbound.len(),
                "Dropped a duplicate delivery of a completed event after publishing its outputs again."
            );
            return Ok(RecordOutcome::Duplicate { outputs });
        }
        Claim::InProgress { expires_ms } => {
            return Err(HandlerError::retryable(
                "in_progress",
                format!(
                    "event {} is being handled by another consumer of {queue} whose lease expires at {expires_ms} (Unix ms); it will be retried",
                    event.id
                ),
            ));
        }
        Claim::Acquired(lease) => lease,
    };
    let context = Context {
        store: backend.effects,
        service: queue,
    };
    let handled = AssertUnwindSafe(service.handle(&event, &context))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-text panic payload".into());
            Err(HandlerError::retryable(
                "panic",
                format!("handler panicked: {text}"),
            ))
        })
        .and_then(|mut outcome| {
            if let Some(authority) = authority {
                for emitted in &mut outcome.emits {
                    authority.sign(queue, emitted).map_err(|error| {
                        HandlerError::permanent("authz_no_signing_key", error.to_string())
                    })?;
                }
            }
            Ok(outcome)
        });
    let outcome = match handled {
        Ok(outcome) => outcome,
        Err(error) => {
            release(backend, &lease).await;
            return Err(error);
        }
    };
    let outbound: Vec<Outbound> = outcome.emits.iter().map(Outbound::from_event).collect();
    let bodies: Vec<String> = outbound.iter().map(|o| o.body.clone()).collect();
    let now = backend.clock.now_ms();
    if let Err(error) = backend
        .effects
        .commit(&lease, &outcome.writes, &bodies, now)
        .await
    {
        release(backend, &lease).await;
        return Err(error.into());
    }
    // The record is complete from here on: if publishing fails, the
    // redelivery finds it complete and publishes the stored outputs.
    backend.bus.publish(&outbound).await?;
    debug!(emitted = outbound.len(), "Handled an event.");
    Ok(RecordOutcome::Done { outputs: bodies })
}

/// Gives a lease back; a failure only delays the next claim until the
/// lease expires, so it is logged and not returned.
async fn release(backend: &Backend<'_>, lease: &crate::ports::Lease) {
    if let Err(error) = backend.effects.release(lease).await {
        warn!(error_code = "lease_release_failed", %error, "Failed to release an idempotency lease; the next delivery waits until it expires.");
    }
}

/// Turns a failure into an outcome: a dead letter when no retry can help
/// or none is left, else a retry.
async fn fail(
    service: &dyn Service,
    backend: &Backend<'_>,
    record: &Record<'_>,
    error: HandlerError,
) -> RecordOutcome {
    let queue = service.name();
    let last = record.receive_count >= backend.settings.max_receive_count;
    if error.is_retryable() && !last {
        warn!(service = queue, error_code = error.code(), %error, "Handling failed; the record will be retried.");
        return RecordOutcome::Retry(error);
    }
    let reason = DeadLetterReason::from_error(&error, record.receive_count);
    match backend
        .bus
        .dead_letter(
            queue,
            record.message_id,
            record.body,
            record.attributes,
            &reason,
        )
        .await
    {
        Ok(()) => {
            warn!(service = queue, error_code = error.code(), %error, "Moved a failed record to the dead-letter queue.");
            RecordOutcome::DeadLettered(error)
        }
        Err(send_error) => {
            warn!(service = queue, error_code = send_error.code(), %send_error, %error, "Failed to send a failed record to the dead-letter queue; it will be redelivered.");
            RecordOutcome::Retry(HandlerError::retryable(
                "dead_letter_failed",
                format!("{error}; sending it to the dead-letter queue failed: {send_error}"),
            ))
        }
    }
}

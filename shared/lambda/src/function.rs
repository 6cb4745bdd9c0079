//! A service wired to its backend: the [`RecordProcessor`] a function's
//! `main` hands to the batch loop.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;
use underwrite_identity::Authority;
use underwrite_runtime::ports::{Bus, EffectStore};
use underwrite_runtime::record::{self, Backend, RecordOutcome, RecordSettings};
use underwrite_runtime::{Clock, Service};

use crate::batch::{Disposition, Record, RecordProcessor};
use crate::saga_task::{SagaTasks, task_message};

/// Maximum visibility backoff after a failed record, the embedded
/// supervisor's cap.
const MAX_BACKOFF_MS: u64 = 60_000;

/// One service over one backend, with the clients built once per cold
/// start.
pub struct Function {
    service: Arc<dyn Service>,
    effects: Arc<dyn EffectStore>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    authority: Option<Arc<Authority>>,
    settings: RecordSettings,
    backoff_seconds: Option<f64>,
    tasks: Option<Arc<SagaTasks>>,
}

impl Function {
    /// Wires `service` to a backend. `authority`, when given, verifies each
    /// record and signs each output.
    pub fn new(
        service: Arc<dyn Service>,
        effects: Arc<dyn EffectStore>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        authority: Option<Arc<Authority>>,
        settings: RecordSettings,
    ) -> Self {
        Function {
            service,
            effects,
            bus,
            clock,
            authority,
            settings,
            backoff_seconds: None,
            tasks: None,
        }
    }

    /// Runs the steps of a saga that Step Functions sends to this
    /// function's queue as task messages, and sends each task's result.
    pub fn with_saga_tasks(mut self, tasks: Arc<SagaTasks>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Makes a record that failed for a retryable reason visible again after
    /// a backoff starting at `seconds`, instead of after the queue's
    /// visibility timeout. Only for a bus that received the records itself,
    /// since the receipt handle must be one of its own.
    pub fn with_visibility_backoff(mut self, seconds: f64) -> Self {
        self.backoff_seconds = Some(seconds);
        self
    }

    /// Returns the service's name.
    pub fn name(&self) -> &'static str {
        self.service.name()
    }

    pub(crate) fn service(&self) -> &dyn Service {
        self.service.as_ref()
    }

    pub(crate) fn effects(&self) -> &dyn EffectStore {
        self.effects.as_ref()
    }

    pub(crate) fn bus(&self) -> &dyn Bus {
        self.bus.as_ref()
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub(crate) fn authority(&self) -> Option<&Authority> {
        self.authority.as_deref()
    }

    pub(crate) fn backend(&self) -> Backend<'_> {
        Backend {
            effects: self.effects.as_ref(),
            bus: self.bus.as_ref(),
            clock: self.clock.as_ref(),
            settings: self.settings,
        }
    }

    /// Returns the visibility delay before the `receive_count`-th receive
    /// is retried: `backoff_seconds * 2^(n-1)` capped at 60 s, the embedded
    /// supervisor's backoff (architecture §9 applies it to the message's
    /// visibility timeout on AWS).
    pub fn backoff_ms(seconds: f64, receive_count: u32) -> u64 {
        let exponent = receive_count.saturating_sub(1).min(30) as i32;
        let ms = seconds * 1000.0 * 2f64.powi(exponent);
        (ms as u64).min(MAX_BACKOFF_MS)
    }
}

impl Function {
    /// Turns a record's outcome into what the batch loop reports, applying
    /// the visibility backoff to a retry.
    pub(crate) async fn disposition(
        &self,
        outcome: RecordOutcome,
        record: &Record<'_>,
    ) -> Disposition {
        match outcome {
            // A saga command's permanent failure went to the saga as its result.
            RecordOutcome::Done { .. }
            | RecordOutcome::Duplicate { .. }
            | RecordOutcome::Answered(_) => Disposition::Handled,
            RecordOutcome::DeadLettered(error) => Disposition::DeadLettered {
                code: error.code().to_string(),
            },
            RecordOutcome::Retry(error) => {
                if let (Some(seconds), Some(receipt)) =
                    (self.backoff_seconds, record.receipt_handle)
                {
                    let delay = Function::backoff_ms(seconds, record.receive_count);
                    if let Err(change) = self.bus.retry_after(self.name(), receipt, delay).await {
                        // The queue's own visibility timeout applies instead.
                        warn!(error_code = change.code(), error = %change, "Failed to shorten the failed record's visibility timeout to its backoff.");
                    }
                }
                Disposition::Retry {
                    code: error.code().to_string(),
                }
            }
        }
    }
}

#[async_trait]
impl RecordProcessor for Function {
    async fn process(&self, record: &Record<'_>) -> Disposition {
        if let Some(tasks) = &self.tasks {
            match task_message(record.body) {
                Some(Ok(message)) => return self.process_task(tasks, record, message).await,
                Some(Err(reason)) => {
                    return self.dead_letter_task(record, "invalid_task", reason).await;
                }
                None => {}
            }
            if let Some(disposition) = self.signal_arrived(tasks, record).await {
                return disposition;
            }
        }
        let input = record::Record {
            message_id: record.message_id,
            body: record.body,
            attributes: record.attributes,
            receive_count: record.receive_count,
        };
        let outcome = record::process_record(
            self.service.as_ref(),
            &self.backend(),
            self.authority.as_deref(),
            &input,
        )
        .await;
        self.disposition(outcome, record).await
    }
}

//! The embedded driver: polls each service's SQLite queue in batches and
//! applies the same rules as the Lambda driver on SQS.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{Instrument, debug, info_span, warn};
use underwrite_events::Envelope;

use crate::queue::{QueueSettings, ReceivedMessage};
use crate::service::{Context, HandlerError, Service};
use crate::sqlite::{CommitResult, SqliteStore, now_ms};
use crate::store::StoreError;

/// Counts of one run, reported to the progress callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records handled and committed.
    pub handled: u64,
    /// Redelivered records that were already complete and were dropped.
    pub duplicates: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Records moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Events emitted by handlers.
    pub emitted: u64,
    /// Messages waiting in the selected queues after the last batch.
    pub queued: u64,
}

/// Options of `run`.
pub struct RunOptions {
    /// Services to run, by name; empty runs every registered service.
    pub services: Vec<String>,
    /// Return when every selected queue is empty, waiting out messages that
    /// are hidden for a retry.
    pub until_idle: bool,
    /// Set to stop after the batches in flight.
    pub stop: Arc<AtomicBool>,
    /// Time between polls of an empty queue when not stopping at idle.
    pub poll_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            services: Vec::new(),
            until_idle: true,
            stop: Arc::new(AtomicBool::new(false)),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// Error raised by `run` for a configuration mistake.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A service named to run is not registered.
    #[error("unknown service {name:?}: registered services are {known}")]
    UnknownService {
        /// The name given.
        name: String,
        /// The registered names.
        known: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The embedded runtime: registered services over one SQLite store.
pub struct EmbeddedRuntime {
    store: Arc<SqliteStore>,
    services: Vec<Arc<dyn Service>>,
    settings: QueueSettings,
}

impl EmbeddedRuntime {
    /// Creates a runtime over `store` with these services and queue settings.
    pub fn new(
        store: Arc<SqliteStore>,
        services: Vec<Arc<dyn Service>>,
        settings: QueueSettings,
    ) -> Self {
        EmbeddedRuntime {
            store,
            services,
            settings,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// Returns the registered services.
    pub fn services(&self) -> &[Arc<dyn Service>] {
        &self.services
    }

    /// Queues (service names) subscribed to `event_type`.
    pub fn routes(&self, event_type: &str) -> Vec<&'static str> {
        self.services
            .iter()
            .filter(|s| {
                s.subscriptions()
                    .iter()
                    .any(|t| *t == "*" || *t == event_type)
            })
            .map(|s| s.name())
            .collect()
    }

    /// Publishes events to every subscribing queue in one transaction.
    pub fn publish(&self, events: &[Envelope]) -> Result<(), StoreError> {
        let messages = self.route_all(events);
        self.store.send_many(&messages)
    }

    /// Publishes events and applies `writes` in one transaction.
    pub fn publish_with(
        &self,
        events: &[Envelope],
        writes: &[crate::store::StateWrite],
    ) -> Result<(), StoreError> {
        let messages = self.route_all(events);
        self.store.send_many_with_writes(&messages, writes)
    }

    fn route_all(&self, events: &[Envelope]) -> Vec<(Vec<&'static str>, String, String)> {
        events
            .iter()
            .map(|event| {
                (
                    self.routes(&event.event_type),
                    event.id.to_string(),
                    event.to_json(),
                )
            })
            .collect()
    }

    fn selected(&self, names: &[String]) -> Result<Vec<Arc<dyn Service>>, RunError> {
        if names.is_empty() {
            return Ok(self.services.clone());
        }
        names
            .iter()
            .map(|name| {
                self.services
                    .iter()
                    .find(|s| s.name() == name)
                    .cloned()
                    .ok_or_else(|| RunError::UnknownService {
                        name: name.clone(),
                        known: self
                            .services
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            })
            .collect()
    }

    /// Runs the selected services, calling `progress` after each batch.
    pub async fn run(
        &self,
        options: &RunOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Progress, RunError> {
        let services = self.selected(&options.services)?;
        let queues: Vec<&str> = services.iter().map(|s| s.name()).collect();
        let mut totals = Progress::default();
        let mut last_progress = std::time::Instant::now();
        loop {
            if options.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut worked = false;
            for service in &services {
                let batch = self.process_batch(service.as_ref(), &mut totals).await?;
                worked |= batch > 0;
            }
            if worked {
                // Counting a queue scans its rows, so progress is refreshed
                // at most every 250 ms rather than after every batch.
                if last_progress.elapsed() >= Duration::from_millis(250) {
                    totals.queued = self.depth(&queues)?;
                    progress(&totals);
                    last_progress = std::time::Instant::now();
                }
                continue;
            }
            let next = self.store.next_visible_ms(&queues)?;
            match next {
                None if options.until_idle => break,
                None => tokio::time::sleep(options.poll_interval).await,
                Some(at) => {
                    let wait = (at - now_ms()).clamp(1, options.poll_interval.as_millis() as i64);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
        totals.queued = self.depth(&queues)?;
        progress(&totals);
        Ok(totals)
    }

    fn depth(&self, queues: &[&str]) -> Result<u64, StoreError> {
        queues
            .iter()
            .map(|q| {
                self.store
                    .queue_depth(q)
                    .map(|(visible, hidden)| visible + hidden)
            })
            .sum()
    }

    /// Receives and handles one batch of `service`'s queue; returns how many
    /// records it received.
    pub async fn process_batch(
        &self,
        service: &dyn Service,
        totals: &mut Progress,
    ) -> Result<usize, StoreError> {
        let messages = self.store.receive(service.name(), &self.settings)?;
        let span = info_span!("batch", service = service.name(), records = messages.len());
        if messages.is_empty() {
            return Ok(0);
        }
        self.store.begin_batch()?;
        let result = async {
            for message in &messages {
                self.process_record(service, message, totals).await?;
            }
            Ok::<_, StoreError>(())
        }
        .instrument(span)
        .await;
        match result {
            Ok(()) => self.store.end_batch()?,
            Err(error) => {
                self.store.abort_batch()?;
                return Err(error);
            }
        }
        Ok(messages.len())
    }

    async fn process_record(
        &self,
        service: &dyn Service,
        message: &ReceivedMessage,
        totals: &mut Progress,
    ) -> Result<(), StoreError> {
        let queue = service.name();
        let event = match Envelope::from_slice(message.body.as_bytes()) {
            Ok(event) => event,
            Err(error) => {
                warn!(service = queue, message_id = %message.message_id, error_code = "invalid_event", %error, "Rejected an invalid event to the dead-letter queue.");
                self.store
                    .dead_letter(queue, message, "invalid_event", &error.to_string())?;
                totals.dead_lettered += 1;
                return Ok(());
            }
        };
        let span = info_span!(
            "record",
            service = queue,
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = %event.correlation_id,
            receive_count = message.receive_count,
        );
        async {
            // NOTE: the embedded runtime runs one consumer per queue, so no
            // in-progress lease is taken before handling; a duplicate can only
            // be a completed event. Concurrent consumers need the lease.
            if self.store.is_complete(queue, event.id.as_str())? {
                debug!("Dropped a duplicate delivery of a completed event.");
                self.store.delete(message.seq)?;
                totals.duplicates += 1;
                return Ok(());
            }
            let context = Context {
                store: self.store.as_ref(),
                service: queue,
            };
            let result = AssertUnwindSafe(service.handle(&event, &context))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "non-text panic payload".into());
                    Err(HandlerError::retryable("panic", format!("handler panicked: {text}")))
                });
            let error = match result {
                Ok(outcome) => {
                    let outputs = self.route_all(&outcome.emits);
                    match self.store.commit(queue, message.seq, event.id.as_str(), &outcome.writes, &outputs) {
                        Ok(CommitResult::Committed) => {
                            totals.handled += 1;
                            totals.emitted += outcome.emits.len() as u64;
                            debug!(emitted = outcome.emits.len(), "Handled an event.");
                            return Ok(());
                        }
                        Ok(CommitResult::Duplicate) => {
                            totals.duplicates += 1;
                            return Ok(());
                        }
                        Err(error) => HandlerError::from(error),
                    }
                }
                Err(error) => error,
            };
            let dead = self.store.fail(
                queue,
                message,
                !error.is_retryable(),
                error.code(),
                &error.to_string(),
                &self.settings,
                self.settings.visibility_timeout_ms,
            )?;
            if dead {
                warn!(error_code = error.code(), %error, "Moved a failed event to the dead-letter queue.");
                totals.dead_lettered += 1;
            } else {
                warn!(error_code = error.code(), %error, "Handling failed; the event will be retried.");
                totals.retried += 1;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

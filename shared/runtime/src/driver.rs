//! The embedded driver: polls each service's SQLite queue in batches and
//! applies the same rules as the Lambda driver on SQS.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tracing::{Instrument, debug, info, info_span, warn};
use underwrite_events::{Envelope, trace_id};
use underwrite_identity::{Authority, INGEST_IDENTITY, IdentityError};

use crate::clock::{Clock, SystemClock};
use crate::metrics::{Counter, Metrics};
use crate::queue::{QueueSettings, ReceivedMessage};
use crate::resilience::{HealthReport, ResilienceSettings, RuntimeHealth, SupervisorState};
use crate::service::{Context, HandlerError, Service};
use crate::sqlite::{CommitResult, SqliteStore, now_ms};
use crate::sqlite_ops::RunSnapshot;
use crate::store::StoreError;

/// How often a run stores its metrics and health snapshot.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Saga commands that failed permanently and were answered to their saga
    /// as a failed step instead of going to the dead-letter queue.
    pub answered_failures: u64,
    /// Events emitted by handlers.
    pub emitted: u64,
    /// Messages waiting in the selected queues after the last batch.
    pub queued: u64,
}

impl Progress {
    /// Adds the counts of another run; `queued` takes the later run's value.
    pub fn add(&mut self, later: &Progress) {
        self.handled += later.handled;
        self.duplicates += later.duplicates;
        self.retried += later.retried;
        self.dead_lettered += later.dead_lettered;
        self.answered_failures += later.answered_failures;
        self.emitted += later.emitted;
        self.queued = later.queued;
    }
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
    /// The command name stored with the run's metrics snapshot, such as
    /// `run` or `serve`; `None` stores no snapshot.
    pub snapshot_as: Option<&'static str>,
    /// A flag another thread sets, such as after recording a saga signal,
    /// so that `run_with_idle_work` calls its idle work at the next idle
    /// poll even though no batch ran. The call clears it.
    pub idle_wake: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            services: Vec::new(),
            until_idle: true,
            stop: Arc::new(AtomicBool::new(false)),
            poll_interval: Duration::from_millis(200),
            snapshot_as: None,
            idle_wake: Arc::new(AtomicBool::new(false)),
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
    /// The work run when the queues fall idle failed.
    #[error("{0}")]
    IdleWork(String),
}

/// The minimum number of input events that gets a signing or serialising
/// thread of its own.
const SIGNING_CHUNK_MIN: usize = 512;

/// Returns the chunk length that splits `len` items into one chunk per
/// core, each of at least `SIGNING_CHUNK_MIN` items.
fn chunk_len(len: usize) -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    len.div_ceil(threads).max(SIGNING_CHUNK_MIN)
}

/// Runs `work` on each chunk, each on a thread of its own when there are
/// several, and returns the results in chunk order.
fn on_cores<C: Send, R: Send>(chunks: Vec<C>, work: impl Fn(C) -> R + Sync) -> Vec<R> {
    if chunks.len() <= 1 {
        return chunks.into_iter().map(work).collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The embedded runtime: registered services over one SQLite store.
pub struct EmbeddedRuntime {
    store: Arc<SqliteStore>,
    services: Vec<Arc<dyn Service>>,
    settings: QueueSettings,
    metrics: Arc<Metrics>,
    health: Arc<RuntimeHealth>,
    clock: Arc<dyn Clock>,
    run_id: String,
    started_ms: i64,
    authority: Option<Arc<Authority>>,
    saga_commands: std::sync::RwLock<std::collections::BTreeSet<(String, String)>>,
}

impl EmbeddedRuntime {
    /// Creates a runtime over `store` with these services and queue settings.
    pub fn new(
        store: Arc<SqliteStore>,
        services: Vec<Arc<dyn Service>>,
        settings: QueueSettings,
    ) -> Self {
        let names: Vec<&'static str> = services.iter().map(|s| s.name()).collect();
        EmbeddedRuntime {
            store,
            services,
            settings,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(RuntimeHealth::new(&names, ResilienceSettings::default())),
            clock: Arc::new(SystemClock),
            run_id: uuid::Uuid::now_v7().to_string(),
            started_ms: now_ms(),
            authority: None,
            saga_commands: Default::default(),
        }
    }

    /// Registers (service, event type) pairs that a saga sends as step
    /// commands. An event a saga step answered with, and a saga's input, are
    /// not routed by subscription to these pairs: the saga sends them on as
    /// commands when the step before succeeds, so a declined application
    /// never reaches the later steps.
    pub fn register_saga_commands<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut commands = self
            .saga_commands
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (service, event_type) in pairs {
            commands.insert((service.to_string(), event_type.to_string()));
        }
    }

    /// Queues subscribed to `event_type` for an event that belongs to a saga:
    /// the subscribers, less those the saga sends this type to as a command.
    pub fn saga_routes(&self, event_type: &str) -> Vec<&'static str> {
        let commands = self
            .saga_commands
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.routes(event_type)
            .into_iter()
            .filter(|service| !commands.contains(&(service.to_string(), event_type.to_string())))
            .collect()
    }

    /// Signs events emitted by `identity`, such as a saga's compensations;
    /// does nothing when signing is off.
    pub fn sign_as(&self, identity: &str, events: &mut [Envelope]) -> Result<(), IdentityError> {
        if let Some(authority) = &self.authority {
            for event in events {
                authority.sign(identity, event)?;
            }
        }
        Ok(())
    }

    /// Signs every emitted event with its service's key and verifies every
    /// delivered record before its handler runs. `authority` must hold the
    /// key of every registered service and of the ingest identity.
    pub fn with_authority(mut self, authority: Arc<Authority>) -> Result<Self, IdentityError> {
        let names = self.services.iter().map(|s| s.name());
        for name in names.chain([INGEST_IDENTITY]) {
            if !authority.signs_as(name) {
                return Err(IdentityError::MissingKey {
                    identity: name.to_string(),
                    path: format!("{name}.key").into(),
                });
            }
        }
        self.authority = Some(authority);
        Ok(self)
    }

    /// Signs input events as the ingest identity, after they were validated;
    /// does nothing when signing is off.
    pub fn sign_input(&self, events: &mut [Envelope]) -> Result<(), IdentityError> {
        let Some(authority) = &self.authority else {
            return Ok(());
        };
        // Each signature is independent of the others, so a large input is
        // signed on every core: an Ed25519 signature costs about 20 µs.
        let chunks = events.chunks_mut(chunk_len(events.len())).collect();
        on_cores(chunks, |part: &mut [Envelope]| {
            part.iter_mut()
                .try_for_each(|event| authority.sign(INGEST_IDENTITY, event).map(|_| ()))
        })
        .into_iter()
        .collect()
    }

    /// Checks the signature and the emitter policy of `event`, parsed from
    /// `body`, when verification is on.
    fn verify(&self, event: &Envelope, body: &str) -> Result<(), HandlerError> {
        match &self.authority {
            Some(authority) => authority
                .verify_body(event, body.as_bytes())
                .map_err(|error| HandlerError::permanent(error.code(), error.to_string())),
            None => Ok(()),
        }
    }

    /// Signs a handler's outputs with the handling service's key, when
    /// signing is on, and returns their JSON bodies.
    fn sign_outputs(
        &self,
        service: &str,
        events: &mut [Envelope],
    ) -> Result<Vec<String>, HandlerError> {
        events
            .iter_mut()
            .map(|event| match &self.authority {
                Some(authority) => authority.sign(service, event).map_err(|error| {
                    HandlerError::permanent("authz_no_signing_key", error.to_string())
                }),
                None => Ok(event.to_json()),
            })
            .collect()
    }

    /// Replaces the clock that backoff and circuit breakers read.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the supervisor and circuit breaker settings, resetting their
    /// state.
    pub fn with_resilience(mut self, settings: ResilienceSettings) -> Self {
        let names: Vec<&'static str> = self.services.iter().map(|s| s.name()).collect();
        self.health = Arc::new(RuntimeHealth::new(&names, settings));
        self
    }

    /// Returns this process's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Returns the circuits and supervisors as they stand now.
    pub fn health_report(&self) -> HealthReport {
        self.health.report(self.clock.now_ms())
    }

    /// Stores this runtime's metrics and health under its run id, so that
    /// another process can report them; `ended` marks the run as stopped.
    pub fn save_snapshot(&self, command: &str, ended: bool) -> Result<(), StoreError> {
        let result = self.store.save_run_snapshot(&RunSnapshot {
            run_id: self.run_id.clone(),
            command: command.to_string(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            updated_ms: now_ms(),
            ended_ms: ended.then(now_ms),
            metrics: self.metrics.snapshot(),
            health: self.health_report(),
        });
        self.count_store_error(&result);
        result
    }

    fn count_store_error<T>(&self, result: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable(_)) = result {
            self.metrics.increment(Counter::StoreIoError);
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

    /// Routes the outputs of a saga command, given with their JSON bodies,
    /// leaving out the queues the saga itself sends them to (see
    /// `register_saga_commands`).
    pub fn route_saga_outputs(
        &self,
        events: &[Envelope],
        bodies: Vec<String>,
    ) -> Vec<(Vec<&'static str>, String, String)> {
        Self::route_bodies(events, bodies, |event_type| self.saga_routes(event_type))
    }

    fn route_all(&self, events: &[Envelope]) -> Vec<(Vec<&'static str>, String, String)> {
        // Serialising each event is independent too, so a large input is
        // serialised on every core.
        let chunks = events.chunks(chunk_len(events.len())).collect();
        let bodies = on_cores(chunks, |part: &[Envelope]| {
            part.iter().map(Envelope::to_json).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        Self::route_bodies(events, bodies, |event_type| self.routes(event_type))
    }

    /// Pairs each event's queues, found by `routes`, and id with its JSON body.
    fn route_bodies(
        events: &[Envelope],
        bodies: Vec<String>,
        routes: impl Fn(&str) -> Vec<&'static str>,
    ) -> Vec<(Vec<&'static str>, String, String)> {
        events
            .iter()
            .zip(bodies)
            .map(|(event, body)| (routes(&event.event_type), event.id.to_string(), body))
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
        self.run_with_idle_work(options, progress, &mut || Ok(0))
            .await
    }

    /// Runs the selected services as `run` does, and calls `idle_work`
    /// whenever every queue is empty after some batch handled records (and
    /// once at the start). `idle_work` returns how many things it moved on,
    /// such as saga transitions that queued new commands. When it moved
    /// any, the services run again before the run may end at idle.
    pub async fn run_with_idle_work(
        &self,
        options: &RunOptions,
        progress: &mut dyn FnMut(&Progress),
        idle_work: &mut dyn FnMut() -> Result<usize, String>,
    ) -> Result<Progress, RunError> {
        let mut work_since_idle = true;
        self.store.start_checkpointer()?;
        let services = self.selected(&options.services)?;
        let queues: Vec<&str> = services.iter().map(|s| s.name()).collect();
        let mut totals = Progress::default();
        let mut last_progress = std::time::Instant::now();
        let mut last_snapshot = std::time::Instant::now();
        loop {
            if options.stop.load(Ordering::SeqCst) {
                break;
            }
            if let Some(command) = options.snapshot_as
                && last_snapshot.elapsed() >= SNAPSHOT_INTERVAL
            {
                // A failed snapshot is counted in store.io_error and retried
                // at the next interval; it does not stop handling.
                let _ = self.save_snapshot(command, false);
                last_snapshot = std::time::Instant::now();
            }
            let mut worked = false;
            let mut backing_off = false;
            let mut store_open = false;
            for service in &services {
                let now = self.clock.now_ms();
                if !self.health.with_store(|breaker| breaker.allow(now)) {
                    store_open = true;
                    break;
                }
                let state = self
                    .health
                    .with_service(service.name(), |supervisor, _| {
                        (supervisor.may_run(now), supervisor.state(now))
                    })
                    .unwrap_or((true, SupervisorState::Running));
                if !state.0 {
                    backing_off |= state.1 != SupervisorState::Stopped;
                    continue;
                }
                let batch = self.process_batch(service.as_ref(), &mut totals).await;
                self.count_store_error(&batch);
                let now = self.clock.now_ms();
                match batch {
                    Ok(received) => {
                        self.health.with_store(|breaker| breaker.record_success());
                        worked |= received > 0;
                    }
                    Err(error) => {
                        let open = self.health.with_store(|breaker| {
                            breaker.record_failure(now);
                            breaker.open_until_ms().is_some()
                        });
                        warn!(service = service.name(), %error, circuit_open = open, "A batch failed on a store error; its records return to the queue after the visibility timeout.");
                        if open && options.until_idle {
                            return Err(RunError::Store(error));
                        }
                    }
                }
            }
            if store_open || (backing_off && !worked) {
                tokio::time::sleep(options.poll_interval).await;
                continue;
            }
            let now = self.clock.now_ms();
            let active: Vec<&str> = queues
                .iter()
                .copied()
                .filter(|queue| {
                    self.health
                        .with_service(queue, |supervisor, _| {
                            supervisor.state(now) != SupervisorState::Stopped
                        })
                        .unwrap_or(true)
                })
                .collect();
            if worked {
                // Counting a queue scans its rows, so progress is refreshed
                // at most every 250 ms rather than after every batch.
                if last_progress.elapsed() >= Duration::from_millis(250) {
                    totals.queued = self.depth(&queues)?;
                    progress(&totals);
                    last_progress = std::time::Instant::now();
                }
                work_since_idle = true;
                continue;
            }
            if work_since_idle || options.idle_wake.swap(false, Ordering::SeqCst) {
                work_since_idle = false;
                if idle_work().map_err(RunError::IdleWork)? > 0 {
                    work_since_idle = true;
                    continue;
                }
            }
            let next = if active.is_empty() {
                None
            } else {
                self.store.next_visible_ms(&active)?
            };
            match next {
                None if options.until_idle => break,
                None => tokio::time::sleep(options.poll_interval).await,
                Some(at) => {
                    let wait = (at - now_ms()).clamp(1, options.poll_interval.as_millis() as i64);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
        if let Some(command) = options.snapshot_as {
            self.save_snapshot(command, true)?;
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
            // Events completed before this batch, found with one query. Each
            // record the batch completes is added, so a second delivery
            // within the batch is dropped like any other.
            let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
            let mut completed = self.store.completed_among(service.name(), &ids)?;
            for message in &messages {
                self.process_record(service, message, &mut completed, totals)
                    .await?;
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

    /// Counts a failed record, and feeds retryable failures to the
    /// subscriber's breaker and panics to its supervisor. Permanent errors
    /// describe the event, not the subscriber, so they leave both alone.
    fn record_failure(&self, queue: &str, error: &HandlerError, panicked: bool) {
        self.metrics.increment(Counter::EventsFailed);
        if error.code().starts_with("authz") {
            self.metrics.increment(Counter::AuthzFailures);
        }
        if !error.is_retryable() {
            return;
        }
        let now = self.clock.now_ms();
        self.health.with_service(queue, |supervisor, breaker| {
            breaker.record_failure(now);
            if panicked {
                let backoff_ms = supervisor.record_failure(now);
                warn!(
                    service = queue,
                    backoff_ms,
                    consecutive_failures = supervisor.consecutive_failures(),
                    "The handler panicked; the service restarts after a backoff."
                );
            }
        });
    }

    async fn process_record(
        &self,
        service: &dyn Service,
        message: &ReceivedMessage,
        completed: &mut std::collections::HashSet<String>,
        totals: &mut Progress,
    ) -> Result<(), StoreError> {
        let queue = service.name();
        // The body the event was parsed from is kept: verification looks its
        // digest up in the memo of bodies already checked.
        let parsed = Envelope::from_slice(message.body.as_bytes())
            .map(|event| (event, None))
            .or_else(|error| {
                // A claim-check reference published through the ports names its body.
                self.store
                    .claimed_body(&message.body)
                    .map_or(Err(error), |body| {
                        Envelope::from_slice(body.as_bytes()).map(|event| (event, Some(body)))
                    })
            });
        let (event, claimed) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                warn!(service = queue, message_id = %message.message_id, error_code = "invalid_event", %error, "Rejected an invalid event to the dead-letter queue.");
                if let Some(token) = &message.task_token {
                    self.store.answer_failure(
                        message,
                        token,
                        "invalid_event",
                        &error.to_string(),
                    )?;
                    totals.answered_failures += 1;
                } else {
                    self.store
                        .dead_letter(queue, message, "invalid_event", &error.to_string())?;
                    totals.dead_lettered += 1;
                }
                return Ok(());
            }
        };
        let span = info_span!(
            "record",
            service = queue,
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = %event.correlation_id,
            trace_id = %trace_id(&event.correlation_id),
            receive_count = message.receive_count,
        );
        async {
            // Each delivered record is verified once, before anything reads it.
            let verified = self.verify(&event, claimed.as_deref().unwrap_or(&message.body));
            // NOTE: the embedded runtime runs one consumer per queue, so no
            // in-progress lease is taken before handling; a duplicate can only
            // be a completed event. Concurrent consumers need the lease.
            if verified.is_ok() && completed.contains(event.id.as_str()) {
                debug!("Dropped a duplicate delivery of a completed event.");
                self.store.answer_duplicate(queue, message, event.id.as_str())?;
                totals.duplicates += 1;
                return Ok(());
            }
            let now = self.clock.now_ms();
            let open_until = self
                .health
                .with_service(queue, |_, breaker| (!breaker.allow(now)).then(|| breaker.open_until_ms()))
                .flatten();
            // A record that failed verification is rejected for that reason
            // even while the circuit is open.
            if let (Ok(()), Some(open_until)) = (&verified, open_until) {
                let reason = format!(
                    "circuit open: {queue} failed {} consecutive times and receives no events until {}; replay this one with `underwrite dlq --replay`",
                    self.health.with_service(queue, |_, b| b.report_failures()).unwrap_or(0),
                    open_until.unwrap_or(now),
                );
                self.store.fail(queue, message, true, "circuit_open", &reason, &self.settings, 0)?;
                self.metrics.increment(Counter::EventsFailed);
                totals.dead_lettered += 1;
                return Ok(());
            }
            let context = Context {
                store: self.store.as_ref(),
                service: queue,
            };
            let mut panicked = false;
            let result = match verified {
                Err(error) => Err(error),
                Ok(()) => {
                    let started = std::time::Instant::now();
                    let result = AssertUnwindSafe(service.handle(&event, &context))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            panicked = true;
                            let text = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "non-text panic payload".into());
                            Err(HandlerError::retryable("panic", format!("handler panicked: {text}")))
                        });
                    self.metrics.record_duration(queue, &event.event_type, started.elapsed().as_micros() as u64);
                    result.and_then(|mut outcome| {
                        let bodies = self.sign_outputs(queue, &mut outcome.emits)?;
                        Ok((outcome, bodies))
                    })
                }
            };
            let error = match result {
                Ok((outcome, bodies)) => {
                    let outputs = if message.task_token.is_some() {
                        self.route_saga_outputs(&outcome.emits, bodies)
                    } else {
                        Self::route_bodies(&outcome.emits, bodies, |event_type| self.routes(event_type))
                    };
                    let committed = self.store.commit(queue, message, event.id.as_str(), &outcome.writes, &outputs);
                    self.count_store_error(&committed);
                    match committed {
                        Ok(CommitResult::Committed) => {
                            completed.insert(event.id.to_string());
                            totals.handled += 1;
                            totals.emitted += outcome.emits.len() as u64;
                            self.metrics.increment(Counter::EventsHandled);
                            self.metrics.add(Counter::EventsEmitted, outcome.emits.len() as u64);
                            self.health.with_service(queue, |supervisor, breaker| {
                                supervisor.record_success();
                                breaker.record_success();
                            });
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
            self.record_failure(queue, &error, panicked);
            if let (Some(token), false) = (&message.task_token, error.is_retryable()) {
                self.store.answer_failure(message, token, error.code(), &error.to_string())?;
                info!(service = queue, event_type = %event.event_type, error_code = error.code(), event_id = event.id.as_str(), task_token = token.as_str(), "Answered a saga step with its permanent failure.");
                totals.answered_failures += 1;
                return Ok(());
            }
            let dead = self.store.fail(
                queue,
                message,
                !error.is_retryable(),
                error.code(),
                &error.to_string(),
                &self.settings,
                self.settings.visibility_timeout_ms,
            )?;
            // The ids are repeated on these events because the record span is
            // at INFO and absent when only warnings are logged.
            let event_id = event.id.as_str();
            let correlation_id = event.correlation_id.as_str();
            if dead {
                warn!(service = queue, event_type = %event.event_type, error_code = error.code(), event_id, correlation_id, trace_id = %trace_id(&event.correlation_id), %error, "Moved a failed event to the dead-letter queue.");
                totals.dead_lettered += 1;
            } else {
                warn!(service = queue, event_type = %event.event_type, error_code = error.code(), event_id, correlation_id, trace_id = %trace_id(&event.correlation_id), %error, "Handling failed; the event will be retried.");
                totals.retried += 1;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

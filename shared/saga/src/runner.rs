//! The embedded saga runner: sends each step's command to its service's
//! queue with a task token, reads the service's answer, and moves the saga
//! forward or through its compensations.
//!
//! Every transition is one SQLite transaction: the step's new state, the
//! saga's status and the next command on its queue commit together, and a
//! service's answer commits with the handled command (see
//! `SqliteStore::commit`). A crash between any two transitions therefore
//! loses nothing, and [`replay_saga`] resumes where the store stands. A
//! redelivered command is answered from the service's idempotency record,
//! and only the first answer to a task token counts, so a duplicate changes
//! nothing.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};
use thiserror::Error;
use underwrite_events::Envelope;
use underwrite_identity::IdentityError;
use underwrite_runtime::sqlite::{enqueue_command, now_ms};
use underwrite_runtime::{EmbeddedRuntime, RunOptions, StoreError};

use crate::definition::{SagaDefinition, Source, Step};
use crate::record::{
    self, Phase, SagaRecord, SagaStatus, StepStatus, active_ids, corrupt, load, sql,
};
use crate::steps::{SagaHistory, classify, command_for, compensation_for};

/// Saga failures that stop the runner.
#[derive(Debug, Error)]
pub enum SagaError {
    /// A step's service is not registered, or does not handle the step's
    /// command.
    #[error(
        "saga {saga} cannot run: {missing}; every step needs a registered service that handles its command"
    )]
    NotWired {
        /// The saga's name.
        saga: &'static str,
        /// Each step that is not wired, with the service it needs.
        missing: String,
    },
    /// The event given to start the saga is of another type.
    #[error("saga {saga} starts from {expected}, not {found}: send an {expected} event")]
    WrongInput {
        /// The saga's name.
        saga: &'static str,
        /// The type it starts from.
        expected: &'static str,
        /// The type given.
        found: String,
    },
    /// No saga has this id.
    #[error("saga {0} not found; `underwrite saga list` shows the sagas in the store")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A compensation could not be signed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The services failed while running the saga's commands.
    #[error("running the services failed: {0}")]
    Run(String),
}

/// Counts of sagas by status.
pub type StatusCounts = BTreeMap<SagaStatus, u64>;

/// Runs the sagas of one definition on an embedded runtime.
pub struct SagaRunner<'a> {
    runtime: &'a EmbeddedRuntime,
    definition: &'a SagaDefinition,
}

impl<'a> SagaRunner<'a> {
    /// Creates a runner after checking that every step and compensation has
    /// a registered service that handles its command, and registers the
    /// saga's commands with the runtime so that its events are not also
    /// routed to those services by subscription.
    pub fn new(
        runtime: &'a EmbeddedRuntime,
        definition: &'a SagaDefinition,
    ) -> Result<Self, SagaError> {
        let mut missing = Vec::new();
        for step in &definition.steps {
            let commands = std::iter::once((step.service, step.command))
                .chain(step.compensation.map(|c| (c.service, c.command)));
            for (service, command) in commands {
                let wired = runtime
                    .services()
                    .iter()
                    .any(|s| s.name() == service && s.handles(command));
                if !wired {
                    missing.push(format!(
                        "step {} needs service {service} to handle {command}",
                        step.name
                    ));
                }
            }
        }
        if !missing.is_empty() {
            return Err(SagaError::NotWired {
                saga: definition.name,
                missing: missing.join("; "),
            });
        }
        runtime.register_saga_commands(definition.command_routes());
        Ok(SagaRunner {
            runtime,
            definition,
        })
    }

    /// Returns the definition run.
    pub fn definition(&self) -> &SagaDefinition {
        self.definition
    }

    /// Starts a saga for `input`, whose subject is the saga's id, and sends
    /// the first step's command. Starting the same id again changes
    /// nothing and returns false, as a Step Functions execution with the same
    /// name does.
    pub fn start(&self, input: &Envelope) -> Result<bool, SagaError> {
        if input.event_type != self.definition.input_type {
            return Err(SagaError::WrongInput {
                saga: self.definition.name,
                expected: self.definition.input_type,
                found: input.event_type.clone(),
            });
        }
        let saga_id = input.subject.clone();
        let body = input.to_json();
        self.transaction(|tx| {
            let now = now_ms();
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO sagas (saga_id, definition, status, input, started_ms, updated_ms)
                     VALUES (?1, ?2, 'started', ?3, ?4, ?4) ON CONFLICT (saga_id) DO NOTHING",
                )
                .map_err(sql)?
                .execute(params![saga_id, self.definition.name, body, now])
                .map_err(sql)?;
            if inserted == 0 {
                return Ok(false);
            }
            let record = load(tx, &saga_id)?.ok_or_else(|| corrupt(&saga_id, "vanished"))?;
            self.begin_step(tx, &record, &self.definition.steps[0])?;
            Ok(true)
        })
    }

    /// Records an event from outside the saga that a step waits for, such as
    /// the borrower's `kfs.accepted`; its subject names the saga. The first
    /// signal of a type counts; a repeat returns false and changes nothing.
    pub fn signal(&self, event: &Envelope) -> Result<bool, SagaError> {
        let saga_id = event.subject.clone();
        let body = event.to_json();
        self.transaction(|tx| {
            if load(tx, &saga_id)?.is_none() {
                return Err(SagaError::NotFound(saga_id.clone()));
            }
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO saga_signals (saga_id, event_type, body, received_ms)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .map_err(sql)?
                .execute(params![saga_id, event.event_type, body, now_ms()])
                .map_err(sql)?;
            Ok(inserted == 1)
        })
    }

    /// Moves every unfinished saga one transition forward where its answer
    /// or signal has arrived; returns how many moved.
    pub fn advance(&self) -> Result<usize, SagaError> {
        let ids = self.runtime.store().transaction(active_ids)?;
        let mut moved = 0;
        for saga_id in ids {
            while self.advance_one(&saga_id)? {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Runs the services and advances the sagas until neither has work left:
    /// every saga has finished or waits for a signal or for a retry that
    /// went to the dead-letter queue. Calls `progress` after each round.
    pub async fn run_until_settled(
        &self,
        progress: &mut dyn FnMut(&StatusCounts),
    ) -> Result<StatusCounts, SagaError> {
        loop {
            self.runtime
                .run(&RunOptions::default(), &mut |_| {})
                .await
                .map_err(|error| SagaError::Run(error.to_string()))?;
            let moved = self.advance()?;
            let counts = status_counts(self.runtime)?;
            progress(&counts);
            if moved == 0 {
                return Ok(counts);
            }
        }
    }

    fn transaction<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, SagaError>,
    ) -> Result<T, SagaError> {
        let mut inner = None;
        let result = self.runtime.store().transaction(|tx| {
            work(tx).map_err(|error| {
                inner = Some(error);
                StoreError::Unavailable("saga transition rolled back".into())
            })
        });
        match (result, inner) {
            (_, Some(error)) => Err(error),
            (result, None) => Ok(result?),
        }
    }

    /// Makes one transition of one saga, if one is due.
    fn advance_one(&self, saga_id: &str) -> Result<bool, SagaError> {
        self.transaction(|tx| {
            let record = load(tx, saga_id)?.ok_or_else(|| SagaError::NotFound(saga_id.into()))?;
            match record.status {
                SagaStatus::Started => self.forward(tx, &record),
                SagaStatus::Compensating => self.compensate(tx, &record),
                SagaStatus::Completed | SagaStatus::RolledBack => Ok(false),
            }
        })
    }

    fn forward(&self, tx: &Connection, record: &SagaRecord) -> Result<bool, SagaError> {
        let current = record
            .steps
            .iter()
            .rev()
            .find(|s| s.phase == Phase::Forward)
            .ok_or_else(|| corrupt(&record.saga_id, "a started saga has no step"))?;
        let step = self.step(record, &current.step)?;
        match current.status {
            StepStatus::Waiting => {
                let Source::Signal { event_type } = step.source else {
                    return Err(corrupt(&record.saga_id, "only a signal step waits").into());
                };
                match record::signal(tx, &record.saga_id, event_type)? {
                    Some(body) => {
                        self.send(tx, &current.task_token, step.service, &body, true)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            StepStatus::Sent => {
                let Some(answer) = record::answer(tx, &current.task_token)? else {
                    return Ok(false);
                };
                let now = now_ms();
                let failure = answer
                    .failure
                    .as_ref()
                    .map(|(code, message)| (code.as_str(), message.as_str()));
                match classify(step, failure, &answer.outputs) {
                    Ok(()) => {
                        set_step(
                            tx,
                            &current.task_token,
                            StepStatus::Succeeded,
                            &answer,
                            None,
                            now,
                        )?;
                        if step.name == self.definition.publish_input_after {
                            self.publish_input(tx, record)?;
                        }
                        let position = self.definition.position(step.name).unwrap_or(0);
                        match self.definition.steps.get(position + 1) {
                            Some(next) => {
                                // The next command may come from the answer
                                // just stored, so the saga is read again.
                                let record = load(tx, &record.saga_id)?
                                    .ok_or_else(|| corrupt(&record.saga_id, "vanished"))?;
                                self.begin_step(tx, &record, next)?
                            }
                            None => {
                                set_saga(tx, &record.saga_id, SagaStatus::Completed, None, now)?;
                                tracing::info!(saga_id = %record.saga_id, saga = self.definition.name, "Completed a saga.");
                            }
                        }
                    }
                    Err((code, message)) => {
                        set_step(
                            tx,
                            &current.task_token,
                            StepStatus::Failed,
                            &answer,
                            Some((&code, &message)),
                            now,
                        )?;
                        let failure = format!("{code}: {message}");
                        set_saga(
                            tx,
                            &record.saga_id,
                            SagaStatus::Compensating,
                            Some((step.name, &failure)),
                            now,
                        )?;
                        tracing::info!(saga_id = %record.saga_id, saga = self.definition.name, step = step.name, error_code = %code, "A saga step failed; compensating the steps before it.");
                    }
                }
                Ok(true)
            }
            StepStatus::Succeeded | StepStatus::Failed => Err(corrupt(
                &record.saga_id,
                format!("started saga ends on a finished step {}", current.step),
            )
            .into()),
        }
    }

    fn compensate(&self, tx: &Connection, record: &SagaRecord) -> Result<bool, SagaError> {
        let now = now_ms();
        if let Some(last) = record
            .steps
            .iter()
            .rev()
            .find(|s| s.phase == Phase::Compensation)
        {
            match last.status {
                StepStatus::Sent => {
                    let Some(answer) = record::answer(tx, &last.task_token)? else {
                        return Ok(false);
                    };
                    if let Some((code, message)) = &answer.failure {
                        set_step(
                            tx,
                            &last.task_token,
                            StepStatus::Failed,
                            &answer,
                            Some((code, message)),
                            now,
                        )?;
                        // A compensation that fails permanently needs a
                        // person: the saga stays compensating, and `saga show`
                        // names the step and the error.
                        tracing::error!(saga_id = %record.saga_id, step = %last.step, error_code = %code, %message, "A compensation failed; the saga stays compensating until someone resolves it.");
                        return Ok(true);
                    }
                    set_step(
                        tx,
                        &last.task_token,
                        StepStatus::Succeeded,
                        &answer,
                        None,
                        now,
                    )?;
                    return Ok(true);
                }
                StepStatus::Failed | StepStatus::Waiting => return Ok(false),
                StepStatus::Succeeded => {}
            }
        }
        // The next compensation: the latest succeeded step with one that has
        // not run yet, so compensations run in reverse order of their steps.
        let next = self.definition.steps.iter().rev().find(|step| {
            step.compensation.is_some()
                && record
                    .forward(step.name)
                    .is_some_and(|s| s.status == StepStatus::Succeeded)
                && record.compensation(step.name).is_none()
        });
        match next {
            Some(step) => {
                self.begin_compensation(tx, record, step)?;
            }
            None => {
                set_saga(tx, &record.saga_id, SagaStatus::RolledBack, None, now)?;
                tracing::info!(saga_id = %record.saga_id, saga = self.definition.name, "Rolled back a saga.");
            }
        }
        Ok(true)
    }

    fn step(&self, record: &SagaRecord, name: &str) -> Result<&'a Step, SagaError> {
        self.definition
            .steps
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                corrupt(
                    &record.saga_id,
                    format!("step {name} is not in saga {}", self.definition.name),
                )
                .into()
            })
    }

    /// Inserts a forward step and sends its command, or leaves it waiting for
    /// its signal.
    fn begin_step(
        &self,
        tx: &Connection,
        record: &SagaRecord,
        step: &Step,
    ) -> Result<(), SagaError> {
        let token = task_token(&record.saga_id, Phase::Forward, step.name);
        insert_step(
            tx,
            &record.saga_id,
            &token,
            Phase::Forward,
            step.name,
            step.service,
            step.command,
        )?;
        let signal = match step.source {
            Source::Signal { event_type } => {
                record::signal(tx, &record.saga_id, event_type)?.map(|body| (event_type, body))
            }
            _ => None,
        };
        let history = RecordHistory { record, signal };
        let body =
            command_for(step, &history).map_err(|reason| corrupt(&record.saga_id, reason))?;
        if let Some(body) = body {
            let from_signal = matches!(step.source, Source::Signal { .. });
            self.send(tx, &token, step.service, &body, from_signal)?;
        }
        Ok(())
    }

    fn begin_compensation(
        &self,
        tx: &Connection,
        record: &SagaRecord,
        step: &Step,
    ) -> Result<(), SagaError> {
        let compensation = step
            .compensation
            .expect("only steps with a compensation are compensated");
        let token = task_token(&record.saga_id, Phase::Compensation, step.name);
        insert_step(
            tx,
            &record.saga_id,
            &token,
            Phase::Compensation,
            step.name,
            compensation.service,
            compensation.command,
        )?;
        let history = RecordHistory {
            record,
            signal: None,
        };
        let mut event = compensation_for(
            self.definition,
            step,
            &history,
            record.failed_step.as_deref().unwrap_or("a step"),
            record.failure_code().unwrap_or("unknown"),
        )
        .map_err(|reason| corrupt(&record.saga_id, reason))?;
        self.runtime
            .sign_as(self.definition.name, std::slice::from_mut(&mut event))?;
        self.send(tx, &token, compensation.service, &event.to_json(), true)?;
        Ok(())
    }

    /// Sends a command with its task token and marks its step sent. A
    /// command no service has seen yet (a signal from outside, a
    /// compensation) also goes to the subscribers outside the saga, such as
    /// the audit ledger.
    fn send(
        &self,
        tx: &Connection,
        token: &str,
        service: &str,
        body: &str,
        new_event: bool,
    ) -> Result<(), SagaError> {
        let command: serde_json::Value =
            serde_json::from_str(body).map_err(|e| corrupt(token, e.to_string()))?;
        let command_id = command["id"]
            .as_str()
            .ok_or_else(|| corrupt(token, "a command without an id"))?
            .to_string();
        let now = now_ms();
        enqueue_command(tx, service, &command_id, body, Some(token), now)?;
        if new_event {
            let event_type = command["type"].as_str().unwrap_or_default();
            for queue in self.runtime.saga_routes(event_type) {
                enqueue_command(tx, queue, &command_id, body, None, now)?;
            }
        }
        tx.prepare_cached(
            "UPDATE saga_steps SET status = 'sent', command_id = ?2, command = ?3 WHERE task_token = ?1",
        )
        .map_err(sql)?
        .execute(params![token, command_id, body])
        .map_err(sql)?;
        Ok(())
    }

    /// Sends the saga's input to the services that subscribe to it and are
    /// not its steps, once the step that may release it has succeeded.
    fn publish_input(&self, tx: &Connection, record: &SagaRecord) -> Result<(), SagaError> {
        let input = parse(record, &record.input)?;
        let now = now_ms();
        for queue in self.runtime.saga_routes(&input.event_type) {
            enqueue_command(tx, queue, input.id.as_str(), &record.input, None, now)?;
        }
        Ok(())
    }
}

/// Returns the task token of a step run: `<saga id>/<phase>/<step>`.
pub fn task_token(saga_id: &str, phase: Phase, step: &str) -> String {
    format!("{saga_id}/{}/{step}", phase.as_str())
}

fn parse(record: &SagaRecord, body: &str) -> Result<Envelope, SagaError> {
    Envelope::from_slice(body.as_bytes()).map_err(|error| {
        corrupt(&record.saga_id, format!("stored event is invalid: {error}")).into()
    })
}

fn insert_step(
    tx: &Connection,
    saga_id: &str,
    token: &str,
    phase: Phase,
    step: &str,
    service: &str,
    command_type: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO saga_steps (task_token, saga_id, phase, step, service, command_type, status, started_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'waiting', ?7)",
    )
    .map_err(sql)?
    .execute(params![token, saga_id, phase.as_str(), step, service, command_type, now_ms()])
    .map_err(sql)?;
    Ok(())
}

fn set_step(
    tx: &Connection,
    token: &str,
    status: StepStatus,
    answer: &record::Answer,
    failure: Option<(&str, &str)>,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE saga_steps SET status = ?2, answer = ?3, error_code = ?4, error_message = ?5, answered_ms = ?6
         WHERE task_token = ?1",
    )
    .map_err(sql)?
    .execute(params![
        token,
        status.as_str(),
        answer.outputs,
        failure.map(|f| f.0),
        failure.map(|f| f.1),
        now
    ])
    .map_err(sql)?;
    Ok(())
}

fn set_saga(
    tx: &Connection,
    saga_id: &str,
    status: SagaStatus,
    failure: Option<(&str, &str)>,
    now: i64,
) -> Result<(), StoreError> {
    match failure {
        Some((step, text)) => tx
            .prepare_cached(
                "UPDATE sagas SET status = ?2, failed_step = ?3, failure = ?4, updated_ms = ?5 WHERE saga_id = ?1",
            )
            .map_err(sql)?
            .execute(params![saga_id, status.as_str(), step, text, now]),
        None => tx
            .prepare_cached("UPDATE sagas SET status = ?2, updated_ms = ?3 WHERE saga_id = ?1")
            .map_err(sql)?
            .execute(params![saga_id, status.as_str(), now]),
    }
    .map_err(sql)?;
    Ok(())
}

/// Counts the sagas in the store by status.
pub fn status_counts(runtime: &EmbeddedRuntime) -> Result<StatusCounts, StoreError> {
    runtime.store().transaction(|tx| {
        let mut statement = tx
            .prepare_cached("SELECT status, COUNT(*) FROM sagas GROUP BY status")
            .map_err(sql)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(sql)?;
        let mut counts = StatusCounts::new();
        for row in rows {
            let (status, count) = row.map_err(sql)?;
            let status = SagaStatus::parse(&status)
                .ok_or_else(|| corrupt("*", format!("unknown status {status:?}")))?;
            counts.insert(status, count as u64);
        }
        Ok(counts)
    })
}

/// Resumes the sagas of `definition` after a crash or a stop: runs the
/// services on the commands already queued, then moves every saga on from
/// the state the store holds, until nothing is left to do. With `saga_id`,
/// fails if that saga does not exist, and returns its record.
pub async fn replay_saga(
    runtime: &EmbeddedRuntime,
    definition: &SagaDefinition,
    saga_id: Option<&str>,
    progress: &mut dyn FnMut(&StatusCounts),
) -> Result<(StatusCounts, Option<SagaRecord>), SagaError> {
    if let Some(id) = saga_id
        && record::load_saga(runtime.store(), id)?.is_none()
    {
        return Err(SagaError::NotFound(id.to_string()));
    }
    let runner = SagaRunner::new(runtime, definition)?;
    let counts = runner.run_until_settled(progress).await?;
    let record = match saga_id {
        Some(id) => record::load_saga(runtime.store(), id)?,
        None => None,
    };
    Ok((counts, record))
}

/// A stored saga as the history its next command is built from.
struct RecordHistory<'a> {
    record: &'a SagaRecord,
    signal: Option<(&'static str, String)>,
}

impl SagaHistory for RecordHistory<'_> {
    fn input(&self) -> &str {
        &self.record.input
    }

    fn reply(&self, step: &str) -> Option<&str> {
        self.record
            .forward(step)
            .filter(|s| s.status == StepStatus::Succeeded)
            .and_then(|s| s.answer.as_deref())
    }

    fn command(&self, step: &str) -> Option<&str> {
        self.record.forward(step).and_then(|s| s.command.as_deref())
    }

    fn signal(&self, event_type: &str) -> Option<&str> {
        self.signal
            .as_ref()
            .filter(|(kind, _)| *kind == event_type)
            .map(|(_, body)| body.as_str())
    }
}

//! Saga steps run by Step Functions. The generated state machine sends each
//! step's task message (see `underwrite_saga::worker::TaskMessage`) to the
//! step's service queue and waits for its task token. The function that
//! receives it builds the step's command with the same code as the embedded
//! runner and processes the command as a record. It then sends
//! `SendTaskSuccess` (the command and the events emitted) or
//! `SendTaskFailure` (the error code and a cause naming the step).
//!
//! A step that waits for a signal from outside, such as the borrower's
//! `kfs.accepted`, meets it in the service's store: the signal is kept at
//! [`signal_key`] when it arrives, the waiting task message at [`wait_key`]
//! when the step starts, and whichever comes second runs the step. Each
//! side writes its own key before it reads the other's, so one of them
//! always sees both; when both do, the step runs twice, which the command's
//! idempotency record and an answer to a closed task make harmless.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use underwrite_events::Envelope;
use underwrite_runtime::ports::Claim;
use underwrite_runtime::ports::{DeadLetterReason, Outbound, PortError, Routes, TaskAnswers};
use underwrite_runtime::record::{self, RecordOutcome};
use underwrite_runtime::{Expected, HandlerError, StateWrite};
use underwrite_saga::steps::classify;
use underwrite_saga::worker::{FailureCause, StepOutput, TaskMessage, command_from_message};
use underwrite_saga::{SagaDefinition, Source, Step};

use crate::batch::{Disposition, Record};
use crate::function::Function;

/// Returns the store key of a signal that arrived for a saga at `service`,
/// the service of the step that waits for it. On AWS the key is in that
/// service's items and the other steps' services may read it
/// (`underwrite_aws::dynamo::SIGNAL_COLLECTION`).
pub fn signal_key(service: &str, saga_id: &str, event_type: &str) -> String {
    format!("saga-signal/{service}/{saga_id}/{event_type}")
}

/// Returns the store key of a task message that waits for a signal.
pub fn wait_key(saga_id: &str, event_type: &str) -> String {
    format!("saga-wait/{saga_id}/{event_type}")
}

/// The saga whose steps reach a function's queue, and the client that
/// completes their tasks.
pub struct SagaTasks {
    definition: SagaDefinition,
    answers: Arc<dyn TaskAnswers>,
}

impl SagaTasks {
    /// Creates the tasks of `definition`, completed through `answers`.
    pub fn new(definition: SagaDefinition, answers: Arc<dyn TaskAnswers>) -> Self {
        SagaTasks {
            definition,
            answers,
        }
    }

    /// Returns the routing table for functions that run `definition`'s steps:
    /// `routes` without the pairs the saga sends as commands, so a service
    /// gets a step's command only from the saga, as on the embedded
    /// runtime. A signal's route stays, because the signal reaches its step
    /// through the service's queue.
    pub fn routes(definition: &SagaDefinition, subscriptions: &[(&str, &[&str])]) -> Routes {
        let commands = definition.command_routes();
        let signals: Vec<(&str, &str)> = definition
            .steps
            .iter()
            .filter_map(|step| match step.source {
                Source::Signal { event_type } => Some((step.service, event_type)),
                _ => None,
            })
            .collect();
        let filtered: Vec<(&str, Vec<&str>)> = subscriptions
            .iter()
            .map(|(service, types)| {
                let types = types
                    .iter()
                    .copied()
                    .filter(|kind| {
                        let pair = (*service, *kind);
                        signals.contains(&pair) || !commands.contains(&pair)
                    })
                    .collect();
                (*service, types)
            })
            .collect();
        Routes::from_pairs(
            filtered
                .iter()
                .map(|(service, types)| (*service, &types[..])),
        )
    }

    /// Lists each signal of the saga with the service that receives it.
    fn all_signal_types(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.definition
            .steps
            .iter()
            .filter_map(|step| match step.source {
                Source::Signal { event_type } => Some((step.service, event_type)),
                _ => None,
            })
    }

    fn signal_types(&self, service: &str) -> impl Iterator<Item = &'static str> + '_ {
        let service = service.to_string();
        self.definition
            .steps
            .iter()
            .filter(move |step| step.service == service)
            .filter_map(|step| match step.source {
                Source::Signal { event_type } => Some(event_type),
                _ => None,
            })
    }
}

/// Parses a body as a task message: `None` when it is not one (an event),
/// an error when it names a task token but does not parse.
pub fn task_message(body: &str) -> Option<Result<TaskMessage, String>> {
    // Events never carry a task token, so most bodies skip the parse.
    if !body.contains("\"task_token\"") {
        return None;
    }
    let value: Value = serde_json::from_str(body).ok()?;
    value.get("task_token")?;
    Some(serde_json::from_value(value).map_err(|error| {
        format!(
            "invalid saga task message: {error}; the state machine must be generated by `underwrite saga asl` from the same definition"
        )
    }))
}

impl Function {
    /// Runs the step of a task message and completes its task.
    pub(crate) async fn process_task(
        &self,
        tasks: &SagaTasks,
        record: &Record<'_>,
        message: TaskMessage,
    ) -> Disposition {
        let definition = &tasks.definition;
        if message.saga != definition.name {
            let reason = format!(
                "task message of saga {:?} reached a function that runs saga {:?}; check the state machine's queue URLs",
                message.saga, definition.name
            );
            return self
                .reject_task(tasks, record, &message, "unknown_saga", reason)
                .await;
        }
        let Some(step) = definition.step(&message.step) else {
            let reason = format!(
                "step {:?} is not in saga {}; regenerate the state machine with `underwrite saga asl`",
                message.step, definition.name
            );
            return self
                .reject_task(tasks, record, &message, "unknown_step", reason)
                .await;
        };
        let signals = match self.signals_for(tasks, step, &message, record).await {
            Ok(Some(signals)) => signals,
            Ok(None) => return Disposition::Handled,
            Err(disposition) => return disposition,
        };
        let command =
            command_from_message(definition, &message, &|kind| signals.get(kind).cloned());
        let command = match command {
            Ok(Some(command)) => command,
            Ok(None) => return Disposition::Handled,
            Err(reason) => {
                return self
                    .reject_task(tasks, record, &message, "invalid_task", reason)
                    .await;
            }
        };
        let command = match self.sign_compensation(definition, &message, command) {
            Ok(command) => command,
            Err(reason) => {
                return self
                    .reject_task(tasks, record, &message, "authz_no_signing_key", reason)
                    .await;
            }
        };
        let input = record::Record {
            message_id: record.message_id,
            body: &command,
            attributes: record.attributes,
            receive_count: record.receive_count,
        };
        let outcome =
            record::process_saga_command(self.service(), &self.backend(), self.authority(), &input)
                .await;
        let command_value: Value = serde_json::from_str(&command).unwrap_or(Value::Null);
        let answer = match &outcome {
            RecordOutcome::Done { outputs } | RecordOutcome::Duplicate { outputs } => {
                let events = format!("[{}]", outputs.join(","));
                let verdict = if message.phase == "forward" {
                    classify(step, None, &events)
                } else {
                    Ok(())
                };
                match verdict {
                    Ok(()) => {
                        if message.phase == "forward"
                            && step.name == definition.publish_input_after
                            && let Err(error) = self.publish_input(&message).await
                        {
                            return retry(error);
                        }
                        let output = StepOutput {
                            command: command_value,
                            events: outputs
                                .iter()
                                .map(|text| serde_json::from_str(text).unwrap_or(Value::Null))
                                .collect(),
                        };
                        let output =
                            serde_json::to_string(&output).expect("a step output serialises");
                        tasks.answers.succeed(&message.task_token, &output).await
                    }
                    Err((code, reason)) => {
                        let cause = failure_cause(step.name, &code, reason, command_value);
                        tasks.answers.fail(&message.task_token, &code, &cause).await
                    }
                }
            }
            RecordOutcome::Answered(error) | RecordOutcome::DeadLettered(error) => {
                let cause =
                    failure_cause(step.name, error.code(), error.to_string(), command_value);
                tasks
                    .answers
                    .fail(&message.task_token, error.code(), &cause)
                    .await
            }
            RecordOutcome::Retry(_) => Ok(()),
        };
        if let Err(error) = answer {
            if error.is_retryable() {
                return retry(error);
            }
            let reason = error.to_string();
            return self.dead_letter_task(record, error.code(), reason).await;
        }
        self.disposition(outcome, record).await
    }

    /// Reads the signals the step's command may need. Returns `None` when
    /// the step waits for a signal that has not arrived; its task message
    /// is then kept for the signal to find.
    async fn signals_for(
        &self,
        tasks: &SagaTasks,
        step: &Step,
        message: &TaskMessage,
        record: &Record<'_>,
    ) -> Result<Option<BTreeMap<&'static str, String>>, Disposition> {
        let signal_type = match step.source {
            Source::Signal { event_type } if message.phase == "forward" => Some(event_type),
            _ => None,
        };
        // A compensation may rebuild the failed step's command, which for
        // a signal step is the signal itself.
        let needed: Vec<(&'static str, &'static str)> = if message.phase == "compensation" {
            tasks.all_signal_types().collect()
        } else {
            signal_type
                .map(|kind| (step.service, kind))
                .into_iter()
                .collect()
        };
        let mut signals: BTreeMap<&'static str, String> = BTreeMap::new();
        for (service, kind) in needed {
            match self
                .read(&signal_key(service, &message.saga_id, kind))
                .await
            {
                Ok(Some(body)) => {
                    signals.insert(kind, body);
                }
                Ok(None) => {}
                Err(error) => return Err(retry(error)),
            }
        }
        if let Some(kind) = signal_type
            && !signals.contains_key(kind)
        {
            // Wait: keep the message, then look again for a signal that
            // arrived meanwhile.
            let key = wait_key(&message.saga_id, kind);
            if let Err(error) = self.write_once(&key, record.body).await {
                return Err(retry(error));
            }
            match self
                .read(&signal_key(step.service, &message.saga_id, kind))
                .await
            {
                Ok(Some(body)) => {
                    signals.insert(kind, body);
                }
                Ok(None) => {
                    info!(
                        saga_id = message.saga_id.as_str(),
                        step = step.name,
                        signal = kind,
                        "A saga step waits for its signal."
                    );
                    return Ok(None);
                }
                Err(error) => return Err(retry(error)),
            }
        }
        Ok(Some(signals))
    }

    /// Keeps a signal that arrived for a waiting step, and runs the step if
    /// its task message is already waiting. Returns `None` when `body` is
    /// not a signal of the saga.
    pub(crate) async fn signal_arrived(
        &self,
        tasks: &SagaTasks,
        record: &Record<'_>,
    ) -> Option<Disposition> {
        let kinds: Vec<&str> = tasks.signal_types(self.name()).collect();
        if kinds.is_empty() || !kinds.iter().any(|kind| record.body.contains(kind)) {
            return None;
        }
        let event = Envelope::from_slice(record.body.as_bytes()).ok()?;
        if !kinds.contains(&event.event_type.as_str()) {
            return None;
        }
        let saga_id = event.subject.as_str();
        let key = signal_key(self.name(), saga_id, &event.event_type);
        if let Err(error) = self.write_once(&key, record.body).await {
            return Some(retry(error));
        }
        let waiting = match self.read(&wait_key(saga_id, &event.event_type)).await {
            Ok(waiting) => waiting,
            Err(error) => return Some(retry(error)),
        };
        let Some(waiting) = waiting else {
            info!(
                saga_id,
                signal = event.event_type.as_str(),
                "Kept a saga signal until its step starts."
            );
            return Some(Disposition::Handled);
        };
        let message = match serde_json::from_str::<TaskMessage>(&waiting) {
            Ok(message) => message,
            Err(error) => {
                let reason =
                    format!("the waiting task message of saga {saga_id} is invalid: {error}");
                return Some(self.dead_letter_task(record, "invalid_task", reason).await);
            }
        };
        Some(Box::pin(self.process_task(tasks, record, message)).await)
    }

    /// Fails the task of a message that cannot run, and sends the message
    /// to the dead-letter queue with the reason.
    async fn reject_task(
        &self,
        tasks: &SagaTasks,
        record: &Record<'_>,
        message: &TaskMessage,
        code: &str,
        reason: String,
    ) -> Disposition {
        let cause = failure_cause(&message.step, code, reason.clone(), Value::Null);
        if let Err(error) = tasks.answers.fail(&message.task_token, code, &cause).await
            && error.is_retryable()
        {
            return retry(error);
        }
        self.dead_letter_task(record, code, reason).await
    }

    pub(crate) async fn dead_letter_task(
        &self,
        record: &Record<'_>,
        code: &str,
        reason: String,
    ) -> Disposition {
        let error = HandlerError::permanent(code_static(code), reason);
        let letter = DeadLetterReason::from_error(&error, record.receive_count);
        match self
            .bus()
            .dead_letter(
                self.name(),
                record.message_id,
                record.body,
                record.attributes,
                &letter,
            )
            .await
        {
            Ok(()) => {
                warn!(service = self.name(), error_code = code, %error, "Moved a saga task message to the dead-letter queue.");
                Disposition::DeadLettered {
                    code: code.to_string(),
                }
            }
            Err(send_error) => retry(send_error),
        }
    }

    /// Signs a compensation as the saga, as the embedded runner does; a
    /// forward command is signed by its emitter already.
    fn sign_compensation(
        &self,
        definition: &SagaDefinition,
        message: &TaskMessage,
        command: String,
    ) -> Result<String, String> {
        let Some(authority) = self.authority() else {
            return Ok(command);
        };
        if message.phase != "compensation" {
            return Ok(command);
        }
        let mut event = Envelope::from_slice(command.as_bytes()).map_err(|e| e.to_string())?;
        authority
            .sign(definition.name, &mut event)
            .map_err(|error| error.to_string())?;
        Ok(event.to_json())
    }

    /// Publishes the saga's input to the services that subscribe to it and
    /// are not its steps, as the embedded runner does after the step named
    /// by `publish_input_after`.
    async fn publish_input(&self, message: &TaskMessage) -> Result<(), PortError> {
        let input = Outbound::from_json(message.input.to_string())?;
        self.bus().publish(&[input]).await
    }

    async fn read(&self, key: &str) -> Result<Option<String>, PortError> {
        self.effects()
            .get(key)
            .await
            .map(|found| found.map(|versioned| versioned.json))
            .map_err(|error| PortError::Unavailable {
                service: "store",
                message: format!("failed to read {key}: {error}"),
            })
    }

    /// Puts `json` at `key` once: the write is keyed by a digest of both in
    /// the idempotency records, so a redelivery writes nothing twice.
    async fn write_once(&self, key: &str, json: &str) -> Result<(), PortError> {
        let digest = hex::encode(Sha256::digest(format!("{key}\n{json}")));
        let effects = self.effects();
        let now = self.clock().now_ms();
        let unavailable = |error: underwrite_runtime::StoreError| PortError::Unavailable {
            service: "store",
            message: format!("failed to write {key}: {error}"),
        };
        let lease = match effects
            .claim(self.name(), &format!("saga-write-{digest}"), now, 30_000)
            .await
            .map_err(unavailable)?
        {
            Claim::Acquired(lease) => lease,
            Claim::Complete { .. } => return Ok(()),
            Claim::InProgress { .. } => {
                return Err(PortError::Unavailable {
                    service: "store",
                    message: format!("another consumer is writing {key}"),
                });
            }
        };
        let write = StateWrite {
            key: key.to_string(),
            value: Some(json.to_string()),
            expected: Expected::Any,
        };
        effects
            .commit(&lease, &[write], &[], self.clock().now_ms())
            .await
            .map_err(unavailable)
    }
}

fn failure_cause(step: &str, code: &str, message: String, command: Value) -> String {
    FailureCause {
        step: step.to_string(),
        message,
        code: Some(code.to_string()),
        command: (!command.is_null()).then_some(command),
    }
    .to_json()
}

fn retry(error: PortError) -> Disposition {
    warn!(error_code = error.code(), %error, "A saga step will be retried.");
    Disposition::Retry {
        code: error.code().to_string(),
    }
}

/// Maps a task error code to the static code a [`HandlerError`] carries.
fn code_static(code: &str) -> &'static str {
    match code {
        "unknown_saga" => "unknown_saga",
        "unknown_step" => "unknown_step",
        "authz_no_signing_key" => "authz_no_signing_key",
        "invalid_task" => "invalid_task",
        _ => "task_answer_rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use underwrite_saga::origination;

    #[test]
    fn task_message_told_from_event() {
        let event = r#"{"id":"e1","type":"day.closed","payload":{}}"#;
        assert!(task_message(event).is_none());
        let message = r#"{"saga":"origination","saga_id":"APP1","step":"kfs","phase":"forward",
            "command":"pricing.quoted","input":{},"steps":{},"task_token":"t-1"}"#;
        let parsed = task_message(message).expect("a task message").unwrap();
        assert_eq!(parsed.step, "kfs");
        assert_eq!(parsed.task_token, "t-1");
        let broken = r#"{"task_token":"t-2","step":7}"#;
        let error = task_message(broken)
            .expect("names a task token")
            .unwrap_err();
        assert!(error.contains("underwrite saga asl"), "{error}");
    }

    #[test]
    fn saga_routes_drop_commands_keep_signals() {
        let definition = origination();
        let routes = SagaTasks::routes(&definition, crate::routes::SUBSCRIPTIONS);
        // risk gets fraud.cleared only as the saga's command.
        assert!(!routes.queues_for("fraud.cleared").contains(&"risk"));
        // The borrower's acceptance still reaches kfs, where its step waits.
        assert!(routes.queues_for("kfs.accepted").contains(&"kfs"));
        // Events outside the saga keep every subscriber.
        let day_closed = routes.queues_for("day.closed");
        for service in ["consent", "fee", "npa", "audit"] {
            assert!(day_closed.contains(&service), "{service}: {day_closed:?}");
        }
    }
}

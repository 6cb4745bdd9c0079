//! The worker's side of a Step Functions saga step: the task message the
//! state machine sends to a service's queue, the command event the worker
//! builds from it, and what the worker returns with `SendTaskSuccess` or
//! `SendTaskFailure`. The command is built by the same functions as on the
//! embedded runner, so both executors send the same events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{SagaDefinition, Source};
use crate::steps::{SagaHistory, command_for, compensation_for};

/// A task message, as the generated state machine's `MessageBody` lays it
/// out (see `asl::generate`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TaskMessage {
    /// The saga's name.
    pub saga: String,
    /// The execution's name, which is the saga id.
    pub saga_id: String,
    /// The step run or compensated.
    pub step: String,
    /// `forward` or `compensation`.
    pub phase: String,
    /// The command's event type.
    pub command: String,
    /// The event that started the saga.
    pub input: Value,
    /// The outputs of the steps that succeeded so far, by step name.
    #[serde(default)]
    pub steps: serde_json::Map<String, Value>,
    /// The failure caught before the compensations (`$.error`), with the
    /// `Error` and `Cause` Step Functions recorded.
    #[serde(default)]
    pub error: Option<Value>,
    /// The token to answer with `SendTaskSuccess` or `SendTaskFailure`.
    pub task_token: String,
}

/// The output of a succeeded step, sent with `SendTaskSuccess`; the state
/// machine keeps it at `$.steps.<step>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    /// The command the service handled.
    pub command: Value,
    /// The events the service emitted.
    pub events: Vec<Value>,
}

/// The `Cause` of a `SendTaskFailure`, as JSON text; the `Error` is the
/// failure's code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureCause {
    /// The step that failed.
    pub step: String,
    /// The service's error message, or the decline.
    pub message: String,
    /// The failure's code, as `SendTaskFailure` gives it in `Error`; kept
    /// here too because a `Fail` state reports only the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The command that failed, whose time and business date the
    /// compensations take, as on the embedded runner.
    #[serde(default)]
    pub command: Option<Value>,
}

impl FailureCause {
    /// Serialises the cause for `SendTaskFailure`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a failure cause serialises")
    }
}

#[derive(Clone)]
struct MessageHistory<'a> {
    input: String,
    replies: std::collections::BTreeMap<&'a str, (String, String)>,
    signal: Option<(&'static str, String)>,
    failed: Option<(String, String)>,
}

impl SagaHistory for MessageHistory<'_> {
    fn input(&self) -> &str {
        &self.input
    }

    fn reply(&self, step: &str) -> Option<&str> {
        self.replies.get(step).map(|(_, events)| events.as_str())
    }

    fn command(&self, step: &str) -> Option<&str> {
        match &self.failed {
            Some((failed, command)) if failed == step => Some(command.as_str()),
            _ => self.replies.get(step).map(|(command, _)| command.as_str()),
        }
    }

    fn signal(&self, event_type: &str) -> Option<&str> {
        self.signal
            .as_ref()
            .filter(|(kind, _)| *kind == event_type)
            .map(|(_, body)| body.as_str())
    }
}

/// Builds the command event (as JSON) of a task message, or `None` while
/// the step waits for a signal that `signal` does not have yet. A
/// compensation's reason names the failed step and code from the message's
/// `error`.
pub fn command_from_message(
    definition: &SagaDefinition,
    message: &TaskMessage,
    signal: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let step = definition.step(&message.step).ok_or_else(|| {
        format!(
            "step {} is not in saga {}; check the state machine was generated from this definition",
            message.step, definition.name
        )
    })?;
    let mut replies = std::collections::BTreeMap::new();
    for (name, output) in &message.steps {
        let output: StepOutput = serde_json::from_value(output.clone())
            .map_err(|error| format!("invalid output of step {name}: {error}"))?;
        replies.insert(
            name.as_str(),
            (
                output.command.to_string(),
                Value::Array(output.events).to_string(),
            ),
        );
    }
    let step_signal = match step.source {
        Source::Signal { event_type } => signal(event_type).map(|body| (event_type, body)),
        _ => None,
    };
    let error = message.error.as_ref();
    let cause: Option<FailureCause> = error
        .and_then(|e| e["Cause"].as_str())
        .and_then(|text| serde_json::from_str(text).ok());
    let mut history = MessageHistory {
        input: message.input.to_string(),
        replies,
        signal: step_signal,
        failed: cause.as_ref().and_then(|c| {
            c.command
                .as_ref()
                .map(|command| (c.step.clone(), command.to_string()))
        }),
    };
    // A cause may be missing: an emulator drops it, and Step Functions cuts
    // one over 32,768 characters. Then the failed step is the first one
    // without an output, since steps run in order. Its command is rebuilt
    // from the outputs before it, as when it was sent.
    let failed_step = match &cause {
        Some(cause) => Some(cause.step.clone()),
        None if message.phase == "compensation" => definition
            .steps
            .iter()
            .find(|s| !message.steps.contains_key(s.name))
            .map(|s| s.name.to_string()),
        None => None,
    };
    if history.failed.is_none()
        && let Some(failed) = failed_step
            .as_deref()
            .and_then(|name| definition.step(name))
    {
        let rebuilt = MessageHistory {
            signal: match failed.source {
                Source::Signal { event_type } => signal(event_type).map(|body| (event_type, body)),
                _ => None,
            },
            ..history.clone()
        };
        if let Ok(Some(command)) = command_for(failed, &rebuilt) {
            history.failed = Some((failed.name.to_string(), command));
        }
    }
    match message.phase.as_str() {
        "forward" => command_for(step, &history),
        "compensation" => {
            let code = error.and_then(|e| e["Error"].as_str()).unwrap_or("unknown");
            let failed_step = failed_step.as_deref().unwrap_or("a step");
            compensation_for(definition, step, &history, failed_step, code)
                .map(|event| Some(event.to_json()))
        }
        other => Err(format!(
            "invalid phase {other:?}: expected forward or compensation"
        )),
    }
}

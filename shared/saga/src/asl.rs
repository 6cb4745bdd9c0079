//! The Amazon States Language (ASL) document of a saga, generated from its
//! definition for a Step Functions Standard workflow.
//!
//! Each step is a `Task` that sends its command to the service's queue with
//! `sqs:sendMessage.waitForTaskToken`; the message carries `$$.Task.Token`,
//! and the service's worker answers with `SendTaskSuccess` (its output
//! becomes `$.steps.<step>`) or `SendTaskFailure` (the error code). A
//! failure is caught into `$.error` and leads to the compensations of the
//! earlier steps in reverse order, then to a `Fail` state. Executions are
//! started with the saga id as their name, so a duplicate start is rejected
//! by Step Functions rather than run twice.
//!
//! Queue URLs are `${<Service>QueueUrl}` placeholders, filled in by the
//! template's `DefinitionSubstitutions`.

use serde::Serialize;
use serde_json::{Value, json};

use crate::definition::{SagaDefinition, Source, Step};

/// The task resource of every step: send to SQS, wait for the task token.
pub const SQS_WAIT_FOR_TASK_TOKEN: &str = "arn:aws:states:::sqs:sendMessage.waitForTaskToken";

/// Name of the state reached when every step succeeded.
pub const COMPLETED: &str = "completed";

/// Name of the `Fail` state reached after the compensations.
pub const ROLLED_BACK: &str = "rolled_back";

/// Name of the `Fail` state reached when a compensation itself fails.
pub const COMPENSATION_FAILED: &str = "compensation_failed";

/// Seconds a service has to answer before the step times out and its
/// command is sent again: longer than the queue's retries take (5 receives
/// with a 180-second visibility timeout).
pub const SERVICE_HEARTBEAT_SECONDS: u64 = 1_800;

/// Seconds the borrower has to accept. The KFS is valid for 3 working days,
/// which with Sundays and holidays can span about a week. The sanction step
/// checks the validity itself, so this is only an upper bound.
pub const BORROWER_TIMEOUT_SECONDS: u64 = 14 * 24 * 3_600;

/// Errors of the SQS integration that a resend can cure.
const TRANSIENT_ERRORS: [&str; 2] = ["SQS.SdkClientException", "SQS.AmazonSQSException"];

/// Returns the state name of a compensation.
pub fn compensation_state(step: &str) -> String {
    format!("compensate.{step}")
}

/// Returns the placeholder of a service's queue URL, such as
/// `${KfsQueueUrl}`.
pub fn queue_placeholder(service: &str) -> String {
    format!("${{{}QueueUrl}}", pascal(service))
}

/// Converts a service name to PascalCase, as template resources are named.
pub fn pascal(name: &str) -> String {
    name.split(['-', '_', '.'])
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

/// Returns the state a failure of `steps[position]` leads to: the
/// compensation of the latest earlier step that has one, or the final
/// `Fail` state when none has.
fn first_compensation(steps: &[Step], position: usize) -> String {
    steps[..position]
        .iter()
        .rev()
        .find(|s| s.compensation.is_some())
        .map(|s| compensation_state(s.name))
        .unwrap_or_else(|| ROLLED_BACK.to_string())
}

fn message_body(definition: &SagaDefinition, step: &Step, command: &str, phase: &str) -> Value {
    let mut body = json!({
        "saga": definition.name,
        "saga_id.$": "$$.Execution.Name",
        "step": step.name,
        "phase": phase,
        "command": command,
        "input.$": "$.input",
        "steps.$": "$.steps",
        "task_token.$": "$$.Task.Token",
    });
    if phase == "compensation" {
        // The failure caught into $.error names the failed step and code,
        // which the compensation's reason states.
        body["error.$"] = json!("$.error");
    }
    body
}

fn retry(max_attempts: u32, errors: &[&str]) -> Value {
    json!([{
        "ErrorEquals": errors,
        "IntervalSeconds": 2,
        "MaxAttempts": max_attempts,
        "BackoffRate": 2.0,
        "MaxDelaySeconds": 300,
        "JitterStrategy": "FULL",
    }])
}

fn forward_state(definition: &SagaDefinition, position: usize) -> Value {
    let step = &definition.steps[position];
    let next = definition
        .steps
        .get(position + 1)
        .map_or(COMPLETED, |s| s.name);
    let borrower = matches!(step.source, Source::Signal { .. });
    let mut state = json!({
        "Type": "Task",
        "Comment": step.description,
        "Resource": SQS_WAIT_FOR_TASK_TOKEN,
        "Parameters": {
            "QueueUrl": queue_placeholder(step.service),
            "MessageBody": message_body(definition, step, step.command, "forward"),
        },
        "ResultPath": format!("$.steps.{}", step.name),
        "Catch": [{
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.error",
            "Next": first_compensation(&definition.steps, position),
        }],
        "Next": next,
    });
    if borrower {
        // The borrower, not a service, answers: a timeout is final.
        state["TimeoutSeconds"] = json!(BORROWER_TIMEOUT_SECONDS);
        state["Retry"] = retry(3, &TRANSIENT_ERRORS);
    } else {
        // A heartbeat timeout means the answer was lost: send the command
        // again, which the service's idempotency record answers at once.
        state["HeartbeatSeconds"] = json!(SERVICE_HEARTBEAT_SECONDS);
        let mut errors = TRANSIENT_ERRORS.to_vec();
        errors.push("States.Timeout");
        state["Retry"] = retry(3, &errors);
    }
    state
}

fn compensation_state_value(definition: &SagaDefinition, position: usize) -> Value {
    let step = &definition.steps[position];
    let compensation = step
        .compensation
        .expect("only steps with a compensation get one");
    let mut errors = TRANSIENT_ERRORS.to_vec();
    errors.push("States.Timeout");
    json!({
        "Type": "Task",
        "Comment": format!("Compensates {}: {}", step.name, compensation.description),
        "Resource": SQS_WAIT_FOR_TASK_TOKEN,
        "HeartbeatSeconds": SERVICE_HEARTBEAT_SECONDS,
        "Parameters": {
            "QueueUrl": queue_placeholder(compensation.service),
            "MessageBody": message_body(definition, step, compensation.command, "compensation"),
        },
        "ResultPath": format!("$.compensations.{}", step.name),
        "Retry": retry(10, &errors),
        "Catch": [{
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.compensation_error",
            "Next": COMPENSATION_FAILED,
        }],
        "Next": first_compensation(&definition.steps, position),
    })
}

/// Generates the ASL document of `definition`.
pub fn generate(definition: &SagaDefinition) -> Value {
    let mut states = serde_json::Map::new();
    for (position, step) in definition.steps.iter().enumerate() {
        states.insert(step.name.to_string(), forward_state(definition, position));
        if step.compensation.is_some() {
            states.insert(
                compensation_state(step.name),
                compensation_state_value(definition, position),
            );
        }
    }
    states.insert(
        COMPLETED.to_string(),
        json!({ "Type": "Succeed", "Comment": "Every step succeeded." }),
    );
    states.insert(
        ROLLED_BACK.to_string(),
        json!({
            "Type": "Fail",
            "Comment": "A step failed and the compensations of the steps before it ran.",
            "Error": "SagaRolledBack",
            "CausePath": "$.error.Cause",
        }),
    );
    states.insert(
        COMPENSATION_FAILED.to_string(),
        json!({
            "Type": "Fail",
            "Comment": "A compensation failed after its retries; someone must resolve it.",
            "Error": "CompensationFailed",
            "CausePath": "$.compensation_error.Cause",
        }),
    );
    json!({
        "Comment": format!(
            "The {} saga, generated from its definition in shared/saga; regenerate with `underwrite saga asl`. Start executions with the saga id as the name and {{\"input\": <the {} event>, \"steps\": {{}}}} as the input.",
            definition.name, definition.input_type
        ),
        "StartAt": definition.steps[0].name,
        "States": states,
    })
}

/// Serialises a JSON value with object keys sorted at every level and an
/// indent of two spaces, followed by a newline, so that the generated file
/// is the same whatever order the map type keeps.
pub fn to_pretty_json(value: &Value) -> String {
    struct Sorted<'a>(&'a Value);

    impl Serialize for Sorted<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{SerializeMap, SerializeSeq};
            match self.0 {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    let mut out = serializer.serialize_map(Some(keys.len()))?;
                    for key in keys {
                        out.serialize_entry(key, &Sorted(&map[key]))?;
                    }
                    out.end()
                }
                Value::Array(items) => {
                    let mut out = serializer.serialize_seq(Some(items.len()))?;
                    for item in items {
                        out.serialize_element(&Sorted(item))?;
                    }
                    out.end()
                }
                other => other.serialize(serializer),
            }
        }
    }

    let mut text = serde_json::to_string_pretty(&Sorted(value)).expect("JSON values serialise");
    text.push('\n');
    text
}

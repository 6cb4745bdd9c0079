//! The Step Functions worker's side: task messages laid out as the
//! generated state machine's `MessageBody` resolves them, and the commands
//! and compensations built from them.

use serde_json::{Value, json};
use underwrite_events::Envelope;
use underwrite_saga::worker::{FailureCause, StepOutput, TaskMessage, command_from_message};
use underwrite_saga::{asl, origination};

fn fixture(event_type: &str) -> Value {
    let path = format!(
        "{}/../events/fixtures/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn canonical(value: &Value) -> String {
    serde_json::from_value::<Envelope>(value.clone())
        .unwrap()
        .to_json()
}

/// Resolves the `MessageBody` of `state` as Step Functions does for the
/// paths it uses: `$.x` from the execution state, `$$.Task.Token` and
/// `$$.Execution.Name` from the context.
fn message(state_name: &str, execution: &Value) -> TaskMessage {
    let document = asl::generate(&origination());
    let body = &document["States"][state_name]["Parameters"]["MessageBody"];
    let mut resolved = serde_json::Map::new();
    for (key, value) in body.as_object().unwrap() {
        match key.strip_suffix(".$") {
            None => {
                resolved.insert(key.clone(), value.clone());
            }
            Some(field) => {
                let path = value.as_str().unwrap();
                let resolved_value = match path {
                    "$$.Task.Token" => json!("token-1"),
                    "$$.Execution.Name" => json!("APP0001"),
                    _ => execution[path.strip_prefix("$.").unwrap()].clone(),
                };
                resolved.insert(field.to_string(), resolved_value);
            }
        }
    }
    serde_json::from_value(Value::Object(resolved)).unwrap()
}

fn output(command: &str, events: &[&str]) -> Value {
    serde_json::to_value(StepOutput {
        command: fixture(command),
        events: events.iter().map(|e| fixture(e)).collect(),
    })
    .unwrap()
}

fn no_signal(_: &str) -> Option<String> {
    None
}

#[test]
fn kfs_command_is_pricing_reply() {
    let execution = json!({
        "input": fixture("application.received"),
        "steps": { "pricing": output("risk.scored", &["pricing.quoted"]) },
    });
    let message = message("kfs", &execution);
    assert_eq!(message.saga_id, "APP0001");
    assert_eq!(message.task_token, "token-1");
    assert_eq!(message.command, "pricing.quoted");
    let command = command_from_message(&origination(), &message, &no_signal).unwrap();
    assert_eq!(command, Some(canonical(&fixture("pricing.quoted"))));
}

#[test]
fn acceptance_waits_for_signal() {
    let execution = json!({
        "input": fixture("application.received"),
        "steps": { "kfs": output("pricing.quoted", &["kfs.issued"]) },
    });
    let message = message("acceptance", &execution);
    let definition = origination();
    assert_eq!(
        command_from_message(&definition, &message, &no_signal).unwrap(),
        None
    );
    let accepted = canonical(&fixture("kfs.accepted"));
    let signal = |event_type: &str| (event_type == "kfs.accepted").then(|| accepted.clone());
    assert_eq!(
        command_from_message(&definition, &message, &signal).unwrap(),
        Some(accepted.clone())
    );
}

#[test]
fn compensation_names_failed_step() {
    let cause = FailureCause {
        step: "acceptance".into(),
        message: "KFS KFS-APP0001-20240607 expired".into(),
        command: Some(fixture("kfs.accepted")),
        code: None,
    };
    let execution = json!({
        "input": fixture("application.received"),
        "steps": {
            "pricing": output("risk.scored", &["pricing.quoted"]),
            "kfs": output("pricing.quoted", &["kfs.issued"]),
        },
        "error": { "Error": "kfs_expired", "Cause": cause.to_json() },
    });
    let message = message("compensate.kfs", &execution);
    assert_eq!(message.phase, "compensation");
    let command = command_from_message(&origination(), &message, &no_signal)
        .unwrap()
        .unwrap();
    let voided = Envelope::from_slice(command.as_bytes()).unwrap();
    assert_eq!(voided.event_type, "kfs.voided");
    assert_eq!(voided.source, "origination");
    assert_eq!(voided.subject, "KFS-APP0001-20240607");
    assert_eq!(voided.payload["reason"], "acceptance failed: kfs_expired");
    assert_eq!(voided.payload["proposal_number"], "KFS-APP0001-20240607");
    // Dated by the failed acceptance, as on the embedded runner.
    assert_eq!(voided.business_date.to_string(), "2024-06-10");
    assert_eq!(
        voided.causation_id.as_ref().map(|id| id.as_str()),
        Some("accept-APP0001")
    );
    // Rebuilding it gives the same id, so a redelivered compensation is a
    // duplicate to the kfs service.
    let again = command_from_message(&origination(), &message, &no_signal)
        .unwrap()
        .unwrap();
    assert_eq!(again, command);
}

#[test]
fn bad_messages_are_named() {
    let execution = json!({ "input": fixture("application.received"), "steps": {} });
    let mut unknown = message("consent", &execution);
    unknown.step = "appraisal".into();
    assert_eq!(
        command_from_message(&origination(), &unknown, &no_signal).unwrap_err(),
        "step appraisal is not in saga origination; check the state machine was generated from this definition"
    );
    let mut phase = message("consent", &execution);
    phase.phase = "sideways".into();
    assert_eq!(
        command_from_message(&origination(), &phase, &no_signal).unwrap_err(),
        "invalid phase \"sideways\": expected forward or compensation"
    );
    let missing = message("kfs", &execution);
    assert_eq!(
        command_from_message(&origination(), &missing, &no_signal).unwrap_err(),
        "step pricing has no reply"
    );
}

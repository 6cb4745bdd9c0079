//! The generated state machine: the committed file equals the generated
//! one, it passes the lint, and each lint rule catches a broken copy.

use std::path::PathBuf;

use serde_json::{Value, json};
use underwrite_saga::asl::{self, ROLLED_BACK, SQS_WAIT_FOR_TASK_TOKEN};
use underwrite_saga::lint::lint;
use underwrite_saga::origination;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../infra/statemachines/origination.asl.json")
}

fn generated() -> Value {
    asl::generate(&origination())
}

/// Lists the rules the lint reports for a document.
fn rules(document: &Value) -> Vec<&'static str> {
    lint(document).into_iter().map(|e| e.rule).collect()
}

#[test]
fn committed_file_is_generated() {
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; write it with `underwrite saga asl`",
            committed_path().display()
        )
    });
    assert!(
        committed == asl::to_pretty_json(&generated()),
        "infra/statemachines/origination.asl.json differs from the saga definition; regenerate it with `underwrite saga asl`"
    );
}

#[test]
fn generated_document_passes_lint() {
    assert_eq!(lint(&generated()), Vec::new());
}

#[test]
fn steps_send_commands_with_task_tokens() {
    let document = generated();
    assert_eq!(document["StartAt"], "consent");
    let pricing = &document["States"]["pricing"];
    assert_eq!(pricing["Resource"], SQS_WAIT_FOR_TASK_TOKEN);
    assert_eq!(pricing["Parameters"]["QueueUrl"], "${PricingQueueUrl}");
    let body = &pricing["Parameters"]["MessageBody"];
    assert_eq!(body["task_token.$"], "$$.Task.Token");
    assert_eq!(body["saga_id.$"], "$$.Execution.Name");
    assert_eq!(body["command"], "risk.scored");
    assert_eq!(pricing["Retry"][0]["JitterStrategy"], "FULL");
    assert_eq!(pricing["Catch"][0]["ErrorEquals"], json!(["States.ALL"]));
    assert_eq!(pricing["Catch"][0]["ResultPath"], "$.error");
    assert_eq!(pricing["Next"], "kfs");
    // Pricing fails before anything with a compensation succeeded.
    assert_eq!(pricing["Catch"][0]["Next"], ROLLED_BACK);
    assert_eq!(document["States"]["disbursal"]["Next"], "completed");
    assert_eq!(document["States"]["completed"]["Type"], "Succeed");
}

#[test]
fn compensations_run_in_reverse() {
    let document = generated();
    let states = &document["States"];
    // A failed disbursal cancels the sanction, voids the KFS and withdraws
    // the quote, in that order.
    assert_eq!(
        states["disbursal"]["Catch"][0]["Next"],
        "compensate.sanction"
    );
    assert_eq!(states["compensate.sanction"]["Next"], "compensate.kfs");
    assert_eq!(states["compensate.kfs"]["Next"], "compensate.pricing");
    assert_eq!(states["compensate.pricing"]["Next"], ROLLED_BACK);
    assert_eq!(states["acceptance"]["Catch"][0]["Next"], "compensate.kfs");
    assert_eq!(
        states["compensate.kfs"]["Parameters"]["MessageBody"]["command"],
        "kfs.voided"
    );
    assert_eq!(states[ROLLED_BACK]["Type"], "Fail");
}

/// Applies `change` to a copy of the generated document.
fn broken(change: impl FnOnce(&mut Value)) -> Value {
    let mut document = generated();
    change(&mut document);
    document
}

#[test]
fn lint_catches_each_broken_copy() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "StartAt names no state",
            broken(|d| d["StartAt"] = json!("intake")),
            "missing_start",
        ),
        (
            "a Next names no state",
            broken(|d| d["States"]["fraud"]["Next"] = json!("scoring")),
            "missing_next",
        ),
        (
            "a Catch.Next names no state",
            broken(|d| d["States"]["kfs"]["Catch"][0]["Next"] = json!("undo")),
            "missing_next",
        ),
        (
            "a state nothing leads to",
            broken(|d| {
                d["States"]["orphan"] = json!({"Type": "Pass", "End": true});
            }),
            "unreachable",
        ),
        (
            "a Task without Retry",
            broken(|d| {
                d["States"]["risk"].as_object_mut().unwrap().remove("Retry");
            }),
            "missing_retry",
        ),
        (
            "a Retry without jitter",
            broken(|d| {
                d["States"]["risk"]["Retry"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("JitterStrategy");
            }),
            "retry_without_jitter",
        ),
        (
            "a Retry on every error",
            broken(|d| d["States"]["risk"]["Retry"][0]["ErrorEquals"] = json!(["States.ALL"])),
            "retry_all_errors",
        ),
        (
            "a Task without Catch",
            broken(|d| {
                d["States"]["sanction"]
                    .as_object_mut()
                    .unwrap()
                    .remove("Catch");
            }),
            "missing_catch",
        ),
        (
            "a Catch that replaces the input",
            broken(|d| d["States"]["sanction"]["Catch"][0]["ResultPath"] = json!("$")),
            "catch_result_path",
        ),
        (
            "compensations in step order",
            broken(|d| {
                let states = &mut d["States"];
                states["disbursal"]["Catch"][0]["Next"] = json!("compensate.pricing");
                states["compensate.pricing"]["Next"] = json!("compensate.kfs");
                states["compensate.kfs"]["Next"] = json!("compensate.sanction");
                states["compensate.sanction"]["Next"] = json!(ROLLED_BACK);
                states["sanction"]["Catch"][0]["Next"] = json!("compensate.pricing");
                states["acceptance"]["Catch"][0]["Next"] = json!("compensate.pricing");
            }),
            "compensation_order",
        ),
        (
            "a skipped compensation",
            broken(|d| d["States"]["compensate.kfs"]["Next"] = json!(ROLLED_BACK)),
            "compensation_order",
        ),
        (
            "compensations that end in success",
            broken(|d| d["States"]["compensate.pricing"]["Next"] = json!("completed")),
            "compensation_end",
        ),
        (
            "a Fail state with a Next",
            broken(|d| d["States"][ROLLED_BACK]["Next"] = json!("completed")),
            "terminal_transition",
        ),
        (
            "a Task with neither Next nor End",
            broken(|d| {
                d["States"]["disbursal"]
                    .as_object_mut()
                    .unwrap()
                    .remove("Next");
            }),
            "terminal_transition",
        ),
        (
            "a waitForTaskToken message without the token",
            broken(|d| {
                d["States"]["kfs"]["Parameters"]["MessageBody"]
                    .as_object_mut()
                    .unwrap()
                    .remove("task_token.$");
            }),
            "missing_task_token",
        ),
    ];
    for (case, document, rule) in cases {
        let found = rules(&document);
        assert!(
            found.contains(&rule),
            "{case}: expected {rule}, got {found:?}"
        );
    }
}

#[test]
fn document_without_states_is_named() {
    let found = lint(&json!({"StartAt": "consent"}));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].rule, "missing_states");
}

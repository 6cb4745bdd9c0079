//! A lint for saga state machines in Amazon States Language, because
//! cfn-lint does not look inside a state machine definition.
//!
//! It checks that every transition names an existing state and every state
//! is reachable. Every task must retry with jitter, catch every error into
//! `$.error` and carry its task token. Compensations must run in reverse
//! order of the steps they undo and end in `Fail`, and terminal states must
//! have no transition.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde_json::Value;

use crate::asl::SQS_WAIT_FOR_TASK_TOKEN;

/// One problem found in a state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintError {
    /// The state at fault, or `(document)`.
    pub state: String,
    /// A fixed name of the rule broken, such as `missing_next`.
    pub rule: &'static str,
    /// The problem and the change that fixes it.
    pub message: String,
}

impl fmt::Display for LintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.state, self.rule, self.message)
    }
}

const DOCUMENT: &str = "(document)";

fn error(state: &str, rule: &'static str, message: impl Into<String>) -> LintError {
    LintError {
        state: state.to_string(),
        rule,
        message: message.into(),
    }
}

/// Lists the transitions of a state: `Next`, `Default`, each `Catch` and
/// each `Choices` entry's `Next`, with the field they come from.
fn transitions(state: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if let Some(next) = state["Next"].as_str() {
        out.push(("Next".to_string(), next));
    }
    if let Some(default) = state["Default"].as_str() {
        out.push(("Default".to_string(), default));
    }
    for (index, catcher) in state["Catch"].as_array().into_iter().flatten().enumerate() {
        if let Some(next) = catcher["Next"].as_str() {
            out.push((format!("Catch[{index}].Next"), next));
        }
    }
    for (index, choice) in state["Choices"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(next) = choice["Next"].as_str() {
            out.push((format!("Choices[{index}].Next"), next));
        }
    }
    out
}

fn is_compensation(state: &Value) -> bool {
    state["Parameters"]["MessageBody"]["phase"] == "compensation"
}

fn step_of(state: &Value) -> Option<&str> {
    state["Parameters"]["MessageBody"]["step"].as_str()
}

/// Checks a state machine; returns every problem found, none when it
/// passes.
pub fn lint(document: &Value) -> Vec<LintError> {
    let mut problems = Vec::new();
    let Some(states) = document["States"].as_object() else {
        return vec![error(
            DOCUMENT,
            "missing_states",
            "the document has no States object",
        )];
    };
    let start = document["StartAt"].as_str().unwrap_or_default();
    if !states.contains_key(start) {
        problems.push(error(
            DOCUMENT,
            "missing_start",
            format!("StartAt {start:?} names no state; set it to the first step"),
        ));
    }

    for (name, state) in states {
        check_state(name, state, states, &mut problems);
    }

    // Reachability from StartAt over every transition.
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(state) = states.get(name) {
            for (_, next) in transitions(state) {
                queue.push_back(next);
            }
        }
    }
    for name in states.keys() {
        if !seen.contains(name.as_str()) {
            problems.push(error(
                name,
                "unreachable",
                "no transition leads here from StartAt; remove the state or link it",
            ));
        }
    }

    check_compensation_order(start, states, &mut problems);
    problems
}

fn check_state(
    name: &str,
    state: &Value,
    states: &serde_json::Map<String, Value>,
    problems: &mut Vec<LintError>,
) {
    let kind = state["Type"].as_str().unwrap_or_default();
    for (field, next) in transitions(state) {
        if !states.contains_key(next) {
            problems.push(error(
                name,
                "missing_next",
                format!("{field} {next:?} names no state"),
            ));
        }
    }
    let ends = state["End"] == Value::Bool(true);
    match kind {
        "Succeed" | "Fail" => {
            if state.get("Next").is_some() || state.get("End").is_some() {
                problems.push(error(
                    name,
                    "terminal_transition",
                    format!("a {kind} state ends the execution and takes neither Next nor End"),
                ));
            }
        }
        "Choice" => {}
        "Task" | "Pass" | "Wait" | "Parallel" | "Map" => {
            let has_next = state.get("Next").is_some();
            if has_next == ends {
                problems.push(error(
                    name,
                    "terminal_transition",
                    format!("a {kind} state needs exactly one of Next and End: true"),
                ));
            }
        }
        other => problems.push(error(
            name,
            "unknown_type",
            format!("Type {other:?} is not a state type"),
        )),
    }
    if kind == "Task" {
        check_task(name, state, problems);
    }
}

fn check_task(name: &str, state: &Value, problems: &mut Vec<LintError>) {
    let retries = state["Retry"].as_array().map_or(&[][..], Vec::as_slice);
    if retries.is_empty() {
        problems.push(error(
            name,
            "missing_retry",
            "every Task needs a Retry for transient errors",
        ));
    }
    for (index, retrier) in retries.iter().enumerate() {
        if retrier["JitterStrategy"] != "FULL" {
            problems.push(error(
                name,
                "retry_without_jitter",
                format!("Retry[{index}] needs JitterStrategy FULL so that retries spread out"),
            ));
        }
        if retrier["ErrorEquals"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e == "States.ALL"))
        {
            problems.push(error(
                name,
                "retry_all_errors",
                format!("Retry[{index}] retries States.ALL, so a decline would be retried; list the transient errors"),
            ));
        }
    }
    let catches = state["Catch"].as_array().map_or(&[][..], Vec::as_slice);
    let catches_all = catches.iter().any(|catcher| {
        catcher["ErrorEquals"]
            .as_array()
            .is_some_and(|errors| errors.iter().any(|e| e == "States.ALL"))
    });
    if !catches_all {
        problems.push(error(
            name,
            "missing_catch",
            "every Task needs a Catch on States.ALL leading to the compensations",
        ));
    }
    if !is_compensation(state)
        && catches
            .iter()
            .any(|catcher| catcher["ResultPath"] != "$.error")
    {
        problems.push(error(
            name,
            "catch_result_path",
            "a step's Catch must keep the input and put the error at ResultPath $.error",
        ));
    }
    if state["Resource"] == SQS_WAIT_FOR_TASK_TOKEN {
        let body = &state["Parameters"]["MessageBody"];
        let carries_token = body
            .as_object()
            .is_some_and(|fields| fields.values().any(|v| v == "$$.Task.Token"));
        if !carries_token {
            problems.push(error(
                name,
                "missing_task_token",
                "a waitForTaskToken task must put $$.Task.Token in its MessageBody, or no worker can answer it",
            ));
        }
    }
}

/// Walks the forward steps from StartAt along `Next`, then checks that the
/// failure of each leads through the compensations of the steps before it,
/// latest first, to a `Fail` state.
fn check_compensation_order(
    start: &str,
    states: &serde_json::Map<String, Value>,
    problems: &mut Vec<LintError>,
) {
    let compensations: BTreeMap<&str, &str> = states
        .iter()
        .filter(|(_, state)| is_compensation(state))
        .filter_map(|(name, state)| step_of(state).map(|step| (step, name.as_str())))
        .collect();
    let mut forward: Vec<&str> = Vec::new();
    let mut name = start;
    while let Some(state) = states.get(name) {
        if state["Type"] != "Task" || forward.contains(&name) {
            break;
        }
        forward.push(name);
        match state["Next"].as_str() {
            Some(next) => name = next,
            None => break,
        }
    }
    for (position, step) in forward.iter().enumerate() {
        let state = &states[*step];
        let step_name = step_of(state).unwrap_or(step);
        let expected: Vec<&str> = forward[..position]
            .iter()
            .rev()
            .filter_map(|earlier| {
                let earlier_step = step_of(&states[*earlier]).unwrap_or(earlier);
                compensations.get(earlier_step).copied()
            })
            .collect();
        let mut actual = Vec::new();
        let mut next = state["Catch"]
            .as_array()
            .and_then(|catches| catches.first())
            .and_then(|catcher| catcher["Next"].as_str());
        let mut ends_in_fail = false;
        while let Some(current) = next {
            let Some(target) = states.get(current) else {
                break;
            };
            if target["Type"] == "Fail" {
                ends_in_fail = true;
                break;
            }
            if !is_compensation(target) || actual.contains(&current) {
                break;
            }
            actual.push(current);
            next = target["Next"].as_str();
        }
        if actual != expected {
            problems.push(error(
                step,
                "compensation_order",
                format!(
                    "a failure of {step_name} runs {actual:?}; it must run the compensations of the earlier steps in reverse order: {expected:?}"
                ),
            ));
        } else if !ends_in_fail {
            problems.push(error(
                step,
                "compensation_end",
                format!(
                    "the compensations after a failure of {step_name} must end in a Fail state"
                ),
            ));
        }
    }
}

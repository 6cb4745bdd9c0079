//! Origination from a lender's own applications on one machine, as a user
//! runs it. `underwrite run --input` starts one saga per application, and
//! `underwrite saga waiting` names the KFS each borrower is to accept. A
//! second input with the acceptances leads to sanction and disbursal.

mod common;

use std::path::Path;

use common::{text, underwrite};
use serde_json::{Value, json};
use underwrite_tests::origination::{application_payload, consent_granted, consent_withdrawn};

/// Builds an application for ₹20,000 over 24 months, applied for on
/// 2024-06-07, with its own PAN and phone so that no fraud rule links the
/// applicants.
fn application(id: &str, borrower: &str, pan: &str, phone: &str) -> String {
    let mut payload = application_payload(id, borrower, "2024-06-07");
    payload["pan"] = json!(pan);
    payload["phone"] = json!(phone);
    json!({
        "id": format!("app-{id}"), "type": "application.received",
        "occurred_at": "2024-06-07T10:00:00+05:30", "payload": payload,
    })
    .to_string()
}

fn acceptance(id: &str, proposal_number: &str, on: &str) -> String {
    json!({
        "id": format!("accept-{id}"), "type": "kfs.accepted",
        "occurred_at": format!("{on}T15:00:00+05:30"),
        "payload": { "application_id": id, "proposal_number": proposal_number, "accepted_on": on },
    })
    .to_string()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn run_input(dir: &Path, file: &str) -> (bool, String) {
    let output = underwrite(dir, &["run", "--input", file, "--until-idle"]);
    (output.status.success(), text(&output))
}

/// Returns the sagas waiting for an event, from `saga waiting --json`.
fn waiting(dir: &Path) -> Vec<Value> {
    let output = underwrite(dir, &["saga", "waiting", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn applications_then_acceptances_run_to_disbursal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();

    // B1 and B3 consented before applying; B2 withdrew consent first.
    write_lines(
        &path.join("applications.jsonl"),
        &[
            consent_granted("C-B1", "B1", "2024-06-01", "2025-05-31"),
            consent_granted("C-B2", "B2", "2024-06-01", "2025-05-31"),
            consent_withdrawn("C-B2", "B2", "2024-06-05"),
            consent_granted("C-B3", "B3", "2024-06-01", "2025-05-31"),
            application("A1", "B1", "ABCPE1234F", "+919876543210"),
            application("A2", "B2", "BCDPE2345G", "+919876543211"),
            application("A3", "B3", "CDEPE3456H", "+919876543212"),
        ],
    );
    let (ok, message) = run_input(path, "applications.jsonl");
    assert!(ok, "{message}");
    assert!(
        message.contains(
            "Published 4 events from applications.jsonl, and took 3 for the origination sagas."
        ),
        "{message}"
    );
    assert!(
        message.contains("Started 3 origination sagas (0 had started before)"),
        "{message}"
    );
    assert!(
        message.contains("sagas: 2 started, 1 rolled_back"),
        "{message}"
    );

    // A1 and A3 wait for their borrowers; A2 ended at the consent step.
    let rows = waiting(path);
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["A1", "A3"], "{rows:?}");
    for row in &rows {
        assert_eq!(row["step"], "acceptance");
        assert_eq!(row["waits_for"], "kfs.accepted");
        assert_eq!(row["issued_on"], "2024-06-07");
        assert!(row["valid_until"].as_str().unwrap() > "2024-06-07", "{row}");
    }
    let proposal = |i: usize| rows[i]["proposal_number"].as_str().unwrap().to_string();
    assert_eq!(proposal(0), "KFS-A1-20240607");
    let table = text(&underwrite(path, &["saga", "waiting"]));
    assert!(table.contains("KFS-A3-20240607"), "{table}");
    assert!(table.contains("2 sagas wait."), "{table}");
    let list = text(&underwrite(path, &["saga", "list"]));
    let a2 = list.lines().find(|l| l.starts_with("A2 ")).unwrap();
    assert!(
        a2.contains("rolled_back") && a2.contains("consent: consent_withdrawn"),
        "{list}"
    );

    // An acceptance for an application that never came, and one that names
    // another KFS than the one issued, are bad lines: nothing of the file is
    // taken, and both sagas still wait.
    let valid_until = rows[0]["valid_until"].as_str().unwrap().to_string();
    let mut lines = vec![
        acceptance("A1", &proposal(0), "2024-06-07"),
        acceptance("A3", &proposal(1), "2024-07-31"),
    ];
    lines.push(acceptance("A9", "KFS-A9-20240607", "2024-06-07"));
    let mut typo: Value =
        serde_json::from_str(&acceptance("A1", "KFS-A1-20240610", "2024-06-07")).unwrap();
    typo["id"] = json!("accept-A1-typo");
    let mut bad = lines.clone();
    bad.push(typo.to_string());
    write_lines(&path.join("bad-acceptances.jsonl"), &bad);
    let (ok, message) = run_input(path, "bad-acceptances.jsonl");
    assert!(!ok, "{message}");
    assert!(
        message.contains(
            "bad-acceptances.jsonl:3: kfs.accepted for \"A9\", which has no origination saga"
        ),
        "{message}"
    );
    assert!(
        message.contains("bad-acceptances.jsonl:4: kfs.accepted for \"A1\" names proposal number \"KFS-A1-20240610\", but the KFS issued for it is \"KFS-A1-20240607\""),
        "{message}"
    );
    assert!(message.contains("nothing was published"), "{message}");
    assert_eq!(waiting(path).len(), 2);

    // A1 accepts on the day of issue; A3 after its KFS expired.
    lines.pop();
    write_lines(&path.join("acceptances.jsonl"), &lines);
    let (ok, message) = run_input(path, "acceptances.jsonl");
    assert!(ok, "{message}");
    assert!(
        message.contains("recorded 2 signals (0 repeats ignored)"),
        "{message}"
    );
    assert!(
        message.contains("sagas: 1 completed, 2 rolled_back"),
        "{message}"
    );
    assert!(waiting(path).is_empty());
    let steps = text(&underwrite(path, &["saga", "show", "A1"]));
    assert!(steps.contains("loan.sanctioned"), "{steps}");
    assert!(steps.contains("loan.disbursed"), "{steps}");
    let list = text(&underwrite(path, &["saga", "list"]));
    let a3 = list.lines().find(|l| l.starts_with("A3 ")).unwrap();
    assert!(
        a3.contains("rolled_back") && a3.contains("kfs_expired"),
        "{list}"
    );
    assert!(valid_until.as_str() < "2024-07-31");

    // The same file again changes nothing.
    let (ok, message) = run_input(path, "acceptances.jsonl");
    assert!(ok, "{message}");
    assert!(message.contains("was already published"), "{message}");
    assert!(
        message.contains("recorded 0 signals (2 repeats ignored)"),
        "{message}"
    );
    assert!(
        message.contains("sagas: 1 completed, 2 rolled_back"),
        "{message}"
    );
}

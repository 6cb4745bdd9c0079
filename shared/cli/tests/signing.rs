//! Identities and signed events through the real binary: key files, the
//! keyring and policy it writes, and events changed or forged inside the
//! store, which consumers reject to the dead-letter queue.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{text, underwrite};
use rusqlite::Connection;
use serde_json::{Value, json};

fn workspace(identities: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "queues": { "visibility_timeout_ms": 50, "max_receive_count": 2, "batch_size": 10 },
        "identities": identities,
    });
    std::fs::write(dir.path().join("underwrite.json"), config.to_string()).unwrap();
    dir
}

fn disbursal(loan: &str) -> String {
    json!({"id": format!("disb-{loan}"),"type":"loan.disbursed","occurred_at":"2024-02-01T10:00:00+05:30",
        "payload":{"loan_id":loan,"borrower_id":"B1","product":"personal","principal":"100000.00",
        "annual_rate":"12.00","tenor_months":12,"disbursed_on":"2024-02-01","first_due_date":"2024-03-01"}})
    .to_string()
}

fn publish_to_mechanism_only(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("events.jsonl"), lines.join("\n")).unwrap();
    let output = underwrite(
        dir,
        &[
            "run",
            "--input",
            "events.jsonl",
            "--until-idle",
            "mechanism",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
}

fn npa_bodies(db: &Path) -> Vec<(i64, Value)> {
    let connection = Connection::open(db).unwrap();
    let mut statement = connection
        .prepare("SELECT seq, body FROM queue_messages WHERE queue = 'npa' ORDER BY seq")
        .unwrap();
    statement
        .query_map([], |row| {
            let body: String = row.get(1)?;
            Ok((row.get(0)?, serde_json::from_str(&body).unwrap()))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn kv_count(db: &Path, prefix: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM kv WHERE substr(key, 1, length(?1)) = ?1",
            [prefix],
            |row| row.get(0),
        )
        .unwrap()
}

fn dead_letter_codes(dir: &Path) -> Vec<(String, String)> {
    let output = underwrite(dir, &["dlq", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let mut codes: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let letter: Value = serde_json::from_str(line).unwrap();
            (
                letter["error_code"].as_str().unwrap().to_string(),
                letter["error_message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    codes.sort();
    codes
}

#[test]
fn identity_writes_owner_only_key() {
    let dir = workspace(json!({}));
    let output = underwrite(dir.path(), &["identity", "npa"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("Created identity npa with key npa:"), "{out}");
    let key = dir.path().join("keys/npa.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let keyring: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("keys/keyring.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(keyring["keys"].as_object().unwrap().len(), 1);
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("keys/policy.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(policy["emitters"]["npa"][0], "npa.bucket.changed");

    let output = underwrite(dir.path(), &["identity", "npa"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("already exists; pass --force"),
        "{}",
        text(&output)
    );

    let output = underwrite(dir.path(), &["identity", "npa", "--force"]);
    assert!(output.status.success(), "{}", text(&output));
    let keyring: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("keys/keyring.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(keyring["keys"].as_object().unwrap().len(), 2);

    let output = underwrite(dir.path(), &["identity", "Bad/Name"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("invalid identity name \"Bad/Name\""),
        "{}",
        text(&output)
    );
}

#[test]
fn stale_policy_file_is_named_at_start() {
    // A policy file from an older release: mechanism may emit disbursals
    // but not the sanctions and cooling-off exit amounts added since.
    let dir = workspace(json!({}));
    let output = underwrite(dir.path(), &["list"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !text(&output).contains("emitter policy"),
        "{}",
        text(&output)
    );
    let path = dir.path().join("keys/policy.json");
    let mut policy: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    policy["emitters"]["mechanism"] = json!(["loan.disbursed"]);
    std::fs::write(&path, policy.to_string()).unwrap();

    let output = underwrite(dir.path(), &["list"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("The emitter policy does not allow types the services emit"),
        "{out}"
    );
    assert!(
        out.contains("mechanism -> loan.cooling_off_exit.computed, mechanism -> loan.sanctioned"),
        "{out}"
    );
}

#[test]
fn readable_key_file_stops_run() {
    let dir = workspace(json!({}));
    assert!(
        underwrite(dir.path(), &["identity", "npa"])
            .status
            .success()
    );
    let key = dir.path().join("keys/npa.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = underwrite(dir.path(), &["run", "--until-idle"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("chmod 600"), "{}", text(&output));
}

#[test]
fn changed_and_forged_events_are_dead_lettered() {
    let dir = workspace(json!({}));
    let db = dir.path().join("data/underwrite.db");
    publish_to_mechanism_only(dir.path(), &[disbursal("L1"), disbursal("L3")]);
    // Input was signed at the edge by the ingest identity.
    let bodies = npa_bodies(&db);
    assert_eq!(bodies.len(), 2);
    for (_, body) in &bodies {
        assert!(
            body["key_id"].as_str().unwrap().starts_with("input:"),
            "{body}"
        );
        assert_eq!(body["signature"].as_str().unwrap().len(), 88);
    }
    assert_eq!(kv_count(&db, "loan/"), 2);

    // A second installation, whose keys this one does not trust, signs L2.
    let other = workspace(json!({}));
    publish_to_mechanism_only(other.path(), &[disbursal("L2")]);
    let (_, forged) = npa_bodies(&other.path().join("data/underwrite.db")).remove(0);

    let connection = Connection::open(&db).unwrap();
    let (first, mut tampered) = bodies[0].clone();
    tampered["payload"]["principal"] = json!("900000.00");
    connection
        .execute(
            "UPDATE queue_messages SET body = ?1 WHERE seq = ?2",
            rusqlite::params![tampered.to_string(), first],
        )
        .unwrap();
    let (second, mut unsigned) = bodies[1].clone();
    let object = unsigned.as_object_mut().unwrap();
    object.remove("signature");
    object.remove("key_id");
    connection
        .execute(
            "UPDATE queue_messages SET body = ?1 WHERE seq = ?2",
            rusqlite::params![unsigned.to_string(), second],
        )
        .unwrap();
    connection
        .execute(
            "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms) VALUES ('npa', 'disb-L2', ?1, 0, 0)",
            [forged.to_string()],
        )
        .unwrap();
    drop(connection);

    let output = underwrite(dir.path(), &["run", "--until-idle", "npa"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("3 events went to the dead-letter queue"),
        "{}",
        text(&output)
    );
    let codes = dead_letter_codes(dir.path());
    let names: Vec<&str> = codes.iter().map(|(code, _)| code.as_str()).collect();
    assert_eq!(
        names,
        ["authz_bad_signature", "authz_unknown_key", "authz_unsigned"]
    );
    assert!(codes[0].1.contains("disb-L1"), "{}", codes[0].1);
    assert!(codes[1].1.contains("disb-L2"), "{}", codes[1].1);
    assert!(
        codes[1].1.contains(forged["key_id"].as_str().unwrap()),
        "{}",
        codes[1].1
    );
    assert!(codes[2].1.contains("disb-L3"), "{}", codes[2].1);
    assert_eq!(kv_count(&db, "npa/"), 0);
    assert_eq!(kv_count(&db, "loan/"), 2);
}

#[test]
fn type_outside_policy_is_dead_lettered() {
    let dir = workspace(json!({}));
    assert!(
        underwrite(dir.path(), &["identity", "input"])
            .status
            .success()
    );
    let policy_path = dir.path().join("keys/policy.json");
    let mut policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&policy_path).unwrap()).unwrap();
    policy["emitters"]["input"] = json!(["repayment.received"]);
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    std::fs::write(dir.path().join("events.jsonl"), disbursal("L1")).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "events.jsonl", "--until-idle"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let codes = dead_letter_codes(dir.path());
    // mechanism, fee, npa and audit each rejected the event.
    assert_eq!(codes.len(), 4, "{codes:?}");
    for (code, message) in &codes {
        assert_eq!(code, "authz_policy");
        assert!(message.contains("may not emit loan.disbursed"), "{message}");
    }
    let db = dir.path().join("data/underwrite.db");
    assert_eq!(kv_count(&db, "loan/"), 0);
    assert_eq!(kv_count(&db, "npa/"), 0);
}

#[test]
fn signing_can_be_switched_off() {
    let dir = workspace(json!({ "enabled": false }));
    std::fs::write(dir.path().join("events.jsonl"), disbursal("L1")).unwrap();
    let output = underwrite(
        dir.path(),
        &[
            "run",
            "--input",
            "events.jsonl",
            "--until-idle",
            "mechanism",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(!dir.path().join("keys").exists());
    let bodies = npa_bodies(&dir.path().join("data/underwrite.db"));
    assert!(bodies[0].1.get("signature").is_none(), "{}", bodies[0].1);
}

#[test]
fn missing_key_without_create_names_the_fix() {
    let dir = workspace(json!({ "create_missing": false }));
    let output = underwrite(dir.path(), &["run", "--until-idle"]);
    assert!(!output.status.success());
    // The first service in routing order is the first key looked for.
    assert!(
        text(&output).contains("no key file for identity \"consent\""),
        "{}",
        text(&output)
    );
    assert!(
        text(&output).contains("run `underwrite identity consent`"),
        "{}",
        text(&output)
    );
}

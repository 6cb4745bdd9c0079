//! The `underwrite` binary as a user runs it: each test in its own folder with
//! its own store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{command, text, underwrite};
use rusqlite::Connection;
use serde_json::json;

/// A folder with an underwrite.json whose retries are fast.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({ "queues": { "visibility_timeout_ms": 50, "max_receive_count": 2, "batch_size": 10 } });
    std::fs::write(dir.path().join("underwrite.json"), config.to_string()).unwrap();
    dir
}

fn disbursal_line() -> String {
    json!({"id":"disb-L1","type":"loan.disbursed","occurred_at":"2024-02-01T10:00:00+05:30",
        "payload":{"loan_id":"L1","borrower_id":"B1","product":"personal","principal":"100000.00",
        "annual_rate":"12.00","tenor_months":12,"disbursed_on":"2024-02-01","first_due_date":"2024-03-01"}})
    .to_string()
}

fn kv_rows(db: &Path, prefix: &str) -> Vec<(String, String)> {
    let connection = Connection::open(db).unwrap();
    let mut statement = connection
        .prepare("SELECT key, value FROM kv WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")
        .unwrap();
    statement
        .query_map([prefix], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

#[test]
fn bad_input_lines_are_rejected_with_line_numbers() {
    let dir = workspace();
    let lines = [
        disbursal_line(),
        "{\"id\": \"broken\"".to_string(),
        json!({"id":"p1","type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
            "payload":{"loan_id":"L1","payment_id":"P1","amount":5000.5,"value_date":"2024-03-01"}})
        .to_string(),
        json!({"id":"p2","type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
            "payload":{"loan_id":"L1","payment_id":"P2","amount":"5000.505","value_date":"2024-03-01"}})
        .to_string(),
        json!({"id":"x1","type":"loan.teleported","occurred_at":"2024-03-01T12:00:00+05:30","payload":{}}).to_string(),
        json!({"id":"p3","type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
            "payload":{"loan_id":"L1","payment_id":"P3","amount":"-100.00","value_date":"2024-03-01"}})
        .to_string(),
    ];
    std::fs::write(dir.path().join("events.jsonl"), lines.join("\n")).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "events.jsonl", "--until-idle"],
    );
    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(out.contains("events.jsonl:2: malformed JSON"), "{out}");
    assert!(
        out.contains(
            "events.jsonl:3: invalid repayment.received payload: money must be a JSON string"
        ),
        "{out}"
    );
    assert!(out.contains("events.jsonl:4: invalid repayment.received payload: invalid money \"5000.505\": at most two decimals"), "{out}");
    assert!(
        out.contains("events.jsonl:5: unknown event type \"loan.teleported\""),
        "{out}"
    );
    assert!(
        out.contains(
            "events.jsonl:6: invalid repayment.received payload: invalid amount \"-100.00\""
        ),
        "{out}"
    );
    assert!(out.contains("5 of 6 lines"), "{out}");
    let db = dir.path().join("data/underwrite.db");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM queue_messages"),
        0,
        "nothing may be published"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM kv"),
        0,
        "no state may change"
    );

    // With --skip-invalid the valid line goes through and the rest are kept aside.
    let output = underwrite(
        dir.path(),
        &[
            "run",
            "--input",
            "events.jsonl",
            "--until-idle",
            "--skip-invalid",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let rejected = std::fs::read_to_string(dir.path().join("events.jsonl.rejected.jsonl")).unwrap();
    assert_eq!(rejected.lines().count(), 5);
    assert_eq!(kv_rows(&db, "loan/").len(), 1);
}

#[test]
fn repayment_for_unknown_loan_lands_in_dlq() {
    let dir = workspace();
    let line = json!({"id":"p1","type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
        "payload":{"loan_id":"GHOST","payment_id":"P1","amount":"100.00","value_date":"2024-03-01"}});
    std::fs::write(dir.path().join("events.jsonl"), line.to_string()).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "events.jsonl", "--until-idle"],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("3 events went to the dead-letter queue"),
        "{}",
        text(&output)
    );
    let output = underwrite(dir.path(), &["dlq"]);
    let out = text(&output);
    assert!(
        out.contains("loan GHOST not found for repayment.received"),
        "{out}"
    );
    assert!(out.contains("retries_exhausted"), "{out}");
    let output = underwrite(dir.path(), &["dlq", "--queue", "bogus"]);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("unknown queue \"bogus\""),
        "{}",
        text(&output)
    );
    let db = dir.path().join("data/underwrite.db");
    assert!(kv_rows(&db, "loan/").is_empty());
    assert!(kv_rows(&db, "npa/").is_empty());

    let output = underwrite(dir.path(), &["dlq", "--replay", "--max", "1"]);
    assert!(
        text(&output).contains("Moved 1 dead letters"),
        "{}",
        text(&output)
    );
    // mechanism, fee and npa each dead-lettered the repayment.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM dead_letters"), 2);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM queue_messages"), 1);
    let output = underwrite(dir.path(), &["health"]);
    assert!(
        text(&output).contains("2 dead letters"),
        "{}",
        text(&output)
    );
}

#[test]
fn invalid_config_names_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("underwrite.json"),
        r#"{"queues":{"visibility_timeout_ms":10,"max_receive_count":5,"batch_size":20000}}"#,
    )
    .unwrap();
    let output = underwrite(dir.path(), &["health"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("queues.batch_size is 20000: allowed values are 1 to 10000"),
        "{}",
        text(&output)
    );

    std::fs::write(
        dir.path().join("underwrite.json"),
        r#"{"stor_path":"x.db"}"#,
    )
    .unwrap();
    let output = underwrite(dir.path(), &["health"]);
    let out = text(&output);
    assert!(out.contains("unknown key \"stor_path\""), "{out}");
    assert!(
        out.contains("store_path"),
        "the allowed keys are listed: {out}"
    );
}

#[test]
fn init_writes_a_loadable_default() {
    let dir = tempfile::tempdir().unwrap();
    let output = underwrite(dir.path(), &["init"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = underwrite(dir.path(), &["init"]);
    assert!(
        text(&output).contains("already exists"),
        "{}",
        text(&output)
    );
    let output = underwrite(dir.path(), &["migrate"]);
    assert!(
        text(&output).contains("schema version 5"),
        "{}",
        text(&output)
    );
    let output = underwrite(dir.path(), &["list"]);
    assert!(text(&output).contains("npa"), "{}", text(&output));
}

#[test]
fn audit_verify_names_tampered_entry() {
    let dir = workspace();
    std::fs::write(dir.path().join("events.jsonl"), disbursal_line() + "\n").unwrap();
    assert!(
        underwrite(
            dir.path(),
            &["run", "--input", "events.jsonl", "--until-idle"]
        )
        .status
        .success()
    );
    let output = underwrite(dir.path(), &["audit", "verify"]);
    assert!(
        text(&output).contains("intact: 1 entries"),
        "{}",
        text(&output)
    );
    let db = dir.path().join("data/underwrite.db");
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE kv SET value = replace(value, '100000.00', '900000.00') WHERE key = 'audit/entry/000000000001'", [])
        .unwrap();
    let output = underwrite(dir.path(), &["audit", "verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("BROKEN at entry 1"),
        "{}",
        text(&output)
    );
}

fn report_file(dir: &Path, as_of: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!("npa_report_{as_of}.csv"))).unwrap()
}

/// A run killed with SIGKILL and restarted ends with the ledger and report of
/// an uninterrupted run.
#[test]
fn sigkill_mid_run_then_restart_matches_clean_run() {
    let as_of = "2023-05-31";
    let dir = workspace();
    let clean = dir.path().join("clean");
    let output = underwrite(
        dir.path(),
        &[
            "example",
            "german-credit",
            "--csv",
            &csv_path(),
            "--as-of",
            as_of,
            "--out",
            "clean",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    // The example disburses through origination, so its events.jsonl holds
    // servicing events only. The killed run gets the same loans as input
    // disbursals, built from the clean run's ledgers, ahead of those events.
    let clean_db = clean.join("underwrite.db");
    let mut lines: Vec<String> = kv_rows(&clean_db, "loan/")
        .into_iter()
        .map(|(_, value)| {
            let stored: serde_json::Value = serde_json::from_str(&value).unwrap();
            let terms = &stored["terms"];
            json!({
                "id": format!("disbursal-{}", terms["loan_id"].as_str().unwrap()),
                "type": "loan.disbursed",
                "occurred_at": format!("{}T10:00:00+05:30", terms["disbursed_on"].as_str().unwrap()),
                "payload": terms,
            })
            .to_string()
        })
        .collect();
    assert!(!lines.is_empty(), "the clean run disbursed no loans");
    lines.extend(
        std::fs::read_to_string(clean.join("events.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string),
    );
    let events = dir.path().join("servicing.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();

    let killed_db = dir.path().join("killed.db");
    let args = [
        "--db",
        "killed.db",
        "--lake",
        "killed-lake",
        "run",
        "--input",
        events.to_str().unwrap(),
        "--until-idle",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_underwrite"))
        .args(args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once part of the work is committed.
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let handled = if killed_db.exists() {
            Connection::open(&killed_db)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM idempotency", [], |row| {
                        row.get::<_, i64>(0)
                    })
                })
                .unwrap_or(0)
        } else {
            0
        };
        if handled > 500 || started.elapsed().as_secs() > 120 {
            break;
        }
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run should have been killed before it finished"
    );

    let output = underwrite(dir.path(), &args);
    assert!(output.status.success(), "{}", text(&output));
    let output = underwrite(
        dir.path(),
        &[
            "--db",
            "killed.db",
            "--lake",
            "killed-lake",
            "report",
            "npa",
            "--as-of",
            as_of,
            "--out",
            "killed-report",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));

    assert_eq!(
        kv_rows(&killed_db, "loan/"),
        kv_rows(&clean_db, "loan/"),
        "ledgers differ"
    );
    assert_eq!(
        report_file(&dir.path().join("killed-report"), as_of),
        report_file(&clean.join("report"), as_of)
    );
    let entries = |db: &Path| count(db, "SELECT COUNT(*) FROM kv WHERE key LIKE 'audit/entry/%'");
    let inputs = std::fs::read_to_string(&events).unwrap().lines().count() as i64;
    assert!(
        entries(&killed_db) >= inputs,
        "every input event is audited once"
    );
    let duplicates = count(
        &killed_db,
        "SELECT COUNT(*) FROM (SELECT json_extract(value, '$.event.id') AS id FROM kv WHERE key LIKE 'audit/entry/%' GROUP BY id HAVING COUNT(*) > 1)",
    );
    assert_eq!(duplicates, 0, "no event may be audited twice");
    let output = underwrite(dir.path(), &["--db", "killed.db", "audit", "verify"]);
    assert!(output.status.success(), "{}", text(&output));
}

fn csv_path() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/german_credit/german_credit.csv");
    root.canonicalize().unwrap().display().to_string()
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 18] = [
        &[],
        &["init"],
        &["list"],
        &["migrate"],
        &["run"],
        &["dlq"],
        &["health"],
        &["metrics"],
        &["serve"],
        &["backup"],
        &["restore"],
        &["day-end"],
        &["report", "npa"],
        &["audit", "verify"],
        &["example", "german-credit"],
        &["bench"],
        &["report"],
        &["identity"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = underwrite(dir.path(), &args);
        let help = text(&output);
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(help.contains("Usage: underwrite"), "{args:?}: {help}");
    }
    let run_help = text(&underwrite(dir.path(), &["run", "--help"]));
    for flag in [
        "--input",
        "--until-idle",
        "--skip-invalid",
        "--republish",
        "--db",
        "--config",
    ] {
        assert!(
            run_help.contains(flag),
            "run --help lacks {flag}: {run_help}"
        );
    }
    let dlq_help = text(&underwrite(dir.path(), &["dlq", "--help"]));
    for flag in ["--replay", "--max", "--queue", "--json"] {
        assert!(
            dlq_help.contains(flag),
            "dlq --help lacks {flag}: {dlq_help}"
        );
    }
}

#[test]
fn misspelled_log_level_is_rejected() {
    let dir = workspace();
    let output = command(dir.path())
        .env("UNDERWRITE_LOG_LEVEL", "loud")
        .arg("list")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let out = text(&output);
    assert!(
        out.contains("invalid UNDERWRITE_LOG_LEVEL \"loud\""),
        "{out}"
    );
    assert!(out.contains("warn"), "{out}");
}

#[test]
fn rejected_input_lines_are_redacted() {
    let dir = workspace();
    let line = r#"{"id":"e1","type":"repayment.received","occurred_at":"not a date ravi@example.com","payload":{}}"#;
    std::fs::write(dir.path().join("bad.jsonl"), format!("{line}\n")).unwrap();
    let output = underwrite(dir.path(), &["run", "--input", "bad.jsonl", "--until-idle"]);
    assert!(!output.status.success());
    let out = text(&output);
    assert!(out.contains("bad.jsonl:1:"), "{out}");
    assert!(!out.contains("ravi@example.com"), "{out}");
}

//! `underwrite dlq` on the AWS backend, through the real binary against a
//! moto server on 127.0.0.1: dead letters listed with their reasons, and
//! replayed to their source queues with body and attributes, all or
//! `--max N`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{command, text};
use serde_json::{Value, json};
use underwrite_aws::AwsBackend;
use underwrite_runtime::ports::{Bus, DeadLetterReason, Routes};
use underwrite_tests::moto::{self, Stack};

const SERVICES: [&str; 9] = [
    "consent",
    "fraud",
    "risk",
    "pricing",
    "kfs",
    "mechanism",
    "fee",
    "npa",
    "audit",
];

/// Runs the binary in `dir` with the emulator's test credentials.
fn underwrite(dir: &Path, args: &[&str]) -> std::process::Output {
    command(dir)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .args(args)
        .output()
        .expect("underwrite runs")
}

/// Creates a folder whose `underwrite.json` selects the AWS backend of
/// `stack`.
fn workspace(stack: &Stack) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = &stack.config;
    let file = json!({
        "aws": {
            "enabled": true,
            "endpoint_url": config.endpoint_url,
            "region": config.region,
            "state_table": config.state_table,
            "idempotency_table": config.idempotency_table,
            "bucket": config.bucket,
            "queue_prefix": config.queue_prefix,
        }
    });
    std::fs::write(dir.path().join("underwrite.json"), file.to_string()).unwrap();
    dir
}

fn reason(code: &str, message: &str) -> DeadLetterReason {
    DeadLetterReason {
        error_kind: "permanent".into(),
        error_code: code.into(),
        error_message: message.into(),
        receive_count: 1,
    }
}

fn attributes(id: &str, event_type: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("event_id".to_string(), id.to_string()),
        ("event_type".to_string(), event_type.to_string()),
    ])
}

/// Receives every visible message of a queue: (body, event id attribute).
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<(String, String)> {
    let output = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    output
        .messages()
        .iter()
        .map(|m| {
            let id = m
                .message_attributes()
                .and_then(|a| a.get("event_id"))
                .and_then(|v| v.string_value())
                .unwrap_or_default()
                .to_string();
            (m.body().unwrap_or_default().to_string(), id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_and_replays_on_aws() {
    let (_server, endpoint) = moto::emulator();
    let stack = Stack::create(&endpoint, &SERVICES, 3).await;
    let routes = Routes::from_pairs(SERVICES.iter().map(|name| (*name, &[] as &[&str])));
    let bus =
        AwsBackend::with_clients(stack.clients.clone(), &stack.config, "mechanism", routes).bus;
    let letters = [
        (
            "mechanism",
            "pay-P1",
            "repayment.received",
            "loan_not_found",
        ),
        ("mechanism", "pay-P2", "repayment.received", "invalid_event"),
        ("npa", "disb-L3", "loan.disbursed", "invalid_event"),
    ];
    for (queue, id, event_type, code) in letters {
        let body = json!({"id": id, "type": event_type}).to_string();
        bus.dead_letter(
            queue,
            &format!("m-{id}"),
            &body,
            &attributes(id, event_type),
            &reason(code, &format!("{id} failed with {code}")),
        )
        .await
        .unwrap();
    }
    let dir = workspace(&stack);

    let listed = underwrite(dir.path(), &["dlq"]);
    let output = text(&listed);
    assert!(listed.status.success(), "{output}");
    for (queue, id, _, code) in letters {
        let row = output
            .lines()
            .find(|line| line.contains(&format!("m-{id}")))
            .unwrap_or_else(|| panic!("{id} is listed: {output}"));
        assert!(row.starts_with(queue), "{row}");
        assert!(row.contains(code), "{row}");
        assert!(row.contains(&format!("{id} failed with {code}")), "{row}");
    }
    assert!(output.contains("3 dead letters"), "{output}");

    let json_lines = underwrite(dir.path(), &["dlq", "--json", "--queue", "npa"]);
    assert!(json_lines.status.success(), "{}", text(&json_lines));
    let entries: Vec<Value> = String::from_utf8_lossy(&json_lines.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["queue"], "npa");
    assert_eq!(entries[0]["reason"]["error_code"], "invalid_event");
    assert_eq!(entries[0]["attributes"]["event_id"], "disb-L3");

    let one = underwrite(
        dir.path(),
        &["dlq", "--replay", "--max", "1", "--queue", "mechanism"],
    );
    assert!(one.status.success(), "{}", text(&one));
    assert!(
        text(&one).contains("Moved 1 dead letters"),
        "{}",
        text(&one)
    );
    let back = drain(&stack.clients.sqs, &stack.queues["mechanism"]).await;
    assert_eq!(back.len(), 1, "{back:?}");
    let (body, id) = &back[0];
    let original = letters.iter().find(|l| l.1 == id).expect("a known event");
    assert_eq!(
        body,
        &json!({"id": original.1, "type": original.2}).to_string()
    );
    assert_eq!(bus.dead_letters(None).await.unwrap().len(), 2);

    let all = underwrite(dir.path(), &["dlq", "--replay"]);
    let output = text(&all);
    assert!(all.status.success(), "{output}");
    assert!(output.contains("Moved 2 dead letters"), "{output}");
    assert!(output.contains("receive, send and delete"), "{output}");
    let empty = underwrite(dir.path(), &["dlq"]);
    assert!(
        text(&empty).contains("No dead letters."),
        "{}",
        text(&empty)
    );
    let npa = drain(&stack.clients.sqs, &stack.queues["npa"]).await;
    assert_eq!(npa.len(), 1);
    assert_eq!(npa[0].1, "disb-L3", "attributes kept");
}

#[test]
fn dlq_rejects_invalid_aws_config() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({"enabled": true, "bucket": "underwrite-dev-data", "endpoint_url": "127.0.0.1:5000"}),
            "aws.endpoint_url",
        ),
        (json!({"enabled": true}), "aws.bucket"),
        (
            json!({"enabled": true, "bucket": "underwrite-dev-data", "region": "Mumbai"}),
            "aws.region",
        ),
    ];
    for (aws, key) in cases {
        std::fs::write(
            dir.path().join("underwrite.json"),
            json!({ "aws": aws }).to_string(),
        )
        .unwrap();
        let output = underwrite(dir.path(), &["dlq"]);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(text(&output).contains(key), "{key}: {}", text(&output));
    }
}

//! The Lambda driver over real services and a real SQLite file: a Lambda
//! SQS batch goes through the batch loop and the per-record processor, and
//! the answer lists only the records a retry can help.

use std::sync::Arc;

use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use underwrite_domain::{ClassificationPolicy, ProductCatalog};
use underwrite_events::parse_input_line;
use underwrite_lambda::routes::SUBSCRIPTIONS;
use underwrite_lambda::{BatchSettings, Function, handle_batch};
use underwrite_mechanism::{Mechanism, loan_key};
use underwrite_runtime::ports::Bus;
use underwrite_runtime::record::RecordSettings;
use underwrite_runtime::{Service, SqliteBus, SqliteStore, Store, SystemClock};
use underwrite_tests::{disbursal, repayment};

/// Builds each service with its default settings, in routing order.
fn services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(underwrite_consent::Consent),
        Arc::new(underwrite_fraud::Fraud::new(Default::default())),
        Arc::new(underwrite_risk::Risk::bundled()),
        Arc::new(underwrite_pricing::Pricing::new(Default::default())),
        Arc::new(underwrite_kfs::KfsService::new(Default::default())),
        Arc::new(Mechanism::new(ProductCatalog::default())),
        Arc::new(underwrite_fee::Fee::new(
            Default::default(),
            Default::default(),
            ProductCatalog::default(),
        )),
        Arc::new(underwrite_npa::Npa::new(
            ClassificationPolicy::default(),
            ProductCatalog::default(),
        )),
        Arc::new(underwrite_audit::Audit),
    ]
}

#[test]
fn routing_table_matches_services() {
    let from_services: Vec<(&str, Vec<&str>)> = services()
        .iter()
        .map(|s| (s.name(), s.subscriptions().to_vec()))
        .collect();
    let table: Vec<(&str, Vec<&str>)> = SUBSCRIPTIONS
        .iter()
        .map(|(name, types)| (*name, types.to_vec()))
        .collect();
    assert_eq!(table, from_services);
}

/// The mechanism function over a fresh SQLite file, as under
/// `UNDERWRITE_BACKEND=embedded`.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    bus: Arc<SqliteBus>,
    function: Function,
}

fn mechanism() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("underwrite.db")).unwrap());
    let bus = Arc::new(
        SqliteBus::new(store.clone(), underwrite_lambda::routes::routes()).with_owner("mechanism"),
    );
    let function = Function::new(
        Arc::new(Mechanism::new(ProductCatalog::default())),
        store.clone(),
        bus.clone(),
        Arc::new(SystemClock),
        None,
        RecordSettings::default(),
    );
    Fixture {
        _dir: dir,
        store,
        bus,
        function,
    }
}

fn body(line: &str) -> String {
    parse_input_line(line).unwrap().to_json()
}

/// Builds one SQS record as Lambda delivers it.
fn record(message_id: &str, body: &str, receive_count: u32) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("receipt-{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": receive_count.to_string(),
            "SentTimestamp": "1751241600000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1751241600015"
        },
        "messageAttributes": {
            "event_type": {"stringValue": "loan.disbursed", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
        },
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:ap-south-1:123456789012:underwrite-dev-mechanism",
        "awsRegion": "ap-south-1"
    })
}

async fn invoke(function: &Function, records: Vec<Value>) -> Vec<String> {
    let event = LambdaEvent::new(json!({ "Records": records }), Context::default());
    let (response, _) = handle_batch(function, &BatchSettings::default(), event)
        .await
        .expect("the batch is answered");
    response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

#[tokio::test]
async fn batch_reports_only_retryable_records() {
    let fixture = mechanism();
    let good = body(&disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2025-01-31",
        "2025-03-01",
    ));
    let early = body(&repayment(
        "P9",
        "L9",
        "1000.00",
        "2025-03-01",
        "2025-03-01",
    ));
    let failed = invoke(
        &fixture.function,
        vec![
            record("m-good", &good, 1),
            record("m-malformed", "{\"id\": \"x\", \"type\": ", 1),
            record("m-early", &early, 1),
        ],
    )
    .await;
    assert_eq!(
        failed,
        ["m-early"],
        "only the repayment before its disbursal is retried"
    );

    let loan = fixture.store.get(&loan_key("L1")).await.unwrap();
    assert_eq!(loan.expect("the disbursal is applied").version, 1);

    let dead = fixture.bus.dead_letters(Some("mechanism")).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "m-malformed");
    assert_eq!(dead[0].reason.error_code, "invalid_event");
    assert_eq!(dead[0].body, "{\"id\": \"x\", \"type\": ");
}

#[tokio::test]
async fn redelivery_applies_nothing_twice() {
    let fixture = mechanism();
    let good = body(&disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2025-01-31",
        "2025-03-01",
    ));
    let pay = body(&repayment(
        "P1",
        "L1",
        "8884.88",
        "2025-03-01",
        "2025-03-01",
    ));
    assert!(
        invoke(
            &fixture.function,
            vec![record("a", &good, 1), record("b", &pay, 1)]
        )
        .await
        .is_empty()
    );
    let after_first = fixture.store.get(&loan_key("L1")).await.unwrap().unwrap();
    // SQS delivers at least once: the same records again, in a new batch.
    assert!(
        invoke(
            &fixture.function,
            vec![record("b", &pay, 2), record("a", &good, 2)]
        )
        .await
        .is_empty()
    );
    let after_second = fixture.store.get(&loan_key("L1")).await.unwrap().unwrap();
    assert_eq!(after_first, after_second, "a duplicate changes no state");
}

#[tokio::test]
async fn last_receive_goes_to_dlq() {
    let fixture = mechanism();
    let early = body(&repayment(
        "P9",
        "L9",
        "1000.00",
        "2025-03-01",
        "2025-03-01",
    ));
    let last = RecordSettings::default().max_receive_count;
    let failed = invoke(&fixture.function, vec![record("m-early", &early, last)]).await;
    assert!(
        failed.is_empty(),
        "a dead-lettered record is not reported: {failed:?}"
    );
    let dead = fixture.bus.dead_letters(Some("mechanism")).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.error_kind, "retries_exhausted");
    assert_eq!(dead[0].reason.error_code, "loan_not_found");
    assert_eq!(dead[0].reason.receive_count, last);
}

#[test]
fn visibility_backoff_doubles_to_cap() {
    assert_eq!(Function::backoff_ms(1.0, 1), 1_000);
    assert_eq!(Function::backoff_ms(1.0, 3), 4_000);
    assert_eq!(Function::backoff_ms(0.5, 2), 1_000);
    assert_eq!(Function::backoff_ms(1.0, 10), 60_000);
}

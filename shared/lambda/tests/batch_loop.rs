//! The batch loop's rules on a Lambda SQS payload: only retryable failures
//! are reported, a panic fails its record only, no record starts near the
//! deadline, and a payload that is not an SQS event fails the invocation.
//!
//! The processor here acts on the body's text (`handle`, `dead`, `retry`,
//! `panic`) so that each rule of the loop is checked on its own; the
//! processor over real services is tested in `tests/tests/lambda.rs`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use underwrite_lambda::{
    BatchError, BatchSettings, Disposition, Record, RecordProcessor, handle_batch,
};

/// Acts on the body's text and remembers which records it started.
#[derive(Default)]
struct ByBody {
    started: Mutex<Vec<(String, u32)>>,
}

#[async_trait]
impl RecordProcessor for ByBody {
    async fn process(&self, record: &Record<'_>) -> Disposition {
        self.started
            .lock()
            .unwrap()
            .push((record.message_id.to_string(), record.receive_count));
        match record.body {
            "handle" => Disposition::Handled,
            "dead" => Disposition::DeadLettered {
                code: "invalid_event".into(),
            },
            "retry" => Disposition::Retry {
                code: "version_conflict".into(),
            },
            "panic" => panic!("handler bug"),
            other => panic!("unexpected body {other:?}"),
        }
    }
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/sqs-batch.json")).expect("fixture parses")
}

fn context_with_deadline(deadline_ms: u64) -> Context {
    let mut context = Context::default();
    context.request_id = "8476a536-e9f4-5d2f-b9c4-3a0e2f9c3e4b".into();
    context.deadline = deadline_ms;
    context
}

fn in_ms(from_now: Duration) -> u64 {
    (SystemTime::now() + from_now)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn reports_only_retryable_failures() {
    let processor = ByBody::default();
    let event = LambdaEvent::new(
        fixture(),
        context_with_deadline(in_ms(Duration::from_secs(30))),
    );
    let (response, summary) = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .expect("the batch is answered");
    let answer = serde_json::to_value(&response).unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [
            {"itemIdentifier": "9c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e03"},
            {"itemIdentifier": "2f3e4d5c-6b7a-4988-8776-655443322104"},
        ]})
    );
    assert_eq!(summary.handled, 1);
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(summary.retried, 2);
    assert_eq!(summary.unstarted, 0);
    let started = processor.started.lock().unwrap().clone();
    assert_eq!(started.len(), 4, "a panic stops no later record");
    assert_eq!(
        started[2].1, 3,
        "the receive count comes from the attributes"
    );
}

#[tokio::test]
async fn near_deadline_starts_nothing() {
    let processor = ByBody::default();
    let event = LambdaEvent::new(
        fixture(),
        context_with_deadline(in_ms(Duration::from_millis(500))),
    );
    let settings = BatchSettings {
        deadline_margin: Duration::from_secs(1),
    };
    let (response, summary) = handle_batch(&processor, &settings, event).await.unwrap();
    assert!(processor.started.lock().unwrap().is_empty());
    assert_eq!(summary.unstarted, 4);
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "0d4a9c51-6f4e-4cb1-9a47-1f5b7e0c2a01",
            "6b1e0f7a-2c83-4d5e-8f90-3a4b5c6d7e02",
            "9c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e03",
            "2f3e4d5c-6b7a-4988-8776-655443322104",
        ]
    );
}

/// A processor that takes 300 ms per record, so the deadline arrives after
/// the second record.
struct Slow(ByBody);

#[async_trait]
impl RecordProcessor for Slow {
    async fn process(&self, record: &Record<'_>) -> Disposition {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.process(record).await
    }
}

#[tokio::test]
async fn deadline_mid_batch_reports_the_rest() {
    let processor = Slow(ByBody::default());
    let event = LambdaEvent::new(
        fixture(),
        context_with_deadline(in_ms(Duration::from_millis(1_450))),
    );
    let settings = BatchSettings {
        deadline_margin: Duration::from_millis(1_000),
    };
    let (response, summary) = handle_batch(&processor, &settings, event).await.unwrap();
    let started = processor.0.started.lock().unwrap().len();
    assert_eq!(started, 2, "records 1 and 2 start before the margin");
    assert_eq!(summary.unstarted, 2);
    assert_eq!(response.batch_item_failures.len(), 2);
    assert_eq!(
        response.batch_item_failures[0].item_identifier,
        "9c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e03"
    );
}

#[tokio::test]
async fn no_deadline_in_context_runs_all() {
    let processor = ByBody::default();
    let event = LambdaEvent::new(fixture(), Context::default());
    let (_, summary) = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .unwrap();
    assert_eq!(summary.unstarted, 0);
    assert_eq!(processor.started.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn non_sqs_payload_fails_invocation() {
    let processor = ByBody::default();
    let event = LambdaEvent::new(
        json!({"detail-type": "Scheduled Event"}),
        Context::default(),
    );
    let error = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .unwrap_err();
    assert!(matches!(error, BatchError::NotAnSqsEvent(_)), "{error}");
    assert!(error.to_string().contains("Records"), "{error}");
}

#[tokio::test]
async fn failed_record_without_id_fails_batch() {
    let processor = ByBody::default();
    let mut payload = fixture();
    payload["Records"][2]
        .as_object_mut()
        .unwrap()
        .remove("messageId");
    let event = LambdaEvent::new(payload, Context::default());
    let error = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BatchError::UnidentifiedFailure { code } if code == "version_conflict"),
        "{error}"
    );
}

#[tokio::test]
async fn handled_record_without_id_is_fine() {
    let processor = ByBody::default();
    let payload = json!({"Records": [{"body": "handle", "eventSource": "aws:sqs"}]});
    let event = LambdaEvent::new(payload, Context::default());
    let (response, summary) = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary.handled, 1);
}

#[tokio::test]
async fn record_with_wrong_types_is_reported() {
    let processor = ByBody::default();
    let mut payload = fixture();
    payload["Records"][0]["body"] = json!(42);
    let event = LambdaEvent::new(payload, Context::default());
    let (response, summary) = handle_batch(&processor, &BatchSettings::default(), event)
        .await
        .unwrap();
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "0d4a9c51-6f4e-4cb1-9a47-1f5b7e0c2a01",
            "9c8d7e6f-5a4b-4c3d-9e2f-1a0b9c8d7e03",
            "2f3e4d5c-6b7a-4988-8776-655443322104",
        ],
        "SQS keeps the record of wrong shape, so its redrive policy dead-letters it intact"
    );
    assert_eq!(summary.retried, 3);
    assert_eq!(processor.started.lock().unwrap().len(), 3);
}

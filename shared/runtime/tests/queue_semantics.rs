//! The embedded runtime's delivery rules, with test services over a real
//! SQLite file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use serde_json::json;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_runtime::{
    Context, EmbeddedRuntime, HandlerError, Outcome, Progress, QueueSettings, RunOptions, Service,
    SqliteStore, StateWrite, Store,
};

/// Counts deliveries and behaves by payment id: `panic`, `permanent`,
/// `flaky` (fails twice, then succeeds), `conflict` (writes against a stale
/// version), anything else succeeds and records the payment.
struct Probe {
    calls: AtomicU32,
    flaky_failures: AtomicU32,
}

#[async_trait]
impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["repayment.received"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        _context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let payment = event.payload["payment_id"].as_str().unwrap().to_string();
        match payment.as_str() {
            "panic" => panic!("probe panicked on purpose"),
            "permanent" => Err(HandlerError::permanent(
                "rule_violation",
                "payment permanent breaks a rule",
            )),
            "flaky" if self.flaky_failures.fetch_add(1, Ordering::SeqCst) < 2 => Err(
                HandlerError::retryable("store_unavailable", "store briefly unavailable"),
            ),
            "conflict" => Ok(Outcome {
                writes: vec![StateWrite {
                    key: "probe/conflict".into(),
                    value: Some("1".into()),
                    expected: underwrite_runtime::Expected::Version(41),
                }],
                emits: vec![],
            }),
            _ => Ok(Outcome {
                writes: vec![StateWrite::put(
                    format!("probe/{payment}"),
                    &json!({"seen": true}),
                    &None,
                )],
                emits: vec![],
            }),
        }
    }
}

fn payment(id: &str) -> Envelope {
    let line = json!({"id": format!("event-{id}"), "type": "repayment.received", "occurred_at": "2024-03-01T12:00:00+05:30",
        "payload": {"loan_id": "L1", "payment_id": id, "amount": "1.00", "value_date": "2024-03-01"}});
    parse_input_line(&line.to_string()).unwrap()
}

fn setup(max_receive_count: u32) -> (tempfile::TempDir, Arc<Probe>, EmbeddedRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let probe = Arc::new(Probe {
        calls: AtomicU32::new(0),
        flaky_failures: AtomicU32::new(0),
    });
    let settings = QueueSettings {
        visibility_timeout_ms: 10,
        max_receive_count,
        batch_size: 10,
    };
    let runtime = EmbeddedRuntime::new(store, vec![probe.clone()], settings);
    (dir, probe, runtime)
}

async fn run(runtime: &EmbeddedRuntime) -> Progress {
    runtime
        .run(&RunOptions::default(), &mut |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn panic_fails_only_its_record() {
    let (_dir, _probe, runtime) = setup(2);
    runtime
        .publish(&[payment("a"), payment("panic"), payment("b")])
        .unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.handled, 2);
    assert_eq!(progress.dead_lettered, 1);
    let letter = &runtime.store().dead_letters(None).unwrap()[0];
    assert_eq!(letter.error_code, "panic");
    assert!(
        letter.error_message.contains("probe panicked on purpose"),
        "{}",
        letter.error_message
    );
    assert_eq!(letter.receive_count, 2);
}

#[tokio::test]
async fn permanent_error_skips_retries() {
    let (_dir, probe, runtime) = setup(5);
    runtime.publish(&[payment("permanent")]).unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.dead_lettered, 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    let letter = &runtime.store().dead_letters(None).unwrap()[0];
    assert_eq!(letter.error_kind, "permanent");
    assert_eq!(letter.error_message, "payment permanent breaks a rule");
    let store: &dyn Store = runtime.store().as_ref();
    assert!(
        store.scan("probe/", None, 10).await.unwrap().is_empty(),
        "a failed record changes no state"
    );
}

#[tokio::test]
async fn retryable_error_is_retried_after_visibility_timeout() {
    let (_dir, probe, runtime) = setup(5);
    runtime.publish(&[payment("flaky")]).unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.retried, 2);
    assert_eq!(progress.handled, 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_exhausted_moves_to_dlq_with_last_error() {
    let (_dir, _probe, runtime) = setup(2);
    runtime.publish(&[payment("conflict")]).unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.dead_lettered, 1);
    let letter = &runtime.store().dead_letters(None).unwrap()[0];
    assert_eq!(letter.error_kind, "retries_exhausted");
    assert_eq!(letter.error_code, "version_conflict");
    assert!(
        letter.error_message.contains("probe/conflict"),
        "{}",
        letter.error_message
    );
}

#[tokio::test]
async fn received_message_is_hidden_until_timeout() {
    let (_dir, _probe, runtime) = setup(5);
    runtime.publish(&[payment("a")]).unwrap();
    let settings = QueueSettings {
        visibility_timeout_ms: 200,
        max_receive_count: 5,
        batch_size: 10,
    };
    let first = runtime.store().receive("probe", &settings).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    assert!(
        runtime
            .store()
            .receive("probe", &settings)
            .unwrap()
            .is_empty(),
        "hidden while in flight"
    );
    assert_eq!(runtime.store().queue_depth("probe").unwrap(), (0, 1));
    std::thread::sleep(std::time::Duration::from_millis(250));
    let again = runtime.store().receive("probe", &settings).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
}

#[tokio::test]
async fn same_event_twice_is_handled_once() {
    let (_dir, probe, runtime) = setup(5);
    runtime.publish(&[payment("a"), payment("a")]).unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.handled, 1);
    assert_eq!(progress.duplicates, 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn migrations_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.applied_migrations().unwrap(), [1, 2, 3, 4, 5]);
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.migrate().unwrap(), Vec::<i64>::new());
    assert_eq!(store.applied_migrations().unwrap(), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn unknown_service_is_named() {
    let (_dir, _probe, runtime) = setup(5);
    let options = RunOptions {
        services: vec!["nope".into()],
        ..RunOptions::default()
    };
    let error = runtime
        .run(&options, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown service \"nope\": registered services are probe"),
        "{error}"
    );
}

#[tokio::test]
async fn commit_of_a_completed_event_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    let settings = QueueSettings::default();
    let body = payment("a").to_json();
    let write = |value: &str| StateWrite {
        key: "probe/a".into(),
        value: Some(value.into()),
        expected: underwrite_runtime::Expected::Any,
    };

    // A conflicting write rolls the whole record back, its idempotency
    // record included, so the event can still complete afterwards.
    store.send(&["probe"], "event-a", &body).unwrap();
    let first = store.receive("probe", &settings).unwrap().remove(0);
    let stale = StateWrite {
        key: "probe/a".into(),
        value: Some("0".into()),
        expected: underwrite_runtime::Expected::Version(7),
    };
    let error = store
        .commit("probe", &first, "event-a", &[stale], &[])
        .unwrap_err();
    assert!(error.to_string().contains("probe/a"), "{error}");
    assert!(!store.is_complete("probe", "event-a").unwrap());
    let committed = store
        .commit("probe", &first, "event-a", &[write("1")], &[])
        .unwrap();
    assert_eq!(
        committed,
        underwrite_runtime::sqlite::CommitResult::Committed
    );
    assert!(store.is_complete("probe", "event-a").unwrap());

    // The same event delivered again deletes its message and applies
    // neither its writes nor its outputs.
    store.send(&["probe"], "event-a", &body).unwrap();
    let again = store.receive("probe", &settings).unwrap().remove(0);
    let outputs = vec![(vec!["probe"], "event-b".to_string(), payment("b").to_json())];
    let duplicate = store
        .commit("probe", &again, "event-a", &[write("2")], &outputs)
        .unwrap();
    assert_eq!(
        duplicate,
        underwrite_runtime::sqlite::CommitResult::Duplicate
    );
    assert_eq!(store.queue_depth("probe").unwrap(), (0, 0));
    let stored = Store::get(&store, "probe/a").await.unwrap().unwrap();
    assert_eq!((stored.json.as_str(), stored.version), ("1", 1));
}

/// Runs `sql` on the store's own connection.
fn execute(runtime: &EmbeddedRuntime, sql: &str) {
    runtime
        .store()
        .transaction(|tx| {
            tx.execute_batch(sql)
                .map_err(|error| underwrite_runtime::StoreError::Unavailable(error.to_string()))
        })
        .unwrap();
}

#[tokio::test]
async fn failure_mid_commit_rolls_batch_back() {
    // A trigger fails the state write of payment `boom` after its
    // idempotency record went in, as a full disk would.
    let (_dir, probe, runtime) = setup(5);
    execute(
        &runtime,
        "CREATE TRIGGER boom BEFORE INSERT ON kv WHEN NEW.key = 'probe/boom'
         BEGIN SELECT RAISE(ABORT, 'write failed on purpose'); END;",
    );
    runtime
        .publish(&[payment("a"), payment("boom"), payment("b")])
        .unwrap();
    let service = runtime.services()[0].clone();
    let error = runtime
        .process_batch(service.as_ref(), &mut Progress::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("the batch was rolled back"), "{error}");

    // Nothing of the batch stays: no state, no idempotency record, and all
    // three messages wait in the queue with their receive counted.
    let store: &dyn Store = runtime.store().as_ref();
    assert!(store.scan("probe/", None, 10).await.unwrap().is_empty());
    let completed = runtime
        .store()
        .completed_among("probe", &["event-a", "event-boom", "event-b"])
        .unwrap();
    assert!(completed.is_empty(), "{completed:?}");
    let (visible, hidden) = runtime.store().queue_depth("probe").unwrap();
    assert_eq!(visible + hidden, 3);

    // With the fault gone, each payment is handled once.
    execute(&runtime, "DROP TRIGGER boom;");
    let progress = run(&runtime).await;
    assert_eq!(progress.handled, 3);
    assert_eq!(progress.dead_lettered, 0);
    assert_eq!(store.scan("probe/", None, 10).await.unwrap().len(), 3);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn conflict_in_batch_fails_only_its_record() {
    // The conflicting write is found before anything of its record is
    // written, so the records around it commit.
    let (_dir, _probe, runtime) = setup(1);
    runtime
        .publish(&[payment("a"), payment("conflict"), payment("b")])
        .unwrap();
    let progress = run(&runtime).await;
    assert_eq!(progress.handled, 2);
    assert_eq!(progress.dead_lettered, 1);
    let letter = &runtime.store().dead_letters(None).unwrap()[0];
    assert_eq!(letter.message_id, "event-conflict");
    let completed = runtime
        .store()
        .completed_among("probe", &["event-a", "event-conflict", "event-b"])
        .unwrap();
    let mut completed: Vec<_> = completed.into_iter().collect();
    completed.sort();
    assert_eq!(completed, ["event-a", "event-b"]);
}

//! Signed delivery: consumers verify every record before its handler runs,
//! and a record that fails verification goes to the dead-letter queue
//! without touching state. Real SQLite file, real key files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use serde_json::json;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_identity::{Authority, Identity, KeyDir, Policy};
use underwrite_runtime::{
    Context, EmbeddedRuntime, HandlerError, Outcome, QueueSettings, RunOptions, Service,
    SqliteStore, StateWrite, Store,
};

/// Records each payment it handles under `probe/<payment id>`.
struct Probe {
    calls: AtomicU32,
}

#[async_trait]
impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["repayment.received", "day.closed"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        _context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome {
            writes: vec![StateWrite::put(
                format!("probe/{}", event.id),
                &json!({"seen": true}),
                &None,
            )],
            emits: vec![],
        })
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    runtime: EmbeddedRuntime,
    probe: Arc<Probe>,
    authority: Arc<Authority>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("signing.db")).unwrap());
    let probe = Arc::new(Probe {
        calls: AtomicU32::new(0),
    });
    let policy = Policy::from_pairs([("input", &["repayment.received"][..]), ("probe", &[][..])]);
    let keys = KeyDir::new(dir.path().join("keys"));
    let authority = Arc::new(Authority::load(&keys, &["input", "probe"], true, &policy).unwrap());
    let runtime = EmbeddedRuntime::new(store, vec![probe.clone()], QueueSettings::default())
        .with_authority(authority.clone())
        .unwrap();
    Setup {
        _dir: dir,
        runtime,
        probe,
        authority,
    }
}

fn repayment(id: &str) -> Envelope {
    parse_input_line(
        &json!({"id": id, "type":"repayment.received","occurred_at":"2024-03-01T12:00:00+05:30",
            "payload":{"loan_id":"L1","payment_id":id,"amount":"5000.00","value_date":"2024-03-01"}})
        .to_string(),
    )
    .unwrap()
}

fn day_closed(id: &str) -> Envelope {
    parse_input_line(
        &json!({"id": id, "type":"day.closed","occurred_at":"2024-03-01T23:59:00+05:30",
            "payload":{"business_date":"2024-03-01"}})
        .to_string(),
    )
    .unwrap()
}

async fn run(setup: &Setup) {
    setup
        .runtime
        .run(&RunOptions::default(), &mut |_| {})
        .await
        .unwrap();
}

/// Publishes one event as it is, runs, and returns the dead letter's code
/// and message after checking that no state was written and the handler
/// never ran.
async fn rejected(setup: &Setup, event: Envelope) -> (String, String) {
    setup.runtime.publish(std::slice::from_ref(&event)).unwrap();
    run(setup).await;
    assert_eq!(setup.probe.calls.load(Ordering::SeqCst), 0);
    let store: &dyn Store = setup.runtime.store().as_ref();
    assert!(
        store
            .get(&format!("probe/{}", event.id))
            .await
            .unwrap()
            .is_none()
    );
    let letters = setup.runtime.store().dead_letters(None).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_kind, "permanent");
    assert_eq!(letters[0].receive_count, 1);
    assert_eq!(letters[0].body, event.to_json());
    (
        letters[0].error_code.clone(),
        letters[0].error_message.clone(),
    )
}

#[tokio::test]
async fn signed_input_is_handled() {
    let setup = setup();
    let mut events = vec![repayment("pay-1")];
    setup.runtime.sign_input(&mut events).unwrap();
    setup.runtime.publish(&events).unwrap();
    run(&setup).await;
    assert_eq!(setup.probe.calls.load(Ordering::SeqCst), 1);
    assert!(setup.runtime.store().dead_letters(None).unwrap().is_empty());
    let store: &dyn Store = setup.runtime.store().as_ref();
    assert!(store.get("probe/pay-1").await.unwrap().is_some());
}

#[tokio::test]
async fn forged_event_is_dead_lettered() {
    let setup = setup();
    let mut event = repayment("pay-forged");
    let stranger = Identity::generate("input").unwrap();
    stranger.sign(&mut event);
    let (code, message) = rejected(&setup, event).await;
    assert_eq!(code, "authz_unknown_key");
    assert!(message.contains("pay-forged"), "{message}");
    assert!(message.contains(stranger.key_id()), "{message}");
}

#[tokio::test]
async fn tampered_event_is_dead_lettered() {
    let setup = setup();
    let mut event = repayment("pay-tampered");
    setup.authority.sign("input", &mut event).unwrap();
    event.payload["amount"] = json!("50000.00");
    let key_id = event.key_id.clone().unwrap();
    let (code, message) = rejected(&setup, event).await;
    assert_eq!(code, "authz_bad_signature");
    assert!(message.contains("pay-tampered"), "{message}");
    assert!(message.contains(&key_id), "{message}");
}

#[tokio::test]
async fn unsigned_event_is_dead_lettered() {
    let setup = setup();
    let (code, message) = rejected(&setup, repayment("pay-unsigned")).await;
    assert_eq!(code, "authz_unsigned");
    assert!(message.contains("pay-unsigned"), "{message}");
    assert!(message.contains("underwrite run --input"), "{message}");
}

#[tokio::test]
async fn type_outside_policy_is_dead_lettered() {
    let setup = setup();
    let mut events = vec![day_closed("close-1")];
    setup.runtime.sign_input(&mut events).unwrap();
    let (code, message) = rejected(&setup, events.remove(0)).await;
    assert_eq!(code, "authz_policy");
    assert!(message.contains("close-1"), "{message}");
    assert!(message.contains("may not emit day.closed"), "{message}");
}

#[tokio::test]
async fn impersonated_source_is_dead_lettered() {
    let setup = setup();
    let mut event = repayment("pay-impersonated");
    setup.authority.sign("probe", &mut event).unwrap();
    let (code, message) = rejected(&setup, event).await;
    assert_eq!(code, "authz_policy");
    assert!(message.contains("source"), "{message}");
}

#[test]
fn runtime_requires_a_key_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("keys.db")).unwrap());
    let keys = KeyDir::new(dir.path().join("keys"));
    let authority = Arc::new(Authority::load(&keys, &["input"], true, &Policy::default()).unwrap());
    let probe = Arc::new(Probe {
        calls: AtomicU32::new(0),
    });
    let error = EmbeddedRuntime::new(store, vec![probe], QueueSettings::default())
        .with_authority(authority)
        .err()
        .unwrap();
    assert!(error.to_string().contains("identity \"probe\""), "{error}");
}

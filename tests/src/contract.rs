//! The adapter contract: one set of scenarios that every backend of the
//! runtime's ports must pass, run by `tests/tests/adapters.rs` against the
//! embedded SQLite adapters and the AWS adapters over the emulator.
//!
//! Each scenario takes a [`Backends`] whose queues are fresh: `ledger`
//! (subscribed to `day.closed`) and `sink` (subscribed to `sma.classified`),
//! with redrive after [`MAX_RECEIVES`] receives and a claim-check threshold
//! of [`CLAIM_CHECK_BYTES`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use underwrite_events::{Envelope, EventId, parse_input_line};
use underwrite_runtime::ports::{
    ATTR_CLAIM_CHECK, ATTR_EVENT_ID, ATTR_EVENT_TYPE, Bus, Claim, ClaimCheck, EffectStore,
    MAX_MESSAGE_BYTES, ObjectStore, Outbound, PortError, PutOutcome, Routes, SecretSource,
};
use underwrite_runtime::record::{Backend, Record, RecordOutcome, RecordSettings, process_record};
use underwrite_runtime::service::read_state;
use underwrite_runtime::{
    Context, Expected, HandlerError, Outcome, Service, StateWrite, StoreError, SystemClock,
};

/// Receives after which a message is redriven to its dead-letter queue.
pub const MAX_RECEIVES: u32 = 2;

/// The claim-check threshold the scenarios configure, in bytes.
pub const CLAIM_CHECK_BYTES: usize = 64 * 1024;

/// The name of a secret every backend is given before the scenarios run.
pub const SECRET_NAME: &str = "contract/api-token";

/// The text of that secret.
pub const SECRET_TEXT: &str = "token-for-the-contract-suite";

/// The subscribing queues of the scenarios.
pub fn routes() -> Routes {
    Routes::from_pairs([
        ("ledger", &["day.closed"][..]),
        ("sink", &["sma.classified"][..]),
    ])
}

/// One backend's ports, as the scenarios use them.
pub struct Backends {
    /// A name for assertion messages: `embedded` or `aws`.
    pub name: &'static str,
    /// State and idempotency records.
    pub effects: Arc<dyn EffectStore>,
    /// Queues `ledger` and `sink`.
    pub bus: Arc<dyn Bus>,
    /// Objects.
    pub objects: Arc<dyn ObjectStore>,
    /// Secrets, holding [`SECRET_NAME`].
    pub secrets: Arc<dyn SecretSource>,
    /// The shortest visibility timeout the backend supports, in ms (SQS
    /// counts whole seconds).
    pub visibility_ms: u64,
}

impl Backends {
    fn backend(&self) -> Backend<'_> {
        Backend {
            effects: self.effects.as_ref(),
            bus: self.bus.as_ref(),
            clock: &SystemClock,
            settings: RecordSettings {
                lease_ms: 30_000,
                max_receive_count: MAX_RECEIVES,
            },
        }
    }

    /// Receives until `queue` yields `count` messages or 10 s pass.
    pub async fn receive_n(
        &self,
        queue: &str,
        count: usize,
        visibility_ms: u64,
    ) -> Vec<underwrite_runtime::ports::Delivery> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < count && std::time::Instant::now() < deadline {
            let batch = self
                .bus
                .receive(queue, count - got.len(), visibility_ms)
                .await
                .expect("receive");
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            got.extend(batch);
        }
        got
    }
}

/// A unique suffix, so that scenarios sharing a store never share keys.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A `day.closed` event with `id` whose subject tells [`Ledger`] what to do:
/// `ok`, `permanent`, `retry`, `panic`, or `wide:<n>` (write n keys).
pub fn day_closed(id: &str, subject: &str) -> Envelope {
    let line = json!({
        "id": id,
        "type": "day.closed",
        "occurred_at": "2025-03-01T23:59:00+05:30",
        "payload": { "business_date": "2025-03-01" }
    })
    .to_string();
    let mut event = parse_input_line(&line).expect("valid day.closed");
    event.subject = subject.to_string();
    event
}

/// The test service: counts the events it handles under `ledger/count`,
/// marks each under `ledger/seen/<id>`, and emits one `sma.classified`.
pub struct Ledger;

#[async_trait]
impl Service for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["day.closed"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        match event.subject.as_str() {
            "permanent" => return Err(HandlerError::permanent("rule_broken", "bad event")),
            "retry" => return Err(HandlerError::retryable("not_yet", "try later")),
            "panic" => panic!("ledger handler panicked on purpose"),
            _ => {}
        }
        // A long subject (the claim-check scenario's) counts under one key.
        let counter = if event.subject.len() > 100 {
            "long"
        } else {
            event.subject.as_str()
        };
        let key = format!("ledger/{counter}/count");
        let (count, read) = read_state::<u64>(context.store, &key).await?;
        let mut writes = vec![
            StateWrite::put(&key, &(count.unwrap_or(0) + 1), &read),
            StateWrite::put(format!("ledger/seen/{}", event.id), &true, &None),
        ];
        if let Some(n) = event.subject.strip_prefix("wide:") {
            let n: usize = n.parse().expect("wide:<n>");
            for i in 0..n {
                writes.push(StateWrite::put_any(
                    format!("ledger/wide/{}/{i:04}", event.id),
                    &json!({ "i": i, "pad": "x".repeat(200) }),
                ));
            }
        }
        let mut output = event.clone();
        output.id = EventId::parse(&format!("{}.out", event.id)).expect("id");
        output.event_type = "sma.classified".into();
        output.source = "ledger".into();
        output.causation_id = Some(event.id.clone());
        Ok(Outcome {
            writes,
            emits: vec![output],
        })
    }
}

fn attributes_of(event: &Envelope) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ATTR_EVENT_ID.to_string(), event.id.to_string()),
        (ATTR_EVENT_TYPE.to_string(), event.event_type.clone()),
    ])
}

async fn process(backends: &Backends, event: &Envelope, receive_count: u32) -> RecordOutcome {
    let body = event.to_json();
    let attributes = attributes_of(event);
    process_record(
        &Ledger,
        &backends.backend(),
        None,
        &Record {
            message_id: event.id.as_str(),
            body: &body,
            attributes: &attributes,
            receive_count,
        },
    )
    .await
}

async fn claim(backends: &Backends, event_id: &str, now: i64, lease_ms: u64) -> Claim {
    backends
        .effects
        .claim("ledger", event_id, now, lease_ms)
        .await
        .expect("claim")
}

async fn lease(backends: &Backends) -> underwrite_runtime::ports::Lease {
    match claim(backends, &unique("evt"), now(), 30_000).await {
        Claim::Acquired(lease) => lease,
        other => panic!("a fresh event claims a lease, got {other:?}"),
    }
}

fn now() -> i64 {
    underwrite_runtime::sqlite::now_ms()
}

/// Idempotency: a fresh claim takes a lease; a second claim finds it in
/// progress; after it expires (by the record's own timestamps) another
/// consumer takes it over and the first can no longer commit; the completed
/// record returns its outputs.
pub async fn idempotency(backends: &Backends) {
    let name = backends.name;
    let event_id = unique("idem");
    let start = now();
    let Claim::Acquired(first) = claim(backends, &event_id, start, 1_000).await else {
        panic!("{name}: the first claim takes the lease");
    };
    assert_eq!(first.expires_ms, start + 1_000);
    match claim(backends, &event_id, start + 500, 1_000).await {
        Claim::InProgress { expires_ms } => assert_eq!(expires_ms, start + 1_000, "{name}"),
        other => panic!("{name}: a held lease is in progress, got {other:?}"),
    }
    let Claim::Acquired(second) = claim(backends, &event_id, start + 1_001, 1_000).await else {
        panic!("{name}: an expired lease is taken over");
    };
    assert_ne!(first.token, second.token);
    let key = format!("ledger/{event_id}/idem");
    let write = [StateWrite::put(&key, &1, &None)];
    let stale = backends
        .effects
        .commit(&first, &write, &["{}".to_string()], start + 1_100)
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{name}: the expired lease cannot commit: {stale:?}"
    );
    assert!(
        backends.effects.get(&key).await.unwrap().is_none(),
        "{name}"
    );
    // Releasing a lease that was taken over leaves the new holder's alone.
    backends.effects.release(&first).await.unwrap();
    let outputs = vec![
        json!({"id": "o1", "type": "sma.classified"}).to_string(),
        json!({"id": "o2", "type": "sma.classified"}).to_string(),
    ];
    backends
        .effects
        .commit(&second, &write, &outputs, start + 1_200)
        .await
        .expect("the holder commits");
    assert_eq!(
        backends.effects.get(&key).await.unwrap().unwrap().version,
        1
    );
    match claim(backends, &event_id, start + 99_999_999, 1_000).await {
        Claim::Complete { outputs: stored } => assert_eq!(stored, outputs, "{name}"),
        other => panic!("{name}: a completed event stays complete, got {other:?}"),
    }
    // A released lease can be claimed again at once.
    let other = unique("idem");
    let Claim::Acquired(held) = claim(backends, &other, start, 60_000).await else {
        panic!("{name}: fresh claim");
    };
    backends.effects.release(&held).await.unwrap();
    assert!(
        matches!(
            claim(backends, &other, start + 1, 60_000).await,
            Claim::Acquired(_)
        ),
        "{name}: a released lease is free"
    );
}

/// Conditional writes and versions: absent, match, conflict, delete; a
/// conflict applies none of the commit's writes; scans page in key order.
pub async fn conditional_writes(backends: &Backends) {
    let name = backends.name;
    let store = backends.effects.as_ref();
    let base = format!("ledger/{}", unique("cw"));
    let key = format!("{base}/a");
    let commit = |writes: Vec<StateWrite>| async move {
        let lease = lease(backends).await;
        store.commit(&lease, &writes, &[], now()).await
    };
    let put = |expected: Expected, value: u32| StateWrite {
        key: key.clone(),
        value: Some(value.to_string()),
        expected,
    };
    commit(vec![put(Expected::Absent, 1)])
        .await
        .expect("absent");
    let read = store.get(&key).await.unwrap().unwrap();
    assert_eq!((read.json.as_str(), read.version), ("1", 1), "{name}");
    let conflict = commit(vec![put(Expected::Absent, 2)]).await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{name}: {conflict:?}"
    );
    commit(vec![put(Expected::Version(1), 2)])
        .await
        .expect("match");
    assert_eq!(store.get(&key).await.unwrap().unwrap().version, 2, "{name}");
    let stale = commit(vec![put(Expected::Version(1), 3)]).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{name}");
    // One failing condition fails the whole commit.
    let other = format!("{base}/b");
    let mixed = commit(vec![
        StateWrite::put(&other, &9, &None),
        put(Expected::Version(7), 4),
    ])
    .await;
    assert!(matches!(mixed, Err(StoreError::Conflict { .. })), "{name}");
    assert!(
        store.get(&other).await.unwrap().is_none(),
        "{name}: nothing applied"
    );
    commit(vec![StateWrite {
        key: key.clone(),
        value: None,
        expected: Expected::Version(2),
    }])
    .await
    .expect("delete");
    assert!(store.get(&key).await.unwrap().is_none(), "{name}: deleted");
    commit(vec![put(Expected::Any, 5)]).await.expect("any");
    assert_eq!(store.get(&key).await.unwrap().unwrap().version, 1, "{name}");
    // Scans: prefix, order, paging.
    let scan_base = format!("{base}/scan/");
    let writes = (0..7)
        .map(|i| StateWrite::put(format!("{scan_base}{i:02}"), &i, &None))
        .collect();
    commit(writes).await.expect("scan keys");
    let first = store.scan(&scan_base, None, 3).await.unwrap();
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{scan_base}00"),
            format!("{scan_base}01"),
            format!("{scan_base}02")
        ],
        "{name}"
    );
    let rest = store.scan(&scan_base, Some(keys[2]), 100).await.unwrap();
    assert_eq!(rest.len(), 4, "{name}");
    assert_eq!(rest[0].0, format!("{scan_base}03"), "{name}");
}

/// A commit of more writes than one DynamoDB transaction holds is still
/// all or nothing, and completes the record once.
pub async fn wide_commit(backends: &Backends) {
    let name = backends.name;
    let store = backends.effects.as_ref();
    let base = format!("ledger/{}", unique("wide"));
    let writes: Vec<StateWrite> = (0..250)
        .map(|i| StateWrite::put(format!("{base}/{i:04}"), &json!({"i": i}), &None))
        .collect();
    // A conflict on a late key applies none of the earlier ones.
    let blocker = format!("{base}/0240");
    let lease0 = lease(backends).await;
    store
        .commit(&lease0, &[StateWrite::put(&blocker, &0, &None)], &[], now())
        .await
        .unwrap();
    let lease1 = lease(backends).await;
    let failed = store.commit(&lease1, &writes, &[], now()).await;
    assert!(
        matches!(failed, Err(StoreError::Conflict { .. })),
        "{name}: {failed:?}"
    );
    let seen = store.scan(&format!("{base}/"), None, 1000).await.unwrap();
    assert_eq!(seen.len(), 1, "{name}: only the blocker exists");
    // Keys the failed commit touched take ordinary writes at once.
    let lease2 = lease(backends).await;
    store
        .commit(
            &lease2,
            &[StateWrite::put(format!("{base}/0001"), &1, &None)],
            &[],
            now(),
        )
        .await
        .expect("no key stays locked");
    // Without the conflict, every write lands with the record.
    let writes: Vec<StateWrite> = (0..250)
        .map(|i| {
            StateWrite::put_any(
                format!("{base}/{i:04}"),
                &json!({"i": i, "pad": "y".repeat(300)}),
            )
        })
        .collect();
    let outputs: Vec<String> = (0..30)
        .map(|i| {
            json!({"id": format!("w{i}"), "type": "sma.classified", "pad": "z".repeat(20_000)})
                .to_string()
        })
        .collect();
    let lease3 = lease(backends).await;
    store
        .commit(&lease3, &writes, &outputs, now())
        .await
        .expect("wide commit");
    let seen = store.scan(&format!("{base}/"), None, 1000).await.unwrap();
    assert_eq!(seen.len(), 250, "{name}");
    match claim(backends, &lease3.event_id, now(), 1_000).await {
        Claim::Complete { outputs: stored } => assert_eq!(stored, outputs, "{name}"),
        other => panic!("{name}: wide commit completes the record, got {other:?}"),
    }
}

/// Queue semantics: batches, visibility, receive counts, and redrive to the
/// dead-letter queue on the receive after the last allowed one.
pub async fn queue_semantics(backends: &Backends) {
    let name = backends.name;
    let bus = backends.bus.as_ref();
    let visibility = backends.visibility_ms;
    for i in 0..3 {
        let event = day_closed(&unique(&format!("q{i}")), "ok");
        bus.send("ledger", &event.to_json(), &attributes_of(&event))
            .await
            .unwrap();
    }
    let first = backends.receive_n("ledger", 2, visibility).await;
    assert_eq!(first.len(), 2, "{name}: a batch of at most 2");
    let second = backends.receive_n("ledger", 1, visibility).await;
    assert_eq!(second.len(), 1, "{name}");
    assert!(
        bus.receive("ledger", 10, visibility)
            .await
            .unwrap()
            .is_empty(),
        "{name}: received messages are hidden"
    );
    for delivery in first.iter().chain(&second) {
        assert_eq!(delivery.receive_count, 1, "{name}");
        assert!(delivery.attributes.contains_key(ATTR_EVENT_ID), "{name}");
        assert_eq!(delivery.attributes[ATTR_EVENT_TYPE], "day.closed", "{name}");
    }
    // Delete two; the third comes back after the visibility timeout.
    for delivery in first.iter() {
        bus.delete("ledger", &delivery.receipt).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(visibility + 200)).await;
    let again = backends.receive_n("ledger", 1, visibility).await;
    assert_eq!(again.len(), 1, "{name}");
    assert_eq!(again[0].body, second[0].body, "{name}");
    assert_eq!(again[0].receive_count, 2, "{name}: the receive count grows");
    // MAX_RECEIVES receives are used up: the next receive redrives it.
    tokio::time::sleep(Duration::from_millis(visibility + 200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        assert!(
            bus.receive("ledger", 10, visibility)
                .await
                .unwrap()
                .is_empty(),
            "{name}: a message past its receives is not delivered"
        );
        let letters = bus.dead_letters(Some("ledger")).await.unwrap();
        if !letters.is_empty() || std::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 1, "{name}: redriven to the DLQ");
    assert_eq!(letters[0].body, second[0].body, "{name}");
    assert_eq!(letters[0].reason.error_kind, "retries_exhausted", "{name}");
    assert_eq!(letters[0].reason.error_code, "max_receives", "{name}");
    assert_eq!(letters[0].queue, "ledger", "{name}");
    // Retry-after: a message hidden again comes back after the delay.
    let event = day_closed(&unique("ra"), "ok");
    bus.send("sink", &event.to_json(), &attributes_of(&event))
        .await
        .unwrap();
    let got = backends.receive_n("sink", 1, 60_000).await;
    bus.retry_after("sink", &got[0].receipt, 0).await.unwrap();
    let back = backends.receive_n("sink", 1, 60_000).await;
    assert_eq!(back.len(), 1, "{name}: visible again after retry_after(0)");
    bus.delete("sink", &back[0].receipt).await.unwrap();
    bus.replay(Some("ledger"), None).await.unwrap();
    drain(backends, "ledger").await;
}

/// Receives and deletes everything visible in `queue`.
pub async fn drain(backends: &Backends, queue: &str) -> Vec<underwrite_runtime::ports::Delivery> {
    let mut all = Vec::new();
    loop {
        let batch = backends.bus.receive(queue, 10, 60_000).await.unwrap();
        if batch.is_empty() {
            return all;
        }
        for delivery in &batch {
            backends.bus.delete(queue, &delivery.receipt).await.unwrap();
        }
        all.extend(batch);
    }
}

/// The record processor over the ports: handled, duplicate (outputs
/// published again), retry, retries exhausted, permanent, panic.
pub async fn record_processing(backends: &Backends) {
    let name = backends.name;
    drain(backends, "sink").await;
    let subject = unique("ok");
    let event = day_closed(&unique("rp"), &subject);
    let outcome = process(backends, &event, 1).await;
    assert!(
        matches!(&outcome, RecordOutcome::Done { outputs } if outputs.len() == 1),
        "{name}: {outcome:?}"
    );
    let key = format!("ledger/{subject}/count");
    assert_eq!(backends.effects.get(&key).await.unwrap().unwrap().json, "1");
    let published = drain(backends, "sink").await;
    assert_eq!(published.len(), 1, "{name}");
    let output: serde_json::Value = serde_json::from_str(&published[0].body).expect("output");
    assert_eq!(output["id"], format!("{}.out", event.id), "{name}");
    // A duplicate applies nothing and publishes the same output again.
    let outcome = process(backends, &event, 2).await;
    assert!(
        matches!(&outcome, RecordOutcome::Duplicate { outputs } if outputs.len() == 1),
        "{name}: {outcome:?}"
    );
    assert_eq!(backends.effects.get(&key).await.unwrap().unwrap().json, "1");
    let again = drain(backends, "sink").await;
    assert_eq!(again.len(), 1, "{name}");
    assert_eq!(again[0].body, published[0].body, "{name}");
    // Retryable: retried until the last receive, then dead-lettered.
    let retry = day_closed(&unique("rp"), "retry");
    let outcome = process(backends, &retry, 1).await;
    assert!(
        matches!(&outcome, RecordOutcome::Retry(e) if e.code() == "not_yet"),
        "{name}"
    );
    assert!(!outcome.acknowledges());
    let outcome = process(backends, &retry, MAX_RECEIVES).await;
    assert!(
        matches!(outcome, RecordOutcome::DeadLettered(_)),
        "{name}: {outcome:?}"
    );
    assert!(outcome.acknowledges());
    // The lease of a failed attempt was released: a retry claims at once.
    assert!(matches!(
        claim(backends, retry.id.as_str(), now(), 1_000).await,
        Claim::Acquired(_)
    ));
    // Permanent: dead-lettered on the first receive with its reason.
    let permanent = day_closed(&unique("rp"), "permanent");
    let outcome = process(backends, &permanent, 1).await;
    assert!(
        matches!(outcome, RecordOutcome::DeadLettered(_)),
        "{name}: {outcome:?}"
    );
    // A panic fails the record only.
    let panicking = day_closed(&unique("rp"), "panic");
    let outcome = process(backends, &panicking, 1).await;
    assert!(
        matches!(&outcome, RecordOutcome::Retry(e) if e.code() == "panic"),
        "{name}"
    );
    // Invalid JSON: permanent at once.
    let attributes = BTreeMap::new();
    let outcome = process_record(
        &Ledger,
        &backends.backend(),
        None,
        &Record {
            message_id: "not-json",
            body: "{not json",
            attributes: &attributes,
            receive_count: 1,
        },
    )
    .await;
    assert!(
        matches!(&outcome, RecordOutcome::DeadLettered(e) if e.code() == "invalid_event"),
        "{name}"
    );
    let letters = backends.bus.dead_letters(Some("ledger")).await.unwrap();
    let find = |id: &str| {
        letters
            .iter()
            .find(|l| l.message_id == id)
            .unwrap_or_else(|| panic!("{name}: dead letter {id} in {letters:?}"))
    };
    let exhausted = find(retry.id.as_str());
    assert_eq!(exhausted.reason.error_kind, "retries_exhausted");
    assert_eq!(exhausted.reason.error_code, "not_yet");
    assert_eq!(exhausted.reason.receive_count, MAX_RECEIVES);
    assert_eq!(exhausted.body, retry.to_json(), "{name}: body kept");
    assert_eq!(
        exhausted.attributes,
        attributes_of(&retry),
        "{name}: attributes kept"
    );
    let rejected = find(permanent.id.as_str());
    assert_eq!(rejected.reason.error_kind, "permanent");
    assert_eq!(rejected.reason.error_code, "rule_broken");
    assert_eq!(rejected.reason.error_message, "bad event");
    assert_eq!(find("not-json").body, "{not json");
    backends.bus.replay(Some("ledger"), None).await.unwrap();
    drain(backends, "ledger").await;
}

/// Dead letters list with their reasons and replay to the source queue with
/// body and attributes, all or at most N.
pub async fn dead_letter_replay(backends: &Backends) {
    let name = backends.name;
    let bus = backends.bus.as_ref();
    bus.replay(None, None).await.unwrap();
    drain(backends, "ledger").await;
    drain(backends, "sink").await;
    let events: Vec<Envelope> = (0..3)
        .map(|i| day_closed(&unique(&format!("dl{i}")), "ok"))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let reason = underwrite_runtime::ports::DeadLetterReason {
            error_kind: "permanent".into(),
            error_code: format!("code_{i}"),
            error_message: format!("reason number {i}"),
            receive_count: 1,
        };
        bus.dead_letter(
            "ledger",
            event.id.as_str(),
            &event.to_json(),
            &attributes_of(event),
            &reason,
        )
        .await
        .unwrap();
    }
    let letters = bus.dead_letters(Some("ledger")).await.unwrap();
    assert_eq!(letters.len(), 3, "{name}: {letters:?}");
    let mut codes: Vec<&str> = letters
        .iter()
        .map(|l| l.reason.error_code.as_str())
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, ["code_0", "code_1", "code_2"], "{name}");
    assert!(
        bus.dead_letters(Some("sink")).await.unwrap().is_empty(),
        "{name}"
    );
    let all = bus.dead_letters(None).await.unwrap();
    assert_eq!(all.len(), 3, "{name}");
    // --max 1 moves one.
    let replayed = bus.replay(Some("ledger"), Some(1)).await.unwrap();
    assert_eq!(replayed.moved, 1, "{name}");
    assert_eq!(
        bus.dead_letters(Some("ledger")).await.unwrap().len(),
        2,
        "{name}"
    );
    let moved = drain(backends, "ledger").await;
    assert_eq!(moved.len(), 1, "{name}");
    let original = events
        .iter()
        .find(|e| e.to_json() == moved[0].body)
        .unwrap_or_else(|| panic!("{name}: the replayed body is an original one"));
    assert_eq!(
        moved[0].attributes[ATTR_EVENT_ID],
        original.id.as_str(),
        "{name}"
    );
    assert_eq!(moved[0].attributes[ATTR_EVENT_TYPE], "day.closed", "{name}");
    // All: the rest.
    let replayed = bus.replay(None, None).await.unwrap();
    assert_eq!(replayed.moved, 2, "{name}");
    assert!(bus.dead_letters(None).await.unwrap().is_empty(), "{name}");
    let moved = drain(backends, "ledger").await;
    assert_eq!(moved.len(), 2, "{name}");
}

/// A body above the threshold travels as a reference and resolves back;
/// the processor handles it like any other.
pub async fn claim_check(backends: &Backends) {
    let name = backends.name;
    drain(backends, "ledger").await;
    let event = day_closed(&unique("big"), &"b".repeat(CLAIM_CHECK_BYTES + 10));
    let body = event.to_json();
    assert!(body.len() > CLAIM_CHECK_BYTES);
    backends
        .bus
        .publish(&[Outbound::from_event(&event)])
        .await
        .unwrap();
    let got = backends.receive_n("ledger", 1, 60_000).await;
    assert_eq!(got.len(), 1, "{name}");
    let reference = ClaimCheck::parse(&got[0].body).unwrap_or_else(|| {
        panic!(
            "{name}: a reference travels, got {} bytes",
            got[0].body.len()
        )
    });
    assert_eq!(reference.id, event.id.as_str());
    assert!(got[0].attributes.contains_key(ATTR_CLAIM_CHECK), "{name}");
    assert_eq!(
        backends.bus.resolve(&got[0].body).await.unwrap(),
        body,
        "{name}"
    );
    let outcome = process_record(
        &Ledger,
        &backends.backend(),
        None,
        &Record {
            message_id: &got[0].message_id,
            body: &got[0].body,
            attributes: &got[0].attributes,
            receive_count: 1,
        },
    )
    .await;
    assert!(
        matches!(&outcome, RecordOutcome::Done { outputs } if outputs.len() == 1),
        "{name}: the processor resolves the reference: {outcome:?}"
    );
    backends
        .bus
        .delete("ledger", &got[0].receipt)
        .await
        .unwrap();
    drain(backends, "sink").await;
    backends.bus.replay(None, None).await.unwrap();
    drain(backends, "ledger").await;
}

/// Objects are written once: a second put leaves the first.
pub async fn objects(backends: &Backends) {
    let name = backends.name;
    let key = format!("audit/{}.json", unique("obj"));
    let objects = backends.objects.as_ref();
    assert_eq!(objects.get(&key).await.unwrap(), None, "{name}");
    assert_eq!(
        objects.put_if_absent(&key, b"first").await.unwrap(),
        PutOutcome::Created,
        "{name}"
    );
    assert_eq!(
        objects.put_if_absent(&key, b"second").await.unwrap(),
        PutOutcome::AlreadyExists,
        "{name}"
    );
    assert_eq!(
        objects.get(&key).await.unwrap().as_deref(),
        Some(&b"first"[..]),
        "{name}"
    );
}

/// Secrets: a present one reads, a missing one names itself and the fix.
pub async fn secrets(backends: &Backends) {
    let name = backends.name;
    assert_eq!(
        backends.secrets.secret(SECRET_NAME).await.unwrap(),
        SECRET_TEXT,
        "{name}"
    );
    let missing = backends.secrets.secret("contract/no-such-secret").await;
    match missing {
        Err(error @ PortError::MissingSecret { .. }) => {
            let text = error.to_string();
            assert!(text.contains("contract/no-such-secret"), "{name}: {text}");
            assert!(!error.is_retryable(), "{name}");
        }
        other => panic!("{name}: a missing secret is MissingSecret, got {other:?}"),
    }
}

/// Bad input gets clear, permanent errors: a message above 1 MiB and an
/// unknown queue.
pub async fn bad_input(backends: &Backends) {
    let name = backends.name;
    let huge = "h".repeat(MAX_MESSAGE_BYTES + 1);
    match backends.bus.send("ledger", &huge, &BTreeMap::new()).await {
        Err(error @ PortError::TooLarge { .. }) => {
            assert!(!error.is_retryable(), "{name}");
            assert!(error.to_string().contains("1048576"), "{name}: {error}");
        }
        other => panic!("{name}: an oversized message is TooLarge, got {other:?}"),
    }
    for result in [
        backends
            .bus
            .send("nowhere", "{}", &BTreeMap::new())
            .await
            .err(),
        backends.bus.receive("nowhere", 1, 1_000).await.err(),
        backends.bus.dead_letters(Some("nowhere")).await.err(),
    ] {
        match result {
            Some(error @ PortError::UnknownQueue { .. }) => {
                let text = error.to_string();
                assert!(
                    text.contains("nowhere") && text.contains("ledger"),
                    "{name}: {text}"
                );
            }
            other => panic!("{name}: an unknown queue is UnknownQueue, got {other:?}"),
        }
    }
}

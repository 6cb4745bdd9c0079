//! `underwrite saga` as a user runs it: listing and showing sagas that the
//! runner left in a store, writing and checking the state machine, linting
//! a broken one, and replaying an empty store.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{text, underwrite};
use serde_json::json;
use underwrite_consent::Consent;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_runtime::{EmbeddedRuntime, QueueSettings, Service, SqliteStore};
use underwrite_saga::{SagaDefinition, SagaRunner, Source, origination};

fn input(value: serde_json::Value) -> Envelope {
    parse_input_line(&value.to_string()).unwrap()
}

fn application(application: &str, borrower: &str) -> Envelope {
    input(json!({
        "id": format!("app-{application}"), "type": "application.received",
        "occurred_at": "2024-06-07T10:00:00+05:30",
        "payload": {
            "application_id": application, "borrower_id": borrower, "product": "personal",
            "amount": "20000.00", "tenor_months": 24, "rate_type": "floating",
            "borrower_type": "individual", "purpose": "non_business",
            "applied_on": "2024-06-07", "first_due_date": "2024-07-05",
            "pan": "ABCPE1234F", "applicant_name": "Asha Verma", "date_of_birth": "1990-05-20",
            "phone": "+919876543210", "declared_monthly_income": "60000.00",
        }
    }))
}

fn consent(principal: &str) -> Envelope {
    input(json!({
        "id": format!("grant-{principal}"), "type": "consent.granted",
        "occurred_at": "2024-06-01T09:00:00+05:30",
        "payload": {
            "consent_id": format!("C-{principal}"), "principal_id": principal,
            "purposes": ["credit_assessment"], "data_items": ["pan"],
            "notice_version": "2025-11", "notice_language": "en",
            "given_on": "2024-06-01", "expires_on": "2025-05-31",
        }
    }))
}

/// The consent step alone, then pricing waiting for the lender's
/// scorecard: enough to leave one saga rolled back and one started.
fn consent_then_pricing() -> SagaDefinition {
    let full = origination();
    let mut steps: Vec<_> = full.steps[..1].to_vec();
    let mut pricing = *full.step("pricing").unwrap();
    pricing.source = Source::Signal {
        event_type: "risk.scored",
    };
    pricing.compensation = None;
    steps.push(pricing);
    SagaDefinition { steps, ..full }
}

/// Leaves APP1 rolled back (B1 withdrew consent before applying) and APP2
/// started, waiting for its score.
async fn store_with_sagas(db: &Path) {
    let store = Arc::new(SqliteStore::open(db).unwrap());
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(Consent),
        Arc::new(underwrite_pricing::Pricing::new(Default::default())),
    ];
    let settings = QueueSettings {
        visibility_timeout_ms: 10,
        max_receive_count: 2,
        batch_size: 10,
    };
    let runtime = EmbeddedRuntime::new(store, services, settings);
    let definition = consent_then_pricing();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    runtime.publish(&[consent("B2")]).unwrap();
    let withdrawal = input(json!({
        "id": "withdraw-B1", "type": "consent.withdrawn",
        "occurred_at": "2024-06-02T09:00:00+05:30",
        "payload": { "consent_id": "C-B1", "principal_id": "B1", "withdrawn_on": "2024-06-02" }
    }));
    runtime.publish(&[consent("B1"), withdrawal]).unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    runner.start(&application("APP1", "B1")).unwrap();
    runner.start(&application("APP2", "B2")).unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();
}

#[tokio::test]
async fn list_and_show_sagas() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("underwrite.db");
    store_with_sagas(&db).await;
    let db_arg = db.to_str().unwrap();

    let listed = underwrite(dir.path(), &["--db", db_arg, "saga", "list"]);
    let listing = text(&listed);
    assert!(listed.status.success(), "{listing}");
    assert!(
        listing.contains("APP1") && listing.contains("rolled_back"),
        "{listing}"
    );
    assert!(listing.contains("consent: consent_withdrawn"), "{listing}");
    assert!(
        listing.contains("2 sagas: 1 started, 1 rolled_back"),
        "{listing}"
    );

    let only = underwrite(
        dir.path(),
        &["--db", db_arg, "saga", "list", "--status", "started"],
    );
    let only_text = text(&only);
    assert!(only_text.contains("APP2"), "{only_text}");
    assert!(!only_text.contains("APP1"), "{only_text}");

    let shown = underwrite(dir.path(), &["--db", db_arg, "saga", "show", "APP1"]);
    let shown_text = text(&shown);
    assert!(shown.status.success(), "{shown_text}");
    assert!(
        shown_text.contains("Saga APP1 (origination): rolled_back"),
        "{shown_text}"
    );
    assert!(
        shown_text.contains("Failed at consent: consent_withdrawn"),
        "{shown_text}"
    );

    let summary = text(&underwrite(
        dir.path(),
        &["--db", db_arg, "saga", "summary"],
    ));
    for expected in [
        "applications                                   2",
        "  at consent: consent_withdrawn                1",
        "  waiting for the borrower or a signal         1",
    ] {
        assert!(summary.contains(expected), "{expected}\n{summary}");
    }

    let waiting = text(&underwrite(
        dir.path(),
        &["--db", db_arg, "saga", "show", "APP2"],
    ));
    assert!(waiting.contains("pricing"), "{waiting}");
    assert!(waiting.contains("waiting"), "{waiting}");
}

#[test]
fn unknown_saga_and_status_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = underwrite(dir.path(), &["saga", "show", "APP9"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("saga APP9 not found; `underwrite saga list`"),
        "{}",
        text(&missing)
    );
    let bad_status = underwrite(dir.path(), &["saga", "list", "--status", "done"]);
    assert_eq!(bad_status.status.code(), Some(2));
    assert!(
        text(&bad_status).contains(
            "unknown saga status \"done\": use one of started, completed, compensating, rolled_back"
        ),
        "{}",
        text(&bad_status)
    );
}

#[test]
fn asl_written_checked_and_linted() {
    let dir = tempfile::tempdir().unwrap();
    let written = underwrite(dir.path(), &["saga", "asl", "--out", "sm/origination.json"]);
    assert!(written.status.success(), "{}", text(&written));
    assert!(
        text(&written).contains("it passes the lint"),
        "{}",
        text(&written)
    );
    let path = dir.path().join("sm/origination.json");
    let checked = underwrite(
        dir.path(),
        &["saga", "asl", "--check", "--out", "sm/origination.json"],
    );
    assert!(checked.status.success(), "{}", text(&checked));
    let linted = underwrite(dir.path(), &["saga", "lint", "sm/origination.json"]);
    assert!(linted.status.success(), "{}", text(&linted));

    // A copy without the pricing step's Retry differs and fails the lint.
    let mut document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    document["States"]["pricing"]
        .as_object_mut()
        .unwrap()
        .remove("Retry");
    std::fs::write(&path, document.to_string()).unwrap();
    let stale = underwrite(
        dir.path(),
        &["saga", "asl", "--check", "--out", "sm/origination.json"],
    );
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        text(&stale).contains("run `underwrite saga asl` to regenerate it"),
        "{}",
        text(&stale)
    );
    let broken = underwrite(dir.path(), &["saga", "lint", "sm/origination.json"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        text(&broken).contains("pricing [missing_retry]"),
        "{}",
        text(&broken)
    );
}

#[test]
fn replay_runs_every_step_of_origination() {
    // Every service of the origination saga, sanction and disbursal
    // included, is registered, so replay on an empty store has nothing to
    // resume and succeeds.
    let dir = tempfile::tempdir().unwrap();
    let replayed = underwrite(dir.path(), &["saga", "replay"]);
    let message = text(&replayed);
    assert!(replayed.status.success(), "{message}");
    assert!(message.contains("Sagas: none."), "{message}");
    assert!(!message.contains("needs service"), "{message}");
}

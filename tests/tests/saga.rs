//! The origination saga on the embedded runner, over a real SQLite file and
//! the real consent, pricing and kfs services: the happy path, consent
//! withdrawn mid-saga, an expired KFS, and a crash followed by a replay.
//!
//! The risk score comes from the lender's own scorecard as a signal (the
//! `risk.scored` input event), so these sagas run the origination steps
//! whose services are built: consent, pricing, KFS and acceptance.

use std::sync::Arc;

use serde_json::json;
use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_kfs::{KfsService, KfsSettings, StoredKfs, kfs_key};
use underwrite_pricing::{Pricing, Withdrawal, withdrawn_key};
use underwrite_runtime::{EmbeddedRuntime, Service, SqliteStore, Store};
use underwrite_saga::{
    Phase, SagaDefinition, SagaError, SagaRunner, SagaStatus, Source, StepStatus, load_saga,
    origination, replay_saga, summarise,
};
use underwrite_tests::fast_settings;
use underwrite_tests::origination::{
    annex_b_policy, application, consent_granted, consent_withdrawn, risk_scored,
};

/// The origination saga of a lender that scores with its own scorecard:
/// consent, pricing on the scorecard's `risk.scored`, KFS and acceptance.
fn scorecard_origination() -> SagaDefinition {
    let full = origination();
    let mut steps: Vec<_> = full
        .steps
        .iter()
        .filter(|s| ["consent", "pricing", "kfs", "acceptance"].contains(&s.name))
        .copied()
        .collect();
    steps[1].source = Source::Signal {
        event_type: "risk.scored",
    };
    SagaDefinition { steps, ..full }
}

fn services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(Consent),
        Arc::new(Pricing::new(annex_b_policy())),
        Arc::new(KfsService::new(KfsSettings::default())),
        Arc::new(Audit),
    ]
}

fn open_runtime(path: &std::path::Path) -> EmbeddedRuntime {
    let store = Arc::new(SqliteStore::open(path).expect("store opens"));
    EmbeddedRuntime::new(store, services(), fast_settings())
}

fn input(line: &str) -> Envelope {
    parse_input_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn acceptance(application: &str, proposal: &str, on: &str) -> Envelope {
    input(
        &json!({
            "id": format!("accept-{application}"),
            "type": "kfs.accepted",
            "occurred_at": format!("{on}T15:00:00+05:30"),
            "payload": {
                "application_id": application, "proposal_number": proposal, "accepted_on": on,
            }
        })
        .to_string(),
    )
}

/// Publishes consent for B1, starts the saga for APP1 applied on Friday 7
/// Jun 2024, and sends the scorecard's grade A.
async fn started(runtime: &EmbeddedRuntime, runner: &SagaRunner<'_>) {
    runtime
        .publish(&[input(&consent_granted(
            "C1",
            "B1",
            "2024-06-01",
            "2025-05-31",
        ))])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    assert!(
        runner
            .start(&input(&application("APP1", "B1", "2024-06-07")))
            .unwrap()
    );
    assert!(
        runner
            .signal(&risk_scored("APP1", "A", "2024-06-07"))
            .unwrap()
    );
}

async fn audited_types(runtime: &EmbeddedRuntime) -> Vec<String> {
    let store: &dyn Store = runtime.store().as_ref();
    let mut types = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan(underwrite_audit::ENTRY_PREFIX, after.as_deref(), 1000)
            .await
            .unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, read) in page {
            let entry: underwrite_audit::Entry = read.parse(&key).unwrap();
            types.push(entry.event.event_type);
        }
    }
    types
}

async fn stored_kfs(runtime: &EmbeddedRuntime) -> StoredKfs {
    let store: &dyn Store = runtime.store().as_ref();
    store
        .get(&kfs_key("KFS-APP1-20240607"))
        .await
        .unwrap()
        .expect("KFS stored")
        .parse("kfs")
        .unwrap()
}

fn count(types: &[String], event_type: &str) -> usize {
    types.iter().filter(|t| *t == event_type).count()
}

#[tokio::test]
async fn happy_path_completes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    started(&runtime, &runner).await;

    let counts = runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(
        counts.get(&SagaStatus::Started),
        Some(&1),
        "waits for acceptance"
    );
    let waiting = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(
        waiting.forward("acceptance").unwrap().status,
        StepStatus::Waiting
    );

    // Accepted on Monday 10 Jun, within the validity that ends on 11 Jun.
    runner
        .signal(&acceptance("APP1", "KFS-APP1-20240607", "2024-06-10"))
        .unwrap();
    let counts = runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(counts.get(&SagaStatus::Completed), Some(&1));

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::Completed);
    let steps: Vec<(&str, StepStatus)> = saga
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.status))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("consent", StepStatus::Succeeded),
            ("pricing", StepStatus::Succeeded),
            ("kfs", StepStatus::Succeeded),
            ("acceptance", StepStatus::Succeeded),
        ]
    );
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
    assert_eq!(
        stored_kfs(&runtime).await.accepted_on,
        Some("2024-06-10".parse().unwrap())
    );
    let types = audited_types(&runtime).await;
    assert_eq!(count(&types, "application.received"), 1);
    assert_eq!(count(&types, "pricing.quoted"), 1);
    assert_eq!(count(&types, "kfs.issued"), 1);
}

#[tokio::test]
async fn consent_withdrawn_mid_saga_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    started(&runtime, &runner).await;
    runner.run_until_settled(&mut |_| {}).await.unwrap();

    // The KFS is out; the borrower withdraws consent, then accepts.
    runtime
        .publish(&[input(&consent_withdrawn("C1", "B1", "2024-06-08"))])
        .unwrap();
    runner
        .signal(&acceptance("APP1", "KFS-APP1-20240607", "2024-06-10"))
        .unwrap();
    let counts = runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(counts.get(&SagaStatus::RolledBack), Some(&1));

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::RolledBack);
    assert_eq!(saga.failed_step.as_deref(), Some("acceptance"));
    assert_eq!(saga.failure_code(), Some("consent_withdrawn"));
    // The compensations ran in reverse order of their steps: the KFS is
    // voided before the quote is withdrawn.
    let compensations: Vec<(&str, &str, StepStatus)> = saga
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Compensation)
        .map(|s| (s.step.as_str(), s.command_type.as_str(), s.status))
        .collect();
    assert_eq!(
        compensations,
        vec![
            ("kfs", "kfs.voided", StepStatus::Succeeded),
            ("pricing", "quote.withdrawn", StepStatus::Succeeded),
        ]
    );
    let kfs = stored_kfs(&runtime).await;
    assert_eq!(kfs.accepted_on, None);
    assert_eq!(
        kfs.voided.as_deref(),
        Some("acceptance failed: consent_withdrawn")
    );
    let store: &dyn Store = runtime.store().as_ref();
    let withdrawal: Withdrawal = store
        .get(&withdrawn_key("APP1"))
        .await
        .unwrap()
        .expect("quote withdrawn")
        .parse("withdrawal")
        .unwrap();
    assert_eq!(withdrawal.reason, "acceptance failed: consent_withdrawn");
    // The failure was the saga's answer, not a dead letter.
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);

    let summary = summarise(runtime.store()).unwrap();
    assert_eq!(summary.applications, 1);
    assert_eq!(summary.completed, 0);
    assert_eq!(
        summary
            .declined
            .get(&("acceptance".into(), "consent_withdrawn".into())),
        Some(&1)
    );
    assert_eq!(summary.succeeded("kfs"), 1);
    assert_eq!(summary.compensated.get("kfs"), Some(&1));
    assert_eq!(summary.compensated.get("pricing"), Some(&1));
}

#[tokio::test]
async fn expired_kfs_is_never_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    started(&runtime, &runner).await;
    // Wednesday 12 Jun is one day past the validity.
    runner
        .signal(&acceptance("APP1", "KFS-APP1-20240607", "2024-06-12"))
        .unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::RolledBack);
    assert_eq!(saga.failed_step.as_deref(), Some("acceptance"));
    assert_eq!(saga.failure_code(), Some("kfs_expired"));
    assert!(saga.forward("sanction").is_none());
    assert_eq!(stored_kfs(&runtime).await.accepted_on, None);
    let types = audited_types(&runtime).await;
    assert_eq!(count(&types, "loan.sanctioned"), 0);
    assert_eq!(count(&types, "kfs.voided"), 1);
    assert_eq!(count(&types, "quote.withdrawn"), 1);
}

#[tokio::test]
async fn crash_then_replay_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("underwrite.db");
    let definition = scorecard_origination();
    {
        let runtime = open_runtime(&path);
        let runner = SagaRunner::new(&runtime, &definition).unwrap();
        started(&runtime, &runner).await;
        runner
            .signal(&acceptance("APP1", "KFS-APP1-20240607", "2024-06-10"))
            .unwrap();
        // The services answer the consent command; the runner records it
        // and sends the pricing command, which the services answer too, and
        // the process stops before the runner reads that answer.
        runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
        assert_eq!(runner.advance().unwrap(), 1);
        runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    }

    let runtime = open_runtime(&path);
    let before = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(before.status, SagaStatus::Started);
    assert_eq!(before.forward("pricing").unwrap().status, StepStatus::Sent);
    let (counts, record) = replay_saga(&runtime, &definition, Some("APP1"), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(counts.get(&SagaStatus::Completed), Some(&1));
    let completed = record.unwrap();
    assert_eq!(completed.status, SagaStatus::Completed);

    // A redelivered command and a repeated start or signal change nothing.
    let kfs_step = completed.forward("kfs").unwrap();
    runtime
        .store()
        .transaction(|tx| {
            underwrite_runtime::sqlite::enqueue_command(
                tx,
                "kfs",
                kfs_step.command_id.as_deref().unwrap(),
                kfs_step.command.as_deref().unwrap(),
                Some(&kfs_step.task_token),
                0,
            )
        })
        .unwrap();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    assert!(
        !runner
            .start(&input(&application("APP1", "B1", "2024-06-07")))
            .unwrap()
    );
    assert!(
        !runner
            .signal(&acceptance("APP1", "KFS-APP1-20240607", "2024-06-10"))
            .unwrap()
    );
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    let after = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(after, completed);

    let types = audited_types(&runtime).await;
    assert_eq!(count(&types, "pricing.quoted"), 1);
    assert_eq!(count(&types, "kfs.issued"), 1);
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
}

#[tokio::test]
async fn declined_consent_shares_no_application() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    runtime
        .publish(&[
            input(&consent_granted("C1", "B1", "2024-06-01", "2025-05-31")),
            input(&consent_withdrawn("C1", "B1", "2024-06-05")),
        ])
        .unwrap();
    runner
        .start(&input(&application("APP1", "B1", "2024-06-07")))
        .unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::RolledBack);
    assert_eq!(saga.failed_step.as_deref(), Some("consent"));
    assert!(saga.steps.iter().all(|s| s.phase == Phase::Forward));
    // Pricing never received the application, and nothing was dead-lettered.
    let store: &dyn Store = runtime.store().as_ref();
    assert!(
        store
            .get(&underwrite_pricing::application_key("APP1"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
    assert_eq!(
        count(&audited_types(&runtime).await, "application.received"),
        0
    );
}

#[test]
fn unwired_steps_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = origination();
    let error = SagaRunner::new(&runtime, &definition).err().unwrap();
    assert!(matches!(error, SagaError::NotWired { .. }), "{error}");
    let message = error.to_string();
    for expected in [
        "step fraud needs service fraud to handle application.received",
        "step risk needs service risk to handle fraud.cleared",
        "step sanction needs service mechanism to handle kfs.accepted",
        "step disbursal needs service mechanism to handle loan.sanctioned",
    ] {
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn wrong_input_type_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    let error = runner
        .start(&input(&consent_granted(
            "C1",
            "B1",
            "2024-06-01",
            "2025-05-31",
        )))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "saga origination starts from application.received, not consent.granted: send an application.received event"
    );
    let unknown = runner
        .signal(&acceptance("APP9", "KFS-APP9-20240607", "2024-06-10"))
        .unwrap_err();
    assert!(
        matches!(unknown, SagaError::NotFound(ref id) if id == "APP9"),
        "{unknown}"
    );
}

#[tokio::test]
async fn dead_lettered_command_resumes_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_runtime(&dir.path().join("underwrite.db"));
    let definition = scorecard_origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    // No consent yet: the check is retried, then dead-lettered with its
    // task token, and the saga waits.
    runner
        .start(&input(&application("APP1", "B1", "2024-06-07")))
        .unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    let dead = runtime.store().dead_letters(Some("consent")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_missing");
    assert_eq!(dead[0].task_token.as_deref(), Some("APP1/forward/consent"));
    let waiting = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(waiting.status, SagaStatus::Started);
    assert_eq!(waiting.forward("consent").unwrap().status, StepStatus::Sent);

    // The grant arrives; replaying the dead letter answers the saga.
    runtime
        .publish(&[input(&consent_granted(
            "C1",
            "B1",
            "2024-06-01",
            "2025-05-31",
        ))])
        .unwrap();
    assert_eq!(
        runtime
            .store()
            .replay_dead_letters(Some("consent"), None)
            .unwrap(),
        1
    );
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    let resumed = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(
        resumed.forward("consent").unwrap().status,
        StepStatus::Succeeded
    );
    assert_eq!(
        resumed.forward("pricing").unwrap().status,
        StepStatus::Waiting
    );
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
}

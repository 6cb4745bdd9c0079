//! The origination saga on the embedded runner, over a real SQLite file and
//! the real services: the happy path, consent withdrawn mid-saga, an
//! expired KFS, and a crash followed by a replay.
//!
//! The first tests take the risk score from the lender's own scorecard as
//! a signal (the `risk.scored` input event) and stop at acceptance. The
//! tests after them run the full saga, from consent to disbursal with the
//! bundled scorecard, and the cooling-off exit on the loan it disburses.

use std::sync::Arc;

use serde_json::json;
use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_domain::pricing::{PenalPolicy, PricingPolicy};
use underwrite_domain::{AnnualRate, ClassificationPolicy, Paise, ProductCatalog};
use underwrite_events::{Envelope, parse_input_line};
use underwrite_fee::{Fee, FeeSettings};
use underwrite_fraud::Fraud;
use underwrite_kfs::{KfsService, KfsSettings, StoredKfs, kfs_key};
use underwrite_mechanism::{
    LoanRecord, Mechanism, SanctionRecord, cooling_off_exit_key, loan_key, sanction_key,
};
use underwrite_npa::Npa;
use underwrite_pricing::{Pricing, Withdrawal, withdrawn_key};
use underwrite_risk::Risk;
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

async fn audited_events(runtime: &EmbeddedRuntime) -> Vec<Envelope> {
    let store: &dyn Store = runtime.store().as_ref();
    let mut events = Vec::new();
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
            events.push(entry.event);
        }
    }
    events
}

async fn audited_types(runtime: &EmbeddedRuntime) -> Vec<String> {
    audited_events(runtime)
        .await
        .into_iter()
        .map(|event| event.event_type)
        .collect()
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

// The full saga: consent, fraud, risk, pricing, KFS, acceptance, sanction
// and disbursal, then servicing on the loan disbursed.

fn full_services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(Consent),
        Arc::new(Fraud::new(FraudPolicy::default())),
        Arc::new(Risk::bundled()),
        Arc::new(Pricing::new(PricingPolicy::default())),
        Arc::new(KfsService::new(KfsSettings::default())),
        Arc::new(Mechanism::new(ProductCatalog::default())),
        Arc::new(Fee::new(
            PenalPolicy::default(),
            FeeSettings::default(),
            ProductCatalog::default(),
        )),
        Arc::new(Npa::new(
            ClassificationPolicy::default(),
            ProductCatalog::default(),
        )),
        Arc::new(Audit),
    ]
}

fn open_full(path: &std::path::Path) -> EmbeddedRuntime {
    let store = Arc::new(SqliteStore::open(path).expect("store opens"));
    EmbeddedRuntime::new(store, full_services(), fast_settings())
}

/// Grants B1's consent and starts APP1, applied on Friday 7 Jun 2024, with
/// the borrower's acceptance on `accepted_on` already received.
async fn started_full(runtime: &EmbeddedRuntime, runner: &SagaRunner<'_>, accepted_on: &str) {
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
    runner
        .signal(&acceptance("APP1", "KFS-APP1-20240607", accepted_on))
        .unwrap();
}

/// Runs the services and the runner one transition at a time until
/// mechanism has answered the sanction command and before the runner reads
/// that answer.
async fn run_until_sanction_answered(runtime: &EmbeddedRuntime, runner: &SagaRunner<'_>) {
    for _ in 0..20 {
        runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
        let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
        if saga.forward("sanction").is_some() {
            return;
        }
        assert!(runner.advance().unwrap() > 0, "the saga stalled: {saga:?}");
    }
    panic!("the saga never reached sanction");
}

async fn audited(runtime: &EmbeddedRuntime, event_type: &str) -> Vec<Envelope> {
    audited_events(runtime)
        .await
        .into_iter()
        .filter(|event| event.event_type == event_type)
        .collect()
}

async fn state(runtime: &EmbeddedRuntime, key: &str) -> Option<serde_json::Value> {
    let store: &dyn Store = runtime.store().as_ref();
    store
        .get(key)
        .await
        .unwrap()
        .map(|read| read.parse(key).unwrap())
}

async fn ledger(runtime: &EmbeddedRuntime) -> Option<LoanRecord> {
    let value = state(runtime, &loan_key("APP1")).await?;
    Some(serde_json::from_value(value).unwrap())
}

async fn sanction(runtime: &EmbeddedRuntime) -> Option<SanctionRecord> {
    let value = state(runtime, &sanction_key("APP1")).await?;
    Some(serde_json::from_value(value).unwrap())
}

#[tokio::test]
async fn full_saga_disburses_and_services_the_loan() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_full(&dir.path().join("underwrite.db"));
    let definition = origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    // Accepted on Monday 10 Jun, within the validity that ends on 11 Jun.
    started_full(&runtime, &runner, "2024-06-10").await;
    let counts = runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(counts.get(&SagaStatus::Completed), Some(&1), "{counts:?}");

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    let steps: Vec<(&str, StepStatus)> = saga
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.status))
        .collect();
    let names = [
        "consent",
        "fraud",
        "risk",
        "pricing",
        "kfs",
        "acceptance",
        "sanction",
        "disbursal",
    ];
    assert_eq!(
        steps,
        names.map(|name| (name, StepStatus::Succeeded)).to_vec()
    );
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);

    // One disbursal, on the accepted quote's terms, dated the acceptance.
    let quoted = audited(&runtime, "pricing.quoted").await;
    let quote = &quoted[0].payload["quote"];
    let disbursed = audited(&runtime, "loan.disbursed").await;
    assert_eq!(disbursed.len(), 1);
    assert_eq!(disbursed[0].source, "mechanism");
    assert_eq!(disbursed[0].business_date.to_string(), "2024-06-10");
    assert_eq!(
        disbursed[0].payload,
        json!({
            "loan_id": "APP1", "borrower_id": "B1", "product": "personal",
            "principal": "20000.00", "annual_rate": quote["annual_rate"],
            "tenor_months": 24, "disbursed_on": "2024-06-10",
            "first_due_date": "2024-07-05", "secured_value": "0.00",
        })
    );
    let sanctioned = audited(&runtime, "loan.sanctioned").await;
    assert_eq!(sanctioned.len(), 1);
    assert_eq!(
        sanctioned[0].payload["net_disbursed"],
        quote["net_disbursed"]
    );

    // The mechanism ledger and npa's copy of the loan are built from it.
    let ledger = ledger(&runtime).await.expect("ledger");
    assert_eq!(ledger.ledger.schedule.instalments.len(), 24);
    assert_eq!(
        ledger.ledger.schedule.instalments[0].due_date.to_string(),
        "2024-07-05"
    );
    let npa_key = format!("{}APP1", underwrite_npa::LOAN_PREFIX);
    assert!(state(&runtime, &npa_key).await.is_some());
}

#[tokio::test]
async fn consent_withdrawn_after_sanction_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_full(&dir.path().join("underwrite.db"));
    let definition = origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    started_full(&runtime, &runner, "2024-06-10").await;
    run_until_sanction_answered(&runtime, &runner).await;
    // Sanctioned; the borrower withdraws consent before the disbursal.
    runtime
        .publish(&[input(&consent_withdrawn("C1", "B1", "2024-06-10"))])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    let counts = runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(counts.get(&SagaStatus::RolledBack), Some(&1), "{counts:?}");

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.failed_step.as_deref(), Some("disbursal"));
    assert_eq!(saga.failure_code(), Some("consent_withdrawn"));
    let compensations: Vec<(&str, &str, StepStatus)> = saga
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Compensation)
        .map(|s| (s.step.as_str(), s.command_type.as_str(), s.status))
        .collect();
    assert_eq!(
        compensations,
        vec![
            ("sanction", "sanction.cancelled", StepStatus::Succeeded),
            ("kfs", "kfs.voided", StepStatus::Succeeded),
            ("pricing", "quote.withdrawn", StepStatus::Succeeded),
        ]
    );
    let sanction = sanction(&runtime).await.unwrap();
    assert_eq!(
        sanction.cancelled.as_deref(),
        Some("disbursal failed: consent_withdrawn")
    );
    assert!(ledger(&runtime).await.is_none());
    assert!(audited(&runtime, "loan.disbursed").await.is_empty());
    assert_eq!(audited(&runtime, "sanction.cancelled").await.len(), 1);
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
}

#[tokio::test]
async fn crash_after_sanction_then_replay_disburses_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("underwrite.db");
    let definition = origination();
    {
        let runtime = open_full(&path);
        let runner = SagaRunner::new(&runtime, &definition).unwrap();
        started_full(&runtime, &runner, "2024-06-10").await;
        // The process stops after mechanism sanctioned and before the
        // runner read its answer.
        run_until_sanction_answered(&runtime, &runner).await;
    }

    let runtime = open_full(&path);
    let before = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(before.forward("sanction").unwrap().status, StepStatus::Sent);
    let (counts, record) = replay_saga(&runtime, &definition, Some("APP1"), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(counts.get(&SagaStatus::Completed), Some(&1), "{counts:?}");
    let completed = record.unwrap();

    // The disbursal command delivered again changes nothing.
    let disbursal = completed.forward("disbursal").unwrap();
    runtime
        .store()
        .transaction(|tx| {
            underwrite_runtime::sqlite::enqueue_command(
                tx,
                "mechanism",
                disbursal.command_id.as_deref().unwrap(),
                disbursal.command.as_deref().unwrap(),
                Some(&disbursal.task_token),
                0,
            )
        })
        .unwrap();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    assert_eq!(
        load_saga(runtime.store(), "APP1").unwrap().unwrap(),
        completed
    );
    assert_eq!(audited(&runtime, "loan.sanctioned").await.len(), 1);
    assert_eq!(audited(&runtime, "loan.disbursed").await.len(), 1);
    assert!(ledger(&runtime).await.is_some());
    assert_eq!(runtime.store().dead_letter_count().unwrap(), 0);
}

/// The full saga without the acceptance step, so that the borrower's
/// acceptance goes straight to sanction: the mechanism service's own check
/// of the KFS's validity decides.
fn sanction_on_signal() -> SagaDefinition {
    let full = origination();
    let mut steps: Vec<_> = full
        .steps
        .iter()
        .filter(|s| s.name != "acceptance")
        .copied()
        .collect();
    let sanction = steps.iter_mut().find(|s| s.name == "sanction").unwrap();
    sanction.source = Source::Signal {
        event_type: "kfs.accepted",
    };
    SagaDefinition { steps, ..full }
}

#[tokio::test]
async fn expired_kfs_gets_no_sanction() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_full(&dir.path().join("underwrite.db"));
    let definition = sanction_on_signal();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    // Wednesday 12 Jun is one day past the validity that ends on 11 Jun.
    started_full(&runtime, &runner, "2024-06-12").await;
    runner.run_until_settled(&mut |_| {}).await.unwrap();

    let saga = load_saga(runtime.store(), "APP1").unwrap().unwrap();
    assert_eq!(saga.status, SagaStatus::RolledBack);
    assert_eq!(saga.failed_step.as_deref(), Some("sanction"));
    assert_eq!(saga.failure_code(), Some("kfs_expired"));
    let failed = saga.forward("sanction").unwrap();
    let message = failed.error_message.as_deref().unwrap();
    assert!(
        message.contains("valid until 2024-06-11") && message.contains("2024-06-12"),
        "{message}"
    );
    // No sanction to cancel: only the KFS and the quote are undone.
    let compensations: Vec<&str> = saga
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Compensation)
        .map(|s| s.command_type.as_str())
        .collect();
    assert_eq!(compensations, vec!["kfs.voided", "quote.withdrawn"]);
    assert!(sanction(&runtime).await.is_none());
    assert!(audited(&runtime, "loan.sanctioned").await.is_empty());
    assert!(audited(&runtime, "loan.disbursed").await.is_empty());
}

fn exit_request(id: &str, exit_on: &str) -> Envelope {
    input(
        &json!({
            "id": id, "type": "loan.cooling_off_exit.requested",
            "occurred_at": format!("{exit_on}T11:00:00+05:30"),
            "payload": { "loan_id": "APP1", "exit_on": exit_on },
        })
        .to_string(),
    )
}

#[tokio::test]
async fn cooling_off_exit_within_and_after_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_full(&dir.path().join("underwrite.db"));
    let definition = origination();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    started_full(&runtime, &runner, "2024-06-10").await;
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    let sanctioned = audited(&runtime, "loan.sanctioned").await;
    let apr: AnnualRate = sanctioned[0].payload["apr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sanctioned[0].payload["cooling_off_days"], 3);

    // Disbursed on 10 Jun with 3 days of cooling-off: 12 Jun is inside.
    runtime
        .publish(&[exit_request("exit-1", "2024-06-12")])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    let computed = audited(&runtime, "loan.cooling_off_exit.computed").await;
    assert_eq!(computed.len(), 1);
    let principal: Paise = "20000.00".parse().unwrap();
    let expected = underwrite_domain::cooling_off::cooling_off_exit(
        principal,
        apr,
        "2024-06-10".parse().unwrap(),
        3,
        "2024-06-12".parse().unwrap(),
    )
    .unwrap();
    let payload = &computed[0].payload;
    assert_eq!(payload["days_held"], 2);
    assert_eq!(payload["last_exit_day"], "2024-06-13");
    assert_eq!(payload["principal"], "20000.00");
    assert_eq!(payload["interest"], expected.interest.to_string());
    // Principal and proportionate APR only: no penalty is added.
    assert_eq!(
        payload["total"],
        (principal + expected.interest).to_string()
    );
    assert!(expected.interest.is_positive());
    let recorded = state(&runtime, &cooling_off_exit_key("APP1"))
        .await
        .expect("exit recorded");
    assert_eq!(&recorded["computed"], payload);

    // 14 Jun is a day after the period: a permanent error naming the dates.
    runtime
        .publish(&[exit_request("exit-2", "2024-06-14")])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    let dead = runtime.store().dead_letters(Some("mechanism")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "cooling_off_over");
    for date in ["2024-06-10", "2024-06-13", "2024-06-14"] {
        assert!(
            dead[0].error_message.contains(date),
            "{}",
            dead[0].error_message
        );
    }
    assert_eq!(
        audited(&runtime, "loan.cooling_off_exit.computed")
            .await
            .len(),
        1
    );
    let unchanged = state(&runtime, &cooling_off_exit_key("APP1"))
        .await
        .unwrap();
    assert_eq!(unchanged, recorded);
}

#[tokio::test]
async fn cooling_off_exit_needs_an_originated_loan() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = open_full(&dir.path().join("underwrite.db"));
    // A loan disbursed by the lender's own systems has no KFS here.
    let disbursal = json!({
        "id": "disb-APP1", "type": "loan.disbursed",
        "occurred_at": "2024-06-10T10:00:00+05:30",
        "payload": {
            "loan_id": "APP1", "borrower_id": "B1", "product": "personal",
            "principal": "20000.00", "annual_rate": "15.00", "tenor_months": 24,
            "disbursed_on": "2024-06-10", "first_due_date": "2024-07-05",
        }
    });
    runtime
        .publish(&[
            input(&disbursal.to_string()),
            exit_request("exit-1", "2024-06-11"),
        ])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    let dead = runtime.store().dead_letters(Some("mechanism")).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].error_code, "not_originated");
    assert!(
        dead[0].error_message.contains("loan APP1"),
        "{}",
        dead[0].error_message
    );
}

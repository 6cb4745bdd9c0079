//! The origination saga on both executors: the embedded runner over a
//! SQLite file, and the generated state machine on Step Functions in a moto
//! server on 127.0.0.1, whose task messages are handled by the services' Lambda code
//! (`underwrite_lambda::Function` with its saga tasks, over the DynamoDB
//! and SQS adapters). A poller stands in for Lambda's event source
//! mappings: it receives from each queue, hands the messages to the
//! function as a real SQS event, and deletes the ones the batch response
//! does not name. Each case must end the same way on both: status, failed
//! step and code, the KFS issued, and what the compensations changed.
//!
//! The saga runs every step, consent to disbursal, with the bundled
//! scorecard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use underwrite_audit::Audit;
use underwrite_aws::{AwsBackend, DynamoStore, StepFunctionsTasks};
use underwrite_consent::Consent;
use underwrite_domain::ProductCatalog;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_domain::pricing::{PricingPolicy, RiskGrade};
use underwrite_events::{Envelope, parse_input_line};
use underwrite_fraud::Fraud;
use underwrite_kfs::{KfsService, KfsSettings, StoredKfs, kfs_key};
use underwrite_lambda::Function;
use underwrite_lambda::saga_task::{SagaTasks, wait_key};
use underwrite_mechanism::{Mechanism, loan_key, sanction_key};
use underwrite_pricing::{Pricing, Withdrawal, withdrawn_key};
use underwrite_risk::Risk;
use underwrite_runtime::ports::{Bus, Outbound, PortError, TaskAnswers};
use underwrite_runtime::record::RecordSettings;
use underwrite_runtime::{EmbeddedRuntime, Service, SqliteStore, Store, SystemClock};
use underwrite_saga::{SagaDefinition, SagaRunner, SagaStatus, asl, load_saga, origination};
use underwrite_tests::fast_settings;
use underwrite_tests::moto::{Stack, emulator};
use underwrite_tests::origination::{
    annex_b_policy, application_payload, consent_granted, consent_withdrawn,
};
use underwrite_tests::poller::{Mapping, PollSummary, Poller};

/// The services of the saga's steps, and audit, which receives every event.
const SERVICES: [&str; 7] = [
    "consent",
    "fraud",
    "risk",
    "pricing",
    "kfs",
    "mechanism",
    "audit",
];

/// How long one case may take on Step Functions.
const CASE_TIMEOUT: Duration = Duration::from_secs(180);

fn definition() -> SagaDefinition {
    origination()
}

/// Returns the Annex B tariff with a rate for every grade the bundled
/// scorecard gives except D, so that pricing declines grade D.
fn policy() -> PricingPolicy {
    let mut policy = annex_b_policy();
    for (grade, rate) in [("B", "18.00"), ("C", "22.00")] {
        policy
            .rate_grid
            .insert(RiskGrade::parse(grade).unwrap(), rate.parse().unwrap());
    }
    policy
}

fn service(name: &str) -> Arc<dyn Service> {
    match name {
        "consent" => Arc::new(Consent),
        "fraud" => Arc::new(Fraud::new(FraudPolicy::default())),
        "risk" => Arc::new(Risk::bundled()),
        "pricing" => Arc::new(Pricing::new(policy())),
        "kfs" => Arc::new(KfsService::new(KfsSettings::default())),
        "mechanism" => Arc::new(Mechanism::new(ProductCatalog::default())),
        "audit" => Arc::new(Audit),
        other => panic!("no service {other}"),
    }
}

fn event(line: &str) -> Envelope {
    parse_input_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// One application and what happens after its KFS is issued.
struct Case {
    name: &'static str,
    application: Envelope,
    /// Events sent once the saga waits for the borrower, in order.
    after_kfs: Vec<Envelope>,
}

fn application(id: &str, pan: &str) -> Envelope {
    let mut payload = application_payload(id, "B1", "2024-06-07");
    payload["pan"] = json!(pan);
    event(
        &json!({
            "id": format!("app-{id}"), "type": "application.received",
            "occurred_at": "2024-06-07T10:00:00+05:30", "payload": payload,
        })
        .to_string(),
    )
}

fn acceptance(id: &str, on: &str) -> Envelope {
    event(
        &json!({
            "id": format!("accept-{id}"), "type": "kfs.accepted",
            "occurred_at": format!("{on}T15:00:00+05:30"),
            "payload": {
                "application_id": id, "proposal_number": proposal(id), "accepted_on": on,
            }
        })
        .to_string(),
    )
}

fn proposal(id: &str) -> String {
    format!("KFS-{id}-20240607")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "accepted within validity",
            application: application("APP1", "ABCPE1234F"),
            after_kfs: vec![acceptance("APP1", "2024-06-10")],
        },
        Case {
            name: "PAN fails the format rule",
            application: application("APP2", "ABCDE12345"),
            after_kfs: vec![],
        },
        Case {
            name: "consent withdrawn before acceptance",
            application: application("APP3", "ABCPE1234F"),
            after_kfs: vec![
                event(&consent_withdrawn("C1", "B1", "2024-06-08")),
                acceptance("APP3", "2024-06-10"),
            ],
        },
        Case {
            name: "accepted after the KFS expired",
            application: application("APP4", "ABCPE1234F"),
            after_kfs: vec![acceptance("APP4", "2024-06-20")],
        },
    ]
}

/// How a case ended, as both executors report it.
#[derive(Debug, Clone, PartialEq)]
struct Ending {
    status: &'static str,
    failed_step: Option<String>,
    failure_code: Option<String>,
    /// The KFS as stored, without its HTML.
    kfs: Option<Value>,
    /// SHA-256 digests of the English and Hindi HTML.
    html: Option<(String, String)>,
    /// The withdrawn quote's reason and date.
    quote_withdrawn: Option<(String, String)>,
    /// The mechanism service's sanction record and loan ledger.
    sanction: Option<String>,
    loan: Option<String>,
}

async fn read_kfs(store: &dyn Store, id: &str) -> (Option<Value>, Option<(String, String)>) {
    let Some(found) = store.get(&kfs_key(&proposal(id))).await.unwrap() else {
        return (None, None);
    };
    let stored: StoredKfs = found.parse("kfs").unwrap();
    let mut value: Value = serde_json::from_str(&found.json).unwrap();
    value.as_object_mut().unwrap().remove("html_en");
    value.as_object_mut().unwrap().remove("html_hi");
    let digest = |html: &str| hex::encode(Sha256::digest(html));
    (
        Some(value),
        Some((digest(&stored.html_en), digest(&stored.html_hi))),
    )
}

async fn read_json(store: &dyn Store, key: &str) -> Option<String> {
    store.get(key).await.unwrap().map(|found| found.json)
}

async fn read_withdrawal(store: &dyn Store, id: &str) -> Option<(String, String)> {
    store.get(&withdrawn_key(id)).await.unwrap().map(|found| {
        let withdrawal: Withdrawal = found.parse("withdrawal").unwrap();
        (withdrawal.reason, withdrawal.withdrawn_on.to_string())
    })
}

// ------------------------------------------------------------ embedded

async fn run_embedded(case: &Case) -> Ending {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("underwrite.db")).unwrap());
    let services: Vec<Arc<dyn Service>> = SERVICES.iter().map(|name| service(name)).collect();
    let runtime = EmbeddedRuntime::new(store, services, fast_settings());
    let definition = definition();
    let runner = SagaRunner::new(&runtime, &definition).unwrap();
    runtime
        .publish(&[event(&consent_granted(
            "C1",
            "B1",
            "2024-06-01",
            "2025-05-31",
        ))])
        .unwrap();
    runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
    runner.start(&case.application).unwrap();
    runner.run_until_settled(&mut |_| {}).await.unwrap();
    for later in &case.after_kfs {
        if later.event_type == "kfs.accepted" {
            runner.signal(later).unwrap();
        } else {
            runtime.publish(std::slice::from_ref(later)).unwrap();
            runtime.run(&Default::default(), &mut |_| {}).await.unwrap();
        }
    }
    runner.run_until_settled(&mut |_| {}).await.unwrap();

    let id = case.application.subject.as_str();
    let saga = load_saga(runtime.store(), id).unwrap().expect("saga");
    let status = match saga.status {
        SagaStatus::Completed => "completed",
        SagaStatus::RolledBack => "rolled_back",
        other => panic!("{}: embedded saga ended {other:?}", case.name),
    };
    let store: &dyn Store = runtime.store().as_ref();
    let (kfs, html) = read_kfs(store, id).await;
    Ending {
        status,
        failed_step: saga.failed_step.clone(),
        failure_code: saga.failure_code().map(str::to_string),
        kfs,
        html,
        quote_withdrawn: read_withdrawal(store, id).await,
        sanction: read_json(store, &sanction_key(id)).await,
        loan: read_json(store, &loan_key(id)).await,
    }
}

// ------------------------------------------------------- step functions

/// Step Functions' task results, with each failure kept. moto 5.2.5 does
/// not fill a `Fail` state's cause from its `CausePath`, so the failed step
/// and code are read from the failure sent to the saga.
struct Recorder {
    inner: StepFunctionsTasks,
    failures: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TaskAnswers for Recorder {
    async fn succeed(&self, token: &str, output: &str) -> Result<(), PortError> {
        self.inner.succeed(token, output).await
    }

    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<(), PortError> {
        self.failures.lock().unwrap().push(cause.to_string());
        self.inner.fail(token, error, cause).await
    }
}

/// The functions of one case, each over the AWS adapters of its service.
struct Deployment {
    stack: Stack,
    answers: Arc<Recorder>,
    poller: Poller,
    bus: Arc<dyn Bus>,
    state_machine: String,
}

async fn deploy(endpoint: &str) -> Deployment {
    let stack = Stack::create(endpoint, &SERVICES, 5).await;
    let definition = definition();
    let subscriptions: Vec<(&str, &[&str])> = underwrite_lambda::routes::SUBSCRIPTIONS
        .iter()
        .copied()
        .filter(|(name, _)| SERVICES.contains(name))
        .collect();
    let routes = SagaTasks::routes(&definition, &subscriptions);
    let answers = Arc::new(Recorder {
        inner: StepFunctionsTasks::new(stack.clients.sfn.clone()),
        failures: Mutex::new(Vec::new()),
    });
    let tasks = Arc::new(SagaTasks::new(definition.clone(), answers.clone()));
    let mut mappings = Vec::new();
    let mut bus: Option<Arc<dyn Bus>> = None;
    for name in SERVICES {
        let backend = AwsBackend::connect(&stack.config, name, routes.clone())
            .await
            .expect("AWS backend");
        bus.get_or_insert_with(|| backend.bus.clone());
        let function = Function::new(
            service(name),
            backend.store.clone(),
            backend.bus.clone(),
            Arc::new(SystemClock),
            None,
            RecordSettings {
                lease_ms: 30_000,
                max_receive_count: 5,
            },
        )
        .with_saga_tasks(tasks.clone());
        let queue_url = stack.queues[name].clone();
        mappings.push(Mapping {
            function,
            queue_arn: Poller::queue_arn(&stack.clients.sqs, &queue_url).await,
            queue_url,
        });
    }

    let mut document = serde_json::to_string(&asl::generate(&definition)).unwrap();
    for name in definition.services() {
        document = document.replace(&asl::queue_placeholder(name), &stack.queues[name]);
    }
    let created = stack
        .clients
        .sfn
        .create_state_machine()
        .name(format!("{}origination", stack.config.queue_prefix))
        .definition(document)
        .role_arn("arn:aws:iam::123456789012:role/underwrite-origination")
        .send()
        .await
        .expect("create the state machine");
    Deployment {
        answers,
        poller: Poller::new(stack.clients.sqs.clone(), &stack.config.region, mappings),
        bus: bus.expect("a bus"),
        state_machine: created.state_machine_arn().to_string(),
        stack,
    }
}

/// Opens the DynamoDB store of `service`, as its function sees it.
fn store_of(deployment: &Deployment, service: &str) -> DynamoStore {
    let stack = &deployment.stack;
    let objects =
        underwrite_aws::S3Objects::new(stack.clients.s3.clone(), stack.config.bucket.clone());
    DynamoStore::new(
        stack.clients.dynamodb.clone(),
        Arc::new(objects),
        &stack.config,
        service,
    )
}

async fn publish(deployment: &Deployment, events: &[Envelope]) {
    let outbound: Vec<Outbound> = events.iter().map(Outbound::from_event).collect();
    deployment.bus.publish(&outbound).await.expect("publish");
}

/// Polls until `done` holds, failing the test after [`CASE_TIMEOUT`].
async fn poll_until<F, Fut>(deployment: &Deployment, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + CASE_TIMEOUT;
    loop {
        let mut handed = 0;
        for index in 0..SERVICES.len() {
            handed += deployment
                .poller
                .poll_once(index, true, &mut PollSummary::default())
                .await;
        }
        if handed == 0 && done().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        if handed == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn execution_status(
    deployment: &Deployment,
    arn: &str,
) -> (String, Option<String>, Option<String>) {
    let described = deployment
        .stack
        .clients
        .sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .expect("describe the execution");
    (
        described.status().as_str().to_string(),
        described.error().map(str::to_string),
        described.cause().map(str::to_string),
    )
}

async fn run_step_functions(endpoint: &str, case: &Case) -> Ending {
    let deployment = deploy(endpoint).await;
    publish(
        &deployment,
        &[event(&consent_granted(
            "C1",
            "B1",
            "2024-06-01",
            "2025-05-31",
        ))],
    )
    .await;
    poll_until(&deployment, "consent is recorded", || async { true }).await;

    let id = case.application.subject.clone();
    let input = json!({
        "input": serde_json::from_str::<Value>(&case.application.to_json()).unwrap(),
        "steps": {},
    });
    let started = deployment
        .stack
        .clients
        .sfn
        .start_execution()
        .state_machine_arn(&deployment.state_machine)
        .name(&id)
        .input(input.to_string())
        .send()
        .await
        .expect("start the execution");
    let execution = started.execution_arn().to_string();

    let kfs_store = store_of(&deployment, "kfs");
    let waiting = wait_key(&id, "kfs.accepted");
    poll_until(
        &deployment,
        "the saga waits for the borrower or ends",
        || async {
            let (status, _, _) = execution_status(&deployment, &execution).await;
            status != "RUNNING" || kfs_store.get(&waiting).await.unwrap().is_some()
        },
    )
    .await;
    for later in &case.after_kfs {
        publish(&deployment, std::slice::from_ref(later)).await;
        poll_until(&deployment, "the queues are empty", || async { true }).await;
    }
    poll_until(&deployment, "the execution ends", || async {
        execution_status(&deployment, &execution).await.0 != "RUNNING"
    })
    .await;

    let (status, error, cause) = execution_status(&deployment, &execution).await;
    let first_failure = deployment.answers.failures.lock().unwrap().first().cloned();
    let cause: Value = cause
        .or(first_failure.filter(|_| status == "FAILED"))
        .map(|text| serde_json::from_str(&text).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let status = match (status.as_str(), error.as_deref()) {
        ("SUCCEEDED", _) => "completed",
        ("FAILED", Some("SagaRolledBack")) => "rolled_back",
        other => panic!("{}: execution ended {other:?}, cause {cause}", case.name),
    };
    let pricing_store = store_of(&deployment, "pricing");
    let mechanism_store = store_of(&deployment, "mechanism");
    let (kfs, html) = read_kfs(&kfs_store, &id).await;
    Ending {
        status,
        failed_step: cause["step"].as_str().map(str::to_string),
        failure_code: cause["code"].as_str().map(str::to_string),
        kfs,
        html,
        quote_withdrawn: read_withdrawal(&pricing_store, &id).await,
        sanction: read_json(&mechanism_store, &sanction_key(&id)).await,
        loan: read_json(&mechanism_store, &loan_key(&id)).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_end_each_case_alike() {
    let (server, endpoint) = emulator();
    if let Some(server) = &server {
        server.enable_step_functions();
    }
    for case in cases() {
        let embedded = run_embedded(&case).await;
        let step_functions = run_step_functions(&endpoint, &case).await;
        assert_eq!(embedded, step_functions, "case: {}", case.name);
        eprintln!(
            "{}: both {} (failed step {:?}, code {:?})",
            case.name, embedded.status, embedded.failed_step, embedded.failure_code
        );
    }
}

#[tokio::test]
async fn cases_cover_each_ending() {
    // The differential test proves little if every case ended alike, so the
    // embedded endings are pinned here.
    let mut endings = Vec::new();
    for case in cases() {
        let ending = run_embedded(&case).await;
        endings.push((
            case.name,
            ending.status,
            ending.failed_step,
            ending.failure_code,
            ending.kfs.is_some(),
            ending.quote_withdrawn.is_some(),
            ending.loan.is_some(),
        ));
    }
    let expected = vec![
        (
            "accepted within validity",
            "completed",
            None,
            None,
            true,
            false,
            true,
        ),
        (
            "PAN fails the format rule",
            "rolled_back",
            Some("fraud".to_string()),
            Some("fraud.alert".to_string()),
            false,
            false,
            false,
        ),
        (
            "consent withdrawn before acceptance",
            "rolled_back",
            Some("acceptance".to_string()),
            Some("consent_withdrawn".to_string()),
            true,
            true,
            false,
        ),
        (
            "accepted after the KFS expired",
            "rolled_back",
            Some("acceptance".to_string()),
            Some("kfs_expired".to_string()),
            true,
            true,
            false,
        ),
    ];
    assert_eq!(endings, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_runs_steps_of_step_services() {
    use underwrite_lambda::{Disposition, Record, RecordProcessor};

    let (_server, endpoint) = emulator();
    let queues: Vec<&str> = underwrite_lambda::routes::SUBSCRIPTIONS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let stack = Stack::create(&endpoint, &queues, 3).await;
    let vars = stack.template_variables();
    let message = json!({
        "saga": "origination", "saga_id": "APP9", "step": "no-such-step",
        "phase": "forward", "command": "pricing.quoted", "input": {}, "steps": {},
        "task_token": "token-from-no-execution",
    })
    .to_string();
    let attributes = Default::default();
    let record = Record {
        message_id: "m-1",
        body: &message,
        attributes: &attributes,
        receive_count: 1,
        receipt_handle: None,
        queue_arn: None,
    };

    // kfs runs saga steps: the message is read as a task and rejected for
    // its step, not as an invalid event.
    let kfs = underwrite_lambda::start::build_from(service("kfs"), &vars)
        .await
        .expect("kfs starts on AWS");
    let disposition = kfs.process(&record).await;
    assert_eq!(
        disposition,
        Disposition::DeadLettered {
            code: "unknown_step".into()
        }
    );

    // audit runs no step, so the same body is not an event it can read.
    let audit = underwrite_lambda::start::build_from(service("audit"), &vars)
        .await
        .expect("audit starts on AWS");
    let disposition = audit.process(&record).await;
    assert_eq!(
        disposition,
        Disposition::DeadLettered {
            code: "invalid_event".into()
        }
    );
}

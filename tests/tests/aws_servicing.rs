//! The servicing scenario over the AWS adapters on a moto server: SQS
//! queues with redrive policies, the DynamoDB store and S3. [`Poller`] acts
//! as Lambda's event source mapping in front of each function's batch loop.
//! The scenario's NPA report must equal the embedded runtime's byte for
//! byte. One moto server on 127.0.0.1 serves every test of this file, and
//! each test creates resources with names of its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use underwrite_audit::Audit;
use underwrite_aws::AwsBackend;
use underwrite_domain::{BusinessDate, ClassificationPolicy, ProductCatalog};
use underwrite_events::parse_input_line;
use underwrite_jobs::day_end::JobPolicy;
use underwrite_jobs::german_credit::{ConversionOptions, convert};
use underwrite_jobs::ledgers::{load_loans, npa_report_from_loans};
use underwrite_lambda::Function;
use underwrite_lambda::routes::SUBSCRIPTIONS;
use underwrite_mechanism::Mechanism;
use underwrite_npa::Npa;
use underwrite_runtime::ports::{Bus, Outbound, Routes};
use underwrite_runtime::record::RecordSettings;
use underwrite_runtime::{Service, Store, SystemClock};
use underwrite_tests::Harness;
use underwrite_tests::moto::{self, MotoServer, Stack};
use underwrite_tests::poller::{Mapping, Poller};

/// The services of the servicing scenario, in routing order.
const SERVICES: [&str; 3] = ["mechanism", "npa", "audit"];

/// The queues' `maxReceiveCount`, and the processor's, as in the embedded
/// harness.
const MAX_RECEIVES: u32 = 3;

/// The identity input events are published under.
const INGEST: &str = "ingest";

/// Every `STRIDE`-th applicant of the German credit example is kept.
const STRIDE: u32 = 25;

/// Returns the endpoint of the moto server every test of this file shares.
/// The watchdog in [`MotoServer`] stops it when the test process exits.
fn endpoint() -> &'static str {
    static EMULATOR: OnceLock<(Option<MotoServer>, String)> = OnceLock::new();
    &EMULATOR.get_or_init(moto::emulator).1
}

fn services() -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(Mechanism::new(ProductCatalog::default())),
        Arc::new(Npa::new(
            ClassificationPolicy::default(),
            ProductCatalog::default(),
        )),
        Arc::new(Audit),
    ]
}

/// Builds the routing table of the scenario's services from the deployed
/// functions' table.
fn routes() -> Routes {
    Routes::from_pairs(
        SUBSCRIPTIONS
            .iter()
            .copied()
            .filter(|(queue, _)| SERVICES.contains(queue)),
    )
}

/// The scenario's functions over one stack, each wired as its `main` wires
/// it, and the ingest identity's bus.
struct Deployment {
    stack: Stack,
    poller: Poller,
    ingest: AwsBackend,
}

async fn deploy(endpoint: &str) -> Deployment {
    let stack = Stack::create(endpoint, &SERVICES, MAX_RECEIVES).await;
    let settings = RecordSettings {
        max_receive_count: MAX_RECEIVES,
        ..RecordSettings::default()
    };
    let mut mappings = Vec::new();
    for service in services() {
        let backend = AwsBackend::with_clients(
            stack.clients.clone(),
            &stack.config,
            service.name(),
            routes(),
        );
        let queue_url = stack.queues[service.name()].clone();
        let queue_arn = Poller::queue_arn(&stack.clients.sqs, &queue_url).await;
        let function = Function::new(
            service,
            backend.store,
            backend.bus,
            Arc::new(SystemClock),
            None,
            settings,
        );
        mappings.push(Mapping {
            function,
            queue_url,
            queue_arn,
        });
    }
    let poller = Poller::new(stack.clients.sqs.clone(), &stack.config.region, mappings);
    let ingest = AwsBackend::with_clients(stack.clients.clone(), &stack.config, INGEST, routes());
    Deployment {
        stack,
        poller,
        ingest,
    }
}

impl Deployment {
    /// Publishes input lines as the ingest identity, in order.
    async fn publish(&self, lines: &[String]) {
        let events: Vec<Outbound> = lines
            .iter()
            .map(|line| {
                let event = parse_input_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
                Outbound::from_event(&event)
            })
            .collect();
        for chunk in events.chunks(500) {
            self.ingest.bus.publish(chunk).await.expect("publish input");
        }
    }

    /// Builds the DynamoDB store of one service, with the keys its function
    /// reads and writes.
    fn store(&self, service: &str) -> Arc<underwrite_aws::DynamoStore> {
        AwsBackend::with_clients(
            self.stack.clients.clone(),
            &self.stack.config,
            service,
            routes(),
        )
        .store
    }
}

/// Reads the applicant row of a German credit loan id (`GC-0032`, or
/// `GC-0032-2` for a second loan).
fn applicant_row(loan_id: &str) -> u32 {
    loan_id
        .strip_prefix("GC-")
        .and_then(|rest| rest.get(..4))
        .and_then(|row| row.parse().ok())
        .unwrap_or_else(|| panic!("{loan_id:?} is not a German credit loan id"))
}

/// The last business date of the scenario and its report's as-of date.
const AS_OF: &str = "2023-09-30";

/// Converts the bundled applicants into servicing input with the German
/// credit conversion (`convert`, default seed, as of 2023-09-30): lender-sent
/// disbursals from 2023-01-01 to the as-of date, repayments and day closes,
/// without the origination that `underwrite example german-credit` now runs
/// first. It keeps every 25th applicant with their loans, and every
/// `day.closed`.
///
/// NOTE: the whole example does not fit a test run on moto 5.2.5, whose
/// `TransactWriteItems` deep-copies each table it touches before applying
/// (`moto/dynamodb/models/__init__.py`), so time and memory grow with the
/// square of the events handled. The subset keeps good and bad payers,
/// second loans and every business date of nine months.
fn german_credit_subset() -> Vec<String> {
    let csv_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/german_credit/german_credit.csv");
    let csv = std::fs::read_to_string(&csv_path).expect("the bundled applicants");
    let defaults = ConversionOptions::default();
    let options = ConversionOptions {
        as_of: as_of(),
        last_disbursal: defaults.last_disbursal.min(as_of()),
        ..defaults
    };
    let conversion = convert(&csv, &options).expect("conversion");
    conversion
        .lines
        .into_iter()
        .filter(|line| {
            let event: Value = serde_json::from_str(line).expect("an input line is JSON");
            match event["payload"]["loan_id"].as_str() {
                None => event["type"] == "day.closed",
                Some(loan) => applicant_row(loan).is_multiple_of(STRIDE),
            }
        })
        .collect()
}

fn as_of() -> BusinessDate {
    AS_OF.parse().expect("a business date")
}

/// Writes the NPA report of the loans in `store` into `dir/report`, with the
/// lake in `dir/lake`; returns the report's files.
async fn report(store: &dyn Store, dir: &Path, name: &str) -> Vec<PathBuf> {
    let loans = load_loans(store).await.expect("loans from the store");
    let (summary, ledger_total) = npa_report_from_loans(
        &dir.join("lake"),
        &JobPolicy::default(),
        &loans,
        as_of(),
        &dir.join("report"),
        name,
        |_| {},
    )
    .expect("report");
    assert_eq!(
        summary.total_outstanding, ledger_total,
        "{name}: the report reconciles to the ledgers"
    );
    summary.files
}

/// The servicing scenario runs on the real German credit events over SQS,
/// DynamoDB and S3, and its NPA report equals the embedded runtime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn german_credit_report_matches_embedded() {
    let lines = german_credit_subset();
    let loans_in_input = lines
        .iter()
        .filter(|l| l.contains("loan.disbursed"))
        .count();
    assert!(loans_in_input >= 20, "{loans_in_input} loans in the subset");

    let embedded = Harness::with_services(services());
    embedded.publish(&lines);
    embedded.run().await;
    assert_eq!(embedded.store().dead_letter_count().unwrap(), 0);
    let embedded_dir = tempfile::tempdir().unwrap();
    let expected = report(embedded.store(), embedded_dir.path(), "embedded").await;

    let deployment = deploy(endpoint()).await;
    let started = Instant::now();
    deployment.publish(&lines).await;
    let summary = deployment
        .poller
        .run_until_idle(Duration::from_secs(600))
        .await;
    eprintln!(
        "{} input events: {summary:?} in {:.1} s",
        lines.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary.failed, 0, "no record failed: {summary:?}");
    let dead = deployment.ingest.bus.dead_letters(None).await.unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:?}");

    let aws_dir = tempfile::tempdir().unwrap();
    let mechanism = deployment.store("mechanism");
    let actual = report(mechanism.as_ref(), aws_dir.path(), "dynamodb").await;
    assert_eq!(expected.len(), 4);
    for (expected, actual) in expected.iter().zip(&actual) {
        let name = expected.file_name().unwrap().to_string_lossy();
        assert_eq!(actual.file_name(), expected.file_name());
        let (want, got) = (
            std::fs::read(expected).unwrap(),
            std::fs::read(actual).unwrap(),
        );
        assert!(want.len() > 100, "{name} has content");
        assert!(
            want == got,
            "{name} differs between the embedded and the AWS run"
        );
    }
}

/// Returns the audit ledger's event ids, in ledger order.
async fn audited_ids(deployment: &Deployment) -> Vec<String> {
    let audit = deployment.store("audit");
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = audit
            .scan(underwrite_audit::ENTRY_PREFIX, after.as_deref(), 100)
            .await
            .expect("scan the audit ledger");
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, read) in page {
            let entry: underwrite_audit::Entry = read.parse(&key).expect("an audit entry");
            ids.push(entry.event.id.to_string());
        }
    }
    ids
}

/// Index of a service's mapping in the poller.
fn mapping(service: &str) -> usize {
    SERVICES
        .iter()
        .position(|s| *s == service)
        .expect("a scenario service")
}

/// A repayment that arrives before its loan is dead-lettered with its
/// reason after the queue's receive limit. Replayed once the disbursal is
/// in, it is handled once. The same message delivered twice, by a producer
/// retry or after a lost delete, changes the state once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_replay_and_duplicates() {
    let deployment = deploy(endpoint()).await;
    let disbursal = underwrite_tests::disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-02-01",
        "2024-03-01",
    );
    let repayment = underwrite_tests::repayment("P1", "L1", "8884.88", "2024-03-01", "2024-03-01");
    deployment.publish(std::slice::from_ref(&repayment)).await;
    let no_attributes = Default::default();
    deployment
        .ingest
        .bus
        .send("mechanism", "{\"id\": \"broken", &no_attributes)
        .await
        .unwrap();
    deployment
        .poller
        .run_until_idle(Duration::from_secs(60))
        .await;

    let dead = deployment
        .ingest
        .bus
        .dead_letters(Some("mechanism"))
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let early = dead
        .iter()
        .find(|letter| letter.body == parse_body(&repayment))
        .expect("the early repayment is a dead letter");
    assert_eq!(early.reason.error_code, "loan_not_found");
    assert_eq!(early.reason.error_kind, "retries_exhausted");
    assert_eq!(early.reason.receive_count, MAX_RECEIVES);
    assert_eq!(early.attributes["event_type"], "repayment.received");
    let broken = dead
        .iter()
        .find(|letter| letter.body.contains("broken"))
        .expect("the malformed message is a dead letter");
    assert_eq!(broken.reason.error_code, "invalid_event");
    assert_eq!(broken.reason.error_kind, "permanent");
    assert_eq!(broken.reason.receive_count, 1, "dead-lettered at once");
    let mechanism = deployment.store("mechanism");
    let key = underwrite_mechanism::loan_key("L1");
    assert_eq!(mechanism.get(&key).await.unwrap(), None);

    // The disbursal arrives; the dead letters go back to their queues.
    deployment.publish(std::slice::from_ref(&disbursal)).await;
    deployment
        .poller
        .run_until_idle(Duration::from_secs(60))
        .await;
    let replayed = deployment.ingest.bus.replay(None, None).await.unwrap();
    assert!(replayed.moved >= 2, "{replayed:?}");
    assert_eq!(
        deployment.ingest.bus.dead_letters(None).await.unwrap(),
        Vec::new(),
        "every dead letter was moved"
    );
    deployment
        .poller
        .run_until_idle(Duration::from_secs(60))
        .await;
    let dead = deployment.ingest.bus.dead_letters(None).await.unwrap();
    assert_eq!(
        dead.len(),
        1,
        "only the malformed message is back: {dead:?}"
    );
    assert_eq!(dead[0].reason.error_code, "invalid_event");
    let after_replay = mechanism.get(&key).await.unwrap().expect("the loan");
    assert_eq!(after_replay.version, 2, "disbursal and one repayment");
    let audited = audited_ids(&deployment).await;
    assert_eq!(audited, ["pay-P1", "disb-L1"], "each input audited once");

    // A producer retry: the same event sent again as a new message.
    deployment.publish(std::slice::from_ref(&repayment)).await;
    deployment
        .poller
        .run_until_idle(Duration::from_secs(60))
        .await;
    // A lost delete: the mechanism handles the message, the delete never
    // happens, and SQS delivers it again after the visibility timeout.
    deployment.publish(std::slice::from_ref(&repayment)).await;
    let mut summary = Default::default();
    let received = deployment
        .poller
        .poll_once(mapping("mechanism"), false, &mut summary)
        .await;
    assert_eq!(received, 1);
    let redelivery = deployment
        .poller
        .run_until_idle(Duration::from_secs(60))
        .await;
    assert!(redelivery.records >= 3, "{redelivery:?}");
    assert_eq!(redelivery.failed, 0, "{redelivery:?}");

    let read = mechanism.get(&key).await.unwrap().expect("the loan");
    assert_eq!(read.version, 2, "the duplicates changed nothing");
    assert_eq!(read.json, after_replay.json);
    assert_eq!(audited_ids(&deployment).await, ["pay-P1", "disb-L1"]);
    assert_eq!(
        deployment
            .ingest
            .bus
            .dead_letters(None)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Returns the message body of an input line: the event as the bus
/// publishes it.
fn parse_body(line: &str) -> String {
    Outbound::from_event(&parse_input_line(line).unwrap()).body
}

/// The mechanism function starts from the template's variables with
/// `UNDERWRITE_BACKEND=aws`: its SDK clients point at the emulator, its key
/// and the keyring come from Secrets Manager, and an SQS batch is handled
/// end to end. Missing or invalid settings stop it at start-up with the
/// variable named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_starts_on_aws_backend() {
    use underwrite_identity::{Authority, INGEST_IDENTITY, KeyDir, Policy};
    use underwrite_lambda::start::{
        KEYRING_SECRET_VARIABLE, SIGNING_KEY_SECRET_VARIABLE, build_from,
    };

    let names: Vec<&str> = SUBSCRIPTIONS.iter().map(|(name, _)| *name).collect();
    let stack = Stack::create(endpoint(), &names, MAX_RECEIVES).await;
    let keys = tempfile::tempdir().unwrap();
    let key_dir = KeyDir::new(keys.path());
    key_dir.ensure().unwrap();
    let mechanism_key = key_dir.create_identity("mechanism", false).unwrap();
    key_dir.create_identity(INGEST_IDENTITY, false).unwrap();
    let policy = Policy::from_pairs([
        (
            INGEST_IDENTITY,
            &["loan.disbursed", "repayment.received"][..],
        ),
        ("mechanism", &[][..]),
    ]);
    policy.save(&key_dir.policy_path()).unwrap();
    let stage = stack.config.queue_prefix.trim_end_matches('-');
    let key_secret = format!("{stage}/identity/mechanism");
    let keyring_secret = format!("{stage}/keyring");
    let key_text = std::fs::read_to_string(key_dir.key_path("mechanism")).unwrap();
    stack.put_secret(&key_secret, &key_text).await;
    let keyring: Value =
        serde_json::from_str(&std::fs::read_to_string(key_dir.keyring_path()).unwrap()).unwrap();
    let bundle = serde_json::json!({"keyring": keyring, "policy": policy});
    stack.put_secret(&keyring_secret, &bundle.to_string()).await;

    let mut vars = stack.template_variables();
    vars.insert(SIGNING_KEY_SECRET_VARIABLE.into(), key_secret.clone());
    vars.insert(KEYRING_SECRET_VARIABLE.into(), keyring_secret.clone());
    let mechanism = || -> Arc<dyn Service> { Arc::new(Mechanism::new(ProductCatalog::default())) };
    let function = build_from(mechanism(), &vars)
        .await
        .expect("the function starts");

    // Input signed at the edge, and one event signed by no one.
    let ingest = Authority::load(&key_dir, &[INGEST_IDENTITY], false, &policy).unwrap();
    let mut disbursal = parse_input_line(&underwrite_tests::disbursal(
        "L9",
        "B9",
        "50000.00",
        "12.00",
        6,
        "2024-02-01",
        "2024-03-01",
    ))
    .unwrap();
    ingest.sign(INGEST_IDENTITY, &mut disbursal).unwrap();
    let unsigned = parse_input_line(&underwrite_tests::repayment(
        "P9",
        "L9",
        "1000.00",
        "2024-03-01",
        "2024-03-01",
    ))
    .unwrap();
    let publisher = AwsBackend::with_clients(
        stack.clients.clone(),
        &stack.config,
        INGEST_IDENTITY,
        underwrite_lambda::routes::routes(),
    );
    publisher
        .bus
        .publish(&[
            Outbound::from_event(&disbursal),
            Outbound::from_event(&unsigned),
        ])
        .await
        .unwrap();
    let queue_url = stack.queues["mechanism"].clone();
    let queue_arn = Poller::queue_arn(&stack.clients.sqs, &queue_url).await;
    let poller = Poller::new(
        stack.clients.sqs.clone(),
        &stack.config.region,
        vec![Mapping {
            function,
            queue_url,
            queue_arn,
        }],
    );
    let summary = poller.run_until_idle(Duration::from_secs(60)).await;
    assert_eq!(summary.records, 2, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    let store =
        AwsBackend::with_clients(stack.clients.clone(), &stack.config, "mechanism", routes()).store;
    let loan = store
        .get(&underwrite_mechanism::loan_key("L9"))
        .await
        .unwrap()
        .expect("the signed disbursal was handled");
    assert_eq!(loan.version, 1, "the unsigned repayment changed nothing");
    let dead = publisher.bus.dead_letters(Some("mechanism")).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason.error_code, "authz_unsigned");

    // Settings that cannot work stop the start-up, naming the variable.
    let mut no_bucket = vars.clone();
    no_bucket.remove("UNDERWRITE_BUCKET");
    let error = build_from(mechanism(), &no_bucket)
        .await
        .err()
        .expect("no bucket");
    assert!(error.contains("UNDERWRITE_BUCKET"), "{error}");
    let mut missing_secret = vars.clone();
    missing_secret.insert(
        SIGNING_KEY_SECRET_VARIABLE.into(),
        format!("{stage}/identity/none"),
    );
    let error = build_from(mechanism(), &missing_secret)
        .await
        .err()
        .expect("no key");
    assert!(error.contains(SIGNING_KEY_SECRET_VARIABLE), "{error}");
    assert!(error.contains("create-secret"), "{error}");
    let mut one_secret = vars.clone();
    one_secret.remove(KEYRING_SECRET_VARIABLE);
    let error = build_from(mechanism(), &one_secret)
        .await
        .err()
        .expect("no keyring");
    assert!(error.contains(KEYRING_SECRET_VARIABLE), "{error}");
    let npa: Arc<dyn Service> = Arc::new(Npa::new(
        ClassificationPolicy::default(),
        ProductCatalog::default(),
    ));
    let error = build_from(npa, &vars)
        .await
        .err()
        .expect("another service's key");
    assert!(error.contains("\"mechanism\""), "{error}");
    assert_eq!(mechanism_key.name(), "mechanism");
}

//! The adapter contract suite (`underwrite_tests::contract`) against the
//! embedded SQLite adapters and the AWS adapters over the moto emulator
//! (started per test on 127.0.0.1; `UNDERWRITE_TEST_AWS_ENDPOINT` points the
//! tests at a running one instead).

use std::sync::Arc;

use underwrite_aws::{AwsBackend, AwsClients, AwsConfig};
use underwrite_runtime::ports::{Bus, DirSecrets, PortError, Routes};
use underwrite_runtime::{SqliteBus, SqliteStore};
use underwrite_tests::contract::{self, Backends, CLAIM_CHECK_BYTES, MAX_RECEIVES};
use underwrite_tests::moto::{self, MotoServer, Stack};

/// Embedded backends over a fresh SQLite file, with the contract's secret
/// in a key folder beside it.
fn embedded() -> (tempfile::TempDir, Backends) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let store = Arc::new(SqliteStore::open(dir.path().join("underwrite.db")).expect("store"));
    let bus = SqliteBus::new(store.clone(), contract::routes())
        .with_claim_check_bytes(CLAIM_CHECK_BYTES)
        .with_max_receive_count(MAX_RECEIVES)
        .with_owner("ledger");
    let secrets = dir.path().join("secrets");
    let path = secrets.join(contract::SECRET_NAME);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contract::SECRET_TEXT).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let backends = Backends {
        name: "embedded",
        effects: store.clone(),
        bus: Arc::new(bus),
        objects: store,
        secrets: Arc::new(DirSecrets::new(secrets)),
        visibility_ms: 300,
    };
    (dir, backends)
}

macro_rules! embedded_scenarios {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (_dir, backends) = super::embedded();
                    underwrite_tests::contract::$scenario(&backends).await;
                }
            )*
        }
    };
}

embedded_scenarios!(
    idempotency,
    conditional_writes,
    wide_commit,
    queue_semantics,
    record_processing,
    dead_letter_replay,
    claim_check,
    objects,
    secrets,
    bad_input,
);

/// AWS backends over a fresh stack in a moto server of the test's own.
async fn aws() -> (Option<MotoServer>, Stack, Backends) {
    let (server, endpoint) = moto::emulator();
    let mut stack = Stack::create(&endpoint, &["ledger", "sink"], MAX_RECEIVES).await;
    stack.config.claim_check_bytes = CLAIM_CHECK_BYTES;
    stack
        .put_secret(contract::SECRET_NAME, contract::SECRET_TEXT)
        .await;
    let backend = AwsBackend::with_clients(
        stack.clients.clone(),
        &stack.config,
        "ledger",
        contract::routes(),
    );
    let backends = Backends {
        name: "aws",
        effects: backend.store,
        bus: backend.bus,
        objects: backend.objects,
        secrets: backend.secrets,
        // SQS counts visibility timeouts in whole seconds.
        visibility_ms: 1_000,
    };
    (server, stack, backends)
}

macro_rules! aws_scenarios {
    ($($scenario:ident),* $(,)?) => {
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (_server, _stack, backends) = super::aws().await;
                    underwrite_tests::contract::$scenario(&backends).await;
                }
            )*
        }
    };
}

aws_scenarios!(
    idempotency,
    conditional_writes,
    wide_commit,
    queue_semantics,
    record_processing,
    dead_letter_replay,
    claim_check,
    objects,
    secrets,
    bad_input,
);

/// A queue the routes name but SQS does not have, and settings that cannot
/// work, fail with errors that name the value and the fix.
#[tokio::test]
async fn aws_missing_queue_and_invalid_config() {
    let (_server, endpoint) = moto::emulator();
    let stack = Stack::create(&endpoint, &["ledger"], MAX_RECEIVES).await;
    let mut config = stack.config.clone();
    config.queues.clear();
    let routes = Routes::from_pairs([("ledger", &["day.closed"][..]), ("ghost", &["*"][..])]);
    let backend = AwsBackend::with_clients(stack.clients.clone(), &config, "ledger", routes);
    let error = backend
        .bus
        .send("ghost", "{}", &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(error, PortError::UnknownQueue { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("ghost") && text.contains("aws.queue"),
        "{text}"
    );
    // The ledger queue is found by its prefixed name.
    backend
        .bus
        .send("ledger", "{}", &Default::default())
        .await
        .expect("found by prefix");

    let bad = AwsConfig {
        endpoint_url: "localhost:4566".into(),
        ..stack.config.clone()
    };
    let error = AwsClients::new(&bad).await.unwrap_err();
    assert_eq!(error.key, "aws.endpoint_url");
    assert!(error.to_string().contains("http://"), "{error}");
    let bad = AwsConfig {
        bucket: String::new(),
        ..stack.config.clone()
    };
    let error = AwsBackend::connect(&bad, "ledger", contract::routes())
        .await
        .err()
        .expect("a missing bucket is refused");
    assert_eq!(error.key, "aws.bucket");
}

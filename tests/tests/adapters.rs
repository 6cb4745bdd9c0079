//! The adapter contract suite (`underwrite_tests::contract`) against the
//! embedded SQLite adapters.

use std::sync::Arc;

use underwrite_runtime::ports::DirSecrets;
use underwrite_runtime::{SqliteBus, SqliteStore};
use underwrite_tests::contract::{self, Backends, CLAIM_CHECK_BYTES, MAX_RECEIVES};

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

//! Cold start: logging, the service's settings, the backend's clients and
//! the signing keys, built once and then shared by every invocation.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tracing::info;
use underwrite_identity::{Authority, KeyDir, Policy};
use underwrite_runtime::ports::{Bus, EffectStore};
use underwrite_runtime::record::RecordSettings;
use underwrite_runtime::{Service, SqliteBus, SqliteStore, SystemClock};

use crate::batch::BatchSettings;
use crate::function::Function;
use crate::routes::routes;

/// Variable naming the backend: `aws` or `embedded`.
pub const BACKEND_VARIABLE: &str = "UNDERWRITE_BACKEND";
/// Variable holding the SQLite file of the embedded backend.
pub const DB_VARIABLE: &str = "UNDERWRITE_DB";
/// Variable holding the path of a JSON settings file in the
/// `underwrite.json` format.
pub const CONFIG_VARIABLE: &str = "UNDERWRITE_CONFIG";
/// Variable holding the folder of key files, keyring and policy that the
/// embedded backend signs and verifies with.
pub const KEY_DIR_VARIABLE: &str = "UNDERWRITE_KEY_DIR";
/// Variable holding the queue's `maxReceiveCount`.
pub const MAX_RECEIVE_COUNT_VARIABLE: &str = "UNDERWRITE_MAX_RECEIVE_COUNT";

/// Reads the service's settings from the JSON file named by
/// `UNDERWRITE_CONFIG`, or returns the defaults when it is unset. Keys
/// other services use are ignored; a key this service reads must have the
/// right form.
pub fn settings<T: DeserializeOwned + Default>() -> Result<T, String> {
    settings_from(std::env::var(CONFIG_VARIABLE).ok().as_deref())
}

fn settings_from<T: DeserializeOwned + Default>(path: Option<&str>) -> Result<T, String> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("failed to read {CONFIG_VARIABLE} file {path:?}: {error}"))?;
    serde_json::from_str(&text).map_err(|error| {
        format!(
            "invalid {CONFIG_VARIABLE} file {path:?}: {error}; `underwrite init` writes a valid one"
        )
    })
}

/// The backend selected by `UNDERWRITE_BACKEND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// One SQLite file, for local runs under `cargo lambda watch`.
    Embedded {
        /// The SQLite file.
        db: PathBuf,
    },
}

impl BackendChoice {
    /// Reads the choice from the environment; the error names the variable,
    /// the value and the allowed values.
    pub fn from_env() -> Result<Self, String> {
        BackendChoice::from_values(
            std::env::var(BACKEND_VARIABLE).ok().as_deref(),
            std::env::var(DB_VARIABLE).ok().as_deref(),
        )
    }

    fn from_values(backend: Option<&str>, db: Option<&str>) -> Result<Self, String> {
        match (backend, db) {
            (Some("embedded"), Some(db)) if !db.is_empty() => {
                Ok(BackendChoice::Embedded { db: db.into() })
            }
            (Some("embedded"), _) => Err(format!(
                "{BACKEND_VARIABLE} is embedded but {DB_VARIABLE} is not set: set it to the SQLite file, such as /tmp/underwrite.db"
            )),
            (Some(other), _) => Err(format!(
                "invalid {BACKEND_VARIABLE} {other:?}: the allowed value is embedded"
            )),
            (None, _) => Err(format!(
                "{BACKEND_VARIABLE} is not set: the allowed value is embedded"
            )),
        }
    }
}

fn max_receive_count() -> Result<u32, String> {
    match std::env::var(MAX_RECEIVE_COUNT_VARIABLE) {
        Err(_) => Ok(RecordSettings::default().max_receive_count),
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(count) if (1..=1000).contains(&count) => Ok(count),
            _ => Err(format!(
                "invalid {MAX_RECEIVE_COUNT_VARIABLE} {text:?}: allowed values are 1 to 1000, the queue's maxReceiveCount"
            )),
        },
    }
}

/// Loads the signing keys from `UNDERWRITE_KEY_DIR`, if set: the service's
/// own key, the keyring of every identity and the emit policy, none
/// created.
fn authority(service: &str) -> Result<Option<Arc<Authority>>, String> {
    let Ok(dir) = std::env::var(KEY_DIR_VARIABLE) else {
        info!(
            service,
            "Event signing is off: {KEY_DIR_VARIABLE} is not set."
        );
        return Ok(None);
    };
    let authority = Authority::load(
        &KeyDir::new(&dir),
        &[service],
        false,
        &Policy::from_pairs([]),
    )
    .map_err(|error| {
        format!("failed to load the keys of {service} from {KEY_DIR_VARIABLE} {dir:?}: {error}")
    })?;
    Ok(Some(Arc::new(authority)))
}

/// The clients of one backend and the signing keys, built once per cold
/// start.
pub struct Backend {
    /// State and idempotency records.
    pub effects: Arc<dyn EffectStore>,
    /// Queues, dead letters and claim checks.
    pub bus: Arc<dyn Bus>,
    /// Signing and verification, when keys are configured.
    pub authority: Option<Arc<Authority>>,
    /// Idempotency leases and the queue's `maxReceiveCount`.
    pub settings: RecordSettings,
}

/// Builds the backend for `identity` (a service name, or the ingest
/// identity for the day-end function) from the environment.
pub async fn backend(identity: &str) -> Result<Backend, String> {
    let choice = BackendChoice::from_env()?;
    let settings = RecordSettings {
        max_receive_count: max_receive_count()?,
        ..RecordSettings::default()
    };
    let authority = authority(identity)?;
    let (effects, bus): (Arc<dyn EffectStore>, Arc<dyn Bus>) = match choice {
        BackendChoice::Embedded { db } => {
            let store = Arc::new(SqliteStore::open(&db).map_err(|error| {
                format!("failed to open {DB_VARIABLE} {}: {error}", db.display())
            })?);
            let bus = SqliteBus::new(store.clone(), routes())
                .with_owner(identity)
                .with_max_receive_count(settings.max_receive_count);
            (store, Arc::new(bus))
        }
    };
    Ok(Backend {
        effects,
        bus,
        authority,
        settings,
    })
}

/// Builds the function for `service` from the environment.
pub async fn build(service: Arc<dyn Service>) -> Result<Function, String> {
    let backend = backend(service.name()).await?;
    Ok(Function::new(
        service,
        backend.effects,
        backend.bus,
        Arc::new(SystemClock),
        backend.authority,
        backend.settings,
    ))
}

/// Runs a service as a Lambda function: installs logging, builds the
/// service with `make` and the function from the environment once, then
/// answers SQS batches until the process is stopped. A configuration error
/// is logged and ends the process before the first batch; Lambda reports it
/// as an initialisation error.
pub async fn serve<F>(make: F) -> Result<(), lambda_runtime::Error>
where
    F: FnOnce() -> Result<Arc<dyn Service>, String>,
{
    let _logs = underwrite_telemetry::init_from_env()?;
    let started = async {
        let batch = BatchSettings::from_env()?;
        let function = build(make()?).await?;
        Ok::<_, String>((batch, function))
    }
    .await;
    let (batch, function) = match started {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(error_code = "invalid_config", %error, "The function cannot start.");
            return Err(error.into());
        }
    };
    let name = function.name();
    info!(service = name, "Started the function.");
    crate::run(name, Arc::new(function), batch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct Settings {
        grace_days: u32,
    }

    #[test]
    fn settings_default_without_file() {
        assert_eq!(settings_from::<Settings>(None), Ok(Settings::default()));
    }

    #[test]
    fn settings_ignore_other_keys() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), r#"{"grace_days": 3, "products": {}}"#).unwrap();
        let read: Settings = settings_from(file.path().to_str()).unwrap();
        assert_eq!(read.grace_days, 3);
    }

    #[test]
    fn settings_reject_wrong_type() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), r#"{"grace_days": "three"}"#).unwrap();
        let error = settings_from::<Settings>(file.path().to_str()).unwrap_err();
        assert!(error.contains(CONFIG_VARIABLE), "{error}");
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn backend_choice_names_fix() {
        assert_eq!(
            BackendChoice::from_values(Some("embedded"), Some("/tmp/u.db")),
            Ok(BackendChoice::Embedded {
                db: "/tmp/u.db".into()
            })
        );
        let missing_db = BackendChoice::from_values(Some("embedded"), None).unwrap_err();
        assert!(missing_db.contains(DB_VARIABLE), "{missing_db}");
        let unknown = BackendChoice::from_values(Some("dynamo"), None).unwrap_err();
        assert!(unknown.contains("\"dynamo\""), "{unknown}");
        let unset = BackendChoice::from_values(None, None).unwrap_err();
        assert!(unset.contains("not set"), "{unset}");
    }
}

//! Cold start: logging, the service's settings, the backend's clients and
//! the signing keys, built once and then shared by every invocation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tracing::info;
use underwrite_aws::{AwsBackend, AwsConfig, StepFunctionsTasks};
use underwrite_identity::{Authority, Identity, KeyDir, Keyring, Policy};
use underwrite_runtime::ports::{Bus, EffectStore, SecretSource};
use underwrite_runtime::record::RecordSettings;
use underwrite_runtime::{Service, SqliteBus, SqliteStore, SystemClock};

use crate::batch::BatchSettings;
use crate::function::Function;
use crate::routes::{SUBSCRIPTIONS, routes};
use crate::saga_task::SagaTasks;

/// Environment variables by name.
pub type Vars = BTreeMap<String, String>;

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
/// Variable naming the Secrets Manager secret that contains the function's
/// signing key (the key file `underwrite identity <service>` writes).
pub const SIGNING_KEY_SECRET_VARIABLE: &str = "UNDERWRITE_SIGNING_KEY_SECRET";
/// Variable naming the Secrets Manager secret that contains the keyring and
/// the emit policy as `{"keyring": ..., "policy": ...}`.
pub const KEYRING_SECRET_VARIABLE: &str = "UNDERWRITE_KEYRING_SECRET";

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
    /// DynamoDB, SQS, S3 and Secrets Manager, as the SAM template deploys
    /// them.
    Aws {
        /// Tables, bucket and queues from the template's variables.
        config: Box<AwsConfig>,
    },
}

/// The allowed values of `UNDERWRITE_BACKEND`, for error messages.
const BACKENDS: &str = "aws (the SAM template's setting) or embedded";

impl BackendChoice {
    /// Reads the choice from the environment; the error names the variable,
    /// the value and the allowed values.
    pub fn from_env() -> Result<Self, String> {
        BackendChoice::from_vars(&std::env::vars().collect())
    }

    /// [`BackendChoice::from_env`] over the given variables.
    pub fn from_vars(vars: &Vars) -> Result<Self, String> {
        let get = |name: &str| vars.get(name).map(String::as_str);
        match (get(BACKEND_VARIABLE), get(DB_VARIABLE)) {
            (Some("aws"), _) => {
                let config = AwsConfig::from_vars(vars.clone())
                    .map_err(|error| format!("{BACKEND_VARIABLE} is aws but {error}"))?;
                Ok(BackendChoice::Aws {
                    config: Box::new(config),
                })
            }
            (Some("embedded"), Some(db)) if !db.is_empty() => {
                Ok(BackendChoice::Embedded { db: db.into() })
            }
            (Some("embedded"), _) => Err(format!(
                "{BACKEND_VARIABLE} is embedded but {DB_VARIABLE} is not set: set it to the SQLite file, such as /tmp/underwrite.db"
            )),
            (Some(other), _) => Err(format!(
                "invalid {BACKEND_VARIABLE} {other:?}: the allowed values are {BACKENDS}"
            )),
            (None, _) => Err(format!(
                "{BACKEND_VARIABLE} is not set: the allowed values are {BACKENDS}"
            )),
        }
    }
}

fn max_receive_count(vars: &Vars) -> Result<u32, String> {
    match vars.get(MAX_RECEIVE_COUNT_VARIABLE) {
        None => Ok(RecordSettings::default().max_receive_count),
        Some(text) => match text.trim().parse::<u32>() {
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
fn authority(service: &str, vars: &Vars) -> Result<Option<Arc<Authority>>, String> {
    let Some(dir) = vars.get(KEY_DIR_VARIABLE) else {
        info!(
            service,
            "Event signing is off: {KEY_DIR_VARIABLE} is not set."
        );
        return Ok(None);
    };
    let authority = Authority::load(
        &KeyDir::new(dir),
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
    /// The origination saga's steps that Step Functions sends to this
    /// function, on AWS when the function runs one of its steps.
    pub tasks: Option<Arc<SagaTasks>>,
}

/// Builds the backend for `identity` (a service name, or the ingest
/// identity for the day-end function) from the environment. On AWS the SDK
/// clients are built here, once per cold start, and the signing keys are
/// read from Secrets Manager.
pub async fn backend(identity: &str) -> Result<Backend, String> {
    backend_from(identity, &std::env::vars().collect()).await
}

/// [`backend`] over the given variables in place of the environment.
pub async fn backend_from(identity: &str, vars: &Vars) -> Result<Backend, String> {
    let choice = BackendChoice::from_vars(vars)?;
    let settings = RecordSettings {
        max_receive_count: max_receive_count(vars)?,
        ..RecordSettings::default()
    };
    match choice {
        BackendChoice::Embedded { db } => {
            let authority = authority(identity, vars)?;
            let store = Arc::new(SqliteStore::open(&db).map_err(|error| {
                format!("failed to open {DB_VARIABLE} {}: {error}", db.display())
            })?);
            let bus = SqliteBus::new(store.clone(), routes())
                .with_owner(identity)
                .with_max_receive_count(settings.max_receive_count);
            Ok(Backend {
                effects: store,
                bus: Arc::new(bus),
                authority,
                settings,
                tasks: None,
            })
        }
        BackendChoice::Aws { config } => {
            // On AWS the origination saga runs on Step Functions, which
            // sends each step's command to its service. So the routing table
            // leaves those pairs out, as the embedded runtime does while a
            // saga runner is attached.
            let definition = underwrite_saga::origination();
            let aws = AwsBackend::connect(
                &config,
                identity,
                SagaTasks::routes(&definition, SUBSCRIPTIONS),
            )
            .await
            .map_err(|error| error.to_string())?;
            let tasks = definition.services().contains(&identity).then(|| {
                let answers = StepFunctionsTasks::new(aws.clients.sfn.clone());
                Arc::new(SagaTasks::new(definition, Arc::new(answers)))
            });
            let secrets = SigningSecrets::from_vars(vars)?;
            let authority = match secrets {
                Some(secrets) => Some(Arc::new(
                    secrets.load(aws.secrets.as_ref(), identity).await?,
                )),
                None => {
                    info!(
                        identity,
                        "Event signing is off: {SIGNING_KEY_SECRET_VARIABLE} and {KEYRING_SECRET_VARIABLE} are not set."
                    );
                    None
                }
            };
            Ok(Backend {
                effects: aws.store,
                bus: aws.bus,
                authority,
                settings,
                tasks,
            })
        }
    }
}

/// The Secrets Manager secrets a function on AWS signs and verifies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    /// The secret that contains the function's key file.
    pub signing_key: String,
    /// The secret that contains `{"keyring": ..., "policy": ...}`.
    pub keyring: String,
}

impl SigningSecrets {
    /// Reads `UNDERWRITE_SIGNING_KEY_SECRET` and `UNDERWRITE_KEYRING_SECRET`
    /// from `vars`:
    /// both set turns signing on, neither leaves it off, and one alone is an
    /// error naming the other.
    pub fn from_vars(vars: &Vars) -> Result<Option<Self>, String> {
        let read = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
        match (
            read(SIGNING_KEY_SECRET_VARIABLE),
            read(KEYRING_SECRET_VARIABLE),
        ) {
            (Some(signing_key), Some(keyring)) => Ok(Some(SigningSecrets {
                signing_key,
                keyring,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(format!(
                "{SIGNING_KEY_SECRET_VARIABLE} is set but {KEYRING_SECRET_VARIABLE} is not: set it to the keyring secret, such as underwrite/dev/keyring, or unset both to turn signing off"
            )),
            (None, Some(_)) => Err(format!(
                "{KEYRING_SECRET_VARIABLE} is set but {SIGNING_KEY_SECRET_VARIABLE} is not: set it to the function's key secret, such as underwrite/dev/identity/npa, or unset both to turn signing off"
            )),
        }
    }

    /// Reads the key of `identity` and the keyring from `secrets` and builds
    /// the authority. The key file must belong to `identity`.
    pub async fn load(
        &self,
        secrets: &dyn SecretSource,
        identity: &str,
    ) -> Result<Authority, String> {
        let key_text = secrets
            .secret(&self.signing_key)
            .await
            .map_err(|error| format!("{SIGNING_KEY_SECRET_VARIABLE}: {error}"))?;
        let key_source = PathBuf::from(&self.signing_key);
        let key = Identity::from_key_text(&key_text, &key_source)
            .map_err(|error| format!("{SIGNING_KEY_SECRET_VARIABLE}: {error}"))?;
        if key.name() != identity {
            return Err(format!(
                "{SIGNING_KEY_SECRET_VARIABLE} {:?} holds the key of {:?}, not of {identity:?}: store the key file `underwrite identity {identity}` writes",
                self.signing_key,
                key.name()
            ));
        }
        let bundle_text = secrets
            .secret(&self.keyring)
            .await
            .map_err(|error| format!("{KEYRING_SECRET_VARIABLE}: {error}"))?;
        let (keyring, policy) = parse_keyring_bundle(&bundle_text, &self.keyring)?;
        Authority::from_parts(
            vec![key],
            &keyring,
            PathBuf::from(&self.keyring),
            policy,
            PathBuf::from(&self.keyring),
        )
        .map_err(|error| format!("{KEYRING_SECRET_VARIABLE}: {error}"))
    }
}

/// Parses the keyring secret: `{"keyring": <keys/keyring.json>, "policy":
/// <keys/policy.json>}`.
fn parse_keyring_bundle(text: &str, secret: &str) -> Result<(Keyring, Policy), String> {
    let source = PathBuf::from(secret);
    let invalid = |reason: String| {
        format!(
            "invalid {KEYRING_SECRET_VARIABLE} secret {secret:?}: {reason}; store {{\"keyring\": <keys/keyring.json>, \"policy\": <keys/policy.json>}}"
        )
    };
    let bundle: serde_json::Value =
        serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let part = |name: &str| {
        bundle
            .get(name)
            .map(|value| value.to_string())
            .ok_or_else(|| invalid(format!("no {name:?} member")))
    };
    let keyring = Keyring::from_text(&part("keyring")?, &source)
        .map_err(|error| format!("{KEYRING_SECRET_VARIABLE}: {error}"))?;
    let policy = Policy::from_text(&part("policy")?, &source)
        .map_err(|error| format!("{KEYRING_SECRET_VARIABLE}: {error}"))?;
    Ok((keyring, policy))
}

/// Builds the function for `service` from the environment.
pub async fn build(service: Arc<dyn Service>) -> Result<Function, String> {
    build_from(service, &std::env::vars().collect()).await
}

/// [`build`] over the given variables in place of the environment.
pub async fn build_from(service: Arc<dyn Service>, vars: &Vars) -> Result<Function, String> {
    let backend = backend_from(service.name(), vars).await?;
    let function = Function::new(
        service,
        backend.effects,
        backend.bus,
        Arc::new(SystemClock),
        backend.authority,
        backend.settings,
    );
    Ok(match backend.tasks {
        Some(tasks) => function.with_saga_tasks(tasks),
        None => function,
    })
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

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn backend_choice_names_fix() {
        assert_eq!(
            BackendChoice::from_vars(&vars(&[
                ("UNDERWRITE_BACKEND", "embedded"),
                ("UNDERWRITE_DB", "/tmp/u.db")
            ])),
            Ok(BackendChoice::Embedded {
                db: "/tmp/u.db".into()
            })
        );
        let missing_db =
            BackendChoice::from_vars(&vars(&[("UNDERWRITE_BACKEND", "embedded")])).unwrap_err();
        assert!(missing_db.contains(DB_VARIABLE), "{missing_db}");
        let unknown =
            BackendChoice::from_vars(&vars(&[("UNDERWRITE_BACKEND", "dynamo")])).unwrap_err();
        assert!(unknown.contains("\"dynamo\""), "{unknown}");
        assert!(unknown.contains("aws"), "{unknown}");
        let unset = BackendChoice::from_vars(&vars(&[])).unwrap_err();
        assert!(unset.contains("not set"), "{unset}");
    }

    #[test]
    fn aws_choice_reads_template_variables() {
        let choice = BackendChoice::from_vars(&vars(&[
            ("UNDERWRITE_BACKEND", "aws"),
            ("UNDERWRITE_STATE_TABLE", "underwrite-prod-state"),
            (
                "UNDERWRITE_IDEMPOTENCY_TABLE",
                "underwrite-prod-idempotency",
            ),
            ("UNDERWRITE_BUCKET", "underwrite-prod-data"),
            ("UNDERWRITE_QUEUE_PREFIX", "underwrite-prod-"),
            ("AWS_REGION", "ap-south-1"),
        ]))
        .unwrap();
        let BackendChoice::Aws { config } = choice else {
            panic!("{choice:?} is not the AWS backend");
        };
        assert_eq!(config.state_table, "underwrite-prod-state");
        assert_eq!(config.bucket, "underwrite-prod-data");
        assert_eq!(config.queue_prefix, "underwrite-prod-");
    }

    #[test]
    fn aws_choice_names_missing_bucket_variable() {
        let error = BackendChoice::from_vars(&vars(&[("UNDERWRITE_BACKEND", "aws")])).unwrap_err();
        assert!(error.contains("UNDERWRITE_BUCKET"), "{error}");
        let error = BackendChoice::from_vars(&vars(&[
            ("UNDERWRITE_BACKEND", "aws"),
            ("UNDERWRITE_BUCKET", "underwrite-dev-data"),
            ("AWS_ENDPOINT_URL", "127.0.0.1:5000"),
        ]))
        .unwrap_err();
        assert!(error.contains("AWS_ENDPOINT_URL"), "{error}");
        assert!(error.contains("http://"), "{error}");
    }

    #[test]
    fn keyring_bundle_needs_both_parts() {
        let error = parse_keyring_bundle(r#"{"keyring": {"keys": {}}}"#, "underwrite/dev/keyring")
            .unwrap_err();
        assert!(error.contains("\"policy\""), "{error}");
        assert!(error.contains(KEYRING_SECRET_VARIABLE), "{error}");
        let error = parse_keyring_bundle("not json", "underwrite/dev/keyring").unwrap_err();
        assert!(error.contains("underwrite/dev/keyring"), "{error}");
        let (keyring, policy) = parse_keyring_bundle(
            r#"{"keyring": {"keys": {}}, "policy": {"emitters": {"npa": ["sma.classified"]}}}"#,
            "underwrite/dev/keyring",
        )
        .unwrap();
        assert!(keyring.keys.is_empty());
        assert!(policy.allows("npa", "sma.classified"));
    }
}

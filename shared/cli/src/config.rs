//! The embedded runtime's configuration, read in layers: `underwrite.json`,
//! then `config.<UNDERWRITE_ENV>.json` beside it, then `UNDERWRITE_*`
//! environment variables. A later layer replaces the keys it sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use underwrite_aws::AwsConfig;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_domain::pricing::{FeeAmount, PenalPolicy, PricingPolicy};
use underwrite_domain::{ClassificationPolicy, ProductCatalog, ProvisioningPolicy};
use underwrite_fee::FeeSettings;
use underwrite_kfs::KfsSettings;
use underwrite_runtime::{
    BreakerSettings, BreakerSettingsStore, QueueSettings, RecoverySettings, ResilienceSettings,
};

/// The configuration file read from the working directory.
pub const CONFIG_FILE: &str = "underwrite.json";

/// The top-level key that contains descriptions of the other keys; the loader
/// ignores it.
pub const COMMENTS_KEY: &str = "_comments";

/// `UNDERWRITE_*` variables that are not configuration keys.
const NON_KEY_VARIABLES: &[&str] = &[
    "UNDERWRITE_CONFIG",
    "UNDERWRITE_DB",
    "UNDERWRITE_LAKE",
    "UNDERWRITE_ENV",
    "UNDERWRITE_LOG_LEVEL",
    "UNDERWRITE_LOG_FORMAT",
    "UNDERWRITE_API_TOKEN",
];

/// Every setting, with the defaults `underwrite init` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SQLite file holding state, queues, dead letters and the audit ledger.
    pub store_path: PathBuf,
    /// The folder of Parquet partitions the jobs read and write.
    pub lake_path: PathBuf,
    /// Services `underwrite run` and `underwrite serve` start when none are named.
    pub services: Vec<String>,
    /// Queue delivery settings, the same for every service.
    pub queues: QueueSettings,
    /// Supervisor backoff and restarts of a service whose handler panics.
    pub recovery: RecoverySettings,
    /// Per-subscriber circuit breaker.
    pub circuit_breaker: BreakerSettings,
    /// Store circuit breaker.
    pub store_breaker: BreakerSettingsStore,
    /// NPA threshold.
    pub classification: ClassificationPolicy,
    /// Bank or NBFC provisioning, and the standard-asset rate.
    pub provisioning: ProvisioningPolicy,
    /// Servicing settings by product code.
    pub products: ProductCatalog,
    /// Fraud rules and their thresholds.
    pub fraud: FraudPolicy,
    /// Rate grid by risk grade, fee tariff, penal and prepayment charges.
    pub pricing: PricingPolicy,
    /// Lender details, cooling-off period and holidays for the KFS.
    pub kfs: KfsSettings,
    /// When overdue instalments are charged.
    pub fees: FeeSettings,
    /// Event signing: whether it is on, and where keys and the policy live.
    pub identities: crate::identity::IdentitySettings,
    /// The AWS backend that `underwrite dlq` works on when `aws.enabled` is
    /// set: region, endpoint, tables, bucket and queues.
    pub aws: AwsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_path: PathBuf::from("data/underwrite.db"),
            lake_path: PathBuf::from("data/lake"),
            services: crate::services::NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            queues: QueueSettings::default(),
            recovery: RecoverySettings::default(),
            circuit_breaker: BreakerSettings::default(),
            store_breaker: BreakerSettingsStore::default(),
            classification: ClassificationPolicy::default(),
            provisioning: ProvisioningPolicy::default(),
            products: ProductCatalog::default(),
            fraud: FraudPolicy::default(),
            pricing: PricingPolicy::default(),
            kfs: KfsSettings::default(),
            fees: FeeSettings::default(),
            identities: Default::default(),
            aws: AwsConfig::default(),
        }
    }
}

/// One description per key, written by `underwrite init` under `_comments`.
const KEY_DESCRIPTIONS: &[(&str, &str)] = &[
    (
        "store_path",
        "SQLite file with state, queues, dead letters, idempotency records and the audit ledger",
    ),
    (
        "lake_path",
        "folder of Parquet partitions that day-end and reports read and write",
    ),
    (
        "services",
        "services that run and serve start when none are named: consent, fraud, risk, pricing, kfs, mechanism, fee, npa, audit",
    ),
    (
        "queues.visibility_timeout_ms",
        "milliseconds a received message stays hidden; a failed record is retried after it (0 to 43200000)",
    ),
    (
        "queues.max_receive_count",
        "receives after which a failing record moves to the dead-letter queue (1 to 1000)",
    ),
    (
        "queues.batch_size",
        "records received and committed per batch (1 to 10000)",
    ),
    (
        "recovery.backoff_seconds",
        "first backoff after a handler panic; the n-th consecutive one waits backoff_seconds * 2^(n-1), at most 60 s",
    ),
    (
        "recovery.max_restarts",
        "consecutive panics after which a service is reported unhealthy",
    ),
    (
        "recovery.auto_restart",
        "whether an unhealthy service keeps being restarted (UNDERWRITE_RECOVERY_AUTO_RESTART)",
    ),
    (
        "circuit_breaker.failure_threshold",
        "consecutive retryable failures of one subscriber that open its circuit; while open its events go to the dead-letter queue",
    ),
    (
        "circuit_breaker.open_seconds",
        "seconds an open subscriber circuit waits before one probe event",
    ),
    (
        "store_breaker.failure_threshold",
        "consecutive store failures that open the store circuit",
    ),
    (
        "store_breaker.recovery_timeout_seconds",
        "seconds an open store circuit waits before one probe batch",
    ),
    (
        "classification.npa_after_dpd",
        "a loan is NPA when DPD exceeds this (90 to 180)",
    ),
    ("provisioning.regime", "provisioning table: bank or nbfc"),
    (
        "provisioning.standard_bp",
        "standard-asset provision in basis points (0 to 10000)",
    ),
    (
        "products",
        "due-day rule (keep_day or month_end) by default and per product code",
    ),
    (
        "fraud.pan_names",
        "fires when one PAN was given with more than max_count distinct names in window_days (max_count 1 to 1000, window_days 1 to 3650)",
    ),
    (
        "fraud.pan_velocity",
        "fires when one PAN made more than max_count applications in window_days, this one included (max_count 1 to 1000, window_days 1 to 3650)",
    ),
    (
        "fraud.phone_reuse",
        "fires when one phone number was given with more than max_count distinct PANs in window_days (max_count 1 to 1000, window_days 1 to 3650)",
    ),
    (
        "fraud.device_reuse",
        "fires when one device was used with more than max_count distinct PANs in window_days (max_count 1 to 1000, window_days 1 to 3650)",
    ),
    (
        "fraud.emi_income",
        "fires when the EMI at assessment_rate is more than max_basis_points of declared monthly income (max_basis_points 1 to 10000; assessment_rate \"0\" to \"100\")",
    ),
    (
        "fraud.pan_format",
        "fires when the PAN is not AAAAA9999A with a holder type (P, C, H, F, A, T, B, L, J, G) as the fourth character",
    ),
    (
        "fraud.applicant_age",
        "fires when the applicant's age in whole years at the application date is below min_years or above max_years (18 to 100, min_years <= max_years)",
    ),
    (
        "pricing.rate_grid",
        "annual rate by risk grade, such as {\"A\": \"14.00\"}; risk.scored carries the grade",
    ),
    (
        "pricing.fees",
        "fee tariff: name, recipient (lender or third_party), frequency (one_time or recurring), amount ({\"kind\": \"flat\", \"amount\": \"240.00\"} or {\"kind\": \"percent_of_amount\", \"basis_points\": 200}), gst",
    ),
    (
        "pricing.gst_basis_points",
        "GST on fees marked gst, in basis points (0 to 10000)",
    ),
    (
        "pricing.penal",
        "penal charge per overdue instalment: {\"kind\": \"flat\", \"amount\"} or {\"kind\": \"percent_of_overdue\", \"basis_points\"}",
    ),
    (
        "pricing.prepayment_basis_points",
        "prepayment or foreclosure charge on the principal prepaid where the RBI prepayment directions allow one (0 to 10000)",
    ),
    (
        "pricing.lender_category",
        "the lender's category, which the prepayment directions turn on, such as nbfc_middle_layer",
    ),
    (
        "kfs.lender_name",
        "the lender's name in the Key Fact Statement",
    ),
    (
        "kfs.grievance_officer",
        "grievance redressal officer in the KFS: name, designation, phone, email, address; replace the example values",
    ),
    (
        "kfs.cooling_off_days",
        "days in which a borrower may exit by repaying principal and proportionate APR (1 or more)",
    ),
    (
        "kfs.holidays",
        "dates (YYYY-MM-DD) that are not working days for KFS validity, besides Sundays",
    ),
    (
        "fees.grace_days",
        "days after a due date before an unpaid instalment bears its penal charge (0 to 90)",
    ),
    (
        "identities.enabled",
        "sign every event with its emitter's Ed25519 key and verify it before its handler runs (docs/security.md)",
    ),
    (
        "identities.key_dir",
        "folder of private key files (mode 0600), keyring.json and policy.json; keep it outside the data folder",
    ),
    (
        "identities.create_missing",
        "create missing keys and the default policy file when the runtime opens; set false in production so a missing key stops start-up",
    ),
    (
        "aws.enabled",
        "make `underwrite dlq` list and replay the dead-letter queues of the AWS deployment instead of the embedded store (docs/deploy.md)",
    ),
    (
        "aws.endpoint_url",
        "one endpoint URL for every AWS service, such as an emulator's http://127.0.0.1:5000; empty uses AWS's endpoints",
    ),
    (
        "aws.region",
        "the deployment's region, such as ap-south-1; credentials come from the AWS SDK's usual sources (environment, profile, SSO)",
    ),
    ("aws.state_table", "the DynamoDB state table"),
    ("aws.idempotency_table", "the DynamoDB idempotency table"),
    (
        "aws.bucket",
        "the S3 bucket of claim checks, the audit ledger, the lake and reports (the SAM stack's BucketName output)",
    ),
    (
        "aws.queues",
        "queue URLs by name (<service> or <service>-dlq) for queues not named queue_prefix + name",
    ),
    (
        "aws.queue_prefix",
        "prefix of the queue names, underwrite-<Stage>- in the SAM template",
    ),
    (
        "aws.claim_check_bytes",
        "event bodies above this many bytes go to S3 and the message carries a reference",
    ),
    (
        "aws.idempotency_days",
        "days a completed idempotency record keeps a redelivered event from being handled again (1 to 3650)",
    ),
];

/// Keys whose objects are maps or tagged variants rather than fixed fields:
/// only the deserializer checks what is inside them.
const FREE_FORM_KEYS: &[&str] = &[
    "products.products",
    "pricing.rate_grid",
    "pricing.penal",
    "aws.queues",
];

impl Config {
    /// Reads the layers from the working directory and the process
    /// environment: `path` (or `underwrite.json` if it exists, else the
    /// defaults), then `config.<UNDERWRITE_ENV>.json` in the same folder,
    /// then `UNDERWRITE_*` variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Config::load_layers(path, std::env::vars())
    }

    /// Reads the layers with `variables` standing for the environment.
    pub fn load_layers(
        path: Option<&Path>,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let variables: BTreeMap<String, String> = variables
            .into_iter()
            .filter(|(name, _)| name.starts_with("UNDERWRITE_"))
            .collect();
        let defaults = serde_json::to_value(Config::default()).expect("config serialises");
        let mut merged = Value::Object(Map::new());
        let mut sources: BTreeMap<String, String> = BTreeMap::new();

        let base = match path {
            Some(path) => Some(path.to_path_buf()),
            None if Path::new(CONFIG_FILE).exists() => Some(PathBuf::from(CONFIG_FILE)),
            None => None,
        };
        if let Some(base) = &base {
            merge_file(&mut merged, &mut sources, &defaults, base)?;
        }
        if let Some(env) = variables.get("UNDERWRITE_ENV") {
            if env.is_empty()
                || !env
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                anyhow::bail!(
                    "UNDERWRITE_ENV is {env:?}: allowed are letters, digits, '-' and '_', as in `prod`"
                );
            }
            let folder = base
                .as_deref()
                .and_then(Path::parent)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let env_file = folder.join(format!("config.{env}.json"));
            if !env_file.exists() {
                anyhow::bail!(
                    "UNDERWRITE_ENV is {env:?} but {} does not exist; create it or unset UNDERWRITE_ENV",
                    env_file.display()
                );
            }
            merge_file(&mut merged, &mut sources, &defaults, &env_file)?;
        }
        merge_variables(&mut merged, &mut sources, &defaults, &variables)?;

        let config = deserialize(&merged, &sources)?;
        if let Err((key, message)) = config.check() {
            // A check may name a group such as `fraud.pan_velocity` whose
            // values were set one leaf at a time.
            let nested = format!("{key}.");
            let source = sources
                .get(key)
                .or_else(|| {
                    sources
                        .range(nested.clone()..)
                        .next()
                        .filter(|(path, _)| path.starts_with(&nested))
                        .map(|(_, source)| source)
                })
                .cloned()
                .unwrap_or_else(|| "the defaults".into());
            anyhow::bail!("invalid config: {message} (set in {source})");
        }
        Ok(config)
    }

    /// Returns the supervisor and circuit breaker settings for the runtime.
    pub fn resilience(&self) -> ResilienceSettings {
        ResilienceSettings {
            recovery: self.recovery,
            subscriber: self.circuit_breaker,
            store: self.store_breaker,
        }
    }

    /// Renders the default file `underwrite init` writes: every key with its
    /// default, and a description of each under `_comments`.
    pub fn documented_default() -> String {
        let mut value = serde_json::to_value(Config::default()).expect("config serialises");
        let comments: Map<String, Value> = KEY_DESCRIPTIONS
            .iter()
            .map(|(key, text)| (key.to_string(), Value::String(text.to_string())))
            .collect();
        let object = value.as_object_mut().expect("config is an object");
        let mut ordered = Map::new();
        ordered.insert(COMMENTS_KEY.into(), Value::Object(comments));
        ordered.extend(std::mem::take(object));
        serde_json::to_string_pretty(&Value::Object(ordered)).expect("config serialises") + "\n"
    }

    /// Checks the values that their types alone do not bound; an error names
    /// the key and the allowed values.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check().map_err(|(_, message)| anyhow!(message))
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let q = &self.queues;
        if !(1..=10_000).contains(&q.batch_size) {
            return Err((
                "queues.batch_size",
                format!(
                    "queues.batch_size is {}: allowed values are 1 to 10000, as for Lambda's SQS event source mapping",
                    q.batch_size
                ),
            ));
        }
        if !(1..=1000).contains(&q.max_receive_count) {
            return Err((
                "queues.max_receive_count",
                format!(
                    "queues.max_receive_count is {}: allowed values are 1 to 1000, as for an SQS redrive policy",
                    q.max_receive_count
                ),
            ));
        }
        if q.visibility_timeout_ms > 12 * 3600 * 1000 {
            return Err((
                "queues.visibility_timeout_ms",
                format!(
                    "queues.visibility_timeout_ms is {}: the maximum is 43200000 (12 hours), as for SQS",
                    q.visibility_timeout_ms
                ),
            ));
        }
        let backoff = self.recovery.backoff_seconds;
        if !(backoff.is_finite() && (0.0..=60.0).contains(&backoff)) {
            return Err((
                "recovery.backoff_seconds",
                format!(
                    "recovery.backoff_seconds is {backoff}: allowed values are 0 to 60 seconds"
                ),
            ));
        }
        if self.recovery.max_restarts == 0 {
            return Err((
                "recovery.max_restarts",
                "recovery.max_restarts is 0: allowed values are 1 or more".to_string(),
            ));
        }
        for (key, value) in [
            (
                "circuit_breaker.failure_threshold",
                self.circuit_breaker.failure_threshold,
            ),
            (
                "store_breaker.failure_threshold",
                self.store_breaker.failure_threshold,
            ),
        ] {
            if value == 0 {
                return Err((key, format!("{key} is 0: allowed values are 1 or more")));
            }
        }
        for (key, value) in [
            (
                "circuit_breaker.open_seconds",
                self.circuit_breaker.open_seconds,
            ),
            (
                "store_breaker.recovery_timeout_seconds",
                self.store_breaker.recovery_timeout_seconds,
            ),
        ] {
            if !(1..=86_400).contains(&value) {
                return Err((
                    key,
                    format!("{key} is {value}: allowed values are 1 to 86400 seconds"),
                ));
            }
        }
        if !(90..=180).contains(&self.classification.npa_after_dpd) {
            return Err((
                "classification.npa_after_dpd",
                format!(
                    "classification.npa_after_dpd is {}: allowed values are 90 to 180 (90 for banks and NBFCs in the middle and upper layers)",
                    self.classification.npa_after_dpd
                ),
            ));
        }
        if !(0..=10_000).contains(&self.provisioning.standard_bp) {
            return Err((
                "provisioning.standard_bp",
                format!(
                    "provisioning.standard_bp is {}: allowed values are 0 to 10000 basis points",
                    self.provisioning.standard_bp
                ),
            ));
        }
        check_fraud(&self.fraud)?;
        check_pricing(&self.pricing)?;
        check_kfs(&self.kfs)?;
        // The AWS settings are checked only when they are used, so that the
        // default file, which names no bucket, stays valid.
        if self.aws.enabled {
            self.aws
                .validate()
                .map_err(|error| ("aws", error.to_string()))?;
        }
        if self.fees.grace_days > 90 {
            return Err((
                "fees.grace_days",
                format!(
                    "fees.grace_days is {}: allowed values are 0 to 90 days",
                    self.fees.grace_days
                ),
            ));
        }
        for name in &self.services {
            if !crate::services::NAMES.contains(&name.as_str()) {
                return Err((
                    "services",
                    format!(
                        "services contains {name:?}: known services are {}",
                        crate::services::NAMES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The largest value of a basis-point setting: 10,000 is 100%.
const MAX_BASIS_POINTS: u32 = 10_000;

fn check_basis_points(key: &'static str, value: u32) -> Result<(), (&'static str, String)> {
    if value > MAX_BASIS_POINTS {
        return Err((
            key,
            format!("{key} is {value}: allowed values are 0 to 10000 basis points (100%)"),
        ));
    }
    Ok(())
}

fn check_fraud(fraud: &FraudPolicy) -> Result<(), (&'static str, String)> {
    for (id, rule) in fraud.window_rules() {
        let key = match id {
            underwrite_domain::fraud::PAN_NAMES => "fraud.pan_names",
            underwrite_domain::fraud::PAN_VELOCITY => "fraud.pan_velocity",
            underwrite_domain::fraud::PHONE_REUSE => "fraud.phone_reuse",
            _ => "fraud.device_reuse",
        };
        if !(1..=3650).contains(&rule.window_days) {
            return Err((
                key,
                format!(
                    "{key}.window_days is {}: allowed values are 1 to 3650 days",
                    rule.window_days
                ),
            ));
        }
        if !(1..=1000).contains(&rule.max_count) {
            return Err((
                key,
                format!(
                    "{key}.max_count is {}: allowed values are 1 to 1000",
                    rule.max_count
                ),
            ));
        }
    }
    let emi = fraud.emi_income;
    if !(1..=MAX_BASIS_POINTS).contains(&emi.max_basis_points) {
        return Err((
            "fraud.emi_income",
            format!(
                "fraud.emi_income.max_basis_points is {}: allowed values are 1 to 10000 basis points (100%)",
                emi.max_basis_points
            ),
        ));
    }
    let age = fraud.applicant_age;
    // 18 is the age of majority under the Indian Majority Act 1875, below
    // which a person cannot contract a loan.
    for (field, value) in [("min_years", age.min_years), ("max_years", age.max_years)] {
        if !(18..=100).contains(&value) {
            return Err((
                "fraud.applicant_age",
                format!(
                    "fraud.applicant_age.{field} is {value}: allowed values are 18 to 100 years"
                ),
            ));
        }
    }
    if age.min_years > age.max_years {
        return Err((
            "fraud.applicant_age",
            format!(
                "fraud.applicant_age.min_years is {} and max_years {}: min_years must not exceed max_years",
                age.min_years, age.max_years
            ),
        ));
    }
    Ok(())
}

fn check_pricing(pricing: &PricingPolicy) -> Result<(), (&'static str, String)> {
    if pricing.rate_grid.is_empty() {
        return Err((
            "pricing.rate_grid",
            "pricing.rate_grid is empty: map each risk grade to an annual rate, such as {\"A\": \"14.00\"}".into(),
        ));
    }
    check_basis_points("pricing.gst_basis_points", pricing.gst_basis_points)?;
    check_basis_points(
        "pricing.prepayment_basis_points",
        pricing.prepayment_basis_points,
    )?;
    if let PenalPolicy::PercentOfOverdue { basis_points } = pricing.penal {
        check_basis_points("pricing.penal", basis_points)?;
    }
    for (index, fee) in pricing.fees.iter().enumerate() {
        if fee.name.trim().is_empty() {
            return Err((
                "pricing.fees",
                format!(
                    "pricing.fees[{index}].name is empty: give the name the KFS shows, such as \"processing fee\""
                ),
            ));
        }
        match fee.amount {
            FeeAmount::PercentOfAmount { basis_points } if basis_points > MAX_BASIS_POINTS => {
                return Err((
                    "pricing.fees",
                    format!(
                        "pricing.fees[{index}].amount.basis_points is {basis_points}: allowed values are 0 to 10000 basis points (100%)"
                    ),
                ));
            }
            FeeAmount::Flat { amount } if amount.is_negative() => {
                return Err((
                    "pricing.fees",
                    format!(
                        "pricing.fees[{index}].amount.amount is {amount}: a fee must not be negative"
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_kfs(kfs: &KfsSettings) -> Result<(), (&'static str, String)> {
    if kfs.lender_name.trim().is_empty() {
        return Err((
            "kfs.lender_name",
            "kfs.lender_name is empty: give the lender's name as shown to the borrower".into(),
        ));
    }
    if kfs.cooling_off_days == 0 {
        return Err((
            "kfs.cooling_off_days",
            "kfs.cooling_off_days is 0: the Digital Lending Directions 2025 require at least 1 day"
                .into(),
        ));
    }
    let officer = &kfs.grievance_officer;
    for (field, value) in [
        ("name", &officer.name),
        ("designation", &officer.designation),
        ("phone", &officer.phone),
        ("email", &officer.email),
        ("address", &officer.address),
    ] {
        if value.trim().is_empty() {
            return Err((
                "kfs.grievance_officer",
                format!(
                    "kfs.grievance_officer.{field} is empty: the KFS must name the grievance redressal officer and how to reach them"
                ),
            ));
        }
    }
    Ok(())
}

/// Merges one JSON file into `merged`, checking its keys and value kinds
/// against the defaults.
fn merge_file(
    merged: &mut Value,
    sources: &mut BTreeMap<String, String>,
    defaults: &Value,
    path: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read config file {}", path.display()))?;
    let mut layer: Value = serde_json::from_str(&text).map_err(|error| {
        anyhow!(
            "invalid config file {}: {error}; run `underwrite init` for a valid default",
            path.display()
        )
    })?;
    let Some(object) = layer.as_object_mut() else {
        anyhow::bail!(
            "invalid config file {}: the top level must be a JSON object like the one `underwrite init` writes",
            path.display()
        );
    };
    object.remove(COMMENTS_KEY);
    let source = path.display().to_string();
    check_kinds(&layer, defaults, "", &source)?;
    merge_value(merged, &layer, "", &source, sources);
    Ok(())
}

/// Rejects keys the defaults do not have and values of another JSON kind
/// than the default's. Inside the [`FREE_FORM_KEYS`] (product codes, risk
/// grades, the penal charge's variant) only the deserializer checks fields.
fn check_kinds(layer: &Value, defaults: &Value, prefix: &str, source: &str) -> anyhow::Result<()> {
    let (Value::Object(layer), Value::Object(defaults)) = (layer, defaults) else {
        return Ok(());
    };
    for (key, value) in layer {
        let path = join(prefix, key);
        let Some(default) = defaults.get(key) else {
            let mut allowed: Vec<&str> = defaults.keys().map(String::as_str).collect();
            allowed.sort_unstable();
            anyhow::bail!(
                "invalid config: unknown key {path:?} in {source}; allowed keys here are {}",
                allowed.join(", ")
            );
        };
        if FREE_FORM_KEYS.contains(&path.as_str()) {
            continue;
        }
        if !same_kind(value, default) {
            anyhow::bail!(
                "invalid config: {path} is {value} in {source}: allowed is {}",
                describe_kind(default)
            );
        }
        check_kinds(value, default, &path, source)?;
    }
    Ok(())
}

fn same_kind(value: &Value, default: &Value) -> bool {
    match (value, default) {
        (Value::Number(value), Value::Number(default)) => {
            if default.is_u64() {
                value.is_u64()
            } else if default.is_i64() {
                value.is_i64()
            } else {
                true
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Array(_), Value::Array(_))
        | (Value::Object(_), Value::Object(_)) => true,
        _ => false,
    }
}

fn describe_kind(default: &Value) -> String {
    match default {
        Value::Number(n) if n.is_u64() => format!("a whole number of 0 or more, such as {n}"),
        Value::Number(n) if n.is_i64() => format!("a whole number, such as {n}"),
        Value::Number(n) => format!("a number, such as {n}"),
        Value::String(s) => format!("a string, such as {s:?}"),
        Value::Bool(_) => "true or false".into(),
        Value::Array(_) => "a list, such as [\"mechanism\", \"audit\"]".into(),
        Value::Object(_) => "an object".into(),
        Value::Null => "null".into(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn merge_value(
    merged: &mut Value,
    layer: &Value,
    prefix: &str,
    source: &str,
    sources: &mut BTreeMap<String, String>,
) {
    match (merged, layer) {
        (Value::Object(merged), Value::Object(layer)) => {
            for (key, value) in layer {
                let path = join(prefix, key);
                let slot = merged.entry(key.clone()).or_insert(Value::Null);
                if value.is_object() && slot.is_object() || value.is_object() && slot.is_null() {
                    if slot.is_null() {
                        *slot = Value::Object(Map::new());
                    }
                    merge_value(slot, value, &path, source, sources);
                } else {
                    *slot = value.clone();
                    sources.insert(path, source.to_string());
                }
            }
        }
        (merged, layer) => *merged = layer.clone(),
    }
}

/// Lists every leaf key of the defaults with its environment variable name:
/// `queues.batch_size` is `UNDERWRITE_QUEUES_BATCH_SIZE`. An object with no
/// keys in the defaults (`products.products`) is a leaf set as JSON.
fn variable_keys(defaults: &Value) -> Vec<(String, String, Value)> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<(String, String, Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    walk(child, &join(prefix, key), out);
                }
            }
            leaf => {
                let name = format!("UNDERWRITE_{}", prefix.replace('.', "_").to_uppercase());
                out.push((name, prefix.to_string(), leaf.clone()));
            }
        }
    }
    let mut out = Vec::new();
    walk(defaults, "", &mut out);
    // The whole `products` object may also be set as JSON.
    out.push((
        "UNDERWRITE_PRODUCTS".into(),
        "products".into(),
        defaults["products"].clone(),
    ));
    out
}

fn merge_variables(
    merged: &mut Value,
    sources: &mut BTreeMap<String, String>,
    defaults: &Value,
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let keys = variable_keys(defaults);
    for (name, raw) in variables {
        if NON_KEY_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        let Some((_, path, default)) = keys.iter().find(|(n, _, _)| n == name) else {
            tracing::warn!(variable = %name, "Ignored an UNDERWRITE_ variable that names no config key; see docs/configuration.md for the names.");
            continue;
        };
        let value = parse_variable(name, raw, path, default)?;
        let mut layer = value;
        for key in path.rsplit('.') {
            let mut object = Map::new();
            object.insert(key.to_string(), layer);
            layer = Value::Object(object);
        }
        merge_value(merged, &layer, "", name, sources);
    }
    Ok(())
}

/// Parses a variable by its key's default kind: strings as they are, lists
/// as JSON or comma-separated names, anything else as JSON.
fn parse_variable(name: &str, raw: &str, path: &str, default: &Value) -> anyhow::Result<Value> {
    let invalid = || {
        anyhow!(
            "invalid config: {name} is {raw:?} for key {path}: allowed is {}",
            describe_kind(default)
        )
    };
    let value = match default {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Array(_) if !raw.trim_start().starts_with('[') => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => serde_json::from_str(raw.trim()).map_err(|_| invalid())?,
    };
    if path != "products" && !same_kind(&value, default) {
        return Err(invalid());
    }
    Ok(value)
}

/// Deserializes the merged layers. A value the deserializer rejects (an
/// unknown enum name, a field of a product) is reported with its top-level
/// key and the source that set it.
/// Fills the fields a layer left out of each fraud rule with that rule's
/// default, because the rules share field names but not default values.
fn fill_fraud_defaults(merged: &mut Value) {
    fn fill(target: &mut Value, defaults: &Value) {
        if let (Value::Object(target), Value::Object(defaults)) = (target, defaults) {
            for (key, default) in defaults {
                match target.get_mut(key) {
                    Some(value) => fill(value, default),
                    None => {
                        target.insert(key.clone(), default.clone());
                    }
                }
            }
        }
    }
    if let Some(fraud) = merged.get_mut("fraud") {
        let defaults = serde_json::to_value(FraudPolicy::default()).expect("policy serialises");
        fill(fraud, &defaults);
    }
}

fn deserialize(merged: &Value, sources: &BTreeMap<String, String>) -> anyhow::Result<Config> {
    let mut merged = merged.clone();
    fill_fraud_defaults(&mut merged);
    let merged = &merged;
    match serde_json::from_value::<Config>(merged.clone()) {
        Ok(config) => Ok(config),
        Err(error) => {
            let object = merged.as_object().cloned().unwrap_or_default();
            for (key, value) in object {
                let mut alone = Map::new();
                alone.insert(key.clone(), value.clone());
                if let Err(error) = serde_json::from_value::<Config>(Value::Object(alone)) {
                    let source = sources
                        .iter()
                        .find(|(path, _)| *path == &key || path.starts_with(&format!("{key}.")))
                        .map(|(_, source)| source.as_str())
                        .unwrap_or("the defaults");
                    anyhow::bail!(
                        "invalid config: {key} is {value} (set in {source}): {error}; docs/configuration.md lists the allowed values"
                    );
                }
            }
            Err(anyhow!(
                "invalid config: {error}; docs/configuration.md lists the allowed values"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, variables: &[(&str, &str)]) -> anyhow::Result<Config> {
        let variables = variables
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_layers(Some(&dir.join(CONFIG_FILE)), variables)
    }

    fn write(dir: &Path, name: &str, value: Value) {
        std::fs::write(dir.join(name), value.to_string()).unwrap();
    }

    #[test]
    fn later_layers_win() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"queues": {"batch_size": 4, "max_receive_count": 7}}),
        );
        write(
            dir.path(),
            "config.prod.json",
            serde_json::json!({"queues": {"batch_size": 6}}),
        );
        let config = load(dir.path(), &[("UNDERWRITE_ENV", "prod")]).unwrap();
        assert_eq!(
            config.queues.batch_size, 6,
            "the env file replaces the base"
        );
        assert_eq!(
            config.queues.max_receive_count, 7,
            "keys it leaves out keep the base"
        );
        let config = load(
            dir.path(),
            &[
                ("UNDERWRITE_ENV", "prod"),
                ("UNDERWRITE_QUEUES_BATCH_SIZE", "9"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.queues.batch_size, 9,
            "a variable replaces both files"
        );
    }

    #[test]
    fn variables_map_nested_keys() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CONFIG_FILE, serde_json::json!({}));
        let config = load(
            dir.path(),
            &[
                ("UNDERWRITE_RECOVERY_AUTO_RESTART", "false"),
                ("UNDERWRITE_SERVICES", "mechanism, audit"),
                ("UNDERWRITE_STORE_PATH", "other.db"),
                ("UNDERWRITE_PROVISIONING_REGIME", "bank"),
            ],
        )
        .unwrap();
        assert!(!config.recovery.auto_restart);
        assert_eq!(config.services, ["mechanism", "audit"]);
        assert_eq!(config.store_path, PathBuf::from("other.db"));
        assert_eq!(
            serde_json::to_value(config.provisioning.regime).unwrap(),
            "bank"
        );
    }

    #[test]
    fn invalid_variable_names_key_and_allowed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CONFIG_FILE, serde_json::json!({}));
        let error = load(dir.path(), &[("UNDERWRITE_QUEUES_BATCH_SIZE", "ten")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("UNDERWRITE_QUEUES_BATCH_SIZE"), "{error}");
        assert!(error.contains("\"ten\""), "{error}");
        assert!(error.contains("a whole number"), "{error}");
        let error = load(dir.path(), &[("UNDERWRITE_QUEUES_BATCH_SIZE", "10001")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("queues.batch_size is 10001"), "{error}");
        assert!(error.contains("1 to 10000"), "{error}");
        assert!(error.contains("UNDERWRITE_QUEUES_BATCH_SIZE"), "{error}");
    }

    #[test]
    fn unknown_key_and_wrong_kind_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"queues": {"batchsize": 3}}),
        );
        let error = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            error.contains("unknown key \"queues.batchsize\""),
            "{error}"
        );
        assert!(error.contains("batch_size"), "{error}");
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"recovery": {"auto_restart": "yes"}}),
        );
        let error = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            error.contains("recovery.auto_restart is \"yes\""),
            "{error}"
        );
        assert!(error.contains("true or false"), "{error}");
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"provisioning": {"regime": "bnak"}}),
        );
        let error = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(error.contains("provisioning"), "{error}");
        assert!(error.contains("bnak"), "{error}");
        assert!(error.contains("bank"), "{error}");
    }

    #[test]
    fn missing_env_file_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CONFIG_FILE, serde_json::json!({}));
        let error = load(dir.path(), &[("UNDERWRITE_ENV", "staging")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("config.staging.json"), "{error}");
    }

    #[test]
    fn origination_keys_load_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({
                "pricing": {
                    "rate_grid": {"E": "29.50"},
                    "penal": {"kind": "flat", "amount": "250.00"}
                },
                "kfs": {"holidays": ["2024-08-15"]},
                "fees": {"grace_days": 3}
            }),
        );
        let config = load(dir.path(), &[]).unwrap();
        assert_eq!(config.pricing.rate_grid.len(), 1);
        assert_eq!(config.fees.grace_days, 3);
        assert_eq!(config.kfs.holidays.len(), 1);

        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"kfs": {"cooling_off_days": 0}}),
        );
        let error = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(error.contains("kfs.cooling_off_days is 0"), "{error}");

        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"pricing": {"gst_basis_points": 20000}}),
        );
        let error = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            error.contains("pricing.gst_basis_points is 20000"),
            "{error}"
        );

        write(dir.path(), CONFIG_FILE, serde_json::json!({}));
        let error = load(dir.path(), &[("UNDERWRITE_FEES_GRACE_DAYS", "91")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("fees.grace_days is 91"), "{error}");
    }

    #[test]
    fn fraud_keys_load_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            CONFIG_FILE,
            serde_json::json!({"fraud": {"pan_velocity": {"max_count": 2}}}),
        );
        let config = load(dir.path(), &[]).unwrap();
        assert_eq!(config.fraud.pan_velocity.window_days, 30);
        assert_eq!(config.fraud.pan_velocity.max_count, 2);
        assert_eq!(config.fraud.pan_names, FraudPolicy::default().pan_names);

        let cases = [
            (
                serde_json::json!({"fraud": {"phone_reuse": {"enabled": true, "window_days": 0, "max_count": 2}}}),
                "fraud.phone_reuse.window_days is 0: allowed values are 1 to 3650 days",
            ),
            (
                serde_json::json!({"fraud": {"pan_names": {"enabled": true, "window_days": 30, "max_count": 0}}}),
                "fraud.pan_names.max_count is 0: allowed values are 1 to 1000",
            ),
            (
                serde_json::json!({"fraud": {"emi_income": {"enabled": true, "assessment_rate": "20.00", "max_basis_points": 12000}}}),
                "fraud.emi_income.max_basis_points is 12000: allowed values are 1 to 10000",
            ),
            (
                serde_json::json!({"fraud": {"applicant_age": {"enabled": true, "min_years": 16, "max_years": 65}}}),
                "fraud.applicant_age.min_years is 16: allowed values are 18 to 100 years",
            ),
            (
                serde_json::json!({"fraud": {"applicant_age": {"enabled": true, "min_years": 60, "max_years": 30}}}),
                "min_years must not exceed max_years",
            ),
            (
                serde_json::json!({"fraud": {"emi_income": {"enabled": true, "assessment_rate": "120.00", "max_basis_points": 5000}}}),
                "invalid rate \"120.00\"",
            ),
        ];
        for (layer, expected) in cases {
            write(dir.path(), CONFIG_FILE, layer);
            let error = load(dir.path(), &[]).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("fraud"), "{error}");
        }
        write(dir.path(), CONFIG_FILE, serde_json::json!({}));
        let error = load(
            dir.path(),
            &[("UNDERWRITE_FRAUD_PAN_VELOCITY_MAX_COUNT", "0")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("fraud.pan_velocity.max_count is 0"),
            "{error}"
        );
        assert!(
            error.contains("UNDERWRITE_FRAUD_PAN_VELOCITY_MAX_COUNT"),
            "{error}"
        );
    }

    #[test]
    fn documented_default_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), Config::documented_default()).unwrap();
        let config = load(dir.path(), &[]).unwrap();
        assert_eq!(config, Config::default());
        let text = Config::documented_default();
        for (key, _) in KEY_DESCRIPTIONS {
            assert!(text.contains(&format!("\"{key}\"")), "{key} is described");
        }
    }
}

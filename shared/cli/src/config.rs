//! `underwrite.json`: the embedded runtime's configuration.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use underwrite_domain::{ClassificationPolicy, ProductCatalog, ProvisioningPolicy};
use underwrite_runtime::QueueSettings;

/// The configuration file read from the working directory.
pub const CONFIG_FILE: &str = "underwrite.json";

/// Every setting, with the defaults `underwrite init` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SQLite file holding state, queues, dead letters and the audit ledger.
    pub store_path: PathBuf,
    /// The folder of Parquet partitions the jobs read and write.
    pub lake_path: PathBuf,
    /// Services `underwrite run` starts when none are named.
    pub services: Vec<String>,
    /// Queue delivery settings, the same for every service.
    pub queues: QueueSettings,
    /// NPA threshold.
    pub classification: ClassificationPolicy,
    /// Bank or NBFC provisioning, and the standard-asset rate.
    pub provisioning: ProvisioningPolicy,
    /// Servicing settings by product code.
    pub products: ProductCatalog,
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
            classification: ClassificationPolicy::default(),
            provisioning: ProvisioningPolicy::default(),
            products: ProductCatalog::default(),
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when `path` is `None` and no
    /// `underwrite.json` exists in the working directory.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None if Path::new(CONFIG_FILE).exists() => PathBuf::from(CONFIG_FILE),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("Failed to read config file {}", path.display()))?;
        let config: Config = serde_json::from_str(&text).map_err(|error| {
            anyhow::anyhow!(
                "invalid config file {}: {error}; run `underwrite init` for a valid default",
                path.display()
            )
        })?;
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// Checks the values that their types alone do not bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        let q = &self.queues;
        if !(1..=10_000).contains(&q.batch_size) {
            bail!(
                "queues.batch_size is {}: allowed values are 1 to 10000, as for Lambda's SQS event source mapping",
                q.batch_size
            );
        }
        if !(1..=1000).contains(&q.max_receive_count) {
            bail!(
                "queues.max_receive_count is {}: allowed values are 1 to 1000, as for an SQS redrive policy",
                q.max_receive_count
            );
        }
        if q.visibility_timeout_ms > 12 * 3600 * 1000 {
            bail!(
                "queues.visibility_timeout_ms is {}: the maximum is 43200000 (12 hours), as for SQS",
                q.visibility_timeout_ms
            );
        }
        if !(90..=180).contains(&self.classification.npa_after_dpd) {
            bail!(
                "classification.npa_after_dpd is {}: allowed values are 90 to 180 (90 for banks and NBFCs in the middle and upper layers)",
                self.classification.npa_after_dpd
            );
        }
        if !(0..=10_000).contains(&self.provisioning.standard_bp) {
            bail!(
                "provisioning.standard_bp is {}: allowed values are 0 to 10000 basis points",
                self.provisioning.standard_bp
            );
        }
        for name in &self.services {
            if !crate::services::NAMES.contains(&name.as_str()) {
                bail!(
                    "services contains {name:?}: known services are {}",
                    crate::services::NAMES.join(", ")
                );
            }
        }
        Ok(())
    }
}

//! The AWS backend's settings and the SDK clients built from them once.

use std::collections::BTreeMap;

use aws_config::BehaviorVersion;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use underwrite_runtime::ports::{DEFAULT_CLAIM_CHECK_BYTES, MAX_MESSAGE_BYTES};

/// Where the AWS backend's resources are. The CLI reads it from the `aws`
/// section of `underwrite.json`; a Lambda function from its environment
/// ([`AwsConfig::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Whether the `underwrite` CLI works on this backend (`underwrite dlq`)
    /// rather than the embedded store. Lambda functions always use it.
    pub enabled: bool,
    /// An endpoint URL for every service, such as an emulator's
    /// (`http://127.0.0.1:5000`); empty uses AWS's own endpoints.
    pub endpoint_url: String,
    /// The region, such as `ap-south-1`.
    pub region: String,
    /// The DynamoDB state table.
    pub state_table: String,
    /// The DynamoDB idempotency table.
    pub idempotency_table: String,
    /// The S3 bucket for claim checks, the audit ledger, the lake and reports.
    pub bucket: String,
    /// Queue URLs by queue name (a service's name, or `<service>-dlq` for its
    /// dead-letter queue). Names not listed are looked up by
    /// `queue_prefix` + name.
    pub queues: BTreeMap<String, String>,
    /// The prefix of queue names looked up with `GetQueueUrl`, such as
    /// `underwrite-dev-` (the SAM template names queues
    /// `underwrite-<stage>-<service>` and `...-dlq`).
    pub queue_prefix: String,
    /// Event bodies above this many bytes go to S3 and the message carries
    /// a reference (claim check).
    pub claim_check_bytes: usize,
    /// Days a completed idempotency record keeps a redelivered event from
    /// being handled again; the TTL attribute that cleans it up is set a day
    /// later.
    pub idempotency_days: u32,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            enabled: false,
            endpoint_url: String::new(),
            region: "ap-south-1".into(),
            state_table: "underwrite-dev-state".into(),
            idempotency_table: "underwrite-dev-idempotency".into(),
            bucket: String::new(),
            queues: BTreeMap::new(),
            queue_prefix: "underwrite-dev-".into(),
            claim_check_bytes: DEFAULT_CLAIM_CHECK_BYTES,
            idempotency_days: 30,
        }
    }
}

/// An invalid setting, named with its value and the fix.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid AWS setting {key} = {value:?}: {fix}")]
pub struct ConfigError {
    /// The setting, as in `underwrite.json` (`aws.region`).
    pub key: String,
    /// The value given.
    pub value: String,
    /// What is allowed.
    pub fix: String,
}

fn invalid(key: &str, value: impl ToString, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// Checks a DynamoDB table name: 3 to 255 of `[A-Za-z0-9_.-]`.
fn check_table(key: &str, name: &str) -> Result<(), ConfigError> {
    let valid = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            key,
            name,
            "a DynamoDB table name is 3 to 255 letters, digits, '_', '-' or '.' (the SAM template's are underwrite-<stage>-state and underwrite-<stage>-idempotency)",
        ))
    }
}

impl AwsConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.endpoint_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "aws.endpoint_url",
                url,
                "an endpoint is an http:// or https:// URL, such as http://127.0.0.1:5000; remove it to use AWS's endpoints",
            ));
        }
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && self.region.contains('-');
        if !region_ok {
            return Err(invalid(
                "aws.region",
                &self.region,
                "a region is a name such as ap-south-1 or us-east-1",
            ));
        }
        check_table("aws.state_table", &self.state_table)?;
        check_table("aws.idempotency_table", &self.idempotency_table)?;
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
            && self.bucket.as_bytes()[0].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(invalid(
                "aws.bucket",
                &self.bucket,
                "set the S3 bucket's name: 3 to 63 lower-case letters, digits, '-' or '.' (the SAM stack's BucketName output)",
            ));
        }
        for (name, url) in &self.queues {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    &format!("aws.queues.{name}"),
                    url,
                    "a queue is given by its URL, such as https://sqs.ap-south-1.amazonaws.com/123456789012/underwrite-dev-npa",
                ));
            }
        }
        if self
            .queue_prefix
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
        {
            return Err(invalid(
                "aws.queue_prefix",
                &self.queue_prefix,
                "a queue name prefix is letters, digits, '_' or '-', such as underwrite-dev-",
            ));
        }
        if self.claim_check_bytes == 0 || self.claim_check_bytes > MAX_MESSAGE_BYTES - 16 * 1024 {
            return Err(invalid(
                "aws.claim_check_bytes",
                self.claim_check_bytes,
                format!(
                    "between 1 and {} bytes, so that a message with its attributes stays within SQS's 1 MiB (default {DEFAULT_CLAIM_CHECK_BYTES})",
                    MAX_MESSAGE_BYTES - 16 * 1024
                ),
            ));
        }
        if !(1..=3650).contains(&self.idempotency_days) {
            return Err(invalid(
                "aws.idempotency_days",
                self.idempotency_days,
                "between 1 and 3650; keep it longer than a dead letter can wait for replay (14 days)",
            ));
        }
        Ok(())
    }

    /// Reads the settings a Lambda function gets from the SAM template:
    /// `UNDERWRITE_STATE_TABLE`, `UNDERWRITE_IDEMPOTENCY_TABLE`,
    /// `UNDERWRITE_BUCKET`, `UNDERWRITE_QUEUE_<NAME>` (a queue URL; `_` in
    /// the name stands for `-`), `UNDERWRITE_QUEUE_PREFIX`,
    /// `UNDERWRITE_CLAIM_CHECK_BYTES`, `AWS_REGION` and `AWS_ENDPOINT_URL`.
    /// Unset variables keep the defaults; the result is validated.
    pub fn from_env() -> Result<AwsConfig, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// [`AwsConfig::from_env`] over the given variables.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<AwsConfig, ConfigError> {
        let mut config = AwsConfig::default();
        for (name, value) in vars {
            match name.as_str() {
                "AWS_ENDPOINT_URL" => config.endpoint_url = value,
                "AWS_REGION" => config.region = value,
                "UNDERWRITE_STATE_TABLE" => config.state_table = value,
                "UNDERWRITE_IDEMPOTENCY_TABLE" => config.idempotency_table = value,
                "UNDERWRITE_BUCKET" => config.bucket = value,
                "UNDERWRITE_QUEUE_PREFIX" => config.queue_prefix = value,
                "UNDERWRITE_CLAIM_CHECK_BYTES" => {
                    config.claim_check_bytes = value.parse().map_err(|_| {
                        invalid(&name, &value, "a whole number of bytes, such as 262144")
                    })?
                }
                _ => {
                    if let Some(queue) = name.strip_prefix("UNDERWRITE_QUEUE_") {
                        let queue = queue.to_ascii_lowercase().replace('_', "-");
                        config.queues.insert(queue, value);
                    }
                }
            }
        }
        config.validate().map_err(|mut error| {
            error.key = variable_of(&error.key);
            error
        })?;
        Ok(config)
    }
}

/// Returns the environment variable that sets a setting of
/// `underwrite.json`'s `aws` section, so that a function's start-up error
/// names what to change.
fn variable_of(key: &str) -> String {
    let variable = match key {
        "aws.endpoint_url" => "AWS_ENDPOINT_URL",
        "aws.region" => "AWS_REGION",
        "aws.state_table" => "UNDERWRITE_STATE_TABLE",
        "aws.idempotency_table" => "UNDERWRITE_IDEMPOTENCY_TABLE",
        "aws.bucket" => "UNDERWRITE_BUCKET",
        "aws.queue_prefix" => "UNDERWRITE_QUEUE_PREFIX",
        "aws.claim_check_bytes" => "UNDERWRITE_CLAIM_CHECK_BYTES",
        _ => match key.strip_prefix("aws.queues.") {
            Some(queue) => {
                return format!(
                    "UNDERWRITE_QUEUE_{}",
                    queue.to_ascii_uppercase().replace('-', "_")
                );
            }
            None => return key.to_string(),
        },
    };
    variable.to_string()
}

/// The SDK clients, built once per process (a Lambda cold start) and shared
/// by every adapter.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// S3, with path-style addressing when an endpoint URL is set.
    pub s3: aws_sdk_s3::Client,
    /// Secrets Manager.
    pub secrets: aws_sdk_secretsmanager::Client,
    /// Step Functions, to which saga workers send task results.
    pub sfn: aws_sdk_sfn::Client,
}

impl AwsClients {
    /// Loads credentials and region the SDK's usual way (environment,
    /// profile, instance role), overridden by `config`'s region and
    /// endpoint, and builds the clients. Validates `config` first.
    pub async fn new(config: &AwsConfig) -> Result<AwsClients, ConfigError> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if !config.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&config.endpoint_url);
        }
        let shared = loader.load().await;
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            // An emulator serves buckets by path, not by host name.
            .force_path_style(!config.endpoint_url.is_empty())
            // Some emulators reject the SDK's default checksum headers
            // (aws-cli#9214); S3 itself needs them only where required.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .build();
        Ok(AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::new(&shared),
            sqs: aws_sdk_sqs::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            sfn: aws_sdk_sfn::Client::new(&shared),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AwsConfig {
        AwsConfig {
            bucket: "underwrite-dev-data".into(),
            ..AwsConfig::default()
        }
    }

    #[test]
    fn defaults_with_a_bucket_are_valid() {
        valid().validate().unwrap();
    }

    #[test]
    fn each_bad_value_is_named_with_its_fix() {
        let cases: Vec<(AwsConfig, &str)> = vec![
            (AwsConfig::default(), "aws.bucket"),
            (
                AwsConfig {
                    region: "Mumbai".into(),
                    ..valid()
                },
                "aws.region",
            ),
            (
                AwsConfig {
                    endpoint_url: "127.0.0.1:5000".into(),
                    ..valid()
                },
                "aws.endpoint_url",
            ),
            (
                AwsConfig {
                    state_table: "a b".into(),
                    ..valid()
                },
                "aws.state_table",
            ),
            (
                AwsConfig {
                    claim_check_bytes: 2 << 20,
                    ..valid()
                },
                "aws.claim_check_bytes",
            ),
            (
                AwsConfig {
                    queues: BTreeMap::from([("npa".into(), "underwrite-dev-npa".into())]),
                    ..valid()
                },
                "aws.queues.npa",
            ),
        ];
        for (config, key) in cases {
            let error = config.validate().unwrap_err();
            assert_eq!(error.key, key, "{error}");
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn environment_sets_tables_bucket_and_queues() {
        let vars = [
            ("UNDERWRITE_STATE_TABLE", "underwrite-prod-state"),
            ("UNDERWRITE_BUCKET", "underwrite-prod-data"),
            (
                "UNDERWRITE_QUEUE_AUDIT",
                "https://sqs.ap-south-1.amazonaws.com/1/underwrite-prod-audit",
            ),
            (
                "UNDERWRITE_QUEUE_NPA_DLQ",
                "https://sqs.ap-south-1.amazonaws.com/1/underwrite-prod-npa-dlq",
            ),
            ("AWS_REGION", "ap-south-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = AwsConfig::from_vars(vars).unwrap();
        assert_eq!(config.state_table, "underwrite-prod-state");
        assert_eq!(config.bucket, "underwrite-prod-data");
        assert!(config.queues.contains_key("audit"));
        assert!(config.queues.contains_key("npa-dlq"));
        let bad = AwsConfig::from_vars([(
            "UNDERWRITE_CLAIM_CHECK_BYTES".to_string(),
            "lots".to_string(),
        )]);
        assert_eq!(bad.unwrap_err().key, "UNDERWRITE_CLAIM_CHECK_BYTES");
        let no_bucket = AwsConfig::from_vars([]).unwrap_err();
        assert_eq!(no_bucket.key, "UNDERWRITE_BUCKET");
        let bad_queue = AwsConfig::from_vars(
            [
                ("UNDERWRITE_BUCKET", "underwrite-dev-data"),
                ("UNDERWRITE_QUEUE_NPA_DLQ", "underwrite-dev-npa-dlq"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap_err();
        assert_eq!(bad_queue.key, "UNDERWRITE_QUEUE_NPA_DLQ");
    }
}

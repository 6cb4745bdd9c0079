//! The AWS adapters behind the runtime's ports, so that a service cannot
//! tell them from the embedded runtime:
//!
//! | port | adapter |
//! |---|---|
//! | `Store` + `EffectStore` | [`DynamoStore`]: state with versions and conditional writes, idempotency records with leases, `TransactWriteItems` (chunked past 100 actions) |
//! | `Bus` | [`SqsBus`]: routing with `SendMessageBatch`, S3 claim checks, DLQ with reasons, replay |
//! | `ObjectStore` | [`S3Objects`]: `If-None-Match: *` |
//! | `SecretSource` | [`SecretsManager`]: read once per process |
//!
//! [`AwsClients::new`] builds the SDK clients once (per Lambda cold start);
//! [`AwsBackend::connect`] builds every adapter of one service over them.
//! `docs/aws-storage.md` describes the tables' items and the bucket's keys.

#![warn(missing_docs)]

pub mod config;
pub mod dynamo;
pub mod error;
pub mod s3;
pub mod secrets;
pub mod sfn;
pub mod sqs;

use std::sync::Arc;

pub use config::{AwsClients, AwsConfig, ConfigError};
pub use dynamo::DynamoStore;
pub use s3::S3Objects;
pub use secrets::SecretsManager;
pub use sfn::StepFunctionsTasks;
pub use sqs::SqsBus;
use underwrite_runtime::ports::Routes;

/// Every adapter of one service, over clients built once.
pub struct AwsBackend {
    /// The clients, for anything else the caller needs.
    pub clients: AwsClients,
    /// State and idempotency records, fenced to the service's keys.
    pub store: Arc<DynamoStore>,
    /// Queues, claim checks and dead letters.
    pub bus: Arc<SqsBus>,
    /// The bucket.
    pub objects: Arc<S3Objects>,
    /// Secrets Manager.
    pub secrets: Arc<SecretsManager>,
}

impl AwsBackend {
    /// Validates `config`, builds the clients and the adapters of `service`
    /// routing by `routes`.
    pub async fn connect(
        config: &AwsConfig,
        service: &str,
        routes: Routes,
    ) -> Result<AwsBackend, ConfigError> {
        let clients = AwsClients::new(config).await?;
        Ok(Self::with_clients(clients, config, service, routes))
    }

    /// Builds the adapters of `service` over existing clients.
    pub fn with_clients(
        clients: AwsClients,
        config: &AwsConfig,
        service: &str,
        routes: Routes,
    ) -> AwsBackend {
        let objects = Arc::new(S3Objects::new(clients.s3.clone(), &config.bucket));
        let store = Arc::new(DynamoStore::new(
            clients.dynamodb.clone(),
            objects.clone(),
            config,
            service,
        ));
        let bus = Arc::new(SqsBus::new(
            clients.sqs.clone(),
            objects.clone(),
            config,
            routes,
            service,
        ));
        let secrets = Arc::new(SecretsManager::new(clients.secrets.clone()));
        AwsBackend {
            clients,
            store,
            bus,
            objects,
            secrets,
        }
    }
}

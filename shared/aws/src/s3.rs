//! S3 objects written once with `If-None-Match: *`.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use underwrite_runtime::ports::{ObjectStore, PortError, PutOutcome};

use crate::error::{status_of, unavailable};

/// The bucket as an [`ObjectStore`]: lake objects, audit-ledger entries,
/// claim checks and large idempotency outputs.
#[derive(Debug, Clone)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Objects {
    /// Objects in `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Objects {
            client,
            bucket: bucket.into(),
        }
    }

    /// Returns the bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes `bytes` at `key`, replacing any object there. Only for keys
    /// unique to one writer, such as a commit plan named by its lease token.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), PortError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|error| unavailable("s3", &format!("put {key}"), error))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, PortError> {
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Created),
            Err(error) => match status_of(&error) {
                Some(412) => Ok(PutOutcome::AlreadyExists),
                // A concurrent conditional write of the same key (S3 guide,
                // conditional writes): retry, and the retry finds it.
                Some(409) => Err(PortError::Conflict { key: key.into() }),
                _ => Err(unavailable("s3", &format!("put {key}"), error)),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(output) => {
                let bytes =
                    output
                        .body
                        .collect()
                        .await
                        .map_err(|error| PortError::Unavailable {
                            service: "s3",
                            message: format!("failed to read {key}: {error}"),
                        })?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(error) if status_of(&error) == Some(404) => Ok(None),
            Err(error) => Err(unavailable("s3", &format!("get {key}"), error)),
        }
    }
}

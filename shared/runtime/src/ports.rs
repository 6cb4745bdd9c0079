//! The ports every backend implements: what the per-record processor
//! ([`crate::record`]) needs beyond state reads, so that a service cannot
//! tell the embedded runtime from AWS.
//!
//! | port | embedded (`SqliteStore`) | AWS (`underwrite-aws`) |
//! |---|---|---|
//! | [`Store`] + [`EffectStore`] | `kv`, `idempotency`, `idempotency_leases` tables | DynamoDB state and idempotency tables |
//! | [`Bus`] | `queue_messages` and `dead_letters` tables | SQS queues and their DLQs |
//! | [`ObjectStore`] | `objects` table | S3 with `If-None-Match: *` |
//! | [`SecretSource`] | files in a folder ([`DirSecrets`]) | Secrets Manager |
//!
//! The idempotency protocol follows architecture §4:
//! 1. [`EffectStore::claim`] looks up `(service, event id)`. A complete
//!    record returns its stored outputs, which the caller re-publishes before
//!    acknowledging. A lease held by another consumer that has not expired
//!    makes the caller fail the record as retryable. Otherwise the caller
//!    takes the lease. Expiry is decided from the record's own timestamps,
//!    never from a store's TTL deletion.
//! 2. The caller handles the event.
//! 3. [`EffectStore::commit`] applies the state writes and the completed
//!    record with its outputs as one atomic unit; a version conflict is
//!    [`StoreError::Conflict`], and a lease lost to another consumer is a
//!    conflict too.
//! 4. The caller publishes the outputs with [`Bus::publish`], then
//!    acknowledges. A failed handler gives its lease back with
//!    [`EffectStore::release`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use underwrite_events::Envelope;

use crate::service::{HandlerError, Service};
use crate::store::{StateWrite, Store, StoreError};

/// The default claim-check threshold: a message body above 256 KiB goes to
/// the object store and the message carries a reference.
pub const DEFAULT_CLAIM_CHECK_BYTES: usize = 256 * 1024;

/// The largest SQS message, attributes included: 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The message attribute naming the event id.
pub const ATTR_EVENT_ID: &str = "event_id";
/// The message attribute naming the event type.
pub const ATTR_EVENT_TYPE: &str = "event_type";
/// The message attribute set on a claim-check reference.
pub const ATTR_CLAIM_CHECK: &str = "claim_check";

// ------------------------------------------------------------------ errors

/// A failure of the bus, the object store or the secret source. Each
/// variant names the value that failed and the fix, and is either retryable
/// ([`PortError::is_retryable`]) or not.
#[derive(Debug, Error)]
pub enum PortError {
    /// A queue that is not configured.
    #[error("unknown queue {queue:?}: known queues are {known}; {fix}")]
    UnknownQueue {
        /// The queue name given.
        queue: String,
        /// The configured queue names.
        known: String,
        /// How to configure it.
        fix: String,
    },
    /// A message or object over a size limit.
    #[error("{what} is {size} bytes, above the limit of {limit} bytes; {fix}")]
    TooLarge {
        /// The oversized item, with its id.
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
        /// The next step to take.
        fix: String,
    },
    /// A secret that does not exist.
    #[error("secret {name:?} not found; {fix}")]
    MissingSecret {
        /// The secret's name.
        name: String,
        /// How to create it.
        fix: String,
    },
    /// A claim-check reference whose object is missing or unreadable.
    #[error("claim check {key:?} cannot be resolved: {reason}")]
    BadClaimCheck {
        /// The object key the message refers to.
        key: String,
        /// Why.
        reason: String,
    },
    /// A concurrent conflicting write (S3 409); a retry succeeds.
    #[error("conflicting concurrent write of {key:?}; retry")]
    Conflict {
        /// The object key.
        key: String,
    },
    /// The backend rejected the request for good, such as a malformed task
    /// token; a retry cannot succeed.
    #[error("{service} rejected the request: {message}")]
    Rejected {
        /// `sfn`, ...
        service: &'static str,
        /// The failure, with what to check.
        message: String,
    },
    /// The backend could not be reached or failed; a retry may succeed.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        /// `sqs`, `s3`, `secretsmanager`, `sqlite`, ...
        service: &'static str,
        /// The failure.
        message: String,
    },
}

impl PortError {
    /// Checks whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PortError::Conflict { .. } | PortError::Unavailable { .. }
        )
    }

    /// Returns a fixed, low-cardinality code for logs and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            PortError::UnknownQueue { .. } => "unknown_queue",
            PortError::TooLarge { .. } => "too_large",
            PortError::MissingSecret { .. } => "missing_secret",
            PortError::BadClaimCheck { .. } => "bad_claim_check",
            PortError::Conflict { .. } => "object_conflict",
            PortError::Rejected { .. } => "backend_rejected",
            PortError::Unavailable { .. } => "backend_unavailable",
        }
    }
}

impl From<StoreError> for PortError {
    fn from(error: StoreError) -> Self {
        PortError::Unavailable {
            service: "store",
            message: error.to_string(),
        }
    }
}

impl From<PortError> for HandlerError {
    fn from(error: PortError) -> Self {
        if error.is_retryable() {
            HandlerError::retryable(error.code(), error.to_string())
        } else {
            HandlerError::permanent(error.code(), error.to_string())
        }
    }
}

// ---------------------------------------------------------- effect store

/// An in-progress lease on one event for one service, held between
/// [`EffectStore::claim`] and [`EffectStore::commit`] or
/// [`EffectStore::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The handling service.
    pub service: String,
    /// The event id.
    pub event_id: String,
    /// A token unique to this claim; commit and release check it, so a
    /// consumer whose lease expired and was taken over cannot commit.
    pub token: String,
    /// When the lease expires, Unix milliseconds.
    pub expires_ms: i64,
}

/// The result of [`EffectStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No record, or an expired lease: the caller now holds the lease.
    Acquired(Lease),
    /// The event is complete: its outputs (event JSON texts) to re-publish.
    Complete {
        /// The outputs stored with the record, in emission order.
        outputs: Vec<String>,
    },
    /// Another consumer holds a lease that has not expired.
    InProgress {
        /// When that lease expires, Unix milliseconds.
        expires_ms: i64,
    },
}

/// State writes and idempotency records: the write side of the store that
/// the per-record processor uses. Reads come from the [`Store`] supertrait.
#[async_trait]
pub trait EffectStore: Store {
    /// Looks up the idempotency record of `(service, event_id)` at `now_ms`
    /// and takes a lease of `lease_ms` when there is none or the one there
    /// has expired (its `expires_ms` is before `now_ms`).
    async fn claim(
        &self,
        service: &str,
        event_id: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError>;

    /// Applies `writes` and completes the lease's record with `outputs`
    /// (event JSON texts) as one atomic unit. A write whose condition fails,
    /// or a lease that is no longer held, is [`StoreError::Conflict`] and
    /// applies nothing.
    async fn commit(
        &self,
        lease: &Lease,
        writes: &[StateWrite],
        outputs: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Gives the lease back after a failed handler, so that the next
    /// delivery can claim the event at once. Releasing a lease that is no
    /// longer held does nothing.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
}

// ------------------------------------------------------------------ bus

/// An event ready to publish: its id and type (routing and message
/// attributes) and its JSON text (the message body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The event id.
    pub id: String,
    /// The event type, which decides the subscriber queues.
    pub event_type: String,
    /// The event as JSON text.
    pub body: String,
}

impl Outbound {
    /// Serialises an event.
    pub fn from_event(event: &Envelope) -> Self {
        Outbound {
            id: event.id.to_string(),
            event_type: event.event_type.clone(),
            body: event.to_json(),
        }
    }

    /// Reads the id and type of a stored event JSON text.
    pub fn from_json(body: String) -> Result<Self, PortError> {
        #[derive(Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            event_type: String,
        }
        let head: Head = serde_json::from_str(&body).map_err(|error| PortError::BadClaimCheck {
            key: "stored output".into(),
            reason: format!("not an event: {error}"),
        })?;
        Ok(Outbound {
            id: head.id,
            event_type: head.event_type,
            body,
        })
    }
}

/// Which queues subscribe to which event types: the same rule as
/// [`crate::EmbeddedRuntime::routes`], where `*` subscribes to every type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    subscriptions: Vec<(String, Vec<String>)>,
}

impl Routes {
    /// Builds the table from the services' names and subscriptions, in the
    /// order given.
    pub fn from_services(services: &[Arc<dyn Service>]) -> Self {
        Routes {
            subscriptions: services
                .iter()
                .map(|s| {
                    (
                        s.name().to_string(),
                        s.subscriptions().iter().map(|t| t.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Builds the table from `(queue, subscribed types)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> Self {
        Routes {
            subscriptions: pairs
                .into_iter()
                .map(|(queue, types)| {
                    (
                        queue.to_string(),
                        types.iter().map(|t| t.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Returns the queues subscribed to `event_type`, in registration order.
    pub fn queues_for(&self, event_type: &str) -> Vec<&str> {
        self.subscriptions
            .iter()
            .filter(|(_, types)| types.iter().any(|t| t == "*" || t == event_type))
            .map(|(queue, _)| queue.as_str())
            .collect()
    }

    /// Returns every queue name, in registration order.
    pub fn queues(&self) -> Vec<&str> {
        self.subscriptions.iter().map(|(q, _)| q.as_str()).collect()
    }
}

/// The reason a record went to a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReason {
    /// `permanent` (no retry could help) or `retries_exhausted`.
    pub error_kind: String,
    /// The error's code.
    pub error_code: String,
    /// The error's message.
    pub error_message: String,
    /// Receives before it was dead-lettered.
    pub receive_count: u32,
}

impl DeadLetterReason {
    /// The reason for a handler error on the `receive_count`-th receive:
    /// `permanent` for a permanent error, `retries_exhausted` otherwise.
    pub fn from_error(error: &HandlerError, receive_count: u32) -> Self {
        DeadLetterReason {
            error_kind: if error.is_retryable() {
                "retries_exhausted".into()
            } else {
                "permanent".into()
            },
            error_code: error.code().into(),
            error_message: error.to_string(),
            receive_count,
        }
    }
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The handle to delete it or change its visibility with.
    pub receipt: String,
    /// The message id: the event id on the embedded bus, SQS's id on AWS.
    pub message_id: String,
    /// The body as it is on the queue: an event, or a claim-check
    /// reference that [`Bus::resolve`] turns into the event.
    pub body: String,
    /// The message attributes.
    pub attributes: BTreeMap<String, String>,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// A dead letter as listed by [`Bus::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    /// The queue it came from, where a replay returns it.
    pub queue: String,
    /// The message id.
    pub message_id: String,
    /// The original body, untouched (a claim-check reference stays one).
    pub body: String,
    /// The original message attributes.
    pub attributes: BTreeMap<String, String>,
    /// The reason it is there.
    pub reason: DeadLetterReason,
    /// When it failed, Unix milliseconds.
    pub failed_ms: i64,
}

/// The method a replay used to move dead letters back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMethod {
    /// Received from the dead-letter queue, sent to the source, deleted.
    ReceiveSendDelete,
    /// An SQS message-move task (replay of all only).
    MoveTask,
}

/// The result of [`Bus::replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Messages moved (for a move task: those in the queue when it started).
    pub moved: usize,
    /// How.
    pub method: ReplayMethod,
}

/// Queues with SQS semantics, their dead-letter queues, and the claim check.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Publishes each event to the queues subscribed to its type, with its
    /// id and type as message attributes. A body above the claim-check
    /// threshold is written to the object store and the message carries a
    /// reference instead.
    async fn publish(&self, events: &[Outbound]) -> Result<(), PortError>;

    /// Sends a raw body to one queue, as an input edge or a test would.
    async fn send(
        &self,
        queue: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), PortError>;

    /// Receives up to `max` visible messages of `queue` and hides them for
    /// `visibility_ms`. A message already received `max_receive_count`
    /// times moves to the dead-letter queue instead (SQS applies its
    /// redrive policy on a later receive; the embedded bus does the same).
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Delivery>, PortError>;

    /// Deletes a received message (acknowledges it).
    async fn delete(&self, queue: &str, receipt: &str) -> Result<(), PortError>;

    /// Makes a received message visible again after `delay_ms`.
    async fn retry_after(&self, queue: &str, receipt: &str, delay_ms: u64)
    -> Result<(), PortError>;

    /// Returns the body a message carries: the body itself, or the object a
    /// claim-check reference names.
    async fn resolve(&self, body: &str) -> Result<String, PortError>;

    /// Sends a record to `queue`'s dead-letter queue with its reason,
    /// keeping its body (as received, claim check unresolved) and attributes.
    async fn dead_letter(
        &self,
        queue: &str,
        message_id: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
        reason: &DeadLetterReason,
    ) -> Result<(), PortError>;

    /// Lists the dead letters of one queue or of all, oldest first where
    /// the backend keeps an order.
    async fn dead_letters(&self, queue: Option<&str>) -> Result<Vec<DeadLetterEntry>, PortError>;

    /// Moves the dead letters of one queue or of all, or at most `max` of
    /// them, back to their source queues with body and attributes.
    async fn replay(&self, queue: Option<&str>, max: Option<usize>) -> Result<Replayed, PortError>;
}

/// The claim-check reference a message carries in place of a large body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCheck {
    /// The object key of the body.
    pub claim_check: String,
    /// The event id, for logs and the dead-letter listing.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The body's size in bytes.
    pub bytes: usize,
}

impl ClaimCheck {
    /// Reads a body as a claim-check reference; `None` for any other body.
    pub fn parse(body: &str) -> Option<ClaimCheck> {
        // Only a small JSON object starting with the reference's own key can
        // be one, so an event body is rejected before any parsing.
        if body.len() > 4096 || !body.starts_with("{\"claim_check\":") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    /// The object key of a claim check written by `service` for `event_id`
    /// (under `claims/<service>/`, which the service's IAM role may write).
    pub fn key_for(service: &str, event_id: &str) -> String {
        format!("claims/{service}/{event_id}.json")
    }

    /// Returns the reference as a message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("claim check serialises")
    }
}

/// Builds the message of a published event: its attributes, and its body or,
/// above `threshold` bytes, a claim-check reference to a copy written to
/// `objects` under `claims/<owner>/`.
pub async fn outbound_message(
    objects: &dyn ObjectStore,
    owner: &str,
    threshold: usize,
    event: &Outbound,
) -> Result<(String, BTreeMap<String, String>), PortError> {
    let mut attributes = BTreeMap::from([
        (ATTR_EVENT_ID.to_string(), event.id.clone()),
        (ATTR_EVENT_TYPE.to_string(), event.event_type.clone()),
    ]);
    if event.body.len() <= threshold {
        return Ok((event.body.clone(), attributes));
    }
    let key = ClaimCheck::key_for(owner, &event.id);
    // Event ids are unique and outputs deterministic, so an object already
    // at the key contains this same body.
    objects.put_if_absent(&key, event.body.as_bytes()).await?;
    attributes.insert(ATTR_CLAIM_CHECK.to_string(), "s3".to_string());
    let reference = ClaimCheck {
        claim_check: key,
        id: event.id.clone(),
        event_type: event.event_type.clone(),
        bytes: event.body.len(),
    };
    Ok((reference.to_body(), attributes))
}

// ---------------------------------------------------------- object store

/// What a put-if-absent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object already existed at the key; it was left as it was.
    AlreadyExists,
}

/// Write-once objects: the audit ledger, claim checks, the lake.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes `bytes` at `key` unless an object is there
    /// (`If-None-Match: *`).
    async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, PortError>;

    /// Reads the object at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
}

// --------------------------------------------------------------- secrets

/// Named secrets: signing keys, the keyring, the API token.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// Returns the secret's text. A missing secret is
    /// [`PortError::MissingSecret`] naming it and how to create it.
    async fn secret(&self, name: &str) -> Result<String, PortError>;
}

/// Secrets as files in a folder, for the embedded runtime: the secret
/// `a/b` is the file `<dir>/a/b`, which only its owner may read.
#[derive(Debug, Clone)]
pub struct DirSecrets {
    dir: PathBuf,
}

impl DirSecrets {
    /// Reads secrets from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSecrets { dir: dir.into() }
    }
}

#[async_trait]
impl SecretSource for DirSecrets {
    async fn secret(&self, name: &str) -> Result<String, PortError> {
        if name.is_empty() || name.split('/').any(|part| part.is_empty() || part == "..") {
            return Err(PortError::MissingSecret {
                name: name.into(),
                fix: "a secret name is a path of non-empty parts separated by '/', without '..'"
                    .into(),
            });
        }
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(&path)
                        .map(|m| m.permissions().mode() & 0o777)
                        .unwrap_or(0);
                    if mode & 0o077 != 0 {
                        return Err(PortError::Unavailable {
                            service: "secrets",
                            message: format!(
                                "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                                path.display(),
                                path.display()
                            ),
                        });
                    }
                }
                Ok(text)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(PortError::MissingSecret {
                    name: name.into(),
                    fix: format!("write it to {} with mode 0600", path.display()),
                })
            }
            Err(error) => Err(PortError::Unavailable {
                service: "secrets",
                message: format!("failed to read {}: {error}", path.display()),
            }),
        }
    }
}

// ---------------------------------------------------------- saga tasks

/// Results of the saga steps a workflow engine waits on: Step Functions'
/// `SendTaskSuccess` and `SendTaskFailure` on AWS. Sending the result of a
/// task that is already closed (completed before, timed out, or its execution stopped)
/// succeeds and changes nothing, so a redelivered step can answer again.
#[async_trait]
pub trait TaskAnswers: Send + Sync {
    /// Completes the task of `token` with `output` (JSON text).
    async fn succeed(&self, token: &str, output: &str) -> Result<(), PortError>;

    /// Fails the task of `token` with an error code and a cause (JSON text).
    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<(), PortError>;
}

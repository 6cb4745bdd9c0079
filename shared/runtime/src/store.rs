//! The key-value store contract shared by the embedded and AWS stores.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// A stored value with its version, for optimistic concurrency.
///
/// The value stays JSON text until a reader parses it into its own type, so
/// that no intermediate `serde_json::Value` is built.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The value as JSON text.
    pub json: String,
    /// 1 after the first write, incremented by each update.
    pub version: u64,
}

impl Versioned {
    /// Parses the value into `T`. A failure means the stored value does not
    /// match the type the reader expects.
    pub fn parse<T: DeserializeOwned>(&self, key: &str) -> Result<T, StoreError> {
        serde_json::from_str(&self.json).map_err(|error| StoreError::Corrupt {
            key: key.to_string(),
            reason: error.to_string(),
        })
    }
}

/// The condition a write puts on the key's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The key must not exist.
    Absent,
    /// The key must be at this version.
    Version(u64),
    /// No condition.
    Any,
}

impl Expected {
    /// The condition for replacing what a read returned.
    pub fn from_read(read: &Option<Versioned>) -> Self {
        match read {
            Some(current) => Expected::Version(current.version),
            None => Expected::Absent,
        }
    }
}

/// One conditional write of a handler's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    /// The key.
    pub key: String,
    /// The new value as JSON text, or `None` to delete the key.
    pub value: Option<String>,
    /// The condition on the current version.
    pub expected: Expected,
}

impl StateWrite {
    /// Puts `value` at `key` if the key is still as `read` found it.
    pub fn put<T: Serialize + ?Sized>(
        key: impl Into<String>,
        value: &T,
        read: &Option<Versioned>,
    ) -> Self {
        StateWrite {
            key: key.into(),
            value: Some(to_json(value)),
            expected: Expected::from_read(read),
        }
    }

    /// Puts `value` at `key` with no condition on its current version.
    pub fn put_any<T: Serialize + ?Sized>(key: impl Into<String>, value: &T) -> Self {
        StateWrite {
            key: key.into(),
            value: Some(to_json(value)),
            expected: Expected::Any,
        }
    }

    /// Deletes `key` if it is still as `read` found it.
    pub fn delete(key: impl Into<String>, read: &Option<Versioned>) -> Self {
        StateWrite {
            key: key.into(),
            value: None,
            expected: Expected::from_read(read),
        }
    }
}

/// Serialises a state value. serde_json fails only on a map key that is not
/// a string and on an error raised by a custom `Serialize`; state types have
/// neither.
fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("state values serialise to JSON")
}

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A conditional write found another version: another handler changed
    /// the key first. Retrying re-reads and succeeds.
    #[error("version conflict on key {key:?}: expected {expected:?}, found version {found:?}")]
    Conflict {
        /// The key.
        key: String,
        /// The condition.
        expected: Expected,
        /// The version found, `None` if absent.
        found: Option<u64>,
    },
    /// The store could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store cannot take this write or read as asked: a value above
    /// the backend's item size, or a scan prefix it cannot serve. Retrying
    /// fails the same way.
    #[error("store rejected key {key:?}: {reason}")]
    Rejected {
        /// The key or prefix.
        key: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A stored value is not valid JSON or not of the type its reader
    /// expects: the store was changed outside underwrite.
    #[error("corrupt value at key {key:?}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// The parser's explanation.
        reason: String,
    },
}

/// Reads from the key-value store. Writes go through the driver, which
/// commits them atomically with the event's idempotency record.
#[async_trait]
pub trait Store: Send + Sync {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Up to `limit` entries whose keys start with `prefix`, in key order,
    /// after `start_after` when given.
    async fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;
}

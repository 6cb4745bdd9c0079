//! The key-value store contract shared by the embedded and AWS stores.

use async_trait::async_trait;
use serde_json::Value;
use thiserror::Error;

/// A stored value with its version, for optimistic concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The value.
    pub value: Value,
    /// 1 after the first write, incremented by each update.
    pub version: u64,
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
    /// The new value, or `None` to delete the key.
    pub value: Option<Value>,
    /// The condition on the current version.
    pub expected: Expected,
}

impl StateWrite {
    /// Puts `value` at `key` if the key is still as `read` found it.
    pub fn put(key: impl Into<String>, value: Value, read: &Option<Versioned>) -> Self {
        StateWrite {
            key: key.into(),
            value: Some(value),
            expected: Expected::from_read(read),
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
    /// A stored value is not valid JSON: the store was changed outside
    /// underwrite.
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

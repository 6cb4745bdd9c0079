//! The handler contract.

use async_trait::async_trait;
use thiserror::Error;
use underwrite_events::{Envelope, EventPayload};

use crate::store::{StateWrite, Store, StoreError};

/// The store and identity a handler uses besides the event.
pub struct Context<'a> {
    /// State reads.
    pub store: &'a dyn Store,
    /// The handling service's name, also its identity as an emitter.
    pub service: &'a str,
}

/// The effects of handling one event.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Conditional state writes, committed atomically with the idempotency
    /// record.
    pub writes: Vec<StateWrite>,
    /// Events to publish after the commit.
    pub emits: Vec<Envelope>,
}

/// A handler failure, classified by whether a retry can help.
#[derive(Debug, Error)]
pub enum HandlerError {
    /// A retry may succeed: a store outage, a version conflict, or an event
    /// that arrived before the one it depends on.
    #[error("{message}")]
    Retryable {
        /// A fixed, low-cardinality code for logs and metrics.
        code: &'static str,
        /// The failure, the value involved and the next step to take.
        message: String,
    },
    /// No retry can help: an invalid event or a rule violation. The record
    /// goes to the dead-letter queue at once.
    #[error("{message}")]
    Permanent {
        /// A fixed, low-cardinality code for logs and metrics.
        code: &'static str,
        /// The failure, the value involved and the next step to take.
        message: String,
    },
}

impl HandlerError {
    /// Creates a retryable error.
    pub fn retryable(code: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            code,
            message: message.into(),
        }
    }

    /// Creates a permanent error.
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            code,
            message: message.into(),
        }
    }

    /// Returns the error's code.
    pub fn code(&self) -> &'static str {
        match self {
            HandlerError::Retryable { code, .. } | HandlerError::Permanent { code, .. } => code,
        }
    }

    /// Checks whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retryable { .. })
    }
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. } => {
                HandlerError::retryable("version_conflict", error.to_string())
            }
            StoreError::Unavailable(_) => {
                HandlerError::retryable("store_unavailable", error.to_string())
            }
            StoreError::Corrupt { .. } => {
                HandlerError::permanent("store_corrupt", error.to_string())
            }
            StoreError::Rejected { .. } => {
                HandlerError::permanent("store_rejected", error.to_string())
            }
        }
    }
}

/// A service: a name, the event types it subscribes to, and a handler.
#[async_trait]
pub trait Service: Send + Sync {
    /// Returns the service's name, such as `npa`, which is also its queue's name.
    fn name(&self) -> &'static str;

    /// Returns the event types it handles, where `*` subscribes to every type.
    fn subscriptions(&self) -> &'static [&'static str];

    /// Returns the event types it handles only when a saga sends them to its
    /// queue as a step's command or compensation, besides its subscriptions.
    fn commands(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checks whether the service handles `event_type`, by subscription or
    /// as a saga command.
    fn handles(&self, event_type: &str) -> bool {
        self.subscriptions()
            .iter()
            .chain(self.commands())
            .any(|t| *t == "*" || *t == event_type)
    }

    /// Handles one event. Must be deterministic in the event and the state
    /// it reads, so that a redelivery computes the same outcome.
    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError>;
}

/// Parses an event's payload as its type. A failure is a permanent
/// `invalid_event` error naming the event, since the same bytes fail the
/// same way on every retry.
pub fn typed_payload(event: &Envelope) -> Result<EventPayload, HandlerError> {
    event.typed().map_err(|error| {
        HandlerError::permanent("invalid_event", format!("event {}: {error}", event.id))
    })
}

/// Creates the permanent error for an event type `service` does not handle.
pub fn unsubscribed(service: &str, event: &Envelope) -> HandlerError {
    HandlerError::permanent(
        "unsubscribed_type",
        format!(
            "{service} does not handle {}; check the routing",
            event.event_type
        ),
    )
}

/// Reads and parses a JSON state value.
pub async fn read_state<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<(Option<T>, Option<crate::store::Versioned>), HandlerError> {
    let read = store.get(key).await?;
    let parsed = match &read {
        Some(versioned) => Some(versioned.parse(key).map_err(|error| {
            HandlerError::permanent(
                "store_corrupt",
                format!("stored value does not match its type: {error}"),
            )
        })?),
        None => None,
    };
    Ok((parsed, read))
}

/// Parsed state values kept by a service between records, each with the
/// exact JSON text it was parsed from or written as.
///
/// A read reuses a kept value only when the stored text is the same byte
/// for byte, so a write that was rolled back, or made by another process,
/// is parsed afresh. A value is taken out of the cache when read and put
/// back when written, so it is never cloned. The type must read back from
/// its own JSON unchanged (no skipped fields).
pub struct ParsedCache<T> {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, T)>>,
    limit: usize,
}

impl<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug> ParsedCache<T> {
    /// Creates a cache of at most `limit` values; it empties when full.
    pub fn new(limit: usize) -> Self {
        ParsedCache {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
            limit,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, T)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads and parses `key` as `read_state` does, taking the kept value
    /// instead of parsing when its text matches the stored text.
    pub async fn read(
        &self,
        store: &dyn Store,
        key: &str,
    ) -> Result<(Option<T>, Option<crate::store::Versioned>), HandlerError> {
        let read = store.get(key).await?;
        let Some(versioned) = &read else {
            return Ok((None, None));
        };
        let kept = {
            let mut entries = self.entries();
            match entries.remove(key) {
                Some((json, value)) if json == versioned.json => Some(value),
                _ => None,
            }
        };
        if let Some(value) = kept {
            return Ok((Some(value), read));
        }
        let parsed = versioned.parse(key).map_err(|error| {
            HandlerError::permanent(
                "store_corrupt",
                format!("stored value does not match its type: {error}"),
            )
        })?;
        Ok((Some(parsed), read))
    }

    /// Keeps `value` as the parsed form of the text `write` puts, for the
    /// next read of its key. A delete keeps nothing.
    pub fn keep(&self, write: &StateWrite, value: T) {
        let Some(json) = &write.value else {
            return;
        };
        // Tests check the round trip the reuse relies on: the text parses
        // back to the value kept.
        debug_assert_eq!(
            serde_json::from_str::<T>(json).ok().as_ref(),
            Some(&value),
            "{} does not read back from its own JSON",
            write.key
        );
        let mut entries = self.entries();
        if entries.len() >= self.limit {
            entries.clear();
        }
        entries.insert(write.key.clone(), (json.clone(), value));
    }
}

//! The event envelope and its canonical bytes.

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use underwrite_domain::BusinessDate;

use crate::ids::{EventId, derive_event_id};
use crate::payloads::{EventPayload, EventType};

/// The largest event accepted, in bytes: the SQS message limit of 1 MiB.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Errors raised while reading an event. Every variant is permanent: the
/// same bytes fail the same way on every retry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// The bytes are not a JSON object.
    #[error("malformed JSON: {reason}")]
    MalformedJson {
        /// The parser's explanation.
        reason: String,
    },
    /// A required envelope field is absent.
    #[error("missing field {field:?}: every event needs id, type, occurred_at and payload")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// An envelope field has the wrong form.
    #[error("invalid field {field:?}: {reason}")]
    InvalidField {
        /// The field's name.
        field: String,
        /// The problem and the values allowed.
        reason: String,
    },
    /// The event type is not in the catalogue.
    #[error("unknown event type {value:?}: expected one of {known}")]
    UnknownType {
        /// The rejected type.
        value: String,
        /// The known types.
        known: String,
    },
    /// The payload does not match its type.
    #[error("invalid {event_type} payload: {reason}")]
    InvalidPayload {
        /// The event type.
        event_type: &'static str,
        /// The problem and the values allowed.
        reason: String,
    },
    /// The event is larger than a queue message may be.
    #[error(
        "event of {bytes} bytes exceeds the limit of {max} bytes; send large documents by reference"
    )]
    Oversize {
        /// The event's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// The fields of an input event, appended to parse errors.
pub(crate) const EVENT_FIELDS_HELP: &str = "an input event is one JSON object with id, type, occurred_at, payload and optionally business_date";

/// The JSON envelope of every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique id; consumers deduplicate on it.
    pub id: EventId,
    /// Dotted type name, such as `loan.disbursed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload schema version.
    pub version: u32,
    /// Identity of the emitter: a service name, or `input` for events a
    /// lender's systems sent in.
    pub source: String,
    /// The entity the event is about: a loan id or a business date.
    pub subject: String,
    /// When the event happened, RFC 3339 with offset.
    #[serde(with = "rfc3339")]
    pub occurred_at: DateTime<FixedOffset>,
    /// The IST calendar date the event belongs to.
    pub business_date: BusinessDate,
    /// Id of the first event of the flow.
    pub correlation_id: EventId,
    /// Id of the event that caused this one; absent for input events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<EventId>,
    /// The typed body, as JSON.
    pub payload: serde_json::Value,
    /// Ed25519 signature over the canonical bytes, base64; absent on input
    /// events before the ingest edge signs them, and when signing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Id of the signing key, `<identity>:<fingerprint>`; absent when the
    /// event is unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

mod rfc3339 {
    use chrono::{DateTime, FixedOffset, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &DateTime<FixedOffset>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<FixedOffset>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid occurred_at {text:?}: expected an RFC 3339 timestamp with offset, such as \"2024-03-31T20:00:00Z\""
            ))
        })
    }
}

impl Envelope {
    /// Parses a queue message body, checking the type and payload too.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::Oversize {
                bytes: bytes.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|error| EventError::MalformedJson {
                reason: error.to_string(),
            })?;
        envelope.typed()?;
        Ok(envelope)
    }

    /// Looks up the event's type in the catalogue.
    pub fn known_type(&self) -> Result<EventType, EventError> {
        EventType::from_name(&self.event_type).ok_or_else(|| EventError::UnknownType {
            value: self.event_type.clone(),
            known: EventType::known_names(),
        })
    }

    /// Parses the payload as its type.
    pub fn typed(&self) -> Result<EventPayload, EventError> {
        let event_type = self.known_type()?;
        EventPayload::parse(event_type, &self.payload).map_err(|reason| {
            EventError::InvalidPayload {
                event_type: event_type.as_str(),
                reason,
            }
        })
    }

    /// Builds output number `position` of the handler `source` for `cause`.
    /// The id derives from the cause's id and the position, so reprocessing
    /// re-emits the same event.
    pub fn caused_by(
        cause: &Envelope,
        position: u32,
        source: &str,
        subject: &str,
        business_date: BusinessDate,
        payload: &EventPayload,
    ) -> Envelope {
        let millis = cause.occurred_at.timestamp_millis().max(0) as u64;
        Envelope {
            id: derive_event_id(&cause.id, position, millis),
            event_type: payload.event_type().as_str().to_string(),
            version: 1,
            source: source.to_string(),
            subject: subject.to_string(),
            occurred_at: cause.occurred_at,
            business_date,
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.id.clone()),
            payload: payload.to_value(),
            signature: None,
            key_id: None,
        }
    }

    /// Serialises the event as compact JSON with sorted keys, signature included.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&SortedView::of(self, true)).expect("envelope serialises")
    }

    /// `occurred_at` in its canonical text form.
    pub fn occurred_at_text(&self) -> String {
        self.occurred_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

/// Serialises an event to its canonical bytes: compact JSON of every field except
/// `signature` and `key_id`, with object keys sorted at every level. These
/// are the bytes a signature covers and the audit ledger hashes.
pub fn canonical_bytes(envelope: &Envelope) -> Vec<u8> {
    serde_json::to_vec(&SortedView::of(envelope, false)).expect("envelope serialises")
}

/// The envelope's fields declared in the order of their JSON names, so that
/// serialising it writes sorted keys without building a `serde_json::Value`.
/// The payload is a `Value` already, whose map keeps its keys sorted (the
/// `preserve_order` feature of serde_json is off).
#[derive(Serialize)]
struct SortedView<'a> {
    business_date: BusinessDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a EventId>,
    correlation_id: &'a EventId,
    id: &'a EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    occurred_at: String,
    payload: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    source: &'a str,
    subject: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    version: u32,
}

impl<'a> SortedView<'a> {
    /// Views `envelope`, with or without its signature and key id.
    fn of(envelope: &'a Envelope, signed: bool) -> Self {
        SortedView {
            business_date: envelope.business_date,
            causation_id: envelope.causation_id.as_ref(),
            correlation_id: &envelope.correlation_id,
            id: &envelope.id,
            key_id: envelope.key_id.as_deref().filter(|_| signed),
            occurred_at: envelope.occurred_at_text(),
            payload: &envelope.payload,
            signature: envelope.signature.as_deref().filter(|_| signed),
            source: &envelope.source,
            subject: &envelope.subject,
            event_type: &envelope.event_type,
            version: envelope.version,
        }
    }
}

//! Identifier newtypes and deterministic event ids.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

/// The longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Error raised for an invalid identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {kind} {value:?}: use 1 to 128 characters from A-Z, a-z, 0-9 and - _ . : /")]
pub struct IdError {
    /// Which identifier, such as `loan_id`.
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
}

fn check_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    if valid {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: value.to_string(),
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_id($kind, value)?;
                Ok($name(value.to_string()))
            }

            /// The identifier's text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                $name::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An event id: a UUIDv7 for events underwrite emits, or the sender's
    /// idempotency key for input events.
    EventId,
    "event id"
);
id_type!(
    /// A loan (facility) id assigned by the lender.
    LoanId,
    "loan_id"
);
id_type!(
    /// A borrower id assigned by the lender.
    BorrowerId,
    "borrower_id"
);
id_type!(
    /// A payment id assigned by the lender, unique within a loan.
    PaymentId,
    "payment_id"
);

id_type!(
    /// A loan application id assigned by the lender.
    ApplicationId,
    "application_id"
);
id_type!(
    /// A consent artefact id.
    ConsentId,
    "consent_id"
);

impl EventId {
    /// Wraps a UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid.hyphenated().to_string())
    }
}

/// The id of output number `position` of the event `input`: a UUIDv7 whose
/// timestamp is `unix_millis` (the input's time) and whose other bits are
/// SHA-256 of the input id and the position. Reprocessing an event therefore
/// re-emits the same ids, and consumers drop the duplicates.
pub fn derive_event_id(input: &EventId, position: u32, unix_millis: u64) -> EventId {
    let digest = Sha256::new()
        .chain_update(input.as_str().as_bytes())
        .chain_update([0u8])
        .chain_update(position.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..8]);
    bytes[6..].copy_from_slice(&digest[..10]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    EventId::from_uuid(Uuid::from_bytes(bytes))
}

/// Returns the W3C trace id (32 lowercase hex digits) of a flow, derived from
/// its correlation id: the UUID's own 16 bytes when the id is a UUID, else
/// the first 16 bytes of its SHA-256. Every event of a flow shares its
/// correlation id, so logs and traces of one flow share this trace id.
pub fn trace_id(correlation_id: &EventId) -> String {
    match Uuid::parse_str(correlation_id.as_str()) {
        Ok(uuid) => uuid.simple().to_string(),
        Err(_) => hex::encode(&Sha256::digest(correlation_id.as_str().as_bytes())[..16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_v7() {
        let input = EventId::parse("pay-0001").unwrap();
        let first = derive_event_id(&input, 0, 1_711_915_200_000);
        assert_eq!(first, derive_event_id(&input, 0, 1_711_915_200_000));
        assert_ne!(first, derive_event_id(&input, 1, 1_711_915_200_000));
        let uuid = Uuid::parse_str(first.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(LoanId::parse("").is_err());
        assert!(LoanId::parse("has space").is_err());
        assert!(LoanId::parse(&"x".repeat(129)).is_err());
        assert!(LoanId::parse("L-0001/a:b_c.d").is_ok());
    }

    #[test]
    fn trace_id_is_uuid_hex_or_hash() {
        let uuid = EventId::parse("01890a5d-ac96-774b-bcce-b302099a8057").unwrap();
        assert_eq!(trace_id(&uuid), "01890a5dac96774bbcceb302099a8057");
        let text = EventId::parse("disb-L1").unwrap();
        assert_eq!(trace_id(&text).len(), 32);
        assert_eq!(trace_id(&text), trace_id(&text));
        assert_ne!(
            trace_id(&text),
            trace_id(&EventId::parse("disb-L2").unwrap())
        );
    }
}

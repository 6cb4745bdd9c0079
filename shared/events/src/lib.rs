//! The underwrite event model: the envelope every service exchanges, the typed
//! payloads of each event type, canonical bytes and deterministic ids.

#![warn(missing_docs)]

pub mod envelope;
pub mod ids;
pub mod input;
pub mod origination;
pub mod payloads;

pub use envelope::{Envelope, EventError, canonical_bytes};
pub use ids::{
    ApplicationId, BorrowerId, ConsentId, EventId, LoanId, PaymentId, derive_event_id, trace_id,
};
pub use input::parse_input_line;
pub use payloads::{EventPayload, EventType, Revision};

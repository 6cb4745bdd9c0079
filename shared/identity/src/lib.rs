//! Service identities: every service, and the ingest edge that accepts input
//! events, owns an Ed25519 key pair. Emitters sign each event's canonical
//! bytes; consumers verify the signature against the keyring and check the
//! emitter policy before a handler runs.
//!
//! A key folder contains three kinds of file:
//!
//! - `<identity>.key`: the private key, JSON, mode 0600 (owner only);
//! - `keyring.json`: the public keys verifiers trust, by key id;
//! - `policy.json`: which identity may emit which event types.
//!
//! Key ids have the form `<identity>:<fingerprint>`, the fingerprint being the
//! first 8 bytes of the SHA-256 of the public key, in hex.

#![warn(missing_docs)]

mod authority;
mod error;
mod keys;
mod policy;

pub use authority::{Authority, AuthzError};
pub use error::IdentityError;
pub use keys::{Identity, KeyDir, Keyring, KeyringEntry, key_id_for};
pub use policy::Policy;

/// Identity of the edge that signs input events after validating them; it is
/// also the `source` of every input event.
pub const INGEST_IDENTITY: &str = "input";

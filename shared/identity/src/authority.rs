//! Signing by emitters and verification by consumers, with keys loaded once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;
use underwrite_events::{Envelope, canonical_bytes};

use crate::error::IdentityError;
use crate::keys::{Identity, KeyDir, Keyring};
use crate::policy::Policy;

/// A consumer's reason for rejecting an event before handling it. Every variant is
/// permanent: the same event fails the same way on every delivery.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthzError {
    /// The event carries no signature or no key id.
    #[error(
        "event {event_id} is unsigned (no {missing}): every event must be signed by its emitter; send input through `underwrite run --input`, which signs it at the edge"
    )]
    Unsigned {
        /// The event's id.
        event_id: String,
        /// `signature` or `key_id`.
        missing: &'static str,
    },
    /// The key id is not in the keyring.
    #[error(
        "event {event_id} is signed by key {key_id}, which is not in the keyring {keyring}: register the emitter with `underwrite identity <name>`, or re-send the event signed by a registered key"
    )]
    UnknownKey {
        /// The event's id.
        event_id: String,
        /// The key id the event names.
        key_id: String,
        /// The keyring file searched.
        keyring: PathBuf,
    },
    /// The signature does not verify over the event's canonical bytes.
    #[error(
        "event {event_id}: the signature by key {key_id} is invalid ({reason}), so the event was changed after signing or signed by another key; re-send the original event from its emitter"
    )]
    BadSignature {
        /// The event's id.
        event_id: String,
        /// The key id the event names.
        key_id: String,
        /// The failed step: decoding or verification.
        reason: String,
    },
    /// The signer may not emit this type, or signed an event whose source is
    /// another identity.
    #[error("event {event_id} signed by key {key_id}: {reason}")]
    Policy {
        /// The event's id.
        event_id: String,
        /// The key id the event names.
        key_id: String,
        /// The rule broken and the fix.
        reason: String,
    },
}

impl AuthzError {
    /// Returns the fixed code for logs, metrics and dead letters; every code
    /// starts with `authz`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthzError::Unsigned { .. } => "authz_unsigned",
            AuthzError::UnknownKey { .. } => "authz_unknown_key",
            AuthzError::BadSignature { .. } => "authz_bad_signature",
            AuthzError::Policy { .. } => "authz_policy",
        }
    }
}

/// The signing keys of the identities this process runs, the keyring of
/// trusted public keys and the emitter policy, all loaded once.
pub struct Authority {
    signers: HashMap<String, Identity>,
    verifiers: HashMap<String, (String, VerifyingKey)>,
    policy: Policy,
    keyring_path: PathBuf,
    policy_path: PathBuf,
    /// SHA-256 digests of signed event bodies (the JSON text as queued,
    /// signature and key id included) whose signature passed
    /// `verify_strict` or was made by this process. The embedded runtime
    /// delivers one event to several queues of the same process. Parsing is
    /// deterministic, so the same body bytes give the same envelope and the
    /// same verification result, and a repeat is looked up instead.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Digests kept before the memo of verified signatures is cleared.
const VERIFIED_MEMO_LIMIT: usize = 100_000;

impl std::fmt::Debug for Authority {
    // Lists key ids only, so that no private key reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut signers: Vec<&str> = self.signers.values().map(|s| s.key_id()).collect();
        signers.sort_unstable();
        let mut trusted: Vec<&str> = self.verifiers.keys().map(String::as_str).collect();
        trusted.sort_unstable();
        f.debug_struct("Authority")
            .field("signers", &signers)
            .field("trusted", &trusted)
            .field("policy", &self.policy_path)
            .finish()
    }
}

impl Authority {
    /// Loads the key files of `identities`, the keyring and the policy from
    /// `dir`. With `create_missing`, missing keys are created and a missing
    /// policy file is written from `default_policy`; without it they are
    /// errors.
    pub fn load(
        dir: &KeyDir,
        identities: &[&str],
        create_missing: bool,
        default_policy: &Policy,
    ) -> Result<Authority, IdentityError> {
        let mut signers = Vec::new();
        for name in identities {
            signers.push(dir.load_identity(name, create_missing)?);
        }
        let keyring_path = dir.keyring_path();
        let keyring = Keyring::load(&keyring_path)?;
        let policy_path = dir.policy_path();
        let policy = if create_missing {
            Policy::load_or_write(&policy_path, default_policy)?
        } else {
            Policy::load(&policy_path)?
        };
        Authority::from_parts(signers, &keyring, keyring_path, policy, policy_path)
    }

    /// Builds an authority from keys already read: the signing identities,
    /// the keyring and the policy. `keyring_path` and `policy_path` name
    /// where the keyring and policy came from (files, or a secret's name)
    /// in errors.
    pub fn from_parts(
        identities: Vec<Identity>,
        keyring: &Keyring,
        keyring_path: PathBuf,
        policy: Policy,
        policy_path: PathBuf,
    ) -> Result<Authority, IdentityError> {
        let signers = identities
            .into_iter()
            .map(|identity| (identity.name().to_string(), identity))
            .collect();
        let verifiers = keyring
            .verifying_keys(&keyring_path)?
            .into_iter()
            .map(|(key_id, identity, key)| (key_id, (identity, key)))
            .collect();
        Ok(Authority {
            signers,
            verifiers,
            policy,
            keyring_path,
            policy_path,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Returns the policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks whether this process has the private key of `identity`.
    pub fn signs_as(&self, identity: &str) -> bool {
        self.signers.contains_key(identity)
    }

    /// Signs `event` as `identity` and returns its signed JSON body, the
    /// text to queue. Fails when this process has no key for `identity`,
    /// which is a wiring mistake rather than bad input.
    pub fn sign(&self, identity: &str, event: &mut Envelope) -> Result<String, IdentityError> {
        let signer = self
            .signers
            .get(identity)
            .ok_or_else(|| IdentityError::MissingKey {
                identity: identity.into(),
                path: PathBuf::from(format!("{identity}.key")),
            })?;
        signer.sign(event);
        // A signature made here verifies by construction, so the consumers
        // in this process find its body in the memo. A changed byte changes
        // the digest and is verified in full.
        let body = event.to_json();
        self.remember(Sha256::digest(body.as_bytes()).into());
        Ok(body)
    }

    /// Records a digest that passed verification.
    fn remember(&self, digest: [u8; 32]) {
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.len() >= VERIFIED_MEMO_LIMIT {
            verified.clear();
        }
        verified.insert(digest);
    }

    /// Verifies the signature, the signer's key and the emitter policy.
    pub fn verify(&self, event: &Envelope) -> Result<(), AuthzError> {
        self.verify_body(event, event.to_json().as_bytes())
    }

    /// Verifies `event`, which must be the envelope parsed from `body`: the
    /// signature over its canonical bytes (looked up by the body's digest
    /// when these bytes verified before), the signer's key and the emitter
    /// policy.
    pub fn verify_body(&self, event: &Envelope, body: &[u8]) -> Result<(), AuthzError> {
        let event_id = || event.id.to_string();
        let key_id = event
            .key_id
            .as_deref()
            .ok_or_else(|| AuthzError::Unsigned {
                event_id: event_id(),
                missing: "key_id",
            })?;
        let signature = event
            .signature
            .as_deref()
            .ok_or_else(|| AuthzError::Unsigned {
                event_id: event_id(),
                missing: "signature",
            })?;
        let (identity, key) = self
            .verifiers
            .get(key_id)
            .ok_or_else(|| AuthzError::UnknownKey {
                event_id: event_id(),
                key_id: key_id.into(),
                keyring: self.keyring_path.clone(),
            })?;
        let digest: [u8; 32] = Sha256::digest(body).into();
        let seen = self
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&digest);
        if !seen {
            let bad_signature = |reason: &str| AuthzError::BadSignature {
                event_id: event_id(),
                key_id: key_id.into(),
                reason: reason.into(),
            };
            let bytes: [u8; 64] = BASE64
                .decode(signature)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| bad_signature("not 64 bytes of base64"))?;
            key.verify_strict(&canonical_bytes(event), &Signature::from_bytes(&bytes))
                .map_err(|_| bad_signature("verification failed"))?;
            self.remember(digest);
        }
        if event.source != *identity {
            return Err(AuthzError::Policy {
                event_id: event_id(),
                key_id: key_id.into(),
                reason: format!(
                    "the event's source is {:?} but the key belongs to identity {identity:?}; an emitter may sign only events whose source is its own name",
                    event.source
                ),
            });
        }
        if !self.policy.allows(identity, &event.event_type) {
            return Err(AuthzError::Policy {
                event_id: event_id(),
                key_id: key_id.into(),
                reason: format!(
                    "identity {identity:?} may not emit {} under the policy {} (allowed: {}); add the type under emitters.{identity} there if this emitter should send it",
                    event.event_type,
                    self.policy_path.display(),
                    self.policy.allowed_types(identity)
                ),
            });
        }
        Ok(())
    }
}

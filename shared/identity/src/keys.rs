//! Key pairs, key files and the keyring.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use underwrite_events::{Envelope, canonical_bytes};

use crate::error::IdentityError;

/// Name of the keyring file in a key folder.
pub const KEYRING_FILE: &str = "keyring.json";

/// Name of the policy file in a key folder.
pub const POLICY_FILE: &str = "policy.json";

/// An identity's key pair.
pub struct Identity {
    name: String,
    key_id: String,
    signing_key: SigningKey,
}

impl std::fmt::Debug for Identity {
    // The private key is left out so that it never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The key file's JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    identity: String,
    key_id: String,
    /// The 32-byte Ed25519 seed, base64.
    private_key: String,
}

/// Returns `<identity>:<fingerprint>`, the fingerprint being the first 8
/// bytes of the SHA-256 of the public key, in hex.
pub fn key_id_for(identity: &str, key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{identity}:{}", hex::encode(&digest[..8]))
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(IdentityError::InvalidName { name: name.into() })
    }
}

impl Identity {
    /// Generates a key pair for `name` from the operating system's random
    /// number generator.
    pub fn generate(name: &str) -> Result<Identity, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Identity::from_seed(name, seed)
    }

    /// Builds the identity whose private key is `seed`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Identity, IdentityError> {
        check_name(name)?;
        let signing_key = SigningKey::from_bytes(&seed);
        Ok(Identity {
            name: name.to_string(),
            key_id: key_id_for(name, &signing_key.verifying_key()),
            signing_key,
        })
    }

    /// Returns the identity's name, such as `npa` or `input`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the key id, `<identity>:<fingerprint>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Returns the public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// Signs the event's canonical bytes, setting `signature` (base64) and
    /// `key_id`. Ed25519 signatures are deterministic, so signing the same
    /// event again gives the same bytes.
    pub fn sign(&self, event: &mut Envelope) {
        let message = canonical_bytes(event);
        self.sign_message(event, &message);
    }

    /// Signs `message`, which must be `canonical_bytes(event)`, sets the
    /// event's `signature` and `key_id`, and returns the signature bytes.
    pub fn sign_message(&self, event: &mut Envelope, message: &[u8]) -> [u8; 64] {
        let signature = self.signing_key.sign(message).to_bytes();
        event.signature = Some(BASE64.encode(signature));
        event.key_id = Some(self.key_id.clone());
        signature
    }

    /// Writes the private key to `path` with mode 0600. An existing file is
    /// replaced only when `force` is set.
    pub fn write_key_file(&self, path: &Path, force: bool) -> Result<(), IdentityError> {
        if path.exists() && !force {
            return Err(IdentityError::Exists { path: path.into() });
        }
        let file = KeyFile {
            identity: self.name.clone(),
            key_id: self.key_id.clone(),
            private_key: BASE64.encode(self.signing_key.to_bytes()),
        };
        let text = serde_json::to_string_pretty(&file).expect("key file serialises") + "\n";
        // The temporary file is created with mode 0600, so the key is never
        // readable by others, not even between the write and the rename.
        let temporary = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&temporary);
        let io = |source| IdentityError::Io {
            action: "write",
            path: temporary.clone(),
            source,
        };
        let mut handle = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io)?;
        handle.write_all(text.as_bytes()).map_err(io)?;
        handle.sync_all().map_err(io)?;
        std::fs::rename(&temporary, path).map_err(|source| IdentityError::Io {
            action: "write",
            path: path.into(),
            source,
        })
    }

    /// Reads a key file, rejecting one that others than its owner can read.
    pub fn load_key_file(path: &Path) -> Result<Identity, IdentityError> {
        let metadata = std::fs::metadata(path).map_err(|source| IdentityError::Io {
            action: "read",
            path: path.into(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.into(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            action: "read",
            path: path.into(),
            source,
        })?;
        Identity::from_key_text(&text, path)
    }

    /// Parses the text of a key file; `source` names where it came from (a
    /// path, or a secret's name) in errors.
    pub fn from_key_text(text: &str, source: &Path) -> Result<Identity, IdentityError> {
        let path = source;
        let invalid = |reason: String| IdentityError::Invalid {
            what: "key file",
            path: path.into(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            invalid(format!(
                "{e}; expected {{\"identity\", \"key_id\", \"private_key\"}} as written by `underwrite identity`"
            ))
        })?;
        let seed: [u8; 32] = BASE64
            .decode(file.private_key.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| invalid("private_key is not 32 bytes of base64".into()))?;
        let identity = Identity::from_seed(&file.identity, seed)?;
        if identity.key_id != file.key_id {
            return Err(invalid(format!(
                "key_id {:?} does not match the private key, whose id is {:?}; recreate the key with `underwrite identity {} --force`",
                file.key_id, identity.key_id, file.identity
            )));
        }
        Ok(identity)
    }
}

/// A public key that verifiers trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringEntry {
    /// The identity the key belongs to.
    pub identity: String,
    /// The 32-byte Ed25519 public key, base64.
    pub public_key: String,
    /// When the key was registered, RFC 3339.
    pub created_at: String,
}

/// The public keys verifiers trust, by key id. An identity may have several
/// keys, so that events signed before a key was replaced still verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keyring {
    /// Entries by key id.
    pub keys: BTreeMap<String, KeyringEntry>,
}

impl Keyring {
    /// Reads a keyring file; a missing file is an empty keyring.
    pub fn load(path: &Path) -> Result<Keyring, IdentityError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keyring::default());
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "read",
                    path: path.into(),
                    source,
                });
            }
        };
        Keyring::from_text(&text, path)
    }

    /// Parses the text of a keyring file; `path` names where it came from
    /// (a file, or a secret's name) in errors.
    pub fn from_text(text: &str, path: &Path) -> Result<Keyring, IdentityError> {
        serde_json::from_str(text).map_err(|e| IdentityError::Invalid {
            what: "keyring",
            path: path.into(),
            reason: format!(
                "{e}; expected {{\"keys\": {{\"<identity>:<fingerprint>\": {{\"identity\", \"public_key\", \"created_at\"}}}}}}"
            ),
        })
    }

    /// Adds the identity's public key.
    pub fn register(&mut self, identity: &Identity) {
        self.keys.insert(
            identity.key_id().to_string(),
            KeyringEntry {
                identity: identity.name().to_string(),
                public_key: BASE64.encode(identity.verifying_key().as_bytes()),
                created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        );
    }

    /// Writes the keyring to `path` through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = serde_json::to_string_pretty(self).expect("keyring serialises") + "\n";
        write_replacing(path, &text)
    }

    /// Parses every entry's public key; the key id must match the key.
    pub fn verifying_keys(
        &self,
        path: &Path,
    ) -> Result<Vec<(String, String, VerifyingKey)>, IdentityError> {
        self.keys
            .iter()
            .map(|(key_id, entry)| {
                let invalid = |reason: String| IdentityError::Invalid {
                    what: "keyring",
                    path: path.into(),
                    reason: format!("key {key_id:?}: {reason}"),
                };
                let bytes: [u8; 32] = BASE64
                    .decode(entry.public_key.trim())
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| invalid("public_key is not 32 bytes of base64".into()))?;
                let key = VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| invalid(format!("public_key is not an Ed25519 key: {e}")))?;
                let expected = key_id_for(&entry.identity, &key);
                if &expected != key_id {
                    return Err(invalid(format!(
                        "the id does not match the public key and identity, whose id is {expected:?}; remove the entry and run `underwrite identity {}` again",
                        entry.identity
                    )));
                }
                Ok((key_id.clone(), entry.identity.clone(), key))
            })
            .collect()
    }
}

pub(crate) fn write_replacing(path: &Path, text: &str) -> Result<(), IdentityError> {
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(|source| IdentityError::Io {
        action: "write",
        path: temporary.clone(),
        source,
    })?;
    std::fs::rename(&temporary, path).map_err(|source| IdentityError::Io {
        action: "write",
        path: path.into(),
        source,
    })
}

/// A key folder: private key files, the keyring and the policy file.
#[derive(Debug, Clone)]
pub struct KeyDir {
    path: PathBuf,
}

impl KeyDir {
    /// Uses the folder at `path`; nothing is created until a key is written.
    pub fn new(path: impl Into<PathBuf>) -> KeyDir {
        KeyDir { path: path.into() }
    }

    /// Returns the folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the path of an identity's private key file.
    pub fn key_path(&self, identity: &str) -> PathBuf {
        self.path.join(format!("{identity}.key"))
    }

    /// Returns the path of the keyring file.
    pub fn keyring_path(&self) -> PathBuf {
        self.path.join(KEYRING_FILE)
    }

    /// Returns the path of the policy file.
    pub fn policy_path(&self) -> PathBuf {
        self.path.join(POLICY_FILE)
    }

    /// Creates the folder with mode 0700 if it is missing.
    pub fn ensure(&self) -> Result<(), IdentityError> {
        if self.path.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.path)
            .and_then(|()| {
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| IdentityError::Io {
                action: "create",
                path: self.path.clone(),
                source,
            })
    }

    /// Generates a key pair for `identity`, writes its key file (replacing
    /// an existing one only with `force`) and registers its public key in
    /// the keyring. Keys already in the keyring stay there.
    pub fn create_identity(&self, identity: &str, force: bool) -> Result<Identity, IdentityError> {
        check_name(identity)?;
        self.ensure()?;
        let key_path = self.key_path(identity);
        if key_path.exists() && !force {
            return Err(IdentityError::Exists { path: key_path });
        }
        let created = Identity::generate(identity)?;
        let keyring_path = self.keyring_path();
        let mut keyring = Keyring::load(&keyring_path)?;
        keyring.register(&created);
        // The public key is registered first: a key file whose key is not in
        // the keyring would sign events that every consumer rejects.
        keyring.save(&keyring_path)?;
        created.write_key_file(&key_path, force)?;
        tracing::info!(identity, key_id = created.key_id(), path = %key_path.display(), "Created an identity key.");
        Ok(created)
    }

    /// Reads an identity's key file; when it is missing, creates the
    /// identity if `create_missing` is set and fails otherwise.
    pub fn load_identity(
        &self,
        identity: &str,
        create_missing: bool,
    ) -> Result<Identity, IdentityError> {
        check_name(identity)?;
        let key_path = self.key_path(identity);
        if key_path.exists() {
            Identity::load_key_file(&key_path)
        } else if create_missing {
            self.create_identity(identity, false)
        } else {
            Err(IdentityError::MissingKey {
                identity: identity.into(),
                path: key_path,
            })
        }
    }
}

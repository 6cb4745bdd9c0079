//! Errors of key and policy files.

use std::path::PathBuf;

use thiserror::Error;

/// A key folder, key file, keyring or policy file that cannot be used.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// An identity name that cannot be a file name or a key id prefix.
    #[error(
        "invalid identity name {name:?}: use 1 to 64 lowercase letters, digits, '-' or '_', such as a service name"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// Reading or writing a file failed.
    #[error("Failed to {action} {path}: {source}")]
    Io {
        /// The operation: `read`, `write` or `create`.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A key file exists and replacing it was not requested.
    #[error(
        "key file {path} already exists; pass --force to replace it (events signed with the old key still verify while its public key stays in the keyring)"
    )]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// A private key file that others than its owner can read.
    #[error(
        "key file {path} has mode {mode:03o}, so other users can read the private key; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An identity whose key file does not exist.
    #[error(
        "no key file for identity {identity:?} at {path}; run `underwrite identity {identity}`, or set identities.create_missing to true to create missing keys on start-up"
    )]
    MissingKey {
        /// The identity.
        identity: String,
        /// The expected path of its key file.
        path: PathBuf,
    },
    /// A file whose contents are not what it should hold.
    #[error("invalid {what} {path}: {reason}")]
    Invalid {
        /// `key file`, `keyring` or `policy file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The problem and the fix.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("Failed to read random bytes for a new key: {0}")]
    Random(String),
}

//! The emitter policy: which identity may emit which event types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IdentityError;

/// Event types each identity may emit. An identity that is not listed may
/// emit nothing; `*` in a list allows every type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Allowed event types by identity name.
    pub emitters: BTreeMap<String, BTreeSet<String>>,
}

impl Policy {
    /// Builds a policy from (identity, allowed types) pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [&'a str])>) -> Policy {
        Policy {
            emitters: pairs
                .into_iter()
                .map(|(identity, types)| {
                    (
                        identity.to_string(),
                        types.iter().map(|t| t.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            action: "read",
            path: path.into(),
            source,
        })?;
        Policy::from_text(&text, path)
    }

    /// Parses the text of a policy file; `path` names where it came from (a
    /// file, or a secret's name) in errors.
    pub fn from_text(text: &str, path: &Path) -> Result<Policy, IdentityError> {
        serde_json::from_str(text).map_err(|e| IdentityError::Invalid {
            what: "policy file",
            path: path.into(),
            reason: format!(
                "{e}; expected {{\"emitters\": {{\"<identity>\": [\"<event type>\", ...]}}}}"
            ),
        })
    }

    /// Reads the policy file at `path`, writing `default` there first if no
    /// file exists.
    pub fn load_or_write(path: &Path, default: &Policy) -> Result<Policy, IdentityError> {
        if !path.exists() {
            default.save(path)?;
            tracing::info!(path = %path.display(), "Wrote the default emitter policy.");
        }
        Policy::load(path)
    }

    /// Writes the policy as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = serde_json::to_string_pretty(self).expect("policy serialises") + "\n";
        crate::keys::write_replacing(path, &text)
    }

    /// Checks whether `identity` may emit `event_type`.
    pub fn allows(&self, identity: &str, event_type: &str) -> bool {
        self.emitters
            .get(identity)
            .is_some_and(|types| types.contains(event_type) || types.contains("*"))
    }

    /// Lists the (identity, event type) grants of `other` that this policy
    /// does not give, such as the types a newer release's services emit
    /// that a policy file written by an older release lacks.
    pub fn missing_from(&self, other: &Policy) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for (identity, types) in &other.emitters {
            for event_type in types {
                if !self.allows(identity, event_type) {
                    missing.push((identity.clone(), event_type.clone()));
                }
            }
        }
        missing
    }

    /// Lists the types `identity` may emit, comma-separated, for messages.
    pub fn allowed_types(&self, identity: &str) -> String {
        match self.emitters.get(identity) {
            Some(types) if !types.is_empty() => {
                types.iter().cloned().collect::<Vec<_>>().join(", ")
            }
            _ => "none".to_string(),
        }
    }
}

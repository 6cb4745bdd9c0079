//! Service identities: the `identities` settings, the default emitter policy
//! and `underwrite identity`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use underwrite_identity::{Authority, INGEST_IDENTITY, KeyDir, Policy};

use crate::config::Config;

/// Event signing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Sign every event and verify it before its handler runs.
    pub enabled: bool,
    /// Folder of private key files, the keyring and the policy file. Keep it
    /// outside the data folder, so that a copy of the store carries no keys.
    pub key_dir: PathBuf,
    /// Create missing key files and the default policy file on start-up.
    pub create_missing: bool,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            enabled: true,
            key_dir: PathBuf::from("keys"),
            create_missing: true,
        }
    }
}

/// Returns the policy written when none exists: each input type from the
/// ingest edge, from each service the types its handler emits, and from the
/// origination saga its compensations. audit emits none.
pub fn default_policy() -> Policy {
    Policy::from_pairs([
        (
            INGEST_IDENTITY,
            &[
                "loan.disbursed",
                "repayment.received",
                "repayment.reversed",
                "day.closed",
                "application.received",
                "consent.granted",
                "consent.withdrawn",
                "risk.scored",
                "kfs.accepted",
                "loan.cooling_off_exit.requested",
            ][..],
        ),
        (
            "origination",
            &["quote.withdrawn", "kfs.voided", "sanction.cancelled"][..],
        ),
        ("consent", &["consent.expired"][..]),
        ("fraud", &["fraud.alert", "fraud.cleared"][..]),
        ("risk", &["risk.scored"][..]),
        ("pricing", &["pricing.quoted"][..]),
        ("kfs", &["kfs.issued"][..]),
        ("fee", &["fee.assess"][..]),
        (
            "npa",
            &["sma.classified", "npa.bucket.changed", "npa.dlg.triggered"][..],
        ),
        (
            "mechanism",
            &[
                "loan.sanctioned",
                "loan.disbursed",
                "loan.cooling_off_exit.computed",
            ][..],
        ),
        ("audit", &[][..]),
    ])
}

/// Loads the keys of every service and of the ingest edge, the keyring and
/// the policy, or returns `None` when signing is off.
pub fn load_authority(settings: &IdentitySettings) -> anyhow::Result<Option<Arc<Authority>>> {
    if !settings.enabled {
        return Ok(None);
    }
    let names: Vec<&str> = crate::services::NAMES
        .iter()
        .copied()
        .chain([INGEST_IDENTITY, underwrite_saga::definition::ORIGINATION])
        .collect();
    let dir = KeyDir::new(&settings.key_dir);
    let authority = Authority::load(&dir, &names, settings.create_missing, &default_policy())
        .with_context(|| {
            format!(
                "Failed to load identities from {}; set identities.enabled to false to run without signing",
                settings.key_dir.display()
            )
        })?;
    warn_of_missing_grants(authority.policy(), &dir.policy_path());
    Ok(Some(Arc::new(authority)))
}

/// Warns when the policy file withholds types the services emit: a file
/// written by an older release lacks the types added since, and the events
/// of those types would go to the dead-letter queue as forbidden.
fn warn_of_missing_grants(policy: &Policy, path: &std::path::Path) {
    let missing = policy.missing_from(&default_policy());
    if missing.is_empty() {
        return;
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|(identity, event_type)| format!("{identity} -> {event_type}"))
        .collect();
    tracing::warn!(
        policy = %path.display(),
        missing = %listed.join(", "),
        "The emitter policy does not allow types the services emit; their events will be dead-lettered as forbidden. Add them to the policy file, or move the file away to have the default written."
    );
}

/// Arguments of `underwrite identity`.
#[derive(Args)]
pub struct IdentityArgs {
    /// Identity to create: a service name (such as npa) or `input`, the ingest edge.
    pub name: String,
    /// Replace an existing key file; the old public key stays in the keyring.
    #[arg(long)]
    pub force: bool,
}

pub fn identity(config: &Config, args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let dir = KeyDir::new(&config.identities.key_dir);
    let created = dir.create_identity(&args.name, args.force)?;
    let policy = Policy::load_or_write(&dir.policy_path(), &default_policy())?;
    println!(
        "Created identity {} with key {}.",
        created.name(),
        created.key_id()
    );
    println!(
        "Private key: {} (mode 0600, readable by its owner only).",
        dir.key_path(created.name()).display()
    );
    println!("Public key registered in {}.", dir.keyring_path().display());
    println!(
        "Policy {} allows {} to emit: {}.",
        dir.policy_path().display(),
        created.name(),
        policy.allowed_types(created.name())
    );
    Ok(ExitCode::SUCCESS)
}

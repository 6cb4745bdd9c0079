//! The audit service: appends every event to a hash-chained ledger.
//!
//! Entry `n` stores the event and `hash_n = SHA-256(hash_{n-1} as hex ||
//! canonical bytes of the event)`, with 64 zeros before the first entry.
//! Changing, removing or reordering any entry breaks every later hash, and
//! [`verify`] names the first entry that no longer matches.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use underwrite_events::{Envelope, canonical_bytes};
use underwrite_runtime::service::read_state;
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Store, StoreError};

/// Key of the ledger head.
pub const HEAD_KEY: &str = "audit/head";
/// Key prefix of ledger entries.
pub const ENTRY_PREFIX: &str = "audit/entry/";
/// The previous hash of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Formats the store key of entry `seq`, zero-padded so keys sort by sequence.
pub fn entry_key(seq: u64) -> String {
    format!("{ENTRY_PREFIX}{seq:012}")
}

/// The last entry's sequence and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence of the last entry, from 1.
    pub seq: u64,
    /// Hash of the last entry, hex.
    pub hash: String,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the ledger, from 1.
    pub seq: u64,
    /// Hash of the previous entry, hex.
    pub prev_hash: String,
    /// `SHA-256(prev_hash || canonical bytes of event)`, hex.
    pub hash: String,
    /// The event as received.
    pub event: Envelope,
}

/// Computes the hash of an entry holding `event` after `prev_hash`.
pub fn chain_hash(prev_hash: &str, event: &Envelope) -> String {
    let digest = Sha256::new()
        .chain_update(prev_hash.as_bytes())
        .chain_update(canonical_bytes(event))
        .finalize();
    hex::encode(digest)
}

/// The audit service.
#[derive(Debug, Default)]
pub struct Audit;

#[async_trait]
impl Service for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["*"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let (head, read) = read_state::<Head>(context.store, HEAD_KEY).await?;
        let (prev_seq, prev_hash) = head
            .map(|h| (h.seq, h.hash))
            .unwrap_or((0, GENESIS_HASH.to_string()));
        let seq = prev_seq + 1;
        let hash = chain_hash(&prev_hash, event);
        let entry = Entry {
            seq,
            prev_hash,
            hash: hash.clone(),
            event: event.clone(),
        };
        let mut outcome = Outcome::default();
        // The head write is conditional on the version read, so two appends
        // racing for the same sequence number cannot both commit.
        outcome
            .writes
            .push(StateWrite::put(HEAD_KEY, &Head { seq, hash }, &read));
        outcome
            .writes
            .push(StateWrite::put(entry_key(seq), &entry, &None));
        Ok(outcome)
    }
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not match, with why; `None` if the chain is
    /// intact.
    pub first_broken: Option<(u64, String)>,
}

/// Checks every entry's sequence, previous hash and hash, and that the head
/// names the last entry.
pub async fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut after: Option<String> = None;
    let mut checked = 0;
    loop {
        let page = store.scan(ENTRY_PREFIX, after.as_deref(), 1000).await?;
        let Some((last_key, _)) = page.last() else {
            break;
        };
        after = Some(last_key.clone());
        for (key, versioned) in &page {
            let broken = |reason: String| Verification {
                entries: checked,
                first_broken: Some((expected_seq, reason)),
            };
            let entry: Entry = match versioned.parse(key) {
                Ok(entry) => entry,
                Err(error) => {
                    return Ok(broken(format!(
                        "entry {key} is not a valid ledger entry: {error}"
                    )));
                }
            };
            if entry.seq != expected_seq {
                return Ok(broken(format!(
                    "expected entry {expected_seq}, found entry {} at {key}",
                    entry.seq
                )));
            }
            if entry.prev_hash != prev_hash {
                return Ok(broken(format!(
                    "entry {} names previous hash {} but the previous entry's hash is {prev_hash}",
                    entry.seq, entry.prev_hash
                )));
            }
            let recomputed = chain_hash(&prev_hash, &entry.event);
            if recomputed != entry.hash {
                return Ok(broken(format!(
                    "entry {} (event {}) hashes to {recomputed}, not the stored {}: its content was changed",
                    entry.seq, entry.event.id, entry.hash
                )));
            }
            prev_hash = entry.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
    let head = store.get(HEAD_KEY).await?;
    let head: Option<Head> = head.and_then(|v| v.parse(HEAD_KEY).ok());
    let head_ok = match &head {
        None => checked == 0,
        Some(head) => head.seq == checked && head.hash == prev_hash,
    };
    if !head_ok {
        return Ok(Verification {
            entries: checked,
            first_broken: Some((
                checked + 1,
                format!(
                    "the head names entry {:?} but the chain ends at entry {checked}: entries after it are missing",
                    head.map(|h| h.seq)
                ),
            )),
        });
    }
    Ok(Verification {
        entries: checked,
        first_broken: None,
    })
}

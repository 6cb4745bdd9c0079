//! The DynamoDB store: state with versions and conditional writes, and
//! idempotency records with leases, in the single-table design of
//! `docs/aws-storage.md`.
//!
//! State item: `pk = <service>#<collection>#<shard>`, `sk = <key>`, with
//! `v` (the JSON text), `ver` (the version), `ts` (updated, Unix ms) and,
//! while a chunked commit holds it, `lk` (the committing lease's token). An
//! item without `v` is a placeholder that a chunked commit created to lock
//! an absent key; readers treat it as absent.
//!
//! Idempotency item: `pk = <service>#<event id>`, with `status`
//! (`INPROGRESS`, `COMMITTING` or `COMPLETE`), `token`, `lease_expires_ms`,
//! and once complete `outputs` (or `outputs_ref`, an S3 key, when large),
//! `completed_ms`, `expires_ms` and the TTL attribute `expires_at`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, TransactWriteItem, Update};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use underwrite_runtime::ports::{Claim, EffectStore, Lease, ObjectStore};
use underwrite_runtime::{Expected, StateWrite, Store, StoreError, Versioned};

use crate::error::{code_of, describe};
use crate::s3::S3Objects;

/// Shards of each collection's partition key, so that one collection's
/// writes spread over partitions; a scan queries every shard.
pub const SHARDS: u32 = 16;

/// Actions per `TransactWriteItems`: DynamoDB's limit is 100, and one is
/// the idempotency record.
const ACTIONS_PER_TRANSACTION: usize = 99;

/// Bytes per transaction, below DynamoDB's 4 MB.
const BYTES_PER_TRANSACTION: usize = 3_500_000;

/// Largest state value, below DynamoDB's 400 KB item limit.
pub const MAX_VALUE_BYTES: usize = 390_000;

/// Outputs larger than this go to S3 and the record keeps their key.
const INLINE_OUTPUTS_BYTES: usize = 300_000;

/// How long the TTL attribute lets a record outlive its own expiry.
const TTL_MARGIN_SECONDS: i64 = 86_400;

const INPROGRESS: &str = "INPROGRESS";
const COMMITTING: &str = "COMMITTING";
const COMPLETE: &str = "COMPLETE";

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|text| text.parse().ok())
}

fn unavailable(action: &str, detail: String) -> StoreError {
    StoreError::Unavailable(format!("dynamodb: failed to {action}: {detail}"))
}

/// The condition on a state item for `expected`, without the lock check,
/// and the version it names.
fn version_condition(expected: Expected) -> (Option<&'static str>, Option<u64>) {
    match expected {
        Expected::Absent => (Some("attribute_not_exists(v)"), None),
        Expected::Version(version) => (
            Some("attribute_exists(v) AND ver = :expected"),
            Some(version),
        ),
        Expected::Any => (None, None),
    }
}

/// `condition AND extra`, or `extra` alone.
fn and(condition: Option<&str>, extra: &str) -> String {
    match condition {
        Some(condition) => format!("({condition}) AND {extra}"),
        None => extra.to_string(),
    }
}

/// A chunked commit's plan, written to S3 before any key is touched so that
/// another consumer can finish or undo it.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    /// The token the keys are locked with.
    token: String,
    writes: Vec<PlannedWrite>,
    outputs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlannedWrite {
    key: String,
    value: Option<String>,
    expected: Option<u64>,
    absent: bool,
}

impl PlannedWrite {
    fn of(write: &StateWrite) -> Self {
        PlannedWrite {
            key: write.key.clone(),
            value: write.value.clone(),
            expected: match write.expected {
                Expected::Version(v) => Some(v),
                _ => None,
            },
            absent: write.expected == Expected::Absent,
        }
    }

    fn expected(&self) -> Expected {
        match (self.absent, self.expected) {
            (true, _) => Expected::Absent,
            (false, Some(v)) => Expected::Version(v),
            (false, None) => Expected::Any,
        }
    }

    fn bytes(&self) -> usize {
        2 * self.key.len() + self.value.as_ref().map_or(0, String::len) + 64
    }
}

/// The reason a transaction failed.
enum TxFailure {
    /// A condition failed: the action's index.
    Condition(Option<usize>),
    Other(String),
}

/// Collections one service writes and others only read, with their owner.
/// On the embedded runtime every service shares one store. Here each
/// service's items sit under its own partition-key prefix, so a read of
/// these collections goes to the owner's prefix. The consent records are
/// read by every service that processes personal data, which DPDP Act 2023
/// s. 6 allows only under active consent for the purpose.
/// Sanction in the mechanism service reads the KFS the borrower accepted
/// and the application pricing recorded.
pub const SHARED_COLLECTIONS: &[(&str, &str)] = &[
    ("consent/", "consent"),
    ("kfs/", "kfs"),
    ("pricing/application/", "pricing"),
];

/// The collection of saga signals, `saga-signal/<owner>/...`: the service
/// named after the prefix writes each signal its saga step receives, and
/// the other steps' services read it to rebuild a failed step's command.
pub const SIGNAL_COLLECTION: &str = "saga-signal/";

/// Returns the service that owns the collection of `key`, when another
/// service's reads of it go to that owner's items.
pub fn collection_owner(key: &str) -> Option<&str> {
    if let Some(rest) = key.strip_prefix(SIGNAL_COLLECTION) {
        return rest.split('/').next().filter(|owner| !owner.is_empty());
    }
    SHARED_COLLECTIONS
        .iter()
        .find(|(collection, _)| key.starts_with(collection))
        .map(|(_, owner)| *owner)
}

/// DynamoDB as the effect store of one service: every key it writes starts
/// with `<service>#`, which the service's IAM role is fenced to
/// (`dynamodb:LeadingKeys`). Reads of a [shared collection](SHARED_COLLECTIONS)
/// go to its owner's prefix, which the role may only read.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    objects: Arc<S3Objects>,
    state_table: String,
    idempotency_table: String,
    namespace: String,
    idempotency_ms: i64,
}

impl DynamoStore {
    /// The store of `service` over the two tables, keeping large outputs
    /// and chunked-commit plans in `objects` under `claims/<service>/`.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        objects: Arc<S3Objects>,
        config: &crate::AwsConfig,
        service: &str,
    ) -> Self {
        DynamoStore {
            client,
            objects,
            state_table: config.state_table.clone(),
            idempotency_table: config.idempotency_table.clone(),
            namespace: service.to_string(),
            idempotency_ms: i64::from(config.idempotency_days) * 86_400_000,
        }
    }

    /// The partition key of a state key.
    pub fn partition(&self, key: &str) -> String {
        let collection = match key.find('/') {
            Some(end) => &key[..=end],
            None => key,
        };
        let namespace = collection_owner(key).unwrap_or(&self.namespace);
        format!("{namespace}#{collection}#{:02}", shard(key))
    }

    fn item_key(&self, key: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_string(), s(self.partition(key))),
            ("sk".to_string(), s(key)),
        ])
    }

    fn record_key(service: &str, event_id: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([("pk".to_string(), s(format!("{service}#{event_id}")))])
    }

    fn check_size(write: &PlannedWrite) -> Result<(), StoreError> {
        let size = write.bytes();
        if size > MAX_VALUE_BYTES {
            return Err(StoreError::Rejected {
                key: write.key.clone(),
                reason: format!(
                    "the value is {size} bytes and a DynamoDB item holds at most 400 KB; keep large data in S3 and store its key"
                ),
            });
        }
        Ok(())
    }

    /// The action writing `write` in a single-transaction commit.
    fn write_action(&self, write: &PlannedWrite, now_ms: i64) -> TransactWriteItem {
        let (condition, expected) = version_condition(write.expected());
        let mut values = HashMap::new();
        if let Some(version) = expected {
            values.insert(":expected".to_string(), n(version));
        }
        let condition = and(condition, "attribute_not_exists(lk)");
        match &write.value {
            Some(value) => {
                values.insert(":v".into(), s(value.clone()));
                values.insert(":zero".into(), n(0));
                values.insert(":one".into(), n(1));
                values.insert(":ts".into(), n(now_ms));
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.state_table)
                            .set_key(Some(self.item_key(&write.key)))
                            .update_expression(
                                "SET v = :v, ver = if_not_exists(ver, :zero) + :one, ts = :ts",
                            )
                            .condition_expression(condition)
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .expect("update is complete"),
                    )
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.state_table)
                        .set_key(Some(self.item_key(&write.key)))
                        .condition_expression(condition)
                        .set_expression_attribute_values((!values.is_empty()).then_some(values))
                        .build()
                        .expect("delete is complete"),
                )
                .build(),
        }
    }

    /// The action completing the record of `lease` with its outputs.
    fn complete_action(
        &self,
        service: &str,
        event_id: &str,
        token: &str,
        from_status: &str,
        outputs: &(String, AttributeValue),
        now_ms: i64,
    ) -> TransactWriteItem {
        let expires_ms = now_ms + self.idempotency_ms;
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.idempotency_table)
                    .set_key(Some(Self::record_key(service, event_id)))
                    .update_expression(format!(
                        "SET #status = :complete, {} = :outputs, completed_ms = :now, expires_ms = :exp, expires_at = :ttl REMOVE #token, lease_expires_ms, phase, plan_ref, applied",
                        outputs.0
                    ))
                    .condition_expression("#token = :token AND #status = :from")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_names("#token", "token")
                    .expression_attribute_values(":complete", s(COMPLETE))
                    .expression_attribute_values(":outputs", outputs.1.clone())
                    .expression_attribute_values(":now", n(now_ms))
                    .expression_attribute_values(":exp", n(expires_ms))
                    .expression_attribute_values(":ttl", n(expires_ms / 1000 + TTL_MARGIN_SECONDS))
                    .expression_attribute_values(":token", s(token))
                    .expression_attribute_values(":from", s(from_status))
                    .build()
                    .expect("update is complete"),
            )
            .build()
    }

    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<(), TxFailure> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(error)) => match error.err() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    let reasons = cancelled.cancellation_reasons();
                    let failed = reasons
                        .iter()
                        .position(|r| r.code() == Some("ConditionalCheckFailed"));
                    if failed.is_some() || reasons.is_empty() {
                        Err(TxFailure::Condition(failed))
                    } else {
                        Err(TxFailure::Other(format!(
                            "transaction cancelled: {:?}",
                            reasons
                                .iter()
                                .map(|r| r.code().unwrap_or("None"))
                                .collect::<Vec<_>>()
                        )))
                    }
                }
                other => Err(TxFailure::Other(format!(
                    "{other}: {:?}",
                    other.meta().message()
                ))),
            },
            Err(other) => Err(TxFailure::Other(describe(&other))),
        }
    }

    /// Stores outputs inline or, when large, in S3; returns the attribute
    /// name and value for the record.
    async fn outputs_attribute(
        &self,
        service: &str,
        lease: &Lease,
        outputs: &[String],
    ) -> Result<(String, AttributeValue), StoreError> {
        let joined = underwrite_runtime::sqlite_ports::join_outputs(outputs);
        if joined.len() <= INLINE_OUTPUTS_BYTES {
            return Ok(("outputs".into(), s(joined)));
        }
        let key = format!(
            "claims/{service}/outputs/{}/{}.json",
            lease.event_id, lease.token
        );
        self.objects
            .put(&key, joined.into_bytes())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(("outputs_ref".into(), s(key)))
    }

    async fn read_outputs(
        &self,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Vec<String>, StoreError> {
        let pk = get_s(item, "pk").unwrap_or_default();
        if let Some(inline) = get_s(item, "outputs") {
            return underwrite_runtime::sqlite_ports::split_outputs(pk, inline);
        }
        let key = get_s(item, "outputs_ref").ok_or_else(|| StoreError::Corrupt {
            key: pk.to_string(),
            reason: "a complete record has neither outputs nor outputs_ref".into(),
        })?;
        let bytes = self
            .objects
            .get(key)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .ok_or_else(|| StoreError::Corrupt {
                key: pk.to_string(),
                reason: format!("its outputs object {key} is missing"),
            })?;
        underwrite_runtime::sqlite_ports::split_outputs(pk, &String::from_utf8_lossy(&bytes))
    }

    async fn read_record(
        &self,
        service: &str,
        event_id: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.idempotency_table)
            .set_key(Some(Self::record_key(service, event_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("read an idempotency record", describe(&e)))?;
        Ok(output.item)
    }

    /// Updates the record of `(service, event_id)` if its token is `token`;
    /// returns false when the condition failed.
    async fn update_record(
        &self,
        service: &str,
        event_id: &str,
        token: &str,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.idempotency_table)
            .set_key(Some(Self::record_key(service, event_id)))
            .update_expression(update)
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token));
        if update.contains("#status") {
            request = request.expression_attribute_names("#status", "status");
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(error) if code_of(&error).as_deref() == Some("ConditionalCheckFailedException") => {
                Ok(false)
            }
            Err(error) => Err(unavailable(
                "update an idempotency record",
                describe(&error),
            )),
        }
    }

    /// Splits writes into transactions of at most 99 actions and 3.5 MB.
    fn chunks(writes: &[PlannedWrite]) -> Vec<std::ops::Range<usize>> {
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < writes.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < writes.len() && end - start < ACTIONS_PER_TRANSACTION {
                let size = writes[end].bytes();
                if end > start && bytes + size > BYTES_PER_TRANSACTION {
                    break;
                }
                bytes += size;
                end += 1;
            }
            chunks.push(start..end);
            start = end;
        }
        chunks
    }

    /// Locks the keys of `writes` for `token`, checking each one's
    /// expected version; an absent key gets a placeholder item.
    fn lock_action(&self, write: &PlannedWrite, token: &str) -> TransactWriteItem {
        let (condition, expected) = version_condition(write.expected());
        let mut update = Update::builder()
            .table_name(&self.state_table)
            .set_key(Some(self.item_key(&write.key)))
            .update_expression("SET lk = :lock, ver = if_not_exists(ver, :zero)")
            .condition_expression(and(condition, "(attribute_not_exists(lk) OR lk = :lock)"))
            .expression_attribute_values(":lock", s(token))
            .expression_attribute_values(":zero", n(0));
        if let Some(version) = expected {
            update = update.expression_attribute_values(":expected", n(version));
        }
        TransactWriteItem::builder()
            .update(update.build().expect("update is complete"))
            .build()
    }

    /// Writes a locked key's new value (or deletes it) and unlocks it.
    fn apply_action(&self, write: &PlannedWrite, token: &str, now_ms: i64) -> TransactWriteItem {
        match &write.value {
            Some(value) => TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.state_table)
                        .set_key(Some(self.item_key(&write.key)))
                        .update_expression("SET v = :v, ver = ver + :one, ts = :ts REMOVE lk")
                        .condition_expression("lk = :lock")
                        .expression_attribute_values(":v", s(value.clone()))
                        .expression_attribute_values(":one", n(1))
                        .expression_attribute_values(":ts", n(now_ms))
                        .expression_attribute_values(":lock", s(token))
                        .build()
                        .expect("update is complete"),
                )
                .build(),
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.state_table)
                        .set_key(Some(self.item_key(&write.key)))
                        .condition_expression("lk = :lock")
                        .expression_attribute_values(":lock", s(token))
                        .build()
                        .expect("delete is complete"),
                )
                .build(),
        }
    }

    /// Unlocks every key of `writes` still locked by `token`: placeholders
    /// are deleted, other items lose their lock. Keys not locked by `token`
    /// are left alone.
    async fn unlock(&self, writes: &[PlannedWrite], token: &str) -> Result<(), StoreError> {
        for group in writes.chunks(25) {
            let results = join_all(group.iter().map(|write| async move {
                let placeholder = self
                    .client
                    .delete_item()
                    .table_name(&self.state_table)
                    .set_key(Some(self.item_key(&write.key)))
                    .condition_expression("lk = :lock AND attribute_not_exists(v)")
                    .expression_attribute_values(":lock", s(token))
                    .send()
                    .await;
                match placeholder {
                    Ok(_) => return Ok(()),
                    Err(error)
                        if code_of(&error).as_deref()
                            == Some("ConditionalCheckFailedException") => {}
                    Err(error) => return Err(unavailable("unlock a key", describe(&error))),
                }
                let unlocked = self
                    .client
                    .update_item()
                    .table_name(&self.state_table)
                    .set_key(Some(self.item_key(&write.key)))
                    .update_expression("REMOVE lk")
                    .condition_expression("lk = :lock")
                    .expression_attribute_values(":lock", s(token))
                    .send()
                    .await;
                match unlocked {
                    Ok(_) => Ok(()),
                    Err(error)
                        if code_of(&error).as_deref()
                            == Some("ConditionalCheckFailedException") =>
                    {
                        Ok(())
                    }
                    Err(error) => Err(unavailable("unlock a key", describe(&error))),
                }
            }))
            .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        Ok(())
    }

    /// Applies the chunks of a locked plan from `start` on, advancing the
    /// record's `applied` counter in each chunk's transaction so that a
    /// chunk is applied once even when a response is lost.
    #[allow(clippy::too_many_arguments)]
    async fn apply_chunks(
        &self,
        service: &str,
        event_id: &str,
        writes: &[PlannedWrite],
        start: usize,
        lock_token: &str,
        record_token: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let chunks = Self::chunks(writes);
        for (index, range) in chunks.iter().enumerate().skip(start) {
            let mut actions = vec![
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.idempotency_table)
                            .set_key(Some(Self::record_key(service, event_id)))
                            .update_expression("SET applied = :next")
                            .condition_expression(
                                "#token = :token AND applied = :done AND phase = :apply",
                            )
                            .expression_attribute_names("#token", "token")
                            .expression_attribute_values(":token", s(record_token))
                            .expression_attribute_values(":done", n(index))
                            .expression_attribute_values(":next", n(index + 1))
                            .expression_attribute_values(":apply", s("apply"))
                            .build()
                            .expect("update is complete"),
                    )
                    .build(),
            ];
            actions.extend(
                writes[range.clone()]
                    .iter()
                    .map(|w| self.apply_action(w, lock_token, now_ms)),
            );
            match self.transact(actions).await {
                Ok(()) => {}
                Err(TxFailure::Condition(_)) => {
                    let record = self.read_record(service, event_id).await?;
                    let record = record.unwrap_or_default();
                    let ours = get_s(&record, "token") == Some(record_token);
                    let applied = get_n(&record, "applied").unwrap_or(0) as usize;
                    if !ours {
                        return Err(lost(service, event_id));
                    }
                    if applied <= index {
                        return Err(StoreError::Corrupt {
                            key: format!("{service}#{event_id}"),
                            reason: format!(
                                "chunk {index} of a locked commit failed its conditions although its keys are locked"
                            ),
                        });
                    }
                }
                Err(TxFailure::Other(detail)) => {
                    return Err(unavailable("apply a chunk of a commit", detail));
                }
            }
        }
        Ok(())
    }

    /// Commits more writes than one transaction holds: plan to S3, lock
    /// every key (checking its version), apply chunk by chunk, complete the
    /// record last. See `docs/aws-storage.md`.
    async fn commit_chunked(
        &self,
        lease: &Lease,
        writes: Vec<PlannedWrite>,
        outputs: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (service, event_id, token) = (&lease.service, &lease.event_id, &lease.token);
        let plan_key = format!("claims/{service}/commits/{event_id}/{token}.json");
        let plan = Plan {
            token: token.clone(),
            writes: writes.clone(),
            outputs: outputs.to_vec(),
        };
        self.objects
            .put(
                &plan_key,
                serde_json::to_vec(&plan).expect("plan serialises"),
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let started = self
            .update_record(
                service,
                event_id,
                token,
                "SET #status = :committing, phase = :lock, plan_ref = :plan, applied = :zero",
                vec![
                    (":committing", s(COMMITTING)),
                    (":lock", s("lock")),
                    (":plan", s(plan_key)),
                    (":zero", n(0)),
                ],
            )
            .await?;
        if !started {
            return Err(lost(service, event_id));
        }
        let chunks = Self::chunks(&writes);
        for range in &chunks {
            let mut actions = vec![
                TransactWriteItem::builder()
                    .condition_check(
                        ConditionCheck::builder()
                            .table_name(&self.idempotency_table)
                            .set_key(Some(Self::record_key(service, event_id)))
                            .condition_expression("#token = :token AND phase = :lock")
                            .expression_attribute_names("#token", "token")
                            .expression_attribute_values(":token", s(token))
                            .expression_attribute_values(":lock", s("lock"))
                            .build()
                            .expect("condition check is complete"),
                    )
                    .build(),
            ];
            actions.extend(
                writes[range.clone()]
                    .iter()
                    .map(|w| self.lock_action(w, token)),
            );
            match self.transact(actions).await {
                Ok(()) => {}
                Err(failure) => {
                    // Undo: unlock what this commit locked, hand the record
                    // back to INPROGRESS, and report the conflict.
                    self.unlock(&writes[..range.end], token).await?;
                    self.update_record(
                        service,
                        event_id,
                        token,
                        "SET #status = :inprogress REMOVE phase, plan_ref, applied",
                        vec![(":inprogress", s(INPROGRESS))],
                    )
                    .await?;
                    return Err(match failure {
                        TxFailure::Condition(index) => {
                            let write = index
                                .filter(|i| *i > 0)
                                .map(|i| &writes[range.start + i - 1]);
                            match write {
                                Some(write) => StoreError::Conflict {
                                    key: write.key.clone(),
                                    expected: write.expected(),
                                    found: None,
                                },
                                None => lost(service, event_id),
                            }
                        }
                        TxFailure::Other(detail) => {
                            unavailable("lock the keys of a commit", detail)
                        }
                    });
                }
            }
        }
        if !self
            .update_record(
                service,
                event_id,
                token,
                "SET phase = :apply",
                vec![(":apply", s("apply"))],
            )
            .await?
        {
            self.unlock(&writes, token).await?;
            return Err(lost(service, event_id));
        }
        self.apply_chunks(service, event_id, &writes, 0, token, token, now_ms)
            .await?;
        let outputs = self.outputs_attribute(service, lease, outputs).await?;
        match self
            .transact(vec![self.complete_action(
                service, event_id, token, COMMITTING, &outputs, now_ms,
            )])
            .await
        {
            Ok(()) => Ok(()),
            Err(TxFailure::Condition(_)) => Err(lost(service, event_id)),
            Err(TxFailure::Other(detail)) => Err(unavailable("complete a record", detail)),
        }
    }

    /// Takes over a chunked commit whose lease expired: rolls it forward if
    /// its keys were all locked, else unlocks them and claims the event.
    async fn recover(
        &self,
        service: &str,
        event_id: &str,
        record: &HashMap<String, AttributeValue>,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        let old = get_s(record, "token").unwrap_or_default().to_string();
        let lease = Lease {
            service: service.into(),
            event_id: event_id.into(),
            token: uuid::Uuid::now_v7().to_string(),
            expires_ms: now_ms + lease_ms as i64,
        };
        if !self
            .update_record(
                service,
                event_id,
                &old,
                "SET #token = :new, lease_expires_ms = :exp",
                vec![(":new", s(&lease.token)), (":exp", n(lease.expires_ms))],
            )
            .await?
        {
            return Ok(Claim::InProgress {
                expires_ms: now_ms + lease_ms as i64,
            });
        }
        let plan_key = get_s(record, "plan_ref").unwrap_or_default();
        let bytes = self
            .objects
            .get(plan_key)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("{service}#{event_id}"),
                reason: format!("the plan {plan_key} of an unfinished commit is missing"),
            })?;
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            key: plan_key.to_string(),
            reason: e.to_string(),
        })?;
        match get_s(record, "phase") {
            Some("apply") => {
                info!(
                    service,
                    event_id, "Finishing a commit whose consumer stopped after locking its keys."
                );
                let applied = get_n(record, "applied").unwrap_or(0) as usize;
                self.apply_chunks(
                    service,
                    event_id,
                    &plan.writes,
                    applied,
                    &plan.token,
                    &lease.token,
                    now_ms,
                )
                .await?;
                let outputs = self
                    .outputs_attribute(service, &lease, &plan.outputs)
                    .await?;
                match self
                    .transact(vec![self.complete_action(
                        service,
                        event_id,
                        &lease.token,
                        COMMITTING,
                        &outputs,
                        now_ms,
                    )])
                    .await
                {
                    Ok(()) => Ok(Claim::Complete {
                        outputs: plan.outputs,
                    }),
                    Err(TxFailure::Condition(_)) => Err(lost(service, event_id)),
                    Err(TxFailure::Other(detail)) => Err(unavailable("complete a record", detail)),
                }
            }
            _ => {
                warn!(
                    service,
                    event_id,
                    "Undoing a commit whose consumer stopped while locking its keys; the event is handled again."
                );
                self.unlock(&plan.writes, &plan.token).await?;
                self.update_record(
                    service,
                    event_id,
                    &lease.token,
                    "SET #status = :inprogress REMOVE phase, plan_ref, applied",
                    vec![(":inprogress", s(INPROGRESS))],
                )
                .await?;
                Ok(Claim::Acquired(lease))
            }
        }
    }
}

fn lost(service: &str, event_id: &str) -> StoreError {
    StoreError::Conflict {
        key: format!("idempotency {service}/{event_id}"),
        expected: Expected::Any,
        found: None,
    }
}

/// The shard of a key: the first two bytes of its SHA-256, modulo
/// [`SHARDS`].
fn shard(key: &str) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    u32::from(u16::from_be_bytes([digest[0], digest[1]])) % SHARDS
}

/// Merges duplicate keys of one outcome into one write (DynamoDB allows
/// one action per item in a transaction): the first write's condition and
/// the last one's value.
fn merge_duplicates(writes: &[StateWrite]) -> Vec<PlannedWrite> {
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut merged: Vec<PlannedWrite> = Vec::with_capacity(writes.len());
    for write in writes {
        match position.get(write.key.as_str()) {
            Some(&index) => merged[index].value = write.value.clone(),
            None => {
                position.insert(&write.key, merged.len());
                merged.push(PlannedWrite::of(write));
            }
        }
    }
    merged
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.state_table)
            .set_key(Some(self.item_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(&format!("read {key}"), describe(&e)))?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let Some(json) = get_s(&item, "v") else {
            return Ok(None);
        };
        Ok(Some(Versioned {
            json: json.to_string(),
            version: get_n(&item, "ver").unwrap_or(1) as u64,
        }))
    }

    async fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        if !prefix.contains('/') {
            return Err(StoreError::Rejected {
                key: prefix.to_string(),
                reason: "a scan prefix must name its collection up to the first '/', such as npa/ or npa/agenda/".into(),
            });
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let low = match start_after {
            Some(after) if after > prefix => after.to_string(),
            _ => prefix.to_string(),
        };
        let high = format!("{prefix}\u{10FFFF}");
        let collection = &prefix[..=prefix.find('/').expect("checked above")];
        let queries = (0..SHARDS).map(|shard| {
            let namespace = collection_owner(prefix).unwrap_or(&self.namespace);
            let pk = format!("{namespace}#{collection}#{shard:02}");
            let (low, high) = (low.clone(), high.clone());
            async move {
                let mut found = Vec::new();
                let mut start: Option<HashMap<String, AttributeValue>> = None;
                loop {
                    let output = self
                        .client
                        .query()
                        .table_name(&self.state_table)
                        .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                        .expression_attribute_values(":pk", s(&pk))
                        .expression_attribute_values(":low", s(&low))
                        .expression_attribute_values(":high", s(&high))
                        .consistent_read(true)
                        .limit((limit + 1).min(1000) as i32)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(|e| unavailable(&format!("scan {prefix}"), describe(&e)))?;
                    for item in output.items() {
                        let (Some(key), Some(json)) = (get_s(item, "sk"), get_s(item, "v")) else {
                            continue;
                        };
                        if Some(key) == start_after || !key.starts_with(prefix) {
                            continue;
                        }
                        found.push((
                            key.to_string(),
                            Versioned {
                                json: json.to_string(),
                                version: get_n(item, "ver").unwrap_or(1) as u64,
                            },
                        ));
                    }
                    start = output.last_evaluated_key;
                    if start.is_none() || found.len() >= limit {
                        return Ok::<_, StoreError>(found);
                    }
                }
            }
        });
        let mut all = Vec::new();
        for result in join_all(queries).await {
            all.extend(result?);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.truncate(limit);
        Ok(all)
    }
}

#[async_trait]
impl EffectStore for DynamoStore {
    async fn claim(
        &self,
        service: &str,
        event_id: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        for _ in 0..3 {
            let lease = Lease {
                service: service.into(),
                event_id: event_id.into(),
                token: uuid::Uuid::now_v7().to_string(),
                expires_ms: now_ms + lease_ms as i64,
            };
            let result = self
                .client
                .put_item()
                .table_name(&self.idempotency_table)
                .item("pk", s(format!("{service}#{event_id}")))
                .item("status", s(INPROGRESS))
                .item("token", s(&lease.token))
                .item("lease_expires_ms", n(lease.expires_ms))
                .item("expires_at", n(lease.expires_ms / 1000 + TTL_MARGIN_SECONDS))
                .condition_expression(
                    "attribute_not_exists(pk) OR (#status = :inprogress AND lease_expires_ms < :now) OR (#status = :complete AND expires_ms < :now)",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":inprogress", s(INPROGRESS))
                .expression_attribute_values(":complete", s(COMPLETE))
                .expression_attribute_values(":now", n(now_ms))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(Claim::Acquired(lease)),
                Err(error)
                    if code_of(&error).as_deref() == Some("ConditionalCheckFailedException") => {}
                Err(error) => return Err(unavailable("claim an event", describe(&error))),
            }
            let Some(record) = self.read_record(service, event_id).await? else {
                continue;
            };
            let lease_expires = get_n(&record, "lease_expires_ms").unwrap_or(0);
            match get_s(&record, "status") {
                Some(COMPLETE) => {
                    return Ok(Claim::Complete {
                        outputs: self.read_outputs(&record).await?,
                    });
                }
                Some(INPROGRESS) if lease_expires >= now_ms => {
                    return Ok(Claim::InProgress {
                        expires_ms: lease_expires,
                    });
                }
                Some(COMMITTING) if lease_expires >= now_ms => {
                    return Ok(Claim::InProgress {
                        expires_ms: lease_expires,
                    });
                }
                Some(COMMITTING) => {
                    return self
                        .recover(service, event_id, &record, now_ms, lease_ms)
                        .await;
                }
                _ => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "dynamodb: the idempotency record {service}#{event_id} changed during three claims in a row; retry"
        )))
    }

    async fn commit(
        &self,
        lease: &Lease,
        writes: &[StateWrite],
        outputs: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let planned = merge_duplicates(writes);
        for write in &planned {
            Self::check_size(write)?;
            if let Some(owner) = collection_owner(&write.key)
                && owner != self.namespace
            {
                return Err(StoreError::Rejected {
                    key: write.key.clone(),
                    reason: format!(
                        "the collection belongs to the {owner} service, which alone writes it; {} may only read it",
                        self.namespace
                    ),
                });
            }
        }
        let bytes: usize = planned.iter().map(PlannedWrite::bytes).sum();
        if planned.len() > ACTIONS_PER_TRANSACTION || bytes > BYTES_PER_TRANSACTION {
            return self.commit_chunked(lease, planned, outputs, now_ms).await;
        }
        let outputs = self
            .outputs_attribute(&lease.service, lease, outputs)
            .await?;
        let mut actions: Vec<TransactWriteItem> = planned
            .iter()
            .map(|w| self.write_action(w, now_ms))
            .collect();
        actions.push(self.complete_action(
            &lease.service,
            &lease.event_id,
            &lease.token,
            INPROGRESS,
            &outputs,
            now_ms,
        ));
        match self.transact(actions).await {
            Ok(()) => Ok(()),
            Err(TxFailure::Condition(Some(index))) if index < planned.len() => {
                Err(StoreError::Conflict {
                    key: planned[index].key.clone(),
                    expected: planned[index].expected(),
                    found: None,
                })
            }
            Err(TxFailure::Condition(_)) => Err(lost(&lease.service, &lease.event_id)),
            Err(TxFailure::Other(detail)) => Err(unavailable("commit", detail)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.idempotency_table)
            .set_key(Some(Self::record_key(&lease.service, &lease.event_id)))
            .condition_expression("#token = :token AND #status = :inprogress")
            .expression_attribute_names("#token", "token")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":token", s(&lease.token))
            .expression_attribute_values(":inprogress", s(INPROGRESS))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if code_of(&error).as_deref() == Some("ConditionalCheckFailedException") => {
                Ok(())
            }
            Err(error) => Err(unavailable("release a lease", describe(&error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_collections_name_their_owner() {
        assert_eq!(collection_owner("consent/principal/B1"), Some("consent"));
        assert_eq!(
            collection_owner("saga-signal/kfs/APP1/kfs.accepted"),
            Some("kfs")
        );
        assert_eq!(collection_owner("saga-signal//APP1"), None);
        assert_eq!(collection_owner("pricing/quote/APP1"), None);
        assert_eq!(collection_owner("consents/other"), None);
    }
}

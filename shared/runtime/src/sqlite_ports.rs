//! The embedded backend of the [ports](crate::ports): `SqliteStore` as
//! effect store and object store, and [`SqliteBus`] over its queue tables.
//!
//! The embedded driver keeps its own faster path (one transaction per
//! batch, no lease since it runs one consumer per queue); these
//! implementations serve the per-record processor and the adapter contract
//! suite, on the same tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::ports::{
    ATTR_EVENT_ID, Bus, Claim, ClaimCheck, DEFAULT_CLAIM_CHECK_BYTES, DeadLetterEntry,
    DeadLetterReason, Delivery, EffectStore, Lease, MAX_MESSAGE_BYTES, ObjectStore, Outbound,
    PortError, PutOutcome, ReplayMethod, Replayed, Routes, outbound_message,
};
use crate::sqlite::{SqliteStore, apply_write, now_ms, unavailable};
use crate::store::{Expected, StateWrite, StoreError};

fn port_error(error: rusqlite::Error) -> PortError {
    PortError::Unavailable {
        service: "sqlite",
        message: error.to_string(),
    }
}

fn lost_lease(lease: &Lease) -> StoreError {
    StoreError::Conflict {
        key: format!("idempotency {}/{}", lease.service, lease.event_id),
        expected: Expected::Any,
        found: None,
    }
}

/// Splits a stored JSON array of events into the events' JSON texts.
pub fn split_outputs(key: &str, array: &str) -> Result<Vec<String>, StoreError> {
    let raw: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(array).map_err(|error| StoreError::Corrupt {
            key: key.to_string(),
            reason: format!("stored outputs are not a JSON array: {error}"),
        })?;
    Ok(raw.into_iter().map(|r| r.get().to_string()).collect())
}

/// Joins events' JSON texts into one JSON array text.
pub fn join_outputs(outputs: &[String]) -> String {
    let mut array = String::with_capacity(2 + outputs.iter().map(|o| o.len() + 1).sum::<usize>());
    array.push('[');
    for (position, body) in outputs.iter().enumerate() {
        if position > 0 {
            array.push(',');
        }
        array.push_str(body);
    }
    array.push(']');
    array
}

#[async_trait]
impl EffectStore for SqliteStore {
    async fn claim(
        &self,
        service: &str,
        event_id: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Claim, StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let outputs: Option<String> = tx
            .prepare_cached(
                "SELECT outputs FROM idempotency WHERE service = ?1 AND event_id = ?2 AND status = 'complete'",
            )
            .map_err(unavailable)?
            .query_row(params![service, event_id], |row| row.get(0))
            .optional()
            .map_err(unavailable)?;
        if let Some(outputs) = outputs {
            let key = format!("idempotency {service}/{event_id}");
            return Ok(Claim::Complete {
                outputs: split_outputs(&key, &outputs)?,
            });
        }
        let held: Option<i64> = tx
            .prepare_cached(
                "SELECT expires_ms FROM idempotency_leases WHERE service = ?1 AND event_id = ?2",
            )
            .map_err(unavailable)?
            .query_row(params![service, event_id], |row| row.get(0))
            .optional()
            .map_err(unavailable)?;
        if let Some(expires_ms) = held
            && expires_ms >= now_ms
        {
            return Ok(Claim::InProgress { expires_ms });
        }
        let lease = Lease {
            service: service.to_string(),
            event_id: event_id.to_string(),
            token: uuid::Uuid::now_v7().to_string(),
            expires_ms: now_ms + lease_ms as i64,
        };
        tx.prepare_cached(
            "INSERT INTO idempotency_leases (service, event_id, token, expires_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (service, event_id) DO UPDATE SET token = excluded.token, expires_ms = excluded.expires_ms",
        )
        .map_err(unavailable)?
        .execute(params![service, event_id, lease.token, lease.expires_ms])
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(Claim::Acquired(lease))
    }

    async fn commit(
        &self,
        lease: &Lease,
        writes: &[StateWrite],
        outputs: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let held: Option<String> = tx
            .prepare_cached(
                "SELECT token FROM idempotency_leases WHERE service = ?1 AND event_id = ?2",
            )
            .map_err(unavailable)?
            .query_row(params![lease.service, lease.event_id], |row| row.get(0))
            .optional()
            .map_err(unavailable)?;
        if held.as_deref() != Some(lease.token.as_str()) {
            return Err(lost_lease(lease));
        }
        for write in writes {
            apply_write(&tx, write, now_ms)?;
        }
        tx.prepare_cached(
            "INSERT INTO idempotency (service, event_id, status, outputs, completed_ms) VALUES (?1, ?2, 'complete', ?3, ?4)",
        )
        .map_err(unavailable)?
        .execute(params![lease.service, lease.event_id, join_outputs(outputs), now_ms])
        .map_err(|_| lost_lease(lease))?;
        tx.prepare_cached("DELETE FROM idempotency_leases WHERE service = ?1 AND event_id = ?2")
            .map_err(unavailable)?
            .execute(params![lease.service, lease.event_id])
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.lock()
            .prepare_cached(
                "DELETE FROM idempotency_leases WHERE service = ?1 AND event_id = ?2 AND token = ?3",
            )
            .map_err(unavailable)?
            .execute(params![lease.service, lease.event_id, lease.token])
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for SqliteStore {
    async fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, PortError> {
        let inserted = self
            .lock()
            .prepare_cached(
                "INSERT INTO objects (key, body, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING",
            )
            .map_err(port_error)?
            .execute(params![key, bytes, now_ms()])
            .map_err(port_error)?;
        Ok(if inserted == 1 {
            PutOutcome::Created
        } else {
            PutOutcome::AlreadyExists
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        self.lock()
            .prepare_cached("SELECT body FROM objects WHERE key = ?1")
            .map_err(port_error)?
            .query_row([key], |row| row.get(0))
            .optional()
            .map_err(port_error)
    }
}

/// The embedded bus: the store's queue tables with SQS semantics, routing
/// by the same table as the embedded runtime, and claim checks in the
/// store's `objects` table.
pub struct SqliteBus {
    store: Arc<SqliteStore>,
    routes: Routes,
    claim_check_bytes: usize,
    max_receive_count: u32,
    owner: String,
}

impl SqliteBus {
    /// Creates a bus over `store` routing by `routes`, with the default
    /// claim-check threshold (256 KiB) and redrive after 5 receives.
    pub fn new(store: Arc<SqliteStore>, routes: Routes) -> Self {
        SqliteBus {
            store,
            routes,
            claim_check_bytes: DEFAULT_CLAIM_CHECK_BYTES,
            max_receive_count: 5,
            owner: "embedded".into(),
        }
    }

    /// Sets the body size above which a published event goes to the object
    /// store.
    pub fn with_claim_check_bytes(mut self, bytes: usize) -> Self {
        self.claim_check_bytes = bytes;
        self
    }

    /// Sets the receives after which `receive` moves a message to the
    /// dead-letter queue.
    pub fn with_max_receive_count(mut self, count: u32) -> Self {
        self.max_receive_count = count;
        self
    }

    /// Sets the service whose claim checks this bus writes, under
    /// `claims/<service>/`.
    pub fn with_owner(mut self, service: &str) -> Self {
        self.owner = service.to_string();
        self
    }

    fn check_queue(&self, queue: &str) -> Result<(), PortError> {
        if self.routes.queues().contains(&queue) {
            return Ok(());
        }
        Err(PortError::UnknownQueue {
            queue: queue.into(),
            known: self.routes.queues().join(", "),
            fix: "queues are named after the services this runtime runs".into(),
        })
    }

    fn receipt(receipt: &str) -> Result<i64, PortError> {
        receipt.parse().map_err(|_| PortError::Unavailable {
            service: "sqlite",
            message: format!("receipt {receipt:?} is not an embedded queue position"),
        })
    }
}

fn attributes_json(attributes: &BTreeMap<String, String>) -> String {
    serde_json::to_string(attributes).expect("attributes serialise")
}

fn parse_attributes(text: Option<String>, message_id: &str) -> BTreeMap<String, String> {
    match text {
        Some(text) => serde_json::from_str(&text).unwrap_or_default(),
        None => BTreeMap::from([(ATTR_EVENT_ID.to_string(), message_id.to_string())]),
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn publish(&self, events: &[Outbound]) -> Result<(), PortError> {
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            let (body, attributes) =
                outbound_message(&*self.store, &self.owner, self.claim_check_bytes, event).await?;
            let queues = self.routes.queues_for(&event.event_type);
            messages.push((
                queues,
                event.id.as_str(),
                body,
                attributes_json(&attributes),
            ));
        }
        let mut connection = self.store.lock();
        let tx = connection.savepoint().map_err(port_error)?;
        let now = now_ms();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms, attributes) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                )
                .map_err(port_error)?;
            for (queues, id, body, attributes) in &messages {
                for queue in queues {
                    insert
                        .execute(params![queue, id, body, now, attributes])
                        .map_err(port_error)?;
                }
            }
        }
        tx.commit().map_err(port_error)
    }

    async fn send(
        &self,
        queue: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let size = body.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_MESSAGE_BYTES {
            return Err(PortError::TooLarge {
                what: format!("a message to {queue}"),
                size,
                limit: MAX_MESSAGE_BYTES,
                fix: "publish it as an event, which goes through the claim check".into(),
            });
        }
        let message_id = attributes
            .get(ATTR_EVENT_ID)
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let now = now_ms();
        self.store
            .lock()
            .prepare_cached(
                "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms, attributes) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            )
            .map_err(port_error)?
            .execute(params![queue, message_id, body, now, attributes_json(attributes)])
            .map_err(port_error)?;
        Ok(())
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Delivery>, PortError> {
        self.check_queue(queue)?;
        type Row = (
            i64,
            String,
            String,
            u32,
            Option<String>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = {
            let mut connection = self.store.lock();
            let tx = connection.savepoint().map_err(port_error)?;
            let now = now_ms();
            let rows: Vec<Row> = {
                let mut select = tx
                    .prepare_cached(
                        "SELECT seq, message_id, body, receive_count, attributes, last_error, sent_ms FROM queue_messages
                         WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY visible_ms, seq LIMIT ?3",
                    )
                    .map_err(port_error)?;
                let rows = select
                    .query_map(params![queue, now, max as i64], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ))
                    })
                    .map_err(port_error)?;
                rows.collect::<Result<_, _>>().map_err(port_error)?
            };
            for (seq, message_id, body, receive_count, attributes, last_error, sent_ms) in &rows {
                if *receive_count >= self.max_receive_count {
                    // The redrive policy, applied on the receive after the
                    // last allowed one, as SQS does.
                    let (code, message) = match last_error {
                        Some(error) => error
                            .split_once(": ")
                            .map(|(c, m)| (c.to_string(), m.to_string()))
                            .unwrap_or(("max_receives".into(), error.clone())),
                        None => (
                            "max_receives".into(),
                            format!(
                                "received {receive_count} times without being deleted (the consumer crashed or timed out)"
                            ),
                        ),
                    };
                    tx.prepare_cached(
                        "INSERT INTO dead_letters (queue, message_id, body, error_kind, error_code, error_message, receive_count, sent_ms, failed_ms, attributes)
                         VALUES (?1, ?2, ?3, 'retries_exhausted', ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(port_error)?
                    .execute(params![queue, message_id, body, code, message, receive_count, sent_ms, now, attributes])
                    .map_err(port_error)?;
                    tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
                        .map_err(port_error)?
                        .execute([seq])
                        .map_err(port_error)?;
                } else {
                    tx.prepare_cached(
                        "UPDATE queue_messages SET visible_ms = ?1, receive_count = receive_count + 1 WHERE seq = ?2",
                    )
                    .map_err(port_error)?
                    .execute(params![now + visibility_ms as i64, seq])
                    .map_err(port_error)?;
                }
            }
            tx.commit().map_err(port_error)?;
            rows.into_iter()
                .filter(|row| row.3 < self.max_receive_count)
                .collect()
        };
        Ok(rows
            .into_iter()
            .map(
                |(seq, message_id, body, receive_count, attributes, _, _)| Delivery {
                    receipt: seq.to_string(),
                    attributes: parse_attributes(attributes, &message_id),
                    message_id,
                    body,
                    receive_count: receive_count + 1,
                },
            )
            .collect())
    }

    async fn delete(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let seq = Self::receipt(receipt)?;
        self.store
            .lock()
            .prepare_cached("DELETE FROM queue_messages WHERE seq = ?1 AND queue = ?2")
            .map_err(port_error)?
            .execute(params![seq, queue])
            .map_err(port_error)?;
        Ok(())
    }

    async fn retry_after(
        &self,
        queue: &str,
        receipt: &str,
        delay_ms: u64,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let seq = Self::receipt(receipt)?;
        self.store
            .lock()
            .prepare_cached(
                "UPDATE queue_messages SET visible_ms = ?1 WHERE seq = ?2 AND queue = ?3",
            )
            .map_err(port_error)?
            .execute(params![now_ms() + delay_ms as i64, seq, queue])
            .map_err(port_error)?;
        Ok(())
    }

    async fn resolve(&self, body: &str) -> Result<String, PortError> {
        resolve_with(&*self.store, body).await
    }

    async fn dead_letter(
        &self,
        queue: &str,
        message_id: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
        reason: &DeadLetterReason,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let now = now_ms();
        self.store
            .lock()
            .prepare_cached(
                "INSERT INTO dead_letters (queue, message_id, body, error_kind, error_code, error_message, receive_count, sent_ms, failed_ms, attributes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
            )
            .map_err(port_error)?
            .execute(params![
                queue,
                message_id,
                body,
                reason.error_kind,
                reason.error_code,
                reason.error_message,
                reason.receive_count,
                now,
                attributes_json(attributes)
            ])
            .map_err(port_error)?;
        Ok(())
    }

    async fn dead_letters(&self, queue: Option<&str>) -> Result<Vec<DeadLetterEntry>, PortError> {
        if let Some(queue) = queue {
            self.check_queue(queue)?;
        }
        let connection = self.store.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT queue, message_id, body, error_kind, error_code, error_message, receive_count, failed_ms, attributes
                 FROM dead_letters WHERE ?1 IS NULL OR queue = ?1 ORDER BY seq",
            )
            .map_err(port_error)?;
        let rows = statement
            .query_map([queue], |row| {
                let message_id: String = row.get(1)?;
                Ok(DeadLetterEntry {
                    queue: row.get(0)?,
                    body: row.get(2)?,
                    reason: DeadLetterReason {
                        error_kind: row.get(3)?,
                        error_code: row.get(4)?,
                        error_message: row.get(5)?,
                        receive_count: row.get(6)?,
                    },
                    failed_ms: row.get(7)?,
                    attributes: parse_attributes(row.get(8)?, &message_id),
                    message_id,
                })
            })
            .map_err(port_error)?;
        rows.collect::<Result<_, _>>().map_err(port_error)
    }

    async fn replay(&self, queue: Option<&str>, max: Option<usize>) -> Result<Replayed, PortError> {
        if let Some(queue) = queue {
            self.check_queue(queue)?;
        }
        let mut connection = self.store.lock();
        let tx = connection.savepoint().map_err(port_error)?;
        let now = now_ms();
        let limit = max.map(|m| m as i64).unwrap_or(-1);
        let moved = tx
            .prepare_cached(
                "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms, attributes)
                 SELECT queue, message_id, body, ?2, ?2, attributes FROM dead_letters
                 WHERE ?1 IS NULL OR queue = ?1 ORDER BY seq LIMIT ?3",
            )
            .map_err(port_error)?
            .execute(params![queue, now, limit])
            .map_err(port_error)?;
        tx.prepare_cached(
            "DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM dead_letters WHERE ?1 IS NULL OR queue = ?1 ORDER BY seq LIMIT ?2)",
        )
        .map_err(port_error)?
        .execute(params![queue, limit])
        .map_err(port_error)?;
        tx.commit().map_err(port_error)?;
        Ok(Replayed {
            moved,
            method: ReplayMethod::ReceiveSendDelete,
        })
    }
}

/// Resolves a claim-check body through `objects`; any other body is
/// returned as it is.
pub async fn resolve_with(objects: &dyn ObjectStore, body: &str) -> Result<String, PortError> {
    let Some(reference) = ClaimCheck::parse(body) else {
        return Ok(body.to_string());
    };
    let bytes =
        objects
            .get(&reference.claim_check)
            .await?
            .ok_or_else(|| PortError::BadClaimCheck {
                key: reference.claim_check.clone(),
                reason: "no object at that key".into(),
            })?;
    String::from_utf8(bytes).map_err(|error| PortError::BadClaimCheck {
        key: reference.claim_check,
        reason: format!("the object is not UTF-8: {error}"),
    })
}

impl SqliteStore {
    /// Returns the body a claim-check reference names, when `body` is one
    /// and its object exists; `None` otherwise. The embedded driver calls
    /// this only for a body that is not an event.
    pub fn claimed_body(&self, body: &str) -> Option<String> {
        let reference = ClaimCheck::parse(body)?;
        let bytes: Vec<u8> = self
            .lock()
            .prepare_cached("SELECT body FROM objects WHERE key = ?1")
            .ok()?
            .query_row([&reference.claim_check], |row| row.get(0))
            .ok()?;
        String::from_utf8(bytes).ok()
    }
}

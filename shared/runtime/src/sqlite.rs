//! The embedded store: state, queues, dead letters and idempotency records in
//! one SQLite file (WAL mode).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::queue::{DeadLetter, QueueSettings, ReceivedMessage};
use crate::store::{Expected, StateWrite, Store, StoreError, Versioned};

/// Schema migrations, applied in order and recorded in `migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "embedded_store",
        include_str!("../../../migrations/0001_embedded_store.sql"),
    ),
    (
        2,
        "run_snapshots",
        include_str!("../../../migrations/0002_run_snapshots.sql"),
    ),
    (
        3,
        "run_snapshot_end",
        include_str!("../../../migrations/0003_run_snapshot_end.sql"),
    ),
    (
        4,
        "sagas",
        include_str!("../../../migrations/0004_sagas.sql"),
    ),
    (
        5,
        "ports",
        include_str!("../../../migrations/0005_ports.sql"),
    ),
];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Result of committing a handled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitResult {
    /// Writes, idempotency record and outputs committed; message deleted.
    Committed,
    /// The event was already complete for this service; message deleted and
    /// nothing applied.
    Duplicate,
}

/// The connection settings of the embedded store, also applied by the
/// benchmark's raw SQLite queue so that both pay the same durability.
/// - WAL with `synchronous=NORMAL`: a commit survives a process crash; the
///   last commits before a power loss may be rolled back.
/// - A checkpoint every 10,000 WAL pages (40 MiB at 4 KiB pages) rather than
///   SQLite's default 1,000. State keys and queue pages are rewritten many
///   times between checkpoints. A checkpoint copies only the last version of
///   each page, and costs an fsync.
/// - A 64 MiB page cache and temporary tables in memory.
pub const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=10000; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;";

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Set when a record failed part-way through its commit inside the open
    /// batch; the batch then rolls back instead of committing.
    batch_failed: std::sync::atomic::AtomicBool,
}

/// The error message of a batch rolled back after a record failed part-way
/// through its commit.
const BATCH_FAILED: &str = "a record of this batch failed part-way through its commit, so the batch was rolled back; its messages return to the queue after the visibility timeout";

/// How often the checkpointer copies the pages committed since its last
/// pass from the WAL into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The automatic checkpoint of the store's own connection while a
/// checkpointer runs: 100,000 WAL pages (400 MiB at 4 KiB pages), a bound
/// for a checkpointer that falls behind rather than the usual path.
const FALLBACK_CHECKPOINT_PAGES: u32 = 100_000;

/// A thread with a connection of its own that checkpoints the WAL.
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.thread().unpark();
        // The thread's loop has no panicking call; a join error would only
        // repeat a panic message already printed.
        let _ = self.thread.join();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let checkpointer = self
            .checkpointer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(checkpointer) = checkpointer {
            checkpointer.stop();
        }
    }
}

pub(crate) fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and applies pending
    /// migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Unavailable(format!(
                    "failed to create folder {}: {error}",
                    parent.display()
                ))
            })?;
        }
        let connection = Connection::open(&path).map_err(|error| {
            StoreError::Unavailable(format!("failed to open store {}: {error}", path.display()))
        })?;
        connection.execute_batch(PRAGMAS).map_err(unavailable)?;
        let store = SqliteStore {
            path,
            connection: Mutex::new(connection),
            checkpointer: Mutex::new(None),
            batch_failed: std::sync::atomic::AtomicBool::new(false),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Moves WAL checkpoints off the store's connection onto a thread with
    /// a connection of its own, which checkpoints every 250 ms. A commit
    /// then no longer waits while a checkpoint copies pages and syncs the
    /// database file, and that work runs on another core. The WAL keeps the
    /// same durability: commits are in the WAL, and a checkpoint copies
    /// them. Calling it again does nothing; the thread stops when the store
    /// is dropped.
    pub fn start_checkpointer(&self) -> Result<(), StoreError> {
        let mut slot = self
            .checkpointer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let connection = Connection::open(&self.path).map_err(|error| {
            StoreError::Unavailable(format!(
                "failed to open a checkpoint connection to {}: {error}",
                self.path.display()
            ))
        })?;
        connection.execute_batch(PRAGMAS).map_err(unavailable)?;
        self.lock()
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}"
            ))
            .map_err(unavailable)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::park_timeout(CHECKPOINT_INTERVAL);
                    // A passive checkpoint copies the pages no reader still
                    // needs and does not wait for locks (SQLite's
                    // sqlite3_wal_checkpoint_v2). A failed pass is retried at
                    // the next interval, and the store's own connection
                    // checkpoints past the fallback bound.
                    let _ = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|error| {
                StoreError::Unavailable(format!("failed to start the checkpoint thread: {error}"))
            })?;
        *slot = Some(Checkpointer { stop, thread });
        Ok(())
    }

    /// Returns the file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies migrations not yet recorded; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
        )
        .map_err(unavailable)?;
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> = tx
                .prepare_cached("SELECT version FROM migrations WHERE version = ?1")
                .map_err(unavailable)?
                .query_row([version], |row| row.get(0))
                .optional()
                .map_err(unavailable)?;
            if done.is_some() {
                continue;
            }
            tx.execute_batch(sql).map_err(|error| {
                StoreError::Unavailable(format!("migration {version} ({name}) failed: {error}"))
            })?;
            tx.prepare_cached(
                "INSERT INTO migrations (version, name, applied_ms) VALUES (?1, ?2, ?3)",
            )
            .map_err(unavailable)?
            .execute(params![version, name, now_ms()])
            .map_err(unavailable)?;
            applied.push(*version);
        }
        tx.commit().map_err(unavailable)?;
        Ok(applied)
    }

    /// Migration versions recorded in the store.
    pub fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT version FROM migrations ORDER BY version")
            .map_err(unavailable)?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Enqueues `body` on each of `queues` in one transaction.
    pub fn send(&self, queues: &[&str], message_id: &str, body: &str) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        enqueue(&tx, queues, message_id, body, now_ms())?;
        tx.commit().map_err(unavailable)
    }

    /// Enqueues many messages in one transaction: each is (queues, id, body).
    pub fn send_many(&self, messages: &[(Vec<&str>, String, String)]) -> Result<(), StoreError> {
        self.send_many_with_writes(messages, &[])
    }

    /// Enqueues many messages and applies state writes in one transaction,
    /// so that a marker of what was published commits with the messages.
    pub fn send_many_with_writes(
        &self,
        messages: &[(Vec<&str>, String, String)],
        writes: &[StateWrite],
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let now = now_ms();
        for write in writes {
            apply_write(&tx, write, now)?;
        }
        for (queues, id, body) in messages {
            enqueue(&tx, queues, id, body, now)?;
        }
        tx.commit().map_err(unavailable)
    }

    /// Receives up to `settings.batch_size` visible messages of `queue` and
    /// hides them for the visibility timeout, incrementing their receive
    /// counts.
    pub fn receive(
        &self,
        queue: &str,
        settings: &QueueSettings,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let now = now_ms();
        let mut messages = Vec::new();
        {
            let mut select = tx
                .prepare_cached(
                    "SELECT seq, message_id, body, receive_count, task_token FROM queue_messages
                     WHERE queue = ?1 AND visible_ms <= ?2 ORDER BY visible_ms, seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = select
                .query_map(params![queue, now, settings.batch_size], |row| {
                    Ok(ReceivedMessage {
                        seq: row.get(0)?,
                        message_id: row.get(1)?,
                        body: row.get(2)?,
                        receive_count: row.get::<_, u32>(3)? + 1,
                        task_token: row.get(4)?,
                    })
                })
                .map_err(unavailable)?;
            for row in rows {
                messages.push(row.map_err(unavailable)?);
            }
            // One statement hides the whole batch.
            let seqs: Vec<i64> = messages.iter().map(|message| message.seq).collect();
            let seqs = serde_json::to_string(&seqs).expect("a list of integers serialises");
            tx.prepare_cached(
                "UPDATE queue_messages SET visible_ms = ?1, receive_count = receive_count + 1
                 WHERE seq IN (SELECT value FROM json_each(?2))",
            )
            .map_err(unavailable)?
            .execute(params![now + settings.visibility_timeout_ms as i64, seqs])
            .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
        Ok(messages)
    }

    /// Opens a transaction around the records of one batch. Each record's
    /// commit or failure is a savepoint inside it, so a failing record rolls
    /// back alone, and the batch costs one commit instead of one per record.
    /// The receive that hid the batch's messages committed before this, so
    /// their receive counts survive a crash mid-batch.
    pub fn begin_batch(&self) -> Result<(), StoreError> {
        self.batch_failed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.lock()
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(unavailable)
    }

    /// Commits the batch transaction, or rolls it back and fails when a
    /// record failed part-way through its commit.
    pub fn end_batch(&self) -> Result<(), StoreError> {
        if self
            .batch_failed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.lock().execute_batch("ROLLBACK").map_err(unavailable)?;
            return Err(StoreError::Unavailable(BATCH_FAILED.into()));
        }
        self.lock().execute_batch("COMMIT").map_err(unavailable)
    }

    /// Rolls the batch transaction back; its messages reappear after their
    /// visibility timeout.
    pub fn abort_batch(&self) -> Result<(), StoreError> {
        self.lock().execute_batch("ROLLBACK").map_err(unavailable)
    }

    /// Checks whether `service` has completed the event `event_id`.
    pub fn is_complete(&self, service: &str, event_id: &str) -> Result<bool, StoreError> {
        let connection = self.lock();
        let found: Option<i64> = connection
            .prepare_cached("SELECT 1 FROM idempotency WHERE service = ?1 AND event_id = ?2 AND status = 'complete'").map_err(unavailable)?.query_row(params![service, event_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        Ok(found.is_some())
    }

    /// Returns which of `event_ids` `service` has completed, with one query
    /// for a whole batch.
    pub fn completed_among(
        &self,
        service: &str,
        event_ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let ids = serde_json::to_string(event_ids).expect("a list of strings serialises");
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached(
                "SELECT event_id FROM idempotency WHERE service = ?1 AND status = 'complete'
                 AND event_id IN (SELECT value FROM json_each(?2))",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map(params![service, ids], |row| row.get(0))
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Deletes a handled message.
    pub fn delete(&self, seq: i64) -> Result<(), StoreError> {
        let connection = self.lock();
        connection
            .prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
            .map_err(unavailable)?
            .execute([seq])
            .map_err(unavailable)?;
        Ok(())
    }

    /// Commits a handled event in one transaction: the conditional writes,
    /// the completed idempotency record with its outputs, the outputs on
    /// their subscribers' queues, the answer to the saga step when the
    /// message carried a task token, and the deletion of the message.
    pub fn commit(
        &self,
        service: &str,
        message: &ReceivedMessage,
        event_id: &str,
        writes: &[StateWrite],
        outputs: &[(Vec<&str>, String, String)],
    ) -> Result<CommitResult, StoreError> {
        let connection = self.lock();
        if connection.is_autocommit() {
            // No batch is open: the savepoint is the record's transaction.
            let tx = RecordSavepoint::open(&connection)?;
            let result = apply_commit(&tx, service, message, event_id, writes, outputs)?;
            tx.release()?;
            return Ok(result);
        }
        // Inside a batch, a record commits without a savepoint of its own,
        // which saves journaling each page it changes. The conditions of its
        // writes are checked before anything is written, so a conflict
        // leaves the batch as it was. Any later failure is a store failure
        // part-way through the record, and the whole batch rolls back.
        if self.batch_failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(BATCH_FAILED.into()));
        }
        apply_commit(&connection, service, message, event_id, writes, outputs).inspect_err(
            |error| {
                if !matches!(error, StoreError::Conflict { .. }) {
                    self.batch_failed
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            },
        )
    }

    /// Answers the saga step of a message whose event `service` had already
    /// completed, with the outputs stored then, and deletes the message. A
    /// redelivered command thus gets the same answer as the first delivery.
    pub fn answer_duplicate(
        &self,
        service: &str,
        message: &ReceivedMessage,
        event_id: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        if let Some(token) = &message.task_token {
            let outputs: Option<String> = tx
                .prepare_cached(
                    "SELECT outputs FROM idempotency WHERE service = ?1 AND event_id = ?2",
                )
                .map_err(unavailable)?
                .query_row(params![service, event_id], |row| row.get(0))
                .optional()
                .map_err(unavailable)?;
            if let Some(outputs) = outputs {
                insert_answer(&tx, token, None, &outputs, now_ms())?;
            }
        }
        tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
            .map_err(unavailable)?
            .execute([message.seq])
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }

    /// Answers the saga step of a message with a permanent failure and
    /// deletes the message. The saga, not the dead-letter queue, then
    /// decides what follows, as `SendTaskFailure` does on AWS.
    pub fn answer_failure(
        &self,
        message: &ReceivedMessage,
        token: &str,
        code: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        insert_answer(&tx, token, Some((code, error)), "[]", now_ms())?;
        tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
            .map_err(unavailable)?
            .execute([message.seq])
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }

    /// Runs `work` in one transaction (a savepoint, so it nests inside a
    /// batch). The saga runner uses it to record a step and send its command
    /// together.
    pub fn transaction<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let result = work(&tx)?;
        tx.commit().map_err(unavailable)?;
        Ok(result)
    }

    /// Records a failed receive. A permanent failure, or a retryable one on
    /// the last allowed receive, moves the message to the dead-letter queue
    /// with the reason; otherwise it becomes visible again after
    /// `retry_after_ms`. Returns whether it was dead-lettered.
    #[allow(clippy::too_many_arguments)]
    pub fn fail(
        &self,
        queue: &str,
        message: &ReceivedMessage,
        permanent: bool,
        code: &str,
        error: &str,
        settings: &QueueSettings,
        retry_after_ms: u64,
    ) -> Result<bool, StoreError> {
        let connection = self.lock();
        let tx = RecordSavepoint::open(&connection)?;
        let now = now_ms();
        let dead = permanent || message.receive_count >= settings.max_receive_count;
        if dead {
            let sent_ms: i64 = tx
                .prepare_cached("SELECT sent_ms FROM queue_messages WHERE seq = ?1")
                .map_err(unavailable)?
                .query_row([message.seq], |row| row.get(0))
                .optional()
                .map_err(unavailable)?
                .unwrap_or(now);
            let kind = if permanent {
                "permanent"
            } else {
                "retries_exhausted"
            };
            tx.prepare_cached("INSERT INTO dead_letters (queue, message_id, body, error_kind, error_code, error_message, receive_count, sent_ms, failed_ms, task_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)").map_err(unavailable)?.execute(params![queue, message.message_id, message.body, kind, code, error, message.receive_count, sent_ms, now, message.task_token],
            )
            .map_err(unavailable)?;
            tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
                .map_err(unavailable)?
                .execute([message.seq])
                .map_err(unavailable)?;
        } else {
            tx.prepare_cached(
                "UPDATE queue_messages SET visible_ms = ?1, last_error = ?2 WHERE seq = ?3",
            )
            .map_err(unavailable)?
            .execute(params![
                now + retry_after_ms as i64,
                format!("{code}: {error}"),
                message.seq
            ])
            .map_err(unavailable)?;
        }
        tx.release()?;
        Ok(dead)
    }

    /// Moves a message straight to the dead-letter queue, as a permanent
    /// failure found before any handler ran (an unparseable body, say).
    pub fn dead_letter(
        &self,
        queue: &str,
        message: &ReceivedMessage,
        code: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.fail(
            queue,
            message,
            true,
            code,
            error,
            &QueueSettings::default(),
            0,
        )
        .map(|_| ())
    }

    /// Messages in `queue`: (visible now, in flight).
    pub fn queue_depth(&self, queue: &str) -> Result<(u64, u64), StoreError> {
        let connection = self.lock();
        let now = now_ms();
        connection
            .prepare_cached("SELECT COALESCE(SUM(visible_ms <= ?2), 0), COALESCE(SUM(visible_ms > ?2), 0) FROM queue_messages WHERE queue = ?1").map_err(unavailable)?.query_row(params![queue, now],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
            .map_err(unavailable)
    }

    /// Finds the earliest time at which a hidden message of one of
    /// `queues` becomes visible again, if any is hidden.
    pub fn next_visible_ms(&self, queues: &[&str]) -> Result<Option<i64>, StoreError> {
        let connection = self.lock();
        let mut earliest: Option<i64> = None;
        for queue in queues {
            let next: Option<i64> = connection
                .prepare_cached("SELECT MIN(visible_ms) FROM queue_messages WHERE queue = ?1")
                .map_err(unavailable)?
                .query_row([queue], |row| row.get(0))
                .map_err(unavailable)?;
            earliest = match (earliest, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(earliest)
    }

    /// Lists every queue name with messages or dead letters, sorted.
    pub fn queue_names(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT queue FROM queue_messages UNION SELECT queue FROM dead_letters ORDER BY 1",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Dead letters, oldest first, of one queue or of all.
    pub fn dead_letters(&self, queue: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT seq, queue, message_id, body, error_kind, error_code, error_message, receive_count, failed_ms, task_token
                 FROM dead_letters WHERE ?1 IS NULL OR queue = ?1 ORDER BY seq",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map([queue], |row| {
                Ok(DeadLetter {
                    seq: row.get(0)?,
                    queue: row.get(1)?,
                    message_id: row.get(2)?,
                    body: row.get(3)?,
                    error_kind: row.get(4)?,
                    error_code: row.get(5)?,
                    error_message: row.get(6)?,
                    receive_count: row.get(7)?,
                    failed_ms: row.get(8)?,
                    task_token: row.get(9)?,
                })
            })
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    /// Moves up to `max` dead letters (all when `None`), oldest first, back to
    /// their source queues with a fresh receive count. Returns how many moved.
    pub fn replay_dead_letters(
        &self,
        queue: Option<&str>,
        max: Option<usize>,
    ) -> Result<usize, StoreError> {
        let letters = self.dead_letters(queue)?;
        let take = max.unwrap_or(letters.len()).min(letters.len());
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let now = now_ms();
        for letter in &letters[..take] {
            enqueue_command(
                &tx,
                &letter.queue,
                &letter.message_id,
                &letter.body,
                letter.task_token.as_deref(),
                now,
            )?;
            tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")
                .map_err(unavailable)?
                .execute([letter.seq])
                .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
        Ok(take)
    }

    /// Count of dead letters.
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let connection = self.lock();
        connection
            .prepare_cached("SELECT COUNT(*) FROM dead_letters")
            .map_err(unavailable)?
            .query_row([], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(unavailable)
    }

    /// Applies writes outside any event, for administrative commands and test
    /// set-up. Services never call this: their writes go through `commit`.
    pub fn write_direct(&self, writes: &[StateWrite]) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let tx = connection.savepoint().map_err(unavailable)?;
        let now = now_ms();
        for write in writes {
            apply_write(&tx, write, now)?;
        }
        tx.commit().map_err(unavailable)
    }

    /// Runs `SELECT 1` to check the file is readable.
    pub fn ping(&self) -> Result<(), StoreError> {
        let connection = self.lock();
        connection
            .prepare_cached("SELECT 1")
            .map_err(unavailable)?
            .query_row([], |row| row.get::<_, i64>(0))
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// A savepoint around one record's changes, opened and closed through
/// cached statements so that it costs no SQL parsing per record. Inside the
/// batch transaction it nests; outside one it is its own transaction.
/// Dropped without `release`, it rolls its changes back.
struct RecordSavepoint<'c> {
    connection: &'c Connection,
    released: bool,
}

impl<'c> RecordSavepoint<'c> {
    fn open(connection: &'c Connection) -> Result<Self, StoreError> {
        run_cached(connection, "SAVEPOINT record")?;
        Ok(RecordSavepoint {
            connection,
            released: false,
        })
    }

    /// Keeps the changes: commits them when no batch transaction is open.
    fn release(mut self) -> Result<(), StoreError> {
        self.released = true;
        run_cached(self.connection, "RELEASE record")
    }
}

impl std::ops::Deref for RecordSavepoint<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl Drop for RecordSavepoint<'_> {
    fn drop(&mut self) {
        if !self.released {
            // A failed rollback leaves the savepoint open; the batch's own
            // rollback then discards it with everything else.
            let _ = run_cached(self.connection, "ROLLBACK TO record")
                .and_then(|()| run_cached(self.connection, "RELEASE record"));
        }
    }
}

fn run_cached(connection: &Connection, sql: &str) -> Result<(), StoreError> {
    connection
        .prepare_cached(sql)
        .map_err(unavailable)?
        .execute([])
        .map_err(unavailable)
        .map(|_| ())
}

fn enqueue(
    tx: &Connection,
    queues: &[&str],
    message_id: &str,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
        )
        .map_err(unavailable)?;
    for queue in queues {
        insert
            .execute(params![queue, message_id, body, now])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Enqueues one message on `queue`, with the task token of the saga step
/// that waits for its answer, if any.
pub fn enqueue_command(
    tx: &Connection,
    queue: &str,
    message_id: &str,
    body: &str,
    task_token: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO queue_messages (queue, message_id, body, sent_ms, visible_ms, task_token) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
    )
    .map_err(unavailable)?
    .execute(params![queue, message_id, body, now, task_token])
    .map_err(unavailable)?;
    Ok(())
}

/// Applies a handled event's commit on `tx`: the completed idempotency
/// record with its outputs, the conditional writes, the outputs on their
/// subscribers' queues, the saga step's result and the deletion of the
/// message.
fn apply_commit(
    tx: &Connection,
    service: &str,
    message: &ReceivedMessage,
    event_id: &str,
    writes: &[StateWrite],
    outputs: &[(Vec<&str>, String, String)],
) -> Result<CommitResult, StoreError> {
    let message_seq = message.seq;
    let now = now_ms();
    // The outputs are JSON texts already, so the array is joined as text.
    let mut output_array = String::with_capacity(
        2 + outputs
            .iter()
            .map(|(_, _, body)| body.len() + 1)
            .sum::<usize>(),
    );
    output_array.push('[');
    for (position, (_, _, body)) in outputs.iter().enumerate() {
        if position > 0 {
            output_array.push(',');
        }
        output_array.push_str(body);
    }
    output_array.push(']');

    // The idempotency record goes first: its primary key finds an event
    // already complete, and then nothing else is applied.
    let inserted = tx
        .prepare_cached("INSERT INTO idempotency (service, event_id, status, outputs, completed_ms) VALUES (?1, ?2, 'complete', ?3, ?4) ON CONFLICT (service, event_id) DO NOTHING")
        .map_err(unavailable)?
        .execute(params![service, event_id, output_array, now])
        .map_err(unavailable)?;
    if inserted == 0 {
        if let Some(token) = &message.task_token {
            let stored_outputs: String = tx
                .prepare_cached(
                    "SELECT outputs FROM idempotency WHERE service = ?1 AND event_id = ?2",
                )
                .map_err(unavailable)?
                .query_row(params![service, event_id], |row| row.get(0))
                .map_err(unavailable)?;
            insert_answer(tx, token, None, &stored_outputs, now)?;
        }
        tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
            .map_err(unavailable)?
            .execute([message_seq])
            .map_err(unavailable)?;
        return Ok(CommitResult::Duplicate);
    }

    // The conditions are checked before any write, so that a conflict
    // undoes only the idempotency record just inserted.
    if let Err(conflict) = check_writes(tx, writes) {
        tx.prepare_cached("DELETE FROM idempotency WHERE service = ?1 AND event_id = ?2")
            .map_err(unavailable)?
            .execute(params![service, event_id])
            .map_err(unavailable)?;
        return Err(conflict);
    }

    for write in writes {
        put_or_delete(tx, write, now)?;
    }
    for (queues, id, body) in outputs {
        enqueue(tx, queues, id, body, now)?;
    }
    if let Some(token) = &message.task_token {
        insert_answer(tx, token, None, &output_array, now)?;
    }
    tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")
        .map_err(unavailable)?
        .execute([message_seq])
        .map_err(unavailable)?;
    Ok(CommitResult::Committed)
}

/// Checks the conditions of `writes` in order without writing, as
/// `apply_write` would. A later write to a key is checked against the
/// version an earlier one leaves.
fn check_writes(tx: &Connection, writes: &[StateWrite]) -> Result<(), StoreError> {
    // The version each key has after the writes before it; outcomes write
    // a handful of keys, so a list is searched.
    let mut versions: Vec<(&str, Option<u64>)> = Vec::new();
    for write in writes {
        let earlier = versions
            .iter()
            .rev()
            .find(|(key, _)| *key == write.key.as_str());
        let found = match earlier {
            Some((_, version)) => *version,
            None => stored_version(tx, &write.key)?,
        };
        check_condition(write, found)?;
        let next = write
            .value
            .as_ref()
            .map(|_| found.map_or(1, |version| version + 1));
        versions.push((write.key.as_str(), next));
    }
    Ok(())
}

/// Records the answer to a task token, a success with the handler's outputs
/// (a JSON array) or a failure with its code and message. The first answer
/// wins: a later one for the same token changes nothing, as Step Functions
/// rejects an answer to a closed token.
fn insert_answer(
    tx: &Connection,
    token: &str,
    failure: Option<(&str, &str)>,
    outputs: &str,
    now: i64,
) -> Result<(), StoreError> {
    let (outcome, code, message) = match failure {
        None => ("success", None, None),
        Some((code, message)) => ("failure", Some(code), Some(message)),
    };
    tx.prepare_cached(
        "INSERT INTO saga_answers (task_token, outcome, outputs, error_code, error_message, answered_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (task_token) DO NOTHING",
    )
    .map_err(unavailable)?
    .execute(params![token, outcome, outputs, code, message, now])
    .map_err(unavailable)?;
    Ok(())
}

pub(crate) fn apply_write(tx: &Connection, write: &StateWrite, now: i64) -> Result<(), StoreError> {
    check_condition(write, stored_version(tx, &write.key)?)?;
    put_or_delete(tx, write, now)
}

/// Returns the version stored at `key`, or `None` when it is absent.
fn stored_version(tx: &Connection, key: &str) -> Result<Option<u64>, StoreError> {
    tx.prepare_cached("SELECT version FROM kv WHERE key = ?1")
        .map_err(unavailable)?
        .query_row([key], |row| row.get(0))
        .optional()
        .map_err(unavailable)
}

/// Fails with a conflict unless `write`'s condition holds for `found`.
fn check_condition(write: &StateWrite, found: Option<u64>) -> Result<(), StoreError> {
    let allowed = match write.expected {
        Expected::Any => true,
        Expected::Absent => found.is_none(),
        Expected::Version(version) => found == Some(version),
    };
    if allowed {
        return Ok(());
    }
    Err(StoreError::Conflict {
        key: write.key.clone(),
        expected: write.expected,
        found,
    })
}

/// Applies `write` without checking its condition.
fn put_or_delete(tx: &Connection, write: &StateWrite, now: i64) -> Result<(), StoreError> {
    match &write.value {
        Some(value) => {
            tx.prepare_cached("INSERT INTO kv (key, value, version, updated_ms) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = kv.version + 1, updated_ms = excluded.updated_ms").map_err(unavailable)?.execute(params![write.key, value, now],
            )
            .map_err(unavailable)?;
        }
        None => {
            tx.prepare_cached("DELETE FROM kv WHERE key = ?1")
                .map_err(unavailable)?
                .execute([&write.key])
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let row: Option<(String, u64)> = {
            let connection = self.lock();
            connection
                .prepare_cached("SELECT value, version FROM kv WHERE key = ?1")
                .map_err(unavailable)?
                .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(unavailable)?
        };
        Ok(row.map(|(json, version)| Versioned { json, version }))
    }

    async fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let rows: Vec<(String, String, u64)> = {
            let connection = self.lock();
            let mut statement = connection
                .prepare_cached(
                    "SELECT key, value, version FROM kv WHERE key >= ?1 AND key > ?2 AND substr(key, 1, length(?1)) = ?1
                     ORDER BY key LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = statement
                .query_map(
                    params![prefix, start_after.unwrap_or(""), limit as i64],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)?
        };
        Ok(rows
            .into_iter()
            .map(|(key, json, version)| (key, Versioned { json, version }))
            .collect())
    }
}

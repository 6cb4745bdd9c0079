//! Operations on the embedded store outside event handling: run snapshots
//! of metrics and health, and online backup and restore.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OptionalExtension, params};

use crate::metrics::MetricsSnapshot;
use crate::resilience::HealthReport;
use crate::sqlite::{SqliteStore, now_ms, unavailable};
use crate::store::StoreError;

/// The stored snapshot of one process's runtime.
#[derive(Debug, Clone)]
pub struct RunSnapshot {
    /// The runtime's id.
    pub run_id: String,
    /// The command that ran it: `run` or `serve`.
    pub command: String,
    /// The process id.
    pub pid: u32,
    /// When the runtime started, Unix milliseconds.
    pub started_ms: i64,
    /// When the snapshot was written, Unix milliseconds.
    pub updated_ms: i64,
    /// When the process stopped running services, Unix milliseconds; `None`
    /// while it runs, or when it was killed.
    pub ended_ms: Option<i64>,
    /// Counters and timers.
    pub metrics: MetricsSnapshot,
    /// Circuits and supervisors.
    pub health: HealthReport,
}

/// Pages copied per backup step, and the pause between steps while another
/// connection holds a lock.
const BACKUP_PAGES: std::ffi::c_int = 1024;
const BACKUP_PAUSE: Duration = Duration::from_millis(20);

fn corrupt(run_id: &str, error: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: format!("run_snapshots/{run_id}"),
        reason: error.to_string(),
    }
}

impl SqliteStore {
    /// Inserts or replaces the snapshot of `snapshot.run_id`.
    pub fn save_run_snapshot(&self, snapshot: &RunSnapshot) -> Result<(), StoreError> {
        let metrics = serde_json::to_string(&snapshot.metrics).expect("metrics serialise");
        let health = serde_json::to_string(&snapshot.health).expect("health serialises");
        self.lock()
            .prepare_cached(
                "INSERT INTO run_snapshots (run_id, command, pid, started_ms, updated_ms, metrics, health, ended_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run_id) DO UPDATE SET updated_ms = excluded.updated_ms, ended_ms = excluded.ended_ms,
                     metrics = excluded.metrics, health = excluded.health",
            )
            .map_err(unavailable)?
            .execute(params![
                snapshot.run_id,
                snapshot.command,
                snapshot.pid,
                snapshot.started_ms,
                now_ms(),
                metrics,
                health,
                snapshot.ended_ms
            ])
            .map_err(unavailable)?;
        Ok(())
    }

    /// Returns every run snapshot, oldest first.
    pub fn run_snapshots(&self) -> Result<Vec<RunSnapshot>, StoreError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT run_id, command, pid, started_ms, updated_ms, metrics, health, ended_ms
                 FROM run_snapshots ORDER BY started_ms, run_id",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(unavailable)?;
        let mut snapshots = Vec::new();
        for row in rows {
            let (run_id, command, pid, started_ms, updated_ms, metrics, health, ended_ms) =
                row.map_err(unavailable)?;
            snapshots.push(RunSnapshot {
                metrics: serde_json::from_str(&metrics).map_err(|e| corrupt(&run_id, e))?,
                health: serde_json::from_str(&health).map_err(|e| corrupt(&run_id, e))?,
                run_id,
                command,
                pid,
                started_ms,
                updated_ms,
                ended_ms,
            });
        }
        Ok(snapshots)
    }

    /// Copies the whole store to a new file at `target` with SQLite's online
    /// backup API. The copy is one consistent state: the backup restarts if
    /// another connection writes meanwhile, and this connection's writers
    /// wait until it ends.
    pub fn backup_to(&self, target: &Path) -> Result<(), StoreError> {
        let failed = |error: rusqlite::Error| {
            StoreError::Unavailable(format!("backup to {} failed: {error}", target.display()))
        };
        let connection = self.lock();
        let mut copy = Connection::open(target).map_err(failed)?;
        Backup::new(&connection, &mut copy)
            .and_then(|backup| backup.run_to_completion(BACKUP_PAGES, BACKUP_PAUSE, None))
            .map_err(failed)
    }

    /// Replaces the whole store with the backup at `source`, after checking
    /// that it is an underwrite store. Queues, state, dead letters and
    /// idempotency records all become those of the backup.
    pub fn restore_from(&self, source: &Path) -> Result<(), StoreError> {
        check_backup(source)?;
        let failed = |error: rusqlite::Error| {
            StoreError::Unavailable(format!("restore from {} failed: {error}", source.display()))
        };
        let backup = Connection::open(source).map_err(failed)?;
        let mut connection = self.lock();
        Backup::new(&backup, &mut connection)
            .and_then(|restore| restore.run_to_completion(BACKUP_PAGES, BACKUP_PAUSE, None))
            .map_err(failed)?;
        drop(connection);
        self.migrate()?;
        Ok(())
    }
}

/// Checks that `source` is an SQLite file with underwrite's `migrations`
/// table, so that a wrong path cannot wipe the store.
fn check_backup(source: &Path) -> Result<(), StoreError> {
    if !source.is_file() {
        return Err(StoreError::Unavailable(format!(
            "backup file {} not found; pass the path written by `underwrite backup`",
            source.display()
        )));
    }
    let invalid = |reason: String| {
        StoreError::Unavailable(format!(
            "{} is not an underwrite backup ({reason}); pass the path written by `underwrite backup`",
            source.display()
        ))
    };
    let connection =
        Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| invalid(e.to_string()))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .map_err(|e| invalid(e.to_string()))?;
    let version: Option<i64> = connection
        .query_row("SELECT max(version) FROM migrations", [], |row| row.get(0))
        .optional()
        .map_err(|e| invalid(e.to_string()))?
        .flatten();
    if version.is_none() {
        return Err(invalid("its migrations table is empty".into()));
    }
    Ok(())
}

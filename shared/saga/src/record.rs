//! The stored state of sagas and their steps, and the queries that read it.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use underwrite_runtime::{SqliteStore, StoreError};

/// A saga's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    Started,
    /// Every step succeeded.
    Completed,
    /// A step failed; the compensations of the steps before it are running
    /// in reverse order.
    Compensating,
    /// Every compensation ran after a step failed.
    RolledBack,
}

impl SagaStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SagaStatus; 4] = [
        SagaStatus::Started,
        SagaStatus::Completed,
        SagaStatus::Compensating,
        SagaStatus::RolledBack,
    ];

    /// Returns the stored name, such as `rolled_back`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Started => "started",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensating => "compensating",
            SagaStatus::RolledBack => "rolled_back",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<SagaStatus> {
        SagaStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Checks whether the saga has finished.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::RolledBack)
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a step row runs a step forward or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A forward step.
    Forward,
    /// A compensation.
    Compensation,
}

impl Phase {
    /// Returns the stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Compensation => "compensation",
        }
    }
}

/// The state of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for a signal from outside before its command can go.
    Waiting,
    /// The command is on the service's queue; no reply yet.
    Sent,
    /// The service replied with success.
    Succeeded,
    /// The service replied with a failure or a decline.
    Failed,
}

impl StepStatus {
    /// Returns the stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StepStatus::Waiting => "waiting",
            StepStatus::Sent => "sent",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
}

/// One stored step run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// `<saga id>/<phase>/<step>`: the step's idempotency key, carried by its
    /// command as the task token.
    pub task_token: String,
    /// Forward step or compensation.
    pub phase: Phase,
    /// The step's name.
    pub step: String,
    /// The queue the command went to.
    pub service: String,
    /// The command's event type.
    pub command_type: String,
    /// The command's event id, once sent.
    pub command_id: Option<String>,
    /// The command event as JSON, once sent.
    #[serde(skip)]
    pub command: Option<String>,
    /// The step's state.
    pub status: StepStatus,
    /// The events the service answered with, as a JSON array.
    #[serde(skip)]
    pub answer: Option<String>,
    /// The failure's code.
    pub error_code: Option<String>,
    /// The failure's message.
    pub error_message: Option<String>,
    /// When the step started, Unix milliseconds.
    pub started_ms: i64,
    /// When it was answered, Unix milliseconds.
    pub answered_ms: Option<i64>,
}

/// One stored saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SagaRecord {
    /// The saga's id: the application id for origination.
    pub saga_id: String,
    /// The definition's name.
    pub definition: String,
    /// Its status.
    pub status: SagaStatus,
    /// The event that started it, as JSON.
    #[serde(skip)]
    pub input: String,
    /// The step whose failure started the compensations.
    pub failed_step: Option<String>,
    /// That failure's code and message.
    pub failure: Option<String>,
    /// When it started, Unix milliseconds.
    pub started_ms: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_ms: i64,
    /// Its step runs, in the order they started.
    pub steps: Vec<StepRecord>,
}

impl SagaRecord {
    /// Finds the forward run of a step.
    pub fn forward(&self, step: &str) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| s.phase == Phase::Forward && s.step == step)
    }

    /// Finds the compensation run of a step.
    pub fn compensation(&self, step: &str) -> Option<&StepRecord> {
        self.steps
            .iter()
            .find(|s| s.phase == Phase::Compensation && s.step == step)
    }

    /// Returns the failure's code, the part before the first `: `.
    pub fn failure_code(&self) -> Option<&str> {
        self.failure
            .as_deref()
            .map(|text| text.split_once(": ").map_or(text, |(code, _)| code))
    }
}

pub(crate) fn corrupt(saga_id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: format!("sagas/{saga_id}"),
        reason: reason.into(),
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn saga_from_row(row: &Row<'_>) -> rusqlite::Result<(SagaRecord, String)> {
    let status: String = row.get(2)?;
    Ok((
        SagaRecord {
            saga_id: row.get(0)?,
            definition: row.get(1)?,
            status: SagaStatus::Started,
            input: row.get(3)?,
            failed_step: row.get(4)?,
            failure: row.get(5)?,
            started_ms: row.get(6)?,
            updated_ms: row.get(7)?,
            steps: Vec::new(),
        },
        status,
    ))
}

const SAGA_COLUMNS: &str =
    "saga_id, definition, status, input, failed_step, failure, started_ms, updated_ms";

fn with_status((mut record, status): (SagaRecord, String)) -> Result<SagaRecord, StoreError> {
    record.status = SagaStatus::parse(&status)
        .ok_or_else(|| corrupt(&record.saga_id, format!("unknown status {status:?}")))?;
    Ok(record)
}

/// Reads one saga with its steps, inside a transaction or not.
pub(crate) fn load(
    connection: &Connection,
    saga_id: &str,
) -> Result<Option<SagaRecord>, StoreError> {
    let row = connection
        .prepare_cached(&format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = ?1"
        ))
        .map_err(unavailable)?
        .query_row([saga_id], saga_from_row)
        .optional()
        .map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let mut record = with_status(row)?;
    let mut statement = connection
        .prepare_cached(
            "SELECT task_token, phase, step, service, command_type, command_id, command, status, answer,
                    error_code, error_message, started_ms, answered_ms
             FROM saga_steps WHERE saga_id = ?1 ORDER BY rowid",
        )
        .map_err(unavailable)?;
    // Phase and status are read as text and checked after the row, so that
    // an unknown value is reported as a corrupt saga rather than a SQL error.
    let rows = statement
        .query_map([saga_id], |row| {
            let step = StepRecord {
                task_token: row.get(0)?,
                phase: Phase::Forward,
                step: row.get(2)?,
                service: row.get(3)?,
                command_type: row.get(4)?,
                command_id: row.get(5)?,
                command: row.get(6)?,
                status: StepStatus::Waiting,
                answer: row.get(8)?,
                error_code: row.get(9)?,
                error_message: row.get(10)?,
                started_ms: row.get(11)?,
                answered_ms: row.get(12)?,
            };
            Ok((step, row.get::<_, String>(1)?, row.get::<_, String>(7)?))
        })
        .map_err(unavailable)?;
    for row in rows {
        let (mut step, phase, status) = row.map_err(unavailable)?;
        step.phase = match phase.as_str() {
            "forward" => Phase::Forward,
            "compensation" => Phase::Compensation,
            other => return Err(corrupt(saga_id, format!("unknown phase {other:?}"))),
        };
        step.status = match status.as_str() {
            "waiting" => StepStatus::Waiting,
            "sent" => StepStatus::Sent,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            other => return Err(corrupt(saga_id, format!("unknown step status {other:?}"))),
        };
        record.steps.push(step);
    }
    Ok(Some(record))
}

/// Reads one saga with its steps.
pub fn load_saga(store: &SqliteStore, saga_id: &str) -> Result<Option<SagaRecord>, StoreError> {
    store.transaction(|tx| load(tx, saga_id))
}

/// Lists sagas without their steps, by id, optionally of one status only.
pub fn list_sagas(
    store: &SqliteStore,
    status: Option<SagaStatus>,
) -> Result<Vec<SagaRecord>, StoreError> {
    store.transaction(|tx| {
        let mut statement = tx
            .prepare_cached(&format!(
                "SELECT {SAGA_COLUMNS} FROM sagas WHERE ?1 IS NULL OR status = ?1 ORDER BY saga_id"
            ))
            .map_err(unavailable)?;
        let rows = statement
            .query_map(params![status.map(SagaStatus::as_str)], saga_from_row)
            .map_err(unavailable)?;
        let mut sagas = Vec::new();
        for row in rows {
            sagas.push(with_status(row.map_err(unavailable)?)?);
        }
        Ok(sagas)
    })
}

/// Lists the ids of sagas that have not finished.
pub(crate) fn active_ids(connection: &Connection) -> Result<Vec<String>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT saga_id FROM sagas WHERE status IN ('started', 'compensating') ORDER BY saga_id",
        )
        .map_err(unavailable)?;
    let rows = statement
        .query_map([], |row| row.get(0))
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// The answer a service gave to a task token.
pub(crate) struct Answer {
    pub failure: Option<(String, String)>,
    pub outputs: String,
}

pub(crate) fn answer(connection: &Connection, token: &str) -> Result<Option<Answer>, StoreError> {
    connection
        .prepare_cached(
            "SELECT outcome, outputs, error_code, error_message FROM saga_answers WHERE task_token = ?1",
        )
        .map_err(unavailable)?
        .query_row([token], |row| {
            let outcome: String = row.get(0)?;
            let failure = if outcome == "failure" {
                Some((
                    row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                ))
            } else {
                None
            };
            Ok(Answer {
                failure,
                outputs: row.get(1)?,
            })
        })
        .optional()
        .map_err(unavailable)
}

pub(crate) fn signal(
    connection: &Connection,
    saga_id: &str,
    event_type: &str,
) -> Result<Option<String>, StoreError> {
    connection
        .prepare_cached("SELECT body FROM saga_signals WHERE saga_id = ?1 AND event_type = ?2")
        .map_err(unavailable)?
        .query_row([saga_id, event_type], |row| row.get(0))
        .optional()
        .map_err(unavailable)
}

/// Converts a SQLite error into the store's unavailable error.
pub(crate) fn sql(error: rusqlite::Error) -> StoreError {
    unavailable(error)
}

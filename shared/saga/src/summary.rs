//! The outcome of the sagas in a store, summed up for a compliance officer:
//! applications, approvals, declines by step and reason, and the documents
//! and loans that followed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use underwrite_runtime::{SqliteStore, StoreError};

use crate::record::{SagaRecord, SagaStatus, list_sagas, sql};

/// Counts of one store's sagas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SagaSummary {
    /// Sagas started: one per application.
    pub applications: u64,
    /// Sagas that completed every step.
    pub completed: u64,
    /// Sagas rolled back, by the failed step and its error code.
    pub declined: BTreeMap<(String, String), u64>,
    /// Sagas still running forward.
    pub started: u64,
    /// Of those, sagas waiting for a signal from outside, such as the
    /// borrower's acceptance.
    pub waiting: u64,
    /// Sagas whose compensations have not all run.
    pub compensating: u64,
    /// Succeeded forward steps, by step name, such as `kfs` (KFS issued).
    pub steps_succeeded: BTreeMap<String, u64>,
    /// Succeeded compensations, by the step they undid.
    pub compensated: BTreeMap<String, u64>,
}

impl SagaSummary {
    /// Returns the number of rolled-back sagas.
    pub fn declined_total(&self) -> u64 {
        self.declined.values().sum()
    }

    /// Returns how many times `step` succeeded.
    pub fn succeeded(&self, step: &str) -> u64 {
        self.steps_succeeded.get(step).copied().unwrap_or(0)
    }
}

/// Sums up the sagas in `store`.
pub fn summarise(store: &SqliteStore) -> Result<SagaSummary, StoreError> {
    let sagas = list_sagas(store, None)?;
    let mut summary = SagaSummary {
        applications: sagas.len() as u64,
        ..SagaSummary::default()
    };
    for saga in &sagas {
        match saga.status {
            SagaStatus::Completed => summary.completed += 1,
            SagaStatus::Started => summary.started += 1,
            SagaStatus::Compensating => summary.compensating += 1,
            SagaStatus::RolledBack => {
                *summary.declined.entry(decline_reason(saga)).or_default() += 1;
            }
        }
    }
    let rows: Vec<(String, String, String, i64)> = store.transaction(|tx| {
        let mut statement = tx
            .prepare_cached(
                "SELECT phase, step, status, COUNT(*) FROM saga_steps
                 WHERE status IN ('succeeded', 'waiting') GROUP BY phase, step, status",
            )
            .map_err(sql)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    })?;
    for (phase, step, status, count) in rows {
        let count = count as u64;
        match (phase.as_str(), status.as_str()) {
            ("forward", "succeeded") => *summary.steps_succeeded.entry(step).or_default() += count,
            ("forward", "waiting") => summary.waiting += count,
            ("compensation", "succeeded") => *summary.compensated.entry(step).or_default() += count,
            _ => {}
        }
    }
    Ok(summary)
}

fn decline_reason(saga: &SagaRecord) -> (String, String) {
    (
        saga.failed_step.clone().unwrap_or_else(|| "unknown".into()),
        saga.failure_code().unwrap_or("unknown").to_string(),
    )
}

/// Renders the summary as aligned lines for people.
pub fn render(summary: &SagaSummary) -> String {
    let mut text = String::new();
    let mut line = |label: &str, count: u64| {
        let _ = writeln!(text, "  {label:<40} {count:>7}");
    };
    line("applications", summary.applications);
    line("approved (every step succeeded)", summary.completed);
    line("declined or rolled back", summary.declined_total());
    for ((step, code), count) in &summary.declined {
        line(&format!("  at {step}: {code}"), *count);
    }
    line("in progress", summary.started);
    line("  waiting for the borrower or a signal", summary.waiting);
    line("compensating (a compensation failed)", summary.compensating);
    line("KFS issued", summary.succeeded("kfs"));
    line(
        "KFS voided",
        summary.compensated.get("kfs").copied().unwrap_or(0),
    );
    line("KFS accepted", summary.succeeded("acceptance"));
    line("loans sanctioned", summary.succeeded("sanction"));
    line("loans disbursed", summary.succeeded("disbursal"));
    text
}

//! Test harness: the embedded runtime with the servicing services over a
//! fresh SQLite file, and builders for input events.

pub mod contract;
pub mod moto;
pub mod origination;
pub mod poller;
pub mod python;

use std::sync::Arc;

use serde_json::json;
use tempfile::TempDir;
use underwrite_audit::{Audit, ENTRY_PREFIX, Entry};
use underwrite_domain::{ClassificationPolicy, ProductCatalog};
use underwrite_events::{Envelope, parse_input_line};
use underwrite_mechanism::Mechanism;
use underwrite_npa::Npa;
use underwrite_runtime::{
    EmbeddedRuntime, Progress, QueueSettings, RunOptions, Service, SqliteStore, Store,
};

/// A runtime over a SQLite file in its own temporary folder.
pub struct Harness {
    /// The folder holding the store; removed on drop.
    pub dir: TempDir,
    /// The runtime.
    pub runtime: EmbeddedRuntime,
}

/// Queue settings for tests: retries become visible after 20 ms and a
/// record is dead-lettered on its third failed receive.
pub fn fast_settings() -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: 20,
        max_receive_count: 3,
        batch_size: 10,
    }
}

impl Harness {
    /// Creates a harness running mechanism, npa and audit.
    pub fn new() -> Self {
        Harness::with_services(vec![
            Arc::new(Mechanism::new(ProductCatalog::default())),
            Arc::new(Npa::new(
                ClassificationPolicy::default(),
                ProductCatalog::default(),
            )),
            Arc::new(Audit),
        ])
    }

    /// Creates a harness running `services` over a fresh SQLite file.
    pub fn with_services(services: Vec<Arc<dyn Service>>) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let store =
            Arc::new(SqliteStore::open(dir.path().join("underwrite.db")).expect("store opens"));
        let runtime = EmbeddedRuntime::new(store, services, fast_settings());
        Harness { dir, runtime }
    }

    /// The store.
    pub fn store(&self) -> &SqliteStore {
        self.runtime.store()
    }

    /// Parses input lines and publishes them.
    pub fn publish(&self, lines: &[String]) {
        let events: Vec<Envelope> = lines
            .iter()
            .map(|line| parse_input_line(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect();
        self.runtime.publish(&events).expect("publish");
    }

    /// Runs every service until the queues are empty.
    pub async fn run(&self) -> Progress {
        self.runtime
            .run(&RunOptions::default(), &mut |_| {})
            .await
            .expect("run")
    }

    /// Reads every event recorded in the audit ledger, in order.
    pub async fn audited(&self) -> Vec<Envelope> {
        let store: &dyn Store = self.store();
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .scan(ENTRY_PREFIX, after.as_deref(), 1000)
                .await
                .expect("scan");
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, read) in page {
                let entry: Entry = read.parse(&key).expect("entry");
                events.push(entry.event);
            }
        }
        events
    }

    /// Events the npa service emitted, in order, as (type, payload).
    pub async fn npa_events(&self) -> Vec<(String, serde_json::Value)> {
        self.audited()
            .await
            .into_iter()
            .filter(|e| e.source == "npa")
            .map(|e| (e.event_type, e.payload))
            .collect()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// Builds a `loan.disbursed` input line.
pub fn disbursal(
    loan: &str,
    borrower: &str,
    principal: &str,
    rate: &str,
    tenor: u32,
    disbursed_on: &str,
    first_due: &str,
) -> String {
    json!({
        "id": format!("disb-{loan}"),
        "type": "loan.disbursed",
        "occurred_at": format!("{disbursed_on}T10:00:00+05:30"),
        "payload": {
            "loan_id": loan, "borrower_id": borrower, "product": "personal",
            "principal": principal, "annual_rate": rate, "tenor_months": tenor,
            "disbursed_on": disbursed_on, "first_due_date": first_due,
        }
    })
    .to_string()
}

/// Builds a `repayment.received` input line received on `received_on`.
pub fn repayment(
    payment: &str,
    loan: &str,
    amount: &str,
    value_date: &str,
    received_on: &str,
) -> String {
    json!({
        "id": format!("pay-{payment}"),
        "type": "repayment.received",
        "occurred_at": format!("{received_on}T12:00:00+05:30"),
        "payload": { "loan_id": loan, "payment_id": payment, "amount": amount, "value_date": value_date }
    })
    .to_string()
}

/// Builds a `repayment.reversed` input line.
pub fn reversal(payment: &str, loan: &str, reversed_on: &str) -> String {
    json!({
        "id": format!("rev-{payment}"),
        "type": "repayment.reversed",
        "occurred_at": format!("{reversed_on}T15:00:00+05:30"),
        "payload": { "loan_id": loan, "payment_id": payment, "reversed_on": reversed_on }
    })
    .to_string()
}

/// `day.closed` input lines for every date from `from` to `to` inclusive.
pub fn days_closed(from: &str, to: &str) -> Vec<String> {
    let mut day: underwrite_domain::BusinessDate = from.parse().expect("date");
    let last: underwrite_domain::BusinessDate = to.parse().expect("date");
    let mut lines = Vec::new();
    while day <= last {
        lines.push(
            json!({
                "id": format!("close-{day}"),
                "type": "day.closed",
                "occurred_at": format!("{day}T23:59:00+05:30"),
                "payload": { "business_date": day.to_string() }
            })
            .to_string(),
        );
        day = day.succ();
    }
    lines
}

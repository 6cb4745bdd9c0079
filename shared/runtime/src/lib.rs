//! The contracts every service runs under, and the embedded runtime that runs
//! them on one machine with one SQLite file.
//!
//! A service declares its name and the event types it subscribes to, and
//! handles one event at a time, returning the state writes and events that
//! follow from it or an error classified retryable or permanent. The driver
//! commits the writes, the idempotency record and the outputs together, so a
//! redelivered event applies nothing twice.

#![warn(missing_docs)]

pub mod clock;
pub mod driver;
#[cfg(test)]
mod driver_store_breaker;
pub mod metrics;
pub mod ports;
pub mod queue;
pub mod record;
pub mod resilience;
pub mod service;
pub mod sqlite;
pub mod sqlite_ops;
pub mod sqlite_ports;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use driver::{EmbeddedRuntime, Progress, RunError, RunOptions};
pub use metrics::{Counter, Metrics, MetricsSnapshot};
pub use queue::{DeadLetter, QueueSettings};
pub use resilience::{
    BreakerSettings, BreakerSettingsStore, CircuitState, HealthReport, RecoverySettings,
    ResilienceSettings, SupervisorState,
};
pub use service::{Context, HandlerError, Outcome, Service};
pub use sqlite::SqliteStore;
pub use sqlite_ops::RunSnapshot;
pub use sqlite_ports::SqliteBus;
pub use store::{Expected, StateWrite, Store, StoreError, Versioned};

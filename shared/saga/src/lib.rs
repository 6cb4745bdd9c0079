//! Sagas, defined once as data in Rust (the steps, each step's command to
//! its service's queue, the answers that mean success or failure, and each
//! step's compensation), and the two executors of a definition: the
//! embedded runner over the SQLite store, and the Amazon States Language
//! document for Step Functions generated from it, with a lint that checks
//! what cfn-lint does not look at inside a state machine.

#![warn(missing_docs)]

pub mod asl;
pub mod definition;
pub mod lint;
pub mod record;
pub mod runner;
pub mod steps;
pub mod summary;
pub mod worker;

pub use definition::{Compensation, SagaDefinition, Source, Step, origination};
pub use record::{Phase, SagaRecord, SagaStatus, StepRecord, StepStatus, list_sagas, load_saga};
pub use runner::{SagaError, SagaRunner, StatusCounts, replay_saga, status_counts};
pub use summary::{SagaSummary, summarise};

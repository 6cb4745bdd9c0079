//! The Lambda driver. A function's `main` builds its configuration and
//! clients once per cold start, then hands a [`RecordProcessor`] to [`run`],
//! which returns, for each SQS batch from Lambda's runtime API, the ids of
//! the records to retry (`ReportBatchItemFailures`).
//!
//! The driver applies the embedded driver's rules: each record is parsed and
//! processed on its own under `catch_unwind`; a permanent failure goes to
//! the dead-letter queue at once and is not reported, so SQS deletes it; a
//! retryable one is reported, so SQS redelivers it and counts the receive;
//! near the deadline no new record is started.

#![warn(missing_docs)]

pub mod batch;
pub mod function;
pub mod routes;
pub mod saga_task;
pub mod start;

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;
use underwrite_telemetry::emf::{self, Metric, Unit};

pub use batch::{
    BatchError, BatchSettings, BatchSummary, Disposition, Record, RecordProcessor, handle_batch,
};
pub use function::Function;
pub use lambda_runtime::Error;
pub use start::serve;

/// CloudWatch namespace of the metrics each batch reports.
pub const METRICS_NAMESPACE: &str = "underwrite";

/// Serves Lambda's runtime API until the process is stopped: each
/// invocation's SQS batch goes through `processor`.
pub async fn run(
    service: &'static str,
    processor: Arc<dyn RecordProcessor>,
    settings: BatchSettings,
) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let processor = processor.clone();
        async move {
            let started = std::time::Instant::now();
            let (response, summary) = handle_batch(processor.as_ref(), &settings, event).await?;
            write_metrics(service, &summary, started.elapsed());
            Ok::<_, lambda_runtime::Error>(response)
        }
    }))
    .await
}

/// Writes one CloudWatch embedded metric format line per batch on stdout,
/// where Lambda's log capture hands it to CloudWatch as metrics. Names follow
/// the embedded runtime's counters.
fn write_metrics(service: &str, summary: &BatchSummary, elapsed: std::time::Duration) {
    let metrics = [
        Metric::new("events.handled", Unit::Count, f64::from(summary.handled)),
        Metric::new(
            "events.dead_lettered",
            Unit::Count,
            f64::from(summary.dead_lettered),
        ),
        Metric::new("events.failed", Unit::Count, f64::from(summary.retried)),
        Metric::new("batch.unstarted", Unit::Count, f64::from(summary.unstarted)),
        Metric::new(
            "batch.duration",
            Unit::Milliseconds,
            elapsed.as_secs_f64() * 1000.0,
        ),
    ];
    match emf::document(
        METRICS_NAMESPACE,
        &[("service", service)],
        &metrics,
        batch::now_ms(),
    ) {
        Ok(document) => {
            use std::io::Write as _;
            // A failed write to stdout loses one metrics line; the batch's
            // answer does not depend on it.
            let _ = writeln!(std::io::stdout().lock(), "{document}");
        }
        Err(error) => tracing::warn!(%error, "Failed to build the batch's metrics line."),
    }
}

//! The store circuit breaker in the run loop, with a store made to fail by
//! switching its connection to read-only.

use std::sync::Arc;

use async_trait::async_trait;
use underwrite_events::{Envelope, parse_input_line};

use crate::clock::ManualClock;
use crate::driver::{EmbeddedRuntime, RunError, RunOptions};
use crate::queue::QueueSettings;
use crate::resilience::CircuitState;
use crate::service::{Context, HandlerError, Outcome, Service};
use crate::sqlite::SqliteStore;

struct Accept;

#[async_trait]
impl Service for Accept {
    fn name(&self) -> &'static str {
        "accept"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["day.closed"]
    }

    async fn handle(&self, _: &Envelope, _: &Context<'_>) -> Result<Outcome, HandlerError> {
        Ok(Outcome::default())
    }
}

fn day_closed(id: &str) -> Envelope {
    let line = format!(
        r#"{{"id":"{id}","type":"day.closed","occurred_at":"2024-03-01T23:00:00+05:30","payload":{{"business_date":"2024-03-01"}}}}"#
    );
    parse_input_line(&line).unwrap()
}

fn set_read_only(store: &SqliteStore, read_only: bool) {
    let pragma = if read_only {
        "PRAGMA query_only = ON"
    } else {
        "PRAGMA query_only = OFF"
    };
    store.lock().execute_batch(pragma).unwrap();
}

#[tokio::test]
async fn store_circuit_opens_at_third_failure_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let clock = ManualClock::new(5_000_000);
    let runtime = EmbeddedRuntime::new(
        store.clone(),
        vec![Arc::new(Accept)],
        QueueSettings::default(),
    )
    .with_clock(clock.clone());
    runtime
        .publish(&[day_closed("d1"), day_closed("d2")])
        .unwrap();
    set_read_only(&store, true);

    // Until idle, a run stops with the store error once the circuit opens:
    // after the third consecutive failed batch, not before.
    let result = runtime.run(&RunOptions::default(), &mut |_| {}).await;
    assert!(matches!(result, Err(RunError::Store(_))), "{result:?}");
    let report = runtime.health_report();
    assert_eq!(report.store_circuit.state, CircuitState::Open);
    assert_eq!(report.store_circuit.consecutive_failures, 3);
    assert_eq!(report.store_circuit.open_until_ms, Some(5_000_000 + 30_000));
    assert!(!report.is_healthy());
    let io_errors = runtime.metrics().snapshot().counter("store.io_error");
    assert!(io_errors >= 3, "{io_errors} store errors counted");

    // The store recovers, but no batch starts before the recovery timeout.
    set_read_only(&store, false);
    clock.advance_ms(29_999);
    let options = RunOptions {
        until_idle: false,
        poll_interval: std::time::Duration::from_millis(5),
        ..RunOptions::default()
    };
    let stop = options.stop.clone();
    let stopper = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let mut progress = |_: &crate::driver::Progress| {};
    let (result, ()) = tokio::join!(runtime.run(&options, &mut progress), stopper);
    assert_eq!(
        result.unwrap().handled,
        0,
        "the open circuit starts no batch"
    );
    assert_eq!(runtime.store().queue_depth("accept").unwrap().0, 2);

    // After it, one probe batch runs, succeeds and closes the circuit.
    clock.advance_ms(1);
    let totals = runtime
        .run(&RunOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(totals.handled, 2);
    assert_eq!(
        runtime.health_report().store_circuit.state,
        CircuitState::Closed
    );
}

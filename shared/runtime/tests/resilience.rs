//! Circuit breakers, supervisor backoff and metrics of the embedded runtime,
//! with a manual clock over a real SQLite file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use serde_json::json;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_runtime::{
    CircuitState, Context, EmbeddedRuntime, HandlerError, ManualClock, Outcome, QueueSettings,
    RecoverySettings, ResilienceSettings, RunOptions, Service, SqliteStore, StateWrite,
    SupervisorState,
};

/// A handler that fails on request: `retryable` and `panic` while `failing`
/// is set, an authz error for payment ids starting with `forged`, and
/// success otherwise.
struct Flaky {
    failing: AtomicBool,
    panics: bool,
    calls: AtomicU32,
}

#[async_trait]
impl Service for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["repayment.received"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        _context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let payment = event.payload["payment_id"].as_str().unwrap().to_string();
        if payment.starts_with("forged") {
            return Err(HandlerError::permanent(
                "authz_bad_signature",
                "signature does not verify",
            ));
        }
        if self.failing.load(Ordering::SeqCst) {
            if self.panics {
                panic!("flaky panicked on purpose");
            }
            return Err(HandlerError::retryable(
                "downstream_unavailable",
                "downstream briefly unavailable",
            ));
        }
        Ok(Outcome {
            writes: vec![StateWrite::put(
                format!("flaky/{payment}"),
                &json!(true),
                &None,
            )],
            emits: vec![],
        })
    }
}

fn payment(id: &str) -> Envelope {
    let line = json!({"id": format!("event-{id}"), "type": "repayment.received", "occurred_at": "2024-03-01T12:00:00+05:30",
        "payload": {"loan_id": "L1", "payment_id": id, "amount": "1.00", "value_date": "2024-03-01"}});
    parse_input_line(&line.to_string()).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    service: Arc<Flaky>,
    clock: Arc<ManualClock>,
    runtime: EmbeddedRuntime,
}

fn setup(panics: bool, recovery: RecoverySettings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
    let service = Arc::new(Flaky {
        failing: AtomicBool::new(true),
        panics,
        calls: AtomicU32::new(0),
    });
    let settings = QueueSettings {
        visibility_timeout_ms: 0,
        max_receive_count: 100,
        batch_size: 10,
    };
    let clock = ManualClock::new(1_000_000);
    let runtime = EmbeddedRuntime::new(store, vec![service.clone()], settings)
        .with_clock(clock.clone())
        .with_resilience(ResilienceSettings {
            recovery,
            ..ResilienceSettings::default()
        });
    Setup {
        _dir: dir,
        service,
        clock,
        runtime,
    }
}

async fn run_until_idle(runtime: &EmbeddedRuntime) {
    runtime
        .run(&RunOptions::default(), &mut |_| {})
        .await
        .unwrap();
}

fn circuit_open_letters(runtime: &EmbeddedRuntime) -> usize {
    runtime
        .store()
        .dead_letters(None)
        .unwrap()
        .iter()
        .filter(|l| l.error_code == "circuit_open" && l.error_message.starts_with("circuit open"))
        .count()
}

#[tokio::test]
async fn subscriber_circuit_opens_at_fifth_failure() {
    let setup = setup(false, RecoverySettings::default());
    let runtime = &setup.runtime;
    let ids: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    let events: Vec<Envelope> = ids.iter().map(|id| payment(id)).collect();
    runtime.publish(&events[..4]).unwrap();
    // Four failures: the first pass fails each of the four once, and the
    // stop flag ends the run before a retry.
    let options = RunOptions {
        until_idle: false,
        ..RunOptions::default()
    };
    let stop = options.stop.clone();
    runtime
        .process_batch(runtime.services()[0].as_ref(), &mut Default::default())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(setup.service.calls.load(Ordering::SeqCst), 4);
    let report = runtime.health_report();
    assert_eq!(
        report.services[0].circuit.state,
        CircuitState::Closed,
        "4 failures keep it closed"
    );
    assert_eq!(report.services[0].circuit.consecutive_failures, 4);

    runtime.publish(&events[4..]).unwrap();
    run_until_idle(runtime).await;
    assert_eq!(
        setup.service.calls.load(Ordering::SeqCst),
        5,
        "the 5th failure opens the circuit and no further call is made"
    );
    let report = runtime.health_report();
    assert_eq!(report.services[0].circuit.state, CircuitState::Open);
    assert_eq!(
        report.services[0].circuit.open_until_ms,
        Some(1_000_000 + 60_000)
    );
    assert_eq!(
        circuit_open_letters(runtime),
        7,
        "every event went to the DLQ while open"
    );
    assert!(!report.is_healthy());
    let metrics = runtime.metrics().snapshot();
    assert_eq!(metrics.counter("events.failed"), 5 + 7);
    assert_eq!(metrics.counter("events.handled"), 0);
}

#[tokio::test]
async fn open_circuit_probes_after_sixty_seconds() {
    let setup = setup(false, RecoverySettings::default());
    let runtime = &setup.runtime;
    runtime
        .publish(
            &(0..5)
                .map(|i| payment(&format!("p{i}")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    run_until_idle(runtime).await;
    assert_eq!(
        runtime.health_report().services[0].circuit.state,
        CircuitState::Open
    );

    setup.service.failing.store(false, Ordering::SeqCst);
    setup.clock.advance_ms(59_999);
    runtime.store().replay_dead_letters(None, Some(1)).unwrap();
    run_until_idle(runtime).await;
    assert_eq!(
        circuit_open_letters(runtime),
        5,
        "still open 1 ms before 60 s"
    );

    setup.clock.advance_ms(1);
    runtime.store().replay_dead_letters(None, None).unwrap();
    run_until_idle(runtime).await;
    let report = runtime.health_report();
    assert_eq!(
        report.services[0].circuit.state,
        CircuitState::Closed,
        "the probe succeeded"
    );
    assert_eq!(circuit_open_letters(runtime), 0);
    assert_eq!(runtime.metrics().snapshot().counter("events.handled"), 5);
}

#[tokio::test]
async fn failed_probe_reopens_circuit() {
    let setup = setup(false, RecoverySettings::default());
    let runtime = &setup.runtime;
    runtime
        .publish(
            &(0..5)
                .map(|i| payment(&format!("p{i}")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    run_until_idle(runtime).await;
    let calls = setup.service.calls.load(Ordering::SeqCst);
    setup.clock.advance_ms(60_000);
    runtime.store().replay_dead_letters(None, None).unwrap();
    run_until_idle(runtime).await;
    assert_eq!(
        setup.service.calls.load(Ordering::SeqCst),
        calls + 1,
        "one probe is let through"
    );
    let report = runtime.health_report();
    assert_eq!(report.services[0].circuit.state, CircuitState::Open);
    assert_eq!(
        report.services[0].circuit.open_until_ms,
        Some(1_060_000 + 60_000)
    );
}

#[tokio::test]
async fn authz_errors_counted_and_leave_circuit_closed() {
    let setup = setup(false, RecoverySettings::default());
    setup.service.failing.store(false, Ordering::SeqCst);
    let runtime = &setup.runtime;
    runtime
        .publish(
            &(0..6)
                .map(|i| payment(&format!("forged{i}")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    run_until_idle(runtime).await;
    let metrics = runtime.metrics().snapshot();
    assert_eq!(metrics.counter("authz.failures"), 6);
    assert_eq!(metrics.counter("events.failed"), 6);
    let report = runtime.health_report();
    assert_eq!(
        report.services[0].circuit.state,
        CircuitState::Closed,
        "permanent errors describe the event"
    );
    let letters = runtime.store().dead_letters(None).unwrap();
    assert!(
        letters
            .iter()
            .all(|l| l.error_code == "authz_bad_signature")
    );
}

#[tokio::test]
async fn handled_events_timed_per_type() {
    let setup = setup(false, RecoverySettings::default());
    setup.service.failing.store(false, Ordering::SeqCst);
    let runtime = &setup.runtime;
    runtime.publish(&[payment("a"), payment("b")]).unwrap();
    run_until_idle(runtime).await;
    let metrics = runtime.metrics().snapshot();
    assert_eq!(metrics.counter("events.handled"), 2);
    assert_eq!(metrics.timers.len(), 1);
    assert_eq!(metrics.timers[0].service, "flaky");
    assert_eq!(metrics.timers[0].event_type, "repayment.received");
    assert_eq!(metrics.timers[0].count, 2);
    assert!(metrics.timers[0].min_us <= metrics.timers[0].max_us);
}

fn recovery(max_restarts: u32, auto_restart: bool) -> RecoverySettings {
    RecoverySettings {
        backoff_seconds: 1.0,
        max_restarts,
        auto_restart,
    }
}

#[tokio::test]
async fn panic_backs_off_supervisor() {
    let setup = setup(true, recovery(3, true));
    let runtime = &setup.runtime;
    let service = runtime.services()[0].clone();
    runtime.publish(&[payment("a")]).unwrap();
    runtime
        .process_batch(service.as_ref(), &mut Default::default())
        .await
        .unwrap();
    let supervisor = &runtime.health_report().services[0].supervisor;
    assert_eq!(supervisor.state, SupervisorState::BackingOff);
    assert_eq!(
        supervisor.resume_at_ms,
        Some(1_001_000),
        "1 s after the first panic"
    );

    setup.clock.advance_ms(1_000);
    runtime
        .process_batch(service.as_ref(), &mut Default::default())
        .await
        .unwrap();
    let supervisor = &runtime.health_report().services[0].supervisor;
    assert_eq!(
        supervisor.resume_at_ms,
        Some(1_001_000 + 2_000),
        "2 s after the second"
    );
    assert_eq!(supervisor.state, SupervisorState::BackingOff);

    setup.clock.advance_ms(2_000);
    runtime
        .process_batch(service.as_ref(), &mut Default::default())
        .await
        .unwrap();
    let supervisor = &runtime.health_report().services[0].supervisor;
    assert_eq!(supervisor.consecutive_failures, 3);
    assert_eq!(
        supervisor.state,
        SupervisorState::Unhealthy,
        "unhealthy at max_restarts"
    );

    setup.service.failing.store(false, Ordering::SeqCst);
    setup.clock.advance_ms(4_000);
    runtime
        .process_batch(service.as_ref(), &mut Default::default())
        .await
        .unwrap();
    let supervisor = &runtime.health_report().services[0].supervisor;
    assert_eq!(
        supervisor.state,
        SupervisorState::Running,
        "a success resets it"
    );
    assert_eq!(supervisor.consecutive_failures, 0);
}

#[tokio::test]
async fn run_waits_out_backoff() {
    let setup = setup(true, recovery(5, true));
    let runtime = &setup.runtime;
    runtime.publish(&[payment("a")]).unwrap();
    let options = RunOptions {
        until_idle: false,
        poll_interval: std::time::Duration::from_millis(5),
        ..RunOptions::default()
    };
    let stop = options.stop.clone();
    let mut progress = |_: &underwrite_runtime::Progress| {};
    let run = runtime.run(&options, &mut progress);
    let stopper = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (result, ()) = tokio::join!(run, stopper);
    result.unwrap();
    assert_eq!(
        setup.service.calls.load(Ordering::SeqCst),
        1,
        "no retry before the clock passes the backoff"
    );
}

#[tokio::test]
async fn stopped_service_not_restarted() {
    let setup = setup(true, recovery(1, false));
    let runtime = &setup.runtime;
    runtime.publish(&[payment("a")]).unwrap();
    run_until_idle(runtime).await;
    assert_eq!(setup.service.calls.load(Ordering::SeqCst), 1);
    setup.clock.advance_ms(120_000);
    run_until_idle(runtime).await;
    assert_eq!(
        setup.service.calls.load(Ordering::SeqCst),
        1,
        "auto-restart off: the stopped service is not run again"
    );
    let report = runtime.health_report();
    assert_eq!(
        report.services[0].supervisor.state,
        SupervisorState::Stopped
    );
    assert_eq!(
        runtime.store().queue_depth("flaky").unwrap(),
        (1, 0),
        "its event stays queued"
    );
}

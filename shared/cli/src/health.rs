//! Health checks and metrics reports shared by `underwrite health`,
//! `underwrite metrics` and the endpoints of `underwrite serve`.

use std::fmt::Write as _;

use serde::Serialize;
use underwrite_runtime::resilience::{CircuitReport, ServiceReport};
use underwrite_runtime::{
    CircuitState, HealthReport, MetricsSnapshot, RunSnapshot, SqliteStore, SupervisorState,
};

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Working.
    Ok,
    /// Working, with something to look at: dead letters, a backoff, a
    /// half-open circuit.
    Warning,
    /// Not working.
    Failed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "WARNING",
            Status::Failed => "FAILED",
        }
    }
}

/// One line of a health report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `bus`, `store`, `service` or `supervisor`.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
}

/// Every check and the overall status, the worst of them.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// The worst status of the checks.
    pub status: Status,
    /// The checks, in print order.
    pub checks: Vec<Check>,
    /// Circuits and supervisors the checks were made from, if any process
    /// has run services.
    pub runtime: Option<HealthReport>,
}

fn circuit_text(circuit: &CircuitReport) -> String {
    match circuit.state {
        CircuitState::Closed => "circuit closed".into(),
        CircuitState::HalfOpen => "circuit half-open (probing)".into(),
        CircuitState::Open => format!(
            "circuit OPEN after {} consecutive failures until {}",
            circuit.consecutive_failures,
            circuit.open_until_ms.map(format_ms).unwrap_or_default()
        ),
    }
}

/// Formats Unix milliseconds as an RFC 3339 UTC time.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn service_check(service: &ServiceReport, queued: u64, in_flight: u64) -> Check {
    let supervisor = &service.supervisor;
    let (status, state) = match supervisor.state {
        SupervisorState::Running => (Status::Ok, "running".to_string()),
        SupervisorState::BackingOff => (
            Status::Warning,
            format!(
                "backing off after {} consecutive panics until {}",
                supervisor.consecutive_failures,
                supervisor.resume_at_ms.map(format_ms).unwrap_or_default()
            ),
        ),
        SupervisorState::Unhealthy => (
            Status::Failed,
            format!(
                "UNHEALTHY after {} consecutive panics, restarted after each backoff",
                supervisor.consecutive_failures
            ),
        ),
        SupervisorState::Stopped => (
            Status::Failed,
            format!(
                "STOPPED after {} consecutive panics; auto-restart is off",
                supervisor.consecutive_failures
            ),
        ),
    };
    let circuit_status = match service.circuit.state {
        CircuitState::Closed => Status::Ok,
        CircuitState::HalfOpen => Status::Warning,
        CircuitState::Open => Status::Failed,
    };
    Check {
        name: "service".into(),
        status: status.max(circuit_status),
        detail: format!(
            "{}: {state}, {}, {queued} queued, {in_flight} in flight",
            service.name,
            circuit_text(&service.circuit)
        ),
    }
}

/// Runs the checks against `store`. `runtime` is the live report of this
/// process, or the last one a process stored, with where it came from.
pub fn collect(
    store: &SqliteStore,
    services: &[&'static str],
    runtime: Option<(HealthReport, String)>,
) -> Checks {
    let mut checks = Vec::new();

    let mut depths = Vec::new();
    let mut bus_error = None;
    for service in services {
        match store.queue_depth(service) {
            Ok(depth) => depths.push(depth),
            Err(error) => {
                bus_error = Some(error.to_string());
                depths.push((0, 0));
            }
        }
    }
    let dead = store.dead_letter_count();
    let queued: u64 = depths.iter().map(|d| d.0).sum();
    let in_flight: u64 = depths.iter().map(|d| d.1).sum();
    checks.push(match (bus_error, dead) {
        (Some(error), _) | (None, Err(underwrite_runtime::StoreError::Unavailable(error))) => {
            Check {
                name: "bus".into(),
                status: Status::Failed,
                detail: format!("queues unreadable: {error}"),
            }
        }
        (None, Err(error)) => Check {
            name: "bus".into(),
            status: Status::Failed,
            detail: format!("dead-letter queue unreadable: {error}"),
        },
        (None, Ok(dead)) => Check {
            name: "bus".into(),
            status: if dead == 0 {
                Status::Ok
            } else {
                Status::Warning
            },
            detail: format!(
                "{} queues: {queued} queued, {in_flight} in flight; {dead} dead letters{}",
                services.len(),
                if dead == 0 {
                    ""
                } else {
                    " (list them with `underwrite dlq`)"
                }
            ),
        },
    });

    let ping = store.ping();
    let schema = store
        .applied_migrations()
        .ok()
        .and_then(|v| v.last().copied())
        .unwrap_or(0);
    let (circuit_status, circuit) = match &runtime {
        Some((report, _)) => (
            match report.store_circuit.state {
                CircuitState::Closed => Status::Ok,
                CircuitState::HalfOpen => Status::Warning,
                CircuitState::Open => Status::Failed,
            },
            circuit_text(&report.store_circuit),
        ),
        None => (Status::Ok, "circuit closed".to_string()),
    };
    checks.push(match ping {
        Ok(()) => Check {
            name: "store".into(),
            status: circuit_status,
            detail: format!(
                "{} (schema version {schema}), {circuit}",
                store.path().display()
            ),
        },
        Err(error) => Check {
            name: "store".into(),
            status: Status::Failed,
            detail: format!("{}: {error}, {circuit}", store.path().display()),
        },
    });

    match &runtime {
        Some((report, source)) => {
            for service in &report.services {
                let (queued, in_flight) = services
                    .iter()
                    .position(|s| *s == service.name)
                    .map(|i| depths[i])
                    .unwrap_or((0, 0));
                checks.push(service_check(service, queued, in_flight));
            }
            let count = |state: SupervisorState| {
                report
                    .services
                    .iter()
                    .filter(|s| s.supervisor.state == state)
                    .count()
            };
            let (running, backing_off, unhealthy, stopped) = (
                count(SupervisorState::Running),
                count(SupervisorState::BackingOff),
                count(SupervisorState::Unhealthy),
                count(SupervisorState::Stopped),
            );
            let status = if unhealthy + stopped > 0 {
                Status::Failed
            } else if backing_off > 0 {
                Status::Warning
            } else {
                Status::Ok
            };
            checks.push(Check {
                name: "supervisor".into(),
                status,
                detail: format!(
                    "{running} running, {backing_off} backing off, {unhealthy} unhealthy, {stopped} stopped ({source})"
                ),
            });
        }
        None => {
            for (service, (queued, in_flight)) in services.iter().zip(&depths) {
                checks.push(Check {
                    name: "service".into(),
                    status: Status::Ok,
                    detail: format!(
                        "{service}: not running, {queued} queued, {in_flight} in flight"
                    ),
                });
            }
            checks.push(Check {
                name: "supervisor".into(),
                status: Status::Ok,
                detail: "no process has run services on this store yet".into(),
            });
        }
    }

    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    Checks {
        status,
        checks,
        runtime: runtime.map(|(report, _)| report),
    }
}

/// Returns the most recently updated run snapshot, with a description of it.
pub fn latest_run(snapshots: &[RunSnapshot]) -> Option<(HealthReport, String)> {
    snapshots.iter().max_by_key(|s| s.updated_ms).map(|s| {
        (
            s.health.clone(),
            format!(
                "as of {} from `underwrite {}` pid {}",
                format_ms(s.updated_ms),
                s.command,
                s.pid
            ),
        )
    })
}

/// Renders the checks as aligned lines and a summary line.
pub fn render_checks(checks: &Checks) -> String {
    let mut text = String::new();
    for check in &checks.checks {
        let _ = writeln!(
            text,
            "{:<11} {:<8} {}",
            check.name,
            check.status.label(),
            check.detail
        );
    }
    let count = |status: Status| checks.checks.iter().filter(|c| c.status == status).count();
    let _ = writeln!(
        text,
        "summary: {} ({} ok, {} warnings, {} failed)",
        checks.status.label(),
        count(Status::Ok),
        count(Status::Warning),
        count(Status::Failed)
    );
    text
}

/// Renders counters and timers as aligned tables and a summary line.
pub fn render_metrics(metrics: &MetricsSnapshot, runs: usize) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{:<28} {:>12}", "counter", "value");
    for (name, value) in &metrics.counters {
        let _ = writeln!(text, "{name:<28} {value:>12}");
    }
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "{:<28} {:<24} {:>10} {:>10} {:>10} {:>10}",
        "handle.duration", "event type", "count", "avg ms", "min ms", "max ms"
    );
    for timer in &metrics.timers {
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let _ = writeln!(
            text,
            "{:<28} {:<24} {:>10} {:>10} {:>10} {:>10}",
            timer.service,
            timer.event_type,
            timer.count,
            ms(timer.avg_us()),
            ms(timer.min_us),
            ms(timer.max_us)
        );
    }
    let _ = writeln!(
        text,
        "summary: {} handled, {} failed, {} emitted, {} authz failures, {} store I/O errors over {runs} recorded runs",
        metrics.counter("events.handled"),
        metrics.counter("events.failed"),
        metrics.counter("events.emitted"),
        metrics.counter("authz.failures"),
        metrics.counter("store.io_error"),
    );
    text
}

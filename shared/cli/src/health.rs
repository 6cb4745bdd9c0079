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
    /// The finding, such as queue depths or a circuit's state.
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

/// Circuits and supervisors, where they come from, and whether the process
/// that reported them still reports.
pub struct RuntimeView {
    /// The report.
    pub report: HealthReport,
    /// The process that stored the report, and when.
    pub source: String,
    /// False when the report is older than three snapshot intervals: its
    /// process has stopped or hangs, so its failures are shown as warnings.
    pub live: bool,
}

/// Snapshots older than this are reported as stale, in milliseconds: three
/// times the 5 s interval at which a running process stores one.
const STALE_AFTER_MS: i64 = 15_000;

/// Runs the checks against `store`. `runtime` is the live report of this
/// process, or the last one a process stored.
pub fn collect(
    store: &SqliteStore,
    services: &[&'static str],
    runtime: Option<RuntimeView>,
) -> Checks {
    let mut checks = Vec::new();
    let live = runtime.as_ref().is_none_or(|view| view.live);
    let cap = |status: Status| {
        if live {
            status
        } else {
            status.min(Status::Warning)
        }
    };

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
        Some(view) => (
            cap(match view.report.store_circuit.state {
                CircuitState::Closed => Status::Ok,
                CircuitState::HalfOpen => Status::Warning,
                CircuitState::Open => Status::Failed,
            }),
            circuit_text(&view.report.store_circuit),
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
        Some(view) => {
            let (report, source) = (&view.report, &view.source);
            for service in &report.services {
                let (queued, in_flight) = services
                    .iter()
                    .position(|s| *s == service.name)
                    .map(|i| depths[i])
                    .unwrap_or((0, 0));
                let mut check = service_check(service, queued, in_flight);
                check.status = cap(check.status);
                checks.push(check);
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
                status: cap(status),
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
        runtime: runtime.map(|view| view.report),
    }
}

/// Returns the most recently updated run snapshot as of `now_ms`.
pub fn latest_run(snapshots: &[RunSnapshot], now_ms: i64) -> Option<RuntimeView> {
    snapshots.iter().max_by_key(|s| s.updated_ms).map(|s| {
        let live = s.ended_ms.is_none() && now_ms - s.updated_ms <= STALE_AFTER_MS;
        let when = match s.ended_ms {
            Some(ended) => format!("last state, stopped at {}", format_ms(ended)),
            None if live => format!("as of {}", format_ms(s.updated_ms)),
            None => format!("stale, last stored {}", format_ms(s.updated_ms)),
        };
        let source = format!("{when} from `underwrite {}` pid {}", s.command, s.pid);
        RuntimeView {
            report: s.health.clone(),
            source,
            live,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use underwrite_runtime::resilience::{RuntimeHealth, ServiceReport};
    use underwrite_runtime::{ResilienceSettings, SqliteStore};

    fn open_circuit_snapshot(updated_ms: i64) -> RunSnapshot {
        let health = RuntimeHealth::new(&["audit"], ResilienceSettings::default());
        health.with_store(|breaker| {
            for _ in 0..3 {
                breaker.record_failure(updated_ms);
            }
        });
        RunSnapshot {
            run_id: "run-1".into(),
            command: "serve".into(),
            pid: 42,
            started_ms: updated_ms,
            updated_ms,
            ended_ms: None,
            metrics: MetricsSnapshot::default(),
            health: health.report(updated_ms),
        }
    }

    #[test]
    fn open_store_circuit_fails_while_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
        let snapshots = [open_circuit_snapshot(1_000_000)];

        let live = latest_run(&snapshots, 1_010_000).unwrap();
        assert!(live.live);
        let checks = collect(&store, &["audit"], Some(live));
        let store_check = checks.checks.iter().find(|c| c.name == "store").unwrap();
        assert_eq!(store_check.status, Status::Failed);
        assert!(
            store_check.detail.contains("circuit OPEN"),
            "{}",
            store_check.detail
        );
        assert_eq!(checks.status, Status::Failed);

        let stale = latest_run(&snapshots, 1_016_000).unwrap();
        assert!(!stale.live, "16 s old");
        assert!(stale.source.starts_with("stale"), "{}", stale.source);
        let checks = collect(&store, &["audit"], Some(stale));
        assert_eq!(
            checks.status,
            Status::Warning,
            "a stopped process's circuit is a warning"
        );
        let services: Vec<&ServiceReport> =
            checks.runtime.iter().flat_map(|r| &r.services).collect();
        assert_eq!(services.len(), 1);
    }
}

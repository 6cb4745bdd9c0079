//! Counters and handling timers of one process, with a serialisable snapshot
//! that the store keeps per run and that `underwrite serve` exports as
//! Prometheus text.
//!
//! Recording costs one relaxed atomic add for a counter, and one uncontended
//! lock and a short scan for a timer: names are fixed in code, and a timer's
//! event type is copied only the first time that pair is seen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A counter's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Events emitted by handlers and committed.
    EventsEmitted = 0,
    /// Records handled and committed.
    EventsHandled,
    /// Failed attempts: retried, dead-lettered, or refused by an open circuit.
    EventsFailed,
    /// Store operations that failed with an I/O or database error.
    StoreIoError,
    /// Events refused for a bad signature, an unknown key or the emit policy:
    /// every handler error whose code starts with `authz`.
    AuthzFailures,
    /// Events accepted by `POST /v1/events` and published.
    EventsIngested,
}

impl Counter {
    /// Every counter, in export order.
    pub const ALL: [Counter; 6] = [
        Counter::EventsEmitted,
        Counter::EventsHandled,
        Counter::EventsFailed,
        Counter::StoreIoError,
        Counter::AuthzFailures,
        Counter::EventsIngested,
    ];

    /// Returns the dotted name operators use, such as `events.handled`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::EventsEmitted => "events.emitted",
            Counter::EventsHandled => "events.handled",
            Counter::EventsFailed => "events.failed",
            Counter::StoreIoError => "store.io_error",
            Counter::AuthzFailures => "authz.failures",
            Counter::EventsIngested => "events.ingested",
        }
    }
}

/// Handling time of one service and event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerStats {
    /// The service.
    pub service: String,
    /// The event type.
    pub event_type: String,
    /// Records timed.
    pub count: u64,
    /// Sum of the durations, microseconds.
    pub total_us: u64,
    /// Minimum duration, microseconds.
    pub min_us: u64,
    /// Maximum duration, microseconds.
    pub max_us: u64,
}

impl TimerStats {
    /// Returns the mean duration in microseconds, 0 when nothing was timed.
    pub fn avg_us(&self) -> u64 {
        self.total_us.checked_div(self.count).unwrap_or(0)
    }

    fn merge(&mut self, other: &TimerStats) {
        if other.count == 0 {
            return;
        }
        self.min_us = if self.count == 0 {
            other.min_us
        } else {
            self.min_us.min(other.min_us)
        };
        self.max_us = self.max_us.max(other.max_us);
        self.count += other.count;
        self.total_us += other.total_us;
    }
}

struct Timer {
    service: &'static str,
    event_type: String,
    count: u64,
    total_us: u64,
    min_us: u64,
    max_us: u64,
}

/// The metrics registry of one process.
#[derive(Default)]
pub struct Metrics {
    counters: [AtomicU64; Counter::ALL.len()],
    timers: Mutex<Vec<Timer>>,
}

impl Metrics {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds `by` to `counter`.
    pub fn add(&self, counter: Counter, by: u64) {
        self.counters[counter as usize].fetch_add(by, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn increment(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Returns the current value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// Records one `handle.duration` sample.
    pub fn record_duration(&self, service: &'static str, event_type: &str, micros: u64) {
        let mut timers = self
            .timers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = timers
            .iter_mut()
            .find(|t| t.service == service && t.event_type == event_type);
        match found {
            Some(timer) => {
                timer.count += 1;
                timer.total_us += micros;
                timer.min_us = timer.min_us.min(micros);
                timer.max_us = timer.max_us.max(micros);
            }
            None => timers.push(Timer {
                service,
                event_type: event_type.to_string(),
                count: 1,
                total_us: micros,
                min_us: micros,
                max_us: micros,
            }),
        }
    }

    /// Returns a copy of every counter and timer.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let counters = Counter::ALL
            .iter()
            .map(|c| (c.name().to_string(), self.get(*c)))
            .collect();
        let timers = self
            .timers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|t| TimerStats {
                service: t.service.to_string(),
                event_type: t.event_type.clone(),
                count: t.count,
                total_us: t.total_us,
                min_us: t.min_us,
                max_us: t.max_us,
            })
            .collect();
        MetricsSnapshot { counters, timers }
    }
}

/// Counters by dotted name and timers by service and event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Counter values by name.
    pub counters: BTreeMap<String, u64>,
    /// `handle.duration` by service and event type.
    pub timers: Vec<TimerStats>,
}

impl MetricsSnapshot {
    /// Adds `other`'s counters and timers to these, as for the totals of
    /// several runs.
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        for (name, value) in &other.counters {
            *self.counters.entry(name.clone()).or_default() += value;
        }
        for timer in &other.timers {
            match self
                .timers
                .iter_mut()
                .find(|t| t.service == timer.service && t.event_type == timer.event_type)
            {
                Some(existing) => existing.merge(timer),
                None => self.timers.push(timer.clone()),
            }
        }
        self.timers.sort_by(|a, b| {
            (a.service.as_str(), a.event_type.as_str())
                .cmp(&(b.service.as_str(), b.event_type.as_str()))
        });
    }

    /// Returns the value of the counter `name`, 0 when absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Renders the snapshot in the Prometheus text exposition format 0.0.4.
    /// A dotted name becomes `underwrite_` plus the name with underscores,
    /// and counters end in `_total`.
    pub fn to_prometheus(&self) -> String {
        let mut text = String::new();
        for (name, value) in &self.counters {
            let metric = format!("underwrite_{}_total", name.replace('.', "_"));
            let _ = writeln!(text, "# HELP {metric} Counter {name}.");
            let _ = writeln!(text, "# TYPE {metric} counter");
            let _ = writeln!(text, "{metric} {value}");
        }
        let summary = "underwrite_handle_duration_seconds";
        let _ = writeln!(
            text,
            "# HELP {summary} Handling time per service and event type."
        );
        let _ = writeln!(text, "# TYPE {summary} summary");
        for timer in &self.timers {
            let labels = format!(
                "service=\"{}\",event_type=\"{}\"",
                escape_label(&timer.service),
                escape_label(&timer.event_type)
            );
            let _ = writeln!(text, "{summary}_count{{{labels}}} {}", timer.count);
            let _ = writeln!(
                text,
                "{summary}_sum{{{labels}}} {}",
                seconds(timer.total_us)
            );
        }
        for (suffix, pick) in [
            ("min", (|t: &TimerStats| t.min_us) as fn(&TimerStats) -> u64),
            ("max", |t: &TimerStats| t.max_us),
        ] {
            let gauge = format!("underwrite_handle_duration_{suffix}_seconds");
            let _ = writeln!(
                text,
                "# HELP {gauge} The {suffix} handling time per service and event type."
            );
            let _ = writeln!(text, "# TYPE {gauge} gauge");
            for timer in &self.timers {
                let _ = writeln!(
                    text,
                    "{gauge}{{service=\"{}\",event_type=\"{}\"}} {}",
                    escape_label(&timer.service),
                    escape_label(&timer.event_type),
                    seconds(pick(timer))
                );
            }
        }
        text
    }
}

fn seconds(micros: u64) -> String {
    format!("{:.6}", micros as f64 / 1e6)
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keeps_count_min_max_and_mean() {
        let metrics = Metrics::new();
        metrics.record_duration("npa", "loan.disbursed", 30);
        metrics.record_duration("npa", "loan.disbursed", 10);
        metrics.record_duration("npa", "day.closed", 5);
        let snapshot = metrics.snapshot();
        let timer = &snapshot.timers[0];
        assert_eq!(timer.event_type, "loan.disbursed");
        assert_eq!(timer.count, 2);
        assert_eq!(timer.min_us, 10);
        assert_eq!(timer.max_us, 30);
        assert_eq!(timer.avg_us(), 20);
        assert_eq!(snapshot.timers.len(), 2);
    }

    #[test]
    fn merge_sums_counters_and_timers() {
        let first = Metrics::new();
        first.add(Counter::EventsHandled, 3);
        first.record_duration("audit", "loan.disbursed", 40);
        let second = Metrics::new();
        second.add(Counter::EventsHandled, 2);
        second.record_duration("audit", "loan.disbursed", 20);
        let mut total = first.snapshot();
        total.merge(&second.snapshot());
        assert_eq!(total.counter("events.handled"), 5);
        assert_eq!(total.timers.len(), 1);
        assert_eq!(total.timers[0].count, 2);
        assert_eq!(total.timers[0].min_us, 20);
        assert_eq!(total.timers[0].max_us, 40);
    }

    #[test]
    fn prometheus_text_names_counters_and_labels() {
        let metrics = Metrics::new();
        metrics.add(Counter::AuthzFailures, 4);
        metrics.record_duration("audit", "loan.disbursed", 1_500);
        let text = metrics.snapshot().to_prometheus();
        assert!(text.contains("# TYPE underwrite_authz_failures_total counter\n"));
        assert!(text.contains("underwrite_authz_failures_total 4\n"));
        assert!(text.contains(
            "underwrite_handle_duration_seconds_count{service=\"audit\",event_type=\"loan.disbursed\"} 1\n"
        ));
        assert!(text.contains(
            "underwrite_handle_duration_seconds_sum{service=\"audit\",event_type=\"loan.disbursed\"} 0.001500\n"
        ));
        assert!(text.contains(
            "underwrite_handle_duration_max_seconds{service=\"audit\",event_type=\"loan.disbursed\"} 0.001500\n"
        ));
    }
}

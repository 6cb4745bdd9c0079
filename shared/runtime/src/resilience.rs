//! Supervisor backoff and circuit breakers, driven by an injectable clock.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The maximum supervisor backoff, in milliseconds.
pub const MAX_BACKOFF_MS: i64 = 60_000;

/// Supervisor settings: how a service whose handler crashed is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoverySettings {
    /// The first backoff, in seconds; the n-th consecutive failure waits
    /// `backoff_seconds * 2^(n-1)`, at most 60 s.
    pub backoff_seconds: f64,
    /// Consecutive failures after which the service is unhealthy.
    pub max_restarts: u32,
    /// Whether an unhealthy service keeps being restarted after its backoff;
    /// when false it stays stopped until the process restarts.
    pub auto_restart: bool,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings {
            backoff_seconds: 1.0,
            max_restarts: 5,
            auto_restart: true,
        }
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through, in
    /// seconds.
    pub open_seconds: u64,
}

impl BreakerSettings {
    /// The per-subscriber default: 5 failures, 60 s open.
    pub const SUBSCRIBER: BreakerSettings = BreakerSettings {
        failure_threshold: 5,
        open_seconds: 60,
    };

    /// The store default: 3 failures, 30 s recovery timeout.
    pub const STORE: BreakerSettings = BreakerSettings {
        failure_threshold: 3,
        open_seconds: 30,
    };
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings::SUBSCRIBER
    }
}

/// The supervisor's view of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorState {
    /// Running normally.
    Running,
    /// Waiting out a backoff after a failure.
    BackingOff,
    /// `max_restarts` consecutive failures; still restarted after each
    /// backoff when auto-restart is on.
    Unhealthy,
    /// Unhealthy with auto-restart off: no longer run.
    Stopped,
}

/// Restarts a crashing service with exponential backoff.
#[derive(Debug, Clone)]
pub struct Supervisor {
    settings: RecoverySettings,
    consecutive_failures: u32,
    restarts: u64,
    resume_at_ms: i64,
}

impl Supervisor {
    /// Creates a supervisor with no failures.
    pub fn new(settings: RecoverySettings) -> Self {
        Supervisor {
            settings,
            consecutive_failures: 0,
            restarts: 0,
            resume_at_ms: i64::MIN,
        }
    }

    /// Returns the backoff after the `n`-th consecutive failure, in
    /// milliseconds: `backoff_seconds * 2^(n-1)`, at most 60 s.
    pub fn backoff_ms(&self, n: u32) -> i64 {
        let exponent = n.saturating_sub(1).min(30) as i32;
        let ms = self.settings.backoff_seconds * 1000.0 * 2f64.powi(exponent);
        (ms as i64).min(MAX_BACKOFF_MS)
    }

    /// Records a failure at `now_ms` and returns the backoff before the next
    /// attempt, in milliseconds.
    pub fn record_failure(&mut self, now_ms: i64) -> i64 {
        self.consecutive_failures += 1;
        self.restarts += 1;
        let backoff = self.backoff_ms(self.consecutive_failures);
        self.resume_at_ms = now_ms + backoff;
        backoff
    }

    /// Records a success, which resets the failure count.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Checks whether the service may run at `now_ms`.
    pub fn may_run(&self, now_ms: i64) -> bool {
        self.state(now_ms) != SupervisorState::Stopped && now_ms >= self.resume_at_ms
    }

    /// Returns the state at `now_ms`.
    pub fn state(&self, now_ms: i64) -> SupervisorState {
        if self.consecutive_failures >= self.settings.max_restarts {
            if self.settings.auto_restart {
                SupervisorState::Unhealthy
            } else {
                SupervisorState::Stopped
            }
        } else if now_ms < self.resume_at_ms {
            SupervisorState::BackingOff
        } else {
            SupervisorState::Running
        }
    }

    /// Returns the consecutive failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn report(&self, now_ms: i64) -> SupervisorReport {
        SupervisorReport {
            state: self.state(now_ms),
            consecutive_failures: self.consecutive_failures,
            restarts: self.restarts,
            resume_at_ms: (now_ms < self.resume_at_ms).then_some(self.resume_at_ms),
        }
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls fail fast until the open time has passed.
    Open,
    /// One probe call passes; its result closes or reopens the circuit.
    HalfOpen,
}

/// A consecutive-failure circuit breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: CircuitState,
    consecutive_failures: u32,
    opened_at_ms: i64,
}

impl CircuitBreaker {
    /// Creates a closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        CircuitBreaker {
            settings,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at_ms: 0,
        }
    }

    fn open_ms(&self) -> i64 {
        self.settings.open_seconds as i64 * 1000
    }

    /// Checks whether a call may proceed at `now_ms`. An open circuit whose
    /// open time has passed becomes half-open and lets this call through as
    /// the probe.
    pub fn allow(&mut self, now_ms: i64) -> bool {
        match self.state {
            CircuitState::Closed | CircuitState::HalfOpen => true,
            CircuitState::Open if now_ms >= self.opened_at_ms + self.open_ms() => {
                self.state = CircuitState::HalfOpen;
                true
            }
            CircuitState::Open => false,
        }
    }

    /// Records a successful call, which closes the circuit.
    pub fn record_success(&mut self) {
        self.state = CircuitState::Closed;
        self.consecutive_failures = 0;
    }

    /// Records a failed call at `now_ms`. The threshold's failure, or a
    /// failed probe, opens the circuit.
    pub fn record_failure(&mut self, now_ms: i64) {
        self.consecutive_failures += 1;
        if self.state == CircuitState::HalfOpen
            || self.consecutive_failures >= self.settings.failure_threshold
        {
            self.state = CircuitState::Open;
            self.opened_at_ms = now_ms;
        }
    }

    /// Returns the state, without moving an expired open circuit to
    /// half-open.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Returns when an open circuit lets a probe through, Unix milliseconds.
    pub fn open_until_ms(&self) -> Option<i64> {
        (self.state == CircuitState::Open).then(|| self.opened_at_ms + self.open_ms())
    }

    /// Returns the consecutive failures.
    pub fn report_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn report(&self) -> CircuitReport {
        CircuitReport {
            state: self.state,
            consecutive_failures: self.consecutive_failures,
            open_until_ms: self.open_until_ms(),
        }
    }
}

/// A supervisor's state for health reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorReport {
    /// The state.
    pub state: SupervisorState,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Restarts since the process started.
    pub restarts: u64,
    /// When a backoff ends, Unix milliseconds.
    pub resume_at_ms: Option<i64>,
}

/// A circuit breaker's state for health reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitReport {
    /// The state.
    pub state: CircuitState,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// When an open circuit lets a probe through, Unix milliseconds.
    pub open_until_ms: Option<i64>,
}

/// One service's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service.
    pub name: String,
    /// Its supervisor.
    pub supervisor: SupervisorReport,
    /// Its subscriber circuit breaker.
    pub circuit: CircuitReport,
}

/// The runtime's health: the store breaker and every service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The store's circuit breaker.
    pub store_circuit: CircuitReport,
    /// Every registered service.
    pub services: Vec<ServiceReport>,
}

impl HealthReport {
    /// Checks whether the store circuit is closed and every service runs.
    pub fn is_healthy(&self) -> bool {
        self.store_circuit.state != CircuitState::Open
            && self.services.iter().all(|s| {
                matches!(
                    s.supervisor.state,
                    SupervisorState::Running | SupervisorState::BackingOff
                ) && s.circuit.state != CircuitState::Open
            })
    }
}

/// Resilience settings of a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ResilienceSettings {
    /// Supervisor settings for every service.
    pub recovery: RecoverySettings,
    /// Per-subscriber circuit breaker.
    pub subscriber: BreakerSettings,
    /// Store circuit breaker.
    pub store: BreakerSettingsStore,
}

/// Store circuit breaker settings, whose defaults differ from a
/// subscriber's: 3 failures and a 30 s recovery timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettingsStore {
    /// Consecutive store failures that open the circuit.
    pub failure_threshold: u32,
    /// Seconds before an open store circuit lets a probe through.
    pub recovery_timeout_seconds: u64,
}

impl Default for BreakerSettingsStore {
    fn default() -> Self {
        BreakerSettingsStore {
            failure_threshold: BreakerSettings::STORE.failure_threshold,
            recovery_timeout_seconds: BreakerSettings::STORE.open_seconds,
        }
    }
}

impl From<BreakerSettingsStore> for BreakerSettings {
    fn from(store: BreakerSettingsStore) -> Self {
        BreakerSettings {
            failure_threshold: store.failure_threshold,
            open_seconds: store.recovery_timeout_seconds,
        }
    }
}

/// The live resilience state of a runtime, shared with health reports.
pub struct RuntimeHealth {
    store: Mutex<CircuitBreaker>,
    services: Vec<(&'static str, Mutex<(Supervisor, CircuitBreaker)>)>,
}

impl RuntimeHealth {
    /// Creates the state for `services`, all closed and running.
    pub fn new(services: &[&'static str], settings: ResilienceSettings) -> Self {
        RuntimeHealth {
            store: Mutex::new(CircuitBreaker::new(settings.store.into())),
            services: services
                .iter()
                .map(|name| {
                    (
                        *name,
                        Mutex::new((
                            Supervisor::new(settings.recovery),
                            CircuitBreaker::new(settings.subscriber),
                        )),
                    )
                })
                .collect(),
        }
    }

    /// Runs `f` on the store breaker.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        f(&mut self.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `f` on the supervisor and breaker of `service`; `None` for an
    /// unknown service.
    pub fn with_service<R>(
        &self,
        service: &str,
        f: impl FnOnce(&mut Supervisor, &mut CircuitBreaker) -> R,
    ) -> Option<R> {
        let (_, cell) = self.services.iter().find(|(name, _)| *name == service)?;
        let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
        let (supervisor, breaker) = &mut *guard;
        Some(f(supervisor, breaker))
    }

    /// Returns the report at `now_ms`.
    pub fn report(&self, now_ms: i64) -> HealthReport {
        HealthReport {
            store_circuit: self.with_store(|breaker| breaker.report()),
            services: self
                .services
                .iter()
                .map(|(name, cell)| {
                    let guard = cell.lock().unwrap_or_else(|p| p.into_inner());
                    ServiceReport {
                        name: name.to_string(),
                        supervisor: guard.0.report(now_ms),
                        circuit: guard.1.report(),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(max_restarts: u32, auto_restart: bool) -> Supervisor {
        Supervisor::new(RecoverySettings {
            backoff_seconds: 1.0,
            max_restarts,
            auto_restart,
        })
    }

    #[test]
    fn backoff_doubles_and_caps_at_sixty_seconds() {
        let supervisor = supervisor(100, true);
        assert_eq!(supervisor.backoff_ms(1), 1_000);
        assert_eq!(supervisor.backoff_ms(2), 2_000);
        assert_eq!(supervisor.backoff_ms(6), 32_000);
        assert_eq!(supervisor.backoff_ms(7), 60_000, "64 s is capped");
        assert_eq!(supervisor.backoff_ms(40), 60_000);
    }

    #[test]
    fn supervisor_waits_out_its_backoff() {
        let mut supervisor = supervisor(5, true);
        assert_eq!(supervisor.record_failure(10_000), 1_000);
        assert_eq!(supervisor.state(10_999), SupervisorState::BackingOff);
        assert!(!supervisor.may_run(10_999));
        assert!(supervisor.may_run(11_000));
        assert_eq!(supervisor.record_failure(11_000), 2_000);
        assert!(!supervisor.may_run(12_999));
        assert!(supervisor.may_run(13_000));
    }

    #[test]
    fn supervisor_unhealthy_at_max_restarts() {
        let mut supervisor = supervisor(3, true);
        supervisor.record_failure(0);
        supervisor.record_failure(0);
        assert_eq!(supervisor.state(10_000), SupervisorState::Running);
        supervisor.record_failure(0);
        assert_eq!(supervisor.state(10_000), SupervisorState::Unhealthy);
        assert!(supervisor.may_run(10_000), "auto-restart runs it again");
        supervisor.record_failure(10_000);
        assert_eq!(supervisor.state(100_000), SupervisorState::Unhealthy);
        supervisor.record_success();
        assert_eq!(supervisor.state(100_000), SupervisorState::Running);
        assert_eq!(supervisor.consecutive_failures(), 0);
    }

    #[test]
    fn supervisor_without_auto_restart_stops() {
        let mut supervisor = supervisor(2, false);
        supervisor.record_failure(0);
        assert!(supervisor.may_run(5_000));
        supervisor.record_failure(0);
        assert_eq!(supervisor.state(100_000), SupervisorState::Stopped);
        assert!(!supervisor.may_run(100_000));
    }

    #[test]
    fn breaker_opens_at_threshold_and_probes() {
        let mut breaker = CircuitBreaker::new(BreakerSettings::SUBSCRIBER);
        for _ in 0..4 {
            assert!(breaker.allow(0));
            breaker.record_failure(0);
        }
        assert_eq!(
            breaker.state(),
            CircuitState::Closed,
            "4 failures keep it closed"
        );
        breaker.record_failure(1_000);
        assert_eq!(breaker.state(), CircuitState::Open, "the 5th opens it");
        assert_eq!(breaker.open_until_ms(), Some(61_000));
        assert!(!breaker.allow(60_999));
        assert!(breaker.allow(61_000), "60 s later one probe passes");
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        breaker.record_failure(61_000);
        assert_eq!(
            breaker.state(),
            CircuitState::Open,
            "a failed probe reopens it"
        );
        assert!(!breaker.allow(120_999));
        assert!(breaker.allow(121_000));
        breaker.record_success();
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.allow(121_000));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut breaker = CircuitBreaker::new(BreakerSettings::SUBSCRIBER);
        for _ in 0..4 {
            breaker.record_failure(0);
        }
        breaker.record_success();
        for _ in 0..4 {
            breaker.record_failure(0);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn store_breaker_opens_at_three() {
        let mut breaker = CircuitBreaker::new(BreakerSettingsStore::default().into());
        breaker.record_failure(0);
        breaker.record_failure(0);
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.record_failure(0);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(!breaker.allow(29_999));
        assert!(breaker.allow(30_000));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
    }
}

//! `underwrite serve`: an HTTP daemon that ingests input events, runs the
//! configured services on the embedded runtime, and reports health and
//! metrics.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{error, info, warn};
use underwrite_events::{Envelope, parse_input_line};
use underwrite_runtime::{Clock, Counter, EmbeddedRuntime, RunError, RunOptions, SystemClock};
use underwrite_saga::{SagaRunner, origination};

use crate::config::Config;

/// The largest request body `POST /v1/events` accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long stopped services may take to finish their batch in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `underwrite serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free port. The bound address is printed.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Services to run, comma-separated; by default those listed under `services` in the config.
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    /// Reject start-up unless UNDERWRITE_API_TOKEN is set; POST /v1/events then needs `Authorization: Bearer <token>`.
    #[arg(long)]
    pub require_auth: bool,
    /// Requests per second POST /v1/events accepts; more get 429 with Retry-After. No limit by default.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Seconds to wait for open requests after SIGTERM or SIGINT before stopping anyway.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

/// A fixed-window limit of requests per second.
pub struct RateLimiter {
    limit: u32,
    window_start_ms: i64,
    count: u32,
}

impl RateLimiter {
    /// Creates a limiter of `limit` requests per second.
    pub fn new(limit: u32) -> Self {
        RateLimiter {
            limit,
            window_start_ms: i64::MIN,
            count: 0,
        }
    }

    /// Counts a request at `now_ms`. Returns `Err` with the seconds until the
    /// next window when this second's limit is spent.
    pub fn check(&mut self, now_ms: i64) -> Result<(), u64> {
        let window = now_ms.div_euclid(1000) * 1000;
        if window != self.window_start_ms {
            self.window_start_ms = window;
            self.count = 0;
        }
        if self.count >= self.limit {
            let wait_ms = window + 1000 - now_ms;
            return Err((wait_ms as u64).div_ceil(1000).max(1));
        }
        self.count += 1;
        Ok(())
    }
}

struct AppState {
    runtime: Arc<EmbeddedRuntime>,
    ingest: Arc<EmbeddedRuntime>,
    services: Vec<&'static str>,
    token_digest: Option<[u8; 32]>,
    limiter: Option<Mutex<RateLimiter>>,
    clock: Arc<dyn Clock>,
    accepting: AtomicBool,
    /// Set after ingest starts or signals a saga, so that the driver moves
    /// the sagas on at its next idle poll.
    saga_wake: Arc<AtomicBool>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({ "error": message.into() }))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // NOTE: on AWS the token may come from Secrets Manager; this reads the
    // environment only.
    let token = std::env::var("UNDERWRITE_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if args.require_auth && token.is_none() {
        bail!(
            "--require-auth is set but UNDERWRITE_API_TOKEN is empty or unset; set it to the bearer token clients must send"
        );
    }
    if args.rate_limit == Some(0) {
        bail!(
            "--rate-limit is 0: allowed values are 1 or more requests per second; leave it out for no limit"
        );
    }
    let services = if args.services.is_empty() {
        config.services.clone()
    } else {
        args.services.clone()
    };
    let runtime = Arc::new(crate::commands::open_runtime(config)?);
    let selected: Vec<&'static str> = runtime
        .services()
        .iter()
        .map(|s| s.name())
        .filter(|name| services.iter().any(|s| s == name))
        .collect();
    if let Some(unknown) = services.iter().find(|s| !selected.contains(&s.as_str())) {
        bail!(
            "--services contains {unknown:?}: known services are {}",
            crate::services::NAMES.join(", ")
        );
    }
    // Ingestion commits on its own connection: the driver's connection
    // keeps a batch transaction open, and an accepted event must not depend
    // on that batch committing.
    let ingest = Arc::new(crate::commands::open_runtime(config)?);
    // Fail at start-up, not in the driver, if a saga step has no service.
    SagaRunner::new(&runtime, &origination())?;
    let saga_wake = Arc::new(AtomicBool::new(false));

    let signal = install_signal_handlers()?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| {
            format!(
                "Failed to listen on {}:{}; pick another --port or stop the process using it",
                args.host, args.port
            )
        })?;
    let address: SocketAddr = listener.local_addr()?;

    let state = Arc::new(AppState {
        runtime: runtime.clone(),
        ingest,
        services: runtime.services().iter().map(|s| s.name()).collect(),
        token_digest: token.as_deref().map(digest),
        limiter: args
            .rate_limit
            .map(|limit| Mutex::new(RateLimiter::new(limit))),
        clock: Arc::new(SystemClock),
        accepting: AtomicBool::new(true),
        saga_wake: saga_wake.clone(),
    });
    if state.token_digest.is_none() {
        warn!("UNDERWRITE_API_TOKEN is not set: POST /v1/events accepts requests without a token.");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let options = RunOptions {
        services: selected.iter().map(|s| s.to_string()).collect(),
        until_idle: false,
        stop: stop.clone(),
        poll_interval: Duration::from_millis(100),
        snapshot_as: Some("serve"),
        idle_wake: saga_wake,
    };
    let (done_sender, done) = tokio::sync::oneshot::channel();
    let driver_ended = Arc::new(tokio::sync::Notify::new());
    let driver_ended_sender = driver_ended.clone();
    let run_runtime = runtime.clone();
    // The driver's SQLite calls block, so it runs on its own thread and
    // leaves the HTTP workers free.
    let driver = std::thread::Builder::new()
        .name("underwrite-driver".into())
        .spawn(move || {
            let executor = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("driver runtime starts");
            // Origination sagas move on whenever the queues fall idle.
            let definition = origination();
            let result = executor.block_on(async {
                let runner = SagaRunner::new(&run_runtime, &definition)
                    .map_err(|error| RunError::IdleWork(error.to_string()))?;
                run_runtime
                    .run_with_idle_work(&options, &mut |_| {}, &mut || {
                        runner.advance().map_err(|error| error.to_string())
                    })
                    .await
            });
            let _ = done_sender.send(result);
            driver_ended_sender.notify_one();
        })?;

    let app = router(state.clone());
    println!("Listening on http://{address}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    info!(%address, services = ?selected, "Serving.");

    let shutdown_state = state.clone();
    let (signal_name_sender, signal_name) = tokio::sync::oneshot::channel();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // The services stopping on their own (a store error they cannot
        // wait out) also stops the server, so that events are not accepted
        // with nothing to handle them and the process manager restarts it.
        let name = tokio::select! {
            name = signal => Some(name),
            () = driver_ended.notified() => None,
        };
        // Step 1: stop metric export and ingestion; open requests finish.
        shutdown_state.accepting.store(false, Ordering::SeqCst);
        let _ = signal_name_sender.send(name);
    });
    let timeout = Duration::from_secs(args.shutdown_timeout);
    let server = tokio::spawn(async move { server.await });
    match signal_name.await.ok().flatten() {
        Some(name) => {
            eprintln!("Received {name}; stopping.");
            info!(signal = name, "Shutting down.");
        }
        None => {
            eprintln!("The services stopped; stopping the server.");
            error!("The services stopped on their own; shutting down.");
        }
    }
    match tokio::time::timeout(timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => error!(%error, "The HTTP server failed while stopping."),
        Ok(Err(error)) => error!(%error, "The HTTP server task failed."),
        Err(_) => warn!(
            seconds = args.shutdown_timeout,
            "Open requests did not finish within --shutdown-timeout; closing them."
        ),
    }

    // Steps 2 and 3: stop services and drain. The batch in flight commits;
    // if it takes longer, its records return to their queue after the
    // visibility timeout.
    stop.store(true, Ordering::SeqCst);
    let mut code = ExitCode::SUCCESS;
    match tokio::time::timeout(DRAIN_TIMEOUT, done).await {
        Ok(Ok(Ok(totals))) => info!(handled = totals.handled, "Services stopped."),
        Ok(Ok(Err(error))) => {
            error!(%error, "The services stopped on an error.");
            eprintln!("error: services stopped on an error: {error}");
            code = ExitCode::from(1);
        }
        Ok(Err(_)) => {
            error!("The driver thread ended without a result.");
            code = ExitCode::from(1);
        }
        Err(_) => {
            warn!(
                "Services did not stop within 5 s; records in flight return to their queue after the visibility timeout."
            );
            return Ok(ExitCode::from(1));
        }
    }
    let _ = driver.join();

    // Step 4: close the store. Dropping the last handle closes the
    // connections, and SQLite checkpoints the WAL on the last close.
    drop(state);
    drop(runtime);
    eprintln!("Stopped.");
    Ok(code)
}

/// Installs the SIGTERM and SIGINT handlers before the address is printed,
/// so a signal sent right after start-up is not lost. The future returns
/// the signal's name.
fn install_signal_handlers()
-> anyhow::Result<impl std::future::Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("Failed to handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("Failed to handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/metrics", get(metrics))
        .route("/v1/events", post(ingest))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Liveness: the process serves requests.
async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

/// Returns 200 when the server accepts events, the store responds to a ping
/// and its circuit is not open.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.accepting.load(Ordering::SeqCst) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let report = state.runtime.health_report();
    if report.store_circuit.state == underwrite_runtime::CircuitState::Open {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "store circuit open");
    }
    let store = state.ingest.clone();
    let ping = tokio::task::spawn_blocking(move || store.store().ping()).await;
    match ping {
        Ok(Ok(())) => json_response(StatusCode::OK, json!({"status": "ready"})),
        Ok(Err(error)) => problem(StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// Returns the checks of `underwrite health` as JSON, with 503 when one
/// failed.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let report = state.runtime.health_report();
    let services = state.services.clone();
    let store = state.ingest.clone();
    let checks = tokio::task::spawn_blocking(move || {
        crate::health::collect(
            store.store(),
            &services,
            Some(crate::health::RuntimeView {
                report,
                source: "this process".to_string(),
                live: true,
            }),
        )
    })
    .await;
    match checks {
        Ok(checks) => {
            let status = if checks.status == crate::health::Status::Failed {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json_response(
                status,
                serde_json::to_value(&checks).expect("checks serialise"),
            )
        }
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// This process's counters and timers in Prometheus text format 0.0.4.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if !state.accepting.load(Ordering::SeqCst) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let text = state.runtime.metrics().snapshot().to_prometheus();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Checks the bearer token in constant time: both sides are hashed first so
/// that the comparison takes as long whatever the length sent.
fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token_digest else {
        return true;
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(digest(sent).ct_eq(expected))
}

/// Parses a request body: a JSON array of events, one JSON object, or
/// newline-delimited JSON with one event per line. Returns the events or
/// every reason, each naming the line or array element.
pub fn parse_body(body: &str) -> Result<Vec<Envelope>, Vec<String>> {
    let trimmed = body.trim_start();
    if trimmed.is_empty() {
        return Err(vec![
            "the body is empty: send one event, a JSON array of events, or one event per line"
                .into(),
        ]);
    }
    if trimmed.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(body).map_err(|error| {
            vec![format!(
                "the body starts with '[' but is not a JSON array: {error}"
            )]
        })?;
        let mut events = Vec::new();
        let mut errors = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (index, item) in items.iter().enumerate() {
            match parse_input_line(&item.to_string()) {
                Ok(event) => {
                    if let Some(first) = seen.insert(event.id.clone(), index) {
                        errors.push(format!(
                            "element {index}: duplicate id {:?}: first used by element {first}; every event needs its own id",
                            event.id.as_str()
                        ));
                    } else {
                        events.push(event);
                    }
                }
                Err(error) => errors.push(format!("element {index}: {error}")),
            }
        }
        return if errors.is_empty() {
            Ok(events)
        } else {
            Err(errors)
        };
    }
    if trimmed.starts_with('{')
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(body)
    {
        return parse_input_line(&value.to_string())
            .map(|event| vec![event])
            .map_err(|error| vec![error.to_string()]);
    }
    let (events, rejected) = crate::input::parse_lines(body);
    if rejected.is_empty() {
        Ok(events)
    } else {
        Err(rejected
            .iter()
            .map(|r| format!("line {}: {}", r.line, r.reason))
            .collect())
    }
}

/// Validates and publishes input events, all or none.
async fn ingest(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> Response {
    if !state.accepting.load(Ordering::SeqCst) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; retry on another instance or after restart",
        );
    }
    if !authorised(&state, &headers) {
        warn!("Rejected a POST /v1/events request without the right bearer token.");
        let mut response = problem(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <UNDERWRITE_API_TOKEN>`",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if let Some(limiter) = &state.limiter {
        let now = state.clock.now_ms();
        let verdict = limiter.lock().unwrap_or_else(|p| p.into_inner()).check(now);
        if let Err(retry_after) = verdict {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit exceeded; retry after {retry_after} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return response;
        }
    }
    let events = match parse_body(&body) {
        Ok(events) => events,
        Err(errors) => {
            info!(
                invalid = errors.len(),
                "Rejected a POST /v1/events request with invalid events."
            );
            let listed: Vec<&String> = errors.iter().take(20).collect();
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("{} invalid events; nothing was published. Fix them and send the request again", errors.len()),
                    "invalid": listed,
                }),
            );
        }
    };
    let count = events.len();
    // Valid input is signed by the ingest identity, as `run --input` does.
    let mut events = events;
    if let Err(error) = state.ingest.sign_input(&mut events) {
        error!(%error, events = count, "Failed to sign ingested events.");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to sign the events: {error}; nothing was published"),
        );
    }
    let ingest = state.ingest.clone();
    let wake = state.saga_wake.clone();
    let published =
        tokio::task::spawn_blocking(move || publish_events(&ingest, events, &wake)).await;
    match published {
        Ok(Err(IngestFailure::Invalid(errors))) => {
            info!(
                invalid = errors.len(),
                "Rejected a POST /v1/events request with signals for unknown sagas."
            );
            json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("{} invalid events; nothing was published. Fix them and send the request again", errors.len()),
                    "invalid": errors.iter().take(20).collect::<Vec<_>>(),
                }),
            )
        }
        Ok(Ok(())) => {
            state
                .runtime
                .metrics()
                .add(Counter::EventsIngested, count as u64);
            json_response(StatusCode::ACCEPTED, json!({"accepted": count}))
        }
        Ok(Err(IngestFailure::Store(error))) => {
            state.runtime.metrics().increment(Counter::StoreIoError);
            error!(%error, events = count, "Failed to publish ingested events.");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store failed: {error}; nothing was published, send the request again"),
            )
        }
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The reason ingested events were not published.
enum IngestFailure {
    /// Events that name something that does not exist, each with its reason.
    Invalid(Vec<String>),
    /// The store failed.
    Store(String),
}

/// Publishes ingested events. An application starts its origination saga,
/// and a signal (such as `kfs.accepted`) goes to the saga waiting for it.
/// The other events go to the services' queues. A signal for a saga that
/// neither exists nor starts in the same request rejects the whole request
/// before anything is published.
fn publish_events(
    ingest: &EmbeddedRuntime,
    events: Vec<Envelope>,
    wake: &AtomicBool,
) -> Result<(), IngestFailure> {
    let store_failed = |error: &dyn std::fmt::Display| IngestFailure::Store(error.to_string());
    let definition = origination();
    let signal_types = definition.signal_types();
    let starting: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|event| event.event_type == definition.input_type)
        .map(|event| event.subject.clone())
        .collect();
    let mut invalid = Vec::new();
    for event in &events {
        if !signal_types.contains(&event.event_type.as_str()) {
            continue;
        }
        let problem = crate::saga::signal_problem(ingest.store(), &definition, event, &starting)
            .map_err(|error| store_failed(&error))?;
        if let Some(reason) = problem {
            invalid.push(format!("event {:?}: {reason}", event.id.as_str()));
        }
    }
    if !invalid.is_empty() {
        return Err(IngestFailure::Invalid(invalid));
    }

    let (saga, queued): (Vec<Envelope>, Vec<Envelope>) = events.into_iter().partition(|event| {
        event.event_type == definition.input_type
            || signal_types.contains(&event.event_type.as_str())
    });
    ingest
        .publish(&queued)
        .map_err(|error| store_failed(&error))?;

    if saga.is_empty() {
        return Ok(());
    }
    let runner = SagaRunner::new(ingest, &definition).map_err(|error| store_failed(&error))?;
    // Starting and signalling are idempotent: a repeated request starts or
    // signals nothing new.
    let fed = crate::saga::feed(&runner, &saga).map_err(|error| store_failed(&error))?;
    info!("{fed}");
    wake.store(true, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_limit_per_second() {
        let mut limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(limiter.check(10_200), Ok(()));
        }
        assert_eq!(limiter.check(10_200), Err(1), "the 4th in the same second");
        assert_eq!(limiter.check(10_999), Err(1));
        assert_eq!(limiter.check(11_000), Ok(()), "a new second starts afresh");
    }

    #[test]
    fn body_forms_parse() {
        let line = |id: &str| {
            json!({"id": id, "type": "day.closed", "occurred_at": "2024-03-01T23:00:00+05:30", "payload": {"business_date": "2024-03-01"}}).to_string()
        };
        let array = format!("[{},{}]", line("a1"), line("a2"));
        assert_eq!(parse_body(&array).map(|e| e.len()), Ok(2));
        let ndjson = format!("{}\n{}\n", line("a1"), line("a2"));
        assert_eq!(parse_body(&ndjson).map(|e| e.len()), Ok(2));
        assert_eq!(parse_body(&line("a1")).map(|e| e.len()), Ok(1));
        let bad = format!("{}\n{{\"id\":\"x\"}}\n", line("a1"));
        let errors = parse_body(&bad).unwrap_err();
        assert!(errors[0].starts_with("line 2: "), "{errors:?}");
        let duplicate = format!("[{},{}]", line("a1"), line("a1"));
        let errors = parse_body(&duplicate).unwrap_err();
        assert!(errors[0].contains("element 1: duplicate id"), "{errors:?}");
    }
}

//! `underwrite bench lambda`: each function's deployment zip size, and the
//! time from process start to the response to the first SQS batch under a local
//! Lambda runtime API served on 127.0.0.1.
//!
//! The runtime API is the one Lambda documents for custom runtimes
//! (`provided.al2023`): the function polls `GET
//! /2018-06-01/runtime/invocation/next`, which returns an event with the
//! request id, deadline and function ARN in headers, and posts its answer to
//! `/2018-06-01/runtime/invocation/{id}/response` (or `/error`).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Args;
use tokio::sync::oneshot;

/// The day-end job's function, deployed beside the services' functions.
const DAY_END_FUNCTION: &str = "day-end";

/// Largest deployment zip the functions aim for, in bytes (8 MB).
pub const ZIP_TARGET_BYTES: u64 = 8_000_000;

/// Maximum time from process start to the response to the first batch
/// that the functions aim for.
pub const COLD_START_TARGET: Duration = Duration::from_millis(50);

/// Arguments of `underwrite bench lambda`.
#[derive(Args)]
pub struct LambdaBenchArgs {
    /// Folder written by `cargo lambda build --release --output-format zip`: one `<function>/bootstrap.zip` each.
    #[arg(long, default_value = "target/lambda")]
    pub zips: PathBuf,
    /// Release binary of the function whose cold start is timed; by default the one `cargo lambda build --release` left beside the zips, `<zips>/../x86_64-unknown-linux-gnu/release/<service>`.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Name of the timed function's service, as in `UNDERWRITE_SERVICE`.
    #[arg(long, default_value = "mechanism")]
    pub service: String,
    /// Cold starts measured; the median is compared with the target.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
}

/// The function's post for its invocation: a response or an error.
#[derive(Debug)]
pub struct Answer {
    /// When the post arrived.
    pub at: Instant,
    /// `response`, `error` or `init-error`.
    pub kind: &'static str,
    /// The posted body.
    pub body: String,
}

struct ApiState {
    event: String,
    request_id: String,
    function_arn: String,
    deadline: Duration,
    served: Mutex<bool>,
    answer: Mutex<Option<oneshot::Sender<Answer>>>,
}

impl ApiState {
    fn answer(&self, kind: &'static str, body: Bytes) -> StatusCode {
        let answer = Answer {
            at: Instant::now(),
            kind,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        if let Some(sender) = self.answer.lock().expect("answer lock").take() {
            // The receiver is gone only when the bench stopped waiting.
            let _ = sender.send(answer);
        }
        StatusCode::ACCEPTED
    }
}

/// Serves one invocation of `event` on 127.0.0.1; later polls wait forever,
/// as Lambda's do between invocations.
async fn next(State(state): State<Arc<ApiState>>) -> axum::response::Response {
    let first = {
        let mut served = state.served.lock().expect("served lock");
        !std::mem::replace(&mut *served, true)
    };
    if !first {
        std::future::pending::<()>().await;
    }
    let deadline_ms = (SystemTime::now() + state.deadline)
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", state.request_id.clone()),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            state.function_arn.clone(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-67500000-0123456789abcdef01234567;Sampled=0".to_string(),
        ),
        ("content-type", "application/json".to_string()),
    ] {
        headers.insert(
            name,
            HeaderValue::from_str(&value).expect("header values are ASCII"),
        );
    }
    (headers, state.event.clone()).into_response()
}

async fn response(
    State(state): State<Arc<ApiState>>,
    UrlPath(_id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    state.answer("response", body)
}

async fn invocation_error(
    State(state): State<Arc<ApiState>>,
    UrlPath(_id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    state.answer("error", body)
}

async fn init_error(State(state): State<Arc<ApiState>>, body: Bytes) -> StatusCode {
    state.answer("init-error", body)
}

/// A local Lambda runtime API holding one invocation.
pub struct LocalRuntimeApi {
    /// `127.0.0.1:<port>`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    answer: oneshot::Receiver<Answer>,
    server: tokio::task::JoinHandle<()>,
}

impl LocalRuntimeApi {
    /// Starts the API on a free port of 127.0.0.1 with `event` as the one
    /// invocation, due `deadline` after it is served.
    pub async fn start(
        event: String,
        function_name: &str,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let (sender, answer) = oneshot::channel();
        let state = Arc::new(ApiState {
            event,
            request_id: uuid_like(),
            function_arn: format!(
                "arn:aws:lambda:ap-south-1:000000000000:function:{function_name}"
            ),
            deadline,
            served: Mutex::new(false),
            answer: Mutex::new(Some(sender)),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("Failed to bind the local runtime API to 127.0.0.1")?;
        let address = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move {
            // The server runs until the bench aborts it.
            let _ = axum::serve(listener, app).await;
        });
        Ok(LocalRuntimeApi {
            address,
            answer,
            server,
        })
    }

    /// Waits up to `timeout` for the function's response or error.
    pub async fn answer(&mut self, timeout: Duration) -> anyhow::Result<Answer> {
        match tokio::time::timeout(timeout, &mut self.answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => bail!("the local runtime API stopped before the function responded"),
            Err(_) => bail!(
                "the function did not respond within {} s",
                timeout.as_secs()
            ),
        }
    }
}

impl Drop for LocalRuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Makes a request id in the form Lambda uses, unique per process and call.
fn uuid_like() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hex = format!("{nanos:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Returns the variables Lambda sets for a custom runtime, pointing at `api`.
pub fn lambda_environment(api: &str, function_name: &str) -> Vec<(String, String)> {
    [
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", function_name.to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".to_string()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function_name}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2026/12/05/[$LATEST]bench".to_string(),
        ),
        ("AWS_REGION", "ap-south-1".to_string()),
        // No SDK client of a bench run may look for instance credentials.
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// Lists each `<function>/bootstrap.zip` under `folder` with its size.
fn zip_sizes(folder: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let entries = std::fs::read_dir(folder).with_context(|| {
        format!(
            "Failed to read {}; build the zips first with `cargo lambda build --release --output-format zip`, or name their folder with --zips",
            folder.display()
        )
    })?;
    let mut sizes = Vec::new();
    for entry in entries {
        let entry = entry?;
        let zip = entry.path().join("bootstrap.zip");
        let name = entry.file_name().to_string_lossy().into_owned();
        // `cargo lambda build` zips every binary of the workspace, the
        // `underwrite` command too; only the functions are deployed.
        let function = crate::services::NAMES.contains(&name.as_str()) || name == DAY_END_FUNCTION;
        if !function {
            eprintln!("bench: skipping {}: not a Lambda function", zip.display());
            continue;
        }
        if let Ok(metadata) = std::fs::metadata(&zip) {
            sizes.push((name, metadata.len()));
        }
    }
    sizes.sort();
    if sizes.is_empty() {
        bail!(
            "no <function>/bootstrap.zip under {}; build them with `cargo lambda build --release --output-format zip`",
            folder.display()
        );
    }
    Ok(sizes)
}

/// Starts `binary` under a fresh local runtime API with `event` and returns
/// the time from spawning it to its answer.
pub async fn time_first_batch(
    binary: &Path,
    event: &str,
    environment: &[(String, String)],
    function_name: &str,
) -> anyhow::Result<(Duration, Answer)> {
    let mut api =
        LocalRuntimeApi::start(event.to_string(), function_name, Duration::from_secs(30)).await?;
    let log = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(lambda_environment(&api.address, function_name))
        .envs(environment.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen()?)
        .spawn()
        .with_context(|| format!("Failed to start {}", binary.display()))?;
    let answer = api.answer(Duration::from_secs(20)).await;
    let elapsed = started.elapsed();
    // The function keeps polling for the next invocation; it is stopped here.
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer.map_err(|error| {
        let log = std::fs::read_to_string(log.path()).unwrap_or_default();
        anyhow::anyhow!("{error}; the function's log:\n{log}")
    })?;
    let elapsed = answer.at.saturating_duration_since(started).min(elapsed);
    Ok((elapsed, answer))
}

/// Builds an SQS event as Lambda delivers it, with one record holding `body`.
pub fn sqs_event(queue: &str, message_id: &str, body: &str) -> String {
    serde_json::json!({
        "Records": [{
            "messageId": message_id,
            "receiptHandle": format!("bench-receipt-{message_id}"),
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": "1764892800000",
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "ApproximateFirstReceiveTimestamp": "1764892800005"
            },
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": format!("arn:aws:sqs:ap-south-1:000000000000:{queue}"),
            "awsRegion": "ap-south-1"
        }]
    })
    .to_string()
}

/// Prints each zip's size against the target; returns whether all meet it.
fn report_zips(sizes: &[(String, u64)]) -> bool {
    let mut all_meet = true;
    for (function, bytes) in sizes {
        let meets = *bytes <= ZIP_TARGET_BYTES;
        let ratio = *bytes as f64 / ZIP_TARGET_BYTES as f64;
        let verdict = if meets { "meets" } else { "MISSES" };
        all_meet &= meets;
        println!(
            "zip:        {function:<10} {:>6.2} MB, {ratio:.2} of the 8 MB target; {verdict} it",
            *bytes as f64 / 1e6
        );
    }
    all_meet
}

/// Starts `binary` `runs` times, each with its own SQLite file and a fresh
/// local runtime API, and returns the sorted times to the first response.
async fn cold_starts(binary: &Path, service: &str, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let body = std::fs::read_to_string("shared/events/fixtures/loan.disbursed.json")
        .context("Failed to read shared/events/fixtures/loan.disbursed.json; run the bench from the repository root")?;
    let function_name = format!("underwrite-bench-{service}");
    let mut times = Vec::with_capacity(runs);
    eprintln!(
        "bench: timing {runs} cold starts of {}...",
        binary.display()
    );
    for run in 0..runs {
        // Each run gets its own store, so no run finds the event done.
        let db = dir.path().join(format!("run-{run}.db"));
        let environment = vec![
            ("UNDERWRITE_SERVICE".to_string(), service.to_string()),
            ("UNDERWRITE_BACKEND".to_string(), "embedded".to_string()),
            ("UNDERWRITE_DB".to_string(), db.display().to_string()),
        ];
        let event = sqs_event(&function_name, &format!("bench-{run}"), &body);
        let (elapsed, answer) =
            time_first_batch(binary, &event, &environment, &function_name).await?;
        if answer.kind != "response" {
            bail!(
                "run {run}: the function posted an {} instead of a batch response: {}",
                answer.kind,
                answer.body
            );
        }
        times.push(elapsed);
    }
    times.sort();
    Ok(times)
}

/// Runs `underwrite bench lambda`.
pub async fn bench_lambda(args: LambdaBenchArgs) -> anyhow::Result<ExitCode> {
    println!(
        "machine: {} logical CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // With --binary alone, the cold start is timed without the zips, and
    // the zip line reports them as not measured instead of failing the run.
    let mut all_meet = match (zip_sizes(&args.zips), &args.binary) {
        (Ok(sizes), _) => report_zips(&sizes),
        (Err(error), Some(_)) => {
            println!("zip:        not measured: {error:#}");
            false
        }
        (Err(error), None) => return Err(error),
    };

    if args.runs == 0 {
        bail!("--runs is 0: measure at least one cold start");
    }
    let binary = args.binary.clone().unwrap_or_else(|| {
        args.zips
            .join("../x86_64-unknown-linux-gnu/release")
            .join(&args.service)
    });
    if !binary.is_file() {
        bail!(
            "no function binary at {}; build it with `cargo lambda build --release --output-format zip` or name it with --binary",
            binary.display()
        );
    }
    let times = cold_starts(&binary, &args.service, args.runs).await?;

    let median = times[times.len() / 2];
    let meets = median <= COLD_START_TARGET;
    let ratio = median.as_secs_f64() / COLD_START_TARGET.as_secs_f64();
    let verdict = if meets { "meets" } else { "MISSES" };
    all_meet &= meets;
    println!(
        "cold start: {} runs, start to first batch response: min {:.1} ms, median {:.1} ms, max {:.1} ms; median {ratio:.2} of the 50 ms target; {verdict} it",
        times.len(),
        times[0].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    if !all_meet {
        println!(
            "result:     at least one figure misses its target or was not measured (see above)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `underwrite serve` and the operations commands as an operator runs them:
//! the real binary on 127.0.0.1 at a port the system picks, a plain
//! HTTP/1.1 client over `TcpStream`, and a real SQLite file.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{command, text, underwrite};
use rusqlite::Connection;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-7f3a";

/// Creates a folder whose config runs only the audit service, which
/// subscribes to every event type, with fast retries.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "services": ["audit"],
        "queues": { "visibility_timeout_ms": 2000, "max_receive_count": 5, "batch_size": 10 }
    });
    std::fs::write(dir.path().join("underwrite.json"), config.to_string()).unwrap();
    dir
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(dir: &Path, args: &[&str], token: Option<&str>) -> Server {
        let mut command = command(dir);
        command
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("UNDERWRITE_API_TOKEN", token);
        }
        let mut child = command.spawn().expect("serve starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("Listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        Server { child, address }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the child's own pid.
        let result = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(result, 0, "signal sent");
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request on a new connection and reads the response
/// until the server closes it.
fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no response head in {raw:?}"),
        )
    })?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

fn get(address: &str, path: &str) -> Response {
    request(address, "GET", path, &[], "").unwrap()
}

fn post_events(address: &str, body: &str, token: Option<&str>) -> std::io::Result<Response> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/x-ndjson")];
    if let Some(value) = &authorization {
        headers.push(("Authorization", value));
    }
    request(address, "POST", "/v1/events", &headers, body)
}

/// Builds a `day.closed` event. The audit service handles it cheaply by
/// recording it in its ledger.
fn event(id: &str) -> String {
    json!({"id": id, "type": "day.closed", "occurred_at": "2024-03-01T23:00:00+05:30",
        "payload": {"business_date": "2024-03-01"}})
    .to_string()
}

fn batch(ids: &[String]) -> String {
    ids.iter().map(|id| event(id) + "\n").collect()
}

fn store(dir: &Path) -> Connection {
    let connection = Connection::open(dir.join("data/underwrite.db")).unwrap();
    connection.busy_timeout(Duration::from_secs(10)).unwrap();
    connection
}

fn count(dir: &Path, sql: &str) -> i64 {
    store(dir).query_row(sql, [], |row| row.get(0)).unwrap()
}

fn handled_ids(dir: &Path) -> Vec<String> {
    let connection = store(dir);
    let mut statement = connection
        .prepare("SELECT event_id FROM idempotency WHERE service = 'audit' ORDER BY event_id")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until the audit service has handled `expected` events, failing
/// after `limit`.
fn wait_handled(dir: &Path, expected: i64, limit: Duration) {
    let started = Instant::now();
    loop {
        let handled = count(
            dir,
            "SELECT COUNT(*) FROM idempotency WHERE service = 'audit'",
        );
        if handled >= expected {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "only {handled} of {expected} events handled after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_endpoint_answers() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[], None);
    let address = server.address.clone();

    let healthz = get(&address, "/healthz");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    assert_eq!(healthz.json()["status"], "ok");
    let readyz = get(&address, "/readyz");
    assert_eq!(readyz.status, 200, "{}", readyz.body);

    let accepted = post_events(&address, &batch(&["e1".into(), "e2".into()]), None).unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.json()["accepted"], 2);
    let array = format!("[{},{}]", event("e3"), event("e4"));
    let accepted = request(
        &address,
        "POST",
        "/v1/events",
        &[("Content-Type", "application/json")],
        &array,
    )
    .unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    wait_handled(dir.path(), 4, Duration::from_secs(30));

    for path in ["/health", "/v1/health"] {
        let health = get(&address, path);
        assert_eq!(health.status, 200, "{}", health.body);
        assert_eq!(
            health.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let body = health.json();
        assert_eq!(body["status"], "ok", "{body}");
        let names: Vec<&str> = body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for name in ["bus", "store", "service", "supervisor"] {
            assert!(names.contains(&name), "{path} lacks {name}: {body}");
        }
        assert_eq!(body["runtime"]["store_circuit"]["state"], "closed");
    }

    let metrics = get(&address, "/v1/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        metrics.body.contains("underwrite_events_handled_total 4\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("underwrite_events_ingested_total 4\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains(
            "underwrite_handle_duration_seconds_count{service=\"audit\",event_type=\"day.closed\"} 4\n"
        ),
        "{}",
        metrics.body
    );

    let invalid = format!(
        "{}\n{{\"id\":\"e6\",\"type\":\"day.closed\"}}\n",
        event("e5")
    );
    let rejected = post_events(&address, &invalid, None).unwrap();
    assert_eq!(rejected.status, 400, "{}", rejected.body);
    let body = rejected.json();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nothing was published"),
        "{body}"
    );
    let reason = body["invalid"][0].as_str().unwrap();
    assert!(reason.starts_with("line 2: "), "{reason}");
    assert!(
        reason.contains("occurred_at"),
        "the missing field is named: {reason}"
    );

    let missing = get(&address, "/v1/nothing");
    assert_eq!(missing.status, 404);

    server.signal(libc::SIGTERM);
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM idempotency WHERE event_id = 'e5'"
        ),
        0,
        "a rejected request publishes nothing"
    );
}

#[test]
fn auth_requires_right_token() {
    let dir = workspace();
    let output = underwrite(dir.path(), &["serve", "--port", "0", "--require-auth"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("--require-auth is set but UNDERWRITE_API_TOKEN is empty or unset"),
        "{}",
        text(&output)
    );

    let server = Server::start(dir.path(), &["--require-auth"], Some(TOKEN));
    let address = server.address.clone();
    let body = batch(&["a1".into()]);
    let missing = post_events(&address, &body, None).unwrap();
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = post_events(&address, &body, Some("test-token-7f3b")).unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let short = post_events(&address, &body, Some("t")).unwrap();
    assert_eq!(short.status, 401, "{}", short.body);
    let basic = request(
        &address,
        "POST",
        "/v1/events",
        &[("Authorization", TOKEN)],
        &body,
    )
    .unwrap();
    assert_eq!(
        basic.status, 401,
        "a token without the Bearer scheme is refused"
    );
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM queue_messages"),
        0,
        "refused requests publish nothing"
    );
    let right = post_events(&address, &body, Some(TOKEN)).unwrap();
    assert_eq!(right.status, 202, "{}", right.body);
    assert_eq!(
        get(&address, "/healthz").status,
        200,
        "probes need no token"
    );
}

#[test]
fn burst_of_50000_loses_nothing() {
    let dir = workspace();
    // A limit far above the send rate: no request may be refused.
    let server = Server::start(dir.path(), &["--rate-limit", "1000000"], None);
    let address = server.address.clone();
    let ids: Vec<String> = (0..50_000).map(|i| format!("burst-{i:05}")).collect();
    for chunk in ids.chunks(250) {
        let response = post_events(&address, &batch(chunk), None).unwrap();
        assert_eq!(response.status, 202, "{}", response.body);
    }
    wait_handled(dir.path(), 50_000, Duration::from_secs(600));
    let handled = handled_ids(dir.path());
    let expected: Vec<String> = ids
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(handled.len(), 50_000);
    assert_eq!(handled, expected, "every event handled once");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM dead_letters"), 0);
    server.signal(libc::SIGTERM);
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");

    // A limit far below the send rate: the first 5 requests of a second pass,
    // the rest are refused with Retry-After, and only accepted ones publish.
    let server = Server::start(dir.path(), &["--rate-limit", "5"], None);
    let address = server.address.clone();
    let started = Instant::now();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let id = format!("limited-{i:02}");
        let response = post_events(&address, &batch(std::slice::from_ref(&id)), None).unwrap();
        match response.status {
            202 => accepted.push(id),
            429 => {
                refused += 1;
                let retry_after: u64 = response
                    .header("retry-after")
                    .expect("429 carries Retry-After")
                    .parse()
                    .unwrap();
                assert_eq!(retry_after, 1);
            }
            other => panic!("unexpected status {other}: {}", response.body),
        }
        if i < 5 {
            assert_eq!(
                accepted.len(),
                i + 1,
                "requests within the limit are accepted"
            );
        }
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        refused > 0,
        "40 requests in {seconds} s exceed 5 per second"
    );
    assert!(
        accepted.len() <= 5 * (seconds + 1),
        "{} accepted in {seconds} s",
        accepted.len()
    );
    wait_handled(
        dir.path(),
        50_000 + accepted.len() as i64,
        Duration::from_secs(60),
    );
    let limited = count(
        dir.path(),
        "SELECT COUNT(*) FROM idempotency WHERE service = 'audit' AND event_id LIKE 'limited-%'",
    );
    assert_eq!(limited, accepted.len() as i64);
}

#[test]
fn sigterm_mid_burst_loses_nothing() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[], None);
    let address = server.address.clone();
    let sender = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut refused = 0;
        for request_number in 0..2_000 {
            let ids: Vec<String> = (0..50)
                .map(|i| format!("term-{request_number:04}-{i:02}"))
                .collect();
            match post_events(&address, &batch(&ids), None) {
                Ok(response) if response.status == 202 => accepted.extend(ids),
                Ok(response) if response.status == 503 => refused += 1,
                Ok(response) => panic!("unexpected status {}: {}", response.status, response.body),
                // The server has closed its listener.
                Err(_) => break,
            }
        }
        (accepted, refused)
    });
    // Let the burst and the handling get going, then stop the server.
    wait_handled(dir.path(), 2_000, Duration::from_secs(120));
    server.signal(libc::SIGTERM);
    let (accepted, _refused) = sender.join().unwrap();
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Received SIGTERM"), "{stderr}");
    assert!(accepted.len() >= 2_000, "the burst was under way");

    // Restart and handle what was left in the queue.
    let output = underwrite(dir.path(), &["run", "--until-idle"]);
    assert!(output.status.success(), "{}", text(&output));
    let handled = handled_ids(dir.path());
    let expected: Vec<String> = accepted
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        handled.len(),
        accepted.len(),
        "no event lost or handled twice"
    );
    assert_eq!(handled, expected);
    let ledger = count(
        dir.path(),
        "SELECT COUNT(*) FROM kv WHERE key LIKE 'audit/entry/%'",
    );
    assert_eq!(
        ledger,
        accepted.len() as i64,
        "one ledger entry per accepted event"
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM queue_messages WHERE queue = 'audit'"
        ),
        0
    );
    let verify = underwrite(dir.path(), &["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn sigint_stops_server() {
    let dir = workspace();
    let server = Server::start(dir.path(), &["--shutdown-timeout", "2"], None);
    assert_eq!(get(&server.address, "/healthz").status, 200);
    server.signal(libc::SIGINT);
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Received SIGINT"), "{stderr}");
}

#[test]
fn health_and_metrics_report_runs() {
    let dir = workspace();
    let output = underwrite(dir.path(), &["health"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    for prefix in ["bus ", "store ", "service ", "supervisor ", "summary: ok"] {
        assert!(
            out.lines().any(|l| l.starts_with(prefix)),
            "no {prefix:?} line: {out}"
        );
    }
    assert!(out.contains("circuit closed"), "{out}");

    let lines: String = (0..3).map(|i| event(&format!("m{i}")) + "\n").collect();
    std::fs::write(dir.path().join("events.jsonl"), lines).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "events.jsonl", "--until-idle"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = underwrite(dir.path(), &["metrics"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    let value = |name: &str| -> String {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {name} line: {out}"))
            .to_string()
    };
    assert_eq!(value("events.handled"), "3");
    assert_eq!(value("events.failed"), "0");
    assert_eq!(value("authz.failures"), "0");
    assert_eq!(value("store.io_error"), "0");
    assert_eq!(value("events.emitted"), "0");
    let timer = out
        .lines()
        .find(|l| l.starts_with("audit") && l.contains("day.closed"))
        .unwrap_or_else(|| panic!("no audit timer: {out}"));
    assert_eq!(timer.split_whitespace().nth(2), Some("3"), "{timer}");
    assert!(out.contains("summary: 3 handled"), "{out}");

    let prometheus = text(&underwrite(dir.path(), &["metrics", "--prometheus"]));
    assert!(
        prometheus.contains("underwrite_events_handled_total 3\n"),
        "{prometheus}"
    );

    let output = underwrite(dir.path(), &["health"]);
    let out = text(&output);
    assert!(out.contains("audit: running, circuit closed"), "{out}");
    assert!(out.contains("from `underwrite run`"), "{out}");
    assert!(
        out.contains("last state, stopped at"),
        "the run has ended: {out}"
    );
}

#[test]
fn config_layers_and_init() {
    let dir = tempfile::tempdir().unwrap();
    let output = underwrite(dir.path(), &["init", "custom.json"]);
    assert!(output.status.success(), "{}", text(&output));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("custom.json")).unwrap())
            .unwrap();
    let services = written["services"].as_array().unwrap();
    assert!(services.contains(&json!("mechanism")));
    assert!(services.contains(&json!("audit")));
    assert!(written["_comments"]["recovery.auto_restart"].is_string());

    std::fs::write(
        dir.path().join("underwrite.json"),
        json!({"store_path": "base.db"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.staging.json"),
        json!({"store_path": "staging.db"}).to_string(),
    )
    .unwrap();
    let output = command(dir.path())
        .args(["health"])
        .env("UNDERWRITE_ENV", "staging")
        .output()
        .unwrap();
    assert!(text(&output).contains("staging.db"), "{}", text(&output));
    let output = command(dir.path())
        .args(["health"])
        .env("UNDERWRITE_ENV", "staging")
        .env("UNDERWRITE_STORE_PATH", "variable.db")
        .output()
        .unwrap();
    assert!(text(&output).contains("variable.db"), "{}", text(&output));

    let output = command(dir.path())
        .args(["health"])
        .env("UNDERWRITE_RECOVERY_AUTO_RESTART", "sometimes")
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(
        out.contains("UNDERWRITE_RECOVERY_AUTO_RESTART is \"sometimes\""),
        "{out}"
    );
    assert!(out.contains("recovery.auto_restart"), "{out}");
    assert!(out.contains("true or false"), "{out}");

    let output = command(dir.path())
        .args(["serve", "--port", "0"])
        .env("UNDERWRITE_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0")
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "invalid config stops serve: {out}"
    );
    assert!(
        out.contains("circuit_breaker.failure_threshold is 0: allowed values are 1 or more"),
        "{out}"
    );
    assert!(
        out.contains("UNDERWRITE_CIRCUIT_BREAKER_FAILURE_THRESHOLD"),
        "{out}"
    );
}

#[test]
fn restore_returns_to_backup() {
    let dir = workspace();
    let first: String = (0..5).map(|i| event(&format!("b{i}")) + "\n").collect();
    std::fs::write(dir.path().join("first.jsonl"), first).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "first.jsonl", "--until-idle"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let dump = |dir: &Path| -> Vec<(String, String)> {
        let connection = store(dir);
        let mut statement = connection
            .prepare("SELECT key, value FROM kv ORDER BY key")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = dump(dir.path());
    assert!(!before.is_empty());
    let output = underwrite(dir.path(), &["backup", "backup.db"]);
    assert!(output.status.success(), "{}", text(&output));
    let output = underwrite(dir.path(), &["backup", "backup.db"]);
    assert!(
        text(&output).contains("already exists"),
        "{}",
        text(&output)
    );

    let second: String = (0..5).map(|i| event(&format!("c{i}")) + "\n").collect();
    std::fs::write(dir.path().join("second.jsonl"), second).unwrap();
    let output = underwrite(
        dir.path(),
        &["run", "--input", "second.jsonl", "--until-idle"],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_ne!(
        dump(dir.path()),
        before,
        "the store changed after the backup"
    );

    let output = underwrite(dir.path(), &["restore", "missing.db"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("missing.db not found"),
        "{}",
        text(&output)
    );
    std::fs::write(dir.path().join("not-a-store.db"), "hello").unwrap();
    let output = underwrite(dir.path(), &["restore", "not-a-store.db"]);
    assert!(
        text(&output).contains("is not an underwrite backup"),
        "{}",
        text(&output)
    );
    assert_ne!(
        dump(dir.path()),
        before,
        "a refused restore changes nothing"
    );

    let output = underwrite(dir.path(), &["restore", "backup.db"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(dump(dir.path()), before, "state equals the backup");
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM idempotency WHERE event_id LIKE 'c%'"
        ),
        0
    );
    let verify = underwrite(dir.path(), &["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

/// Polls `underwrite saga waiting --json` until it lists `saga`, and returns
/// its row.
fn wait_for_waiting(dir: &Path, saga: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let output = underwrite(dir, &["saga", "waiting", "--json"]);
        assert!(output.status.success(), "{}", text(&output));
        let found = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .find(|row| row["saga_id"] == saga);
        if let Some(row) = found {
            return row;
        }
        assert!(
            started.elapsed() < limit,
            "saga {saga} did not wait within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn posted_application_runs_its_saga() {
    use underwrite_tests::origination::{application, consent_granted};
    let dir = tempfile::tempdir().unwrap();
    // Every service, so that the origination saga can run.
    let config = json!({
        "queues": { "visibility_timeout_ms": 2000, "max_receive_count": 5, "batch_size": 10 }
    });
    std::fs::write(dir.path().join("underwrite.json"), config.to_string()).unwrap();
    let server = Server::start(dir.path(), &["--shutdown-timeout", "2"], None);

    let body = [
        consent_granted("C-B1", "B1", "2024-06-01", "2025-05-31"),
        application("A1", "B1", "2024-06-07"),
    ]
    .join("\n");
    let accepted = post_events(&server.address, &body, None).unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let row = wait_for_waiting(dir.path(), "A1", Duration::from_secs(30));
    assert_eq!(row["waits_for"], "kfs.accepted");
    let proposal = row["proposal_number"].as_str().unwrap().to_string();

    // An acceptance for an application the server never received is
    // rejected whole.
    let acceptance = |id: &str, proposal: &str| {
        json!({
            "id": format!("accept-{id}"), "type": "kfs.accepted",
            "occurred_at": "2024-06-07T15:00:00+05:30",
            "payload": { "application_id": id, "proposal_number": proposal, "accepted_on": "2024-06-07" },
        })
        .to_string()
    };
    let rejected =
        post_events(&server.address, &acceptance("A9", "KFS-A9-20240607"), None).unwrap();
    assert_eq!(rejected.status, 400, "{}", rejected.body);
    assert!(
        rejected.body.contains("which has no origination saga"),
        "{}",
        rejected.body
    );
    // So is one that names another KFS than the one issued.
    let rejected =
        post_events(&server.address, &acceptance("A1", "KFS-A1-20240610"), None).unwrap();
    assert_eq!(rejected.status, 400, "{}", rejected.body);
    assert!(
        rejected.body.contains("but the KFS issued for it is"),
        "{}",
        rejected.body
    );

    let accepted = post_events(&server.address, &acceptance("A1", &proposal), None).unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let started = Instant::now();
    loop {
        let list = text(&underwrite(dir.path(), &["saga", "list"]));
        if list.contains("1 sagas: 1 completed") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "A1 did not complete: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let steps = text(&underwrite(dir.path(), &["saga", "show", "A1"]));
    assert!(steps.contains("loan.disbursed"), "{steps}");
    server.signal(libc::SIGTERM);
    let (status, stderr) = server.wait();
    assert!(status.success(), "{stderr}");
}

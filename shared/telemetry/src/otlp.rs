//! OTLP/HTTP export of log records as JSON (the OpenTelemetry protocol's
//! JSON encoding of `ExportLogsServiceRequest`, POSTed to `/v1/logs`).
//!
//! Export is on when `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` (the full URL) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, to which `/v1/logs` is added)
//! is set. `OTEL_SERVICE_NAME` names the resource (`underwrite` by default).
//! Records pass the same level filter and redaction as the log lines. A
//! background thread sends them in batches of up to 512, at least once a
//! second, and a full buffer of 10,000 records drops new ones.
//!
//! NOTE: only plain `http://` endpoints are supported, such as a collector
//! on the same host or in the same pod; TLS would need a TLS client
//! dependency, so an `https://` endpoint is rejected at start-up.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tracing::field::Visit;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::format::{CARRIED, JsonFields, carried_from_scope};
use crate::redact::redact;

const BATCH_RECORDS: usize = 512;
const BATCH_INTERVAL: Duration = Duration::from_secs(1);
const BUFFER_RECORDS: usize = 10_000;
const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// An `http://host:port/path` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port; 80 when the URL names none.
    pub port: u16,
    /// Request path, such as `/v1/logs`.
    pub path: String,
}

impl Endpoint {
    /// Parses a full `http://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("invalid OTLP endpoint {url:?}: only http:// URLs are supported, such as http://127.0.0.1:4318")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("invalid OTLP endpoint {url:?}: port {port:?} is not a number from 0 to 65535"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!(
                "invalid OTLP endpoint {url:?}: the host is missing"
            ));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

enum Message {
    Record(Value),
    Flush(SyncSender<()>),
}

/// The exporter's background thread and the channel records are sent on.
/// Dropping it sends the buffered records and stops the thread.
pub struct Exporter {
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts an exporter from the `OTEL_*` variables, or returns `None`
    /// when no endpoint is set.
    pub fn from_env() -> Result<Option<Exporter>, String> {
        let url = match (
            std::env::var("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Ok(full), _) if !full.is_empty() => full,
            (_, Ok(base)) if !base.is_empty() => format!("{}/v1/logs", base.trim_end_matches('/')),
            _ => return Ok(None),
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "underwrite".into());
        Exporter::start(&url, &service).map(Some)
    }

    /// Starts an exporter that POSTs to the full URL `url`, naming the
    /// resource `service_name`.
    pub fn start(url: &str, service_name: &str) -> Result<Exporter, String> {
        let endpoint = Endpoint::parse(url)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(BUFFER_RECORDS);
        let resource = json!({
            "attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]
        });
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(&endpoint, &resource, &receiver))
            .map_err(|error| format!("Failed to start the OTLP export thread: {error}"))?;
        Ok(Exporter {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Returns a layer that sends every enabled event to this exporter.
    pub fn layer(&self) -> OtlpLayer {
        OtlpLayer {
            sender: self.sender.clone().expect("sender lives until drop"),
        }
    }

    /// Sends the buffered records now, waiting for the send to end.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if let Some(sender) = &self.sender
            && sender.send(Message::Flush(done)).is_ok()
        {
            let _ = wait.recv_timeout(NETWORK_TIMEOUT * 2);
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.flush();
        // Layers hold clones of the sender, so the thread is not joined: it
        // ends with the process.
        self.sender.take();
        self.thread.take();
    }
}

fn export_loop(endpoint: &Endpoint, resource: &Value, receiver: &Receiver<Message>) {
    let mut batch: Vec<Value> = Vec::new();
    let mut first_at = Instant::now();
    let mut failures: u64 = 0;
    loop {
        let timeout = if batch.is_empty() {
            BATCH_INTERVAL
        } else {
            BATCH_INTERVAL.saturating_sub(first_at.elapsed())
        };
        let (send_now, done, stop) = match receiver.recv_timeout(timeout) {
            Ok(Message::Record(record)) => {
                if batch.is_empty() {
                    first_at = Instant::now();
                }
                batch.push(record);
                (batch.len() >= BATCH_RECORDS, None, false)
            }
            Ok(Message::Flush(done)) => (true, Some(done), false),
            Err(RecvTimeoutError::Timeout) => (true, None, false),
            Err(RecvTimeoutError::Disconnected) => (true, None, true),
        };
        if send_now && !batch.is_empty() {
            let records = std::mem::take(&mut batch);
            let count = records.len();
            let body = json!({
                "resourceLogs": [{
                    "resource": resource,
                    "scopeLogs": [{"scope": {"name": "underwrite"}, "logRecords": records}],
                }]
            });
            if let Err(error) = post(endpoint, &body.to_string()) {
                failures += 1;
                // The logger cannot log its own failures, so they go to
                // stderr: the first, then every hundredth.
                if failures == 1 || failures.is_multiple_of(100) {
                    eprintln!(
                        "OTLP export to http://{}:{}{} failed ({failures} failures so far): {error}; {count} log records dropped",
                        endpoint.host, endpoint.port, endpoint.path
                    );
                }
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if stop {
            return;
        }
    }
}

/// Sends one HTTP/1.1 POST and checks for a 2xx status.
fn post(endpoint: &Endpoint, body: &str) -> Result<(), String> {
    let address = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", endpoint.host))?;
    let mut stream = TcpStream::connect_timeout(&address, NETWORK_TIMEOUT)
        .map_err(|e| format!("connect failed: {e}"))?;
    stream
        .set_read_timeout(Some(NETWORK_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(NETWORK_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        endpoint.path,
        endpoint.host,
        endpoint.port,
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send failed: {e}"))?;
    let mut response = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut response);
    let status_line = String::from_utf8_lossy(&response);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!(
            "the collector answered {:?}",
            status_line.lines().next().unwrap_or("nothing")
        ))
    }
}

/// Turns each enabled event into an OTLP log record for the exporter.
pub struct OtlpLayer {
    sender: SyncSender<Message>,
}

fn severity_number(level: &Level) -> u8 {
    // OTLP SeverityNumber: the first value of each range.
    match *level {
        Level::TRACE => 1,
        Level::DEBUG => 5,
        Level::INFO => 9,
        Level::WARN => 13,
        Level::ERROR => 17,
    }
}

fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::Bool(b) => json!({"boolValue": b}),
        // OTLP/JSON encodes 64-bit integers as decimal strings.
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::String(s) => json!({"stringValue": redact(s)}),
        other => json!({"stringValue": redact(&other.to_string())}),
    };
    json!({"key": key, "value": value})
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let mut visited = JsonFields::default();
        event.record(&mut visited as &mut dyn Visit);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut attributes = vec![
            attribute("target", &metadata.target().into()),
            attribute("code.namespace", &metadata.module_path().into()),
            attribute("code.lineno", &metadata.line().into()),
        ];
        let mut trace_id = None;
        for name in CARRIED {
            let value = match visited.fields.remove(name) {
                Some(Value::String(text)) => Some(text),
                Some(other) => Some(other.to_string()),
                None => carried_from_scope(ctx.event_scope(event), name),
            };
            if let Some(value) = value {
                if name == "trace_id" {
                    trace_id = Some(value.clone());
                }
                attributes.push(attribute(name, &value.into()));
            }
        }
        for (key, value) in &visited.fields {
            attributes.push(attribute(key, value));
        }
        let mut record = json!({
            "timeUnixNano": nanos.to_string(),
            "severityNumber": severity_number(metadata.level()),
            "severityText": metadata.level().as_str(),
            "body": {"stringValue": redact(&visited.message.unwrap_or_default())},
            "attributes": attributes,
        });
        if let Some(trace_id) =
            trace_id.filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            record["traceId"] = trace_id.into();
        }
        // A full buffer drops the record rather than block the caller.
        let _ = self.sender.try_send(Message::Record(record));
    }
}

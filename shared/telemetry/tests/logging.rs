//! The logger as the binaries build it, writing into a buffer: JSON lines,
//! span ids, redaction, and OTLP export to a receiver on 127.0.0.1.

use std::io::{BufRead as _, BufReader, Read as _, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{info, info_span, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use underwrite_telemetry::build_subscriber;
use underwrite_telemetry::otlp::{Endpoint, Exporter};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CapturedWriter(self.0.clone())
    }
}

fn capture(json: bool, level: &str, body: impl FnOnce()) -> String {
    let captured = Captured::default();
    let subscriber = build_subscriber(EnvFilter::new(level), json, captured.clone(), None);
    tracing::subscriber::with_default(subscriber, body);
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

const TRACE_ID: &str = "01890a5dac96774bbcceb302099a8057";

#[test]
fn json_line_has_required_keys() {
    let out = capture(true, "info", || {
        let span = info_span!(
            "record",
            service = "npa",
            event_id = "pay-1",
            event_type = "repayment.received",
            correlation_id = "disb-L1",
            trace_id = TRACE_ID
        );
        let _entered = span.enter();
        warn!(
            error_code = "rule_violation",
            "Moved a failed event to the dead-letter queue."
        );
    });
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let line = &lines[0];
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["target"], "logging");
    assert_eq!(
        line["message"],
        "Moved a failed event to the dead-letter queue."
    );
    assert_eq!(line["module"], "logging");
    assert!(line["line"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(line["correlation_id"], "disb-L1");
    assert_eq!(line["trace_id"], TRACE_ID);
    assert_eq!(line["event_id"], "pay-1");
    assert_eq!(line["event_type"], "repayment.received");
    assert_eq!(line["service"], "npa");
    assert_eq!(line["span"], "record");
    assert_eq!(line["fields"]["error_code"], "rule_violation");
}

#[test]
fn event_fields_win_over_span_fields() {
    let out = capture(true, "info", || {
        let span = info_span!("record", correlation_id = "outer");
        let _entered = span.enter();
        warn!(correlation_id = "inner", "Rejected an event.");
    });
    assert_eq!(json_lines(&out)[0]["correlation_id"], "inner");
}

#[test]
fn filtered_span_leaves_ids_null() {
    // At `warn`, INFO spans are disabled and never created.
    let out = capture(true, "warn", || {
        let span = info_span!("record", correlation_id = "disb-L1", trace_id = TRACE_ID);
        assert!(span.is_disabled());
        let _entered = span.enter();
        info!("Handled an event.");
        warn!("Handling failed; the event will be retried.");
    });
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["correlation_id"], Value::Null);
    assert_eq!(lines[0]["trace_id"], Value::Null);
}

fn log_personal_data() {
    warn!(
        pan = "ABCPE1234F",
        aadhaar = "2345 6789 0123",
        mobile = "+91 9876543210",
        email = "priya@example.in",
        account = "account 50100012345678",
        password = "hunter2",
        api_key = 12345,
        "Borrower ABCPE1234F at priya@example.in, phone 09876543210, sent Bearer abc.def.ghi"
    );
}

const LEAKS: [&str; 8] = [
    "ABCPE1234F",
    "2345 6789 0123",
    "9876543210",
    "priya@example.in",
    "50100012345678",
    "hunter2",
    "abc.def.ghi",
    "09876543210",
];

#[test]
fn json_lines_are_redacted() {
    let out = capture(true, "info", log_personal_data);
    for leak in LEAKS {
        assert!(!out.contains(leak), "{leak} leaked: {out}");
    }
    let line = &json_lines(&out)[0];
    assert_eq!(line["fields"]["pan"], "[REDACTED:pan]");
    assert_eq!(line["fields"]["aadhaar"], "[REDACTED:aadhaar]");
    assert_eq!(line["fields"]["mobile"], "[REDACTED:phone]");
    assert_eq!(line["fields"]["email"], "[REDACTED:email]");
    assert_eq!(line["fields"]["account"], "account [REDACTED:account]");
    assert_eq!(line["fields"]["password"], "[REDACTED:secret]");
    assert_eq!(line["fields"]["api_key"], "[REDACTED:secret]");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("Bearer [REDACTED:secret]"),
        "{line}"
    );
}

#[test]
fn text_lines_are_redacted() {
    let out = capture(false, "info", log_personal_data);
    for leak in LEAKS {
        assert!(!out.contains(leak), "{leak} leaked: {out}");
    }
    assert!(out.contains("pan=\"[REDACTED:pan]\""), "{out}");
    assert!(out.contains("password=\"[REDACTED:secret]\""), "{out}");
    assert!(out.contains("api_key=[REDACTED:secret]"), "{out}");
}

#[test]
fn ordinary_fields_are_unchanged() {
    let out = capture(true, "info", || {
        info!(
            amount = "20000.00",
            principal_paise = 2_000_000_000_u64,
            business_date = "2024-03-31",
            occurred_at = "2024-03-31T20:00:00+05:30",
            event_id = "01890a5d-ac96-774b-bcce-302099180578",
            loan_id = "L-9876543210",
            key_id = "npa:0a1b2c3d4e5f6789",
            "Handled an event for loan L-9876543210 dated 2024-03-31."
        );
    });
    let line = &json_lines(&out)[0];
    assert_eq!(line["fields"]["amount"], "20000.00");
    assert_eq!(line["fields"]["principal_paise"], 2_000_000_000_u64);
    assert_eq!(line["fields"]["business_date"], "2024-03-31");
    assert_eq!(line["fields"]["occurred_at"], "2024-03-31T20:00:00+05:30");
    assert_eq!(line["event_id"], "01890a5d-ac96-774b-bcce-302099180578");
    assert_eq!(line["fields"]["loan_id"], "L-9876543210");
    assert_eq!(line["fields"]["key_id"], "npa:0a1b2c3d4e5f6789");
    assert_eq!(
        line["message"],
        "Handled an event for loan L-9876543210 dated 2024-03-31."
    );
}

/// Accepts one request on 127.0.0.1, responds with 200 and returns the request
/// line and body.
fn receive_one(listener: TcpListener) -> std::thread::JoinHandle<(String, String)> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        (
            request_line.trim_end().to_string(),
            String::from_utf8(body).unwrap(),
        )
    })
}

#[test]
fn otlp_export_posts_redacted_records() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/logs", listener.local_addr().unwrap());
    let receiver = receive_one(listener);
    let exporter = Exporter::start(&url, "underwrite-test").unwrap();
    let subscriber = build_subscriber(
        EnvFilter::new("info"),
        true,
        Captured::default(),
        Some(exporter.layer()),
    );
    tracing::subscriber::with_default(subscriber, || {
        let span = info_span!("record", correlation_id = "disb-L1", trace_id = TRACE_ID);
        let _entered = span.enter();
        warn!(
            error_code = "authz_bad_signature",
            "Rejected an event from ABCPE1234F."
        );
    });
    exporter.flush();
    let (request_line, body) = receiver.join().unwrap();
    assert_eq!(request_line, "POST /v1/logs HTTP/1.1");
    let body: Value = serde_json::from_str(&body).unwrap();
    let resource = &body["resourceLogs"][0]["resource"]["attributes"][0];
    assert_eq!(resource["key"], "service.name");
    assert_eq!(resource["value"]["stringValue"], "underwrite-test");
    let records = &body["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
    assert_eq!(records.as_array().unwrap().len(), 1, "{body}");
    let record = &records[0];
    assert_eq!(
        record["body"]["stringValue"],
        "Rejected an event from [REDACTED:pan]."
    );
    assert_eq!(record["severityText"], "WARN");
    assert_eq!(record["severityNumber"], 13);
    assert_eq!(record["traceId"], TRACE_ID);
    assert!(record["timeUnixNano"].as_str().unwrap().len() >= 19);
    let attributes = record["attributes"].as_array().unwrap();
    let error_code = attributes
        .iter()
        .find(|a| a["key"] == "error_code")
        .unwrap();
    assert_eq!(error_code["value"]["stringValue"], "authz_bad_signature");
    let correlation = attributes
        .iter()
        .find(|a| a["key"] == "correlation_id")
        .unwrap();
    assert_eq!(correlation["value"]["stringValue"], "disb-L1");
}

#[test]
fn otlp_endpoint_must_be_http() {
    let error = Endpoint::parse("https://collector.invalid:4318/v1/logs").unwrap_err();
    assert!(error.contains("only http://"), "{error}");
    let error = Endpoint::parse("http://127.0.0.1:notaport/v1/logs").unwrap_err();
    assert!(error.contains("notaport"), "{error}");
    let endpoint = Endpoint::parse("http://127.0.0.1:4318/v1/logs").unwrap();
    assert_eq!(endpoint.port, 4318);
    assert_eq!(endpoint.path, "/v1/logs");
}

//! Logging for every underwrite binary: a level filter from
//! `UNDERWRITE_LOG_LEVEL`, text or JSON lines on stderr
//! (`UNDERWRITE_LOG_FORMAT=json`), redaction of personal identifiers and
//! secrets in every line, optional OTLP/HTTP export of log records, and
//! CloudWatch embedded metric format documents for Lambda.

#![warn(missing_docs)]

pub mod emf;
mod format;
pub mod otlp;
pub mod redact;

use std::io::Write;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

pub use format::{JsonFormat, SpanFieldsLayer};

/// Variable holding the level filter, in `tracing` directive syntax
/// (`info`, `warn,underwrite_runtime=debug`); `warn` when unset.
pub const LEVEL_VARIABLE: &str = "UNDERWRITE_LOG_LEVEL";

/// Level names `UNDERWRITE_LOG_LEVEL` accepts on their own.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Variable selecting the line format: `json`, or text when unset.
pub const FORMAT_VARIABLE: &str = "UNDERWRITE_LOG_FORMAT";

/// Keeps the OTLP exporter running; dropping it sends the records still
/// buffered.
#[must_use = "dropping the guard stops log export"]
pub struct LogGuard {
    _otlp: Option<otlp::Exporter>,
}

/// Installs the global logger on stderr from the environment. Fails on an
/// invalid level filter, format name or OTLP endpoint.
pub fn init_from_env() -> Result<LogGuard, String> {
    let filter = match std::env::var(LEVEL_VARIABLE) {
        // A bare word is read by EnvFilter as a target name, which turns
        // every other log line off; only the level names are accepted bare.
        Ok(text) if !text.contains(['=', ',']) && !LEVELS.contains(&text.trim().to_ascii_lowercase().as_str()) => {
            return Err(format!(
                "invalid {LEVEL_VARIABLE} {text:?}: allowed values are {}, or directives such as underwrite_runtime=debug",
                LEVELS.join(", ")
            ));
        }
        Ok(text) => EnvFilter::try_new(&text).map_err(|error| {
            format!("invalid {LEVEL_VARIABLE} {text:?}: {error}; use a level such as warn, info or debug")
        })?,
        Err(_) => EnvFilter::new("warn"),
    };
    let json = match std::env::var(FORMAT_VARIABLE).as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => {
            return Err(format!(
                "invalid {FORMAT_VARIABLE} {other:?}: allowed values are json and text"
            ));
        }
    };
    let exporter = otlp::Exporter::from_env()?;
    let otlp_layer = exporter.as_ref().map(otlp::Exporter::layer);
    let subscriber = build_subscriber(filter, json, std::io::stderr, otlp_layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|error| format!("Failed to install the logger: {error}"))?;
    Ok(LogGuard { _otlp: exporter })
}

/// Builds the logger: the level filter, span field capture, optional OTLP
/// export, and text or JSON lines redacted on their way to `writer`.
pub fn build_subscriber<W>(
    filter: EnvFilter,
    json: bool,
    writer: W,
    otlp: Option<otlp::OtlpLayer>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(SpanFieldsLayer)
        .with(otlp);
    let writer = RedactingWriter(writer);
    if json {
        Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonFormat)
                    .with_writer(writer),
            ),
        )
    } else {
        // Colour codes would split `name=value` pairs, so text lines are
        // written without them to keep redaction reliable.
        Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer),
            ),
        )
    }
}

/// Wraps a writer so that each formatted line is redacted before it is
/// written. The fmt layer writes one whole line per `write` call.
#[derive(Clone, Copy)]
pub struct RedactingWriter<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingWriter<M> {
    type Writer = Redacting<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(self.0.make_writer())
    }
}

/// A writer that redacts what passes through it.
pub struct Redacting<W>(W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

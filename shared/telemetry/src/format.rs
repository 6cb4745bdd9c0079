//! JSON log lines, and the span fields they carry.

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, Scope};

use crate::redact::is_secret_field;

/// Span fields copied to the top level of every log line and OTLP record
/// of an event inside the span.
pub(crate) const CARRIED: [&str; 5] = [
    "correlation_id",
    "trace_id",
    "event_id",
    "event_type",
    "service",
];

/// The carried fields of one span, stored in its extensions.
#[derive(Default)]
struct CarriedFields(Vec<(&'static str, String)>);

impl Visit for CarriedFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.keep(field, format!("{value:?}"));
    }
}

impl CarriedFields {
    fn keep(&mut self, field: &Field, value: String) {
        if let Some(name) = CARRIED.iter().find(|name| **name == field.name()) {
            self.0.retain(|(kept, _)| kept != name);
            self.0.push((name, value));
        }
    }
}

/// Records the carried fields of each span when it opens. Spans that the
/// level filter disables are never created, so this costs nothing for them.
pub struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = CarriedFields::default();
        attributes.record(&mut fields);
        if fields.0.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<CarriedFields>() {
            values.record(fields);
        } else {
            let mut fields = CarriedFields::default();
            values.record(&mut fields);
            if !fields.0.is_empty() {
                extensions.insert(fields);
            }
        }
    }
}

/// Returns the value of a carried field from the innermost span that has it.
pub(crate) fn carried_from_scope<S>(scope: Option<Scope<'_, S>>, name: &str) -> Option<String>
where
    S: for<'a> LookupSpan<'a>,
{
    scope?.find_map(|span| {
        span.extensions()
            .get::<CarriedFields>()
            .and_then(|fields| fields.0.iter().find(|(kept, _)| *kept == name))
            .map(|(_, value)| value.clone())
    })
}

/// An event's fields as JSON values, the message apart; fields named like a
/// secret are masked here, before any text redaction.
#[derive(Default)]
pub(crate) struct JsonFields {
    pub message: Option<String>,
    pub fields: Map<String, Value>,
}

impl JsonFields {
    fn put(&mut self, field: &Field, value: Value) {
        let value = if is_secret_field(field.name()) {
            Value::from("[REDACTED:secret]")
        } else {
            value
        };
        self.fields.insert(field.name().to_string(), value);
    }
}

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.put(field, value.into());
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        } else {
            self.put(field, format!("{value:?}").into());
        }
    }
}

/// One JSON object per line: `timestamp` (RFC 3339, UTC, milliseconds),
/// `level`, `target`, `message`, `module`, `line`, `correlation_id` and
/// `trace_id` (null outside a flow), `event_id`, `event_type` and `service`
/// when known, `span` (the innermost span's name) and the remaining event
/// fields under `fields`.
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut visited = JsonFields::default();
        event.record(&mut visited);
        let mut line = Map::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        line.insert(
            "message".into(),
            visited.message.take().unwrap_or_default().into(),
        );
        line.insert("module".into(), metadata.module_path().into());
        line.insert("line".into(), metadata.line().into());
        for name in CARRIED {
            let value = match visited.fields.remove(name) {
                Some(value) => Some(value),
                None => carried_from_scope(ctx.event_scope(), name).map(Value::from),
            };
            if value.is_some() || matches!(name, "correlation_id" | "trace_id") {
                line.insert(name.into(), value.unwrap_or(Value::Null));
            }
        }
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), span.name().into());
        }
        if !visited.fields.is_empty() {
            line.insert("fields".into(), Value::Object(visited.fields));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

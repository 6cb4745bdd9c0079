//! Input events, as a lender's core systems send them.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use serde_json::Value;
use underwrite_domain::BusinessDate;

use crate::envelope::{EVENT_FIELDS_HELP, Envelope, EventError, MAX_EVENT_BYTES};
use crate::ids::EventId;
use crate::payloads::{EventPayload, EventType};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputEvent {
    id: Option<Value>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
    occurred_at: Option<Value>,
    payload: Option<Value>,
    business_date: Option<Value>,
    version: Option<Value>,
}

fn string_field(field: &str, value: Value) -> Result<String, EventError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(EventError::InvalidField {
            field: field.to_string(),
            reason: format!("expected a JSON string, found {other}"),
        }),
    }
}

/// Parses one input event and completes its envelope: `business_date`
/// defaults to the IST date of `occurred_at` (for `day.closed`, to the date
/// it closes), `version` to 1, the source is `input`, the subject is the
/// loan id (or the date closed), and the correlation id is the event's own.
///
/// The payload is re-serialised from its typed form, so money and rates are
/// stored in their canonical text (`"5000.5"` becomes `"5000.50"`).
pub fn parse_input_line(line: &str) -> Result<Envelope, EventError> {
    if line.len() > MAX_EVENT_BYTES {
        return Err(EventError::Oversize {
            bytes: line.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    let raw: InputEvent =
        serde_json::from_str(line).map_err(|error| EventError::MalformedJson {
            reason: format!("{error}; {EVENT_FIELDS_HELP}"),
        })?;
    let id_text = string_field(
        "id",
        raw.id.ok_or(EventError::MissingField { field: "id" })?,
    )?;
    let id = EventId::parse(&id_text).map_err(|error| EventError::InvalidField {
        field: "id".into(),
        reason: error.to_string(),
    })?;
    let type_text = string_field(
        "type",
        raw.event_type
            .ok_or(EventError::MissingField { field: "type" })?,
    )?;
    let event_type = EventType::from_name(&type_text).ok_or_else(|| EventError::UnknownType {
        value: type_text.clone(),
        known: EventType::INPUT.map(|t| t.as_str()).join(", "),
    })?;
    if !EventType::INPUT.contains(&event_type) {
        return Err(EventError::InvalidField {
            field: "type".into(),
            reason: format!(
                "{type_text} is emitted by underwrite and cannot be sent in; input types are {}",
                EventType::INPUT.map(|t| t.as_str()).join(", ")
            ),
        });
    }
    let occurred_text = string_field(
        "occurred_at",
        raw.occurred_at.ok_or(EventError::MissingField {
            field: "occurred_at",
        })?,
    )?;
    let occurred_at = DateTime::<FixedOffset>::parse_from_rfc3339(&occurred_text).map_err(|_| EventError::InvalidField {
        field: "occurred_at".into(),
        reason: format!("{occurred_text:?} is not an RFC 3339 timestamp with offset, such as \"2024-03-31T20:00:00Z\""),
    })?;
    let payload_value = raw
        .payload
        .ok_or(EventError::MissingField { field: "payload" })?;
    let payload = EventPayload::parse(event_type, &payload_value).map_err(|reason| {
        EventError::InvalidPayload {
            event_type: event_type.as_str(),
            reason,
        }
    })?;
    let version = match raw.version {
        None => 1,
        Some(Value::Number(n)) if n.as_u64() == Some(1) => 1,
        Some(other) => {
            return Err(EventError::InvalidField {
                field: "version".into(),
                reason: format!("unsupported version {other}: this release reads version 1"),
            });
        }
    };
    let (subject, default_date) = match &payload {
        EventPayload::LoanDisbursed(p) => (
            p.loan_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::RepaymentReceived(p) => (
            p.loan_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::RepaymentReversed(p) => (
            p.loan_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::DayClosed(p) => (p.business_date.to_string(), p.business_date),
        EventPayload::ApplicationReceived(p) => (
            p.application_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::ConsentGranted(p) => (
            p.principal_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::ConsentWithdrawn(p) => (
            p.principal_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::RiskScored(p) => (
            p.application_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::KfsAccepted(p) => (
            p.application_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        EventPayload::CoolingOffExitRequested(p) => (
            p.loan_id.to_string(),
            BusinessDate::of_instant(&occurred_at),
        ),
        other => unreachable!("{:?} is not an input type", other.event_type()),
    };
    let business_date = match raw.business_date {
        None => default_date,
        Some(value) => {
            let text = string_field("business_date", value)?;
            text.parse()
                .map_err(
                    |error: underwrite_domain::date::DateError| EventError::InvalidField {
                        field: "business_date".into(),
                        reason: error.to_string(),
                    },
                )?
        }
    };
    Ok(Envelope {
        correlation_id: id.clone(),
        id,
        event_type: type_text,
        version,
        source: "input".into(),
        subject,
        occurred_at,
        business_date,
        causation_id: None,
        payload: payload.to_value(),
        signature: None,
        key_id: None,
    })
}

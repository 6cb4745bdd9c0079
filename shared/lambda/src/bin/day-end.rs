//! The day-end function: EventBridge Scheduler invokes it at 00:00
//! Asia/Kolkata, and it closes the business date that just ended by
//! publishing `day.closed` to the queues of the services that subscribe to
//! it. RBI's IRACP norms count days past due per calendar day, so the IST
//! date decides when a day is over.
//!
//! An invocation payload with `{"business_date": "YYYY-MM-DD"}` closes that
//! date instead (a catch-up after an outage). The event id derives from the
//! date, so closing a date twice is handled once by each service.

use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tracing::info;
use underwrite_events::{Envelope, parse_input_line};
use underwrite_identity::INGEST_IDENTITY;
use underwrite_lambda::start::{Backend, backend};
use underwrite_runtime::ports::Outbound;

/// IST is UTC+05:30 all year.
const IST_OFFSET_SECONDS: i32 = 5 * 3600 + 30 * 60;

/// Returns the IST calendar date before the current one: at midnight IST,
/// the date that has just ended.
fn ended_business_date() -> String {
    let ist = chrono::FixedOffset::east_opt(IST_OFFSET_SECONDS).expect("IST is a valid offset");
    let today = chrono::Utc::now().with_timezone(&ist).date_naive();
    today
        .pred_opt()
        .expect("the current date has a predecessor")
        .to_string()
}

/// Builds the `day.closed` event of `date`, validated as any input event.
fn day_closed(date: &str) -> Result<Envelope, String> {
    let line = json!({
        "id": format!("close-{date}"),
        "type": "day.closed",
        "occurred_at": format!("{date}T23:59:59+05:30"),
        "business_date": date,
        "payload": {"business_date": date},
    });
    parse_input_line(&line.to_string()).map_err(|error| {
        format!("invalid business_date {date:?}: {error}; give a date as YYYY-MM-DD")
    })
}

async fn close(backend: &Backend, payload: Value) -> Result<Value, lambda_runtime::Error> {
    let date = match payload.get("business_date") {
        None | Some(Value::Null) => ended_business_date(),
        Some(Value::String(date)) => date.clone(),
        Some(other) => {
            return Err(format!(
                "invalid business_date {other}: give a date as a string, such as \"2025-06-30\""
            )
            .into());
        }
    };
    let mut event = day_closed(&date)?;
    if let Some(authority) = &backend.authority {
        authority.sign(INGEST_IDENTITY, &mut event)?;
    }
    backend.bus.publish(&[Outbound::from_event(&event)]).await?;
    info!(business_date = %date, event_id = %event.id, "Closed the business date.");
    Ok(json!({"business_date": date, "event_id": event.id.as_str()}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    let _logs = underwrite_telemetry::init_from_env()?;
    let backend = Arc::new(backend(INGEST_IDENTITY).await.inspect_err(|error| {
        tracing::error!(error_code = "invalid_config", %error, "The function cannot start.");
    })?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let backend = backend.clone();
        async move { close(&backend, event.payload).await }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_closed_is_an_input_event() {
        let event = day_closed("2025-06-30").unwrap();
        assert_eq!(event.event_type, "day.closed");
        assert_eq!(event.id.as_str(), "close-2025-06-30");
        assert_eq!(event.business_date.to_string(), "2025-06-30");
    }

    #[test]
    fn bad_date_is_rejected() {
        let error = day_closed("30-06-2025").unwrap_err();
        assert!(error.contains("\"30-06-2025\""), "{error}");
        assert!(error.contains("YYYY-MM-DD"), "{error}");
    }

    #[test]
    fn ended_date_is_before_today_in_ist() {
        let date: chrono::NaiveDate = ended_business_date().parse().unwrap();
        let ist = chrono::FixedOffset::east_opt(IST_OFFSET_SECONDS).unwrap();
        let today = chrono::Utc::now().with_timezone(&ist).date_naive();
        assert_eq!(date.succ_opt().unwrap(), today);
    }
}

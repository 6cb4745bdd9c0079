//! Every event type has a JSON fixture that parses and re-serialises to the
//! same canonical bytes.

use std::path::PathBuf;

use underwrite_events::{Envelope, EventType, canonical_bytes, parse_input_line};

fn fixture_path(event_type: EventType) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{}.json", event_type.as_str()))
}

fn sorted_compact(text: &str) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn every_type_round_trips() {
    for event_type in EventType::ALL {
        let text = std::fs::read_to_string(fixture_path(event_type)).unwrap();
        let envelope =
            Envelope::from_slice(text.as_bytes()).unwrap_or_else(|e| panic!("{event_type:?}: {e}"));
        assert_eq!(envelope.known_type().unwrap(), event_type);
        assert_eq!(envelope.typed().unwrap().event_type(), event_type);
        assert_eq!(
            envelope.to_json(),
            String::from_utf8(sorted_compact(&text)).unwrap(),
            "{event_type:?}"
        );
        let reparsed = Envelope::from_slice(envelope.to_json().as_bytes()).unwrap();
        assert_eq!(
            canonical_bytes(&reparsed),
            canonical_bytes(&envelope),
            "{event_type:?}"
        );
    }
}

#[test]
fn canonical_bytes_leave_out_signature() {
    let text = std::fs::read_to_string(fixture_path(EventType::DayClosed)).unwrap();
    let mut envelope = Envelope::from_slice(text.as_bytes()).unwrap();
    let unsigned = canonical_bytes(&envelope);
    envelope.signature = Some("c2ln".into());
    envelope.key_id = Some("npa-1".into());
    assert_eq!(canonical_bytes(&envelope), unsigned);
    // The full form keeps the signature, with its keys sorted too.
    let signed = envelope.to_json();
    assert_eq!(signed.as_bytes(), sorted_compact(&signed).as_slice());
    assert!(signed.contains(r#""key_id":"npa-1","#), "{signed}");
    assert!(signed.contains(r#""signature":"c2ln","#), "{signed}");
}

#[test]
fn input_types_parse_as_input_lines() {
    for event_type in EventType::INPUT {
        let text = std::fs::read_to_string(fixture_path(event_type)).unwrap();
        let full: serde_json::Value = serde_json::from_str(&text).unwrap();
        let line = serde_json::json!({
            "id": full["id"],
            "type": full["type"],
            "occurred_at": full["occurred_at"],
            "payload": full["payload"],
        });
        let parsed = parse_input_line(&line.to_string()).unwrap();
        assert_eq!(parsed.payload, full["payload"], "{event_type:?}");
        assert_eq!(
            parsed.subject,
            full["subject"].as_str().unwrap(),
            "{event_type:?}"
        );
        assert_eq!(
            parsed.business_date.to_string(),
            full["business_date"].as_str().unwrap(),
            "{event_type:?}"
        );
    }
}

#[test]
fn business_date_defaults_to_ist_date() {
    let line = r#"{"id":"p1","type":"repayment.received","occurred_at":"2024-03-31T20:00:00Z",
        "payload":{"loan_id":"L1","payment_id":"P1","amount":"10.00","value_date":"2024-03-31"}}"#;
    assert_eq!(
        parse_input_line(line).unwrap().business_date.to_string(),
        "2024-04-01"
    );
}

#[test]
fn money_is_normalised() {
    let line = r#"{"id":"p1","type":"repayment.received","occurred_at":"2024-03-31T20:00:00Z",
        "payload":{"loan_id":"L1","payment_id":"P1","amount":"5000.5","value_date":"2024-03-31"}}"#;
    assert_eq!(parse_input_line(line).unwrap().payload["amount"], "5000.50");
}

#[test]
fn bad_input_is_named() {
    let cases = [
        ("{not json", "malformed JSON"),
        (
            r#"{"type":"day.closed","occurred_at":"2024-01-01T00:00:00Z","payload":{}}"#,
            "missing field \"id\"",
        ),
        (
            r#"{"id":"x","type":"loan.exploded","occurred_at":"2024-01-01T00:00:00Z","payload":{}}"#,
            "unknown event type \"loan.exploded\"",
        ),
        (
            r#"{"id":"x","type":"repayment.received","occurred_at":"2024-01-01T00:00:00Z","payload":{"loan_id":"L1","payment_id":"P1","amount":5000.5,"value_date":"2024-01-01"}}"#,
            "money must be a JSON string",
        ),
        (
            r#"{"id":"x","type":"repayment.received","occurred_at":"2024-01-01T00:00:00Z","payload":{"loan_id":"L1","payment_id":"P1","amount":"5000.505","value_date":"2024-01-01"}}"#,
            "at most two decimals",
        ),
        (
            r#"{"id":"x","type":"repayment.received","occurred_at":"2024-01-01T00:00:00Z","payload":{"loan_id":"L1","payment_id":"P1","amount":"-10.00","value_date":"2024-01-01"}}"#,
            "must be greater than zero",
        ),
        (
            r#"{"id":"x","type":"loan.disbursed","occurred_at":"2024-01-01T00:00:00Z","payload":{"loan_id":"L1","borrower_id":"B1","product":"p","principal":"100.00","annual_rate":"12.00","tenor_months":0,"disbursed_on":"2024-01-01","first_due_date":"2024-02-01"}}"#,
            "invalid tenor_months 0",
        ),
        (
            r#"{"id":"x","type":"sma.classified","occurred_at":"2024-01-01T00:00:00Z","payload":{}}"#,
            "cannot be sent in",
        ),
        (
            r#"{"id":"x","type":"day.closed","occurred_at":"yesterday","payload":{"business_date":"2024-01-01"}}"#,
            "not an RFC 3339 timestamp",
        ),
        (
            r#"{"id":"x","type":"day.closed","occurred_at":"2024-01-01T00:00:00Z","payload":{"business_date":"2024-01-01"},"extra":1}"#,
            "unknown field `extra`",
        ),
    ];
    for (line, expected) in cases {
        let error = parse_input_line(line).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{line}\n  gave: {error}\n  expected: {expected}"
        );
    }
}

#[test]
fn oversize_line_is_rejected() {
    let line = format!(r#"{{"id":"x","pad":"{}"}}"#, "a".repeat(1024 * 1024));
    assert!(
        parse_input_line(&line)
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit")
    );
}

#[test]
fn events_doc_lists_every_type_and_field() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md"),
    )
    .unwrap();
    for event_type in EventType::ALL {
        let heading = format!("### `{}`", event_type.as_str());
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/events.md lacks {heading}"));
        let section_end = doc[start + heading.len()..]
            .find("### ")
            .map_or(doc.len(), |i| start + heading.len() + i);
        let section = &doc[start..section_end];
        let text = std::fs::read_to_string(fixture_path(event_type)).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        for field in fixture["payload"].as_object().unwrap().keys() {
            // npa.bucket.changed documents only its extra field; the rest are
            // those of sma.classified.
            let documented = section.contains(&format!("`{field}`"))
                || (event_type == EventType::NpaBucketChanged
                    && doc.contains(&format!("| `{field}` |")));
            assert!(
                documented,
                "docs/events.md does not document {field} of {}",
                event_type.as_str()
            );
        }
    }
}

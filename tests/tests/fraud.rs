//! The fraud service on the embedded runtime over a real SQLite file:
//! each rule at its threshold and one past it, redelivery, consent and
//! invalid applications.

use std::sync::Arc;

use serde_json::{Value, json};
use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_fraud::{FRAUD_PREFIX, Fraud};
use underwrite_runtime::{Service, Store};
use underwrite_tests::Harness;

fn fraud_harness() -> Harness {
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(Consent),
        Arc::new(Fraud::new(FraudPolicy::default())),
        Arc::new(Audit),
    ];
    Harness::with_services(services)
}

/// Grants `credit_assessment` consent to each borrower.
fn consents(borrowers: &[&str]) -> Vec<String> {
    borrowers
        .iter()
        .map(|borrower| {
            json!({
                "id": format!("grant-{borrower}"),
                "type": "consent.granted",
                "occurred_at": "2025-01-01T09:00:00+05:30",
                "payload": {
                    "consent_id": format!("C-{borrower}"), "principal_id": borrower,
                    "purposes": ["credit_assessment"], "data_items": ["pan", "phone", "income"],
                    "notice_version": "2025-11", "notice_language": "en",
                    "given_on": "2025-01-01", "expires_on": "2026-12-31",
                }
            })
            .to_string()
        })
        .collect()
}

/// An application that fires no rule under the default policy; `change`
/// edits its payload.
fn application(
    event_id: &str,
    application_id: &str,
    applied_on: &str,
    change: impl Fn(&mut Value),
) -> String {
    let mut payload = json!({
        "application_id": application_id, "borrower_id": "B1", "product": "personal",
        "amount": "100000.00", "tenor_months": 12, "rate_type": "fixed",
        "borrower_type": "individual", "purpose": "non_business",
        "applied_on": applied_on, "first_due_date": "2025-05-05",
        "pan": "ABCPE1234F", "applicant_name": "Ravi Kumar", "date_of_birth": "1990-05-20",
        "phone": "+919876543210", "device_id": "dev-1", "declared_monthly_income": "50000.00",
    });
    change(&mut payload);
    json!({
        "id": event_id,
        "type": "application.received",
        "occurred_at": format!("{applied_on}T10:00:00+05:30"),
        "payload": payload,
    })
    .to_string()
}

/// The fraud outcome of each application, in order: (type, application,
/// fired rules as "rule threshold observed").
async fn outcomes(harness: &Harness) -> Vec<(String, String, Vec<String>)> {
    harness
        .audited()
        .await
        .into_iter()
        .filter(|e| e.source == "fraud")
        .map(|e| {
            let rules = e.payload["rules"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .map(|r| {
                            format!(
                                "{} {} {}",
                                r["rule"].as_str().unwrap(),
                                r["threshold"].as_str().unwrap(),
                                r["observed"].as_str().unwrap()
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                e.event_type,
                e.payload["application_id"].as_str().unwrap().to_string(),
                rules,
            )
        })
        .collect()
}

fn cleared(application: &str) -> (String, String, Vec<String>) {
    ("fraud.cleared".into(), application.into(), Vec::new())
}

fn alert(application: &str, rules: &[&str]) -> (String, String, Vec<String>) {
    (
        "fraud.alert".into(),
        application.into(),
        rules.iter().map(|r| r.to_string()).collect(),
    )
}

async fn fraud_keys(harness: &Harness) -> usize {
    let store: &dyn Store = harness.store();
    store.scan(FRAUD_PREFIX, None, 100).await.unwrap().len()
}

#[tokio::test]
async fn clean_application_is_cleared() {
    let harness = fraud_harness();
    let mut lines = consents(&["B1"]);
    lines.push(application("e1", "APP1", "2025-03-31", |_| {}));
    harness.publish(&lines);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);

    let events = harness.audited().await;
    let cleared_event = events
        .iter()
        .find(|e| e.event_type == "fraud.cleared")
        .expect("fraud.cleared emitted");
    assert_eq!(cleared_event.subject, "APP1");
    assert_eq!(cleared_event.payload["assessed_on"], "2025-03-31");
    assert_eq!(
        cleared_event.payload["rules_checked"],
        json!([
            "pan_names",
            "pan_velocity",
            "phone_reuse",
            "device_reuse",
            "emi_income",
            "pan_format",
            "applicant_age"
        ])
    );
    // One record each for the PAN, the phone and the device.
    assert_eq!(fraud_keys(&harness).await, 3);
}

#[tokio::test]
async fn velocity_at_and_past_threshold_without_double_counting() {
    let harness = fraud_harness();
    let mut lines = consents(&["B1"]);
    lines.push(application("e1", "APP1", "2025-03-10", |_| {}));
    // The same application re-sent under a new event id, and the same event
    // delivered twice: neither is a new application.
    lines.push(application("e1-again", "APP1", "2025-03-10", |_| {}));
    lines.push(application("e1", "APP1", "2025-03-10", |_| {}));
    lines.push(application("e2", "APP2", "2025-03-20", |_| {}));
    // The third application in 30 days is at the threshold of 3.
    lines.push(application("e3", "APP3", "2025-03-31", |_| {}));
    harness.publish(&lines);
    harness.run().await;
    harness.publish(&[application("e4", "APP4", "2025-04-01", |_| {})]);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);
    assert_eq!(
        outcomes(&harness).await,
        vec![
            cleared("APP1"),
            cleared("APP1"),
            cleared("APP2"),
            cleared("APP3"),
            alert("APP4", &["pan_velocity 3 4"]),
        ]
    );
}

#[tokio::test]
async fn pan_with_second_name_fires() {
    let harness = fraud_harness();
    let mut lines = consents(&["B1"]);
    lines.push(application("e1", "APP1", "2025-03-01", |_| {}));
    // The same name written differently is the same name.
    lines.push(application("e2", "APP2", "2025-03-02", |p| {
        p["applicant_name"] = json!("RAVI  KUMAR.")
    }));
    harness.publish(&lines);
    harness.run().await;
    harness.publish(&[application("e3", "APP3", "2025-03-03", |p| {
        p["applicant_name"] = json!("Suresh Kumar")
    })]);
    harness.run().await;
    assert_eq!(
        outcomes(&harness).await,
        vec![
            cleared("APP1"),
            cleared("APP2"),
            alert("APP3", &["pan_names 1 2"]),
        ]
    );
}

#[tokio::test]
async fn phone_and_device_reuse_across_pans() {
    let harness = fraud_harness();
    let mut lines = consents(&["B1", "B2", "B3"]);
    lines.push(application("e1", "APP1", "2025-03-01", |_| {}));
    // A second PAN on the same phone (written without +91) and device is
    // at the threshold of 2.
    lines.push(application("e2", "APP2", "2025-03-02", |p| {
        p["borrower_id"] = json!("B2");
        p["pan"] = json!("BCDPF2345G");
        p["applicant_name"] = json!("Meena Rao");
        p["phone"] = json!("9876543210");
    }));
    harness.publish(&lines);
    harness.run().await;
    harness.publish(&[application("e3", "APP3", "2025-03-03", |p| {
        p["borrower_id"] = json!("B3");
        p["pan"] = json!("CDEPG3456H");
        p["applicant_name"] = json!("Imran Khan");
    })]);
    harness.run().await;
    assert_eq!(
        outcomes(&harness).await,
        vec![
            cleared("APP1"),
            cleared("APP2"),
            alert("APP3", &["phone_reuse 2 3", "device_reuse 2 3"]),
        ]
    );
}

#[tokio::test]
async fn alert_lists_each_rule_with_threshold_and_value() {
    let harness = fraud_harness();
    let mut lines = consents(&["B1"]);
    // ₹1,00,000 over 12 months at the assessment rate of 23% has an EMI of
    // ₹9,407.63: 47.04% of ₹20,000 is under 50%, 62.72% of ₹15,000 is not.
    lines.push(application("e1", "APP1", "2025-03-31", |p| {
        p["declared_monthly_income"] = json!("20000.00")
    }));
    lines.push(application("e2", "APP2", "2025-03-31", |p| {
        p["pan"] = json!("BCDZF2345G");
        p["applicant_name"] = json!("Tara Singh");
        p["phone"] = json!("+919812345678");
        p["device_id"] = json!("dev-2");
        p["date_of_birth"] = json!("2007-04-01");
        p["declared_monthly_income"] = json!("15000.00");
    }));
    harness.publish(&lines);
    harness.run().await;
    assert_eq!(
        outcomes(&harness).await,
        vec![
            cleared("APP1"),
            alert(
                "APP2",
                &[
                    "emi_income 50.00 62.72",
                    "pan_format AAAAA9999A with a holder type as the fourth character character 4 'Z' is not a holder type",
                    "applicant_age 18 to 65 17",
                ]
            ),
        ]
    );
}

#[tokio::test]
async fn missing_consent_changes_no_state() {
    let harness = fraud_harness();
    harness.publish(&[application("e1", "APP1", "2025-03-31", |_| {})]);
    harness.run().await;
    let dead = harness.store().dead_letters(Some("fraud")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_missing");
    assert!(
        dead[0]
            .error_message
            .contains("purpose \"credit_assessment\"")
    );
    assert_eq!(fraud_keys(&harness).await, 0);
    assert!(outcomes(&harness).await.is_empty());
}

#[tokio::test]
async fn invalid_application_is_dead_lettered_at_once() {
    let harness = fraud_harness();
    harness.publish(&consents(&["B1"]));
    harness.run().await;
    let line = application("e1", "APP1", "2025-03-31", |_| {});
    let mut envelope: Value = serde_json::from_str(&line).unwrap();
    envelope["payload"]["tenor_months"] = json!(0);
    let event: underwrite_events::Envelope = serde_json::from_value(json!({
        "id": "e1", "type": "application.received", "version": 1, "source": "input",
        "subject": "APP1", "occurred_at": "2025-03-31T10:00:00+05:30",
        "business_date": "2025-03-31", "correlation_id": "e1",
        "payload": envelope["payload"],
    }))
    .unwrap();
    harness.runtime.publish(&[event]).unwrap();
    harness.run().await;
    let dead = harness.store().dead_letters(Some("fraud")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "invalid_event");
    assert_eq!(dead[0].receive_count, 1);
    assert!(dead[0].error_message.contains("invalid tenor_months 0"));
    assert_eq!(fraud_keys(&harness).await, 0);
}

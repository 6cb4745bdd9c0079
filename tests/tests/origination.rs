//! Consent, pricing, KFS and fee services end to end on the embedded
//! runtime, over a real SQLite file.

use std::sync::Arc;

use serde_json::{Value, json};
use underwrite_audit::Audit;
use underwrite_domain::pricing::PenalPolicy;
use underwrite_domain::{BusinessDate, ProductCatalog};
use underwrite_events::{Envelope, parse_input_line};
use underwrite_fee::{Fee, FeeSettings};
use underwrite_kfs::{StoredKfs, kfs_key, require_accepted_kfs};
use underwrite_runtime::{Service, Store};
use underwrite_tests::origination::{
    application, application_payload, consent_granted, consent_withdrawn, origination, risk_scored,
};
use underwrite_tests::{Harness, days_closed, disbursal, repayment};

fn date(text: &str) -> BusinessDate {
    text.parse().unwrap()
}

async fn emitted(harness: &Harness, event_type: &str) -> Vec<Envelope> {
    harness
        .audited()
        .await
        .into_iter()
        .filter(|e| e.event_type == event_type)
        .collect()
}

#[tokio::test]
async fn application_priced_and_kfs_issued() {
    let harness = origination();
    harness.publish(&[
        consent_granted("C1", "B1", "2024-06-01", "2025-05-31"),
        application("APP1", "B1", "2024-06-07"),
    ]);
    harness.run().await;
    harness
        .runtime
        .publish(&[risk_scored("APP1", "A", "2024-06-07")])
        .unwrap();
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);

    let quotes = emitted(&harness, "pricing.quoted").await;
    assert_eq!(quotes.len(), 1);
    let quote = &quotes[0].payload["quote"];
    assert_eq!(quote["emi"], "969.73");
    assert_eq!(quote["net_disbursed"], "19600.00");
    assert_eq!(quote["apr"], "17.0705");
    assert_eq!(
        quote["prepayment"]["forbidden_by"],
        "floating_non_business_individual"
    );

    let issued = emitted(&harness, "kfs.issued").await;
    assert_eq!(issued.len(), 1);
    let kfs = &issued[0].payload;
    assert_eq!(kfs["proposal_number"], "KFS-APP1-20240607");
    assert_eq!(kfs["apr"], "17.07");
    assert_eq!(kfs["fees_to_lender"], "240.00");
    assert_eq!(kfs["fees_to_third_parties"], "160.00");
    // Issued on Friday 7 Jun 2024: Saturday 8, Monday 10, Tuesday 11.
    assert_eq!(kfs["valid_until"], "2024-06-11");

    let store: &dyn Store = harness.store();
    let stored: StoredKfs = store
        .get(&kfs_key("KFS-APP1-20240607"))
        .await
        .unwrap()
        .expect("KFS stored")
        .parse("kfs")
        .unwrap();
    assert!(stored.html_hi.contains("मुख्य तथ्य विवरण"));
    assert!(stored.html_hi.contains("17.07%"));
    assert!(stored.html_en.contains("Key Fact Statement"));

    let accepted = require_accepted_kfs(store, "KFS-APP1-20240607", date("2024-06-11")).await;
    assert_eq!(accepted.unwrap().proposal_number, "KFS-APP1-20240607");
    let expired = require_accepted_kfs(store, "KFS-APP1-20240607", date("2024-06-12"))
        .await
        .unwrap_err();
    assert!(!expired.is_retryable());
    assert_eq!(expired.code(), "kfs_expired");
    let unknown = require_accepted_kfs(store, "KFS-NONE", date("2024-06-10"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "kfs_not_found");
}

#[tokio::test]
async fn redelivered_scores_issue_one_kfs() {
    let harness = origination();
    harness.publish(&[
        consent_granted("C1", "B1", "2024-06-01", "2025-05-31"),
        application("APP1", "B1", "2024-06-07"),
    ]);
    harness.run().await;
    let scored = risk_scored("APP1", "A", "2024-06-07");
    harness
        .runtime
        .publish(std::slice::from_ref(&scored))
        .unwrap();
    harness.run().await;
    harness.runtime.publish(&[scored]).unwrap();
    harness.run().await;
    assert_eq!(emitted(&harness, "pricing.quoted").await.len(), 1);
    assert_eq!(emitted(&harness, "kfs.issued").await.len(), 1);
}

#[tokio::test]
async fn withdrawn_consent_stops_pricing() {
    let harness = origination();
    harness.publish(&[
        consent_granted("C1", "B1", "2024-06-01", "2025-05-31"),
        application("APP1", "B1", "2024-06-07"),
    ]);
    harness.run().await;
    harness.publish(&[consent_withdrawn("C1", "B1", "2024-06-07")]);
    harness.run().await;
    harness
        .runtime
        .publish(&[risk_scored("APP1", "A", "2024-06-07")])
        .unwrap();
    harness.run().await;

    assert!(emitted(&harness, "pricing.quoted").await.is_empty());
    let dead = harness.store().dead_letters(Some("pricing")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_withdrawn");
    assert_eq!(dead[0].receive_count, 1, "a permanent error is not retried");
    assert!(
        dead[0]
            .error_message
            .contains("purpose \"credit_assessment\""),
        "{}",
        dead[0].error_message
    );
}

#[tokio::test]
async fn expired_consent_stops_pricing() {
    let harness = origination();
    let mut lines = vec![consent_granted("C1", "B1", "2024-06-01", "2024-06-05")];
    lines.extend(days_closed("2024-06-04", "2024-06-06"));
    harness.publish(&lines);
    harness.run().await;

    let expired = emitted(&harness, "consent.expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].business_date, date("2024-06-05"));
    assert_eq!(expired[0].payload["consent_id"], "C1");
    assert_eq!(
        expired[0].payload["purposes"],
        json!(["credit_assessment", "loan_servicing"])
    );

    harness.publish(&[application("APP1", "B1", "2024-06-07")]);
    harness.run().await;
    let dead = harness.store().dead_letters(Some("pricing")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_expired");
    assert!(
        dead[0]
            .error_message
            .contains("purpose \"credit_assessment\""),
        "{}",
        dead[0].error_message
    );
}

#[tokio::test]
async fn missing_consent_is_retried_then_dead_lettered() {
    let harness = origination();
    harness.publish(&[application("APP1", "B9", "2024-06-07")]);
    harness.run().await;
    let dead = harness.store().dead_letters(Some("pricing")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_missing");
    assert_eq!(dead[0].receive_count, 3);
    assert!(
        dead[0]
            .error_message
            .contains("purpose \"credit_assessment\"")
    );
}

#[tokio::test]
async fn unknown_grade_is_dead_lettered() {
    let harness = origination();
    harness.publish(&[
        consent_granted("C1", "B1", "2024-06-01", "2025-05-31"),
        application("APP1", "B1", "2024-06-07"),
    ]);
    harness.run().await;
    harness
        .runtime
        .publish(&[risk_scored("APP1", "Z", "2024-06-07")])
        .unwrap();
    harness.run().await;
    let dead = harness.store().dead_letters(Some("pricing")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "unknown_grade");
    assert!(dead[0].error_message.contains("risk grade Z"));
}

#[test]
fn bad_applications_are_rejected_with_reasons() {
    let with_payload = |change: &dyn Fn(&mut Value)| {
        let mut payload = application_payload("APP1", "B1", "2024-06-07");
        change(&mut payload);
        json!({
            "id": "app-bad", "type": "application.received",
            "occurred_at": "2024-06-07T10:00:00+05:30", "payload": payload,
        })
        .to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with_payload(&|p| p["amount"] = json!(20000)),
            "money must be a JSON string such as \"20000.00\", not the number 20000",
        ),
        (
            with_payload(&|p| p["amount"] = json!(20000.5)),
            "money must be a JSON string",
        ),
        (
            with_payload(&|p| p["tenor_months"] = json!(0)),
            "invalid tenor_months 0: it must be between 1 and 600",
        ),
        (
            with_payload(&|p| {
                p.as_object_mut().unwrap().remove("borrower_id");
            }),
            "missing field `borrower_id`",
        ),
        (
            with_payload(&|p| {
                p.as_object_mut().unwrap().remove("amount");
            }),
            "missing field `amount`",
        ),
        (
            with_payload(&|p| p["amount"] = json!("0.00")),
            "invalid amount \"0.00\": it must be greater than zero",
        ),
        (
            with_payload(&|p| p["first_due_date"] = json!("2024-06-01")),
            "invalid first_due_date 2024-06-01",
        ),
        (
            with_payload(&|p| p["rate_type"] = json!("variable")),
            "unknown variant `variable`",
        ),
        (
            with_payload(&|p| {
                p.as_object_mut().unwrap().remove("pan");
            }),
            "missing field `pan`",
        ),
        (
            with_payload(&|p| p["pan"] = json!(" ")),
            "invalid pan \" \": give the applicant's 10-character PAN",
        ),
        (
            with_payload(&|p| p["declared_monthly_income"] = json!(60000)),
            "money must be a JSON string",
        ),
        (
            with_payload(&|p| p["phone"] = json!("98765")),
            "invalid phone \"98765\"",
        ),
        (
            with_payload(&|p| p["date_of_birth"] = json!("2024-06-08")),
            "invalid date_of_birth 2024-06-08: it must be before applied_on 2024-06-07",
        ),
    ];
    for (line, expected) in cases {
        let error = parse_input_line(&line).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{line}\n  gave: {error}\n  expected: {expected}"
        );
        assert!(error.contains("application.received"), "{error}");
    }
}

#[tokio::test]
async fn invalid_payload_goes_to_dead_letters_at_once() {
    let harness = origination();
    let mut payload = application_payload("APP1", "B1", "2024-06-07");
    payload["tenor_months"] = json!(0);
    let envelope: Envelope = serde_json::from_value(json!({
        "id": "app-bad", "type": "application.received", "version": 1, "source": "input",
        "subject": "APP1", "occurred_at": "2024-06-07T10:00:00+05:30",
        "business_date": "2024-06-07", "correlation_id": "app-bad", "payload": payload,
    }))
    .unwrap();
    harness.runtime.publish(&[envelope]).unwrap();
    harness.run().await;
    let dead = harness.store().dead_letters(Some("pricing")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "invalid_event");
    assert_eq!(dead[0].receive_count, 1);
    assert!(dead[0].error_message.contains("invalid tenor_months 0"));
}

fn fee_harness() -> Harness {
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(Fee::new(
            PenalPolicy::PercentOfOverdue { basis_points: 200 },
            FeeSettings { grace_days: 3 },
            ProductCatalog::default(),
        )),
        Arc::new(Audit),
    ];
    Harness::with_services(services)
}

#[tokio::test]
async fn penal_charges_assessed_once_without_compounding() {
    let harness = fee_harness();
    // ₹1,00,000 at 12% over 12 months, EMI ₹8,884.88, due on the 5th.
    let mut lines = vec![disbursal(
        "L1",
        "B1",
        "100000.00",
        "12.00",
        12,
        "2024-01-05",
        "2024-02-05",
    )];
    // The first instalment is half paid; the second is not paid at all.
    lines.push(repayment("P1", "L1", "4442.44", "2024-02-05", "2024-02-05"));
    lines.extend(days_closed("2024-02-01", "2024-03-20"));
    harness.publish(&lines);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);

    let assessed = emitted(&harness, "fee.assess").await;
    let summary: Vec<(u64, String, String, String)> = assessed
        .iter()
        .map(|e| {
            (
                e.payload["instalment"].as_u64().unwrap(),
                e.payload["basis"].as_str().unwrap().to_string(),
                e.payload["amount"].as_str().unwrap().to_string(),
                e.payload["assessed_on"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            // 3 days of grace after 5 Feb; charged on the unpaid half only.
            (1, "4442.44".into(), "88.85".into(), "2024-02-08".into()),
            // The second instalment's basis is its own amount: the first
            // charge is not part of it.
            (2, "8884.88".into(), "177.70".into(), "2024-03-08".into()),
        ]
    );
    for event in &assessed {
        assert_eq!(event.payload["kind"], "penal");
        assert_eq!(event.payload["loan_id"], "L1");
    }
}

#[tokio::test]
async fn paid_instalments_bear_no_penal_charge() {
    let harness = fee_harness();
    let mut lines = vec![disbursal(
        "L2",
        "B2",
        "100000.00",
        "12.00",
        12,
        "2024-01-05",
        "2024-02-05",
    )];
    lines.push(repayment("P1", "L2", "8884.88", "2024-02-07", "2024-02-07"));
    lines.extend(days_closed("2024-02-01", "2024-02-29"));
    harness.publish(&lines);
    harness.run().await;
    assert!(emitted(&harness, "fee.assess").await.is_empty());
}

#[tokio::test]
async fn withdrawal_before_grant_is_retried() {
    let harness = origination();
    harness.publish(&[
        consent_withdrawn("C1", "B1", "2024-06-03"),
        consent_granted("C1", "B1", "2024-06-01", "2024-06-05"),
    ]);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);

    let store: &dyn Store = harness.store();
    let record: Value = store
        .get(&underwrite_consent::principal_key("B1"))
        .await
        .unwrap()
        .expect("consent recorded")
        .parse("consent")
        .unwrap();
    assert_eq!(record["artefacts"][0]["withdrawn_on"], "2024-06-03");

    // A withdrawn consent does not expire later.
    harness.publish(&days_closed("2024-06-04", "2024-06-06"));
    harness.run().await;
    assert!(emitted(&harness, "consent.expired").await.is_empty());
}

#[tokio::test]
async fn changed_grant_is_rejected() {
    let harness = origination();
    harness.publish(&[consent_granted("C1", "B1", "2024-06-01", "2025-05-31")]);
    harness.run().await;
    let mut changed: Value =
        serde_json::from_str(&consent_granted("C1", "B1", "2024-06-01", "2026-05-31")).unwrap();
    changed["id"] = json!("grant-C1-again");
    harness.publish(&[changed.to_string()]);
    harness.run().await;
    let dead = harness.store().dead_letters(Some("consent")).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error_code, "consent_conflict");
}

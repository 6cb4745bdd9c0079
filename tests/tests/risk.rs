//! The risk service on the embedded runtime over a real SQLite file: an
//! application goes through fraud, risk, pricing and the KFS; a documented
//! applicant gets its documented grade; a fraud alert is not scored.

use std::sync::Arc;

use serde_json::{Value, json};
use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_domain::pricing::PricingPolicy;
use underwrite_events::Envelope;
use underwrite_fraud::Fraud;
use underwrite_kfs::{KfsService, KfsSettings};
use underwrite_pricing::Pricing;
use underwrite_risk::{BUNDLED_MODEL, Risk, load_model};
use underwrite_runtime::Service;
use underwrite_tests::Harness;

/// The PD, grade and reason codes docs/risk-model.md gives for the
/// documented applicant.
const DOCUMENTED_PD: &str = "0.4097";
const DOCUMENTED_GRADE: &str = "C";
const DOCUMENTED_REASONS: [&str; 3] = ["checking_account", "credit_history", "savings"];

fn harness() -> Harness {
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(Consent),
        Arc::new(Fraud::new(FraudPolicy::default())),
        Arc::new(Risk::bundled()),
        Arc::new(Pricing::new(PricingPolicy::default())),
        Arc::new(KfsService::new(KfsSettings::default())),
        Arc::new(Audit),
    ];
    Harness::with_services(services)
}

fn consent(borrower: &str) -> String {
    json!({
        "id": format!("grant-{borrower}"),
        "type": "consent.granted",
        "occurred_at": "2025-01-01T09:00:00+05:30",
        "payload": {
            "consent_id": format!("C-{borrower}"), "principal_id": borrower,
            "purposes": ["credit_assessment"], "data_items": ["pan", "income"],
            "notice_version": "2025-11", "notice_language": "hi",
            "given_on": "2025-01-01", "expires_on": "2026-12-31",
        }
    })
    .to_string()
}

/// The applicant documented in docs/risk-model.md: ₹3,00,000 over 24
/// months, born 12 August 1985, with this credit profile.
fn documented_application(application: &str, borrower: &str, pan: &str) -> String {
    json!({
        "id": format!("app-{application}"),
        "type": "application.received",
        "occurred_at": "2025-06-02T10:00:00+05:30",
        "payload": {
            "application_id": application, "borrower_id": borrower, "product": "personal",
            "amount": "300000.00", "tenor_months": 24, "rate_type": "fixed",
            "borrower_type": "individual", "purpose": "non_business",
            "applied_on": "2025-06-02", "first_due_date": "2025-07-05",
            "pan": pan, "applicant_name": "Kavita Nair", "date_of_birth": "1985-08-12",
            "phone": "+919876543210",
            "declared_monthly_income": "90000.00",
            "credit_profile": {
                "checking_account": "0 <= ... < 200 DM",
                "credit_history": "existing credits paid back duly till now",
                "savings": "... < 100 DM",
                "employment_since": "1 <= ... < 4 years",
                "property": "car or other, not in attribute Savings account/bonds",
                "housing": "rent",
                "other_installment_plans": "none",
            },
        }
    })
    .to_string()
}

async fn of_type(harness: &Harness, event_type: &str) -> Vec<Envelope> {
    harness
        .audited()
        .await
        .into_iter()
        .filter(|e| e.event_type == event_type)
        .collect()
}

#[tokio::test]
async fn documented_applicant_is_graded_priced_and_given_a_kfs() {
    let harness = harness();
    harness.publish(&[
        consent("B1"),
        documented_application("APP1", "B1", "ABCPE1234F"),
    ]);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);

    let scored = of_type(&harness, "risk.scored").await;
    assert_eq!(scored.len(), 1);
    let payload: &Value = &scored[0].payload;
    assert_eq!(scored[0].source, "risk");
    assert_eq!(payload["model_version"], "german-credit-woe-1");
    assert_eq!(payload["pd"], DOCUMENTED_PD);
    assert_eq!(payload["grade"], DOCUMENTED_GRADE);
    assert_eq!(payload["reason_codes"], json!(DOCUMENTED_REASONS));

    let quoted = of_type(&harness, "pricing.quoted").await;
    assert_eq!(quoted.len(), 1);
    assert_eq!(quoted[0].payload["quote"]["grade"], DOCUMENTED_GRADE);
    assert_eq!(of_type(&harness, "kfs.issued").await.len(), 1);
}

#[tokio::test]
async fn fraud_alert_is_not_scored() {
    let harness = harness();
    // A PAN whose fourth character is no holder type fires pan_format.
    harness.publish(&[
        consent("B1"),
        documented_application("APP1", "B1", "ABCZE1234F"),
    ]);
    harness.run().await;
    assert_eq!(harness.store().dead_letter_count().unwrap(), 0);
    assert_eq!(of_type(&harness, "fraud.alert").await.len(), 1);
    assert!(of_type(&harness, "risk.scored").await.is_empty());
    assert!(of_type(&harness, "pricing.quoted").await.is_empty());
}

#[test]
fn bundled_model_is_valid_and_documented() {
    let card = load_model(BUNDLED_MODEL).unwrap();
    assert_eq!(card.version, "german-credit-woe-1");
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/risk-model.md"
    ))
    .unwrap();
    let auc = format!("{:.4}", card.holdout_metrics.auc);
    let gini = format!("{:.4}", card.holdout_metrics.gini);
    assert!(
        doc.contains(&auc),
        "docs/risk-model.md lacks the held-out AUC {auc}"
    );
    assert!(
        doc.contains(&gini),
        "docs/risk-model.md lacks the held-out Gini {gini}"
    );
    assert!(doc.contains(&card.training_data_sha256));
    for feature in &card.features {
        assert!(
            doc.contains(&format!("`{}`", feature.name)),
            "docs/risk-model.md lacks feature {}",
            feature.name
        );
    }
}

#[test]
fn invalid_model_rejected() {
    let error = load_model("{\"version\": 1}").unwrap_err().to_string();
    assert!(
        error.contains("the model file is not a scorecard"),
        "{error}"
    );
}

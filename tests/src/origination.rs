//! Builders for origination tests: the RBI KFS circular's Annex B tariff,
//! a harness running the origination services, and input events.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_domain::pricing::{
    FeeAmount, FeeFrequency, FeeRecipient, FeeRule, PricingPolicy, RiskGrade,
};
use underwrite_events::Envelope;
use underwrite_kfs::{KfsService, KfsSettings};
use underwrite_pricing::Pricing;
use underwrite_runtime::Service;

use crate::Harness;

/// Builds the RBI KFS circular's Annex B tariff: grade A at 15%, ₹240 to
/// the lender and ₹160 to a third party, both one-time.
pub fn annex_b_policy() -> PricingPolicy {
    let fee = |name: &str, recipient, amount: &str| FeeRule {
        name: name.into(),
        recipient,
        frequency: FeeFrequency::OneTime,
        amount: FeeAmount::Flat {
            amount: amount.parse().unwrap(),
        },
        gst: false,
    };
    PricingPolicy {
        rate_grid: BTreeMap::from([(RiskGrade::parse("A").unwrap(), "15.00".parse().unwrap())]),
        fees: vec![
            fee("processing fee", FeeRecipient::Lender, "240.00"),
            fee("credit insurance", FeeRecipient::ThirdParty, "160.00"),
        ],
        ..PricingPolicy::default()
    }
}

/// Creates a harness running consent, pricing on the Annex B tariff, kfs
/// and audit.
pub fn origination() -> Harness {
    let services: Vec<Arc<dyn Service>> = vec![
        Arc::new(Consent),
        Arc::new(Pricing::new(annex_b_policy())),
        Arc::new(KfsService::new(KfsSettings::default())),
        Arc::new(Audit),
    ];
    Harness::with_services(services)
}

/// Builds a `consent.granted` input line for credit assessment and loan
/// servicing.
pub fn consent_granted(consent: &str, principal: &str, given_on: &str, expires_on: &str) -> String {
    json!({
        "id": format!("grant-{consent}"),
        "type": "consent.granted",
        "occurred_at": format!("{given_on}T09:00:00+05:30"),
        "payload": {
            "consent_id": consent, "principal_id": principal,
            "purposes": ["credit_assessment", "loan_servicing"],
            "data_items": ["pan", "income", "bank_statement"],
            "notice_version": "2025-11", "notice_language": "hi",
            "given_on": given_on, "expires_on": expires_on,
        }
    })
    .to_string()
}

/// Builds a `consent.withdrawn` input line.
pub fn consent_withdrawn(consent: &str, principal: &str, withdrawn_on: &str) -> String {
    json!({
        "id": format!("withdraw-{consent}"),
        "type": "consent.withdrawn",
        "occurred_at": format!("{withdrawn_on}T11:00:00+05:30"),
        "payload": { "consent_id": consent, "principal_id": principal, "withdrawn_on": withdrawn_on }
    })
    .to_string()
}

/// Builds the payload of an application for ₹20,000 over 24 months, the
/// Annex B loan.
pub fn application_payload(application: &str, borrower: &str, applied_on: &str) -> Value {
    json!({
        "application_id": application, "borrower_id": borrower, "product": "personal",
        "amount": "20000.00", "tenor_months": 24, "rate_type": "floating",
        "borrower_type": "individual", "purpose": "non_business",
        "applied_on": applied_on, "first_due_date": "2024-07-05",
        "pan": "ABCPE1234F", "applicant_name": "Asha Verma", "date_of_birth": "1990-05-20",
        "phone": "+919876543210", "declared_monthly_income": "60000.00",
    })
}

/// Builds an `application.received` input line.
pub fn application(application: &str, borrower: &str, applied_on: &str) -> String {
    json!({
        "id": format!("app-{application}"),
        "type": "application.received",
        "occurred_at": format!("{applied_on}T10:00:00+05:30"),
        "payload": application_payload(application, borrower, applied_on),
    })
    .to_string()
}

/// Builds a `risk.scored` event as the risk service emits it.
pub fn risk_scored(application: &str, grade: &str, on: &str) -> Envelope {
    let id = format!("risk-{application}");
    serde_json::from_value(json!({
        "id": id, "type": "risk.scored", "version": 1, "source": "risk",
        "subject": application, "occurred_at": format!("{on}T10:05:00+05:30"),
        "business_date": on, "correlation_id": format!("app-{application}"),
        "payload": {
            "application_id": application, "pd": "0.0312", "grade": grade,
            "model_version": "scorecard-test-1", "reason_codes": ["R01"],
        }
    }))
    .unwrap()
}

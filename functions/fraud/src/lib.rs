//! The fraud service: runs the fraud rules on each application.
//!
//! `application.received` is checked against the rules of
//! [`FraudPolicy`]; the service emits `fraud.alert` with the rules that
//! fired, or `fraud.cleared`. It keeps each PAN's, phone's and device's
//! earlier sightings under `fraud/pan/`, `fraud/phone/` and `fraud/device/`,
//! keyed by a SHA-256 digest of the normalised identifier so that store
//! keys, and the errors and logs that name them, carry no raw PAN or phone
//! number. A sighting is recorded once per application id, so a
//! redelivered or re-sent application does not count twice.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use underwrite_consent::{CREDIT_ASSESSMENT, require_consent};
use underwrite_domain::BusinessDate;
use underwrite_domain::fraud::{
    Applicant, FraudPolicy, History, Sighting, evaluate, normalise_name, normalise_pan,
};
use underwrite_events::origination::{ApplicationReceived, FraudAlert, FraudCleared};
use underwrite_events::{Envelope, EventPayload};
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Versioned};

/// Key prefix of every record the fraud service keeps.
pub const FRAUD_PREFIX: &str = "fraud/";

/// The kinds of identifier whose sightings are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identifier {
    /// A PAN; its sightings record the names given with it.
    Pan,
    /// A phone number; its sightings record the PANs given with it.
    Phone,
    /// A device id; its sightings record the PANs given with it.
    Device,
}

impl Identifier {
    fn as_str(self) -> &'static str {
        match self {
            Identifier::Pan => "pan",
            Identifier::Phone => "phone",
            Identifier::Device => "device",
        }
    }
}

/// Normalises a phone number: digits only, without India's country code
/// 91 on a 12-digit number, so that `+919876543210` and `9876543210` match.
pub fn normalise_phone(phone: &str) -> String {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    match digits.strip_prefix("91") {
        Some(national) if digits.len() == 12 => national.to_string(),
        _ => digits,
    }
}

/// Returns the store key of an identifier's sightings:
/// `fraud/<kind>/<first 32 hex digits of SHA-256 of the normalised value>`.
pub fn sightings_key(kind: Identifier, value: &str) -> String {
    let normalised = match kind {
        Identifier::Pan => normalise_pan(value),
        Identifier::Phone => normalise_phone(value),
        Identifier::Device => value.trim().to_string(),
    };
    let digest = Sha256::digest(format!("{}:{normalised}", kind.as_str()).as_bytes());
    format!(
        "{FRAUD_PREFIX}{}/{}",
        kind.as_str(),
        &hex::encode(digest)[..32]
    )
}

/// An identifier's sightings as the fraud service keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sightings {
    /// Earlier applications, oldest first by arrival.
    pub sightings: Vec<Sighting>,
}

/// One identifier's record: what was read and the sighting to add.
struct Tracked {
    key: String,
    read: Option<Versioned>,
    record: Sightings,
}

impl Tracked {
    async fn load(
        context: &Context<'_>,
        kind: Identifier,
        value: &str,
    ) -> Result<Tracked, HandlerError> {
        let key = sightings_key(kind, value);
        let (record, read) = read_state::<Sightings>(context.store, &key).await?;
        Ok(Tracked {
            key,
            read,
            record: record.unwrap_or_default(),
        })
    }

    /// Adds the sighting unless its application is already recorded, drops
    /// sightings older than `retention_days` before `on`, and returns the
    /// write when anything changed.
    fn record(
        mut self,
        sighting: Sighting,
        on: BusinessDate,
        retention_days: u32,
    ) -> Option<StateWrite> {
        let before = self.record.sightings.len();
        self.record
            .sightings
            .retain(|s| on.days_since(s.applied_on) < i64::from(retention_days));
        let pruned = self.record.sightings.len() != before;
        let known = self
            .record
            .sightings
            .iter()
            .any(|s| s.application_id == sighting.application_id);
        if !known {
            self.record.sightings.push(sighting);
        }
        (pruned || !known).then(|| StateWrite::put(self.key, &self.record, &self.read))
    }
}

/// The fraud service.
pub struct Fraud {
    policy: FraudPolicy,
}

impl Fraud {
    /// Creates a fraud service with these rules and thresholds.
    pub fn new(policy: FraudPolicy) -> Self {
        Fraud { policy }
    }

    async fn on_application(
        &self,
        event: &Envelope,
        application: &ApplicationReceived,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        require_consent(
            context.store,
            application.borrower_id.as_str(),
            CREDIT_ASSESSMENT,
            event.business_date,
        )
        .await?;
        let pan = Tracked::load(context, Identifier::Pan, &application.pan).await?;
        let phone = Tracked::load(context, Identifier::Phone, &application.phone).await?;
        let device = match &application.device_id {
            Some(device) => Some(Tracked::load(context, Identifier::Device, device).await?),
            None => None,
        };
        let history = History {
            pan: pan.record.sightings.clone(),
            phone: phone.record.sightings.clone(),
            device: device
                .as_ref()
                .map(|d| d.record.sightings.clone())
                .unwrap_or_default(),
        };
        let applicant = Applicant {
            application_id: application.application_id.as_str(),
            pan: &application.pan,
            name: &application.applicant_name,
            date_of_birth: application.date_of_birth,
            has_device: application.device_id.is_some(),
            amount: application.amount,
            tenor_months: application.tenor_months,
            monthly_income: application.declared_monthly_income,
            applied_on: application.applied_on,
        };
        let fired = evaluate(&self.policy, &applicant, &history);

        let on = application.applied_on;
        let retention = self.policy.retention_days();
        let sighting = |value: String| Sighting {
            application_id: application.application_id.to_string(),
            value,
            applied_on: on,
        };
        let pan_value = normalise_pan(&application.pan);
        let mut outcome = Outcome::default();
        let writes = [
            pan.record(
                sighting(normalise_name(&application.applicant_name)),
                on,
                retention,
            ),
            phone.record(sighting(pan_value.clone()), on, retention),
            device.and_then(|d| d.record(sighting(pan_value), on, retention)),
        ];
        outcome.writes.extend(writes.into_iter().flatten());

        let payload = if fired.is_empty() {
            EventPayload::FraudCleared(FraudCleared {
                application_id: application.application_id.clone(),
                borrower_id: application.borrower_id.clone(),
                rules_checked: self
                    .policy
                    .enabled_rules()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                assessed_on: on,
            })
        } else {
            let ids: Vec<&str> = fired.iter().map(|f| f.rule.as_str()).collect();
            tracing::info!(
                application_id = %application.application_id,
                rules = %ids.join(","),
                "Fraud rules fired on an application"
            );
            EventPayload::FraudAlert(FraudAlert {
                application_id: application.application_id.clone(),
                borrower_id: application.borrower_id.clone(),
                rules: fired,
                assessed_on: on,
            })
        };
        outcome.emits.push(Envelope::caused_by(
            event,
            0,
            context.service,
            application.application_id.as_str(),
            event.business_date,
            &payload,
        ));
        Ok(outcome)
    }
}

#[async_trait]
impl Service for Fraud {
    fn name(&self) -> &'static str {
        "fraud"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["application.received"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = typed_payload(event)?;
        match &payload {
            EventPayload::ApplicationReceived(application) => {
                self.on_application(event, application, context).await
            }
            _ => Err(unsubscribed(self.name(), event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_normalise() {
        assert_eq!(normalise_phone("+919876543210"), "9876543210");
        assert_eq!(normalise_phone("9876543210"), "9876543210");
        assert_eq!(normalise_phone("919876543210"), "9876543210");
        assert_eq!(normalise_phone("+14155550100"), "14155550100");
    }

    #[test]
    fn keys_carry_no_identifier() {
        let key = sightings_key(Identifier::Pan, "abcpe1234f");
        assert_eq!(key, sightings_key(Identifier::Pan, " ABCPE1234F"));
        assert!(key.starts_with("fraud/pan/"), "{key}");
        assert!(!key.to_ascii_uppercase().contains("ABCPE1234F"), "{key}");
        assert_eq!(key.len(), "fraud/pan/".len() + 32);
        assert_ne!(
            sightings_key(Identifier::Phone, "+919876543210"),
            sightings_key(Identifier::Device, "+919876543210")
        );
        assert_eq!(
            sightings_key(Identifier::Phone, "+919876543210"),
            sightings_key(Identifier::Phone, "9876543210")
        );
    }
}

//! Consent under the Digital Personal Data Protection Act 2023, s. 6.
//!
//! Consent is specific to its purposes, limited to the data items listed,
//! and given against a versioned notice in a stated language. Withdrawing it
//! must be as easy as giving it, and processing for its purposes stops once
//! it is withdrawn or expired.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::date::BusinessDate;

/// One consent artefact: what a data principal agreed to, when and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentArtefact {
    /// The artefact's id.
    pub consent_id: String,
    /// The data principal (the borrower or applicant).
    pub principal_id: String,
    /// Purposes consented to, such as `credit_assessment`.
    pub purposes: Vec<String>,
    /// Personal data items covered, such as `pan` or `bank_statement`.
    pub data_items: Vec<String>,
    /// Version of the notice shown.
    pub notice_version: String,
    /// Language of the notice, as a BCP 47 tag such as `en` or `hi`.
    pub notice_language: String,
    /// Date consent was given.
    pub given_on: BusinessDate,
    /// Last date on which the consent holds.
    pub expires_on: BusinessDate,
    /// Date the principal withdrew it; it is no longer in force from that date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_on: Option<BusinessDate>,
}

/// The state of an artefact on a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    /// Not given yet on that date.
    NotYetGiven,
    /// In force.
    Active,
    /// Withdrawn on or before that date.
    Withdrawn,
    /// Past its last date.
    Expired,
}

impl ConsentArtefact {
    /// Returns the artefact's state on `on`. Withdrawal wins over expiry.
    pub fn status(&self, on: BusinessDate) -> ConsentStatus {
        match self.withdrawn_on {
            Some(withdrawn) if withdrawn <= on => ConsentStatus::Withdrawn,
            _ if on < self.given_on => ConsentStatus::NotYetGiven,
            _ if on > self.expires_on => ConsentStatus::Expired,
            _ => ConsentStatus::Active,
        }
    }

    /// Checks whether the artefact covers `purpose`.
    pub fn covers(&self, purpose: &str) -> bool {
        self.purposes.iter().any(|p| p == purpose)
    }

    /// Checks the rules an artefact must meet when it is granted.
    pub fn validate(&self) -> Result<(), String> {
        if self.purposes.is_empty() {
            return Err(format!(
                "consent {} lists no purposes: consent must name each purpose it covers",
                self.consent_id
            ));
        }
        if self.data_items.is_empty() {
            return Err(format!(
                "consent {} lists no data_items: consent must name the personal data it covers",
                self.consent_id
            ));
        }
        if let Some(bad) = self
            .purposes
            .iter()
            .chain(&self.data_items)
            .find(|text| !is_token(text))
        {
            return Err(format!(
                "invalid purpose or data item {bad:?}: use 1 to 64 characters from a-z, 0-9 and _"
            ));
        }
        if self.notice_version.is_empty() || self.notice_language.is_empty() {
            return Err(format!(
                "consent {} lacks notice_version or notice_language: record the notice the principal saw",
                self.consent_id
            ));
        }
        if self.expires_on < self.given_on {
            return Err(format!(
                "invalid expires_on {}: it must not be before given_on {}",
                self.expires_on, self.given_on
            ));
        }
        Ok(())
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reasons personal data may not be processed for a purpose.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsentError {
    /// No artefact of the principal covers the purpose.
    #[error(
        "no consent from principal {principal_id} for purpose {purpose:?}: record consent for it before processing"
    )]
    Missing {
        /// The principal.
        principal_id: String,
        /// The purpose.
        purpose: String,
    },
    /// The consent covering the purpose was withdrawn.
    #[error(
        "consent {consent_id} of principal {principal_id} for purpose {purpose:?} was withdrawn on {withdrawn_on}: processing for it must stop"
    )]
    Withdrawn {
        /// The artefact.
        consent_id: String,
        /// The principal.
        principal_id: String,
        /// The purpose.
        purpose: String,
        /// Date of withdrawal.
        withdrawn_on: BusinessDate,
    },
    /// The consent covering the purpose expired.
    #[error(
        "consent {consent_id} of principal {principal_id} for purpose {purpose:?} expired after {expires_on}: ask the principal for fresh consent"
    )]
    Expired {
        /// The artefact.
        consent_id: String,
        /// The principal.
        principal_id: String,
        /// The purpose.
        purpose: String,
        /// Its last valid date.
        expires_on: BusinessDate,
    },
    /// The consent covering the purpose starts later.
    #[error(
        "consent {consent_id} of principal {principal_id} for purpose {purpose:?} is given only from {given_on}"
    )]
    NotYetGiven {
        /// The artefact.
        consent_id: String,
        /// The principal.
        principal_id: String,
        /// The purpose.
        purpose: String,
        /// Date consent was given.
        given_on: BusinessDate,
    },
}

impl ConsentError {
    /// Returns the purpose that lacks consent.
    pub fn purpose(&self) -> &str {
        match self {
            ConsentError::Missing { purpose, .. }
            | ConsentError::Withdrawn { purpose, .. }
            | ConsentError::Expired { purpose, .. }
            | ConsentError::NotYetGiven { purpose, .. } => purpose,
        }
    }
}

/// Checks that one of `artefacts`, all of `principal_id`, gives active
/// consent for `purpose` on `on`, returning that artefact.
///
/// When none is active, the error describes the artefact for the purpose
/// that was given last: withdrawn, expired or not yet in force.
pub fn check_consent<'a>(
    principal_id: &str,
    artefacts: &'a [ConsentArtefact],
    purpose: &str,
    on: BusinessDate,
) -> Result<&'a ConsentArtefact, ConsentError> {
    let mut covering: Vec<&ConsentArtefact> =
        artefacts.iter().filter(|a| a.covers(purpose)).collect();
    if let Some(active) = covering
        .iter()
        .find(|a| a.status(on) == ConsentStatus::Active)
    {
        return Ok(active);
    }
    covering.sort_by(|a, b| (a.given_on, &a.consent_id).cmp(&(b.given_on, &b.consent_id)));
    let Some(latest) = covering.last() else {
        return Err(ConsentError::Missing {
            principal_id: principal_id.to_string(),
            purpose: purpose.to_string(),
        });
    };
    let consent_id = latest.consent_id.clone();
    let principal_id = principal_id.to_string();
    let purpose = purpose.to_string();
    Err(match latest.status(on) {
        ConsentStatus::Withdrawn => ConsentError::Withdrawn {
            consent_id,
            principal_id,
            purpose,
            withdrawn_on: latest
                .withdrawn_on
                .expect("a withdrawn artefact has its date"),
        },
        ConsentStatus::Expired => ConsentError::Expired {
            consent_id,
            principal_id,
            purpose,
            expires_on: latest.expires_on,
        },
        ConsentStatus::NotYetGiven | ConsentStatus::Active => ConsentError::NotYetGiven {
            consent_id,
            principal_id,
            purpose,
            given_on: latest.given_on,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    fn artefact() -> ConsentArtefact {
        ConsentArtefact {
            consent_id: "C1".into(),
            principal_id: "B1".into(),
            purposes: vec!["credit_assessment".into(), "loan_servicing".into()],
            data_items: vec!["pan".into(), "income".into()],
            notice_version: "2025-11".into(),
            notice_language: "hi".into(),
            given_on: date("2025-12-01"),
            expires_on: date("2026-11-30"),
            withdrawn_on: None,
        }
    }

    #[test]
    fn status_over_time() {
        let mut consent = artefact();
        assert_eq!(
            consent.status(date("2025-11-30")),
            ConsentStatus::NotYetGiven
        );
        assert_eq!(consent.status(date("2025-12-01")), ConsentStatus::Active);
        assert_eq!(consent.status(date("2026-11-30")), ConsentStatus::Active);
        assert_eq!(consent.status(date("2026-12-01")), ConsentStatus::Expired);
        consent.withdrawn_on = Some(date("2026-01-10"));
        assert_eq!(consent.status(date("2026-01-09")), ConsentStatus::Active);
        assert_eq!(consent.status(date("2026-01-10")), ConsentStatus::Withdrawn);
        assert_eq!(consent.status(date("2027-01-10")), ConsentStatus::Withdrawn);
    }

    #[test]
    fn active_consent_passes() {
        let artefacts = [artefact()];
        let found = check_consent("B1", &artefacts, "credit_assessment", date("2026-01-01"));
        assert_eq!(found.unwrap().consent_id, "C1");
    }

    #[test]
    fn other_purpose_is_missing() {
        let artefacts = [artefact()];
        let error = check_consent("B1", &artefacts, "marketing", date("2026-01-01")).unwrap_err();
        assert_eq!(error.purpose(), "marketing");
        assert!(
            error.to_string().contains("purpose \"marketing\""),
            "{error}"
        );
    }

    #[test]
    fn withdrawn_consent_names_purpose() {
        let mut consent = artefact();
        consent.withdrawn_on = Some(date("2026-01-10"));
        let artefacts = [consent];
        let error =
            check_consent("B1", &artefacts, "credit_assessment", date("2026-01-10")).unwrap_err();
        assert!(matches!(error, ConsentError::Withdrawn { .. }), "{error:?}");
        assert!(
            error.to_string().contains("purpose \"credit_assessment\""),
            "{error}"
        );
    }

    #[test]
    fn expired_consent_names_purpose() {
        let artefacts = [artefact()];
        let error =
            check_consent("B1", &artefacts, "loan_servicing", date("2026-12-01")).unwrap_err();
        assert!(matches!(error, ConsentError::Expired { .. }), "{error:?}");
        assert!(
            error.to_string().contains("purpose \"loan_servicing\""),
            "{error}"
        );
    }

    #[test]
    fn renewed_consent_wins_over_expired() {
        let renewed = ConsentArtefact {
            consent_id: "C2".into(),
            given_on: date("2026-11-20"),
            expires_on: date("2027-11-19"),
            ..artefact()
        };
        let artefacts = [artefact(), renewed];
        let found = check_consent("B1", &artefacts, "loan_servicing", date("2026-12-05"));
        assert_eq!(found.unwrap().consent_id, "C2");
    }

    #[test]
    fn validation_names_the_problem() {
        let mut consent = artefact();
        consent.purposes.clear();
        assert!(consent.validate().unwrap_err().contains("no purposes"));
        let mut consent = artefact();
        consent.data_items = vec!["PAN number".into()];
        assert!(consent.validate().unwrap_err().contains("\"PAN number\""));
        let mut consent = artefact();
        consent.expires_on = date("2025-11-01");
        assert!(
            consent
                .validate()
                .unwrap_err()
                .contains("invalid expires_on")
        );
        assert!(artefact().validate().is_ok());
    }
}

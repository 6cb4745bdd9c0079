//! The kfs service: issues the Key Fact Statement for each quote.
//!
//! `pricing.quoted` becomes a KFS, stored with its English and Hindi HTML
//! under `kfs/<proposal number>` and announced by `kfs.issued`.
//! `kfs.accepted` records the borrower's acceptance after checking it falls
//! within the KFS's validity; `kfs.voided`, the origination saga's
//! compensation, voids the KFS. Sanction calls [`require_accepted_kfs`],
//! which rejects an acceptance outside the validity and a void KFS.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_consent::{CREDIT_ASSESSMENT, require_consent};
use underwrite_domain::BusinessDate;
use underwrite_domain::kfs::{
    GrievanceOfficer, Kfs, KfsIssue, Language, WorkingCalendar, render_html,
};
use underwrite_events::origination::{KfsAccepted, KfsVoided, PricingQuoted};
use underwrite_events::{Envelope, EventPayload};
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Store};

/// Key prefix of issued KFSs.
pub const KFS_PREFIX: &str = "kfs/";

/// Returns the store key of a KFS.
pub fn kfs_key(proposal_number: &str) -> String {
    format!("{KFS_PREFIX}{proposal_number}")
}

/// The lender's details on every KFS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KfsSettings {
    /// The lender's name as shown to the borrower.
    pub lender_name: String,
    /// The grievance redressal officer named in part 2.
    pub grievance_officer: GrievanceOfficer,
    /// Cooling-off period in days. The Digital Lending Directions 2025 ask
    /// for at least 1 day, set by the board; 3 days was the 2022 rule for
    /// tenors of 7 days or more.
    pub cooling_off_days: u32,
    /// Holidays that are not working days for KFS validity, besides Sundays.
    pub holidays: Vec<BusinessDate>,
}

impl Default for KfsSettings {
    fn default() -> Self {
        KfsSettings {
            lender_name: "Example Finance Limited".into(),
            grievance_officer: GrievanceOfficer {
                name: "Grievance Redressal Officer".into(),
                designation: "Grievance Redressal Officer".into(),
                phone: "+91-00-0000-0000".into(),
                email: "grievance@example.invalid".into(),
                address: "Registered office of the lender".into(),
            },
            cooling_off_days: 3,
            holidays: Vec::new(),
        }
    }
}

/// A KFS as the kfs service keeps it: the statement and its renderings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKfs {
    /// The statement; its JSON form is the `kfs.issued` payload.
    pub kfs: Kfs,
    /// HTML in English.
    pub html_en: String,
    /// HTML in Hindi.
    pub html_hi: String,
    /// The date the borrower accepted it, once accepted within validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_on: Option<BusinessDate>,
    /// Why it was voided, once the origination saga voided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided: Option<String>,
}

/// Renders a KFS as pretty-printed JSON.
pub fn render_json(kfs: &Kfs) -> String {
    serde_json::to_string_pretty(kfs).expect("a KFS serialises to JSON")
}

/// Reads the KFS `proposal_number` and checks that the borrower's
/// acceptance on `accepted_on` falls within its validity; sanction calls
/// this first.
///
/// An expired KFS is a permanent error with code `kfs_expired`, and a void
/// one with `kfs_void`. An unknown proposal number is retryable, because the
/// KFS may still be on its way.
pub async fn require_accepted_kfs(
    store: &dyn Store,
    proposal_number: &str,
    accepted_on: BusinessDate,
) -> Result<Kfs, HandlerError> {
    let (stored, _) = read_state::<StoredKfs>(store, &kfs_key(proposal_number)).await?;
    let stored = stored.ok_or_else(|| kfs_not_found(proposal_number))?;
    check_acceptable(&stored, accepted_on)?;
    Ok(stored.kfs)
}

fn kfs_not_found(proposal_number: &str) -> HandlerError {
    HandlerError::retryable(
        "kfs_not_found",
        format!(
            "KFS {proposal_number} not found: no kfs.issued has been handled for it; check the proposal number"
        ),
    )
}

fn check_acceptable(stored: &StoredKfs, accepted_on: BusinessDate) -> Result<(), HandlerError> {
    if let Some(reason) = &stored.voided {
        return Err(HandlerError::permanent(
            "kfs_void",
            format!(
                "KFS {} was voided ({reason}) and can no longer be accepted; the application must be priced again",
                stored.kfs.proposal_number
            ),
        ));
    }
    stored
        .kfs
        .check_acceptance(accepted_on)
        .map_err(|error| HandlerError::permanent(error.code(), error.to_string()))
}

/// The kfs service.
pub struct KfsService {
    settings: KfsSettings,
    calendar: WorkingCalendar,
}

impl KfsService {
    /// Creates a kfs service with these lender details and holidays.
    pub fn new(settings: KfsSettings) -> Self {
        let calendar = WorkingCalendar::new(settings.holidays.iter().copied());
        KfsService { settings, calendar }
    }

    async fn on_quoted(
        &self,
        event: &Envelope,
        quoted: &PricingQuoted,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let kfs = Kfs::issue(
            &quoted.quote,
            &KfsIssue {
                application_id: quoted.application_id.as_str(),
                borrower_id: quoted.borrower_id.as_str(),
                lender_name: &self.settings.lender_name,
                issued_on: event.business_date,
                cooling_off_days: self.settings.cooling_off_days,
                grievance_officer: &self.settings.grievance_officer,
                calendar: &self.calendar,
            },
        );
        let key = kfs_key(&kfs.proposal_number);
        let (existing, read) = read_state::<StoredKfs>(context.store, &key).await?;
        if let Some(existing) = existing {
            if existing.kfs == kfs {
                return Ok(Outcome::default());
            }
            return Err(HandlerError::permanent(
                "kfs_conflict",
                format!(
                    "KFS {} was already issued with different terms; price the application again on another date or with a new application_id",
                    kfs.proposal_number
                ),
            ));
        }
        let stored = StoredKfs {
            html_en: render_html(&kfs, Language::English),
            html_hi: render_html(&kfs, Language::Hindi),
            kfs: kfs.clone(),
            accepted_on: None,
            voided: None,
        };
        let subject = kfs.proposal_number.clone();
        tracing::info!(
            proposal_number = %kfs.proposal_number,
            application_id = %quoted.application_id,
            valid_until = %kfs.valid_until,
            "Issued KFS"
        );
        Ok(Outcome {
            writes: vec![StateWrite::put(key, &stored, &read)],
            emits: vec![Envelope::caused_by(
                event,
                0,
                context.service,
                &subject,
                event.business_date,
                &EventPayload::KfsIssued(Box::new(kfs)),
            )],
        })
    }
}

impl KfsService {
    async fn on_accepted(
        &self,
        event: &Envelope,
        accepted: &KfsAccepted,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let key = kfs_key(&accepted.proposal_number);
        let (stored, read) = read_state::<StoredKfs>(context.store, &key).await?;
        let mut stored = stored.ok_or_else(|| kfs_not_found(&accepted.proposal_number))?;
        if stored.kfs.application_id != accepted.application_id.as_str() {
            return Err(HandlerError::permanent(
                "kfs_application_mismatch",
                format!(
                    "KFS {} belongs to application {}, not {}; check the proposal number",
                    accepted.proposal_number, stored.kfs.application_id, accepted.application_id
                ),
            ));
        }
        check_acceptable(&stored, accepted.accepted_on)?;
        // Going on to sanction processes the applicant's data for credit, so
        // a consent withdrawn since the KFS was issued stops it here: once
        // consent is withdrawn, processing stops (DPDP Act 2023, s. 6).
        require_consent(
            context.store,
            &stored.kfs.borrower_id,
            CREDIT_ASSESSMENT,
            event.business_date,
        )
        .await?;
        // A repeated acceptance keeps the first date.
        if stored.accepted_on.is_some() {
            return Ok(Outcome::default());
        }
        stored.accepted_on = Some(accepted.accepted_on);
        tracing::info!(proposal_number = %accepted.proposal_number, accepted_on = %accepted.accepted_on, "Recorded the acceptance of a KFS");
        Ok(Outcome {
            writes: vec![StateWrite::put(key, &stored, &read)],
            emits: Vec::new(),
        })
    }

    async fn on_voided(
        &self,
        voided: &KfsVoided,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let key = kfs_key(&voided.proposal_number);
        let (stored, read) = read_state::<StoredKfs>(context.store, &key).await?;
        let mut stored = stored.ok_or_else(|| kfs_not_found(&voided.proposal_number))?;
        if stored.voided.is_some() {
            return Ok(Outcome::default());
        }
        stored.voided = Some(voided.reason.clone());
        tracing::info!(proposal_number = %voided.proposal_number, reason = %voided.reason, "Voided a KFS");
        Ok(Outcome {
            writes: vec![StateWrite::put(key, &stored, &read)],
            emits: Vec::new(),
        })
    }
}

#[async_trait]
impl Service for KfsService {
    fn name(&self) -> &'static str {
        "kfs"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["pricing.quoted", "kfs.accepted"]
    }

    fn commands(&self) -> &'static [&'static str] {
        &["kfs.voided"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = typed_payload(event)?;
        match &payload {
            EventPayload::PricingQuoted(quoted) => self.on_quoted(event, quoted, context).await,
            EventPayload::KfsAccepted(accepted) => self.on_accepted(event, accepted, context).await,
            EventPayload::KfsVoided(voided) => self.on_voided(voided, context).await,
            _ => Err(unsubscribed(self.name(), event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use underwrite_domain::pricing::{
        BorrowerType, FeeAmount, FeeFrequency, FeeRecipient, FeeRule, LoanPurpose, PricingPolicy,
        PricingRequest, RateType, RiskGrade, quote,
    };

    use super::*;

    /// The `kfs.issued` fixture is the KFS this service issues for the RBI
    /// KFS circular's Annex B loan, so the documented example stays true.
    #[test]
    fn fixture_is_an_issued_kfs() {
        let fee = |name: &str, recipient, amount: &str| FeeRule {
            name: name.into(),
            recipient,
            frequency: FeeFrequency::OneTime,
            amount: FeeAmount::Flat {
                amount: amount.parse().unwrap(),
            },
            gst: false,
        };
        let policy = PricingPolicy {
            rate_grid: BTreeMap::from([(RiskGrade::parse("A").unwrap(), "15.00".parse().unwrap())]),
            fees: vec![
                fee("processing fee", FeeRecipient::Lender, "240.00"),
                fee("credit insurance", FeeRecipient::ThirdParty, "160.00"),
            ],
            ..PricingPolicy::default()
        };
        let request = PricingRequest {
            grade: RiskGrade::parse("A").unwrap(),
            amount: "20000.00".parse().unwrap(),
            tenor_months: 24,
            first_due_date: "2024-07-05".parse().unwrap(),
            rate_type: RateType::Floating,
            borrower_type: BorrowerType::Individual,
            purpose: LoanPurpose::NonBusiness,
            microfinance: false,
        };
        let quote = quote(&policy, &request).unwrap();
        let settings = KfsSettings::default();
        let kfs = Kfs::issue(
            &quote,
            &KfsIssue {
                application_id: "APP0001",
                borrower_id: "B0001",
                lender_name: &settings.lender_name,
                issued_on: "2024-06-07".parse().unwrap(),
                cooling_off_days: settings.cooling_off_days,
                grievance_officer: &settings.grievance_officer,
                calendar: &WorkingCalendar::default(),
            },
        );
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/events/fixtures/");
        let read = |name: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(format!("{fixtures}{name}")).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let issued = read("kfs.issued.json");
        assert_eq!(issued["payload"], serde_json::to_value(&kfs).unwrap());
        let quoted = read("pricing.quoted.json");
        assert_eq!(
            quoted["payload"]["quote"],
            serde_json::to_value(&quote).unwrap()
        );
        let parsed: Kfs = serde_json::from_str(&render_json(&kfs)).unwrap();
        assert_eq!(parsed, kfs);
    }
}

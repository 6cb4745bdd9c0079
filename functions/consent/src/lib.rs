//! The consent service: each data principal's consent artefacts under the
//! Digital Personal Data Protection Act 2023.
//!
//! `consent.granted` and `consent.withdrawn` record artefacts; an
//! `application.received` sent by the origination saga checks the
//! applicant's consent for [`CREDIT_ASSESSMENT`]; `day.closed`
//! expires those past their last date and emits `consent.expired`. A
//! withdrawal that arrives after the `day.closed` of the consent's last
//! date is still recorded, but `consent.expired` has then already gone out. Other
//! services call [`require_consent`] before processing a principal's
//! personal data for a purpose.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_domain::BusinessDate;
use underwrite_domain::consent::{ConsentArtefact, ConsentError, check_consent};
use underwrite_events::origination::{ConsentExpired, ConsentGranted, ConsentWithdrawn};
use underwrite_events::{ConsentId, Envelope, EventPayload};
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Store};

/// The consent purpose that covers assessing an application: fraud checks,
/// scoring and pricing.
pub const CREDIT_ASSESSMENT: &str = "credit_assessment";

/// Key prefix of each principal's artefacts.
pub const PRINCIPAL_PREFIX: &str = "consent/principal/";

/// Key prefix of the expiry index: `consent/expiry/<expires_on>/<consent_id>`.
pub const EXPIRY_PREFIX: &str = "consent/expiry/";

/// Entries of the expiry index read per store scan.
const EXPIRY_PAGE: usize = 500;

/// Returns the store key of a principal's artefacts.
pub fn principal_key(principal_id: &str) -> String {
    format!("{PRINCIPAL_PREFIX}{principal_id}")
}

fn expiry_key(expires_on: BusinessDate, consent_id: &str) -> String {
    format!("{EXPIRY_PREFIX}{expires_on}/{consent_id}")
}

/// A principal's consent artefacts, as the consent service keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConsents {
    /// Every artefact, withdrawn and expired ones included.
    pub artefacts: Vec<ConsentArtefact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiryEntry {
    principal_id: String,
}

/// Checks that `principal_id` has active consent for `purpose` on `on`, and
/// returns the artefact that gives it.
///
/// Withdrawn, expired and not-yet-given consent is a permanent error naming
/// the purpose. Missing consent is retryable, because the grant may still
/// be on its way. After the queue's receive limit the event goes to the
/// dead-letter queue with the same message.
pub async fn require_consent(
    store: &dyn Store,
    principal_id: &str,
    purpose: &str,
    on: BusinessDate,
) -> Result<ConsentArtefact, HandlerError> {
    let (record, _) = read_state::<PrincipalConsents>(store, &principal_key(principal_id)).await?;
    let artefacts = record.map(|r| r.artefacts).unwrap_or_default();
    match check_consent(principal_id, &artefacts, purpose, on) {
        Ok(artefact) => Ok(artefact.clone()),
        Err(error) => Err(match &error {
            ConsentError::Missing { .. } => {
                HandlerError::retryable("consent_missing", error.to_string())
            }
            ConsentError::Withdrawn { .. } => {
                HandlerError::permanent("consent_withdrawn", error.to_string())
            }
            ConsentError::Expired { .. } => {
                HandlerError::permanent("consent_expired", error.to_string())
            }
            ConsentError::NotYetGiven { .. } => {
                HandlerError::permanent("consent_not_yet_given", error.to_string())
            }
        }),
    }
}

/// The consent service.
#[derive(Debug, Default)]
pub struct Consent;

impl Consent {
    async fn on_granted(
        &self,
        grant: &ConsentGranted,
        context: &Context<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), HandlerError> {
        let key = principal_key(grant.principal_id.as_str());
        let (record, read) = read_state::<PrincipalConsents>(context.store, &key).await?;
        let mut record = record.unwrap_or_default();
        let artefact = grant.artefact();
        if let Some(existing) = record
            .artefacts
            .iter()
            .find(|a| a.consent_id == artefact.consent_id)
        {
            let unchanged = ConsentArtefact {
                withdrawn_on: None,
                ..existing.clone()
            } == artefact;
            if unchanged {
                return Ok(());
            }
            return Err(HandlerError::permanent(
                "consent_conflict",
                format!(
                    "consent {} of principal {} was already granted with different terms; give a new consent_id for new terms",
                    grant.consent_id, grant.principal_id
                ),
            ));
        }
        let index_key = expiry_key(artefact.expires_on, &artefact.consent_id);
        record.artefacts.push(artefact);
        outcome.writes.push(StateWrite::put(key, &record, &read));
        let entry = ExpiryEntry {
            principal_id: grant.principal_id.to_string(),
        };
        outcome
            .writes
            .push(StateWrite::put(index_key, &entry, &None));
        Ok(())
    }

    async fn on_withdrawn(
        &self,
        withdrawal: &ConsentWithdrawn,
        context: &Context<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), HandlerError> {
        let key = principal_key(withdrawal.principal_id.as_str());
        let (record, read) = read_state::<PrincipalConsents>(context.store, &key).await?;
        let mut record = record.unwrap_or_default();
        let Some(artefact) = record
            .artefacts
            .iter_mut()
            .find(|a| a.consent_id == withdrawal.consent_id.as_str())
        else {
            return Err(HandlerError::retryable(
                "consent_not_found",
                format!(
                    "consent {} of principal {} not found for consent.withdrawn: send the consent.granted first or check the consent_id",
                    withdrawal.consent_id, withdrawal.principal_id
                ),
            ));
        };
        // A repeated withdrawal keeps the earliest date.
        if artefact
            .withdrawn_on
            .is_some_and(|date| date <= withdrawal.withdrawn_on)
        {
            return Ok(());
        }
        artefact.withdrawn_on = Some(withdrawal.withdrawn_on);
        let index_key = expiry_key(artefact.expires_on, &artefact.consent_id);
        outcome.writes.push(StateWrite::put(key, &record, &read));
        let index = context.store.get(&index_key).await?;
        if index.is_some() {
            outcome.writes.push(StateWrite::delete(index_key, &index));
        }
        Ok(())
    }

    async fn on_day_closed(
        &self,
        event: &Envelope,
        closed: BusinessDate,
        context: &Context<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), HandlerError> {
        let mut after: Option<String> = None;
        let mut position = 0u32;
        'scan: loop {
            let page = context
                .store
                .scan(EXPIRY_PREFIX, after.as_deref(), EXPIRY_PAGE)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (index_key, read) in page {
                let Some((date_text, consent_id)) =
                    index_key[EXPIRY_PREFIX.len()..].split_once('/')
                else {
                    return Err(corrupt_index(&index_key));
                };
                let expires_on: BusinessDate =
                    date_text.parse().map_err(|_| corrupt_index(&index_key))?;
                if expires_on > closed {
                    break 'scan;
                }
                let entry: ExpiryEntry = read.parse(&index_key)?;
                let (record, _) = read_state::<PrincipalConsents>(
                    context.store,
                    &principal_key(&entry.principal_id),
                )
                .await?;
                let artefact = record
                    .and_then(|r| r.artefacts.into_iter().find(|a| a.consent_id == consent_id))
                    .ok_or_else(|| corrupt_index(&index_key))?;
                let expired = ConsentExpired {
                    consent_id: ConsentId::parse(consent_id)
                        .map_err(|_| corrupt_index(&index_key))?,
                    principal_id: underwrite_events::BorrowerId::parse(&entry.principal_id)
                        .map_err(|_| corrupt_index(&index_key))?,
                    purposes: artefact.purposes.clone(),
                    expires_on,
                };
                outcome.emits.push(Envelope::caused_by(
                    event,
                    position,
                    context.service,
                    &entry.principal_id,
                    closed,
                    &EventPayload::ConsentExpired(expired),
                ));
                position += 1;
                outcome
                    .writes
                    .push(StateWrite::delete(index_key, &Some(read)));
            }
        }
        if position > 0 {
            tracing::info!(business_date = %closed, expired = position, "Expired consents past their last date");
        }
        Ok(())
    }
}

fn corrupt_index(key: &str) -> HandlerError {
    HandlerError::permanent(
        "store_corrupt",
        format!(
            "consent expiry index entry {key:?} does not match a stored artefact; it was changed outside underwrite"
        ),
    )
}

#[async_trait]
impl Service for Consent {
    fn name(&self) -> &'static str {
        "consent"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["consent.granted", "consent.withdrawn", "day.closed"]
    }

    fn commands(&self) -> &'static [&'static str] {
        &["application.received"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = typed_payload(event)?;
        let mut outcome = Outcome::default();
        match &payload {
            EventPayload::ConsentGranted(grant) => {
                self.on_granted(grant, context, &mut outcome).await?
            }
            EventPayload::ConsentWithdrawn(withdrawal) => {
                self.on_withdrawn(withdrawal, context, &mut outcome).await?
            }
            EventPayload::DayClosed(closed) => {
                self.on_day_closed(event, closed.business_date, context, &mut outcome)
                    .await?
            }
            // The origination saga's first step: no personal data of the
            // applicant is processed for credit assessment without active
            // consent for it (DPDP Act 2023, s. 6).
            EventPayload::ApplicationReceived(application) => {
                require_consent(
                    context.store,
                    application.borrower_id.as_str(),
                    CREDIT_ASSESSMENT,
                    event.business_date,
                )
                .await?;
            }
            _ => {
                return Err(unsubscribed(self.name(), event));
            }
        }
        Ok(outcome)
    }
}

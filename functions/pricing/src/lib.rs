//! The pricing service: prices each scored application from the rate grid
//! and the fee tariff, with its APR and contingent charges.
//!
//! `application.received` records the application; `risk.scored` prices
//! it and emits `pricing.quoted`. Both check the applicant's consent for
//! [`CREDIT_ASSESSMENT`] first. `quote.withdrawn`, the origination saga's
//! compensation, marks the application withdrawn, and a later score for it
//! is rejected.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_consent::require_consent;
use underwrite_domain::pricing::{PricingError, PricingPolicy, PricingRequest, quote};
use underwrite_events::origination::{
    ApplicationReceived, PricingQuoted, QuoteWithdrawn, RiskScored,
};
use underwrite_events::{Envelope, EventPayload};
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite};

pub use underwrite_consent::CREDIT_ASSESSMENT;

/// Key prefix of recorded applications.
pub const APPLICATION_PREFIX: &str = "pricing/application/";

/// Key prefix of withdrawn quotes.
pub const WITHDRAWN_PREFIX: &str = "pricing/withdrawn/";

/// Returns the store key of an application.
pub fn application_key(application_id: &str) -> String {
    format!("{APPLICATION_PREFIX}{application_id}")
}

/// Returns the store key of an application's quote withdrawal.
pub fn withdrawn_key(application_id: &str) -> String {
    format!("{WITHDRAWN_PREFIX}{application_id}")
}

/// A withdrawn quote, as the pricing service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    /// Why the saga withdrew it.
    pub reason: String,
    /// The business date of the withdrawal.
    pub withdrawn_on: underwrite_domain::BusinessDate,
}

/// Checks the applicant's consent for [`CREDIT_ASSESSMENT`], then records
/// the application at `key` unless the same application is already there.
/// The same application id with other terms is a permanent
/// `application_conflict`. Pricing and risk both keep the application so.
pub async fn record_application(
    event: &Envelope,
    application: &ApplicationReceived,
    context: &Context<'_>,
    key: String,
) -> Result<Outcome, HandlerError> {
    require_consent(
        context.store,
        application.borrower_id.as_str(),
        CREDIT_ASSESSMENT,
        event.business_date,
    )
    .await?;
    let (existing, read) = read_state::<ApplicationReceived>(context.store, &key).await?;
    let mut outcome = Outcome::default();
    match existing {
        Some(existing) if &existing == application => {}
        Some(_) => {
            return Err(HandlerError::permanent(
                "application_conflict",
                format!(
                    "application {} was already received with different terms; send a new application_id",
                    application.application_id
                ),
            ));
        }
        None => outcome
            .writes
            .push(StateWrite::put(key, application, &read)),
    }
    Ok(outcome)
}

/// The pricing service.
pub struct Pricing {
    policy: PricingPolicy,
}

impl Pricing {
    /// Creates a pricing service with this rate grid and tariff.
    pub fn new(policy: PricingPolicy) -> Self {
        Pricing { policy }
    }

    async fn on_application(
        &self,
        event: &Envelope,
        application: &ApplicationReceived,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let key = application_key(application.application_id.as_str());
        record_application(event, application, context, key).await
    }

    async fn on_withdrawn(
        &self,
        event: &Envelope,
        withdrawn: &QuoteWithdrawn,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let key = withdrawn_key(withdrawn.application_id.as_str());
        let (existing, read) = read_state::<Withdrawal>(context.store, &key).await?;
        if existing.is_some() {
            return Ok(Outcome::default());
        }
        let record = Withdrawal {
            reason: withdrawn.reason.clone(),
            withdrawn_on: event.business_date,
        };
        tracing::info!(application_id = %withdrawn.application_id, reason = %withdrawn.reason, "Withdrew the quote of an application");
        Ok(Outcome {
            writes: vec![StateWrite::put(key, &record, &read)],
            emits: Vec::new(),
        })
    }

    async fn on_scored(
        &self,
        event: &Envelope,
        scored: &RiskScored,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let (withdrawal, _) = read_state::<Withdrawal>(
            context.store,
            &withdrawn_key(scored.application_id.as_str()),
        )
        .await?;
        if let Some(withdrawal) = withdrawal {
            return Err(HandlerError::permanent(
                "quote_withdrawn",
                format!(
                    "application {} was withdrawn on {} ({}); send a new application_id to price it again",
                    scored.application_id, withdrawal.withdrawn_on, withdrawal.reason
                ),
            ));
        }
        let key = application_key(scored.application_id.as_str());
        let (application, _) = read_state::<ApplicationReceived>(context.store, &key).await?;
        let application = application.ok_or_else(|| {
            HandlerError::retryable(
                "application_not_found",
                format!(
                    "application {} not found for risk.scored: send the application.received first or check the application_id",
                    scored.application_id
                ),
            )
        })?;
        require_consent(
            context.store,
            application.borrower_id.as_str(),
            CREDIT_ASSESSMENT,
            event.business_date,
        )
        .await?;
        let request = PricingRequest {
            grade: scored.grade.clone(),
            amount: application.amount,
            tenor_months: application.tenor_months,
            first_due_date: application.first_due_date,
            rate_type: application.rate_type,
            borrower_type: application.borrower_type,
            purpose: application.purpose,
            microfinance: application.microfinance,
        };
        let quote = quote(&self.policy, &request).map_err(|error| {
            let code = match error {
                PricingError::UnknownGrade { .. } => "unknown_grade",
                PricingError::Schedule(_) => "invalid_application",
                PricingError::Apr(_) => "invalid_fees",
            };
            HandlerError::permanent(
                code,
                format!("application {}: {error}", scored.application_id),
            )
        })?;
        tracing::debug!(
            application_id = %scored.application_id,
            grade = %quote.grade,
            apr = %quote.apr,
            "Priced application"
        );
        let quoted = PricingQuoted {
            application_id: application.application_id.clone(),
            borrower_id: application.borrower_id.clone(),
            product: application.product.clone(),
            quote,
        };
        Ok(Outcome {
            writes: Vec::new(),
            emits: vec![Envelope::caused_by(
                event,
                0,
                context.service,
                application.application_id.as_str(),
                event.business_date,
                &EventPayload::PricingQuoted(quoted),
            )],
        })
    }
}

#[async_trait]
impl Service for Pricing {
    fn name(&self) -> &'static str {
        "pricing"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["application.received", "risk.scored"]
    }

    fn commands(&self) -> &'static [&'static str] {
        &["quote.withdrawn"]
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
            EventPayload::RiskScored(scored) => self.on_scored(event, scored, context).await,
            EventPayload::QuoteWithdrawn(withdrawn) => {
                self.on_withdrawn(event, withdrawn, context).await
            }
            _ => Err(unsubscribed(self.name(), event)),
        }
    }
}

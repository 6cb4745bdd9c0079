//! The risk service: scores each application that cleared the fraud checks.
//!
//! `application.received` records the application under
//! `risk/application/<id>`; `fraud.cleared` scores it with the scorecard
//! and emits `risk.scored` with the PD, the grade, the model version and
//! the reason codes. Both check the applicant's consent for
//! [`CREDIT_ASSESSMENT`] first. The model is the committed file
//! `functions/risk/model/german-credit-woe-1.json`, built into the binary;
//! `underwrite train risk` rebuilds it (`docs/risk-model.md`).

#![warn(missing_docs)]

use std::collections::BTreeMap;

use async_trait::async_trait;
use underwrite_consent::{CREDIT_ASSESSMENT, require_consent};
use underwrite_domain::fraud::age_in_years;
use underwrite_domain::scorecard::{Scorecard, ScorecardError, Value, format_pd};
use underwrite_events::origination::{ApplicationReceived, FraudCleared, RiskScored};
use underwrite_events::{Envelope, EventPayload};
use underwrite_pricing::record_application;
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service};

/// The committed model file, built into the binary.
pub const BUNDLED_MODEL: &str = include_str!("../model/german-credit-woe-1.json");

/// Key prefix of recorded applications.
pub const APPLICATION_PREFIX: &str = "risk/application/";

/// Returns the store key of an application.
pub fn application_key(application_id: &str) -> String {
    format!("{APPLICATION_PREFIX}{application_id}")
}

/// Parses and checks a model file.
pub fn load_model(json: &str) -> Result<Scorecard, ScorecardError> {
    let card: Scorecard = serde_json::from_str(json).map_err(|error| {
        ScorecardError::Invalid(format!("the model file is not a scorecard: {error}"))
    })?;
    card.validate()?;
    Ok(card)
}

/// Returns the scorecard's feature values for an application: the tenor,
/// the amount in whole rupees and the age on the application date from the
/// application itself, and the categories from its credit profile.
pub fn features(application: &ApplicationReceived) -> BTreeMap<String, Value> {
    let mut values = BTreeMap::from([
        (
            "tenor_months".to_string(),
            Value::Number(i64::from(application.tenor_months)),
        ),
        (
            "amount_rupees".to_string(),
            Value::Number(application.amount.as_paise() / 100),
        ),
        (
            "age_years".to_string(),
            Value::Number(age_in_years(
                application.date_of_birth,
                application.applied_on,
            )),
        ),
    ]);
    for (name, label) in application.credit_profile.fields() {
        let value = label.map_or(Value::Missing, |label| Value::Category(label.to_string()));
        values.insert(name.to_string(), value);
    }
    values
}

/// The risk service.
pub struct Risk {
    model: Scorecard,
}

impl Risk {
    /// Creates a risk service that scores with `model`.
    pub fn new(model: Scorecard) -> Self {
        Risk { model }
    }

    /// Creates a risk service with the committed model.
    pub fn bundled() -> Self {
        Risk::new(load_model(BUNDLED_MODEL).expect("the committed model file is valid"))
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

    async fn on_cleared(
        &self,
        event: &Envelope,
        cleared: &FraudCleared,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let key = application_key(cleared.application_id.as_str());
        let (application, _) = read_state::<ApplicationReceived>(context.store, &key).await?;
        let application = application.ok_or_else(|| {
            HandlerError::retryable(
                "application_not_found",
                format!(
                    "application {} not found for fraud.cleared: send the application.received first or check the application_id",
                    cleared.application_id
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
        let score = self.model.score(&features(&application)).map_err(|error| {
            HandlerError::permanent(
                "invalid_features",
                format!("application {}: {error}", cleared.application_id),
            )
        })?;
        let scored = RiskScored {
            application_id: application.application_id.clone(),
            pd: format_pd(score.pd),
            grade: underwrite_domain::pricing::RiskGrade::parse(&score.grade).map_err(|error| {
                HandlerError::permanent(
                    "invalid_model",
                    format!("model {}: {error}", self.model.version),
                )
            })?,
            model_version: self.model.version.clone(),
            reason_codes: score.reason_codes,
        };
        tracing::debug!(
            application_id = %scored.application_id,
            grade = %scored.grade,
            pd = %scored.pd,
            "Scored application"
        );
        Ok(Outcome {
            writes: Vec::new(),
            emits: vec![Envelope::caused_by(
                event,
                0,
                context.service,
                application.application_id.as_str(),
                event.business_date,
                &EventPayload::RiskScored(scored),
            )],
        })
    }
}

#[async_trait]
impl Service for Risk {
    fn name(&self) -> &'static str {
        "risk"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &["application.received", "fraud.cleared"]
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
            EventPayload::FraudCleared(cleared) => self.on_cleared(event, cleared, context).await,
            _ => Err(unsubscribed(self.name(), event)),
        }
    }
}

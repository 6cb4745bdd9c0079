//! Sanction, disbursal and the cooling-off exit of loans the origination
//! saga brings in.

use serde::{Deserialize, Serialize};
use underwrite_consent::{CREDIT_ASSESSMENT, require_consent};
use underwrite_domain::cooling_off::{CoolingOffExit, cooling_off_exit as exit_amount};
use underwrite_domain::{BusinessDate, Paise, ProductCatalog};
use underwrite_events::origination::{
    ApplicationReceived, CoolingOffExitComputed, CoolingOffExitRequested, KfsAccepted,
    LoanSanctioned, SanctionCancelled,
};
use underwrite_events::payloads::LoanDisbursed;
use underwrite_events::{Envelope, EventPayload, LoanId};
use underwrite_kfs::require_accepted_kfs;
use underwrite_pricing::application_key;
use underwrite_runtime::service::read_state;
use underwrite_runtime::{Context, HandlerError, Outcome, StateWrite};

use crate::{LoanRecord, disburse, loan_key, loan_not_found};

/// Key prefix of sanctions.
pub const SANCTION_PREFIX: &str = "sanction/";

/// Key prefix of recorded cooling-off exits.
pub const COOLING_OFF_EXIT_PREFIX: &str = "cooling_off_exit/";

/// Returns the store key of a loan's sanction.
pub fn sanction_key(loan_id: &str) -> String {
    format!("{SANCTION_PREFIX}{loan_id}")
}

/// Returns the store key of a loan's cooling-off exit.
pub fn cooling_off_exit_key(loan_id: &str) -> String {
    format!("{COOLING_OFF_EXIT_PREFIX}{loan_id}")
}

/// A sanction as the mechanism service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanctionRecord {
    /// The sanction as emitted.
    pub sanction: LoanSanctioned,
    /// Why the origination saga cancelled it, once cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<String>,
}

fn sanction_cancelled(loan_id: &str, reason: &str) -> HandlerError {
    HandlerError::permanent(
        "sanction_cancelled",
        format!(
            "the sanction of loan {loan_id} was cancelled ({reason}); the application must go through origination again"
        ),
    )
}

/// Sanctions the loan of an accepted KFS. The acceptance must fall within
/// the KFS's validity and the KFS must not be void: sanction requires
/// acceptance within validity (RBI KFS circular RBI/2024-25/18), so an
/// expired KFS is a permanent `kfs_expired` and no sanction.
pub(crate) async fn sanction(
    event: &Envelope,
    accepted: &KfsAccepted,
    context: &Context<'_>,
) -> Result<Outcome, HandlerError> {
    let kfs = require_accepted_kfs(
        context.store,
        &accepted.proposal_number,
        accepted.accepted_on,
    )
    .await?;
    if kfs.application_id != accepted.application_id.as_str() {
        return Err(HandlerError::permanent(
            "kfs_application_mismatch",
            format!(
                "KFS {} belongs to application {}, not {}; check the proposal number",
                accepted.proposal_number, kfs.application_id, accepted.application_id
            ),
        ));
    }
    let (application, _) = read_state::<ApplicationReceived>(
        context.store,
        &application_key(accepted.application_id.as_str()),
    )
    .await?;
    let application = application.ok_or_else(|| {
        HandlerError::retryable(
            "application_not_found",
            format!(
                "application {} not found for sanction: pricing has not recorded it; send the application.received first",
                accepted.application_id
            ),
        )
    })?;
    let sanctioned_on = event.business_date;
    let quote = &kfs.quote;
    if quote.first_due_date <= sanctioned_on {
        return Err(HandlerError::permanent(
            "first_due_date_passed",
            format!(
                "the first instalment of KFS {} is due on {}, not after the sanction on {}; the application must be priced again with a later first due date",
                kfs.proposal_number, quote.first_due_date, sanctioned_on
            ),
        ));
    }
    let loan_id = LoanId::parse(accepted.application_id.as_str())
        .map_err(|error| HandlerError::permanent("invalid_event", error.to_string()))?;
    let sanction = LoanSanctioned {
        application_id: accepted.application_id.clone(),
        loan_id: loan_id.clone(),
        borrower_id: application.borrower_id.clone(),
        product: application.product.clone(),
        proposal_number: kfs.proposal_number.clone(),
        principal: quote.amount,
        annual_rate: quote.annual_rate,
        apr: kfs.apr,
        tenor_months: quote.tenor_months,
        first_due_date: quote.first_due_date,
        net_disbursed: quote.net_disbursed,
        cooling_off_days: kfs.cooling_off_days,
        sanctioned_on,
    };
    let key = sanction_key(loan_id.as_str());
    let (existing, read) = read_state::<SanctionRecord>(context.store, &key).await?;
    let mut outcome = Outcome::default();
    match existing {
        Some(SanctionRecord {
            cancelled: Some(reason),
            ..
        }) => return Err(sanction_cancelled(loan_id.as_str(), &reason)),
        // A repeated acceptance keeps the first sanction and announces it
        // again, so that the saga's step still gets its answer.
        Some(record) => {
            outcome
                .emits
                .push(sanctioned_event(event, &record.sanction));
            return Ok(outcome);
        }
        None => {}
    }
    let record = SanctionRecord {
        sanction,
        cancelled: None,
    };
    tracing::info!(loan_id = %loan_id, proposal_number = %kfs.proposal_number, "Sanctioned a loan");
    outcome.writes.push(StateWrite::put(key, &record, &read));
    outcome
        .emits
        .push(sanctioned_event(event, &record.sanction));
    Ok(outcome)
}

fn sanctioned_event(cause: &Envelope, sanction: &LoanSanctioned) -> Envelope {
    Envelope::caused_by(
        cause,
        0,
        "mechanism",
        sanction.loan_id.as_str(),
        sanction.sanctioned_on,
        &EventPayload::LoanSanctioned(sanction.clone()),
    )
}

/// Disburses a sanctioned loan on the sanction's terms: builds its ledger
/// and emits `loan.disbursed`, dated the sanction's business date. The
/// borrower's consent must still be active, since servicing processes
/// their data (DPDP Act 2023, s. 6).
pub(crate) async fn disburse_sanctioned(
    products: &ProductCatalog,
    event: &Envelope,
    sanctioned: &LoanSanctioned,
    context: &Context<'_>,
) -> Result<Outcome, HandlerError> {
    let loan_id = sanctioned.loan_id.as_str();
    let (record, _) = read_state::<SanctionRecord>(context.store, &sanction_key(loan_id)).await?;
    let record = record.ok_or_else(|| {
        HandlerError::retryable(
            "sanction_not_found",
            format!(
                "loan {loan_id} has no sanction to disburse: no kfs.accepted has been sanctioned for it"
            ),
        )
    })?;
    if let Some(reason) = &record.cancelled {
        return Err(sanction_cancelled(loan_id, reason));
    }
    if &record.sanction != sanctioned {
        return Err(HandlerError::permanent(
            "sanction_conflict",
            format!(
                "loan.sanctioned {} differs from the sanction recorded for loan {loan_id}; disburse the recorded sanction",
                event.id
            ),
        ));
    }
    require_consent(
        context.store,
        sanctioned.borrower_id.as_str(),
        CREDIT_ASSESSMENT,
        event.business_date,
    )
    .await?;
    let terms = LoanDisbursed {
        loan_id: sanctioned.loan_id.clone(),
        borrower_id: sanctioned.borrower_id.clone(),
        product: sanctioned.product.clone(),
        principal: sanctioned.principal,
        annual_rate: sanctioned.annual_rate,
        tenor_months: sanctioned.tenor_months,
        disbursed_on: sanctioned.sanctioned_on,
        first_due_date: sanctioned.first_due_date,
        secured_value: Paise::ZERO,
    };
    let key = loan_key(loan_id);
    let (existing, read) = read_state::<LoanRecord>(context.store, &key).await?;
    let mut outcome = Outcome::default();
    if let Some(created) = disburse(products, &terms, existing)? {
        tracing::info!(loan_id = %loan_id, principal = %terms.principal, "Disbursed a sanctioned loan");
        outcome.writes.push(StateWrite::put(key, &created, &read));
    }
    outcome.emits.push(Envelope::caused_by(
        event,
        0,
        "mechanism",
        loan_id,
        terms.disbursed_on,
        &EventPayload::LoanDisbursed(terms),
    ));
    Ok(outcome)
}

/// Cancels a sanction not yet disbursed; the origination saga's
/// compensation for the sanction step.
pub(crate) async fn cancel(
    cancelled: &SanctionCancelled,
    context: &Context<'_>,
) -> Result<Outcome, HandlerError> {
    let loan_id = cancelled.loan_id.as_str();
    let key = sanction_key(loan_id);
    let (record, read) = read_state::<SanctionRecord>(context.store, &key).await?;
    // Nothing sanctioned, nothing to cancel.
    let Some(mut record) = record else {
        return Ok(Outcome::default());
    };
    if record.cancelled.is_some() {
        return Ok(Outcome::default());
    }
    let (loan, _) = read_state::<LoanRecord>(context.store, &loan_key(loan_id)).await?;
    if loan.is_some() {
        return Err(HandlerError::permanent(
            "loan_disbursed",
            format!(
                "loan {loan_id} was already disbursed, so its sanction cannot be cancelled; the borrower may exit in the cooling-off period with loan.cooling_off_exit.requested"
            ),
        ));
    }
    record.cancelled = Some(cancelled.reason.clone());
    tracing::info!(loan_id = %loan_id, reason = %cancelled.reason, "Cancelled a sanction");
    Ok(Outcome {
        writes: vec![StateWrite::put(key, &record, &read)],
        emits: Vec::new(),
    })
}

/// The exit recorded for a loan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedExit {
    computed: CoolingOffExitComputed,
}

/// Computes and records what the borrower repays to leave a loan in its
/// cooling-off period. RBI Digital Lending Directions 2025 (as the 2022
/// Guidelines): within the board-set cooling-off period, at least one day,
/// the borrower exits by paying the principal and the proportionate APR,
/// with no penalty. The period and the APR are those of the KFS accepted.
/// An exit outside the period is a permanent error naming the dates.
pub(crate) async fn cooling_off_exit(
    event: &Envelope,
    request: &CoolingOffExitRequested,
    context: &Context<'_>,
) -> Result<Outcome, HandlerError> {
    let loan_id = request.loan_id.as_str();
    let (loan, _) = read_state::<LoanRecord>(context.store, &loan_key(loan_id)).await?;
    let loan = loan.ok_or_else(|| loan_not_found(loan_id, &event.event_type))?;
    let (sanction, _) = read_state::<SanctionRecord>(context.store, &sanction_key(loan_id)).await?;
    let sanction = sanction.ok_or_else(|| {
        HandlerError::permanent(
            "not_originated",
            format!(
                "loan {loan_id} was disbursed without a sanction here, so its KFS's APR and cooling-off period are unknown; settle the exit as a prepayment"
            ),
        )
    })?;
    let terms = &loan.terms;
    let sanction = &sanction.sanction;
    let CoolingOffExit {
        days_held,
        principal,
        interest,
        total,
    } = exit_amount(
        terms.principal,
        sanction.apr,
        terms.disbursed_on,
        sanction.cooling_off_days,
        request.exit_on,
    )
    .map_err(|error| HandlerError::permanent(error.code(), format!("loan {loan_id}: {error}")))?;
    let computed = CoolingOffExitComputed {
        loan_id: request.loan_id.clone(),
        borrower_id: terms.borrower_id.clone(),
        exit_on: request.exit_on,
        disbursed_on: terms.disbursed_on,
        last_exit_day: underwrite_domain::cooling_off::last_exit_day(
            terms.disbursed_on,
            sanction.cooling_off_days,
        ),
        days_held,
        principal,
        apr: sanction.apr,
        interest,
        total,
    };
    let key = cooling_off_exit_key(loan_id);
    let (existing, read) = read_state::<RecordedExit>(context.store, &key).await?;
    let mut outcome = Outcome::default();
    match existing {
        Some(recorded) if recorded.computed.exit_on != request.exit_on => {
            return Err(exit_conflict(loan_id, recorded.computed.exit_on));
        }
        Some(_) => {}
        None => {
            tracing::info!(loan_id = %loan_id, exit_on = %request.exit_on, total = %total, "Computed a cooling-off exit");
            let recorded = RecordedExit {
                computed: computed.clone(),
            };
            outcome.writes.push(StateWrite::put(key, &recorded, &read));
        }
    }
    outcome.emits.push(Envelope::caused_by(
        event,
        0,
        "mechanism",
        loan_id,
        event.business_date,
        &EventPayload::CoolingOffExitComputed(computed),
    ));
    Ok(outcome)
}

fn exit_conflict(loan_id: &str, recorded_on: BusinessDate) -> HandlerError {
    HandlerError::permanent(
        "exit_conflict",
        format!(
            "loan {loan_id} already has a cooling-off exit on {recorded_on}; one exit is recorded per loan"
        ),
    )
}

//! The mechanism service: sanction, disbursal, the cooling-off exit and
//! each loan's ledger.
//!
//! The origination saga sends it the borrower's `kfs.accepted`. When the
//! acceptance falls within the KFS's validity, the service sanctions the
//! loan and emits `loan.sanctioned`. The saga then sends that
//! `loan.sanctioned` back, and the service disburses the loan on the
//! accepted quote's terms as `loan.disbursed`. `sanction.cancelled` undoes
//! a sanction not yet disbursed. `loan.cooling_off_exit.requested`
//! computes what the borrower repays to leave the loan in its cooling-off
//! period.
//!
//! `loan.disbursed` builds the repayment schedule; `repayment.received` and
//! `repayment.reversed` update the payments, backdated ones included. The
//! ledger keeps every payment with its value date, so any position is
//! recomputed from the whole history and a late or backdated event never
//! leaves a stale balance.

#![warn(missing_docs)]

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_domain::{DueDayRule, LoanLedger, Paise, Payment, ProductCatalog, Schedule};
use underwrite_events::payloads::{LoanDisbursed, RepaymentReceived, RepaymentReversed};
use underwrite_events::{Envelope, EventPayload};
use underwrite_runtime::service::{ParsedCache, read_state};

mod origination;

pub use origination::{
    COOLING_OFF_EXIT_PREFIX, SANCTION_PREFIX, SanctionRecord, cooling_off_exit_key, sanction_key,
};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite};

/// Key prefix of loan records.
pub const LOAN_PREFIX: &str = "loan/";

/// The store key of a loan's record.
pub fn loan_key(loan_id: &str) -> String {
    format!("{LOAN_PREFIX}{loan_id}")
}

/// A loan as the mechanism service keeps it.
///
/// Stored as its terms, due-day rule, charges and payments; the schedule is
/// a pure function of the terms and the rule, so it is rebuilt on reading
/// instead of being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoanRecord {
    /// The disbursal terms as received.
    pub terms: LoanDisbursed,
    /// The due-day rule the schedule was built with.
    pub due_day_rule: DueDayRule,
    /// Schedule and payments.
    pub ledger: LoanLedger,
}

#[derive(Serialize)]
struct StoredLoanRef<'a> {
    terms: &'a LoanDisbursed,
    due_day_rule: DueDayRule,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    charges: &'a [Paise],
    payments: &'a [Payment],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLoan {
    terms: LoanDisbursed,
    due_day_rule: DueDayRule,
    #[serde(default)]
    charges: Vec<Paise>,
    payments: Vec<Payment>,
}

impl Serialize for LoanRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredLoanRef {
            terms: &self.terms,
            due_day_rule: self.due_day_rule,
            charges: &self.ledger.charges,
            payments: &self.ledger.payments,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LoanRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = StoredLoan::deserialize(deserializer)?;
        let terms = &stored.terms;
        let schedule = Schedule::build(
            terms.principal,
            terms.annual_rate,
            terms.tenor_months,
            terms.first_due_date,
            stored.due_day_rule,
        )
        .map_err(|error| serde::de::Error::custom(format!("loan {}: {error}", terms.loan_id)))?;
        Ok(LoanRecord {
            terms: stored.terms,
            due_day_rule: stored.due_day_rule,
            ledger: LoanLedger {
                schedule,
                charges: stored.charges,
                payments: stored.payments,
            },
        })
    }
}

/// The mechanism service.
pub struct Mechanism {
    products: ProductCatalog,
    /// Loan records as last read or written, so that a loan's next
    /// repayment skips parsing its JSON and rebuilding its schedule.
    loans: ParsedCache<LoanRecord>,
}

/// Loan records kept parsed between repayments; about 1.5 KB of JSON each.
const LOAN_CACHE_LIMIT: usize = 16_384;

impl Mechanism {
    /// A mechanism service with these product settings.
    pub fn new(products: ProductCatalog) -> Self {
        Mechanism {
            products,
            loans: ParsedCache::new(LOAN_CACHE_LIMIT),
        }
    }
}

/// The error for an event about a loan not yet disbursed. Retryable, because
/// the disbursal may still be on its way; after the queue's receive limit it
/// lands in the dead-letter queue with this message.
pub fn loan_not_found(loan_id: &str, event_type: &str) -> HandlerError {
    HandlerError::retryable(
        "loan_not_found",
        format!(
            "loan {loan_id} not found for {event_type}: no loan.disbursed has been handled for it; send the disbursal first or check the loan_id"
        ),
    )
}

fn record_repayment(
    record: &mut LoanRecord,
    repayment: &RepaymentReceived,
) -> Result<bool, HandlerError> {
    let ledger = &mut record.ledger;
    if let Some(existing) = ledger
        .payments
        .iter()
        .find(|p| p.payment_id == repayment.payment_id.as_str())
    {
        if existing.amount == repayment.amount && existing.value_date == repayment.value_date {
            return Ok(false);
        }
        return Err(HandlerError::permanent(
            "payment_conflict",
            format!(
                "payment {} of loan {} was already recorded as {} valued {}; a correction needs a reversal and a new payment_id",
                repayment.payment_id, repayment.loan_id, existing.amount, existing.value_date
            ),
        ));
    }
    Ok(ledger.add_payment(
        repayment.payment_id.as_str(),
        repayment.value_date,
        repayment.amount,
    ))
}

fn record_reversal(
    record: &mut LoanRecord,
    reversal: &RepaymentReversed,
) -> Result<bool, HandlerError> {
    let ledger = &mut record.ledger;
    match ledger
        .payments
        .iter()
        .find(|p| p.payment_id == reversal.payment_id.as_str())
    {
        None => Err(HandlerError::retryable(
            "payment_not_found",
            format!(
                "payment {} of loan {} not found for repayment.reversed: send the repayment first or check the payment_id",
                reversal.payment_id, reversal.loan_id
            ),
        )),
        Some(payment) if payment.reversed_on.is_some() => Ok(false),
        Some(_) => Ok(ledger
            .reverse_payment(reversal.payment_id.as_str(), reversal.reversed_on)
            .is_some()),
    }
}

/// Applies a repayment or reversal to a loan record: shared by the
/// mechanism and npa services so both ledgers agree.
pub fn apply_to_record(
    record: &mut LoanRecord,
    payload: &EventPayload,
) -> Result<bool, HandlerError> {
    match payload {
        EventPayload::RepaymentReceived(repayment) => record_repayment(record, repayment),
        EventPayload::RepaymentReversed(reversal) => record_reversal(record, reversal),
        _ => Ok(false),
    }
}

/// Builds a loan record from its disbursal, or returns `None` if an
/// identical record exists. Shared by the mechanism and npa services so
/// both build the same schedule.
pub fn disburse(
    products: &ProductCatalog,
    terms: &LoanDisbursed,
    existing: Option<LoanRecord>,
) -> Result<Option<LoanRecord>, HandlerError> {
    if let Some(existing) = existing {
        if &existing.terms == terms {
            return Ok(None);
        }
        return Err(HandlerError::permanent(
            "loan_conflict",
            format!(
                "loan {} was already disbursed with different terms; send a new loan_id for a new loan",
                terms.loan_id
            ),
        ));
    }
    let rule = products.settings(&terms.product).due_day_rule;
    let schedule = Schedule::build(
        terms.principal,
        terms.annual_rate,
        terms.tenor_months,
        terms.first_due_date,
        rule,
    )
    .map_err(|error| {
        HandlerError::permanent(
            "invalid_schedule",
            format!("loan {}: {error}", terms.loan_id),
        )
    })?;
    Ok(Some(LoanRecord {
        terms: terms.clone(),
        due_day_rule: rule,
        ledger: LoanLedger::new(schedule),
    }))
}

fn invalid(event: &Envelope, error: impl std::fmt::Display) -> HandlerError {
    HandlerError::permanent("invalid_event", format!("event {}: {error}", event.id))
}

#[async_trait]
impl Service for Mechanism {
    fn name(&self) -> &'static str {
        "mechanism"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "loan.cooling_off_exit.requested",
        ]
    }

    fn commands(&self) -> &'static [&'static str] {
        &["kfs.accepted", "loan.sanctioned", "sanction.cancelled"]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = event.typed().map_err(|error| invalid(event, error))?;
        let mut outcome = Outcome::default();
        match &payload {
            EventPayload::LoanDisbursed(terms) => {
                let key = loan_key(terms.loan_id.as_str());
                let (existing, read) = read_state::<LoanRecord>(context.store, &key).await?;
                if let Some(record) = disburse(&self.products, terms, existing)? {
                    outcome.writes.push(StateWrite::put(key, &record, &read));
                }
            }
            EventPayload::RepaymentReceived(RepaymentReceived { loan_id, .. })
            | EventPayload::RepaymentReversed(RepaymentReversed { loan_id, .. }) => {
                let key = loan_key(loan_id.as_str());
                let (existing, read) = self.loans.read(context.store, &key).await?;
                let mut record =
                    existing.ok_or_else(|| loan_not_found(loan_id.as_str(), &event.event_type))?;
                if apply_to_record(&mut record, &payload)? {
                    let write = StateWrite::put(key, &record, &read);
                    self.loans.keep(&write, record);
                    outcome.writes.push(write);
                }
            }
            EventPayload::KfsAccepted(accepted) => {
                return origination::sanction(event, accepted, context).await;
            }
            EventPayload::LoanSanctioned(sanctioned) => {
                return origination::disburse_sanctioned(
                    &self.products,
                    event,
                    sanctioned,
                    context,
                )
                .await;
            }
            EventPayload::SanctionCancelled(cancelled) => {
                return origination::cancel(cancelled, context).await;
            }
            EventPayload::CoolingOffExitRequested(request) => {
                return origination::cooling_off_exit(event, request, context).await;
            }
            _ => {
                return Err(HandlerError::permanent(
                    "unsubscribed_type",
                    format!(
                        "mechanism does not handle {}; check the routing",
                        event.event_type
                    ),
                ));
            }
        }
        Ok(outcome)
    }
}

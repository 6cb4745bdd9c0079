//! The fee service: assesses penal charges on overdue instalments.
//!
//! It keeps its own copy of each loan's ledger from `loan.disbursed`,
//! `repayment.received` and `repayment.reversed`, built by the same
//! functions as the mechanism service's. At each `day.closed` it charges
//! every instalment that is unpaid `grace_days` after its due date, once,
//! and emits `fee.assess` for it. A repayment that arrives later, even
//! backdated, does not withdraw a charge already assessed. The charge is computed on the
//! instalment's unpaid interest and principal only, so charges never
//! compound (RBI/2023-24/53: a penal charge is a charge, never capitalised).
//!
//! NOTE: prepayment and foreclosure charges are computed by
//! `underwrite_domain::charges::foreclosure_charge`, but this service does
//! not assess them yet: `loan.disbursed` does not carry the quote's
//! prepayment terms, and no event requests a foreclosure.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use underwrite_domain::charges::assess_penal;
use underwrite_domain::pricing::PenalPolicy;
use underwrite_domain::{BusinessDate, Paise, ProductCatalog};
use underwrite_events::origination::{ChargeKind, FeeAssess};
use underwrite_events::payloads::{RepaymentReceived, RepaymentReversed};
use underwrite_events::{Envelope, EventPayload, LoanId};
use underwrite_mechanism::{LoanRecord, apply_to_record, disburse, loan_not_found};
use underwrite_runtime::service::{read_state, typed_payload, unsubscribed};
use underwrite_runtime::{Context, HandlerError, Outcome, Service, StateWrite, Versioned};

/// Key prefix of the fee service's loan records.
pub const LOAN_PREFIX: &str = "fee/loan/";

/// Key prefix of the agenda: one entry per instalment, keyed
/// `fee/agenda/<check date>/<loan id>/<instalment>`, where the check date
/// is the due date plus the grace days. Day-end reads only the entries due,
/// instead of every loan.
pub const AGENDA_PREFIX: &str = "fee/agenda/";

/// Agenda entries read per store scan at day-end.
const AGENDA_PAGE: usize = 500;

/// Returns the store key of a loan's record.
pub fn loan_key(loan_id: &str) -> String {
    format!("{LOAN_PREFIX}{loan_id}")
}

fn agenda_key(check_date: BusinessDate, loan_id: &str, instalment: u32) -> String {
    format!("{AGENDA_PREFIX}{check_date}/{loan_id}/{instalment:04}")
}

/// Splits an agenda key into its check date and loan id. Loan ids may
/// contain `/`, so the instalment is split off the end.
fn parse_agenda_key(key: &str) -> Result<(BusinessDate, String), HandlerError> {
    let rest = &key[AGENDA_PREFIX.len()..];
    let parsed = rest.split_once('/').and_then(|(date, tail)| {
        let (loan_id, _) = tail.rsplit_once('/')?;
        Some((date.parse().ok()?, loan_id.to_string()))
    });
    parsed.ok_or_else(|| corrupt_agenda(key))
}

fn corrupt_agenda(key: &str) -> HandlerError {
    HandlerError::permanent(
        "store_corrupt",
        format!(
            "fee agenda entry {key:?} does not match a stored loan; it was changed outside underwrite"
        ),
    )
}

/// Settings of the fee service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeeSettings {
    /// Days after the due date before an unpaid instalment is charged: with
    /// 0, at the day-end of the due date itself.
    pub grace_days: u32,
}

/// A loan as the fee service keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeLoan {
    /// The ledger, with the penal charges assessed levied on it.
    pub loan: LoanRecord,
    /// Penal charge by instalment number, for the instalments charged.
    #[serde(default)]
    pub assessed: BTreeMap<u32, Paise>,
}

/// The fee service.
pub struct Fee {
    penal: PenalPolicy,
    settings: FeeSettings,
    products: ProductCatalog,
}

impl Fee {
    /// Creates a fee service with this penal policy, grace and product settings.
    pub fn new(penal: PenalPolicy, settings: FeeSettings, products: ProductCatalog) -> Self {
        Fee {
            penal,
            settings,
            products,
        }
    }

    async fn on_day_closed(
        &self,
        event: &Envelope,
        closed: BusinessDate,
        context: &Context<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), HandlerError> {
        // Agenda entries due by the closed date, grouped by loan.
        let mut due: BTreeMap<String, Vec<(String, Versioned)>> = BTreeMap::new();
        let mut after: Option<String> = None;
        'scan: loop {
            let page = context
                .store
                .scan(AGENDA_PREFIX, after.as_deref(), AGENDA_PAGE)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, read) in page {
                let (check_date, loan_id) = parse_agenda_key(&key)?;
                if check_date > closed {
                    break 'scan;
                }
                due.entry(loan_id).or_default().push((key, read));
            }
        }
        let mut position = 0u32;
        for (loan_id, entries) in due {
            let key = loan_key(&loan_id);
            let (record, read) = read_state::<FeeLoan>(context.store, &key).await?;
            let mut record = record.ok_or_else(|| corrupt_agenda(&entries[0].0))?;
            let already: BTreeSet<u32> = record.assessed.keys().copied().collect();
            let assessments = assess_penal(
                &record.loan.ledger,
                closed,
                self.settings.grace_days,
                self.penal,
                &already,
            );
            for assessment in &assessments {
                record
                    .assessed
                    .insert(assessment.instalment, assessment.charge);
                levy(&mut record.loan, assessment.instalment, assessment.charge);
                let payload = FeeAssess {
                    loan_id: record.loan.terms.loan_id.clone(),
                    kind: ChargeKind::Penal,
                    instalment: assessment.instalment,
                    due_date: assessment.due_date,
                    basis: assessment.overdue,
                    amount: assessment.charge,
                    assessed_on: closed,
                };
                outcome.emits.push(Envelope::caused_by(
                    event,
                    position,
                    context.service,
                    &loan_id,
                    closed,
                    &EventPayload::FeeAssess(payload),
                ));
                position += 1;
            }
            if !assessments.is_empty() {
                outcome.writes.push(StateWrite::put(key, &record, &read));
            }
            for (agenda_key, agenda_read) in entries {
                outcome
                    .writes
                    .push(StateWrite::delete(agenda_key, &Some(agenda_read)));
            }
        }
        if position > 0 {
            tracing::info!(business_date = %closed, assessed = position, "Assessed penal charges on overdue instalments");
        }
        Ok(())
    }

    async fn on_loan_event(
        &self,
        loan_id: &LoanId,
        payload: &EventPayload,
        event: &Envelope,
        context: &Context<'_>,
        outcome: &mut Outcome,
    ) -> Result<(), HandlerError> {
        let key = loan_key(loan_id.as_str());
        let (existing, read) = read_state::<FeeLoan>(context.store, &key).await?;
        if let EventPayload::LoanDisbursed(terms) = payload {
            let previous = existing.map(|record| record.loan);
            if let Some(loan) = disburse(&self.products, terms, previous)? {
                for instalment in &loan.ledger.schedule.instalments {
                    let check_date = instalment
                        .due_date
                        .add_days(i64::from(self.settings.grace_days));
                    outcome.writes.push(StateWrite::put(
                        agenda_key(check_date, loan_id.as_str(), instalment.number),
                        &serde_json::json!({}),
                        &None,
                    ));
                }
                let record = FeeLoan {
                    loan,
                    assessed: BTreeMap::new(),
                };
                outcome.writes.push(StateWrite::put(key, &record, &read));
            }
            return Ok(());
        }
        let mut record =
            existing.ok_or_else(|| loan_not_found(loan_id.as_str(), &event.event_type))?;
        if apply_to_record(&mut record.loan, payload)? {
            outcome.writes.push(StateWrite::put(key, &record, &read));
        }
        Ok(())
    }
}

/// Adds `charge` to instalment `number`'s charges on the ledger copy, so
/// that payments go to it first, as on the servicing ledger.
fn levy(record: &mut LoanRecord, number: u32, charge: Paise) {
    let charges = &mut record.ledger.charges;
    let index = number as usize - 1;
    if charges.len() <= index {
        charges.resize(index + 1, Paise::ZERO);
    }
    charges[index] += charge;
}

#[async_trait]
impl Service for Fee {
    fn name(&self) -> &'static str {
        "fee"
    }

    fn subscriptions(&self) -> &'static [&'static str] {
        &[
            "loan.disbursed",
            "repayment.received",
            "repayment.reversed",
            "day.closed",
        ]
    }

    async fn handle(
        &self,
        event: &Envelope,
        context: &Context<'_>,
    ) -> Result<Outcome, HandlerError> {
        let payload = typed_payload(event)?;
        let mut outcome = Outcome::default();
        match &payload {
            EventPayload::LoanDisbursed(terms) => {
                self.on_loan_event(&terms.loan_id, &payload, event, context, &mut outcome)
                    .await?
            }
            EventPayload::RepaymentReceived(RepaymentReceived { loan_id, .. })
            | EventPayload::RepaymentReversed(RepaymentReversed { loan_id, .. }) => {
                self.on_loan_event(loan_id, &payload, event, context, &mut outcome)
                    .await?
            }
            EventPayload::DayClosed(closed) => {
                self.on_day_closed(event, closed.business_date, context, &mut outcome)
                    .await?
            }
            _ => {
                return Err(unsubscribed(self.name(), event));
            }
        }
        Ok(outcome)
    }
}

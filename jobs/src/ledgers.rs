//! Loan positions from the `mechanism` service's ledgers, read through the
//! runtime's [`Store`] port: the same code exports the positions of the
//! embedded SQLite store and of the DynamoDB store to the lake, runs the
//! day-end job over them and writes the NPA report.

use std::path::Path;

use anyhow::{Context as _, bail};
use underwrite_domain::ledger::LedgerIndex;
use underwrite_domain::provisioning::is_unsecured_exposure;
use underwrite_domain::{BusinessDate, Paise};
use underwrite_mechanism::{LOAN_PREFIX, LoanRecord};
use underwrite_runtime::Store;

use crate::day_end::{DayEndSummary, JobPolicy, run_day_end};
use crate::lake::{PositionRow, write_positions};
use crate::report::{ReportSummary, npa_report};

/// Loads every loan record in the store, by loan id.
pub async fn load_loans(store: &dyn Store) -> anyhow::Result<Vec<LoanRecord>> {
    let mut loans = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(LOAN_PREFIX, after.as_deref(), 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, read) in page {
            let record: LoanRecord = read
                .parse(&key)
                .with_context(|| format!("stored value at key {key:?} is not a loan record"))?;
            loans.push(record);
        }
    }
    Ok(loans)
}

/// Positions of the loans live at the end of `as_of`: disbursed on or before
/// it and with principal outstanding or an amount overdue.
/// `indexes` holds each loan's running totals, in the order of `loans`, so
/// that a range of dates builds them once.
pub fn positions_on(
    loans: &[LoanRecord],
    indexes: &[LedgerIndex<'_>],
    as_of: BusinessDate,
) -> Vec<PositionRow> {
    loans
        .iter()
        .zip(indexes)
        .filter(|(loan, _)| loan.terms.disbursed_on <= as_of)
        .filter_map(|(loan, index)| {
            let position = index.position(as_of);
            if position.outstanding_principal == Paise::ZERO && position.overdue == Paise::ZERO {
                return None;
            }
            Some(PositionRow {
                loan_id: loan.terms.loan_id.to_string(),
                borrower_id: loan.terms.borrower_id.to_string(),
                oldest_unpaid_due: position.oldest_unpaid_due,
                overdue: position.overdue,
                outstanding_principal: position.outstanding_principal,
                secured_value: loan.terms.secured_value,
                unsecured_exposure: is_unsecured_exposure(
                    loan.terms.principal,
                    loan.terms.secured_value,
                ),
                loss_identified: false,
            })
        })
        .collect()
}

/// Principal outstanding over every loan at the end of `as_of`, straight
/// from the ledgers: what the report's total must reconcile to.
pub fn ledger_outstanding(loans: &[LoanRecord], as_of: BusinessDate) -> Paise {
    loans
        .iter()
        .filter(|loan| loan.terms.disbursed_on <= as_of)
        .map(|loan| loan.ledger.position(as_of).outstanding_principal)
        .sum()
}

/// Finds the earliest disbursal date in the book.
pub fn first_disbursal(loans: &[LoanRecord]) -> Option<BusinessDate> {
    loans.iter().map(|loan| loan.terms.disbursed_on).min()
}

/// Exports positions to `lake` and runs the day-end job for every date from
/// `from` to `to`, calling `on_day` after each. Each date's snapshot carries
/// NPA status to the next, so a range is run in date order. Returns the
/// number of dates.
pub fn classify_range(
    lake: &Path,
    policy: &JobPolicy,
    loans: &[LoanRecord],
    from: BusinessDate,
    to: BusinessDate,
    mut on_day: impl FnMut(&DayEndSummary),
) -> anyhow::Result<usize> {
    if from > to {
        bail!("invalid range: --from {from} is after --to {to}");
    }
    let indexes: Vec<LedgerIndex<'_>> = loans.iter().map(|loan| loan.ledger.index()).collect();
    let mut day = from;
    while day <= to {
        let rows = positions_on(loans, &indexes, day);
        write_positions(lake, day, &rows)
            .with_context(|| format!("Failed to export positions for {day}"))?;
        let summary = run_day_end(lake, day, policy)
            .with_context(|| format!("Failed to run day-end for {day}"))?;
        on_day(&summary);
        day = day.succ();
    }
    Ok(to.days_since(from) as usize + 1)
}

/// Runs day-end over `loans` from the first disbursal to `as_of`, so that
/// every snapshot reflects the ledgers as they are now (backdated payments
/// and reversals included), then writes the NPA report of `as_of` into
/// `out_dir`. Returns the report's summary and the ledgers' outstanding
/// principal, which the report's total must equal. `store_name` names the
/// store in the error for an empty book.
pub fn npa_report_from_loans(
    lake: &Path,
    policy: &JobPolicy,
    loans: &[LoanRecord],
    as_of: BusinessDate,
    out_dir: &Path,
    store_name: &str,
    on_day: impl FnMut(&DayEndSummary),
) -> anyhow::Result<(ReportSummary, Paise)> {
    let Some(first) = first_disbursal(loans) else {
        bail!(
            "no loans in the store {store_name}; run `underwrite run --input FILE --until-idle` first"
        );
    };
    if as_of < first {
        bail!("--as-of {as_of} is before the first disbursal ({first}); no loan existed then");
    }
    classify_range(lake, policy, loans, first, as_of, on_day)?;
    let summary = npa_report(lake, as_of, out_dir, policy)?;
    Ok((summary, ledger_outstanding(loans, as_of)))
}

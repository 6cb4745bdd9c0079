//! A loan's ledger: its schedule and the payments against it, and the
//! position (arrears, DPD inputs, outstanding) on any business date.

use serde::{Deserialize, Serialize};

use crate::date::BusinessDate;
use crate::money::Paise;
use crate::schedule::Schedule;

/// A repayment as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The lender's payment id, unique within the loan.
    pub payment_id: String,
    /// The date from which the money counts (may precede its receipt).
    pub value_date: BusinessDate,
    /// Amount received.
    pub amount: Paise,
    /// Set when the payment was reversed (a bounced instrument, say). A
    /// reversed payment counts for nothing, from its value date on.
    pub reversed_on: Option<BusinessDate>,
}

/// A loan's arrears and balance at the end of one business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Due date of the oldest instalment due on or before the date and not
    /// fully paid; `None` when nothing is overdue.
    pub oldest_unpaid_due: Option<BusinessDate>,
    /// Amount due on or before the date and not paid.
    pub overdue: Paise,
    /// Principal not yet repaid.
    pub outstanding_principal: Paise,
    /// Payments received beyond everything the schedule requires.
    pub excess: Paise,
}

impl Position {
    /// Days past due by the RBI day-end rule: the due date itself is DPD 1.
    pub fn dpd(&self, as_of: BusinessDate) -> u32 {
        crate::classification::days_past_due(as_of, self.oldest_unpaid_due)
    }
}

/// How much of one instalment a set of payments has covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalmentAllocation {
    /// 1-based instalment number.
    pub number: u32,
    /// Due date.
    pub due_date: BusinessDate,
    /// Charges paid (penal and other charges levied on the instalment).
    pub charges_paid: Paise,
    /// Interest paid.
    pub interest_paid: Paise,
    /// Principal paid.
    pub principal_paid: Paise,
    /// Amount still unpaid.
    pub unpaid: Paise,
}

/// A loan's schedule, charges and payments.
///
/// Payments are allocated to the oldest unpaid instalment first and, within
/// an instalment, to charges, then interest, then principal. Money beyond the
/// instalments already due pays the next instalments in order (an advance);
/// money beyond the whole schedule is held as excess. Because allocation is
/// oldest-first and sequential, instalment `k` is fully paid exactly when the
/// payments valued so far reach the cumulative amount due through `k`; the
/// position on any date is found by binary search on those running totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoanLedger {
    /// The repayment schedule.
    pub schedule: Schedule,
    /// Charges levied on each instalment, by instalment number − 1. Empty
    /// means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<Paise>,
    /// Payments ordered by value date, then payment id, reversed ones
    /// included. The order does not depend on the order of receipt, so the
    /// same payments delivered in any order give the same ledger.
    pub payments: Vec<Payment>,
}

impl LoanLedger {
    /// Creates a ledger with no charges and no payments.
    pub fn new(schedule: Schedule) -> Self {
        LoanLedger {
            schedule,
            charges: Vec::new(),
            payments: Vec::new(),
        }
    }

    /// Returns the sanctioned principal.
    pub fn principal(&self) -> Paise {
        self.schedule.instalments.iter().map(|i| i.principal).sum()
    }

    fn charge(&self, index: usize) -> Paise {
        self.charges.get(index).copied().unwrap_or(Paise::ZERO)
    }

    /// Records a payment unless one with the same id exists; returns whether
    /// the ledger changed.
    pub fn add_payment(
        &mut self,
        payment_id: &str,
        value_date: BusinessDate,
        amount: Paise,
    ) -> bool {
        if self.payments.iter().any(|p| p.payment_id == payment_id) {
            return false;
        }
        let at = self
            .payments
            .partition_point(|p| (p.value_date, p.payment_id.as_str()) < (value_date, payment_id));
        self.payments.insert(
            at,
            Payment {
                payment_id: payment_id.to_string(),
                value_date,
                amount,
                reversed_on: None,
            },
        );
        true
    }

    /// Marks a payment reversed; returns its value date if it changed, or
    /// `None` when it was unknown or already reversed.
    pub fn reverse_payment(
        &mut self,
        payment_id: &str,
        reversed_on: BusinessDate,
    ) -> Option<BusinessDate> {
        let payment = self
            .payments
            .iter_mut()
            .find(|p| p.payment_id == payment_id && p.reversed_on.is_none())?;
        payment.reversed_on = Some(reversed_on);
        Some(payment.value_date)
    }

    /// Checks whether a payment with this id is recorded.
    pub fn has_payment(&self, payment_id: &str) -> bool {
        self.payments.iter().any(|p| p.payment_id == payment_id)
    }

    /// Running totals for fast positions on many dates.
    pub fn index(&self) -> LedgerIndex<'_> {
        let mut cumulative_due = Vec::with_capacity(self.schedule.instalments.len());
        let mut total = Paise::ZERO;
        for (index, instalment) in self.schedule.instalments.iter().enumerate() {
            total += self.charge(index) + instalment.amount;
            cumulative_due.push(total);
        }
        let mut valid: Vec<&Payment> = self
            .payments
            .iter()
            .filter(|p| p.reversed_on.is_none())
            .collect();
        valid.sort_by(|a, b| (a.value_date, &a.payment_id).cmp(&(b.value_date, &b.payment_id)));
        let mut payment_dates = Vec::with_capacity(valid.len());
        let mut cumulative_paid = Vec::with_capacity(valid.len());
        let mut paid = Paise::ZERO;
        for payment in valid {
            paid += payment.amount;
            payment_dates.push(payment.value_date);
            cumulative_paid.push(paid);
        }
        LedgerIndex {
            ledger: self,
            cumulative_due,
            payment_dates,
            cumulative_paid,
        }
    }

    /// Computes the position at the end of `as_of`.
    pub fn position(&self, as_of: BusinessDate) -> Position {
        self.index().position(as_of)
    }

    /// Splits the payments valued on or before `as_of` over the instalments.
    pub fn allocation(&self, as_of: BusinessDate) -> Vec<InstalmentAllocation> {
        let mut remaining = self.index().paid_through(as_of);
        let mut rows = Vec::with_capacity(self.schedule.instalments.len());
        for (index, instalment) in self.schedule.instalments.iter().enumerate() {
            let mut take = |due: Paise| {
                let part = remaining.min(due).max(Paise::ZERO);
                remaining -= part;
                part
            };
            let charge = self.charge(index);
            let charges_paid = take(charge);
            let interest_paid = take(instalment.interest);
            let principal_paid = take(instalment.principal);
            rows.push(InstalmentAllocation {
                number: instalment.number,
                due_date: instalment.due_date,
                charges_paid,
                interest_paid,
                principal_paid,
                unpaid: charge + instalment.amount - charges_paid - interest_paid - principal_paid,
            });
        }
        rows
    }
}

/// Running totals of a ledger's dues and valid payments.
#[derive(Debug)]
pub struct LedgerIndex<'a> {
    ledger: &'a LoanLedger,
    cumulative_due: Vec<Paise>,
    payment_dates: Vec<BusinessDate>,
    cumulative_paid: Vec<Paise>,
}

impl LedgerIndex<'_> {
    /// Total of valid payments valued on or before `as_of`.
    pub fn paid_through(&self, as_of: BusinessDate) -> Paise {
        let count = self.payment_dates.partition_point(|d| *d <= as_of);
        if count == 0 {
            Paise::ZERO
        } else {
            self.cumulative_paid[count - 1]
        }
    }

    /// Computes the position at the end of `as_of`.
    pub fn position(&self, as_of: BusinessDate) -> Position {
        let instalments = &self.ledger.schedule.instalments;
        let paid = self.paid_through(as_of);
        let due_count = instalments.partition_point(|i| i.due_date <= as_of);
        let due_total = if due_count == 0 {
            Paise::ZERO
        } else {
            self.cumulative_due[due_count - 1]
        };
        // The first instalment whose running total exceeds what was paid is
        // the oldest one not fully paid.
        let first_unpaid = self.cumulative_due.partition_point(|total| *total <= paid);
        let oldest_unpaid_due = instalments
            .get(first_unpaid)
            .map(|i| i.due_date)
            .filter(|due| *due <= as_of);
        let schedule_total = self.cumulative_due.last().copied().unwrap_or(Paise::ZERO);
        Position {
            oldest_unpaid_due,
            overdue: (due_total - paid).max(Paise::ZERO),
            outstanding_principal: self.outstanding_principal(paid, first_unpaid),
            excess: (paid - schedule_total).max(Paise::ZERO),
        }
    }

    fn outstanding_principal(&self, paid: Paise, first_unpaid: usize) -> Paise {
        let instalments = &self.ledger.schedule.instalments;
        let Some(instalment) = instalments.get(first_unpaid) else {
            return Paise::ZERO;
        };
        let before = if first_unpaid == 0 {
            Paise::ZERO
        } else {
            self.cumulative_due[first_unpaid - 1]
        };
        let into_instalment =
            paid - before - self.ledger.charge(first_unpaid) - instalment.interest;
        let principal_paid = into_instalment.max(Paise::ZERO).min(instalment.principal);
        // The opening balance of this instalment is its principal plus its closing balance.
        instalment.closing_balance + instalment.principal - principal_paid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::DueDayRule;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    fn rupees(text: &str) -> Paise {
        text.parse().unwrap()
    }

    fn one_lakh() -> LoanLedger {
        let schedule = Schedule::build(
            rupees("100000.00"),
            "12.00".parse().unwrap(),
            12,
            date("2024-03-01"),
            DueDayRule::KeepDay,
        )
        .unwrap();
        LoanLedger::new(schedule)
    }

    #[test]
    fn nothing_overdue_before_first_due_date() {
        let position = one_lakh().position(date("2024-02-29"));
        assert_eq!(position.oldest_unpaid_due, None);
        assert_eq!(position.overdue, Paise::ZERO);
        assert_eq!(position.outstanding_principal, rupees("100000.00"));
    }

    #[test]
    fn unpaid_instalment_is_overdue_on_its_due_date() {
        let ledger = one_lakh();
        let position = ledger.position(date("2024-03-01"));
        assert_eq!(position.oldest_unpaid_due, Some(date("2024-03-01")));
        assert_eq!(position.overdue, rupees("8884.88"));
        assert_eq!(position.dpd(date("2024-03-01")), 1);
    }

    #[test]
    fn part_payment_leaves_instalment_overdue() {
        let mut ledger = one_lakh();
        ledger.add_payment("p1", date("2024-03-01"), rupees("5000.00"));
        let position = ledger.position(date("2024-03-10"));
        assert_eq!(position.oldest_unpaid_due, Some(date("2024-03-01")));
        assert_eq!(position.overdue, rupees("3884.88"));
        // 5000 pays 1000 of interest first, then 4000 of principal.
        assert_eq!(position.outstanding_principal, rupees("96000.00"));
    }

    #[test]
    fn payment_goes_to_oldest_instalment_first() {
        let mut ledger = one_lakh();
        ledger.add_payment("p1", date("2024-04-05"), rupees("8884.88"));
        let position = ledger.position(date("2024-04-05"));
        assert_eq!(position.oldest_unpaid_due, Some(date("2024-04-01")));
        assert_eq!(position.dpd(date("2024-04-05")), 5);
    }

    #[test]
    fn charges_then_interest_then_principal() {
        let mut ledger = one_lakh();
        ledger.charges = vec![rupees("100.00")];
        ledger.add_payment("p1", date("2024-03-01"), rupees("600.00"));
        let rows = ledger.allocation(date("2024-03-01"));
        assert_eq!(rows[0].charges_paid, rupees("100.00"));
        assert_eq!(rows[0].interest_paid, rupees("500.00"));
        assert_eq!(rows[0].principal_paid, Paise::ZERO);
        assert_eq!(rows[0].unpaid, rupees("8384.88"));
    }

    #[test]
    fn advance_pays_next_instalment_and_excess_is_kept() {
        let mut ledger = one_lakh();
        ledger.add_payment("p1", date("2024-02-20"), rupees("110000.00"));
        let position = ledger.position(date("2024-12-31"));
        assert_eq!(position.oldest_unpaid_due, None);
        assert_eq!(position.outstanding_principal, Paise::ZERO);
        assert_eq!(position.excess, rupees("110000.00") - rupees("106618.53"));
    }

    #[test]
    fn reversed_payment_counts_for_nothing() {
        let mut ledger = one_lakh();
        ledger.add_payment("p1", date("2024-03-01"), rupees("8884.88"));
        assert_eq!(ledger.position(date("2024-03-05")).oldest_unpaid_due, None);
        assert_eq!(
            ledger.reverse_payment("p1", date("2024-03-06")),
            Some(date("2024-03-01"))
        );
        assert_eq!(
            ledger.position(date("2024-03-05")).oldest_unpaid_due,
            Some(date("2024-03-01"))
        );
        assert_eq!(ledger.reverse_payment("p1", date("2024-03-06")), None);
    }

    #[test]
    fn duplicate_payment_id_is_ignored() {
        let mut ledger = one_lakh();
        assert!(ledger.add_payment("p1", date("2024-03-01"), rupees("10.00")));
        assert!(!ledger.add_payment("p1", date("2024-03-01"), rupees("10.00")));
        assert_eq!(ledger.payments.len(), 1);
    }

    #[test]
    fn backdated_payment_orders_by_value_date() {
        let mut ledger = one_lakh();
        ledger.add_payment("late", date("2024-04-01"), rupees("8884.88"));
        ledger.add_payment("early", date("2024-03-05"), rupees("8884.88"));
        assert_eq!(ledger.position(date("2024-03-20")).oldest_unpaid_due, None);
        assert_eq!(
            ledger.position(date("2024-03-04")).dpd(date("2024-03-04")),
            4
        );
    }
}

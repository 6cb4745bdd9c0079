//! Penal and prepayment charges on a loan's ledger.
//!
//! Under the RBI penal charges circular (RBI/2023-24/53, 18 Aug 2023) a
//! penalty for late payment is a charge, never interest added to the rate,
//! and is never capitalised. Here each overdue instalment bears at most one
//! penal charge, computed on its unpaid interest and principal only, so a
//! penal charge is never levied on an earlier charge.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::date::BusinessDate;
use crate::ledger::LoanLedger;
use crate::money::Paise;
use crate::pricing::{PenalPolicy, PrepaymentTerms};

/// A penal charge assessed on one instalment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenalAssessment {
    /// 1-based instalment number.
    pub instalment: u32,
    /// The instalment's due date.
    pub due_date: BusinessDate,
    /// Unpaid interest and principal of the instalment: the charge's basis.
    pub overdue: Paise,
    /// The charge.
    pub charge: Paise,
}

/// Assesses penal charges at the end of `as_of`.
///
/// An instalment is charged once it is unpaid `grace_days` after its due
/// date (with 0, at the day-end of the due date itself), and only if its
/// number is not in `already_assessed`. Charges already levied are left out
/// of the basis, because payments go to charges first and the basis counts
/// only the interest and principal still unpaid.
pub fn assess_penal(
    ledger: &LoanLedger,
    as_of: BusinessDate,
    grace_days: u32,
    policy: PenalPolicy,
    already_assessed: &BTreeSet<u32>,
) -> Vec<PenalAssessment> {
    let schedule = &ledger.schedule.instalments;
    ledger
        .allocation(as_of)
        .into_iter()
        .zip(schedule)
        .filter(|(row, _)| row.due_date.add_days(i64::from(grace_days)) <= as_of)
        .filter(|(row, _)| !already_assessed.contains(&row.number))
        .filter_map(|(row, instalment)| {
            let overdue = instalment.amount - row.interest_paid - row.principal_paid;
            let charge = policy.charge_on(overdue);
            charge.is_positive().then_some(PenalAssessment {
                instalment: row.number,
                due_date: row.due_date,
                overdue,
                charge,
            })
        })
        .collect()
}

/// Computes the charge for prepaying the whole outstanding principal at the
/// end of `as_of` (foreclosure): zero where the prepayment directions forbid it.
pub fn foreclosure_charge(
    ledger: &LoanLedger,
    as_of: BusinessDate,
    terms: PrepaymentTerms,
) -> Paise {
    terms.charge_on(ledger.position(as_of).outstanding_principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::PrepaymentProhibition;
    use crate::schedule::{DueDayRule, Schedule};

    fn rupees(text: &str) -> Paise {
        text.parse().unwrap()
    }

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    /// ₹1,00,000 at 12% over 12 months: EMI ₹8,884.88, first due 5 Feb 2024.
    fn ledger() -> LoanLedger {
        LoanLedger::new(
            Schedule::build(
                rupees("100000.00"),
                "12.00".parse().unwrap(),
                12,
                date("2024-02-05"),
                DueDayRule::KeepDay,
            )
            .unwrap(),
        )
    }

    const TWO_PERCENT: PenalPolicy = PenalPolicy::PercentOfOverdue { basis_points: 200 };

    #[test]
    fn charges_unpaid_instalments_after_grace() {
        let ledger = ledger();
        let none = BTreeSet::new();
        assert!(assess_penal(&ledger, date("2024-02-07"), 3, TWO_PERCENT, &none).is_empty());
        let charged = assess_penal(&ledger, date("2024-02-08"), 3, TWO_PERCENT, &none);
        assert_eq!(charged.len(), 1);
        assert_eq!(charged[0].instalment, 1);
        assert_eq!(charged[0].overdue, rupees("8884.88"));
        assert_eq!(charged[0].charge, rupees("177.70"));
    }

    #[test]
    fn due_date_counts_with_zero_grace() {
        let charged = assess_penal(
            &ledger(),
            date("2024-02-05"),
            0,
            TWO_PERCENT,
            &BTreeSet::new(),
        );
        assert_eq!(charged.len(), 1);
    }

    #[test]
    fn partial_payment_lowers_basis() {
        let mut ledger = ledger();
        ledger.add_payment("P1", date("2024-02-05"), rupees("4884.88"));
        let charged = assess_penal(
            &ledger,
            date("2024-02-05"),
            0,
            TWO_PERCENT,
            &BTreeSet::new(),
        );
        assert_eq!(charged[0].overdue, rupees("4000.00"));
        assert_eq!(charged[0].charge, rupees("80.00"));
    }

    #[test]
    fn paid_instalment_is_not_charged() {
        let mut ledger = ledger();
        ledger.add_payment("P1", date("2024-02-05"), rupees("8884.88"));
        assert!(
            assess_penal(
                &ledger,
                date("2024-02-10"),
                0,
                TWO_PERCENT,
                &BTreeSet::new()
            )
            .is_empty()
        );
    }

    #[test]
    fn penal_charges_do_not_compound() {
        let mut ledger = ledger();
        let first = assess_penal(
            &ledger,
            date("2024-02-05"),
            0,
            TWO_PERCENT,
            &BTreeSet::new(),
        );

        // Levy the first charge on the ledger, as the servicing ledger does.
        ledger.charges = vec![first[0].charge];
        let assessed = BTreeSet::from([1]);

        // A month later the first instalment, now carrying its charge, is
        // not charged again, and the second is charged on its own amount.
        let later = assess_penal(&ledger, date("2024-03-05"), 0, TWO_PERCENT, &assessed);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].instalment, 2);
        assert_eq!(later[0].overdue, rupees("8884.88"));
        assert_eq!(later[0].charge, rupees("177.70"));

        // Even without the record of earlier assessments, the basis of the
        // first instalment leaves its charge out.
        let again = assess_penal(
            &ledger,
            date("2024-03-05"),
            0,
            TWO_PERCENT,
            &BTreeSet::new(),
        );
        assert_eq!(again[0].overdue, rupees("8884.88"));
        assert_eq!(again[0].charge, first[0].charge);

        // A payment that clears the charge and part of the instalment
        // lowers the basis by what reached interest and principal only.
        ledger.add_payment("P1", date("2024-03-05"), rupees("1177.70"));
        let after_payment = assess_penal(
            &ledger,
            date("2024-03-05"),
            0,
            TWO_PERCENT,
            &BTreeSet::new(),
        );
        assert_eq!(after_payment[0].overdue, rupees("7884.88"));
    }

    #[test]
    fn flat_penal_charge() {
        let policy = PenalPolicy::Flat {
            amount: rupees("250.00"),
        };
        let charged = assess_penal(&ledger(), date("2024-03-05"), 0, policy, &BTreeSet::new());
        assert_eq!(charged.len(), 2);
        assert!(charged.iter().all(|c| c.charge == rupees("250.00")));
    }

    #[test]
    fn foreclosure_charge_respects_prohibition() {
        let ledger = ledger();
        let allowed = PrepaymentTerms {
            basis_points: 200,
            forbidden_by: None,
        };
        assert_eq!(
            foreclosure_charge(&ledger, date("2024-01-10"), allowed),
            rupees("2000.00")
        );
        let forbidden = PrepaymentTerms {
            basis_points: 0,
            forbidden_by: Some(PrepaymentProhibition::FloatingNonBusinessIndividual),
        };
        assert_eq!(
            foreclosure_charge(&ledger, date("2024-01-10"), forbidden),
            Paise::ZERO
        );
        let forbidden_with_rate = PrepaymentTerms {
            basis_points: 200,
            ..forbidden
        };
        assert_eq!(
            foreclosure_charge(&ledger, date("2024-01-10"), forbidden_with_rate),
            Paise::ZERO
        );
    }
}

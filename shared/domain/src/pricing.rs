//! Risk-based pricing: the rate from the risk grade, the fees split by
//! recipient, the APR and the contingent charges a Key Fact Statement shows.
//!
//! Rules applied here, from the RBI KFS circular (RBI/2024-25/18, 15 Apr
//! 2024), the penal charges circular (RBI/2023-24/53, 18 Aug 2023) and the
//! RBI (Pre-payment Charges on Loans) Directions 2025 (2 Jul 2025):
//! - fees are listed as payable to the lender or to third parties through
//!   the lender, each one-time or recurring;
//! - the APR includes every fee, third-party ones too, and is computed on
//!   the net disbursed amount (see [`crate::apr`]);
//! - penal charges are charges: they never change the rate and never enter
//!   the APR or the principal;
//! - prepayment and foreclosure charges are zero where the 2025 Directions
//!   forbid them ([`prepayment_prohibition`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::apr::{AprError, monthly_apr};
use crate::date::BusinessDate;
use crate::money::Paise;
use crate::rate::AnnualRate;
use crate::schedule::{DueDayRule, Schedule, ScheduleError};

/// A risk grade from the scorecard, such as `A` or `B2`: 1 to 16 ASCII
/// letters, digits, `-` or `+`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RiskGrade(String);

/// Error raised for an invalid risk grade.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid risk grade {value:?}: use 1 to 16 characters from A-Z, a-z, 0-9, - and +")]
pub struct GradeError {
    /// The rejected text.
    pub value: String,
}

impl RiskGrade {
    /// Parses a grade.
    pub fn parse(value: &str) -> Result<Self, GradeError> {
        let valid = !value.is_empty()
            && value.len() <= 16
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'+');
        if valid {
            Ok(RiskGrade(value.to_string()))
        } else {
            Err(GradeError {
                value: value.to_string(),
            })
        }
    }

    /// Returns the grade's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RiskGrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RiskGrade {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        RiskGrade::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// Whether the rate is fixed for the term or floats over a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateType {
    /// Fixed for the whole term.
    Fixed,
    /// Benchmark plus spread, reset during the term.
    Floating,
}

/// The borrower's constitution, as the prepayment directions distinguish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BorrowerType {
    /// A natural person.
    Individual,
    /// A micro or small enterprise.
    Mse,
    /// Any other borrower (companies, firms and trusts that are not MSEs).
    Other,
}

/// The loan's purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoanPurpose {
    /// A business purpose.
    Business,
    /// A personal, non-business purpose.
    NonBusiness,
}

/// The regulated entity's category, as the prepayment directions list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LenderCategory {
    /// A commercial bank other than a small finance, regional rural or local area bank.
    CommercialBank,
    /// A small finance bank.
    SmallFinanceBank,
    /// A regional rural bank.
    RegionalRuralBank,
    /// A local area bank.
    LocalAreaBank,
    /// A Tier-1 or Tier-2 urban co-operative bank.
    UcbTier1Or2,
    /// A Tier-3 urban co-operative bank.
    UcbTier3,
    /// A Tier-4 urban co-operative bank.
    UcbTier4,
    /// A state co-operative bank.
    StateCooperativeBank,
    /// A central co-operative bank.
    CentralCooperativeBank,
    /// An NBFC in the base layer.
    NbfcBaseLayer,
    /// An NBFC in the middle layer.
    NbfcMiddleLayer,
    /// An NBFC in the upper layer.
    NbfcUpperLayer,
    /// An all-India financial institution.
    AllIndiaFinancialInstitution,
}

/// Floating-rate business loans at or below this amount carry no prepayment
/// charge at the lenders barred only up to a limit: ₹50 lakh.
pub const PREPAYMENT_AMOUNT_LIMIT: Paise = Paise::from_rupees(5_000_000);

/// The loan attributes the prepayment directions turn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepaymentCase {
    /// Fixed or floating.
    pub rate_type: RateType,
    /// Individual, MSE or other.
    pub borrower_type: BorrowerType,
    /// Business or not.
    pub purpose: LoanPurpose,
    /// The lender's category.
    pub lender: LenderCategory,
    /// The sanctioned amount.
    pub amount: Paise,
    /// Whether the loan is a microfinance loan.
    pub microfinance: bool,
}

/// The rule that forbids a prepayment or foreclosure charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrepaymentProhibition {
    /// Microfinance loans carry no prepayment penalty at all.
    Microfinance,
    /// Floating-rate loans to individuals for non-business purposes carry no
    /// charge from any lender.
    FloatingNonBusinessIndividual,
    /// Floating-rate business loans to individuals and MSEs carry no charge
    /// at commercial banks (other than SFBs, RRBs and LABs), Tier-4 UCBs,
    /// upper-layer NBFCs and AIFIs, whatever the amount.
    FloatingBusinessAnyAmount,
    /// Floating-rate business loans to individuals and MSEs of up to ₹50
    /// lakh carry no charge at SFBs, RRBs, Tier-3 UCBs, state and central
    /// co-operative banks and middle-layer NBFCs.
    FloatingBusinessUpToLimit,
}

impl PrepaymentProhibition {
    /// Describes the rule and its source in English.
    pub fn describe(self) -> &'static str {
        match self {
            PrepaymentProhibition::Microfinance => {
                "microfinance loans carry no prepayment charge (RBI microfinance directions)"
            }
            PrepaymentProhibition::FloatingNonBusinessIndividual => {
                "floating-rate loans to individuals for non-business purposes carry no prepayment charge (RBI Pre-payment Charges on Loans Directions 2025)"
            }
            PrepaymentProhibition::FloatingBusinessAnyAmount => {
                "floating-rate business loans to individuals and MSEs carry no prepayment charge at this lender category (RBI Pre-payment Charges on Loans Directions 2025)"
            }
            PrepaymentProhibition::FloatingBusinessUpToLimit => {
                "floating-rate business loans to individuals and MSEs of up to 50 lakh rupees carry no prepayment charge at this lender category (RBI Pre-payment Charges on Loans Directions 2025)"
            }
        }
    }
}

/// Finds the rule, if any, that forbids a prepayment or foreclosure charge.
///
/// NOTE: the 2025 Directions cover loans sanctioned or renewed from 1 Jan
/// 2026; this applies them to every loan, which forbids at least as much as
/// the earlier circulars for older loans.
pub fn prepayment_prohibition(case: &PrepaymentCase) -> Option<PrepaymentProhibition> {
    use LenderCategory::*;
    if case.microfinance {
        return Some(PrepaymentProhibition::Microfinance);
    }
    if case.rate_type != RateType::Floating {
        return None;
    }
    match (case.borrower_type, case.purpose) {
        (BorrowerType::Individual, LoanPurpose::NonBusiness) => {
            Some(PrepaymentProhibition::FloatingNonBusinessIndividual)
        }
        (BorrowerType::Individual, LoanPurpose::Business)
        | (BorrowerType::Mse, LoanPurpose::Business) => match case.lender {
            CommercialBank | UcbTier4 | NbfcUpperLayer | AllIndiaFinancialInstitution => {
                Some(PrepaymentProhibition::FloatingBusinessAnyAmount)
            }
            SmallFinanceBank
            | RegionalRuralBank
            | UcbTier3
            | StateCooperativeBank
            | CentralCooperativeBank
            | NbfcMiddleLayer
                if case.amount <= PREPAYMENT_AMOUNT_LIMIT =>
            {
                Some(PrepaymentProhibition::FloatingBusinessUpToLimit)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The recipient of a fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeRecipient {
    /// The lender (KFS part 1, fees under A).
    Lender,
    /// A third party, collected through the lender (fees under B).
    ThirdParty,
}

/// When a fee is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeFrequency {
    /// Once, deducted from the disbursal.
    OneTime,
    /// With every instalment.
    Recurring,
}

/// The rule for a fee's amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FeeAmount {
    /// A fixed amount.
    Flat {
        /// The amount, before GST.
        amount: Paise,
    },
    /// Basis points of the loan amount, rounded half-up to the paisa.
    PercentOfAmount {
        /// 100 is 1%.
        basis_points: u32,
    },
}

/// One fee of a product's tariff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeRule {
    /// Name shown in the KFS, such as `processing fee`.
    pub name: String,
    /// Lender or third party.
    pub recipient: FeeRecipient,
    /// One-time or recurring.
    pub frequency: FeeFrequency,
    /// Flat or a percentage of the loan amount.
    pub amount: FeeAmount,
    /// Whether GST is added on top.
    #[serde(default)]
    pub gst: bool,
}

/// A penal charge on an overdue instalment. It is a charge, never interest
/// added to the rate, and is never capitalised (RBI/2023-24/53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PenalPolicy {
    /// A fixed amount per overdue instalment.
    Flat {
        /// The amount.
        amount: Paise,
    },
    /// Basis points of the instalment's unpaid interest and principal,
    /// rounded half-up to the paisa.
    PercentOfOverdue {
        /// 100 is 1%.
        basis_points: u32,
    },
}

impl Default for PenalPolicy {
    fn default() -> Self {
        PenalPolicy::PercentOfOverdue { basis_points: 200 }
    }
}

impl PenalPolicy {
    /// Computes the penal charge on `overdue`, the unpaid interest and
    /// principal of one instalment. Earlier charges are never part of
    /// `overdue`, so a penal charge is never levied on a penal charge.
    pub fn charge_on(self, overdue: Paise) -> Paise {
        if !overdue.is_positive() {
            return Paise::ZERO;
        }
        match self {
            PenalPolicy::Flat { amount } => amount,
            PenalPolicy::PercentOfOverdue { basis_points } => {
                overdue.mul_ratio_half_up(i128::from(basis_points), 10_000)
            }
        }
    }
}

/// A product's pricing configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingPolicy {
    /// Annual rate by risk grade.
    pub rate_grid: BTreeMap<RiskGrade, AnnualRate>,
    /// The tariff of fees.
    pub fees: Vec<FeeRule>,
    /// GST on fees marked `gst`, in basis points (1800 is 18%).
    pub gst_basis_points: u32,
    /// The penal charge on an overdue instalment.
    pub penal: PenalPolicy,
    /// Prepayment or foreclosure charge, in basis points of the principal
    /// prepaid, where the directions allow one.
    pub prepayment_basis_points: u32,
    /// The lender's category, which the prepayment directions turn on.
    pub lender_category: LenderCategory,
}

impl Default for PricingPolicy {
    fn default() -> Self {
        let grade = |text: &str| RiskGrade::parse(text).expect("default grades are valid");
        let rate = |bp: i64| AnnualRate::from_basis_points(bp);
        PricingPolicy {
            rate_grid: BTreeMap::from([
                (grade("A"), rate(1400)),
                (grade("B"), rate(1600)),
                (grade("C"), rate(1900)),
                (grade("D"), rate(2300)),
            ]),
            fees: vec![FeeRule {
                name: "processing fee".into(),
                recipient: FeeRecipient::Lender,
                frequency: FeeFrequency::OneTime,
                amount: FeeAmount::PercentOfAmount { basis_points: 200 },
                gst: true,
            }],
            gst_basis_points: 1800,
            penal: PenalPolicy::default(),
            prepayment_basis_points: 200,
            lender_category: LenderCategory::NbfcMiddleLayer,
        }
    }
}

/// A loan to price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricingRequest {
    /// The risk grade from the scorecard.
    pub grade: RiskGrade,
    /// The loan amount.
    pub amount: Paise,
    /// Number of monthly instalments.
    pub tenor_months: u32,
    /// Due date of the first instalment.
    pub first_due_date: BusinessDate,
    /// Fixed or floating.
    pub rate_type: RateType,
    /// Individual, MSE or other.
    pub borrower_type: BorrowerType,
    /// Business or not.
    pub purpose: LoanPurpose,
    /// Whether the loan is a microfinance loan.
    pub microfinance: bool,
}

/// One fee of a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeLine {
    /// Name shown in the KFS.
    pub name: String,
    /// Lender or third party.
    pub recipient: FeeRecipient,
    /// One-time or recurring.
    pub frequency: FeeFrequency,
    /// Amount before GST; for a recurring fee, per instalment.
    pub amount: Paise,
    /// GST on the amount.
    pub gst: Paise,
}

impl FeeLine {
    /// Amount with GST.
    pub fn total(&self) -> Paise {
        self.amount + self.gst
    }
}

/// Prepayment and foreclosure terms of a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepaymentTerms {
    /// Charge in basis points of the principal prepaid: zero when forbidden.
    pub basis_points: u32,
    /// The rule that forbids a charge, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden_by: Option<PrepaymentProhibition>,
}

impl PrepaymentTerms {
    /// Computes the charge on prepaying `principal`: zero when forbidden.
    pub fn charge_on(self, principal: Paise) -> Paise {
        if self.forbidden_by.is_some() || !principal.is_positive() {
            return Paise::ZERO;
        }
        principal.mul_ratio_half_up(i128::from(self.basis_points), 10_000)
    }
}

/// A priced loan: everything part 1 of a Key Fact Statement needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quote {
    /// The risk grade priced.
    pub grade: RiskGrade,
    /// The loan amount.
    pub amount: Paise,
    /// Number of monthly instalments.
    pub tenor_months: u32,
    /// Due date of the first instalment.
    pub first_due_date: BusinessDate,
    /// Due date of the last instalment.
    pub last_due_date: BusinessDate,
    /// Nominal rate from the grid.
    pub annual_rate: AnnualRate,
    /// Fixed or floating.
    pub rate_type: RateType,
    /// The equated monthly instalment; the last instalment may differ by
    /// the rounding remainder.
    pub emi: Paise,
    /// Interest over the term.
    pub total_interest: Paise,
    /// Fees by line.
    pub fees: Vec<FeeLine>,
    /// One-time fees with GST, deducted from the disbursal.
    pub upfront_fees: Paise,
    /// Recurring fees with GST, per instalment.
    pub recurring_fees: Paise,
    /// Amount less the upfront fees.
    pub net_disbursed: Paise,
    /// Everything the borrower pays: instalments and all fees.
    pub total_payable: Paise,
    /// APR by the RBI method, to 0.0001% a year.
    pub apr: AnnualRate,
    /// The penal charge on an overdue instalment.
    pub penal: PenalPolicy,
    /// Prepayment and foreclosure terms.
    pub prepayment: PrepaymentTerms,
}

impl Quote {
    /// Sums the fees with GST paid to `recipient` over the whole term.
    pub fn fees_to(&self, recipient: FeeRecipient) -> Paise {
        self.fees
            .iter()
            .filter(|fee| fee.recipient == recipient)
            .map(|fee| match fee.frequency {
                FeeFrequency::OneTime => fee.total(),
                FeeFrequency::Recurring => {
                    Paise::new(fee.total().as_paise() * i64::from(self.tenor_months))
                }
            })
            .sum()
    }
}

/// Errors raised while pricing a loan.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PricingError {
    /// The grid has no rate for the grade.
    #[error(
        "risk grade {grade} has no rate in pricing.rate_grid (grades priced: {known}); add it to the grid"
    )]
    UnknownGrade {
        /// The grade.
        grade: RiskGrade,
        /// The grades the grid prices.
        known: String,
    },
    /// The amount or tenor cannot make a schedule.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The fees make the APR undefined.
    #[error(transparent)]
    Apr(#[from] AprError),
}

/// Prices a loan: rate from the grid, EMI schedule, fees with GST, the APR
/// on the net disbursed amount, and the contingent charges.
pub fn quote(policy: &PricingPolicy, request: &PricingRequest) -> Result<Quote, PricingError> {
    let annual_rate =
        *policy
            .rate_grid
            .get(&request.grade)
            .ok_or_else(|| PricingError::UnknownGrade {
                grade: request.grade.clone(),
                known: policy
                    .rate_grid
                    .keys()
                    .map(RiskGrade::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;

    let schedule = Schedule::build(
        request.amount,
        annual_rate,
        request.tenor_months,
        request.first_due_date,
        DueDayRule::KeepDay,
    )?;
    let fees: Vec<FeeLine> = policy
        .fees
        .iter()
        .map(|rule| fee_line(rule, request.amount, policy.gst_basis_points))
        .collect();

    let sum_of = |frequency: FeeFrequency| -> Paise {
        fees.iter()
            .filter(|fee| fee.frequency == frequency)
            .map(FeeLine::total)
            .sum()
    };
    let upfront_fees = sum_of(FeeFrequency::OneTime);
    let recurring_fees = sum_of(FeeFrequency::Recurring);
    let net_disbursed = request.amount - upfront_fees;

    // Every fee enters the APR: upfront ones reduce the amount received,
    // recurring ones add to each instalment paid.
    let flows: Vec<Paise> = schedule
        .instalments
        .iter()
        .map(|instalment| instalment.amount + recurring_fees)
        .collect();
    let apr = monthly_apr(net_disbursed, &flows)?;
    let total_payable = flows.iter().copied().sum::<Paise>() + upfront_fees;

    let case = PrepaymentCase {
        rate_type: request.rate_type,
        borrower_type: request.borrower_type,
        purpose: request.purpose,
        lender: policy.lender_category,
        amount: request.amount,
        microfinance: request.microfinance,
    };
    let forbidden_by = prepayment_prohibition(&case);

    let last_due_date = schedule
        .instalments
        .last()
        .map(|i| i.due_date)
        .unwrap_or(request.first_due_date);
    Ok(Quote {
        grade: request.grade.clone(),
        amount: request.amount,
        tenor_months: request.tenor_months,
        first_due_date: request.first_due_date,
        last_due_date,
        annual_rate,
        rate_type: request.rate_type,
        emi: schedule.emi,
        total_interest: schedule.total_interest(),
        fees,
        upfront_fees,
        recurring_fees,
        net_disbursed,
        total_payable,
        apr,
        penal: policy.penal,
        prepayment: PrepaymentTerms {
            basis_points: if forbidden_by.is_some() {
                0
            } else {
                policy.prepayment_basis_points
            },
            forbidden_by,
        },
    })
}

fn fee_line(rule: &FeeRule, loan_amount: Paise, gst_basis_points: u32) -> FeeLine {
    let amount = match rule.amount {
        FeeAmount::Flat { amount } => amount,
        FeeAmount::PercentOfAmount { basis_points } => {
            loan_amount.mul_ratio_half_up(i128::from(basis_points), 10_000)
        }
    };
    let gst = if rule.gst {
        amount.mul_ratio_half_up(i128::from(gst_basis_points), 10_000)
    } else {
        Paise::ZERO
    };
    FeeLine {
        name: rule.name.clone(),
        recipient: rule.recipient,
        frequency: rule.frequency,
        amount,
        gst,
    }
}

#[cfg(test)]
mod tests;

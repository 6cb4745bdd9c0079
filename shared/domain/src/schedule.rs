//! Monthly reducing-balance EMI schedules.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::date::BusinessDate;
use crate::money::{Paise, div_round_half_up};
use crate::rate::{AnnualRate, RATE_UNITS_PER_PERCENT};

/// Rate units per unit of monthly rate: 12 months × 100 percent × rate units.
const MONTHLY_RATE_DENOMINATOR: i128 = 12 * 100 * RATE_UNITS_PER_PERCENT as i128;

/// Fixed-point scale for the annuity factor.
const SCALE: i128 = 1_000_000_000_000_000_000;

/// The maximum tenor accepted, in months (50 years).
pub const MAX_TENOR_MONTHS: u32 = 600;

/// The rule for due dates in months shorter than the first due date's day.
///
/// This is a product setting: lenders differ, and RBI prescribes neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DueDayRule {
    /// Keep the first due date's day of the month wherever the month has it,
    /// else use the month's last day (31 Jan → 29 Feb → 31 Mar).
    #[default]
    KeepDay,
    /// When the first due date is a month-end, every due date is a month-end
    /// (30 Apr → 31 May → 30 Jun); otherwise the same as `KeepDay`.
    MonthEnd,
}

impl DueDayRule {
    /// Computes the due date of instalment `number` (1-based) from the first one.
    pub fn due_date(self, first_due: BusinessDate, number: u32) -> BusinessDate {
        let shifted = first_due.add_months(number - 1);
        match self {
            DueDayRule::KeepDay => shifted,
            DueDayRule::MonthEnd if first_due.is_month_end() => shifted.month_end(),
            DueDayRule::MonthEnd => shifted,
        }
    }
}

/// Errors raised when a schedule cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    /// The principal is zero or negative.
    #[error("invalid principal {principal}: it must be greater than zero")]
    NonPositivePrincipal {
        /// The rejected principal.
        principal: Paise,
    },
    /// The tenor is zero or too long.
    #[error("invalid tenor_months {tenor_months}: it must be between 1 and {MAX_TENOR_MONTHS}")]
    InvalidTenor {
        /// The rejected tenor.
        tenor_months: u32,
    },
}

/// One instalment of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instalment {
    /// 1-based instalment number.
    pub number: u32,
    /// Due date.
    pub due_date: BusinessDate,
    /// Amount due: interest plus principal.
    pub amount: Paise,
    /// Interest part, rounded half-up to the paisa.
    pub interest: Paise,
    /// Principal part.
    pub principal: Paise,
    /// Principal outstanding after this instalment is paid.
    pub closing_balance: Paise,
}

/// A monthly reducing-balance schedule of equal instalments (EMIs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The equated monthly instalment, rounded half-up to the paisa.
    pub emi: Paise,
    /// The instalments in due-date order.
    pub instalments: Vec<Instalment>,
}

impl Schedule {
    /// Builds the schedule of a loan of `principal` at `rate` over
    /// `tenor_months`, the first instalment falling on `first_due`.
    ///
    /// Interest of each month is the opening balance × rate / 12, rounded
    /// half-up to the paisa. Every instalment but the last is the EMI; the last
    /// repays the remaining balance with its interest, so it absorbs the
    /// rounding of the others.
    pub fn build(
        principal: Paise,
        rate: AnnualRate,
        tenor_months: u32,
        first_due: BusinessDate,
        rule: DueDayRule,
    ) -> Result<Self, ScheduleError> {
        if !principal.is_positive() {
            return Err(ScheduleError::NonPositivePrincipal { principal });
        }
        if tenor_months == 0 || tenor_months > MAX_TENOR_MONTHS {
            return Err(ScheduleError::InvalidTenor { tenor_months });
        }
        let emi = emi(principal, rate, tenor_months);
        let mut balance = principal;
        let mut instalments = Vec::with_capacity(tenor_months as usize);
        for number in 1..=tenor_months {
            let interest = monthly_interest(balance, rate);
            let principal_part = if number == tenor_months {
                balance
            } else {
                (emi - interest).min(balance).max(Paise::ZERO)
            };
            balance -= principal_part;
            instalments.push(Instalment {
                number,
                due_date: rule.due_date(first_due, number),
                amount: principal_part + interest,
                interest,
                principal: principal_part,
                closing_balance: balance,
            });
        }
        Ok(Schedule { emi, instalments })
    }

    /// Total interest over the life of the loan.
    pub fn total_interest(&self) -> Paise {
        self.instalments.iter().map(|i| i.interest).sum()
    }

    /// Total of all instalments.
    pub fn total_amount(&self) -> Paise {
        self.instalments.iter().map(|i| i.amount).sum()
    }
}

/// Computes one month's interest on `balance`, rounded half-up to the paisa.
pub fn monthly_interest(balance: Paise, rate: AnnualRate) -> Paise {
    Paise::new(div_round_half_up(
        i128::from(balance.as_paise()) * i128::from(rate.units()),
        MONTHLY_RATE_DENOMINATOR,
    ) as i64)
}

/// Computes the EMI `P·r / (1 − (1 + r)^−n)` with `r` the monthly rate, rounded
/// half-up to the paisa; `P / n` when the rate is zero.
pub fn emi(principal: Paise, rate: AnnualRate, tenor_months: u32) -> Paise {
    let p = i128::from(principal.as_paise());
    let n = i128::from(tenor_months);
    if rate.is_zero() {
        return Paise::new(div_round_half_up(p, n) as i64);
    }
    let monthly = i128::from(rate.units()) * SCALE / MONTHLY_RATE_DENOMINATOR;
    let discount = SCALE * SCALE / (SCALE + monthly);
    let mut present_value = SCALE;
    for _ in 0..tenor_months {
        present_value = present_value * discount / SCALE;
    }
    Paise::new(div_round_half_up(p * monthly, SCALE - present_value) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    fn rupees(text: &str) -> Paise {
        text.parse().unwrap()
    }

    #[test]
    fn one_lakh_at_twelve_percent() {
        let schedule = Schedule::build(
            rupees("100000.00"),
            "12.00".parse().unwrap(),
            12,
            date("2024-02-05"),
            DueDayRule::KeepDay,
        )
        .unwrap();
        assert_eq!(schedule.emi, rupees("8884.88"));
        assert_eq!(schedule.instalments[0].interest, rupees("1000.00"));
        assert_eq!(schedule.instalments[11].amount, rupees("8884.85"));
        assert_eq!(schedule.total_interest(), rupees("6618.53"));
        assert_eq!(schedule.instalments[11].closing_balance, Paise::ZERO);
        let principal: Paise = schedule.instalments.iter().map(|i| i.principal).sum();
        assert_eq!(principal, rupees("100000.00"));
    }

    #[test]
    fn rbi_kfs_example_emi() {
        let emi = emi(rupees("20000.00"), "15.00".parse().unwrap(), 24);
        assert_eq!(emi, rupees("969.73"));
    }

    #[test]
    fn zero_rate_splits_evenly() {
        let schedule = Schedule::build(
            rupees("1000.00"),
            "0".parse().unwrap(),
            3,
            date("2024-01-10"),
            DueDayRule::KeepDay,
        )
        .unwrap();
        assert_eq!(schedule.emi, rupees("333.33"));
        assert_eq!(schedule.instalments[2].amount, rupees("333.34"));
    }

    #[test]
    fn rejects_zero_tenor_and_principal() {
        let rate = "12.00".parse().unwrap();
        assert_eq!(
            Schedule::build(
                rupees("1.00"),
                rate,
                0,
                date("2024-01-01"),
                DueDayRule::KeepDay
            ),
            Err(ScheduleError::InvalidTenor { tenor_months: 0 })
        );
        assert!(matches!(
            Schedule::build(
                Paise::ZERO,
                rate,
                12,
                date("2024-01-01"),
                DueDayRule::KeepDay
            ),
            Err(ScheduleError::NonPositivePrincipal { .. })
        ));
    }

    fn due_dates(first: &str, rule: DueDayRule) -> Vec<String> {
        (1..=5)
            .map(|n| rule.due_date(date(first), n).to_string())
            .collect()
    }

    #[test]
    fn keep_day_from_31_january() {
        assert_eq!(
            due_dates("2024-01-31", DueDayRule::KeepDay),
            [
                "2024-01-31",
                "2024-02-29",
                "2024-03-31",
                "2024-04-30",
                "2024-05-31"
            ]
        );
    }

    #[test]
    fn month_end_from_31_january() {
        assert_eq!(
            due_dates("2024-01-31", DueDayRule::MonthEnd),
            [
                "2024-01-31",
                "2024-02-29",
                "2024-03-31",
                "2024-04-30",
                "2024-05-31"
            ]
        );
    }

    #[test]
    fn keep_day_from_30_april() {
        assert_eq!(
            due_dates("2024-04-30", DueDayRule::KeepDay),
            [
                "2024-04-30",
                "2024-05-30",
                "2024-06-30",
                "2024-07-30",
                "2024-08-30"
            ]
        );
    }

    #[test]
    fn month_end_from_30_april() {
        assert_eq!(
            due_dates("2024-04-30", DueDayRule::MonthEnd),
            [
                "2024-04-30",
                "2024-05-31",
                "2024-06-30",
                "2024-07-31",
                "2024-08-31"
            ]
        );
    }
}

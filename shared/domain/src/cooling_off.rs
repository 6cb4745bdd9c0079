//! Exit from a digital loan in its cooling-off period.
//!
//! The RBI Digital Lending Directions 2025, like the 2022 Guidelines before
//! them, let the borrower exit a digital loan within the cooling-off
//! period by paying the principal and the proportionate APR, with no
//! penalty. The lender's board sets the period at no less than one day. Here the
//! proportionate APR is the APR applied to the principal for the days the
//! loan was held, on an actual/365 basis.

use thiserror::Error;

use crate::{AnnualRate, BusinessDate, Paise};

/// 0.0001% units of [`AnnualRate`] per whole (1.0) rate, times the 365 days
/// of the actual/365 year.
const RATE_DAY_DENOMINATOR: i128 = 1_000_000 * 365;

/// The amount a borrower pays to leave a loan in its cooling-off period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoolingOffExit {
    /// Days from disbursal to exit.
    pub days_held: u32,
    /// The principal disbursed.
    pub principal: Paise,
    /// The proportionate APR: principal × APR × days held / 365, rounded
    /// half-up to the paisa.
    pub interest: Paise,
    /// Principal plus interest; no penalty is added.
    pub total: Paise,
}

/// Reasons an exit is not a cooling-off exit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoolingOffError {
    /// The period is over.
    #[error(
        "the cooling-off period of {cooling_off_days} days after disbursal on {disbursed_on} ended on {last_day}; an exit on {exit_on} is a prepayment, not a cooling-off exit"
    )]
    PeriodOver {
        /// Disbursal date.
        disbursed_on: BusinessDate,
        /// Length of the period in days.
        cooling_off_days: u32,
        /// The last day of the period.
        last_day: BusinessDate,
        /// The requested exit date.
        exit_on: BusinessDate,
    },
    /// The exit is dated before the disbursal.
    #[error("exit date {exit_on} is before the disbursal on {disbursed_on}; check the exit date")]
    BeforeDisbursal {
        /// Disbursal date.
        disbursed_on: BusinessDate,
        /// The requested exit date.
        exit_on: BusinessDate,
    },
}

impl CoolingOffError {
    /// Returns a fixed code for logs, metrics and rejection reasons.
    pub fn code(&self) -> &'static str {
        match self {
            CoolingOffError::PeriodOver { .. } => "cooling_off_over",
            CoolingOffError::BeforeDisbursal { .. } => "exit_before_disbursal",
        }
    }
}

/// Returns the last day on which a loan disbursed on `disbursed_on` may be
/// exited: `cooling_off_days` calendar days after the disbursal.
pub fn last_exit_day(disbursed_on: BusinessDate, cooling_off_days: u32) -> BusinessDate {
    disbursed_on.add_days(i64::from(cooling_off_days))
}

/// Computes what the borrower pays to exit on `exit_on`, or why the exit is
/// outside the cooling-off period.
pub fn cooling_off_exit(
    principal: Paise,
    apr: AnnualRate,
    disbursed_on: BusinessDate,
    cooling_off_days: u32,
    exit_on: BusinessDate,
) -> Result<CoolingOffExit, CoolingOffError> {
    if exit_on < disbursed_on {
        return Err(CoolingOffError::BeforeDisbursal {
            disbursed_on,
            exit_on,
        });
    }
    let last_day = last_exit_day(disbursed_on, cooling_off_days);
    if exit_on > last_day {
        return Err(CoolingOffError::PeriodOver {
            disbursed_on,
            cooling_off_days,
            last_day,
            exit_on,
        });
    }
    let days_held = exit_on.days_since(disbursed_on);
    let interest = principal.mul_ratio_half_up(
        i128::from(apr.units()) * i128::from(days_held),
        RATE_DAY_DENOMINATOR,
    );
    Ok(CoolingOffExit {
        days_held: u32::try_from(days_held).expect("days held fit the cooling-off period"),
        principal,
        interest,
        total: principal + interest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    #[test]
    fn exit_pays_principal_and_proportionate_apr() {
        // ₹20,000 at an APR of 17.07% held 3 days: 20,000 × 0.1707 × 3 / 365
        // = ₹28.0603, so ₹28.06.
        let exit = cooling_off_exit(
            "20000.00".parse().unwrap(),
            "17.07".parse().unwrap(),
            date("2024-06-12"),
            3,
            date("2024-06-15"),
        )
        .unwrap();
        assert_eq!(exit.days_held, 3);
        assert_eq!(exit.interest, "28.06".parse().unwrap());
        assert_eq!(exit.total, "20028.06".parse().unwrap());
    }

    #[test]
    fn same_day_exit_pays_principal_only() {
        let exit = cooling_off_exit(
            "20000.00".parse().unwrap(),
            "17.07".parse().unwrap(),
            date("2024-06-12"),
            1,
            date("2024-06-12"),
        )
        .unwrap();
        assert_eq!(exit.interest, Paise::ZERO);
        assert_eq!(exit.total, "20000.00".parse().unwrap());
    }

    #[test]
    fn period_bounds() {
        let exit = |on: &str| {
            cooling_off_exit(
                "20000.00".parse().unwrap(),
                "17.07".parse().unwrap(),
                date("2024-06-12"),
                3,
                date(on),
            )
        };
        assert!(exit("2024-06-15").is_ok());
        let over = exit("2024-06-16").unwrap_err();
        assert_eq!(over.code(), "cooling_off_over");
        assert!(over.to_string().contains("ended on 2024-06-15"), "{over}");
        assert_eq!(
            exit("2024-06-11").unwrap_err().code(),
            "exit_before_disbursal"
        );
    }
}

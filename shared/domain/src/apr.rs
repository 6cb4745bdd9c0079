//! Annual percentage rate (APR) by the RBI method.
//!
//! The RBI's Key Fact Statement circular (RBI/2024-25/18, Annex B) computes
//! the APR on the net disbursed amount, the principal less every upfront
//! charge, as the internal rate of return (IRR) of the borrower's cash flows
//! on a reducing balance. For monthly instalments the APR is the monthly IRR
//! × 12, a nominal rate, which reproduces the circular's worked example:
//! ₹20,000 at 15% for 24 months with ₹400 of fees gives 17.07%.

use thiserror::Error;

use crate::money::Paise;
use crate::rate::{AnnualRate, RATE_UNITS_PER_PERCENT};

/// Fixed-point scale of a monthly rate in the solver: 10^18 units are a rate
/// of 1 (100% a month).
const SCALE: i128 = 1_000_000_000_000_000_000;

/// Present values are kept in units of 10^-6 paisa, so that discounting many
/// instalments loses no visible precision.
const PV_SCALE: i128 = 1_000_000;

/// The highest monthly rate the solver brackets: 100% a month.
const MAX_MONTHLY: i128 = SCALE;

/// Errors raised when an APR cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AprError {
    /// The upfront charges use up the whole principal.
    #[error("invalid net disbursed amount {net}: upfront charges must be less than the principal")]
    NonPositiveNet {
        /// Principal less upfront charges.
        net: Paise,
    },
    /// The instalments repay less than the net amount, so the IRR is negative.
    #[error(
        "invalid cash flows: the instalments total {total}, less than the net disbursed amount {net}"
    )]
    RepaysLessThanNet {
        /// Sum of the instalments.
        total: Paise,
        /// Principal less upfront charges.
        net: Paise,
    },
    /// The IRR is above 100% a month, beyond the solver's bracket.
    #[error("the monthly IRR is above 100%, beyond the solver's bracket; check the charges")]
    OutOfBracket,
}

/// Present value, in 10^-6 paisa, of `flows` paid at the end of months 1, 2,
/// … discounted at `monthly` (in 10^-18 units).
fn present_value(flows: &[Paise], monthly: i128) -> i128 {
    let discount = SCALE * SCALE / (SCALE + monthly);
    let mut factor = SCALE;
    let mut total = 0i128;
    for flow in flows {
        factor = factor * discount / SCALE;
        total += i128::from(flow.as_paise()) * PV_SCALE * factor / SCALE;
    }
    total
}

/// Solves for the monthly IRR, in 10^-18 units, at which `flows` (one per
/// month, the first a month after disbursal) are worth `net` today.
///
/// Bisection on [0, 100% a month]: the present value falls as the rate
/// rises, so the bracket always contains the root. Iteration stops when the
/// bracket is one unit wide, a precision of 10^-18 a month. Fixed-point
/// truncation in each discount step limits the accuracy to about 10^-15 a
/// month (an estimate), far below the 0.0001% a year the result is rounded to.
pub fn monthly_irr(net: Paise, flows: &[Paise]) -> Result<i128, AprError> {
    if !net.is_positive() {
        return Err(AprError::NonPositiveNet { net });
    }
    let total: Paise = flows.iter().copied().sum();
    if total < net {
        return Err(AprError::RepaysLessThanNet { total, net });
    }
    let target = i128::from(net.as_paise()) * PV_SCALE;
    if present_value(flows, MAX_MONTHLY) > target {
        return Err(AprError::OutOfBracket);
    }
    let (mut low, mut high) = (0i128, MAX_MONTHLY);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if present_value(flows, middle) > target {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

/// Computes the APR of a monthly loan: the monthly IRR of `flows` on `net`
/// × 12, rounded half-up to 0.0001% a year.
pub fn monthly_apr(net: Paise, flows: &[Paise]) -> Result<AnnualRate, AprError> {
    let monthly = monthly_irr(net, flows)?;
    // Percent a year in rate units: monthly / SCALE × 12 × 100 × units per percent.
    let numerator = monthly * 12 * 100 * i128::from(RATE_UNITS_PER_PERCENT);
    let units = crate::money::div_round_half_up(numerator, SCALE);
    Ok(AnnualRate::from_units(units as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_flows_at_known_rate() {
        // 12 payments of 100 on a net of 1,200 is an IRR of zero.
        let flows = vec![Paise::from_rupees(100); 12];
        assert_eq!(monthly_irr(Paise::from_rupees(1200), &flows), Ok(0));
    }

    #[test]
    fn rejects_impossible_cash_flows() {
        let flows = vec![Paise::from_rupees(100); 12];
        assert_eq!(
            monthly_apr(Paise::ZERO, &flows),
            Err(AprError::NonPositiveNet { net: Paise::ZERO })
        );
        assert!(matches!(
            monthly_apr(Paise::from_rupees(1300), &flows),
            Err(AprError::RepaysLessThanNet { .. })
        ));
        assert_eq!(
            monthly_apr(Paise::from_rupees(1), &[Paise::from_rupees(10)]),
            Err(AprError::OutOfBracket)
        );
    }
}

//! Interest rates in percent per year.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Units of [`AnnualRate`] per whole percent: rates carry four decimals of a
/// percent (0.0001% is one unit).
pub const RATE_UNITS_PER_PERCENT: i64 = 10_000;

/// Error raised while parsing a rate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid rate {value:?}: expected a string of percent per year between \"0\" and \"100\" with at most four decimals, such as \"15.00\""
)]
pub struct RateError {
    /// The rejected text.
    pub value: String,
}

/// A nominal annual interest rate in percent per year, such as `"15.00"`.
///
/// Held as an integer count of 0.0001% so that monthly interest is computed
/// with exact integer arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AnnualRate(i64);

impl AnnualRate {
    /// Creates a rate from hundredths of a percent (basis points): 1500 is 15%.
    pub const fn from_basis_points(basis_points: i64) -> Self {
        AnnualRate(basis_points * 100)
    }

    /// Creates a rate from 0.0001% units: 150000 is 15%.
    pub const fn from_units(units: i64) -> Self {
        AnnualRate(units)
    }

    /// Rounds half-up to a hundredth of a percent, the precision of the
    /// APR shown in a Key Fact Statement.
    pub const fn round_to_basis_points(self) -> Self {
        let step = RATE_UNITS_PER_PERCENT / 100;
        AnnualRate((self.0 + step / 2) / step * step)
    }

    /// The rate in 0.0001% units.
    pub const fn units(self) -> i64 {
        self.0
    }

    /// Whether the rate is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for AnnualRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / RATE_UNITS_PER_PERCENT;
        let fraction = self.0 % RATE_UNITS_PER_PERCENT;
        if fraction % 100 == 0 {
            write!(f, "{whole}.{:02}", fraction / 100)
        } else {
            write!(f, "{whole}.{fraction:04}")
        }
    }
}

impl FromStr for AnnualRate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || RateError {
            value: text.to_string(),
        };
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 3
            || !digits_only(whole)
            || !digits_only(fraction)
            || fraction.len() > 4
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(error());
        }
        let whole: i64 = whole.parse().map_err(|_| error())?;
        let mut units = whole * RATE_UNITS_PER_PERCENT;
        let mut scale = RATE_UNITS_PER_PERCENT / 10;
        for digit in fraction.bytes() {
            units += i64::from(digit - b'0') * scale;
            scale /= 10;
        }
        if units > 100 * RATE_UNITS_PER_PERCENT {
            return Err(error());
        }
        Ok(AnnualRate(units))
    }
}

impl Serialize for AnnualRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AnnualRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json_free_string(deserializer, "a rate")?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a JSON string, naming the expected form when a number arrives.
pub(crate) fn serde_json_free_string<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
) -> Result<String, D::Error> {
    struct Visitor(&'static str);
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{} as a JSON string", self.0)
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<String, E> {
            Err(E::custom(format!(
                "{} must be a JSON string such as \"{value}\", not a number",
                self.0
            )))
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
            Err(E::custom(format!(
                "{} must be a JSON string such as \"{value}\", not a number",
                self.0
            )))
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
            Err(E::custom(format!(
                "{} must be a JSON string such as \"{value}\", not a number",
                self.0
            )))
        }
    }
    deserializer.deserialize_any(Visitor(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_percent_strings() {
        assert_eq!("15.00".parse::<AnnualRate>().unwrap().units(), 150_000);
        assert_eq!("10.125".parse::<AnnualRate>().unwrap().units(), 101_250);
        assert_eq!("0".parse::<AnnualRate>().unwrap().units(), 0);
    }

    #[test]
    fn rejects_bad_rates() {
        for text in ["", "-1.00", "101.00", "15.00001", "abc", "15.", "1e2"] {
            assert!(
                text.parse::<AnnualRate>().is_err(),
                "{text:?} should be rejected"
            );
        }
        assert!(serde_json::from_str::<AnnualRate>("15.0").is_err());
    }

    #[test]
    fn prints_two_or_four_decimals() {
        assert_eq!(AnnualRate::from_basis_points(1500).to_string(), "15.00");
        assert_eq!(
            "10.125".parse::<AnnualRate>().unwrap().to_string(),
            "10.1250"
        );
    }
}

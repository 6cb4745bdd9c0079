//! Money as integer paise, parsed from and printed as rupee strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Errors raised while parsing a rupee amount.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MoneyError {
    /// The text is not a decimal rupee amount.
    #[error("invalid money {value:?}: expected a string of rupees such as \"20000.00\"")]
    Invalid {
        /// The rejected text.
        value: String,
    },
    /// The amount has more than two decimals.
    #[error("invalid money {value:?}: at most two decimals (paise) are allowed")]
    TooManyDecimals {
        /// The rejected text.
        value: String,
    },
    /// The amount does not fit in 64-bit paise.
    #[error("invalid money {value:?}: the amount is out of range")]
    OutOfRange {
        /// The rejected text.
        value: String,
    },
}

/// An amount of Indian rupees held as integer paise (1 rupee = 100 paise).
///
/// The JSON form is a string of rupees with at most two decimals, such as
/// `"20000.00"`. A JSON number is rejected so that no amount ever passes
/// through a binary float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Paise(i64);

impl Paise {
    /// Zero rupees.
    pub const ZERO: Paise = Paise(0);

    /// Creates an amount from integer paise.
    pub const fn new(paise: i64) -> Self {
        Paise(paise)
    }

    /// Creates an amount from whole rupees.
    pub const fn from_rupees(rupees: i64) -> Self {
        Paise(rupees * 100)
    }

    /// Returns the amount in paise.
    pub const fn as_paise(self) -> i64 {
        self.0
    }

    /// Checks whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Checks whether the amount is above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Returns the smaller of two amounts.
    pub fn min(self, other: Paise) -> Paise {
        Paise(self.0.min(other.0))
    }

    /// Returns the larger of two amounts.
    pub fn max(self, other: Paise) -> Paise {
        Paise(self.0.max(other.0))
    }

    /// Multiplies by `numerator / denominator` and rounds half away from zero
    /// to the paisa (half-up for non-negative amounts).
    pub fn mul_ratio_half_up(self, numerator: i128, denominator: i128) -> Paise {
        Paise(div_round_half_up(self.0 as i128 * numerator, denominator) as i64)
    }
}

/// Divides with rounding half away from zero. `denominator` must be positive.
pub fn div_round_half_up(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0, "denominator must be positive");
    let half = denominator / 2;
    if numerator >= 0 {
        (numerator + half) / denominator
    } else {
        -((-numerator + half) / denominator)
    }
}

impl std::ops::Add for Paise {
    type Output = Paise;
    fn add(self, rhs: Paise) -> Paise {
        Paise(self.0 + rhs.0)
    }
}

impl std::ops::AddAssign for Paise {
    fn add_assign(&mut self, rhs: Paise) {
        self.0 += rhs.0;
    }
}

impl std::ops::Sub for Paise {
    type Output = Paise;
    fn sub(self, rhs: Paise) -> Paise {
        Paise(self.0 - rhs.0)
    }
}

impl std::ops::SubAssign for Paise {
    fn sub_assign(&mut self, rhs: Paise) {
        self.0 -= rhs.0;
    }
}

impl std::ops::Neg for Paise {
    type Output = Paise;
    fn neg(self) -> Paise {
        Paise(-self.0)
    }
}

impl std::iter::Sum for Paise {
    fn sum<I: Iterator<Item = Paise>>(iter: I) -> Paise {
        Paise(iter.map(|p| p.0).sum())
    }
}

impl fmt::Display for Paise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl FromStr for Paise {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || MoneyError::Invalid {
            value: text.to_string(),
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (digits, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit())
            || (digits.contains('.') && fraction.is_empty())
        {
            return Err(invalid());
        }
        if fraction.len() > 2 {
            return Err(MoneyError::TooManyDecimals {
                value: text.to_string(),
            });
        }
        let out_of_range = || MoneyError::OutOfRange {
            value: text.to_string(),
        };
        let rupees: i64 = whole.parse().map_err(|_| out_of_range())?;
        let mut paise: i64 = 0;
        for (position, digit) in fraction.bytes().enumerate() {
            let scale = if position == 0 { 10 } else { 1 };
            paise += i64::from(digit - b'0') * scale;
        }
        let total = rupees
            .checked_mul(100)
            .and_then(|value| value.checked_add(paise))
            .ok_or_else(out_of_range)?;
        Ok(Paise(if negative { -total } else { total }))
    }
}

impl Serialize for Paise {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Paise {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Paise;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string of rupees with at most two decimals, such as \"20000.00\"")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Paise, E> {
                value.parse().map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Paise, E> {
                Err(E::custom(format!(
                    "money must be a JSON string such as \"{value:.2}\", not the number {value}"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Paise, E> {
                Err(E::custom(format!(
                    "money must be a JSON string such as \"{value}.00\", not the number {value}"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Paise, E> {
                Err(E::custom(format!(
                    "money must be a JSON string such as \"{value}.00\", not the number {value}"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rupee_strings() {
        assert_eq!("20000.00".parse::<Paise>(), Ok(Paise(2_000_000)));
        assert_eq!("0.5".parse::<Paise>(), Ok(Paise(50)));
        assert_eq!("12".parse::<Paise>(), Ok(Paise(1200)));
        assert_eq!("-3.07".parse::<Paise>(), Ok(Paise(-307)));
    }

    #[test]
    fn rejects_a_third_decimal() {
        assert!(matches!(
            "1.005".parse::<Paise>(),
            Err(MoneyError::TooManyDecimals { .. })
        ));
    }

    #[test]
    fn rejects_non_numbers() {
        for text in [
            "",
            "NaN",
            "Infinity",
            "1e3",
            "1.",
            ".5",
            "12,000.00",
            " 1.00",
            "+1.00",
        ] {
            assert!(
                text.parse::<Paise>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn rejects_json_numbers() {
        let error = serde_json::from_str::<Paise>("20000.5").unwrap_err();
        assert!(
            error.to_string().contains("must be a JSON string"),
            "{error}"
        );
        let error = serde_json::from_str::<Paise>("20000").unwrap_err();
        assert!(
            error.to_string().contains("must be a JSON string"),
            "{error}"
        );
    }

    #[test]
    fn prints_two_decimals() {
        assert_eq!(Paise(888_488).to_string(), "8884.88");
        assert_eq!(Paise(-5).to_string(), "-0.05");
        assert_eq!(serde_json::to_string(&Paise(100)).unwrap(), "\"1.00\"");
    }

    #[test]
    fn rounds_half_up() {
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(-5, 10), -1);
        assert_eq!(Paise(1000).mul_ratio_half_up(15, 1000), Paise(15));
    }
}

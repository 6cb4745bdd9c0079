//! IST business dates.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, FixedOffset, Months, NaiveDate, TimeZone};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// India Standard Time is UTC+05:30 all year; India observes no daylight
/// saving, so a fixed offset is exact.
pub const IST_OFFSET_SECONDS: i32 = 5 * 3600 + 30 * 60;

/// Error raised while parsing a business date.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid business date {value:?}: expected a calendar date written YYYY-MM-DD, such as \"2024-04-01\""
)]
pub struct DateError {
    /// The rejected text.
    pub value: String,
}

/// A calendar date in India Standard Time (`Asia/Kolkata`).
///
/// DPD, SMA and NPA are functions of business dates, never of UTC timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDate(NaiveDate);

impl BusinessDate {
    /// Creates a date from year, month and day, or `None` if it does not exist.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Self> {
        NaiveDate::from_ymd_opt(year, month, day).map(BusinessDate)
    }

    /// Wraps a chrono date.
    pub const fn from_naive(date: NaiveDate) -> Self {
        BusinessDate(date)
    }

    /// Returns the chrono date.
    pub const fn naive(self) -> NaiveDate {
        self.0
    }

    /// Returns the IST calendar date of an instant.
    pub fn of_instant<Tz: TimeZone>(instant: &DateTime<Tz>) -> Self {
        let ist = FixedOffset::east_opt(IST_OFFSET_SECONDS).expect("IST offset is valid");
        BusinessDate(instant.with_timezone(&ist).date_naive())
    }

    /// Returns the date `days` later (earlier when negative).
    pub fn add_days(self, days: i64) -> Self {
        let date = if days >= 0 {
            self.0.checked_add_days(Days::new(days as u64))
        } else {
            self.0.checked_sub_days(Days::new(days.unsigned_abs()))
        };
        BusinessDate(date.expect("business date stays within chrono's range"))
    }

    /// Returns the next calendar day.
    pub fn succ(self) -> Self {
        self.add_days(1)
    }

    /// Returns the previous calendar day.
    pub fn pred(self) -> Self {
        self.add_days(-1)
    }

    /// Calendar days from `earlier` to `self` (negative if `earlier` is later).
    pub fn days_since(self, earlier: BusinessDate) -> i64 {
        (self.0 - earlier.0).num_days()
    }

    /// Returns the same day `months` later, clamped to the end of a shorter month
    /// (31 January plus one month is 28 or 29 February).
    pub fn add_months(self, months: u32) -> Self {
        BusinessDate(
            self.0
                .checked_add_months(Months::new(months))
                .expect("business date stays within chrono's range"),
        )
    }

    /// Year of the date.
    pub fn year(self) -> i32 {
        self.0.year()
    }

    /// Month of the date, 1 to 12.
    pub fn month(self) -> u32 {
        self.0.month()
    }

    /// Day of the month, 1 to 31.
    pub fn day(self) -> u32 {
        self.0.day()
    }

    /// Checks whether the date is the last day of its month.
    pub fn is_month_end(self) -> bool {
        self.succ().day() == 1
    }

    /// Returns the last day of the date's month.
    pub fn month_end(self) -> Self {
        let first =
            BusinessDate::from_ymd(self.year(), self.month(), 1).expect("first of month exists");
        first.add_months(1).pred()
    }

    /// Days since 1970-01-01, the representation of a date in Arrow and Parquet.
    pub fn epoch_days(self) -> i32 {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch exists");
        (self.0 - epoch).num_days() as i32
    }

    /// Returns the date `days` after 1970-01-01.
    pub fn from_epoch_days(days: i32) -> Self {
        let epoch = BusinessDate(NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch exists"));
        epoch.add_days(i64::from(days))
    }
}

impl fmt::Display for BusinessDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written digit by digit: chrono's strftime formatting was a visible
        // share of serialising ledgers.
        let (year, month, day) = (self.0.year(), self.0.month(), self.0.day());
        if (0..=9999).contains(&year) {
            let mut text = *b"0000-00-00";
            let year = year as u32;
            for (slot, value) in [
                (0, year / 1000),
                (1, year / 100 % 10),
                (2, year / 10 % 10),
                (3, year % 10),
            ] {
                text[slot] = b'0' + value as u8;
            }
            text[5] = b'0' + (month / 10) as u8;
            text[6] = b'0' + (month % 10) as u8;
            text[8] = b'0' + (day / 10) as u8;
            text[9] = b'0' + (day % 10) as u8;
            f.write_str(std::str::from_utf8(&text).expect("digits are ASCII"))
        } else {
            write!(f, "{}", self.0.format("%Y-%m-%d"))
        }
    }
}

impl FromStr for BusinessDate {
    type Err = DateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || DateError {
            value: text.to_string(),
        };
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(error());
        }
        let number = |range: std::ops::Range<usize>| -> Option<u32> {
            bytes[range].iter().try_fold(0u32, |acc, b| {
                b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
            })
        };
        let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10))
        else {
            return Err(error());
        };
        NaiveDate::from_ymd_opt(year as i32, month, day)
            .map(BusinessDate)
            .ok_or_else(error)
    }
}

impl Serialize for BusinessDate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BusinessDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = crate::rate::serde_json_free_string(deserializer, "a business date")?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_utc_evening_is_next_ist_day() {
        let instant = DateTime::parse_from_rfc3339("2024-03-31T20:00:00Z").unwrap();
        assert_eq!(BusinessDate::of_instant(&instant).to_string(), "2024-04-01");
    }

    #[test]
    fn ist_midnight_boundary() {
        let before = DateTime::parse_from_rfc3339("2024-03-31T18:29:59Z").unwrap();
        let after = DateTime::parse_from_rfc3339("2024-03-31T18:30:00Z").unwrap();
        assert_eq!(BusinessDate::of_instant(&before).to_string(), "2024-03-31");
        assert_eq!(BusinessDate::of_instant(&after).to_string(), "2024-04-01");
    }

    #[test]
    fn rejects_bad_dates() {
        for text in ["2024-02-30", "2024-2-01", "01-03-2024", "2024/03/01", ""] {
            assert!(
                text.parse::<BusinessDate>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn month_arithmetic_clamps() {
        let date: BusinessDate = "2024-01-31".parse().unwrap();
        assert_eq!(date.add_months(1).to_string(), "2024-02-29");
        assert!(date.is_month_end());
        assert_eq!(
            "2023-02-10"
                .parse::<BusinessDate>()
                .unwrap()
                .month_end()
                .to_string(),
            "2023-02-28"
        );
    }

    #[test]
    fn epoch_days_round_trip() {
        let date: BusinessDate = "2021-06-29".parse().unwrap();
        assert_eq!(BusinessDate::from_epoch_days(date.epoch_days()), date);
    }
}

//! The Key Fact Statement (KFS) a borrower receives and accepts before
//! sanction.
//!
//! Rules from the RBI KFS circular (RBI/2024-25/18, 15 Apr 2024), which
//! covers every retail and MSME term loan sanctioned from 1 Oct 2024:
//! - each KFS carries a unique proposal number;
//! - part 1 shows the amount, term, instalments, rate and its type, fees to
//!   the lender and to third parties, the APR and the contingent charges;
//! - part 2 shows the grievance officer, the recovery-agent and transfer
//!   clauses and, for digital loans, the cooling-off period;
//! - it is valid for at least 3 working days, or 1 working day when the
//!   tenor is under 7 days, and is written in a language the borrower
//!   understands.

mod render;

use std::collections::BTreeSet;

use chrono::{Datelike, Weekday};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::date::BusinessDate;
use crate::money::Paise;
use crate::pricing::{FeeRecipient, Quote};
use crate::rate::AnnualRate;

pub use render::{Language, Section, escape_html, render_html, sections};

/// Working days of validity when the tenor is at least 7 days.
pub const VALIDITY_WORKING_DAYS: u32 = 3;

/// Working days of validity when the tenor is under 7 days.
pub const SHORT_TENOR_VALIDITY_WORKING_DAYS: u32 = 1;

/// Tenors shorter than this many days get the short validity.
pub const SHORT_TENOR_DAYS: i64 = 7;

/// Days after which an unresolved complaint may go to the RBI Ombudsman, as
/// the Digital Lending Directions 2025 set it.
pub const OMBUDSMAN_AFTER_DAYS: u32 = 30;

/// Working days for KFS validity: every day except Sundays and the listed
/// holidays. Saturdays count, because the KFS rule names no weekly off but
/// Sunday; list second and fourth Saturdays as holidays where the lender
/// closes on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingCalendar {
    holidays: BTreeSet<BusinessDate>,
}

impl WorkingCalendar {
    /// Creates a calendar with these holidays.
    pub fn new(holidays: impl IntoIterator<Item = BusinessDate>) -> Self {
        WorkingCalendar {
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Checks whether `date` is a working day.
    pub fn is_working_day(&self, date: BusinessDate) -> bool {
        date.naive().weekday() != Weekday::Sun && !self.holidays.contains(&date)
    }

    /// Returns the `count`th working day after `from`, `from` itself not
    /// counted (with count 0, `from`).
    pub fn add_working_days(&self, from: BusinessDate, count: u32) -> BusinessDate {
        let mut date = from;
        let mut left = count;
        while left > 0 {
            date = date.succ();
            if self.is_working_day(date) {
                left -= 1;
            }
        }
        date
    }
}

/// Returns the working days a KFS stays valid for a loan of `tenor_days`.
pub fn validity_working_days(tenor_days: i64) -> u32 {
    if tenor_days < SHORT_TENOR_DAYS {
        SHORT_TENOR_VALIDITY_WORKING_DAYS
    } else {
        VALIDITY_WORKING_DAYS
    }
}

/// Returns the last date on which a KFS issued on `issued_on` may be
/// accepted: the validity's last working day, the issue date not counted.
/// A KFS issued on Friday 7 Jun 2024 for a 24-month loan is valid through
/// Saturday 8, Monday 10 and Tuesday 11 Jun.
pub fn valid_until(
    calendar: &WorkingCalendar,
    issued_on: BusinessDate,
    tenor_days: i64,
) -> BusinessDate {
    calendar.add_working_days(issued_on, validity_working_days(tenor_days))
}

/// The grievance redressal officer named in part 2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrievanceOfficer {
    /// Full name.
    pub name: String,
    /// Designation.
    pub designation: String,
    /// Telephone number.
    pub phone: String,
    /// Email address.
    pub email: String,
    /// Postal address.
    pub address: String,
}

/// A Key Fact Statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kfs {
    /// Unique proposal number.
    pub proposal_number: String,
    /// The application priced.
    pub application_id: String,
    /// The borrower.
    pub borrower_id: String,
    /// The lender's name.
    pub lender_name: String,
    /// Date of issue.
    pub issued_on: BusinessDate,
    /// Last date on which the borrower may accept it.
    pub valid_until: BusinessDate,
    /// Part 1: the priced loan.
    pub quote: Quote,
    /// Fees to the lender with GST over the term (A).
    pub fees_to_lender: Paise,
    /// Fees to third parties with GST over the term (B).
    pub fees_to_third_parties: Paise,
    /// APR to two decimals, as the KFS shows it.
    pub apr: AnnualRate,
    /// Cooling-off period in days, during which the borrower may exit by
    /// repaying the principal and the proportionate APR, with no penalty.
    pub cooling_off_days: u32,
    /// Grievance redressal officer.
    pub grievance_officer: GrievanceOfficer,
    /// Days after which a complaint may go to the RBI Ombudsman.
    pub ombudsman_after_days: u32,
}

/// The lender's details that turn a quote into a KFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KfsIssue<'a> {
    /// The application priced.
    pub application_id: &'a str,
    /// The borrower.
    pub borrower_id: &'a str,
    /// The lender's name.
    pub lender_name: &'a str,
    /// Date of issue.
    pub issued_on: BusinessDate,
    /// Cooling-off period in days.
    pub cooling_off_days: u32,
    /// Grievance redressal officer.
    pub grievance_officer: &'a GrievanceOfficer,
    /// Working days and holidays.
    pub calendar: &'a WorkingCalendar,
}

/// Reasons a KFS cannot be accepted on a date.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AcceptanceError {
    /// The validity period is over.
    #[error(
        "KFS {proposal_number} expired: it was valid until {valid_until} and acceptance came on {accepted_on}; a new application.received issues a new KFS"
    )]
    Expired {
        /// The KFS.
        proposal_number: String,
        /// Its last valid date.
        valid_until: BusinessDate,
        /// The date of acceptance.
        accepted_on: BusinessDate,
    },
    /// Acceptance is dated before the KFS was issued.
    #[error(
        "KFS {proposal_number} was issued on {issued_on}, after the acceptance date {accepted_on}; check the acceptance date"
    )]
    BeforeIssue {
        /// The KFS.
        proposal_number: String,
        /// Its issue date.
        issued_on: BusinessDate,
        /// The date of acceptance.
        accepted_on: BusinessDate,
    },
}

impl AcceptanceError {
    /// Returns a fixed code for logs, metrics and rejection reasons.
    pub fn code(&self) -> &'static str {
        match self {
            AcceptanceError::Expired { .. } => "kfs_expired",
            AcceptanceError::BeforeIssue { .. } => "kfs_not_yet_issued",
        }
    }
}

impl Kfs {
    /// Issues a KFS for a quote. The proposal number derives from the
    /// application and the issue date, so issuing again for the same event
    /// gives the same number.
    pub fn issue(quote: &Quote, issue: &KfsIssue<'_>) -> Kfs {
        let tenor_days = quote.last_due_date.days_since(issue.issued_on);
        Kfs {
            proposal_number: format!(
                "KFS-{}-{}",
                issue.application_id,
                issue.issued_on.to_string().replace('-', "")
            ),
            application_id: issue.application_id.to_string(),
            borrower_id: issue.borrower_id.to_string(),
            lender_name: issue.lender_name.to_string(),
            issued_on: issue.issued_on,
            valid_until: valid_until(issue.calendar, issue.issued_on, tenor_days),
            quote: quote.clone(),
            fees_to_lender: quote.fees_to(FeeRecipient::Lender),
            fees_to_third_parties: quote.fees_to(FeeRecipient::ThirdParty),
            apr: quote.apr.round_to_basis_points(),
            cooling_off_days: issue.cooling_off_days,
            grievance_officer: issue.grievance_officer.clone(),
            ombudsman_after_days: OMBUDSMAN_AFTER_DAYS,
        }
    }

    /// Checks that the borrower's acceptance on `accepted_on` falls within
    /// the validity period. Sanction requires it.
    pub fn check_acceptance(&self, accepted_on: BusinessDate) -> Result<(), AcceptanceError> {
        if accepted_on < self.issued_on {
            return Err(AcceptanceError::BeforeIssue {
                proposal_number: self.proposal_number.clone(),
                issued_on: self.issued_on,
                accepted_on,
            });
        }
        if accepted_on > self.valid_until {
            return Err(AcceptanceError::Expired {
                proposal_number: self.proposal_number.clone(),
                valid_until: self.valid_until,
                accepted_on,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

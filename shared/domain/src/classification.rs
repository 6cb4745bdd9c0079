//! Days past due and RBI asset classes (IRACP norms).
//!
//! Source: RBI Master Circular on Prudential norms on Income Recognition,
//! Asset Classification and Provisioning (IRACP), and its clarification of
//! 12 November 2021: an amount unpaid on its due date is flagged overdue in
//! that day's day-end process, so the due date is DPD 1. RBI's example: due
//! 31 March 2021 and unpaid gives SMA-1 on 30 April, SMA-2 on 30 May and NPA
//! on 29 June 2021.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::date::BusinessDate;

/// DPD from which SMA-1 starts (SMA-0 is 1–30 DPD).
pub const SMA1_FROM_DPD: u32 = 31;
/// DPD from which SMA-2 starts (SMA-1 is 31–60 DPD).
pub const SMA2_FROM_DPD: u32 = 61;
/// DPD at which a default loss guarantee must be invoked at the latest: RBI
/// (Digital Lending) Directions 2025 require invocation within 120 days
/// overdue.
pub const DLG_INVOCATION_DPD: u32 = 120;
/// Months an NPA stays sub-standard before it becomes doubtful (12 months).
pub const SUBSTANDARD_MONTHS: u32 = 12;
/// Months from the NPA date at which doubtful D2 starts (one year in D1).
pub const DOUBTFUL2_FROM_MONTHS: u32 = 24;
/// Months from the NPA date at which doubtful D3 starts (three years in
/// doubtful).
pub const DOUBTFUL3_FROM_MONTHS: u32 = 48;

/// An RBI asset class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AssetClass {
    /// Standard, nothing overdue.
    #[serde(rename = "STANDARD")]
    Standard,
    /// Special mention account, 1–30 DPD.
    #[serde(rename = "SMA-0")]
    Sma0,
    /// Special mention account, 31–60 DPD.
    #[serde(rename = "SMA-1")]
    Sma1,
    /// Special mention account, 61 DPD to the NPA threshold.
    #[serde(rename = "SMA-2")]
    Sma2,
    /// NPA for at most 12 months.
    #[serde(rename = "SUBSTANDARD")]
    Substandard,
    /// Doubtful for up to one year.
    #[serde(rename = "DOUBTFUL-1")]
    Doubtful1,
    /// Doubtful for more than one and up to three years.
    #[serde(rename = "DOUBTFUL-2")]
    Doubtful2,
    /// Doubtful for more than three years.
    #[serde(rename = "DOUBTFUL-3")]
    Doubtful3,
    /// Loss identified by the lender, its auditor or RBI, not yet written off.
    #[serde(rename = "LOSS")]
    Loss,
}

impl AssetClass {
    /// Every class, from best to worst.
    pub const ALL: [AssetClass; 9] = [
        AssetClass::Standard,
        AssetClass::Sma0,
        AssetClass::Sma1,
        AssetClass::Sma2,
        AssetClass::Substandard,
        AssetClass::Doubtful1,
        AssetClass::Doubtful2,
        AssetClass::Doubtful3,
        AssetClass::Loss,
    ];

    /// Returns the class's name in reports and events, such as `SMA-1`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AssetClass::Standard => "STANDARD",
            AssetClass::Sma0 => "SMA-0",
            AssetClass::Sma1 => "SMA-1",
            AssetClass::Sma2 => "SMA-2",
            AssetClass::Substandard => "SUBSTANDARD",
            AssetClass::Doubtful1 => "DOUBTFUL-1",
            AssetClass::Doubtful2 => "DOUBTFUL-2",
            AssetClass::Doubtful3 => "DOUBTFUL-3",
            AssetClass::Loss => "LOSS",
        }
    }

    /// Checks whether the class is a non-performing asset.
    pub const fn is_npa(self) -> bool {
        matches!(
            self,
            AssetClass::Substandard
                | AssetClass::Doubtful1
                | AssetClass::Doubtful2
                | AssetClass::Doubtful3
                | AssetClass::Loss
        )
    }
}

impl fmt::Display for AssetClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error raised for an unknown asset class name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid asset class {value:?}: expected one of STANDARD, SMA-0, SMA-1, SMA-2, SUBSTANDARD, DOUBTFUL-1, DOUBTFUL-2, DOUBTFUL-3, LOSS"
)]
pub struct AssetClassError {
    /// The rejected text.
    pub value: String,
}

impl FromStr for AssetClass {
    type Err = AssetClassError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AssetClass::ALL
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| AssetClassError {
                value: text.to_string(),
            })
    }
}

/// Days past due at the end of `as_of`: `as_of − oldest unpaid due date + 1`,
/// so the due date itself is DPD 1; zero when nothing is overdue.
pub fn days_past_due(as_of: BusinessDate, oldest_unpaid_due: Option<BusinessDate>) -> u32 {
    match oldest_unpaid_due {
        Some(due) if due <= as_of => (as_of.days_since(due) + 1) as u32,
        _ => 0,
    }
}

/// The latest date by which a default loss guarantee must be invoked: the day
/// the loan reaches 120 DPD, 119 days after its oldest unpaid due date.
pub fn dlg_invocation_date(oldest_unpaid_due: BusinessDate) -> BusinessDate {
    oldest_unpaid_due.add_days(i64::from(DLG_INVOCATION_DPD) - 1)
}

/// The lender's classification settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassificationPolicy {
    /// A loan is NPA when its DPD exceeds this many days. 90 for banks and
    /// NBFCs in the middle and upper layers; the base-layer glide path
    /// (150 to March 2024, 120 to March 2025, 90 from March 2026) is reported
    /// but unconfirmed, so it is this setting.
    pub npa_after_dpd: u32,
}

impl Default for ClassificationPolicy {
    fn default() -> Self {
        ClassificationPolicy { npa_after_dpd: 90 }
    }
}

impl ClassificationPolicy {
    /// Classifies a performing account by its DPD alone.
    pub fn performing_class(&self, dpd: u32) -> AssetClass {
        match dpd {
            0 => AssetClass::Standard,
            d if d < SMA1_FROM_DPD => AssetClass::Sma0,
            d if d < SMA2_FROM_DPD => AssetClass::Sma1,
            _ => AssetClass::Sma2,
        }
    }

    /// Finds the date a facility at `dpd` on `as_of` first exceeded the NPA
    /// threshold, or `None` if it has not.
    pub fn npa_date(&self, as_of: BusinessDate, dpd: u32) -> Option<BusinessDate> {
        (dpd > self.npa_after_dpd).then(|| as_of.add_days(-i64::from(dpd - self.npa_after_dpd - 1)))
    }
}

/// Classifies an NPA by its age: sub-standard for 12 months from the NPA
/// date, then D1 for a year, D2 for two more years, D3 after that.
pub fn npa_class(as_of: BusinessDate, npa_date: BusinessDate) -> AssetClass {
    if as_of < npa_date.add_months(SUBSTANDARD_MONTHS) {
        AssetClass::Substandard
    } else if as_of < npa_date.add_months(DOUBTFUL2_FROM_MONTHS) {
        AssetClass::Doubtful1
    } else if as_of < npa_date.add_months(DOUBTFUL3_FROM_MONTHS) {
        AssetClass::Doubtful2
    } else {
        AssetClass::Doubtful3
    }
}

/// One facility's input to borrower-level classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FacilityStatus {
    /// DPD at the end of the date; zero means no arrears.
    pub dpd: u32,
    /// The lender, its auditor or RBI identified the facility as a loss.
    pub loss_identified: bool,
}

/// The classes of one borrower's facilities on one date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowerClassification {
    /// Start of the borrower's current NPA spell, if the borrower is NPA.
    pub npa_date: Option<BusinessDate>,
    /// The class of each facility, in input order.
    pub classes: Vec<AssetClass>,
}

/// Classifies a borrower's facilities at the end of `as_of`.
///
/// NPA is borrower-wise: when one facility is NPA, all of the borrower's
/// facilities are, from the earliest NPA date. An NPA borrower is upgraded
/// only when every arrear of every facility is paid; until then the NPA date
/// of the previous day (`prior_npa_date`) carries over even if DPD falls
/// below the threshold. A loss-identified facility of an NPA borrower is LOSS.
pub fn classify_borrower(
    policy: &ClassificationPolicy,
    as_of: BusinessDate,
    facilities: &[FacilityStatus],
    prior_npa_date: Option<BusinessDate>,
) -> BorrowerClassification {
    let any_arrears = facilities.iter().any(|f| f.dpd > 0);
    let npa_date = if !any_arrears {
        None
    } else {
        let new_npa = facilities
            .iter()
            .filter_map(|f| policy.npa_date(as_of, f.dpd))
            .min();
        match (prior_npa_date, new_npa) {
            (Some(prior), Some(new)) => Some(prior.min(new)),
            (prior, new) => prior.or(new),
        }
    };
    let classes = facilities
        .iter()
        .map(|facility| match npa_date {
            Some(_) if facility.loss_identified => AssetClass::Loss,
            Some(date) => npa_class(as_of, date),
            None => policy.performing_class(facility.dpd),
        })
        .collect();
    BorrowerClassification { npa_date, classes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> BusinessDate {
        text.parse().unwrap()
    }

    fn single(as_of: &str, dpd: u32, prior: Option<&str>) -> BorrowerClassification {
        classify_borrower(
            &ClassificationPolicy::default(),
            date(as_of),
            &[FacilityStatus {
                dpd,
                loss_identified: false,
            }],
            prior.map(date),
        )
    }

    #[test]
    fn rbi_example_dates() {
        let due = Some(date("2021-03-31"));
        let policy = ClassificationPolicy::default();
        let class_on = |day: &str| policy.performing_class(days_past_due(date(day), due));
        assert_eq!(days_past_due(date("2021-03-31"), due), 1);
        assert_eq!(class_on("2021-03-31"), AssetClass::Sma0);
        assert_eq!(class_on("2021-04-29"), AssetClass::Sma0);
        assert_eq!(class_on("2021-04-30"), AssetClass::Sma1);
        assert_eq!(class_on("2021-05-29"), AssetClass::Sma1);
        assert_eq!(class_on("2021-05-30"), AssetClass::Sma2);
        assert_eq!(days_past_due(date("2021-06-28"), due), 90);
        assert_eq!(single("2021-06-28", 90, None).npa_date, None);
        let npa = single("2021-06-29", days_past_due(date("2021-06-29"), due), None);
        assert_eq!(npa.npa_date, Some(date("2021-06-29")));
        assert_eq!(npa.classes, [AssetClass::Substandard]);
    }

    #[test]
    fn dpd_band_boundaries() {
        let policy = ClassificationPolicy::default();
        let cases = [
            (0, AssetClass::Standard),
            (1, AssetClass::Sma0),
            (30, AssetClass::Sma0),
            (31, AssetClass::Sma1),
            (60, AssetClass::Sma1),
            (61, AssetClass::Sma2),
            (90, AssetClass::Sma2),
        ];
        for (dpd, expected) in cases {
            assert_eq!(policy.performing_class(dpd), expected, "dpd {dpd}");
        }
        assert_eq!(
            single("2024-01-01", 91, None).classes,
            [AssetClass::Substandard]
        );
    }

    #[test]
    fn npa_ageing_by_anniversary() {
        let npa = date("2021-06-29");
        assert_eq!(npa_class(date("2022-06-28"), npa), AssetClass::Substandard);
        assert_eq!(npa_class(date("2022-06-29"), npa), AssetClass::Doubtful1);
        assert_eq!(npa_class(date("2023-06-28"), npa), AssetClass::Doubtful1);
        assert_eq!(npa_class(date("2023-06-29"), npa), AssetClass::Doubtful2);
        assert_eq!(npa_class(date("2025-06-28"), npa), AssetClass::Doubtful2);
        assert_eq!(npa_class(date("2025-06-29"), npa), AssetClass::Doubtful3);
    }

    #[test]
    fn part_payment_keeps_npa() {
        // A part payment on 10 July that brings DPD below 91 keeps the NPA.
        let result = single("2021-07-10", 40, Some("2021-06-29"));
        assert_eq!(result.npa_date, Some(date("2021-06-29")));
        assert_eq!(result.classes, [AssetClass::Substandard]);
    }

    #[test]
    fn upgrade_only_when_all_arrears_paid() {
        let result = single("2021-07-10", 0, Some("2021-06-29"));
        assert_eq!(result.npa_date, None);
        assert_eq!(result.classes, [AssetClass::Standard]);
    }

    #[test]
    fn npa_spreads_to_every_facility_of_borrower() {
        let facilities = [
            FacilityStatus {
                dpd: 95,
                loss_identified: false,
            },
            FacilityStatus {
                dpd: 0,
                loss_identified: false,
            },
            FacilityStatus {
                dpd: 12,
                loss_identified: true,
            },
        ];
        let result = classify_borrower(
            &ClassificationPolicy::default(),
            date("2024-05-10"),
            &facilities,
            None,
        );
        assert_eq!(result.npa_date, Some(date("2024-05-06")));
        assert_eq!(
            result.classes,
            [
                AssetClass::Substandard,
                AssetClass::Substandard,
                AssetClass::Loss
            ]
        );
    }

    #[test]
    fn borrower_stays_npa_while_other_facility_in_arrears() {
        let facilities = [
            FacilityStatus {
                dpd: 0,
                loss_identified: false,
            },
            FacilityStatus {
                dpd: 3,
                loss_identified: false,
            },
        ];
        let result = classify_borrower(
            &ClassificationPolicy::default(),
            date("2024-08-01"),
            &facilities,
            Some(date("2024-05-06")),
        );
        assert_eq!(
            result.classes,
            [AssetClass::Substandard, AssetClass::Substandard]
        );
    }

    #[test]
    fn dlg_deadline_is_dpd_120() {
        let first_overdue = date("2025-07-01");
        assert_eq!(dlg_invocation_date(first_overdue), date("2025-10-28"));
        assert_eq!(days_past_due(date("2025-10-28"), Some(first_overdue)), 120);
    }

    #[test]
    fn class_names_round_trip() {
        for class in AssetClass::ALL {
            assert_eq!(class.as_str().parse::<AssetClass>(), Ok(class));
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{}\"", class.as_str())
            );
        }
        assert!("SMA-3".parse::<AssetClass>().is_err());
    }
}

//! Fraud rules on a loan application.
//!
//! Each rule has a fixed id, which is also its key under `fraud` in the
//! configuration, and a threshold. A rule fires when the observed value
//! passes its threshold: at the threshold it stays quiet. The rules that
//! look back in time read the applicant's earlier sightings (per PAN, phone
//! and device), which the fraud service keeps.

use serde::{Deserialize, Serialize};

use crate::schedule::emi;
use crate::{AnnualRate, BusinessDate, Paise};

/// Id of the rule on one PAN used with different names.
pub const PAN_NAMES: &str = "pan_names";
/// Id of the rule on applications per PAN in a window.
pub const PAN_VELOCITY: &str = "pan_velocity";
/// Id of the rule on one phone used with different PANs.
pub const PHONE_REUSE: &str = "phone_reuse";
/// Id of the rule on one device used with different PANs.
pub const DEVICE_REUSE: &str = "device_reuse";
/// Id of the rule on the requested EMI against declared monthly income.
pub const EMI_INCOME: &str = "emi_income";
/// Id of the rule on the PAN's format.
pub const PAN_FORMAT: &str = "pan_format";
/// Id of the rule on the applicant's age at the application date.
pub const APPLICANT_AGE: &str = "applicant_age";

/// PAN holder types, the fourth character of a PAN: individual, company,
/// HUF, firm, association of persons, trust, body of individuals, local
/// authority, artificial juridical person, government.
pub const PAN_HOLDER_TYPES: &str = "PCHFATBLJG";

/// A rule that counts distinct values seen within a window of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Days looked back, the application date included.
    pub window_days: u32,
    /// The largest count that does not fire the rule.
    pub max_count: u32,
}

/// The EMI-to-income rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmiIncomeRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Annual rate at which the requested EMI is computed, since the price
    /// is not known before the risk grade.
    pub assessment_rate: AnnualRate,
    /// The largest EMI as a share of declared monthly income, in basis
    /// points (5000 is 50%), that does not fire the rule.
    pub max_basis_points: u32,
}

/// A rule with no threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRule {
    /// Whether the rule runs.
    pub enabled: bool,
}

/// The applicant age rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRule {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Youngest age allowed, in whole years at the application date.
    pub min_years: u32,
    /// Oldest age allowed, in whole years at the application date.
    pub max_years: u32,
}

/// The fraud rules and their thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudPolicy {
    /// Distinct applicant names seen with one PAN.
    pub pan_names: WindowRule,
    /// Applications per PAN.
    pub pan_velocity: WindowRule,
    /// Distinct PANs seen with one phone number.
    pub phone_reuse: WindowRule,
    /// Distinct PANs seen with one device.
    pub device_reuse: WindowRule,
    /// Requested EMI against declared monthly income.
    pub emi_income: EmiIncomeRule,
    /// PAN format.
    pub pan_format: SwitchRule,
    /// Applicant age at the application date.
    pub applicant_age: AgeRule,
}

impl Default for FraudPolicy {
    fn default() -> Self {
        FraudPolicy {
            pan_names: WindowRule {
                enabled: true,
                window_days: 365,
                max_count: 1,
            },
            pan_velocity: WindowRule {
                enabled: true,
                window_days: 30,
                max_count: 3,
            },
            phone_reuse: WindowRule {
                enabled: true,
                window_days: 90,
                max_count: 2,
            },
            device_reuse: WindowRule {
                enabled: true,
                window_days: 30,
                max_count: 2,
            },
            emi_income: EmiIncomeRule {
                enabled: true,
                assessment_rate: AnnualRate::from_basis_points(2300),
                max_basis_points: 5000,
            },
            pan_format: SwitchRule { enabled: true },
            applicant_age: AgeRule {
                enabled: true,
                min_years: 18,
                max_years: 65,
            },
        }
    }
}

impl FraudPolicy {
    /// Returns the window rules with their ids.
    pub fn window_rules(&self) -> [(&'static str, WindowRule); 4] {
        [
            (PAN_NAMES, self.pan_names),
            (PAN_VELOCITY, self.pan_velocity),
            (PHONE_REUSE, self.phone_reuse),
            (DEVICE_REUSE, self.device_reuse),
        ]
    }

    /// Returns the ids of the enabled rules, in evaluation order.
    pub fn enabled_rules(&self) -> Vec<&'static str> {
        let mut ids: Vec<&'static str> = self
            .window_rules()
            .into_iter()
            .filter(|(_, rule)| rule.enabled)
            .map(|(id, _)| id)
            .collect();
        for (id, enabled) in [
            (EMI_INCOME, self.emi_income.enabled),
            (PAN_FORMAT, self.pan_format.enabled),
            (APPLICANT_AGE, self.applicant_age.enabled),
        ] {
            if enabled {
                ids.push(id);
            }
        }
        ids
    }

    /// Returns the longest window of the enabled window rules: sightings
    /// older than this can no longer fire any rule.
    pub fn retention_days(&self) -> u32 {
        self.window_rules()
            .into_iter()
            .filter(|(_, rule)| rule.enabled)
            .map(|(_, rule)| rule.window_days)
            .max()
            .unwrap_or(0)
    }
}

/// One earlier application seen with a PAN, phone or device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sighting {
    /// The application.
    pub application_id: String,
    /// The value seen with it: the normalised name for a PAN's sightings,
    /// the normalised PAN for a phone's or a device's.
    pub value: String,
    /// The application date.
    pub applied_on: BusinessDate,
}

/// The applicant's earlier sightings that the window rules read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Applications with the same PAN.
    pub pan: Vec<Sighting>,
    /// Applications with the same phone number.
    pub phone: Vec<Sighting>,
    /// Applications with the same device, empty when none was given.
    pub device: Vec<Sighting>,
}

/// The parts of an application the rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicant<'a> {
    /// The application.
    pub application_id: &'a str,
    /// The PAN as given.
    pub pan: &'a str,
    /// The applicant's name as given.
    pub name: &'a str,
    /// Date of birth.
    pub date_of_birth: BusinessDate,
    /// Whether a device id was given.
    pub has_device: bool,
    /// Amount requested.
    pub amount: Paise,
    /// Number of monthly instalments requested.
    pub tenor_months: u32,
    /// Declared monthly income, greater than zero.
    pub monthly_income: Paise,
    /// Date of the application.
    pub applied_on: BusinessDate,
}

/// A rule that fired, with its threshold and the value observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiredRule {
    /// The rule's id.
    pub rule: String,
    /// The configured threshold.
    pub threshold: String,
    /// The value observed on this application.
    pub observed: String,
}

/// Normalises a PAN for comparison: trimmed, upper case.
pub fn normalise_pan(pan: &str) -> String {
    pan.trim().to_ascii_uppercase()
}

/// Normalises a name for comparison: letters in upper case, separated by
/// single spaces; other characters are dropped, so "Ravi  Kumar" and
/// "RAVI KUMAR." match.
pub fn normalise_name(name: &str) -> String {
    name.split(|c: char| !c.is_alphabetic())
        .filter(|word| !word.is_empty())
        .map(|word| word.to_uppercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Describes why `pan` is not a valid PAN, or returns `None` when it has
/// the form AAAAA9999A with a known holder type as its fourth character.
pub fn pan_format_problem(pan: &str) -> Option<String> {
    let pan = normalise_pan(pan);
    let bytes = pan.as_bytes();
    if bytes.len() != 10 {
        return Some(format!("{} characters", pan.chars().count()));
    }
    for (index, &byte) in bytes.iter().enumerate() {
        let expect_digit = (5..9).contains(&index);
        let fits = if expect_digit {
            byte.is_ascii_digit()
        } else {
            byte.is_ascii_uppercase()
        };
        if !fits {
            let kind = if expect_digit { "a digit" } else { "a letter" };
            return Some(format!("character {} is not {kind}", index + 1));
        }
    }
    if !PAN_HOLDER_TYPES.as_bytes().contains(&bytes[3]) {
        return Some(format!(
            "character 4 '{}' is not a holder type",
            bytes[3] as char
        ));
    }
    None
}

/// Returns the age in whole years on `on` of someone born on `born`.
pub fn age_in_years(born: BusinessDate, on: BusinessDate) -> i64 {
    let mut years = i64::from(on.year()) - i64::from(born.year());
    if (on.month(), on.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years
}

/// Counts the distinct values among the sightings within `window_days`
/// before or on `on`, the current one included. Sightings dated after `on`
/// are left out, so an earlier application is judged only on what came
/// before it.
fn distinct_within<'a>(
    sightings: &'a [Sighting],
    current: &'a str,
    window_days: u32,
    on: BusinessDate,
    key: impl Fn(&'a Sighting) -> &'a str,
) -> usize {
    let mut values: Vec<&str> = sightings
        .iter()
        .filter(|s| {
            let age = on.days_since(s.applied_on);
            (0..i64::from(window_days)).contains(&age)
        })
        .map(key)
        .collect();
    values.push(current);
    values.sort_unstable();
    values.dedup();
    values.len()
}

/// Runs every enabled rule on an application and returns those that fired,
/// in the order of [`FraudPolicy::enabled_rules`].
pub fn evaluate(
    policy: &FraudPolicy,
    applicant: &Applicant<'_>,
    history: &History,
) -> Vec<FiredRule> {
    let mut fired = Vec::new();
    let on = applicant.applied_on;
    let pan = normalise_pan(applicant.pan);
    let name = normalise_name(applicant.name);
    let window_counts = [
        (
            PAN_NAMES,
            policy.pan_names,
            distinct_within(&history.pan, &name, policy.pan_names.window_days, on, |s| {
                &s.value
            }),
        ),
        (
            PAN_VELOCITY,
            policy.pan_velocity,
            distinct_within(
                &history.pan,
                applicant.application_id,
                policy.pan_velocity.window_days,
                on,
                |s| &s.application_id,
            ),
        ),
        (
            PHONE_REUSE,
            policy.phone_reuse,
            distinct_within(
                &history.phone,
                &pan,
                policy.phone_reuse.window_days,
                on,
                |s| &s.value,
            ),
        ),
        (
            DEVICE_REUSE,
            policy.device_reuse,
            if applicant.has_device {
                distinct_within(
                    &history.device,
                    &pan,
                    policy.device_reuse.window_days,
                    on,
                    |s| &s.value,
                )
            } else {
                0
            },
        ),
    ];
    for (id, rule, observed) in window_counts {
        if rule.enabled && observed > rule.max_count as usize {
            fired.push(FiredRule {
                rule: id.into(),
                threshold: rule.max_count.to_string(),
                observed: observed.to_string(),
            });
        }
    }

    let emi_rule = policy.emi_income;
    if emi_rule.enabled {
        let instalment = emi(
            applicant.amount,
            emi_rule.assessment_rate,
            applicant.tenor_months,
        );
        let observed = emi_share_basis_points(instalment, applicant.monthly_income);
        if observed > i128::from(emi_rule.max_basis_points) {
            fired.push(FiredRule {
                rule: EMI_INCOME.into(),
                threshold: basis_points_as_percent(i128::from(emi_rule.max_basis_points)),
                observed: basis_points_as_percent(observed),
            });
        }
    }

    if policy.pan_format.enabled
        && let Some(problem) = pan_format_problem(applicant.pan)
    {
        fired.push(FiredRule {
            rule: PAN_FORMAT.into(),
            threshold: "AAAAA9999A with a holder type as the fourth character".into(),
            observed: problem,
        });
    }

    let age_rule = policy.applicant_age;
    if age_rule.enabled {
        let age = age_in_years(applicant.date_of_birth, on);
        if age < i64::from(age_rule.min_years) || age > i64::from(age_rule.max_years) {
            fired.push(FiredRule {
                rule: APPLICANT_AGE.into(),
                threshold: format!("{} to {}", age_rule.min_years, age_rule.max_years),
                observed: age.to_string(),
            });
        }
    }
    fired
}

/// Returns `emi / income` in basis points, rounded half-up. `income` must be
/// greater than zero.
pub fn emi_share_basis_points(emi: Paise, income: Paise) -> i128 {
    crate::money::div_round_half_up(
        i128::from(emi.as_paise()) * 10_000,
        i128::from(income.as_paise()),
    )
}

/// Formats basis points as a percent with two decimals: 5000 is "50.00".
fn basis_points_as_percent(basis_points: i128) -> String {
    format!("{}.{:02}", basis_points / 100, basis_points % 100)
}

#[cfg(test)]
mod tests;

//! The German credit applicants as loan applications, and the repayment
//! histories of the loans that origination disbursed.
//!
//! [`origination_inputs`] turns each planned loan of the conversion into a
//! `consent.granted` (one per borrower) and an `application.received` with
//! the applicant's details derived from the CSV row. After the origination
//! saga has run on them, [`repayment_events`] draws the repayment history of
//! each loan from the `loan.disbursed` the services emitted, with the same
//! behaviour model and PRNG streams as [`super::convert`].
//! `docs/german-credit-conversion.md` states every rule.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use serde_json::json;
use underwrite_domain::{BusinessDate, DueDayRule, Paise, Schedule};
use underwrite_events::payloads::LoanDisbursed;

use super::{
    Applicant, Behaviour, Collected, Conversion, ConversionOptions, PlannedLoan, SplitMix64,
    check_options, draw_date, parse_applicants, plan_loans, plan_payments, split_csv_line,
};

/// Years a borrower's consent runs from the first application: longer than
/// the longest tenor in the data, 72 months.
pub const CONSENT_YEARS: i32 = 8;

/// Given names for the derived applicant names.
const GIVEN_NAMES: [&str; 24] = [
    "Aarav", "Ananya", "Arjun", "Bhavna", "Chetan", "Deepa", "Farhan", "Gauri", "Harish", "Ishita",
    "Jayant", "Kavya", "Lokesh", "Meera", "Nikhil", "Pooja", "Rahul", "Sana", "Tarun", "Usha",
    "Varun", "Yamini", "Zubin", "Nandini",
];

/// Surnames for the derived applicant names.
const SURNAMES: [&str; 20] = [
    "Sharma",
    "Iyer",
    "Patel",
    "Reddy",
    "Das",
    "Khan",
    "Mehta",
    "Nair",
    "Joshi",
    "Kulkarni",
    "Banerjee",
    "Gupta",
    "Singh",
    "Menon",
    "Rao",
    "Chopra",
    "Fernandes",
    "Pillai",
    "Verma",
    "Bose",
];

/// The CSV columns of the applicant's profile, read besides those of the
/// loan.
const PROFILE_COLUMNS: [&str; 8] = [
    "age_in_years",
    "installment_rate_in_percentage_of_disposable_income",
    "status_of_existing_checking_account",
    "credit_history",
    "savings_account_and_bonds",
    "present_employment_since",
    "property",
    "housing",
];

/// The column of other instalment plans, also read for the profile.
const OTHER_PLANS_COLUMN: &str = "other_installment_plans";

/// An applicant's details that the application carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Profile {
    age_years: i32,
    instalment_burden: i64,
    labels: [String; 7],
}

/// The input events that start origination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginationInputs {
    /// One `consent.granted` per borrower, as JSON lines.
    pub consents: Vec<String>,
    /// One `application.received` per planned loan, as JSON lines, by
    /// application date then applicant row.
    pub applications: Vec<String>,
}

fn parse_profiles(csv_text: &str) -> anyhow::Result<Vec<Profile>> {
    let text = csv_text.strip_prefix('\u{feff}').unwrap_or(csv_text);
    let mut lines = text.split('\n').filter(|line| !line.is_empty());
    let header_line = lines
        .next()
        .ok_or_else(|| anyhow!("the CSV is empty: expected a header row naming the columns"))?;
    let header = split_csv_line(header_line.strip_suffix('\r').unwrap_or(header_line))
        .map_err(|reason| anyhow!("line 1: {reason}"))?;
    let position = |column: &str| {
        header
            .iter()
            .position(|name| name == column)
            .ok_or_else(|| anyhow!("line 1: missing column {column:?} in the header"))
    };
    let positions = PROFILE_COLUMNS
        .iter()
        .map(|column| position(column))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let other_plans = position(OTHER_PLANS_COLUMN)?;
    let mut profiles = Vec::new();
    for (index, raw) in lines.enumerate() {
        let line_number = index + 2;
        let fields = split_csv_line(raw.strip_suffix('\r').unwrap_or(raw))
            .map_err(|reason| anyhow!("line {line_number}: {reason}"))?;
        let field = |i: usize| fields.get(positions[i]).map(String::as_str).unwrap_or("");
        let age_years = field(0)
            .parse::<i32>()
            .ok()
            .filter(|age| (1..=120).contains(age))
            .ok_or_else(|| {
                anyhow!(
                    "line {line_number}: invalid age_in_years {:?}: expected whole years from 1 to 120",
                    field(0)
                )
            })?;
        let instalment_burden = field(1)
            .parse::<i64>()
            .ok()
            .filter(|step| (1..=4).contains(step))
            .ok_or_else(|| {
                anyhow!(
                    "line {line_number}: invalid installment_rate_in_percentage_of_disposable_income {:?}: expected 1, 2, 3 or 4",
                    field(1)
                )
            })?;
        let label = |text: &str| text.to_string();
        profiles.push(Profile {
            age_years,
            instalment_burden,
            labels: [
                label(field(2)),
                label(field(3)),
                label(field(4)),
                label(field(5)),
                label(field(6)),
                label(field(7)),
                label(fields.get(other_plans).map(String::as_str).unwrap_or("")),
            ],
        });
    }
    Ok(profiles)
}

/// Returns the derived name of applicant `row`: a given name and a surname
/// picked by the row number.
pub fn applicant_name(row: u32) -> String {
    let given = GIVEN_NAMES[row as usize % GIVEN_NAMES.len()];
    let surname = SURNAMES[(row as usize / GIVEN_NAMES.len()) % SURNAMES.len()];
    format!("{given} {surname}")
}

/// Returns the derived PAN of applicant `row`: three letters spelling the
/// row in base 26, `P` (an individual), the surname's initial, the row's
/// last four digits and a letter from the row.
pub fn applicant_pan(row: u32) -> String {
    let letter = |n: u32| char::from(b'A' + (n % 26) as u8);
    let surname = SURNAMES[(row as usize / GIVEN_NAMES.len()) % SURNAMES.len()];
    let initial = surname.chars().next().unwrap_or('X');
    format!(
        "{}{}{}P{initial}{:04}{}",
        letter(row / 676),
        letter(row / 26),
        letter(row),
        row % 10_000,
        letter(row * 7)
    )
}

/// Returns the derived mobile number of applicant `row`.
pub fn applicant_phone(row: u32) -> String {
    format!("+9190000{:05}", row % 100_000)
}

/// Builds the origination inputs: for each borrower a consent given on the
/// date of their first application, and an application for each loan the
/// conversion plans, dated its planned disbursal date.
pub fn origination_inputs(
    csv_text: &str,
    options: &ConversionOptions,
) -> anyhow::Result<OriginationInputs> {
    check_options(options)?;
    let applicants = parse_applicants(csv_text)?;
    let profiles = parse_profiles(csv_text)?;
    if profiles.len() != applicants.len() {
        bail!(
            "the CSV has {} applicant rows but {} profile rows; check for blank lines",
            applicants.len(),
            profiles.len()
        );
    }
    let mut consents = Vec::new();
    let mut applications = Vec::new();
    for (applicant, profile) in applicants.iter().zip(&profiles) {
        let loans = plan_loans(applicant, options)?;
        let first_date = loans[0].disbursed_on;
        consents.push(consent_line(applicant, first_date)?);
        for loan in &loans {
            applications.push((
                (loan.disbursed_on, loan.order),
                application_line(applicant, profile, loan)?,
            ));
        }
    }
    applications.sort_by_key(|(key, _)| *key);
    Ok(OriginationInputs {
        consents,
        applications: applications.into_iter().map(|(_, line)| line).collect(),
    })
}

fn consent_line(applicant: &Applicant, given_on: BusinessDate) -> anyhow::Result<String> {
    let row = applicant.row;
    let expires_on = given_on.add_months(12 * CONSENT_YEARS as u32).add_days(-1);
    Ok(json!({
        "id": format!("grant-GCB-{row:04}"),
        "type": "consent.granted",
        "occurred_at": format!("{given_on}T09:00:00+05:30"),
        "payload": {
            "consent_id": format!("GCC-{row:04}"),
            "principal_id": format!("GCB-{row:04}"),
            "purposes": ["credit_assessment", "loan_servicing"],
            "data_items": ["pan", "name", "date_of_birth", "phone", "income", "credit_profile"],
            "notice_version": "2025-11",
            "notice_language": if row.is_multiple_of(2) { "hi" } else { "en" },
            "given_on": given_on,
            "expires_on": expires_on,
        }
    })
    .to_string())
}

fn application_line(
    applicant: &Applicant,
    profile: &Profile,
    loan: &PlannedLoan,
) -> anyhow::Result<String> {
    let row = applicant.row;
    let applied_on = loan.disbursed_on;
    // Aged `age_in_years` on the application date: born 1 to 28 days before
    // the first of the application's month, that many years earlier.
    let date_of_birth =
        BusinessDate::from_ymd(applied_on.year() - profile.age_years, applied_on.month(), 1)
            .ok_or_else(|| {
                anyhow!(
                    "applicant row {row}: no date of birth for age {}",
                    profile.age_years
                )
            })?
            .add_days(-1 - i64::from(row % 28));
    let schedule = Schedule::build(
        loan.principal,
        loan.rate,
        loan.tenor_months,
        loan.first_due,
        DueDayRule::KeepDay,
    )
    .with_context(|| format!("loan {}: failed to build the schedule", loan.loan_id))?;
    let emi = schedule.instalments[0].amount;
    // The instalment burden 1 to 4 becomes the share of income the EMI
    // takes: 10%, 20%, 30% or 40%.
    let income = emi.mul_ratio_half_up(100, 10 * i128::from(profile.instalment_burden));
    let [
        checking,
        history,
        savings,
        employment,
        property,
        housing,
        other_plans,
    ] = profile.labels.clone();
    let purpose = if loan.product == "business" {
        "business"
    } else {
        "non_business"
    };
    Ok(json!({
        "id": format!("app-{}", loan.loan_id),
        "type": "application.received",
        "occurred_at": format!("{applied_on}T10:00:00+05:30"),
        "payload": {
            "application_id": loan.loan_id,
            "borrower_id": loan.borrower_id,
            "product": loan.product,
            "amount": loan.principal,
            "tenor_months": loan.tenor_months,
            "rate_type": "fixed",
            "borrower_type": "individual",
            "purpose": purpose,
            "applied_on": applied_on,
            "first_due_date": loan.first_due,
            "pan": applicant_pan(row),
            "applicant_name": applicant_name(row),
            "date_of_birth": date_of_birth,
            "phone": applicant_phone(row),
            "declared_monthly_income": round_to_rupee(income),
            "credit_profile": {
                "checking_account": checking,
                "credit_history": history,
                "savings": savings,
                "employment_since": employment,
                "property": property,
                "housing": housing,
                "other_installment_plans": other_plans,
            },
        }
    })
    .to_string())
}

fn round_to_rupee(amount: Paise) -> Paise {
    amount.mul_ratio_half_up(1, 100).mul_ratio_half_up(100, 1)
}

/// Draws the repayment history of each disbursed loan and closes every
/// date from `first_disbursal` to `as_of`.
///
/// Each disbursal's loan id names its applicant row and loan sequence
/// (`GC-0001`, `GC-0001-2`). The schedule is built from the disbursal's
/// own terms, with `due_day_rule` of its product, so a borrower who pays
/// every EMI pays the loan off exactly. The behaviour and payment dates
/// come from the loan's PRNG stream as in [`super::convert`].
pub fn repayment_events(
    csv_text: &str,
    options: &ConversionOptions,
    disbursals: &[LoanDisbursed],
    due_day_rule: &dyn Fn(&str) -> DueDayRule,
) -> anyhow::Result<Conversion> {
    check_options(options)?;
    let applicants = parse_applicants(csv_text)?;
    let mut planned_first: BTreeMap<u32, BusinessDate> = BTreeMap::new();
    for applicant in &applicants {
        let loans = plan_loans(applicant, options)?;
        planned_first.insert(applicant.row, loans[0].disbursed_on);
    }
    let mut collected = Collected::default();
    for terms in disbursals {
        let (row, sequence) = parse_loan_id(terms.loan_id.as_str())?;
        let applicant = applicants
            .get(row as usize - 1)
            .ok_or_else(|| anyhow!("loan {}: the CSV has no row {row}", terms.loan_id))?;
        let first_date = planned_first[&row];
        let loan = planned_from_disbursal(
            applicant,
            sequence,
            first_date,
            terms,
            due_day_rule(&terms.product),
            options,
        )?;
        collected.add(&loan, options.as_of, false)?;
    }
    collected.finish(options, Some(disbursals.len()))
}

/// Reads the applicant row and loan sequence from a loan id `GC-0001` or
/// `GC-0001-2`.
fn parse_loan_id(loan_id: &str) -> anyhow::Result<(u32, u32)> {
    let invalid = || {
        anyhow!(
            "loan id {loan_id:?} is not one of the conversion's: expected GC-<row> or GC-<row>-2"
        )
    };
    let rest = loan_id.strip_prefix("GC-").ok_or_else(invalid)?;
    let (row, sequence) = match rest.split_once('-') {
        Some((row, "2")) => (row, 2),
        Some(_) => return Err(invalid()),
        None => (rest, 1),
    };
    let row = row
        .parse::<u32>()
        .ok()
        .filter(|row| *row >= 1)
        .ok_or_else(invalid)?;
    Ok((row, sequence))
}

fn planned_from_disbursal(
    applicant: &Applicant,
    sequence: u32,
    first_date: BusinessDate,
    terms: &LoanDisbursed,
    rule: DueDayRule,
    options: &ConversionOptions,
) -> anyhow::Result<PlannedLoan> {
    // The stream draws the disbursal date first, as in the conversion, so
    // the behaviour and payment draws that follow are the same.
    let mut rng = SplitMix64::for_loan(options.seed, applicant.row, sequence);
    let behaviour = if sequence == 1 {
        draw_date(&mut rng, options.first_disbursal, options.last_disbursal);
        Behaviour::draw(applicant.good, &mut rng)
    } else {
        draw_date(&mut rng, first_date, options.last_disbursal);
        Behaviour::SecondLoanOnTime
    };
    let schedule = Schedule::build(
        terms.principal,
        terms.annual_rate,
        terms.tenor_months,
        terms.first_due_date,
        rule,
    )
    .with_context(|| format!("loan {}: failed to build the schedule", terms.loan_id))?;
    let payments = plan_payments(behaviour, &schedule, &mut rng);
    Ok(PlannedLoan {
        loan_id: terms.loan_id.to_string(),
        borrower_id: terms.borrower_id.to_string(),
        order: (applicant.row, sequence),
        product: applicant.product,
        principal: terms.principal,
        rate: terms.annual_rate,
        tenor_months: terms.tenor_months,
        disbursed_on: terms.disbursed_on,
        first_due: terms.first_due_date,
        secured_value: terms.secured_value,
        behaviour,
        payments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loan_ids_name_row_and_sequence() {
        assert_eq!(parse_loan_id("GC-0001").unwrap(), (1, 1));
        assert_eq!(parse_loan_id("GC-0417-2").unwrap(), (417, 2));
        for bad in ["GC-0000", "GC-0001-3", "L1", "GC-x"] {
            assert!(parse_loan_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_pans_pass_the_format_rule() {
        for row in [1, 26, 27, 676, 999, 1000] {
            let pan = applicant_pan(row);
            assert_eq!(
                underwrite_domain::fraud::pan_format_problem(&pan),
                None,
                "{pan}"
            );
        }
        assert_ne!(applicant_pan(1), applicant_pan(677));
    }
}

//! Payloads of the origination events: applications, consent, fraud checks, risk scores,
//! quotes, Key Fact Statements and charge assessments.

use serde::{Deserialize, Serialize};
use underwrite_domain::consent::ConsentArtefact;
use underwrite_domain::fraud::FiredRule;
use underwrite_domain::pricing::{BorrowerType, LoanPurpose, Quote, RateType, RiskGrade};
use underwrite_domain::schedule::MAX_TENOR_MONTHS;
use underwrite_domain::{AnnualRate, BusinessDate, Paise};

use crate::ids::{ApplicationId, BorrowerId, ConsentId, LoanId};

/// `application.received`: a loan application arrived from the lender's
/// front end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationReceived {
    /// The application.
    pub application_id: ApplicationId,
    /// The applicant, also the data principal whose consent is checked.
    pub borrower_id: BorrowerId,
    /// Product code.
    pub product: String,
    /// Amount requested.
    pub amount: Paise,
    /// Number of monthly instalments requested.
    pub tenor_months: u32,
    /// Fixed or floating rate.
    pub rate_type: RateType,
    /// Individual, MSE or other.
    pub borrower_type: BorrowerType,
    /// Business or non-business purpose.
    pub purpose: LoanPurpose,
    /// Whether the loan is a microfinance loan.
    #[serde(default)]
    pub microfinance: bool,
    /// Date of the application.
    pub applied_on: BusinessDate,
    /// Requested due date of the first instalment.
    pub first_due_date: BusinessDate,
    /// The applicant's Permanent Account Number as given. Its format is
    /// checked by the fraud rule `pan_format`, not here, so that a
    /// malformed PAN raises a fraud alert instead of vanishing as invalid.
    pub pan: String,
    /// The applicant's name as given.
    pub applicant_name: String,
    /// The applicant's date of birth.
    pub date_of_birth: BusinessDate,
    /// The applicant's mobile number: digits with an optional leading `+`.
    pub phone: String,
    /// The id of the device the application came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Monthly income the applicant declared.
    pub declared_monthly_income: Paise,
    /// The applicant's declared accounts, history and assets, which the risk
    /// scorecard reads. Any part may be left out.
    #[serde(default, skip_serializing_if = "CreditProfile::is_empty")]
    pub credit_profile: CreditProfile,
}

/// An applicant's declared credit profile: the categorical inputs of the
/// risk scorecard. Each value is one of the category labels the scorecard
/// was trained on (`docs/risk-model.md` lists them); a missing or unknown
/// label scores as average.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditProfile {
    /// Balance band of the applicant's current account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checking_account: Option<String>,
    /// Repayment record on earlier credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_history: Option<String>,
    /// Savings band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savings: Option<String>,
    /// Time in present employment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employment_since: Option<String>,
    /// Most valuable property held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// Housing: own, rent or for free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub housing: Option<String>,
    /// Other instalment plans: bank, stores or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_installment_plans: Option<String>,
}

impl CreditProfile {
    /// Returns each declared field as (scorecard feature name, label).
    pub fn fields(&self) -> [(&'static str, Option<&str>); 7] {
        [
            ("checking_account", self.checking_account.as_deref()),
            ("credit_history", self.credit_history.as_deref()),
            ("savings", self.savings.as_deref()),
            ("employment_since", self.employment_since.as_deref()),
            ("property", self.property.as_deref()),
            ("housing", self.housing.as_deref()),
            (
                "other_installment_plans",
                self.other_installment_plans.as_deref(),
            ),
        ]
    }

    /// Checks whether no field is given.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, value)| value.is_none())
    }
}

impl ApplicationReceived {
    /// Checks the rules the types alone do not carry.
    pub fn validate(&self) -> Result<(), String> {
        if !self.amount.is_positive() {
            return Err(format!(
                "invalid amount {:?}: it must be greater than zero",
                self.amount.to_string()
            ));
        }
        if self.tenor_months == 0 || self.tenor_months > MAX_TENOR_MONTHS {
            return Err(format!(
                "invalid tenor_months {}: it must be between 1 and {MAX_TENOR_MONTHS}",
                self.tenor_months
            ));
        }
        if self.first_due_date <= self.applied_on {
            return Err(format!(
                "invalid first_due_date {}: it must be after applied_on {}",
                self.first_due_date, self.applied_on
            ));
        }
        if self.product.is_empty() || self.product.len() > 64 {
            return Err(format!(
                "invalid product {:?}: use 1 to 64 characters",
                self.product
            ));
        }
        self.validate_applicant()
    }

    fn validate_applicant(&self) -> Result<(), String> {
        let pan = self.pan.trim();
        if pan.is_empty() || pan.len() > 32 {
            return Err(format!(
                "invalid pan {:?}: give the applicant's 10-character PAN, such as \"ABCPE1234F\"",
                self.pan
            ));
        }
        let name = self.applicant_name.trim();
        if !name.chars().any(char::is_alphabetic) || name.chars().count() > 200 {
            return Err(format!(
                "invalid applicant_name {:?}: give the applicant's name in 1 to 200 characters",
                self.applicant_name
            ));
        }
        if self.date_of_birth >= self.applied_on {
            return Err(format!(
                "invalid date_of_birth {}: it must be before applied_on {}",
                self.date_of_birth, self.applied_on
            ));
        }
        let digits = self.phone.strip_prefix('+').unwrap_or(&self.phone);
        if !(10..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid phone {:?}: use 10 to 15 digits with an optional leading +, such as \"+919876543210\"",
                self.phone
            ));
        }
        if let Some(device) = &self.device_id
            && (device.trim().is_empty() || device.len() > 128)
        {
            return Err(format!(
                "invalid device_id {device:?}: use 1 to 128 characters or leave the field out"
            ));
        }
        for (name, value) in self.credit_profile.fields() {
            if let Some(value) = value
                && (value.trim().is_empty() || value.len() > 128)
            {
                return Err(format!(
                    "invalid credit_profile.{name} {value:?}: use 1 to 128 characters or leave the field out"
                ));
            }
        }
        if !self.declared_monthly_income.is_positive() {
            return Err(format!(
                "invalid declared_monthly_income {:?}: it must be greater than zero",
                self.declared_monthly_income.to_string()
            ));
        }
        Ok(())
    }
}

/// `fraud.alert`: fraud rules fired on an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudAlert {
    /// The application.
    pub application_id: ApplicationId,
    /// The applicant.
    pub borrower_id: BorrowerId,
    /// The rules that fired, each with its threshold and observed value, in
    /// evaluation order.
    pub rules: Vec<FiredRule>,
    /// The application date the rules were evaluated at.
    pub assessed_on: BusinessDate,
}

/// `fraud.cleared`: no fraud rule fired on an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudCleared {
    /// The application.
    pub application_id: ApplicationId,
    /// The applicant.
    pub borrower_id: BorrowerId,
    /// The ids of the rules that ran.
    pub rules_checked: Vec<String>,
    /// The application date the rules were evaluated at.
    pub assessed_on: BusinessDate,
}

/// `consent.granted`: a data principal gave consent (DPDP Act 2023, s. 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentGranted {
    /// The artefact's id.
    pub consent_id: ConsentId,
    /// The data principal.
    pub principal_id: BorrowerId,
    /// Purposes consented to, such as `credit_assessment`.
    pub purposes: Vec<String>,
    /// Personal data items covered, such as `pan`.
    pub data_items: Vec<String>,
    /// Version of the notice shown.
    pub notice_version: String,
    /// Language of the notice, such as `en` or `hi`.
    pub notice_language: String,
    /// Date consent was given.
    pub given_on: BusinessDate,
    /// Last date on which the consent is in force.
    pub expires_on: BusinessDate,
}

impl ConsentGranted {
    /// Returns the artefact this grant records.
    pub fn artefact(&self) -> ConsentArtefact {
        ConsentArtefact {
            consent_id: self.consent_id.to_string(),
            principal_id: self.principal_id.to_string(),
            purposes: self.purposes.clone(),
            data_items: self.data_items.clone(),
            notice_version: self.notice_version.clone(),
            notice_language: self.notice_language.clone(),
            given_on: self.given_on,
            expires_on: self.expires_on,
            withdrawn_on: None,
        }
    }
}

/// `consent.withdrawn`: a data principal withdrew a consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentWithdrawn {
    /// The artefact withdrawn.
    pub consent_id: ConsentId,
    /// The data principal.
    pub principal_id: BorrowerId,
    /// Date of withdrawal. The consent is no longer valid from this date.
    pub withdrawn_on: BusinessDate,
}

/// `consent.expired`: a consent passed its last date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentExpired {
    /// The artefact.
    pub consent_id: ConsentId,
    /// The data principal.
    pub principal_id: BorrowerId,
    /// The purposes that no longer have consent from this artefact.
    pub purposes: Vec<String>,
    /// Its last valid date.
    pub expires_on: BusinessDate,
}

/// `risk.scored`: the scorecard graded an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskScored {
    /// The application.
    pub application_id: ApplicationId,
    /// Probability of default, a decimal string from "0" to "1".
    pub pd: String,
    /// The risk grade, which keys the pricing grid.
    pub grade: RiskGrade,
    /// Version of the scorecard that scored it.
    pub model_version: String,
    /// Reason codes, most important first.
    #[serde(default)]
    pub reason_codes: Vec<String>,
}

impl RiskScored {
    /// Checks the rules the types alone do not carry.
    pub fn validate(&self) -> Result<(), String> {
        let (whole, fraction) = self.pd.split_once('.').unwrap_or((&self.pd, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        let in_range = (whole == "0" || (whole == "1" && fraction.bytes().all(|b| b == b'0')))
            && digits(fraction)
            && fraction.len() <= 6
            && !(self.pd.contains('.') && fraction.is_empty());
        if !in_range {
            return Err(format!(
                "invalid pd {:?}: expected a decimal string from \"0\" to \"1\" with at most six decimals, such as \"0.0423\"",
                self.pd
            ));
        }
        if self.model_version.is_empty() {
            return Err("missing model_version: name the scorecard version that scored".into());
        }
        Ok(())
    }
}

/// `pricing.quoted`: an application was priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingQuoted {
    /// The application.
    pub application_id: ApplicationId,
    /// The applicant.
    pub borrower_id: BorrowerId,
    /// Product code.
    pub product: String,
    /// The price: rate, EMI, fees, APR and contingent charges.
    pub quote: Quote,
}

/// The kind of a charge assessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeKind {
    /// A penal charge on an overdue instalment.
    Penal,
}

/// `fee.assess`: a charge is to be levied on a loan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeAssess {
    /// The loan.
    pub loan_id: LoanId,
    /// The kind of charge.
    pub kind: ChargeKind,
    /// The instalment charged.
    pub instalment: u32,
    /// The instalment's due date.
    pub due_date: BusinessDate,
    /// The amount the charge was computed on: the instalment's unpaid
    /// interest and principal, never earlier charges.
    pub basis: Paise,
    /// The charge.
    pub amount: Paise,
    /// The business date of the assessment.
    pub assessed_on: BusinessDate,
}

/// Checks a KFS proposal number: the form `KFS-<application id>-<YYYYMMDD>`
/// that the kfs service issues, or any other id of 1 to 128 characters from
/// the id alphabet.
fn check_proposal_number(proposal_number: &str) -> Result<(), String> {
    ApplicationId::parse(proposal_number)
        .map(|_| ())
        .map_err(|_| {
            format!(
                "invalid proposal_number {proposal_number:?}: use the proposal number of the kfs.issued, such as \"KFS-APP0001-20240607\""
            )
        })
}

/// `kfs.accepted`: the borrower accepted a Key Fact Statement. Sanction
/// requires the acceptance to fall within the KFS's validity (RBI KFS
/// circular RBI/2024-25/18: at least 3 working days, 1 when the tenor is
/// under 7 days).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KfsAccepted {
    /// The application.
    pub application_id: ApplicationId,
    /// The proposal number of the KFS accepted.
    pub proposal_number: String,
    /// The date the borrower accepted it.
    pub accepted_on: BusinessDate,
}

impl KfsAccepted {
    /// Checks the rules the types alone do not carry.
    pub fn validate(&self) -> Result<(), String> {
        check_proposal_number(&self.proposal_number)
    }
}

/// `quote.withdrawn`: the origination saga withdrew an application's quote
/// while rolling back; the application is priced no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteWithdrawn {
    /// The application.
    pub application_id: ApplicationId,
    /// The step that failed and its error code, such as `acceptance: kfs_expired`.
    pub reason: String,
}

/// `kfs.voided`: the origination saga voided a KFS while rolling back; it
/// can no longer be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KfsVoided {
    /// The application.
    pub application_id: ApplicationId,
    /// The proposal number of the KFS voided.
    pub proposal_number: String,
    /// The step that failed and its error code.
    pub reason: String,
}

impl KfsVoided {
    /// Checks the rules the types alone do not carry.
    pub fn validate(&self) -> Result<(), String> {
        check_proposal_number(&self.proposal_number)
    }
}

/// `loan.sanctioned`: the mechanism service sanctioned a loan on a KFS the
/// borrower accepted within its validity. The terms are the accepted
/// quote's; the loan takes the application's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoanSanctioned {
    /// The application.
    pub application_id: ApplicationId,
    /// The loan: the same id as the application.
    pub loan_id: LoanId,
    /// The borrower.
    pub borrower_id: BorrowerId,
    /// Product code, from the application.
    pub product: String,
    /// The proposal number of the KFS accepted.
    pub proposal_number: String,
    /// The loan amount, on which the schedule runs.
    pub principal: Paise,
    /// Nominal rate, percent per year.
    pub annual_rate: AnnualRate,
    /// APR as the KFS shows it, to two decimals.
    pub apr: AnnualRate,
    /// Number of monthly instalments.
    pub tenor_months: u32,
    /// Due date of the first instalment.
    pub first_due_date: BusinessDate,
    /// The amount paid out: the principal less the upfront fees.
    pub net_disbursed: Paise,
    /// Cooling-off period in days after disbursal, from the KFS.
    pub cooling_off_days: u32,
    /// The business date of the sanction.
    pub sanctioned_on: BusinessDate,
}

impl LoanSanctioned {
    /// Checks the rules the types alone do not carry.
    pub fn validate(&self) -> Result<(), String> {
        check_proposal_number(&self.proposal_number)?;
        if !self.principal.is_positive() {
            return Err(format!(
                "invalid principal {:?}: it must be greater than zero",
                self.principal.to_string()
            ));
        }
        if self.tenor_months == 0 || self.tenor_months > MAX_TENOR_MONTHS {
            return Err(format!(
                "invalid tenor_months {}: it must be between 1 and {MAX_TENOR_MONTHS}",
                self.tenor_months
            ));
        }
        if self.first_due_date <= self.sanctioned_on {
            return Err(format!(
                "invalid first_due_date {}: it must be after sanctioned_on {}",
                self.first_due_date, self.sanctioned_on
            ));
        }
        Ok(())
    }
}

/// `sanction.cancelled`: the origination saga cancelled a sanction while
/// rolling back, because disbursal failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanctionCancelled {
    /// The application.
    pub application_id: ApplicationId,
    /// The loan sanctioned.
    pub loan_id: LoanId,
    /// The step that failed and its error code.
    pub reason: String,
}

/// `loan.cooling_off_exit.requested`: the borrower asked to leave a loan in
/// its cooling-off period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoolingOffExitRequested {
    /// The loan.
    pub loan_id: LoanId,
    /// The date on which the borrower repays and leaves.
    pub exit_on: BusinessDate,
}

/// `loan.cooling_off_exit.computed`: what the borrower pays to leave a loan
/// in its cooling-off period: the principal and the proportionate APR, with
/// no penalty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoolingOffExitComputed {
    /// The loan.
    pub loan_id: LoanId,
    /// The borrower.
    pub borrower_id: BorrowerId,
    /// The exit date.
    pub exit_on: BusinessDate,
    /// The disbursal date.
    pub disbursed_on: BusinessDate,
    /// The last day of the cooling-off period.
    pub last_exit_day: BusinessDate,
    /// Days from disbursal to exit.
    pub days_held: u32,
    /// The principal disbursed.
    pub principal: Paise,
    /// The APR of the KFS the borrower accepted.
    pub apr: AnnualRate,
    /// The proportionate APR: principal × APR × days held / 365.
    pub interest: Paise,
    /// Principal plus interest, the amount to repay.
    pub total: Paise,
}

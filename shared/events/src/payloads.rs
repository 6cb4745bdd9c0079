//! Typed payloads of the event catalogue.

use serde::{Deserialize, Serialize};
use underwrite_domain::{AnnualRate, AssetClass, BusinessDate, Paise};

use underwrite_domain::kfs::Kfs;

use crate::ids::{BorrowerId, EventId, LoanId, PaymentId};
use crate::origination::{
    ApplicationReceived, ConsentExpired, ConsentGranted, ConsentWithdrawn, FeeAssess, FraudAlert,
    FraudCleared, KfsAccepted, KfsVoided, PricingQuoted, QuoteWithdrawn, RiskScored,
};
use crate::origination::{
    CoolingOffExitComputed, CoolingOffExitRequested, LoanSanctioned, SanctionCancelled,
};

/// The event types of the catalogue, with their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `loan.disbursed`
    LoanDisbursed,
    /// `repayment.received`
    RepaymentReceived,
    /// `repayment.reversed`
    RepaymentReversed,
    /// `day.closed`
    DayClosed,
    /// `sma.classified`
    SmaClassified,
    /// `npa.bucket.changed`
    NpaBucketChanged,
    /// `npa.dlg.triggered`
    NpaDlgTriggered,
    /// `application.received`
    ApplicationReceived,
    /// `consent.granted`
    ConsentGranted,
    /// `consent.withdrawn`
    ConsentWithdrawn,
    /// `consent.expired`
    ConsentExpired,
    /// `risk.scored`
    RiskScored,
    /// `pricing.quoted`
    PricingQuoted,
    /// `kfs.issued`
    KfsIssued,
    /// `fee.assess`
    FeeAssess,
    /// `kfs.accepted`
    KfsAccepted,
    /// `quote.withdrawn`
    QuoteWithdrawn,
    /// `kfs.voided`
    KfsVoided,
    /// `fraud.alert`
    FraudAlert,
    /// `fraud.cleared`
    FraudCleared,
    /// `loan.sanctioned`
    LoanSanctioned,
    /// `sanction.cancelled`
    SanctionCancelled,
    /// `loan.cooling_off_exit.requested`
    CoolingOffExitRequested,
    /// `loan.cooling_off_exit.computed`
    CoolingOffExitComputed,
}

impl EventType {
    /// Every known type.
    pub const ALL: [EventType; 24] = [
        EventType::LoanDisbursed,
        EventType::RepaymentReceived,
        EventType::RepaymentReversed,
        EventType::DayClosed,
        EventType::SmaClassified,
        EventType::NpaBucketChanged,
        EventType::NpaDlgTriggered,
        EventType::ApplicationReceived,
        EventType::ConsentGranted,
        EventType::ConsentWithdrawn,
        EventType::ConsentExpired,
        EventType::RiskScored,
        EventType::PricingQuoted,
        EventType::KfsIssued,
        EventType::FeeAssess,
        EventType::KfsAccepted,
        EventType::QuoteWithdrawn,
        EventType::KfsVoided,
        EventType::FraudAlert,
        EventType::FraudCleared,
        EventType::LoanSanctioned,
        EventType::SanctionCancelled,
        EventType::CoolingOffExitRequested,
        EventType::CoolingOffExitComputed,
    ];

    /// Types a lender's systems send in (`underwrite run --input`).
    /// `risk.scored` is among them so that a lender's own scorecard can
    /// feed pricing, and `kfs.accepted` so that the lender's front end can
    /// report the borrower's acceptance.
    pub const INPUT: [EventType; 10] = [
        EventType::LoanDisbursed,
        EventType::RepaymentReceived,
        EventType::RepaymentReversed,
        EventType::DayClosed,
        EventType::ApplicationReceived,
        EventType::ConsentGranted,
        EventType::ConsentWithdrawn,
        EventType::RiskScored,
        EventType::KfsAccepted,
        EventType::CoolingOffExitRequested,
    ];

    /// Returns the wire name, such as `loan.disbursed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::LoanDisbursed => "loan.disbursed",
            EventType::RepaymentReceived => "repayment.received",
            EventType::RepaymentReversed => "repayment.reversed",
            EventType::DayClosed => "day.closed",
            EventType::SmaClassified => "sma.classified",
            EventType::NpaBucketChanged => "npa.bucket.changed",
            EventType::NpaDlgTriggered => "npa.dlg.triggered",
            EventType::ApplicationReceived => "application.received",
            EventType::ConsentGranted => "consent.granted",
            EventType::ConsentWithdrawn => "consent.withdrawn",
            EventType::ConsentExpired => "consent.expired",
            EventType::RiskScored => "risk.scored",
            EventType::PricingQuoted => "pricing.quoted",
            EventType::KfsIssued => "kfs.issued",
            EventType::FeeAssess => "fee.assess",
            EventType::KfsAccepted => "kfs.accepted",
            EventType::QuoteWithdrawn => "quote.withdrawn",
            EventType::KfsVoided => "kfs.voided",
            EventType::FraudAlert => "fraud.alert",
            EventType::FraudCleared => "fraud.cleared",
            EventType::LoanSanctioned => "loan.sanctioned",
            EventType::SanctionCancelled => "sanction.cancelled",
            EventType::CoolingOffExitRequested => "loan.cooling_off_exit.requested",
            EventType::CoolingOffExitComputed => "loan.cooling_off_exit.computed",
        }
    }

    /// Looks up a wire name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Lists the wire names of every known type, comma-separated, for messages.
    pub fn known_names() -> String {
        EventType::ALL.map(|t| t.as_str()).join(", ")
    }
}

/// `loan.disbursed`: a loan was paid out and its schedule starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoanDisbursed {
    /// The loan.
    pub loan_id: LoanId,
    /// The borrower.
    pub borrower_id: BorrowerId,
    /// Product code; product settings (such as the due-day rule) are keyed by it.
    pub product: String,
    /// Amount disbursed.
    pub principal: Paise,
    /// Nominal rate, percent per year.
    pub annual_rate: AnnualRate,
    /// Number of monthly instalments.
    pub tenor_months: u32,
    /// Disbursal date.
    pub disbursed_on: BusinessDate,
    /// Due date of the first instalment.
    pub first_due_date: BusinessDate,
    /// Value of the security held, zero for an unsecured loan.
    #[serde(default)]
    pub secured_value: Paise,
}

/// `repayment.received`: money was received against a loan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepaymentReceived {
    /// The loan.
    pub loan_id: LoanId,
    /// The payment, unique within the loan.
    pub payment_id: PaymentId,
    /// Amount received, greater than zero.
    pub amount: Paise,
    /// Date from which the money counts; may precede the business date (a
    /// backdated payment).
    pub value_date: BusinessDate,
}

/// `repayment.reversed`: an earlier repayment did not clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepaymentReversed {
    /// The loan.
    pub loan_id: LoanId,
    /// The payment reversed.
    pub payment_id: PaymentId,
    /// Date of the reversal.
    pub reversed_on: BusinessDate,
}

/// `day.closed`: the lender closed a business date; day-end runs for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayClosed {
    /// The business date closed.
    pub business_date: BusinessDate,
}

/// Whether a classification event reports news or revises history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revision {
    /// A change found on the date it happened.
    Original,
    /// A change on a past date, found when a backdated repayment or a
    /// reversal rewrote the loan's history.
    Correction,
    /// Withdraws the event named in `corrects`: after a rewrite of history
    /// that change never happened.
    Retraction,
}

/// `sma.classified` and `npa.bucket.changed`: a loan's asset class changed.
/// `npa.bucket.changed` is used when either class is an NPA class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassChanged {
    /// The loan.
    pub loan_id: LoanId,
    /// The borrower.
    pub borrower_id: BorrowerId,
    /// Date from which the new class holds.
    pub as_of: BusinessDate,
    /// Days past due on that date.
    pub dpd: u32,
    /// Class on the previous day.
    pub previous_class: AssetClass,
    /// Class from `as_of`.
    pub asset_class: AssetClass,
    /// Start of the borrower's NPA spell, when the class is an NPA class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npa_date: Option<BusinessDate>,
    /// Amount overdue on that date.
    pub overdue_amount: Paise,
    /// News, correction or retraction.
    pub revision: Revision,
    /// For a retraction, the event withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects: Option<EventId>,
}

/// `npa.dlg.triggered`: the loan reached 120 DPD, the latest point at which
/// a default loss guarantee may be invoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlgTriggered {
    /// The loan.
    pub loan_id: LoanId,
    /// The borrower.
    pub borrower_id: BorrowerId,
    /// The date the loan reached 120 DPD.
    pub as_of: BusinessDate,
    /// Days past due on that date.
    pub dpd: u32,
    /// The oldest unpaid due date.
    pub first_overdue_date: BusinessDate,
    /// Amount overdue on that date.
    pub overdue_amount: Paise,
    /// News, correction or retraction.
    pub revision: Revision,
    /// For a retraction, the event withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects: Option<EventId>,
}

/// A parsed payload of a known type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    /// `loan.disbursed`
    LoanDisbursed(LoanDisbursed),
    /// `repayment.received`
    RepaymentReceived(RepaymentReceived),
    /// `repayment.reversed`
    RepaymentReversed(RepaymentReversed),
    /// `day.closed`
    DayClosed(DayClosed),
    /// `sma.classified`
    SmaClassified(ClassChanged),
    /// `npa.bucket.changed`
    NpaBucketChanged(ClassChanged),
    /// `npa.dlg.triggered`
    NpaDlgTriggered(DlgTriggered),
    /// `application.received`
    ApplicationReceived(ApplicationReceived),
    /// `consent.granted`
    ConsentGranted(ConsentGranted),
    /// `consent.withdrawn`
    ConsentWithdrawn(ConsentWithdrawn),
    /// `consent.expired`
    ConsentExpired(ConsentExpired),
    /// `risk.scored`
    RiskScored(RiskScored),
    /// `pricing.quoted`
    PricingQuoted(PricingQuoted),
    /// `kfs.issued`
    KfsIssued(Box<Kfs>),
    /// `fee.assess`
    FeeAssess(FeeAssess),
    /// `kfs.accepted`
    KfsAccepted(KfsAccepted),
    /// `quote.withdrawn`
    QuoteWithdrawn(QuoteWithdrawn),
    /// `kfs.voided`
    KfsVoided(KfsVoided),
    /// `fraud.alert`
    FraudAlert(FraudAlert),
    /// `fraud.cleared`
    FraudCleared(FraudCleared),
    /// `loan.sanctioned`
    LoanSanctioned(LoanSanctioned),
    /// `sanction.cancelled`
    SanctionCancelled(SanctionCancelled),
    /// `loan.cooling_off_exit.requested`
    CoolingOffExitRequested(CoolingOffExitRequested),
    /// `loan.cooling_off_exit.computed`
    CoolingOffExitComputed(CoolingOffExitComputed),
}

impl EventPayload {
    /// Returns the payload's event type.
    pub fn event_type(&self) -> EventType {
        match self {
            EventPayload::LoanDisbursed(_) => EventType::LoanDisbursed,
            EventPayload::RepaymentReceived(_) => EventType::RepaymentReceived,
            EventPayload::RepaymentReversed(_) => EventType::RepaymentReversed,
            EventPayload::DayClosed(_) => EventType::DayClosed,
            EventPayload::SmaClassified(_) => EventType::SmaClassified,
            EventPayload::NpaBucketChanged(_) => EventType::NpaBucketChanged,
            EventPayload::NpaDlgTriggered(_) => EventType::NpaDlgTriggered,
            EventPayload::ApplicationReceived(_) => EventType::ApplicationReceived,
            EventPayload::ConsentGranted(_) => EventType::ConsentGranted,
            EventPayload::ConsentWithdrawn(_) => EventType::ConsentWithdrawn,
            EventPayload::ConsentExpired(_) => EventType::ConsentExpired,
            EventPayload::RiskScored(_) => EventType::RiskScored,
            EventPayload::PricingQuoted(_) => EventType::PricingQuoted,
            EventPayload::KfsIssued(_) => EventType::KfsIssued,
            EventPayload::FeeAssess(_) => EventType::FeeAssess,
            EventPayload::KfsAccepted(_) => EventType::KfsAccepted,
            EventPayload::QuoteWithdrawn(_) => EventType::QuoteWithdrawn,
            EventPayload::KfsVoided(_) => EventType::KfsVoided,
            EventPayload::FraudAlert(_) => EventType::FraudAlert,
            EventPayload::FraudCleared(_) => EventType::FraudCleared,
            EventPayload::LoanSanctioned(_) => EventType::LoanSanctioned,
            EventPayload::SanctionCancelled(_) => EventType::SanctionCancelled,
            EventPayload::CoolingOffExitRequested(_) => EventType::CoolingOffExitRequested,
            EventPayload::CoolingOffExitComputed(_) => EventType::CoolingOffExitComputed,
        }
    }

    /// Serialises the payload to JSON.
    pub fn to_value(&self) -> serde_json::Value {
        let value = match self {
            EventPayload::LoanDisbursed(p) => serde_json::to_value(p),
            EventPayload::RepaymentReceived(p) => serde_json::to_value(p),
            EventPayload::RepaymentReversed(p) => serde_json::to_value(p),
            EventPayload::DayClosed(p) => serde_json::to_value(p),
            EventPayload::SmaClassified(p) | EventPayload::NpaBucketChanged(p) => {
                serde_json::to_value(p)
            }
            EventPayload::NpaDlgTriggered(p) => serde_json::to_value(p),
            EventPayload::ApplicationReceived(p) => serde_json::to_value(p),
            EventPayload::ConsentGranted(p) => serde_json::to_value(p),
            EventPayload::ConsentWithdrawn(p) => serde_json::to_value(p),
            EventPayload::ConsentExpired(p) => serde_json::to_value(p),
            EventPayload::RiskScored(p) => serde_json::to_value(p),
            EventPayload::PricingQuoted(p) => serde_json::to_value(p),
            EventPayload::KfsIssued(p) => serde_json::to_value(p),
            EventPayload::FeeAssess(p) => serde_json::to_value(p),
            EventPayload::KfsAccepted(p) => serde_json::to_value(p),
            EventPayload::QuoteWithdrawn(p) => serde_json::to_value(p),
            EventPayload::KfsVoided(p) => serde_json::to_value(p),
            EventPayload::FraudAlert(p) => serde_json::to_value(p),
            EventPayload::FraudCleared(p) => serde_json::to_value(p),
            EventPayload::LoanSanctioned(p) => serde_json::to_value(p),
            EventPayload::SanctionCancelled(p) => serde_json::to_value(p),
            EventPayload::CoolingOffExitRequested(p) => serde_json::to_value(p),
            EventPayload::CoolingOffExitComputed(p) => serde_json::to_value(p),
        };
        value.expect("payload types serialise to JSON")
    }

    /// Parses `payload` as the body of `event_type`, then checks the rules
    /// that the types alone do not carry.
    pub fn parse(event_type: EventType, payload: &serde_json::Value) -> Result<Self, String> {
        fn typed<T: serde::de::DeserializeOwned>(payload: &serde_json::Value) -> Result<T, String> {
            T::deserialize(payload).map_err(|error| error.to_string())
        }
        let parsed = match event_type {
            EventType::LoanDisbursed => EventPayload::LoanDisbursed(typed(payload)?),
            EventType::RepaymentReceived => EventPayload::RepaymentReceived(typed(payload)?),
            EventType::RepaymentReversed => EventPayload::RepaymentReversed(typed(payload)?),
            EventType::DayClosed => EventPayload::DayClosed(typed(payload)?),
            EventType::SmaClassified => EventPayload::SmaClassified(typed(payload)?),
            EventType::NpaBucketChanged => EventPayload::NpaBucketChanged(typed(payload)?),
            EventType::NpaDlgTriggered => EventPayload::NpaDlgTriggered(typed(payload)?),
            EventType::ApplicationReceived => EventPayload::ApplicationReceived(typed(payload)?),
            EventType::ConsentGranted => EventPayload::ConsentGranted(typed(payload)?),
            EventType::ConsentWithdrawn => EventPayload::ConsentWithdrawn(typed(payload)?),
            EventType::ConsentExpired => EventPayload::ConsentExpired(typed(payload)?),
            EventType::RiskScored => EventPayload::RiskScored(typed(payload)?),
            EventType::PricingQuoted => EventPayload::PricingQuoted(typed(payload)?),
            EventType::KfsIssued => EventPayload::KfsIssued(Box::new(typed(payload)?)),
            EventType::FeeAssess => EventPayload::FeeAssess(typed(payload)?),
            EventType::KfsAccepted => EventPayload::KfsAccepted(typed(payload)?),
            EventType::QuoteWithdrawn => EventPayload::QuoteWithdrawn(typed(payload)?),
            EventType::KfsVoided => EventPayload::KfsVoided(typed(payload)?),
            EventType::FraudAlert => EventPayload::FraudAlert(typed(payload)?),
            EventType::FraudCleared => EventPayload::FraudCleared(typed(payload)?),
            EventType::LoanSanctioned => EventPayload::LoanSanctioned(typed(payload)?),
            EventType::SanctionCancelled => EventPayload::SanctionCancelled(typed(payload)?),
            EventType::CoolingOffExitRequested => {
                EventPayload::CoolingOffExitRequested(typed(payload)?)
            }
            EventType::CoolingOffExitComputed => {
                EventPayload::CoolingOffExitComputed(typed(payload)?)
            }
        };
        parsed.validate()?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            EventPayload::LoanDisbursed(p) => {
                if !p.principal.is_positive() {
                    return Err(format!(
                        "invalid principal {:?}: it must be greater than zero",
                        p.principal.to_string()
                    ));
                }
                if p.tenor_months == 0
                    || p.tenor_months > underwrite_domain::schedule::MAX_TENOR_MONTHS
                {
                    return Err(format!(
                        "invalid tenor_months {}: it must be between 1 and {}",
                        p.tenor_months,
                        underwrite_domain::schedule::MAX_TENOR_MONTHS
                    ));
                }
                if p.first_due_date <= p.disbursed_on {
                    return Err(format!(
                        "invalid first_due_date {}: it must be after disbursed_on {}",
                        p.first_due_date, p.disbursed_on
                    ));
                }
                if p.secured_value.is_negative() {
                    return Err(format!(
                        "invalid secured_value {:?}: it must not be negative",
                        p.secured_value.to_string()
                    ));
                }
                if p.product.is_empty() || p.product.len() > 64 {
                    return Err(format!(
                        "invalid product {:?}: use 1 to 64 characters",
                        p.product
                    ));
                }
                Ok(())
            }
            EventPayload::ApplicationReceived(p) => p.validate(),
            EventPayload::ConsentGranted(p) => p.artefact().validate(),
            EventPayload::RiskScored(p) => p.validate(),
            EventPayload::KfsAccepted(p) => p.validate(),
            EventPayload::KfsVoided(p) => p.validate(),
            EventPayload::LoanSanctioned(p) => p.validate(),
            EventPayload::RepaymentReceived(p) if !p.amount.is_positive() => Err(format!(
                "invalid amount {:?}: a repayment must be greater than zero",
                p.amount.to_string()
            )),
            _ => Ok(()),
        }
    }
}

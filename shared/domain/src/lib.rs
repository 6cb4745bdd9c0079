//! Pure rules of loan origination, loan servicing and RBI asset
//! classification.
//!
//! Nothing in this crate performs I/O or awaits: every function is a
//! deterministic function of its arguments, so that services, batch jobs and
//! tests share one implementation of each rule.

#![warn(missing_docs)]

pub mod apr;
pub mod charges;
pub mod classification;
pub mod consent;
pub mod cooling_off;
pub mod date;
pub mod fraud;
pub mod kfs;
pub mod ledger;
pub mod money;
pub mod pricing;
pub mod product;
pub mod provisioning;
pub mod rate;
pub mod schedule;
pub mod scorecard;

pub use classification::{
    AssetClass, BorrowerClassification, ClassificationPolicy, FacilityStatus,
};
pub use date::BusinessDate;
pub use ledger::{LoanLedger, Payment, Position};
pub use money::Paise;
pub use product::{ProductCatalog, ProductSettings};
pub use provisioning::{Provision, ProvisioningPolicy, ProvisioningRegime};
pub use rate::AnnualRate;
pub use schedule::{DueDayRule, Instalment, Schedule};

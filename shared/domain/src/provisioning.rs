//! Provisioning on standard assets and NPAs, for banks and for NBFCs.
//!
//! Rates, in basis points of the outstanding (RBI IRACP master circular for
//! banks; NBFC prudential norms for NBFCs):
//!
//! | class | bank | NBFC |
//! |---|---|---|
//! | standard and SMA | 0.40% | 0.40% (middle layer; base layer 0.25%) |
//! | sub-standard | 15%, or 25% for an unsecured exposure | 10% |
//! | doubtful, secured part D1 / D2 / D3 | 25% / 40% / 100% | 20% / 30% / 50% |
//! | doubtful, unsecured part; loss | 100% | 100% |
//!
//! An unsecured exposure is one whose security was worth at most 10% of the
//! outstanding from the start. Amounts are rounded half-up to the paisa.

use serde::{Deserialize, Serialize};

use crate::classification::AssetClass;
use crate::money::Paise;

/// Basis points in 100%.
pub const FULL: i64 = 10_000;

/// The provisioning table that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningRegime {
    /// Scheduled commercial banks.
    Bank,
    /// Non-banking financial companies.
    #[default]
    Nbfc,
}

/// Provisioning settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisioningPolicy {
    /// Bank or NBFC table.
    pub regime: ProvisioningRegime,
    /// Standard-asset rate in basis points: 40 (0.40%) by default; 25 for a
    /// base-layer NBFC, and the bank's special categories (farm and SME 25,
    /// CRE 100) are set here per book.
    pub standard_bp: i64,
}

impl Default for ProvisioningPolicy {
    fn default() -> Self {
        ProvisioningPolicy {
            regime: ProvisioningRegime::Nbfc,
            standard_bp: 40,
        }
    }
}

/// A provision and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// Amount to provide, rounded half-up to the paisa.
    pub amount: Paise,
    /// Rate applied to the secured part (the whole outstanding below doubtful),
    /// in basis points.
    pub secured_bp: i64,
    /// Rate applied to the unsecured part, in basis points.
    pub unsecured_bp: i64,
}

impl ProvisioningPolicy {
    /// Returns the (secured part, unsecured part) rates of a class in basis points.
    pub fn rates_bp(&self, class: AssetClass, unsecured_exposure: bool) -> (i64, i64) {
        use AssetClass::*;
        use ProvisioningRegime::*;
        match (self.regime, class) {
            (_, Standard | Sma0 | Sma1 | Sma2) => (self.standard_bp, self.standard_bp),
            (Bank, Substandard) if unsecured_exposure => (2_500, 2_500),
            (Bank, Substandard) => (1_500, 1_500),
            (Nbfc, Substandard) => (1_000, 1_000),
            (Bank, Doubtful1) => (2_500, FULL),
            (Bank, Doubtful2) => (4_000, FULL),
            (Bank, Doubtful3) => (FULL, FULL),
            (Nbfc, Doubtful1) => (2_000, FULL),
            (Nbfc, Doubtful2) => (3_000, FULL),
            (Nbfc, Doubtful3) => (5_000, FULL),
            (_, Loss) => (FULL, FULL),
        }
    }

    /// Computes the provision on `outstanding` in `class`, of which `secured_value` is
    /// covered by security. Below doubtful the one rate applies to the whole
    /// outstanding; from doubtful on, the secured part and the rest get their
    /// own rates.
    pub fn provision(
        &self,
        class: AssetClass,
        outstanding: Paise,
        secured_value: Paise,
        unsecured_exposure: bool,
    ) -> Provision {
        let (secured_bp, unsecured_bp) = self.rates_bp(class, unsecured_exposure);
        let outstanding = outstanding.max(Paise::ZERO);
        let secured_part = secured_value.max(Paise::ZERO).min(outstanding);
        let unsecured_part = outstanding - secured_part;
        let units = i128::from(secured_part.as_paise()) * i128::from(secured_bp)
            + i128::from(unsecured_part.as_paise()) * i128::from(unsecured_bp);
        Provision {
            amount: Paise::new(crate::money::div_round_half_up(units, i128::from(FULL)) as i64),
            secured_bp,
            unsecured_bp,
        }
    }
}

/// Checks whether security worth `secured_value` makes a loan of `principal` an
/// unsecured exposure: security at most 10% of the amount from the start.
pub fn is_unsecured_exposure(principal: Paise, secured_value: Paise) -> bool {
    i128::from(secured_value.as_paise()) * 10 <= i128::from(principal.as_paise())
}

/// `amount / outstanding` in basis points, rounded half-up; zero when nothing
/// is outstanding.
pub fn effective_rate_bp(amount: Paise, outstanding: Paise) -> i64 {
    if !outstanding.is_positive() {
        return 0;
    }
    crate::money::div_round_half_up(
        i128::from(amount.as_paise()) * i128::from(FULL),
        i128::from(outstanding.as_paise()),
    ) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lakh(n: i64) -> Paise {
        Paise::from_rupees(n * 100_000)
    }

    fn amount(regime: ProvisioningRegime, class: AssetClass) -> Paise {
        ProvisioningPolicy {
            regime,
            standard_bp: 40,
        }
        .provision(class, lakh(10), lakh(6), false)
        .amount
    }

    #[test]
    fn worked_example_bank() {
        use AssetClass::*;
        let bank = ProvisioningRegime::Bank;
        assert_eq!(amount(bank, Substandard), Paise::from_rupees(150_000));
        assert_eq!(amount(bank, Doubtful1), Paise::from_rupees(550_000));
        assert_eq!(amount(bank, Doubtful2), Paise::from_rupees(640_000));
        assert_eq!(amount(bank, Doubtful3), Paise::from_rupees(1_000_000));
        assert_eq!(amount(bank, Loss), Paise::from_rupees(1_000_000));
    }

    #[test]
    fn worked_example_nbfc() {
        use AssetClass::*;
        let nbfc = ProvisioningRegime::Nbfc;
        assert_eq!(amount(nbfc, Substandard), Paise::from_rupees(100_000));
        assert_eq!(amount(nbfc, Doubtful1), Paise::from_rupees(520_000));
        assert_eq!(amount(nbfc, Doubtful2), Paise::from_rupees(580_000));
        assert_eq!(amount(nbfc, Doubtful3), Paise::from_rupees(700_000));
        assert_eq!(amount(nbfc, Loss), Paise::from_rupees(1_000_000));
    }

    #[test]
    fn standard_and_sma_at_standard_rate() {
        let policy = ProvisioningPolicy::default();
        for class in [
            AssetClass::Standard,
            AssetClass::Sma0,
            AssetClass::Sma1,
            AssetClass::Sma2,
        ] {
            assert_eq!(
                policy.provision(class, lakh(10), Paise::ZERO, true).amount,
                Paise::from_rupees(4_000)
            );
        }
    }

    #[test]
    fn bank_unsecured_exposure_substandard() {
        let policy = ProvisioningPolicy {
            regime: ProvisioningRegime::Bank,
            standard_bp: 40,
        };
        assert!(is_unsecured_exposure(lakh(10), lakh(1)));
        assert!(!is_unsecured_exposure(
            lakh(10),
            Paise::from_rupees(100_001)
        ));
        let provision = policy.provision(AssetClass::Substandard, lakh(10), lakh(1), true);
        assert_eq!(provision.amount, Paise::from_rupees(250_000));
    }

    #[test]
    fn security_above_outstanding_is_capped() {
        let policy = ProvisioningPolicy::default();
        let provision = policy.provision(AssetClass::Doubtful1, lakh(1), lakh(5), false);
        assert_eq!(provision.amount, Paise::from_rupees(20_000));
    }

    #[test]
    fn effective_rate_rounds_half_up() {
        assert_eq!(
            effective_rate_bp(Paise::from_rupees(550_000), lakh(10)),
            5_500
        );
        assert_eq!(effective_rate_bp(Paise::new(1), Paise::new(3)), 3_333);
        assert_eq!(effective_rate_bp(Paise::new(5), Paise::ZERO), 0);
    }
}

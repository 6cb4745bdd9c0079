//! Product settings that change how a loan is serviced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schedule::DueDayRule;

/// Servicing settings of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSettings {
    /// How due dates fall in short months.
    #[serde(default)]
    pub due_day_rule: DueDayRule,
}

/// Settings by product code, with a default for codes not listed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductCatalog {
    /// Settings for products not listed.
    #[serde(default)]
    pub default: ProductSettings,
    /// Settings by product code.
    #[serde(default)]
    pub products: BTreeMap<String, ProductSettings>,
}

impl ProductCatalog {
    /// The settings of `product`.
    pub fn settings(&self, product: &str) -> ProductSettings {
        self.products.get(product).copied().unwrap_or(self.default)
    }
}

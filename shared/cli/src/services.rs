//! The services the embedded runtime can run.

use std::sync::Arc;

use underwrite_audit::Audit;
use underwrite_consent::Consent;
use underwrite_fee::Fee;
use underwrite_fraud::Fraud;
use underwrite_kfs::KfsService;
use underwrite_mechanism::Mechanism;
use underwrite_npa::Npa;
use underwrite_pricing::Pricing;
use underwrite_risk::Risk;
use underwrite_runtime::Service;

use crate::config::Config;

/// Names of the services, in routing order.
pub const NAMES: [&str; 9] = [
    "consent",
    "fraud",
    "risk",
    "pricing",
    "kfs",
    "mechanism",
    "fee",
    "npa",
    "audit",
];

/// Every service, configured. All are registered so that every event is
/// routed to each subscriber's queue, whichever services a run starts.
pub fn all(config: &Config) -> Vec<Arc<dyn Service>> {
    vec![
        Arc::new(Consent),
        Arc::new(Fraud::new(config.fraud)),
        Arc::new(Risk::bundled()),
        Arc::new(Pricing::new(config.pricing.clone())),
        Arc::new(KfsService::new(config.kfs.clone())),
        Arc::new(Mechanism::new(config.products.clone())),
        Arc::new(Fee::new(
            config.pricing.penal,
            config.fees,
            config.products.clone(),
        )),
        Arc::new(Npa::new(config.classification, config.products.clone())),
        Arc::new(Audit),
    ]
}

//! The npa service as a Lambda function fed by its SQS queue.

use std::sync::Arc;

use serde::Deserialize;
use underwrite_domain::{ClassificationPolicy, ProductCatalog};
use underwrite_npa::Npa;

/// The keys of `underwrite.json` this service reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Settings {
    classification: ClassificationPolicy,
    products: ProductCatalog,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), underwrite_lambda::Error> {
    underwrite_lambda::serve(|| {
        let settings: Settings = underwrite_lambda::start::settings()?;
        Ok(Arc::new(Npa::new(
            settings.classification,
            settings.products,
        )))
    })
    .await
}

//! The fraud service as a Lambda function fed by its SQS queue.

use std::sync::Arc;

use serde::Deserialize;
use underwrite_domain::fraud::FraudPolicy;
use underwrite_fraud::Fraud;

/// The keys of `underwrite.json` this service reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Settings {
    fraud: FraudPolicy,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), underwrite_lambda::Error> {
    underwrite_lambda::serve(|| {
        let settings: Settings = underwrite_lambda::start::settings()?;
        Ok(Arc::new(Fraud::new(settings.fraud)))
    })
    .await
}

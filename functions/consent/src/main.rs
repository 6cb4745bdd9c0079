//! The consent service as a Lambda function fed by its SQS queue. It has
//! no settings.

use std::sync::Arc;

use underwrite_consent::Consent;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), underwrite_lambda::Error> {
    underwrite_lambda::serve(|| Ok(Arc::new(Consent))).await
}

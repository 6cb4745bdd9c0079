//! The risk service as a Lambda function fed by its SQS queue. It scores
//! with the model file compiled into the binary.

use std::sync::Arc;

use underwrite_risk::Risk;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), underwrite_lambda::Error> {
    underwrite_lambda::serve(|| Ok(Arc::new(Risk::bundled()))).await
}

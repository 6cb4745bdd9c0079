//! Step Functions: the task results a saga worker sends for the task tokens
//! of a `waitForTaskToken` step.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use tracing::info;
use underwrite_runtime::ports::{PortError, TaskAnswers};

use crate::error::{code_of, describe, unavailable};

/// Step Functions' limit on a task's output and on a failure's cause, in
/// characters (`SendTaskSuccess` and `SendTaskFailure`).
pub const MAX_TASK_OUTPUT: usize = 262_144;

/// Step Functions' limit on a failure's error code, in characters.
pub const MAX_ERROR_CODE: usize = 256;

/// Step Functions as the saga steps' [`TaskAnswers`].
#[derive(Debug, Clone)]
pub struct StepFunctionsTasks {
    client: aws_sdk_sfn::Client,
}

impl StepFunctionsTasks {
    /// Creates the task client over `client`.
    pub fn new(client: aws_sdk_sfn::Client) -> Self {
        StepFunctionsTasks { client }
    }
}

/// Classifies a failed call. A task that is already closed needs no result,
/// and a malformed token can never take one. Any other failure may pass on
/// a retry.
fn answer_result<E: ProvideErrorMetadata + std::error::Error + 'static>(
    action: &str,
    token: &str,
    result: Result<(), SdkError<E, Response>>,
) -> Result<(), PortError> {
    let Err(error) = result else {
        return Ok(());
    };
    match code_of(&error).as_deref() {
        // The execution timed out the task, or stopped, or a redelivered
        // step answered it before: the answer has nowhere to go.
        Some("TaskTimedOut" | "TaskDoesNotExist") => {
            info!(
                action,
                token_prefix = &token[..token.len().min(16)],
                reason = %describe(&error),
                "Skipped the answer to a closed saga task."
            );
            Ok(())
        }
        Some("InvalidToken" | "InvalidOutput" | "ValidationException") => {
            Err(PortError::Rejected {
                service: "sfn",
                message: format!(
                    "failed to {action}: {}; check that the message's task_token is the one Step Functions sent and the output is JSON under {MAX_TASK_OUTPUT} characters",
                    describe(&error)
                ),
            })
        }
        _ => Err(unavailable("sfn", action, error)),
    }
}

#[async_trait]
impl TaskAnswers for StepFunctionsTasks {
    async fn succeed(&self, token: &str, output: &str) -> Result<(), PortError> {
        if output.len() > MAX_TASK_OUTPUT {
            return Err(PortError::TooLarge {
                what: "the saga step's output".into(),
                size: output.len(),
                limit: MAX_TASK_OUTPUT,
                fix: "keep large documents in the store and put their keys in events".into(),
            });
        }
        let result = self
            .client
            .send_task_success()
            .task_token(token)
            .output(output)
            .send()
            .await
            .map(|_| ());
        answer_result("send the task success", token, result)
    }

    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<(), PortError> {
        let error: String = error.chars().take(MAX_ERROR_CODE).collect();
        let cause: String = cause.chars().take(MAX_TASK_OUTPUT).collect();
        let result = self
            .client
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
            .map(|_| ());
        answer_result("send the task failure", token, result)
    }
}

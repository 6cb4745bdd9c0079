//! Reading SDK errors: HTTP status, error code, and a message that keeps
//! the service's own explanation.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use underwrite_runtime::ports::PortError;

/// The HTTP status of a service error, if the request got a response.
pub fn status_of<E>(error: &SdkError<E, Response>) -> Option<u16> {
    error
        .raw_response()
        .map(|response| response.status().as_u16())
}

/// The service's error code, such as `ConditionalCheckFailedException`.
pub fn code_of<E: ProvideErrorMetadata>(error: &SdkError<E, Response>) -> Option<String> {
    match error {
        SdkError::ServiceError(service) => service.err().code().map(str::to_string),
        _ => None,
    }
}

/// The error's full text: the SDK's summary and the service's message.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    error: &SdkError<E, Response>,
) -> String {
    match error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            format!(
                "{} (HTTP {}): {}",
                inner.code().unwrap_or("unknown error"),
                service.raw().status().as_u16(),
                inner.message().unwrap_or("no message")
            )
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// A retryable port error for a failed call.
pub fn unavailable<E: ProvideErrorMetadata + std::error::Error + 'static>(
    service: &'static str,
    action: &str,
    error: SdkError<E, Response>,
) -> PortError {
    PortError::Unavailable {
        service,
        message: format!("failed to {action}: {}", describe(&error)),
    }
}

//! Queue settings and dead letters.

use serde::{Deserialize, Serialize};

/// Delivery settings of a service's queue, as for an SQS queue with a
/// redrive policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// How long a received message stays invisible before it can be received
    /// again, in milliseconds.
    pub visibility_timeout_ms: u64,
    /// Receives after which a message that keeps failing moves to the
    /// dead-letter queue.
    pub max_receive_count: u32,
    /// Messages received per batch, at most 10,000 as for Lambda's SQS event
    /// source mapping (one SQS receive call returns at most 10). The embedded
    /// runtime commits a batch in one transaction, so larger batches commit
    /// less often; a crash re-delivers the batch's unfinished records.
    pub batch_size: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            visibility_timeout_ms: 30_000,
            max_receive_count: 5,
            batch_size: 100,
        }
    }
}

/// A message received from a queue.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Position in the queue table; the receipt for delete and fail.
    pub seq: i64,
    /// The event id.
    pub message_id: String,
    /// The event JSON.
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    /// The saga step waiting for the handler's answer, when a saga sent the
    /// message as a step's command (the embedded form of a Step Functions
    /// task token).
    pub task_token: Option<String>,
}

/// A message that could not be handled, kept with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Position in the dead-letter table.
    pub seq: i64,
    /// The queue it came from, where a replay returns it.
    pub queue: String,
    /// The event id.
    pub message_id: String,
    /// The original message, untouched.
    pub body: String,
    /// `permanent` (no retry could help) or `retries_exhausted`.
    pub error_kind: String,
    /// The error's code.
    pub error_code: String,
    /// The error's message.
    pub error_message: String,
    /// Receives before it was dead-lettered.
    pub receive_count: u32,
    /// When it failed, Unix milliseconds.
    pub failed_ms: i64,
    /// The saga step waiting for it, kept so that a replay still answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
}

//! The SQS bus: routing to subscriber queues with `SendMessageBatch`, claim
//! checks through S3, dead letters with their reasons, and replay.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use tracing::{debug, warn};
use underwrite_runtime::ports::{
    ATTR_CLAIM_CHECK, ATTR_EVENT_ID, ATTR_EVENT_TYPE, Bus, DeadLetterEntry, DeadLetterReason,
    Delivery, MAX_MESSAGE_BYTES, Outbound, PortError, ReplayMethod, Replayed, Routes,
    outbound_message,
};

use crate::config::AwsConfig;
use crate::error::{code_of, describe, unavailable};
use crate::s3::S3Objects;

/// Attribute names a dead letter carries besides the original ones.
const ATTR_MESSAGE_ID: &str = "dlq_message_id";
const ATTR_ERROR_KIND: &str = "dlq_error_kind";
const ATTR_ERROR_CODE: &str = "dlq_error_code";
const ATTR_ERROR_MESSAGE: &str = "dlq_error_message";
const ATTR_RECEIVE_COUNT: &str = "dlq_receive_count";
const ATTR_FAILED_MS: &str = "dlq_failed_ms";

/// The original attributes a message keeps through the DLQ; with the six
/// above they stay within SQS's 10 attributes.
const KEPT_ATTRIBUTES: [&str; 3] = [ATTR_EVENT_ID, ATTR_EVENT_TYPE, ATTR_CLAIM_CHECK];

/// Maximum length of the error message stored on a dead letter, in bytes.
const MAX_REASON_BYTES: usize = 4096;

/// Entries per `SendMessageBatch`, and bytes per call.
const BATCH_ENTRIES: usize = 10;
const BATCH_BYTES: usize = MAX_MESSAGE_BYTES;

/// The suffix of a queue's dead-letter queue name, as in the SAM template.
pub const DLQ_SUFFIX: &str = "-dlq";

/// SQS queues with the semantics the runtime's [`Bus`] describes.
pub struct SqsBus {
    client: aws_sdk_sqs::Client,
    objects: Arc<S3Objects>,
    routes: Routes,
    configured: BTreeMap<String, String>,
    prefix: String,
    claim_check_bytes: usize,
    owner: String,
    urls: Mutex<HashMap<String, String>>,
}

fn text_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

fn attribute_bytes(attributes: &BTreeMap<String, String>) -> usize {
    attributes
        .iter()
        .map(|(k, v)| k.len() + v.len() + "String".len())
        .sum()
}

fn to_sqs_attributes(
    attributes: &BTreeMap<String, String>,
) -> HashMap<String, MessageAttributeValue> {
    attributes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), text_attribute(v)))
        .collect()
}

fn from_sqs_attributes(
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
) -> BTreeMap<String, String> {
    attributes
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
        .collect()
}

fn truncate(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl SqsBus {
    /// A bus over `client` routing by `routes`, with claim checks in
    /// `objects` written under `claims/<owner>/` (the service's own prefix,
    /// which its IAM role may write).
    pub fn new(
        client: aws_sdk_sqs::Client,
        objects: Arc<S3Objects>,
        config: &AwsConfig,
        routes: Routes,
        owner: &str,
    ) -> Self {
        SqsBus {
            client,
            objects,
            routes,
            configured: config.queues.clone(),
            prefix: config.queue_prefix.clone(),
            claim_check_bytes: config.claim_check_bytes,
            owner: owner.to_string(),
            urls: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> String {
        self.routes.queues().join(", ")
    }

    fn check_queue(&self, queue: &str) -> Result<(), PortError> {
        if self.routes.queues().contains(&queue) {
            Ok(())
        } else {
            Err(PortError::UnknownQueue {
                queue: queue.into(),
                known: self.known(),
                fix: "queues are named after the services; check the name".into(),
            })
        }
    }

    /// Returns a queue's URL (a service's queue, or `<service>-dlq`): from
    /// `aws.queues`, else looked up once by `aws.queue_prefix` + name.
    pub async fn url(&self, name: &str) -> Result<String, PortError> {
        if let Some(url) = self.configured.get(name) {
            return Ok(url.clone());
        }
        if let Some(url) = self
            .urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(url.clone());
        }
        let full = format!("{}{name}", self.prefix);
        let result = self.client.get_queue_url().queue_name(&full).send().await;
        let url = match result {
            Ok(output) => output.queue_url().unwrap_or_default().to_string(),
            Err(error)
                if code_of(&error).is_some_and(|c| {
                    c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist")
                }) =>
            {
                return Err(PortError::UnknownQueue {
                    queue: full,
                    known: self.known(),
                    fix: format!(
                        "no such SQS queue; deploy the stack, or set aws.queue_prefix (now {:?}) or aws.queues.{name} to the queue's URL",
                        self.prefix
                    ),
                });
            }
            Err(error) => return Err(unavailable("sqs", &format!("look up queue {full}"), error)),
        };
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), url.clone());
        Ok(url)
    }

    async fn arn(&self, url: &str) -> Result<String, PortError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|error| unavailable("sqs", &format!("read the ARN of {url}"), error))?;
        output
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| PortError::Unavailable {
                service: "sqs",
                message: format!("{url} has no QueueArn attribute"),
            })
    }

    async fn depth(&self, url: &str) -> Result<usize, PortError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|error| unavailable("sqs", &format!("count messages of {url}"), error))?;
        Ok(output
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Sends `(body, attributes)` messages to one queue in batches of at
    /// most 10 entries and 1 MiB.
    async fn send_batches(
        &self,
        queue: &str,
        messages: &[(String, BTreeMap<String, String>)],
    ) -> Result<(), PortError> {
        let url = self.url(queue).await?;
        let mut start = 0;
        while start < messages.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < messages.len() && end - start < BATCH_ENTRIES {
                let size = messages[end].0.len() + attribute_bytes(&messages[end].1);
                if end > start && bytes + size > BATCH_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let entries: Vec<SendMessageBatchRequestEntry> = messages[start..end]
                .iter()
                .enumerate()
                .map(|(i, (body, attributes))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .set_message_attributes(Some(to_sqs_attributes(attributes)))
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let output = self
                .client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| unavailable("sqs", &format!("send to {queue}"), error))?;
            if let Some(failed) = output.failed().first() {
                return Err(PortError::Unavailable {
                    service: "sqs",
                    message: format!(
                        "{} of {} messages to {queue} were not sent: {} {}",
                        output.failed().len(),
                        end - start,
                        failed.code(),
                        failed.message().unwrap_or("")
                    ),
                });
            }
            start = end;
        }
        Ok(())
    }

    /// Receives up to `max` messages of the queue at `url` (10 per call).
    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        visibility_ms: u64,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, PortError> {
        let mut messages = Vec::new();
        while messages.len() < max {
            let want = (max - messages.len()).min(10) as i32;
            let output = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(want)
                .visibility_timeout(visibility_ms.div_ceil(1000) as i32)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|error| unavailable("sqs", &format!("receive from {url}"), error))?;
            let batch = output.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            messages.extend(batch);
        }
        Ok(messages)
    }

    fn queues_for(&self, queue: Option<&str>) -> Result<Vec<String>, PortError> {
        match queue {
            Some(queue) => {
                self.check_queue(queue)?;
                Ok(vec![queue.to_string()])
            }
            None => Ok(self.routes.queues().iter().map(|q| q.to_string()).collect()),
        }
    }

    /// Receive-send-delete of up to `max` dead letters of one queue.
    async fn move_back(&self, queue: &str, max: usize) -> Result<usize, PortError> {
        let dlq = self.url(&format!("{queue}{DLQ_SUFFIX}")).await?;
        let source = self.url(queue).await?;
        let mut moved = 0;
        while moved < max {
            let batch = self
                .receive_from(&dlq, (max - moved).min(10), 60_000)
                .await?;
            if batch.is_empty() {
                break;
            }
            let entries: Vec<SendMessageBatchRequestEntry> = batch
                .iter()
                .enumerate()
                .map(|(i, message)| {
                    let attributes: BTreeMap<String, String> =
                        from_sqs_attributes(message.message_attributes())
                            .into_iter()
                            .filter(|(k, _)| !k.starts_with("dlq_"))
                            .collect();
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(message.body().unwrap_or_default())
                        .set_message_attributes(Some(to_sqs_attributes(&attributes)))
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&source)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| unavailable("sqs", &format!("send to {queue}"), error))?;
            let delete: Vec<DeleteMessageBatchRequestEntry> = sent
                .successful()
                .iter()
                .filter_map(|ok| {
                    let index: usize = ok.id().parse().ok()?;
                    DeleteMessageBatchRequestEntry::builder()
                        .id(ok.id())
                        .receipt_handle(batch[index].receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            let count = delete.len();
            if count > 0 {
                self.client
                    .delete_message_batch()
                    .queue_url(&dlq)
                    .set_entries(Some(delete))
                    .send()
                    .await
                    .map_err(|error| {
                        unavailable("sqs", &format!("delete from {queue}{DLQ_SUFFIX}"), error)
                    })?;
            }
            moved += count;
            if let Some(failed) = sent.failed().first() {
                return Err(PortError::Unavailable {
                    service: "sqs",
                    message: format!(
                        "moved {moved}, then a message could not be sent back to {queue}: {} {}",
                        failed.code(),
                        failed.message().unwrap_or("")
                    ),
                });
            }
        }
        Ok(moved)
    }

    /// Starts an SQS message-move task from `queue`'s DLQ back to it;
    /// returns the messages it moves, or `None` if the endpoint does not
    /// support move tasks.
    async fn move_task(&self, queue: &str) -> Result<Option<usize>, PortError> {
        let dlq = self.url(&format!("{queue}{DLQ_SUFFIX}")).await?;
        let source = self.url(queue).await?;
        let count = self.depth(&dlq).await?;
        if count == 0 {
            return Ok(Some(0));
        }
        let (dlq_arn, source_arn) = (self.arn(&dlq).await?, self.arn(&source).await?);
        let started = self
            .client
            .start_message_move_task()
            .source_arn(dlq_arn)
            // Messages this bus dead-lettered itself have no original
            // source for SQS to return them to, so the destination is set.
            .destination_arn(source_arn)
            .send()
            .await;
        match started {
            Ok(_) => Ok(Some(count)),
            Err(error) => {
                // NOTE: moto 5.2.5 returns 500 because it does not implement
                // move tasks. Any refusal falls back to receive-send-delete,
                // which moves the same messages.
                warn!(queue, error = %describe(&error), "The endpoint rejected a message-move task, so the replay uses receive, send and delete.");
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl Bus for SqsBus {
    async fn publish(&self, events: &[Outbound]) -> Result<(), PortError> {
        let mut by_queue: BTreeMap<&str, Vec<(String, BTreeMap<String, String>)>> = BTreeMap::new();
        for event in events {
            let queues = self.routes.queues_for(&event.event_type);
            if queues.is_empty() {
                continue;
            }
            let (body, attributes) = outbound_message(
                self.objects.as_ref(),
                &self.owner,
                self.claim_check_bytes,
                event,
            )
            .await?;
            for queue in queues {
                by_queue
                    .entry(queue)
                    .or_default()
                    .push((body.clone(), attributes.clone()));
            }
        }
        for (queue, messages) in by_queue {
            self.send_batches(queue, &messages).await?;
            debug!(queue, messages = messages.len(), "Published events.");
        }
        Ok(())
    }

    async fn send(
        &self,
        queue: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let size = body.len() + attribute_bytes(attributes);
        if size > MAX_MESSAGE_BYTES {
            return Err(PortError::TooLarge {
                what: format!("a message to {queue}"),
                size,
                limit: MAX_MESSAGE_BYTES,
                fix: "SQS takes at most 1 MiB with attributes; publish it as an event, which goes through the S3 claim check".into(),
            });
        }
        self.send_batches(queue, &[(body.to_string(), attributes.clone())])
            .await
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility_ms: u64,
    ) -> Result<Vec<Delivery>, PortError> {
        self.check_queue(queue)?;
        let url = self.url(queue).await?;
        let messages = self.receive_from(&url, max, visibility_ms).await?;
        Ok(messages
            .into_iter()
            .map(|message| Delivery {
                receipt: message.receipt_handle().unwrap_or_default().to_string(),
                message_id: message.message_id().unwrap_or_default().to_string(),
                attributes: from_sqs_attributes(message.message_attributes()),
                receive_count: message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                body: message.body.unwrap_or_default(),
            })
            .collect())
    }

    async fn delete(&self, queue: &str, receipt: &str) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let url = self.url(queue).await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|error| unavailable("sqs", &format!("delete from {queue}"), error))?;
        Ok(())
    }

    async fn retry_after(
        &self,
        queue: &str,
        receipt: &str,
        delay_ms: u64,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let url = self.url(queue).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(delay_ms.div_ceil(1000).min(43_200) as i32)
            .send()
            .await
            .map_err(|error| unavailable("sqs", &format!("change visibility in {queue}"), error))?;
        Ok(())
    }

    async fn resolve(&self, body: &str) -> Result<String, PortError> {
        underwrite_runtime::sqlite_ports::resolve_with(self.objects.as_ref(), body).await
    }

    async fn dead_letter(
        &self,
        queue: &str,
        message_id: &str,
        body: &str,
        attributes: &BTreeMap<String, String>,
        reason: &DeadLetterReason,
    ) -> Result<(), PortError> {
        self.check_queue(queue)?;
        let mut kept: BTreeMap<String, String> = attributes
            .iter()
            .filter(|(k, _)| KEPT_ATTRIBUTES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let now = underwrite_runtime::sqlite::now_ms();
        for (key, value) in [
            (ATTR_MESSAGE_ID, message_id.to_string()),
            (ATTR_ERROR_KIND, reason.error_kind.clone()),
            (ATTR_ERROR_CODE, reason.error_code.clone()),
            (
                ATTR_ERROR_MESSAGE,
                truncate(&reason.error_message, MAX_REASON_BYTES).to_string(),
            ),
            (ATTR_RECEIVE_COUNT, reason.receive_count.to_string()),
            (ATTR_FAILED_MS, now.to_string()),
        ] {
            kept.insert(key.to_string(), value);
        }
        // An oversized body that arrived here directly cannot go to the DLQ
        // whole; it was never an SQS message, so this only guards the limit.
        let body = if body.len() + attribute_bytes(&kept) > MAX_MESSAGE_BYTES {
            truncate(body, MAX_MESSAGE_BYTES - attribute_bytes(&kept) - 1024)
        } else {
            body
        };
        self.send_batches(&format!("{queue}{DLQ_SUFFIX}"), &[(body.to_string(), kept)])
            .await
    }

    async fn dead_letters(&self, queue: Option<&str>) -> Result<Vec<DeadLetterEntry>, PortError> {
        let mut letters = Vec::new();
        for queue in self.queues_for(queue)? {
            let url = self.url(&format!("{queue}{DLQ_SUFFIX}")).await?;
            // Peek: receive everything with a visibility timeout long enough
            // to see each message once, then make all visible again.
            let messages = self.receive_from(&url, usize::MAX, 30_000).await?;
            let mut seen = std::collections::HashSet::new();
            for message in &messages {
                if !seen.insert(message.message_id().unwrap_or_default().to_string()) {
                    continue;
                }
                let mut attributes = from_sqs_attributes(message.message_attributes());
                let system = message.attributes();
                let receives: u32 = system
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let sent_ms: i64 = system
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let reason = match attributes.remove(ATTR_ERROR_KIND) {
                    Some(error_kind) => DeadLetterReason {
                        error_kind,
                        error_code: attributes.remove(ATTR_ERROR_CODE).unwrap_or_default(),
                        error_message: attributes.remove(ATTR_ERROR_MESSAGE).unwrap_or_default(),
                        receive_count: attributes
                            .remove(ATTR_RECEIVE_COUNT)
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(receives),
                    },
                    // Moved by the queue's redrive policy: no handler recorded why.
                    None => DeadLetterReason {
                        error_kind: "retries_exhausted".into(),
                        error_code: "max_receives".into(),
                        error_message: format!(
                            "moved by {queue}'s redrive policy after its maximum receives; no handler reason was recorded (the function crashed or timed out)"
                        ),
                        receive_count: receives.saturating_sub(1),
                    },
                };
                let failed_ms = attributes
                    .remove(ATTR_FAILED_MS)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(sent_ms);
                let message_id = attributes
                    .remove(ATTR_MESSAGE_ID)
                    .or_else(|| attributes.get(ATTR_EVENT_ID).cloned())
                    .unwrap_or_else(|| message.message_id().unwrap_or_default().to_string());
                letters.push(DeadLetterEntry {
                    queue: queue.clone(),
                    message_id,
                    body: message.body().unwrap_or_default().to_string(),
                    attributes,
                    reason,
                    failed_ms,
                });
            }
            for chunk in messages.chunks(10) {
                let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                    .iter()
                    .enumerate()
                    .filter_map(|(i, message)| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(message.receipt_handle()?)
                            .visibility_timeout(0)
                            .build()
                            .ok()
                    })
                    .collect();
                self.client
                    .change_message_visibility_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|error| {
                        unavailable("sqs", &format!("release dead letters of {queue}"), error)
                    })?;
            }
        }
        letters.sort_by_key(|letter| letter.failed_ms);
        Ok(letters)
    }

    async fn replay(&self, queue: Option<&str>, max: Option<usize>) -> Result<Replayed, PortError> {
        let queues = self.queues_for(queue)?;
        let mut moved = 0;
        let mut method = ReplayMethod::MoveTask;
        match max {
            Some(max) => {
                method = ReplayMethod::ReceiveSendDelete;
                for queue in &queues {
                    if moved >= max {
                        break;
                    }
                    moved += self.move_back(queue, max - moved).await?;
                }
            }
            None => {
                for queue in &queues {
                    match self.move_task(queue).await? {
                        Some(count) => moved += count,
                        None => {
                            method = ReplayMethod::ReceiveSendDelete;
                            moved += self.move_back(queue, usize::MAX).await?;
                        }
                    }
                }
            }
        }
        Ok(Replayed { moved, method })
    }
}

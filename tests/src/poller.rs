//! A test poller that does what Lambda's SQS event source mapping does for
//! a function with `ReportBatchItemFailures`. It receives up to 10 messages
//! from the function's queue and builds the `SqsEvent` Lambda would send. It
//! passes the event to the batch loop the deployed function runs
//! ([`underwrite_lambda::handle_batch`]) and deletes every record not listed
//! in `batchItemFailures`. Those come back after the visibility timeout,
//! where the queue's redrive policy applies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use lambda_runtime::{Context, LambdaEvent};
use underwrite_lambda::{BatchSettings, Function, handle_batch};

/// One function and the queue it is fed by.
pub struct Mapping {
    /// The function, as its `main` builds it.
    pub function: Function,
    /// The queue's URL.
    pub queue_url: String,
    /// The queue's ARN, as Lambda puts it in `eventSourceARN`.
    pub queue_arn: String,
}

/// Counts of one poller run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Batches passed to the functions.
    pub batches: usize,
    /// Records passed to the functions, redeliveries included.
    pub records: usize,
    /// Records deleted after their batch.
    pub deleted: usize,
    /// Records reported in `batchItemFailures` and left on their queue.
    pub failed: usize,
}

/// The event source mappings of several functions over one SQS client.
pub struct Poller {
    sqs: aws_sdk_sqs::Client,
    region: String,
    mappings: Vec<Mapping>,
    /// The visibility timeout each receive sets, in whole seconds as SQS
    /// counts it: how long a failed record stays hidden.
    pub visibility_seconds: i32,
    batch: BatchSettings,
}

impl Poller {
    /// Creates a poller over `mappings` whose failed records come back after
    /// 1 s.
    pub fn new(sqs: aws_sdk_sqs::Client, region: &str, mappings: Vec<Mapping>) -> Self {
        Poller {
            sqs,
            region: region.to_string(),
            mappings,
            visibility_seconds: 1,
            batch: BatchSettings::default(),
        }
    }

    /// Looks up a queue's ARN.
    pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> String {
        sqs.get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("QueueArn")
    }

    /// Receives one batch from `mapping`'s queue.
    async fn receive(&self, mapping: &Mapping) -> Vec<Message> {
        self.sqs
            .receive_message()
            .queue_url(&mapping.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(self.visibility_seconds)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the function's queue")
            .messages
            .unwrap_or_default()
    }

    /// Builds the `SqsEvent` Lambda sends for `messages`.
    fn event(&self, mapping: &Mapping, messages: &[Message]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|message| sqs_record(message, &mapping.queue_arn, &self.region))
            .collect();
        event
    }

    /// Runs one batch of a mapping's queue through its function and returns
    /// the number of records received. With `delete` false even the
    /// successes stay on the queue, as when the mapping's delete call is lost.
    pub async fn poll_once(&self, index: usize, delete: bool, summary: &mut PollSummary) -> usize {
        let mapping = &self.mappings[index];
        let messages = self.receive(mapping).await;
        if messages.is_empty() {
            return 0;
        }
        let event = self.event(mapping, &messages);
        let payload = serde_json::to_value(&event).expect("an SQS event serialises");
        let (response, _) = handle_batch(
            &mapping.function,
            &self.batch,
            LambdaEvent::new(payload, Context::default()),
        )
        .await
        .expect("the batch loop answers every batch of identified records");
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|failure| failure.item_identifier.clone())
            .collect();
        for id in &failed {
            assert!(
                messages.iter().any(|m| m.message_id() == Some(id.as_str())),
                "batchItemFailures names {id:?}, which is not in the batch; Lambda would fail the whole batch"
            );
        }
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| !failed.iter().any(|id| Some(id.as_str()) == m.message_id()))
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(
                        m.receipt_handle()
                            .expect("a received message has a receipt"),
                    )
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        summary.batches += 1;
        summary.records += messages.len();
        summary.failed += failed.len();
        if delete && !done.is_empty() {
            summary.deleted += done.len();
            let output = self
                .sqs
                .delete_message_batch()
                .queue_url(&mapping.queue_url)
                .set_entries(Some(done))
                .send()
                .await
                .expect("delete the handled records");
            assert!(
                output.failed().is_empty(),
                "deleting handled records failed: {:?}",
                output.failed()
            );
        }
        messages.len()
    }

    /// Messages of a queue that are visible or in flight.
    async fn depth(&self, queue_url: &str) -> usize {
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue depth");
        let attributes = output.attributes().cloned().unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .filter_map(|name| attributes.get(name)?.parse::<usize>().ok())
        .sum()
    }

    /// Polls every queue in turn, one batch each, until every queue is
    /// empty with nothing in flight. Panics after `timeout`, naming the
    /// queues that still hold messages.
    pub async fn run_until_idle(&self, timeout: Duration) -> PollSummary {
        let started = Instant::now();
        let mut summary = PollSummary::default();
        loop {
            let mut received = 0;
            for index in 0..self.mappings.len() {
                received += self.poll_once(index, true, &mut summary).await;
            }
            if received > 0 {
                continue;
            }
            let mut busy = Vec::new();
            for mapping in &self.mappings {
                let depth = self.depth(&mapping.queue_url).await;
                if depth > 0 {
                    busy.push(format!("{} ({depth})", mapping.function.name()));
                }
            }
            if busy.is_empty() {
                return summary;
            }
            assert!(
                started.elapsed() < timeout,
                "queues still hold messages after {timeout:?}: {}",
                busy.join(", ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One received message as Lambda's event source mapping puts it in an
/// `SqsEvent` record.
fn sqs_record(message: &Message, queue_arn: &str, region: &str) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = message.message_id().map(str::to_string);
    record.receipt_handle = message.receipt_handle().map(str::to_string);
    record.body = message.body().map(str::to_string);
    record.md5_of_body = message.md5_of_body().map(str::to_string);
    record.md5_of_message_attributes = message.md5_of_message_attributes().map(str::to_string);
    record.attributes = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.as_str().to_string(), value.clone()))
        .collect();
    record.message_attributes = message
        .message_attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            let mut attribute = SqsMessageAttribute::default();
            attribute.string_value = value.string_value().map(str::to_string);
            attribute.data_type = Some(value.data_type().to_string());
            (name.clone(), attribute)
        })
        .collect::<HashMap<_, _>>();
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(queue_arn.to_string());
    record.aws_region = Some(region.to_string());
    record
}

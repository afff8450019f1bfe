//! Where a DynamoDB or Kinesis source keeps the changes the target refused for good and the
//! records that could not be read: a file (one JSON line each, appended and synced), an SQS
//! queue (one message each, the same JSON as its body) or a Kafka topic (one record each),
//! written before the pipeline goes past them.
//!
//! ```json
//! {"time": "2026-12-04T19:20:00Z", "pipeline": "cn-to-global", "reason": "...",
//!  "shard": "shardId-...", "seq": "4960...", "record": {<the change as Kinesis Data Streams
//!  for DynamoDB writes it>}, "data": "<a Kinesis record's bytes that are not such a change>"}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tracing::warn;

use super::client::{classify, AwsAccess};
use super::follow::ShardOrigin;
use crate::connectors::dynamodb::record::StreamChange;
use crate::connectors::kafka::config::KafkaDeadLetterConfig;
use crate::connectors::kafka::dead_letter::DeadLetterTopic;
use crate::connectors::{DeadLetters, Origin};
use crate::core::ChangeEvent;
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;

/// A DynamoDB or Kinesis source's dead letters: each one built once as JSON
/// ([`dead_letter_json`]) and handed to where the source's keys say.
pub(crate) struct StreamDeadLetters {
    pipeline: String,
    to: Destination,
}

/// Where dead letters go.
enum Destination {
    /// Appended to a file, one line each, synced.
    File {
        path: PathBuf,
        file: Mutex<Option<tokio::fs::File>>,
    },
    /// Sent to an SQS queue, one message each.
    Queue {
        client: aws_sdk_sqs::Client,
        url: String,
    },
    /// Produced to a Kafka topic, one record each, keyed by the item's key.
    Kafka(DeadLetterTopic),
}

/// Where a DynamoDB or Kinesis source keeps its dead letters (its `dead_letter_*` keys).
pub(crate) struct DeadLetterKeys<'a> {
    /// `dead_letter_file`.
    pub(crate) file: Option<&'a Path>,
    /// `dead_letter_queue`, reached with the DynamoDB table's access.
    pub(crate) queue: Option<&'a str>,
    /// `dead_letter_kafka`.
    pub(crate) kafka: Option<&'a KafkaDeadLetterConfig>,
}

/// A source's dead letters from its keys; none when no key is set. A queue is reached now (a
/// name is looked up, a URL checked), so a missing one stops the pipeline at start rather
/// than at its first refused change.
pub(crate) async fn open(
    keys: DeadLetterKeys<'_>,
    access: &AwsAccess,
    pipeline: &str,
    telemetry: &Arc<Telemetry>,
) -> Result<Option<Arc<dyn DeadLetters>>> {
    let to = if let Some(queue) = keys.queue {
        let sdk = access.sdk_config().await;
        let target = access.describe(sdk.region());
        let client = aws_sdk_sqs::Client::new(&sdk);
        let context = format!("dead-letter queue {queue}");
        let url = if queue.starts_with("https://") || queue.starts_with("http://") {
            client
                .get_queue_attributes()
                .queue_url(queue)
                .send()
                .await
                .map_err(|e| classify(e, Role::DeadLetters, &context, &target))?;
            queue.to_string()
        } else {
            let found = client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .map_err(|e| classify(e, Role::DeadLetters, &context, &target))?;
            found.queue_url.unwrap_or_default()
        };
        Destination::Queue { client, url }
    } else if let Some(k) = keys.kafka {
        Destination::Kafka(DeadLetterTopic::open_at(
            &k.brokers,
            &k.security,
            &k.options,
            k.topic.clone(),
            pipeline,
            telemetry,
        )?)
    } else if let Some(path) = keys.file {
        Destination::File {
            path: path.to_path_buf(),
            file: Mutex::new(None),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(StreamDeadLetters {
        pipeline: pipeline.to_string(),
        to,
    })))
}

/// One dead letter as JSON.
pub(crate) fn dead_letter_json(
    pipeline: &str,
    origin: Option<&dyn Origin>,
    event: Option<&ChangeEvent>,
    reason: &str,
) -> Value {
    let mut line = json!({
        "time": bson::DateTime::now().try_to_rfc3339_string().unwrap_or_default(),
        "pipeline": pipeline,
        "reason": reason,
    });
    let shard = origin.and_then(|o| o.as_any().downcast_ref::<ShardOrigin>());
    let token = event.map(|e| &e.resume_token);
    let text = |k: &str| token.and_then(|t| t.get_str(k).ok()).map(str::to_string);
    if let Some(s) = shard.map(|s| s.shard.clone()).or_else(|| text("shard")) {
        line["shard"] = json!(s);
    }
    if let Some(s) = shard.map(|s| s.seq.clone()).or_else(|| text("seq")) {
        line["seq"] = json!(s);
    }
    if let Some(ev) = event {
        line["record"] = match StreamChange::from_event(ev) {
            Ok(c) => c.to_json(),
            Err(_) => {
                bson::Bson::Document(bson::Document::try_from(ev.raw.as_ref()).unwrap_or_default())
                    .into_relaxed_extjson()
            }
        };
    }
    if let Some(data) = shard.and_then(|s| s.data.as_ref()) {
        line["data"] = json!(String::from_utf8_lossy(data));
    }
    line
}

/// SQS's largest message body (256 KiB; an item can be 400 KB).
const SQS_MAX_BODY: usize = 256 * 1024;

/// The message body: the dead letter's JSON, without the item's images (the keys stay) when
/// they would not fit in one SQS message.
fn queue_body(mut letter: Value) -> String {
    let body = letter.to_string();
    if body.len() <= SQS_MAX_BODY {
        return body;
    }
    if let Some(d) = letter
        .get_mut("record")
        .and_then(|r| r.get_mut("dynamodb"))
        .and_then(Value::as_object_mut)
    {
        d.remove("NewImage");
        d.remove("OldImage");
    }
    if let Some(o) = letter.as_object_mut() {
        o.remove("data");
        o.insert(
            "omitted".into(),
            json!(format!(
                "the images and data: {} bytes, over SQS's {SQS_MAX_BODY}-byte message limit",
                body.len()
            )),
        );
    }
    letter.to_string()
}

#[async_trait]
impl DeadLetters for StreamDeadLetters {
    async fn dead_letter(
        &self,
        origin: Option<&dyn Origin>,
        event: Option<&ChangeEvent>,
        reason: &str,
    ) -> Result<()> {
        let letter = dead_letter_json(&self.pipeline, origin, event, reason);
        match &self.to {
            Destination::File { path, file } => {
                let io = |e: std::io::Error| {
                    Error::User(format!("dead-letter file {}: {e}", path.display()))
                };
                let mut line = letter.to_string();
                line.push('\n');
                let mut guard = file.lock().await;
                if guard.is_none() {
                    let f = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .map_err(io)?;
                    *guard = Some(f);
                }
                let Some(f) = guard.as_mut() else {
                    return Err(Error::Internal("dead-letter file not open".into()));
                };
                f.write_all(line.as_bytes()).await.map_err(io)?;
                f.sync_data().await.map_err(io)?;
                warn!(file = %path.display(), %reason, "Change written to the dead-letter file.");
            }
            Destination::Queue { client, url } => {
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(queue_body(letter))
                    .send()
                    .await
                    .map_err(|e| {
                        Error::from(classify(e, Role::DeadLetters, "sending a dead letter", url))
                    })?;
                warn!(queue = %url, %reason, "Change sent to the dead-letter queue.");
            }
            Destination::Kafka(topic) => {
                let key = letter
                    .get("record")
                    .and_then(|r| r.get("dynamodb"))
                    .and_then(|d| d.get("Keys"))
                    .map(Value::to_string);
                let value = letter.to_string();
                let headers = vec![("strait.pipeline", Some(self.pipeline.as_bytes()))];
                topic
                    .produce(
                        key.as_deref().map(str::as_bytes),
                        Some(value.as_bytes()),
                        headers,
                        reason,
                    )
                    .await?;
                warn!(%reason, "Change sent to the dead-letter topic.");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_too_large_for_sqs_keeps_its_keys_and_says_what_it_left_out() {
        let small = json!({ "reason": "r", "record": { "dynamodb": { "Keys": { "pk": { "S": "a" } }, "NewImage": { "v": { "S": "x" } } } } });
        assert_eq!(queue_body(small.clone()), small.to_string());
        let mut big = small;
        big["record"]["dynamodb"]["NewImage"]["v"]["S"] = json!("x".repeat(300_000));
        let body: Value = serde_json::from_str(&queue_body(big)).unwrap();
        assert!(body.to_string().len() <= SQS_MAX_BODY);
        assert_eq!(body["record"]["dynamodb"]["Keys"]["pk"]["S"], "a");
        assert!(body["record"]["dynamodb"].get("NewImage").is_none());
        assert!(
            body["omitted"].as_str().unwrap().contains("message limit"),
            "{body}"
        );
    }
}

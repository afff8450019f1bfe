//! The Kafka source's consumer: a consumer-group member polled on its own thread, handing
//! records to the apply pipeline through a bounded queue.
//!
//! Offsets are never committed automatically. The pipeline commits an offset only once every
//! record before it is durably written, and when the group takes partitions away (a process
//! joined or left), the consumer first waits until everything read is written and commits it,
//! so the next owner starts exactly after it and no write of the old owner lands after the new
//! owner's.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::kafka::{KafkaSourceConfig, KafkaStart};
use crate::kafka::{client_config, KafkaError};
use crate::telemetry::Telemetry;

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers (kept for the dead-letter copy).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// What the consumer thread hands to the pipeline.
#[derive(Debug)]
pub enum ConsumerItem {
    /// A record, in partition order.
    Record(ConsumedRecord),
    /// The group is taking partitions away: write everything read, then answer with the
    /// offsets to commit (the consumer commits them before giving the partitions up).
    Revoke(std::sync::mpsc::SyncSender<TopicPartitionList>),
}

/// Callbacks of the group protocol.
pub struct GroupContext {
    tx: mpsc::Sender<ConsumerItem>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                info!(
                    partitions = tpl.count(),
                    "Partitions revoked; finishing their writes and committing."
                );
                // On shutdown the pipeline has already committed and stopped listening.
                if self.tx.is_closed() || tokio::runtime::Handle::try_current().is_ok() {
                    return;
                }
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                if self.tx.blocking_send(ConsumerItem::Revoke(reply)).is_err() {
                    return;
                }
                if let Ok(offsets) = answer.recv() {
                    if offsets.count() > 0 {
                        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                            warn!(error = %e, "Committing offsets of revoked partitions failed; their next owner re-applies some records (idempotently).");
                        }
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                info!(partitions = ?tpl.elements().iter().map(|e| format!("{}[{}]", e.topic(), e.partition())).collect::<Vec<_>>(), "Partitions assigned.");
            }
            Rebalance::Error(e) => warn!(error = %e, "Group rebalance error."),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            debug!(error = %e, "Offset commit failed (the next one covers it).");
        }
    }
}

/// The consumer of a Kafka source.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// Creates the consumer and subscribes; fails fast with one line when the brokers cannot be
/// reached or refuse access.
pub async fn open(
    cfg: &KafkaSourceConfig,
    pipeline: &str,
    tx: mpsc::Sender<ConsumerItem>,
    timeout: Duration,
) -> Result<Arc<GroupConsumer>, KafkaError> {
    let group = cfg.group_id(pipeline);
    let session_ms = cfg.session_timeout.as_millis().max(1000);
    let client = client_config(
        &cfg.brokers,
        &cfg.security,
        &cfg.options,
        &[
            ("session.timeout.ms", session_ms.to_string()),
            (
                "heartbeat.interval.ms",
                (session_ms / 10).max(100).to_string(),
            ),
            (
                "auto.offset.reset",
                match cfg.start_at {
                    KafkaStart::Committed | KafkaStart::Earliest => "earliest",
                    KafkaStart::Latest => "latest",
                }
                .to_string(),
            ),
            // Bounded prefetch: the lanes, not librdkafka's queue, hold the backlog (the defaults
            // buffer up to 64 MB and 100,000 records per partition ahead of a slow target).
            // Records larger than a fetch are still returned whole.
            ("queued.max.messages.kbytes", "16384".to_string()),
            ("queued.min.messages", "10000".to_string()),
            (
                "partition.assignment.strategy",
                "range,roundrobin".to_string(),
            ),
            // Regex subscriptions see topics created later (a new collection upstream) within
            // seconds, not librdkafka's default five minutes.
            ("topic.metadata.refresh.interval.ms", "5000".to_string()),
        ],
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ],
    );
    let invalid = |e: rdkafka::error::KafkaError| KafkaError::Invalid {
        what: "kafka source",
        name: pipeline.to_string(),
        detail: e.to_string(),
    };
    let consumer: GroupConsumer = client
        .create_with_context(GroupContext { tx })
        .map_err(invalid)?;
    let consumer = Arc::new(consumer);
    let c = consumer.clone();
    let (brokers, name) = (cfg.brokers.clone(), pipeline.to_string());
    tokio::task::spawn_blocking(move || {
        crate::kafka::check_reachable(c.client(), "kafka source", &name, &brokers, timeout)
    })
    .await
    .map_err(|e| KafkaError::Invalid {
        what: "kafka source",
        name: pipeline.to_string(),
        detail: format!("check panicked: {e}"),
    })??;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(invalid)?;
    info!(group = %group, topics = ?cfg.topics, "Kafka source subscribed.");
    Ok(consumer)
}

/// Polls the consumer on the calling (dedicated) thread until `stop`, handing records to `tx`.
pub fn poll_loop(
    consumer: Arc<GroupConsumer>,
    tx: mpsc::Sender<ConsumerItem>,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => telemetry.saw(None, true),
            Some(Err(e)) => {
                warn!(error = %e, "Kafka consumer error; retrying.");
                telemetry.error(&format!("kafka source: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                let rec = ConsumedRecord {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp_ms: m.timestamp().to_millis(),
                };
                telemetry
                    .kafka
                    .consumed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                telemetry.saw(rec.timestamp_ms.map(|t| (t / 1000).max(0) as u32), false);
                if tx.blocking_send(ConsumerItem::Record(rec)).is_err() {
                    return;
                }
            }
        }
    }
}

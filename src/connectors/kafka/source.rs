//! The Kafka source's consumer: a consumer-group member polled on its own thread, which also
//! decodes each record and hands it straight to the engine's bounded queue (decoding is the
//! heaviest step of an apply; on the poll thread it stays off the runtime's workers, which run
//! the lanes and the MongoDB driver).
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

use async_trait::async_trait;
use bson::{RawDocumentBuf, Timestamp};
use rdkafka::Offset;
use tokio::sync::oneshot;

use super::dead_letter::DeadLetterTopic;
use crate::codec::{decode, Decoded, DocumentOptions, RecordMeta};
use crate::connectors::kafka::config::{DocumentWrite, KafkaSourceConfig, KafkaStart};
use crate::connectors::kafka::{client_config, KafkaError};
use crate::connectors::{DeadLetters, Origin, Source, SourceItem};
use crate::core::{ChangeEvent, Namespace, PartId, Position};
use crate::error::{Error, Result};
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

impl Origin for ConsumedRecord {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn held_bytes(&self) -> usize {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        self.topic.len()
            + len(&self.key)
            + len(&self.value)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + len(v))
                .sum::<usize>()
    }
}

/// What the group callbacks hand to the source task.
#[derive(Debug)]
pub enum ConsumerItem {
    /// The group is taking partitions away: write everything read, then answer with the
    /// offsets to commit (the consumer commits them before giving the partitions up). Every
    /// record read before is already in the engine's queue: the poll thread sent it before
    /// the poll that runs this callback.
    Revoke(std::sync::mpsc::SyncSender<TopicPartitionList>),
}

/// Callbacks of the group protocol.
pub struct GroupContext {
    tx: mpsc::Sender<ConsumerItem>,
    handoff: Arc<std::sync::Mutex<Handoff>>,
}

/// Most decoded records the poll thread holds before handing them to the engine.
const HANDOFF_RUN: usize = 64;

/// Decoded records on their way from the poll thread to the engine's queue. They are handed
/// over in runs (while the consumer has records ready, up to [`HANDOFF_RUN`]): one wake-up of
/// the engine per run instead of one per record, which on a backlog cost a context switch per
/// record. The rebalance callback hands over what is held before a revocation, so the engine
/// still has every record read before it.
#[derive(Default)]
pub struct Handoff {
    /// The engine's queue, once the source runs.
    tx: Option<mpsc::Sender<SourceItem>>,
    /// Decoded, not yet handed over, in read order.
    held: Vec<SourceItem>,
}

impl Handoff {
    /// Hands everything held to the engine's queue, in order (waiting while it is full);
    /// false if the engine has stopped listening.
    fn flush(&mut self) -> bool {
        let Some(tx) = &self.tx else {
            self.held.clear();
            return false;
        };
        // A failed send means the engine stopped: what is left is never handed over.
        self.held
            .drain(..)
            .all(|item| tx.blocking_send(item).is_ok())
    }
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
                // Records read before the revocation go to the engine ahead of it.
                if !self.handoff.lock().unwrap().flush() {
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
    handoff: Arc<std::sync::Mutex<Handoff>>,
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
            // buffer up to 64 MB and 100,000 records per partition ahead of a slow target). The
            // byte limits count compressed bytes, and a fetch is decompressed whole, so the
            // record count and the fetch size are what bound the memory: 10,000 records and
            // 50 MB fetches held ~70 MB of decompressed records in a 100,000-record backlog.
            // Records larger than a fetch are still returned whole.
            ("queued.max.messages.kbytes", "16384".to_string()),
            ("queued.min.messages", "1000".to_string()),
            // A partition whose queue is over those bounds is fetched again only after this
            // long (librdkafka's default: 1 s). With queues this short that pause starved the
            // lanes: a 100,000-record backlog ran at 11,600 records/s instead of ~22,000.
            ("fetch.queue.backoff.ms", "10".to_string()),
            ("fetch.max.bytes", fetch_max_bytes(&cfg.options)),
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
    let mut client = client;
    if let Some(id) = cfg.instance_id(pipeline) {
        client.set("group.instance.id", &id);
        info!(member = %id, "Static group membership: a restart gets the same partitions back without a rebalance.");
    }
    let invalid = |e: rdkafka::error::KafkaError| KafkaError::Invalid {
        what: "kafka source",
        name: pipeline.to_string(),
        detail: e.to_string(),
    };
    let consumer: GroupConsumer = client
        .create_with_context(GroupContext { tx, handoff })
        .map_err(invalid)?;
    let consumer = Arc::new(consumer);
    let c = consumer.clone();
    let (brokers, name) = (cfg.brokers.clone(), pipeline.to_string());
    tokio::task::spawn_blocking(move || {
        crate::connectors::kafka::check_reachable(
            c.client(),
            "kafka source",
            &name,
            &brokers,
            timeout,
        )
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

/// Polls the consumer on the calling (dedicated) thread until `stop`, decoding each record
/// and handing it to the engine's queue through `handoff`: records ready one after another
/// go over in runs, and whatever is held goes over as soon as the consumer has nothing ready.
fn poll_loop(
    consumer: Arc<GroupConsumer>,
    handoff: Arc<std::sync::Mutex<Handoff>>,
    mut decoder: RecordDecoder,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let mut held = 0;
    while !stop.is_cancelled() {
        // Holding records: only look for one that is ready, never wait with them held.
        let wait = if held > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match consumer.poll(wait) {
            None => {
                if held > 0 {
                    held = 0;
                    if !handoff.lock().unwrap().flush() {
                        return;
                    }
                }
                telemetry.saw(None, true)
            }
            Some(Err(e)) => {
                held = 0;
                if !handoff.lock().unwrap().flush() {
                    return;
                }
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
                telemetry
                    .read
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                telemetry.saw(rec.timestamp_ms.map(|t| (t / 1000).max(0) as u32), false);
                let item = decoder.item(rec);
                let mut h = handoff.lock().unwrap();
                h.held.push(item);
                // The rebalance callback may have handed the earlier ones over meanwhile.
                held = h.held.len();
                if held >= HANDOFF_RUN {
                    held = 0;
                    if !h.flush() {
                        return;
                    }
                }
            }
        }
    }
}

/// Turns consumed records into the engine's items (owned by the poll thread).
struct RecordDecoder {
    format: crate::connectors::kafka::config::KafkaFormat,
    max_record_bytes: usize,
    doc_opts: DocumentOptions,
    /// The part of the last record's partition: most records follow one from the same one.
    last_part: Option<(String, i32, PartId)>,
}

impl RecordDecoder {
    /// The part of a topic-partition, named `topic[partition]`.
    fn part(&mut self, topic: &str, partition: i32) -> PartId {
        match &self.last_part {
            Some((t, p, id)) if t == topic && *p == partition => id.clone(),
            _ => {
                let id = PartId::new(format!("{topic}[{partition}]"));
                self.last_part = Some((topic.to_string(), partition, id.clone()));
                id
            }
        }
    }

    /// The engine's item for a consumed record.
    fn item(&mut self, rec: ConsumedRecord) -> SourceItem {
        let part = self.part(&rec.topic, rec.partition);
        let pos = offset_pos(
            part,
            &rec.topic,
            rec.partition,
            rec.offset,
            rec.timestamp_ms,
        );
        let meta = RecordMeta {
            topic: &rec.topic,
            partition: rec.partition,
            offset: rec.offset,
            timestamp_ms: rec.timestamp_ms,
        };
        let size = rec.value.as_ref().map_or(0, Vec::len);
        let decoded = if size > self.max_record_bytes {
            Err(format!(
                "record value is {size} bytes, over source.max_record_bytes ({})",
                self.max_record_bytes
            ))
        } else {
            decode(
                self.format,
                rec.key.as_deref(),
                rec.value.as_deref(),
                meta,
                &self.doc_opts,
            )
            .map_err(|e| e.to_string())
        };
        let event = match decoded {
            Ok(Decoded::Event(ev)) => Ok(ev),
            Ok(Decoded::InsertIfAbsent(ns, doc)) => ChangeEvent::snapshot(&ns, doc)
                .map(Box::new)
                .map_err(|e| e.to_string()),
            Ok(Decoded::Skip) => return SourceItem::Progress(pos),
            Err(reason) => Err(reason),
        };
        let origin: Arc<dyn Origin> = Arc::new(rec);
        match event {
            Ok(event) => SourceItem::Event {
                pos,
                event,
                origin: Some(origin),
            },
            Err(reason) => SourceItem::Undecodable {
                pos,
                origin,
                reason,
            },
        }
    }
}

/// A Kafka consumer-group member as a [`Source`]: one part per topic-partition, positions
/// committed as group offsets, partition revocation handed to the engine.
pub(crate) struct KafkaSource {
    cfg: KafkaSourceConfig,
    consumer: Arc<GroupConsumer>,
    queue: std::sync::Mutex<Option<(mpsc::Sender<ConsumerItem>, mpsc::Receiver<ConsumerItem>)>>,
    /// Decoded records on their way to the engine (shared with the group callbacks).
    handoff: Arc<std::sync::Mutex<Handoff>>,
    dead_letters: Arc<DeadLetterTopic>,
    telemetry: Arc<Telemetry>,
    doc_opts: DocumentOptions,
    /// The consumer group's id.
    group: String,
    /// The first offsets committed, kept until the broker is asked for them back once.
    commit_check: std::sync::Mutex<CommitCheck>,
}

/// Whether the brokers return the offsets this member commits. A broker that accepts commits
/// and drops them would make every restart re-read every partition, silently.
enum CommitCheck {
    /// Nothing committed yet.
    Pending,
    /// Committed these at that time; asked back once the commit has had time to land.
    Sent(TopicPartitionList, std::time::Instant),
    /// Asked and answered.
    Done,
}

impl KafkaSource {
    /// Joins the group (checking the brokers answer) and prepares the dead-letter producer.
    pub(crate) async fn open(
        cfg: &KafkaSourceConfig,
        pipeline: &str,
        telemetry: &Arc<Telemetry>,
        timeout: Duration,
    ) -> Result<Self> {
        let dead_letters = Arc::new(DeadLetterTopic::open(cfg, pipeline, telemetry)?);
        let (tx, rx) = mpsc::channel::<ConsumerItem>(1024);
        let handoff = Arc::new(std::sync::Mutex::new(Handoff::default()));
        let consumer = open(cfg, pipeline, tx.clone(), handoff.clone(), timeout).await?;
        Ok(Self {
            doc_opts: DocumentOptions {
                namespace: cfg.namespace.as_deref().map(Namespace::parse),
                topic_prefix: cfg.topic_prefix.clone(),
                insert: cfg.write == DocumentWrite::Insert,
                key_fields: cfg.key_fields.clone(),
            },
            cfg: cfg.clone(),
            consumer,
            queue: std::sync::Mutex::new(Some((tx, rx))),
            handoff,
            dead_letters,
            telemetry: telemetry.clone(),
            group: cfg.group_id(pipeline),
            commit_check: std::sync::Mutex::new(CommitCheck::Pending),
        })
    }

    /// Once per process, a few seconds after the first commit: asks the group for the offsets
    /// committed then and says loudly if none came back.
    fn check_commits_kept(&self, committed: &TopicPartitionList) {
        let sent = {
            let mut c = self.commit_check.lock().unwrap();
            match &*c {
                CommitCheck::Done => return,
                CommitCheck::Pending => {
                    *c = CommitCheck::Sent(committed.clone(), std::time::Instant::now());
                    return;
                }
                CommitCheck::Sent(_, at) if at.elapsed() < Duration::from_secs(3) => return,
                CommitCheck::Sent(tpl, _) => {
                    let tpl = tpl.clone();
                    *c = CommitCheck::Done;
                    tpl
                }
            }
        };
        let (consumer, telemetry) = (self.consumer.clone(), self.telemetry.clone());
        let (group, member) = (self.group.clone(), self.cfg.member.is_some());
        // A blocking round trip to the group coordinator: off the runtime, not awaited.
        tokio::task::spawn_blocking(move || {
            let Ok(back) = consumer.committed_offsets(sent, Duration::from_secs(10)) else {
                return;
            };
            if !any_offset(&back) {
                let hint = if member {
                    " `source.member` is set: check that the brokers support static membership (KIP-345)."
                } else {
                    ""
                };
                let msg = format!(
                    "kafka source: the brokers accepted offset commits for group {group} but return none of them; a restart re-reads every partition from the start.{hint}"
                );
                warn!("{msg}");
                telemetry.error(&msg);
            }
        });
    }
}

/// Whether the group returned an offset for any of the partitions asked about.
fn any_offset(committed: &TopicPartitionList) -> bool {
    committed
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)))
}

/// The position of a record: its part is the topic-partition, its token names the offset.
fn offset_pos(
    part: PartId,
    topic: &str,
    partition: i32,
    offset: i64,
    ts_ms: Option<i64>,
) -> Position {
    let mut token = RawDocumentBuf::new();
    token.append(bson::raw::cstr!("t"), topic);
    token.append(bson::raw::cstr!("p"), partition);
    token.append(bson::raw::cstr!("o"), offset);
    Position {
        part,
        token,
        time: ts_ms.map(|ms| Timestamp {
            time: (ms / 1000).max(0) as u32,
            increment: 0,
        }),
    }
}

/// The group offsets of durable positions: the next record to read in each partition.
fn offsets(durable: &[Position]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in durable {
        let (Ok(topic), Ok(partition), Ok(offset)) = (
            p.token.get_str("t"),
            p.token.get_i32("p"),
            p.token.get_i64("o"),
        ) else {
            continue;
        };
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    tpl
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()> {
        let (ctx_tx, mut rx) = self
            .queue
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::Internal("the Kafka source runs once".into()))?;
        // The group callbacks hold their own sender; this one only keeps the queue open.
        drop(ctx_tx);
        self.handoff.lock().unwrap().tx = Some(tx.clone());
        let poller = {
            let (consumer, telemetry, stop, handoff) = (
                self.consumer.clone(),
                self.telemetry.clone(),
                stop.clone(),
                self.handoff.clone(),
            );
            let decoder = RecordDecoder {
                format: self.cfg.format,
                max_record_bytes: self.cfg.max_record_bytes,
                doc_opts: self.doc_opts.clone(),
                last_part: None,
            };
            std::thread::Builder::new()
                .name("kafka-consumer".into())
                .spawn(move || poll_loop(consumer, handoff, decoder, telemetry, stop))
                .map_err(|e| Error::Internal(format!("consumer thread: {e}")))?
        };
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                item = rx.recv() => item,
            };
            match item {
                None => break,
                Some(ConsumerItem::Revoke(answer)) => {
                    let (reply, durable) = oneshot::channel();
                    if tx.send(SourceItem::Revoked { reply }).await.is_err() {
                        break;
                    }
                    let positions = durable.await.unwrap_or_default();
                    let _ = answer.send(offsets(&positions));
                }
            }
        }
        // Unblocks the poll thread (a full queue, or a revocation waiting for its answer).
        drop(rx);
        let _ = tokio::task::spawn_blocking(move || poller.join()).await;
        // Records still held were never handed over: they are read again after a restart.
        *self.handoff.lock().unwrap() = Handoff::default();
        Ok(())
    }

    async fn commit(&self, durable: &[Position], last: bool) -> Result<()> {
        let tpl = offsets(durable);
        if tpl.count() == 0 {
            return Ok(());
        }
        if last {
            let c = self.consumer.clone();
            match tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync)).await {
                Ok(Ok(())) => info!("Offsets committed."),
                Ok(Err(e)) => {
                    warn!(error = %e, "Final offset commit failed; the next run re-applies some records (idempotently).")
                }
                Err(e) => warn!(error = %e, "Final offset commit panicked."),
            }
            return Ok(());
        }
        match self.consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => {
                self.check_commits_kept(&tpl);
                self.telemetry
                    .kafka
                    .commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            // Not committed now: the next commit carries newer offsets (a replay from the older
            // ones is idempotent).
            Err(e) => {
                warn!(error = %e, "Offset commit failed; the next one covers it.");
                self.telemetry
                    .error(&format!("kafka source: offset commit: {e}"));
                Ok(())
            }
        }
    }

    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        Some(self.dead_letters.clone())
    }
}

/// strait's default `fetch.max.bytes`: 1 MiB, or the user's `message.max.bytes` if larger
/// (librdkafka refuses a fetch limit below it).
fn fetch_max_bytes(options: &std::collections::BTreeMap<String, String>) -> String {
    let message_max = options
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    message_max.max(1 << 20).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_limit_follows_a_larger_message_limit() {
        let mut o = std::collections::BTreeMap::new();
        assert_eq!(fetch_max_bytes(&o), "1048576");
        o.insert("message.max.bytes".to_string(), "20000000".to_string());
        assert_eq!(fetch_max_bytes(&o), "20000000");
    }

    #[test]
    fn commits_count_as_kept_only_when_an_offset_comes_back() {
        let mut none = TopicPartitionList::new();
        none.add_partition_offset("t", 0, Offset::Invalid).unwrap();
        none.add_partition_offset("t", 1, Offset::Invalid).unwrap();
        assert!(!any_offset(&none));
        assert!(!any_offset(&TopicPartitionList::new()));
        let mut one = none.clone();
        one.add_partition_offset("t", 2, Offset::Offset(42))
            .unwrap();
        assert!(any_offset(&one));
    }

    #[test]
    fn a_record_counts_the_bytes_it_keeps_in_the_in_flight_budget() {
        let rec = ConsumedRecord {
            topic: "cdc.a.b".into(),
            partition: 0,
            offset: 7,
            key: Some(vec![0; 10]),
            value: Some(vec![0; 1000]),
            headers: vec![("h".into(), Some(vec![0; 5])), ("n".into(), None)],
            timestamp_ms: None,
        };
        assert_eq!(rec.held_bytes(), 7 + 10 + 1000 + 1 + 5 + 1);
    }
}

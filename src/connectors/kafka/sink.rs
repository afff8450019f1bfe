//! The Kafka sink: change events produced to topics by an idempotent producer with
//! `acks=all`. An event is acknowledged to the ack window only once the broker has confirmed
//! every record it became, so the checkpoint never passes an undelivered event. Records of one
//! document share a key, hence a partition, and the idempotent producer keeps their order
//! through retries.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::codec::{encode, Record};
use crate::connectors::kafka::config::KafkaSinkConfig;
use crate::connectors::kafka::{check_producer, client_config, KafkaError, DURABLE_PRODUCER};
use crate::connectors::{BatchPolicy, Ordering, Sink, Written};
use crate::core::event::{ChangeEvent, Namespace, OpType};
use crate::telemetry::Telemetry;

/// An opened Kafka sink.
pub struct KafkaSink {
    /// The sink's name (`sink` for `[sink]`, else `[sinks.<name>]`).
    pub name: String,
    /// Its settings.
    pub cfg: KafkaSinkConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist (checked or created).
    topics: Mutex<HashSet<String>>,
    /// `[sink]`: also receives the initial copy.
    primary: bool,
    /// Parallel writers.
    lanes: usize,
    /// Publish the indexes of copied collections.
    copy_indexes: bool,
    telemetry: Option<Arc<Telemetry>>,
    /// Shutdown: stop waiting for room in the producer's queue.
    cancel: CancellationToken,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("brokers", &self.cfg.brokers)
            .finish()
    }
}

impl KafkaSink {
    /// Creates the producer (no request is made yet).
    pub fn open(name: &str, cfg: &KafkaSinkConfig) -> Result<Self, KafkaError> {
        let invalid = |e: RdError| KafkaError::Invalid {
            what: "kafka sink",
            name: name.to_string(),
            detail: e.to_string(),
        };
        let client = client_config(
            &cfg.brokers,
            &cfg.security,
            &cfg.options,
            &[
                ("compression.type", cfg.compression.as_str().to_string()),
                ("linger.ms", cfg.linger.as_millis().to_string()),
                // Retry for as long as the brokers are away: nothing is acknowledged (so the
                // checkpoint stays) until they are back.
                ("message.timeout.ms", "0".to_string()),
            ],
            DURABLE_PRODUCER,
        );
        let producer: FutureProducer = client.create().map_err(invalid)?;
        let admin: AdminClient<DefaultClientContext> = client.create().map_err(invalid)?;
        Ok(Self {
            name: name.to_string(),
            cfg: cfg.clone(),
            producer,
            admin,
            topics: Mutex::new(HashSet::new()),
            primary: false,
            lanes: 1,
            copy_indexes: true,
            telemetry: None,
            cancel: CancellationToken::new(),
        })
    }

    /// Where the sink writes, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} format, topic {})",
            self.cfg.brokers,
            self.cfg.format.as_str(),
            self.cfg
                .topic
                .clone()
                .unwrap_or_else(|| match &self.cfg.topic_prefix {
                    Some(p) => format!("{p}.{{db}}.{{coll}}"),
                    None => "{db}.{coll}".into(),
                })
        )
    }

    /// Fails fast, with one clear line, when the brokers cannot be reached or refuse access.
    pub async fn check(self: &Arc<Self>, timeout: Duration) -> Result<(), KafkaError> {
        check_producer(
            &self.producer,
            "kafka sink",
            &self.name,
            &self.cfg.brokers,
            timeout,
        )
        .await
    }

    /// Whether events of this operation type go to this sink.
    pub fn takes(&self, op: &OpType) -> bool {
        match &self.cfg.ops {
            None => true,
            Some(ops) => ops.iter().any(|o| o.matches(op)),
        }
    }

    /// The topic of a namespace.
    pub fn topic_for(&self, ns: &Namespace) -> String {
        let template = match (&self.cfg.topic, &self.cfg.topic_prefix) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) if !p.is_empty() => format!("{p}.{{db}}.{{coll}}"),
            (None, _) => "{db}.{coll}".to_string(),
        };
        let template = if ns.coll.is_none() {
            template.replace(".{coll}", "").replace("{coll}", "")
        } else {
            template
        };
        template
            .replace("{db}", &ns.db)
            .replace("{coll}", ns.coll_name())
    }

    /// Creates the topic when `topic_partitions` asks for it and it is not known yet.
    async fn ensure_topic(&self, topic: &str) -> Result<(), KafkaError> {
        let Some(partitions) = self.cfg.topic_partitions else {
            return Ok(());
        };
        if self.topics.lock().unwrap().contains(topic) {
            return Ok(());
        }
        let replication = TopicReplication::Fixed(self.cfg.replication_factor.unwrap_or(1));
        let new = NewTopic::new(topic, partitions, replication);
        let res = self
            .admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .map_err(|source| KafkaError::Client {
                context: format!("creating topic {topic}"),
                source,
            })?;
        for r in res {
            match r {
                Ok(_) => info!(sink = %self.name, topic, partitions, "Created topic."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(KafkaError::Delivery {
                        sink: self.name.clone(),
                        topic: t,
                        detail: format!("creating the topic failed: {code}"),
                        retryable: !crate::connectors::kafka::is_auth_code(code),
                    })
                }
            }
        }
        self.topics.lock().unwrap().insert(topic.to_string());
        Ok(())
    }

    /// Hands the records of an event to the producer; the futures resolve on delivery.
    async fn send(
        &self,
        ev: &ChangeEvent,
        records: Vec<Record>,
        stop: &CancellationToken,
    ) -> Result<Vec<(String, DeliveryFuture)>, KafkaError> {
        let topic = self.topic_for(&ev.ns);
        self.ensure_topic(&topic).await?;
        let headers = self.cfg.headers.then(|| headers(ev));
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            loop {
                let mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                    FutureRecord::to(&topic).key(&r.key);
                if let Some(v) = &r.value {
                    rec = rec.payload(v);
                }
                if let Some(h) = &headers {
                    rec = rec.headers(h.clone());
                }
                match self.producer.send_result(rec) {
                    Ok(f) => {
                        out.push((topic.clone(), f));
                        break;
                    }
                    Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // The producer's queue is full: wait for deliveries to make room.
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(out),
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                        }
                    }
                    Err((e, _)) => return Err(delivery_error(&self.name, &topic, e, &ev.ns)),
                }
            }
        }
        Ok(out)
    }

    /// Produces documents of the initial copy (as snapshot inserts) and waits until the
    /// broker has them all. Returns how many documents were sent.
    pub async fn produce_snapshot(
        &self,
        ns: &Namespace,
        docs: Vec<bson::RawDocumentBuf>,
        stop: &CancellationToken,
    ) -> Result<u64, KafkaError> {
        let mut pending = Vec::with_capacity(docs.len());
        let n = docs.len() as u64;
        for doc in docs {
            let ev = ChangeEvent::snapshot(ns, doc).map_err(|e| KafkaError::Delivery {
                sink: self.name.clone(),
                topic: self.topic_for(ns),
                detail: e.to_string(),
                retryable: false,
            })?;
            let records = encode(&ev, self.cfg.format, self.cfg.json(), self.cfg.tombstones);
            pending.extend(self.send(&ev, records, stop).await?);
        }
        for (topic, f) in pending {
            wait_delivered(&self.name, &topic, f, ns).await?;
        }
        Ok(n)
    }

    /// Produces one event and waits until the broker has it (DDL of the initial copy).
    pub async fn produce_event(
        &self,
        ev: &ChangeEvent,
        stop: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let records = encode(ev, self.cfg.format, self.cfg.json(), self.cfg.tombstones);
        if records.is_empty() {
            return Ok(());
        }
        for (topic, f) in self.send(ev, records, stop).await? {
            wait_delivered(&self.name, &topic, f, &ev.ns).await?;
        }
        Ok(())
    }

    /// Waits for everything handed to the producer (bounded: a shutdown does not hang).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            warn!(sink = %self.name, error = %e, "Not every record was delivered before shutdown; the checkpoint stays before them.");
        }
    }
}

/// `strait.op`, `strait.ns`, and `strait.clusterTime` when the event has one (documents of
/// the initial copy have none).
fn headers(ev: &ChangeEvent) -> OwnedHeaders {
    let h = OwnedHeaders::new()
        .insert(Header {
            key: "strait.op",
            value: Some(ev.op.as_str()),
        })
        .insert(Header {
            key: "strait.ns",
            value: Some(&ev.ns.to_string()),
        });
    match ev.cluster_time {
        Some(t) => h.insert(Header {
            key: "strait.clusterTime",
            value: Some(&format!("{}.{}", t.time, t.increment)),
        }),
        None => h,
    }
}

fn delivery_error(sink: &str, topic: &str, e: RdError, ns: &Namespace) -> KafkaError {
    let code = e.rdkafka_error_code();
    let hint = match code {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => format!(
            " (an event of {ns} is larger than the producer's or the topic's limit; raise options.\"message.max.bytes\" and the topic's max.message.bytes)"
        ),
        _ => String::new(),
    };
    KafkaError::Delivery {
        sink: sink.to_string(),
        topic: topic.to_string(),
        detail: format!("{e}{hint}"),
        retryable: code.is_some_and(|c| {
            !crate::connectors::kafka::is_auth_code(c) && c != RDKafkaErrorCode::MessageSizeTooLarge
        }),
    }
}

async fn wait_delivered(
    sink: &str,
    topic: &str,
    f: DeliveryFuture,
    ns: &Namespace,
) -> Result<(), KafkaError> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(delivery_error(sink, topic, e, ns)),
        Err(_) => Err(KafkaError::Delivery {
            sink: sink.to_string(),
            topic: topic.to_string(),
            detail: "the producer was closed".into(),
            retryable: true,
        }),
    }
}

impl KafkaSink {
    /// Opens the producer and checks the brokers answer. `primary`: this is `[sink]`, which
    /// also receives the initial copy.
    pub(crate) async fn open_checked(
        name: &str,
        cfg: &KafkaSinkConfig,
        primary: bool,
        pipeline: &crate::config::PipelineConfig,
        telemetry: &Arc<Telemetry>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<Arc<dyn Sink>, KafkaError> {
        let mut sink = KafkaSink::open(name, cfg)?;
        sink.primary = primary;
        sink.lanes = pipeline.apply.lanes;
        sink.copy_indexes = pipeline.full_sync.indexes;
        sink.telemetry = Some(telemetry.clone());
        sink.cancel = cancel.clone();
        let sink = Arc::new(sink);
        sink.check(timeout).await?;
        Ok(sink)
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn describe(&self) -> String {
        KafkaSink::describe(self)
    }

    fn takes(&self, op: &OpType) -> bool {
        KafkaSink::takes(self, op)
    }

    // Records of one document share a key, hence a partition; a lane per key keeps their
    // order, and the idempotent producer keeps it through retries.
    fn ordering(&self) -> Ordering {
        Ordering::ByKey { lanes: self.lanes }
    }

    fn batching(&self) -> BatchPolicy {
        BatchPolicy {
            max_events: 5000,
            max_bytes: 16 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> crate::error::Result<Written> {
        let mut pending = Vec::with_capacity(batch.len());
        let stop = &self.cancel;
        for ev in batch {
            let records = encode(ev, self.cfg.format, self.cfg.json(), self.cfg.tombstones);
            if !records.is_empty() {
                let want = records.len();
                let sent = self.send(ev, records, stop).await?;
                if sent.len() < want {
                    // Stopped while the producer's queue was full: not all of it was sent.
                    return Err(crate::error::Error::Stopped);
                }
                pending.push((ev.ns.clone(), sent));
            }
        }
        let mut n = 0;
        for (ns, deliveries) in pending {
            for (topic, f) in deliveries {
                wait_delivered(&self.name, &topic, f, &ns).await?;
                n += 1;
            }
        }
        if let Some(t) = &self.telemetry {
            t.kafka
                .produced
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Written::default())
    }

    /// `[sink]`, and any `[sinks.<name>]` that takes inserts: a topic that is to mirror a
    /// collection needs its existing documents too.
    fn takes_copy(&self) -> bool {
        self.primary || self.takes(&OpType::Insert)
    }

    // Encoding a batch is CPU, delivering it a wait (linger, the broker's acks): with three
    // batches at once both go on together, on every core.
    fn copy_depth(&self) -> usize {
        3
    }

    async fn copy(
        &self,
        ns: &Namespace,
        docs: Vec<bson::RawDocumentBuf>,
    ) -> crate::error::Result<u64> {
        let n = self.produce_snapshot(ns, docs, &self.cancel).await?;
        if let Some(t) = &self.telemetry {
            t.kafka
                .produced
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }

    async fn finish_copy(
        &self,
        ns: &Namespace,
        indexes: &[bson::Document],
    ) -> crate::error::Result<()> {
        // Consumers that only see events get the indexes as a createIndexes event after the
        // data.
        let specs: Vec<bson::Document> = indexes
            .iter()
            .filter(|s| s.get_str("name").is_ok_and(|n| n != "_id_"))
            .cloned()
            .collect();
        if !specs.is_empty() && self.copy_indexes {
            let ev = ChangeEvent::create_indexes(ns, &specs)?;
            self.produce_event(&ev, &self.cancel).await?;
        }
        Ok(())
    }

    async fn close(&self) {
        // Flushing blocks on librdkafka; a worker thread may block here (the runtime is
        // multi-threaded), and the flush is bounded.
        tokio::task::block_in_place(|| self.flush(Duration::from_secs(5)));
    }
}

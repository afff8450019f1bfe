//! Connectors: where events come from ([`Source`]) and where they go ([`Sink`]). The engine
//! talks to every connector through these two traits only; adding an endpoint is one module
//! implementing one of them plus one arm in the config enum and in [`open_sinks`] /
//! `engine::supervisor` (see `docs/connectors.md`).

pub mod archive;
pub mod aws;
pub mod dynamodb;
pub mod kafka;
pub mod kinesis;
pub mod mongo;

use std::sync::Arc;

use async_trait::async_trait;
use bson::{Document, RawDocumentBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::{ChangeEvent, Namespace, OpType, Position};
use crate::error::{Error, Result};

/// A connector setting that is not usable: its key inside the connector's table (`brokers`,
/// `topic`) and why. The top-level config adds the table and the file line.
#[derive(Debug, PartialEq)]
pub(crate) struct InvalidSetting {
    /// The key, relative to the connector's table.
    pub(crate) key: &'static str,
    /// What is wrong and what to do.
    pub(crate) message: String,
}

impl InvalidSetting {
    pub(crate) fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// Where a source record came from, kept so a record that cannot be applied can be stored as
/// it arrived (a Kafka record for the dead-letter topic).
pub(crate) trait Origin: std::fmt::Debug + Send + Sync {
    /// The origin as its own type, for the dead-letter destination of the same source.
    fn as_any(&self) -> &dyn std::any::Any;

    /// Bytes it holds while its event is in flight (counted in `apply.max_inflight_mib`).
    fn held_bytes(&self) -> usize {
        0
    }
}

/// What a source hands to the engine, in order per part.
#[derive(Debug)]
pub(crate) enum SourceItem {
    /// A change at `pos`.
    Event {
        /// Its position.
        pos: Position,
        /// The change.
        event: Box<ChangeEvent>,
        /// The raw record, when the source can dead-letter it.
        origin: Option<Arc<dyn Origin>>,
    },
    /// A newer position with nothing to apply (an idle stream's post-batch token, a skipped
    /// record): it moves the checkpoint once everything before it is durable.
    Progress(Position),
    /// A record that cannot be understood: it goes to the dead-letter destination, then counts
    /// as done.
    Undecodable {
        /// Its position.
        pos: Position,
        /// The record.
        origin: Arc<dyn Origin>,
        /// Why it cannot be decoded.
        reason: String,
    },
    /// The source is giving up its parts (a Kafka rebalance, a closed shard): the engine
    /// finishes everything read, forgets those parts, and answers with their durable positions,
    /// which the source commits before letting go.
    Revoked {
        /// Receives the durable positions of every part.
        reply: oneshot::Sender<Vec<Position>>,
    },
}

/// A source of change events.
#[async_trait]
pub(crate) trait Source: Send + Sync {
    /// Reads until `stop`, or until `tx` closes, handing items to `tx` in order per part.
    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()>;

    /// Records that everything at or before these positions (one per part) is durable in every
    /// sink: the checkpoint store or the consumer group. `last` is the final commit before
    /// stopping (bounded in time, synchronous where the source allows).
    async fn commit(&self, durable: &[Position], last: bool) -> Result<()>;

    /// Where records that cannot be decoded or applied go, when this source has such a place.
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        None
    }
}

/// Where records no sink can take are stored, with the reason (a dead-letter topic or file).
#[async_trait]
pub(crate) trait DeadLetters: Send + Sync {
    /// Stores the record (as it arrived, when the source kept it, and as the change strait
    /// read, when it could be read) with the reason; returns once it is durable.
    async fn dead_letter(
        &self,
        origin: Option<&dyn Origin>,
        event: Option<&ChangeEvent>,
        reason: &str,
    ) -> Result<()>;
}

/// The order a sink needs kept between the events it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ordering {
    /// Per document: events of one document key in order; `lanes` writers in parallel.
    ByKey {
        /// Parallel writers.
        lanes: usize,
    },
    /// Per namespace: events of one collection in order; `lanes` writers in parallel.
    ByNamespace {
        /// Parallel writers.
        lanes: usize,
    },
    /// Everything in one order, one writer.
    Single,
}

/// How the engine groups events into the batches given to [`Sink::write`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchPolicy {
    /// Most events in one batch.
    pub(crate) max_events: usize,
    /// Most bytes (of raw events) in one batch.
    pub(crate) max_bytes: usize,
    /// How long a batch waits for more events after its first one (zero: take what is queued).
    pub(crate) linger: std::time::Duration,
}

/// An event of a batch that the sink refused for good.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// Index in the batch.
    pub(crate) index: usize,
    /// Why (not retryable).
    pub(crate) error: Error,
}

/// What a write did.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Events refused for good; every other event of the batch is durable.
    pub(crate) refused: Vec<Refusal>,
    /// Updates skipped because the target already holds a later state (replay).
    pub(crate) skipped: u64,
}

/// A destination of change events.
#[async_trait]
pub(crate) trait Sink: Send + Sync {
    /// The sink's name: `sink` for `[sink]`, else the `<name>` of `[sinks.<name>]`.
    fn name(&self) -> &str;

    /// Its kind, for status and metrics (`mongodb`, `kafka`, `archive`).
    fn kind(&self) -> &'static str;

    /// Where it writes, for logs.
    fn describe(&self) -> String;

    /// Whether events of this operation type are routed to it (its `ops`).
    fn takes(&self, op: &OpType) -> bool;

    /// Whether it receives this event: by default what [`takes`](Sink::takes) says. A sink may
    /// also want events it does not apply as such (the MongoDB sink keeps the pre-image of a
    /// delete routed elsewhere); those are not counted as written.
    fn accepts(&self, ev: &ChangeEvent) -> bool {
        self.takes(&ev.op)
    }

    /// The order it needs.
    fn ordering(&self) -> Ordering;

    /// How its batches are formed.
    fn batching(&self) -> BatchPolicy;

    /// Whether this event is a barrier for it: every event before it is durable everywhere
    /// before it is written, and nothing after it starts until it is (DDL on a database).
    fn needs_barrier(&self, _ev: &ChangeEvent) -> bool {
        false
    }

    /// Writes a batch (in order for each key or namespace, as [`ordering`](Sink::ordering)
    /// asked) and returns once every event not refused is durable. A retryable failure is
    /// retried inside until it succeeds or the pipeline stops (`Err(Error::Stopped)`).
    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written>;

    /// Whether it receives the initial copy (full sync).
    fn takes_copy(&self) -> bool {
        false
    }

    /// Prepares a collection for the copy: drops it first when `drop`, then creates it with
    /// the source's options.
    async fn prepare_copy(&self, _ns: &Namespace, _options: &Document, _drop: bool) -> Result<()> {
        Ok(())
    }

    /// Batches of one copy range it may write at once (each `copy` call waits until its batch
    /// is durable; a sink whose wait is mostly a round trip, like a producer's delivery, keeps
    /// encoding the next batch meanwhile). Progress still moves in order.
    fn copy_depth(&self) -> usize {
        1
    }

    /// Writes documents of the initial copy; returns how many it wrote, once durable.
    async fn copy(&self, _ns: &Namespace, docs: Vec<RawDocumentBuf>) -> Result<u64> {
        Ok(docs.len() as u64)
    }

    /// Finishes a copied collection with the source's indexes.
    async fn finish_copy(&self, _ns: &Namespace, _indexes: &[Document]) -> Result<()> {
        Ok(())
    }

    /// Drops a collection before it is copied again (lost change-stream position, resync).
    async fn drop_for_resync(&self, _ns: &Namespace) -> Result<()> {
        Ok(())
    }

    /// Called once before the stream's first change is applied (under the lease, if any): picks
    /// up work a previous run left unfinished.
    async fn resume(&self) -> Result<()> {
        Ok(())
    }

    /// Called once when the pipeline stops: flush what the client still buffers (bounded).
    async fn close(&self) {}
}

/// The opened sinks of a pipeline.
pub(crate) struct OpenedSinks {
    /// `[sink]` first, then `[sinks.<name>]` in name order.
    pub(crate) sinks: Vec<Arc<dyn Sink>>,
    /// The MongoDB `[sink]` (shared with `sinks`): its client is where checkpoints live by
    /// default; given the source client when the source is MongoDB, it repairs duplicate keys
    /// on unique indexes from the source's documents.
    pub(crate) mongo_sink: Option<mongo::MongoSink>,
}

/// Opens every sink of a pipeline and checks each can be reached.
pub(crate) async fn open_sinks(
    cfg: &Arc<crate::config::PipelineConfig>,
    telemetry: &Arc<crate::telemetry::Telemetry>,
    cancel: &CancellationToken,
) -> Result<OpenedSinks> {
    use crate::config::{ExtraSinkConfig, SinkEndpoint};
    let timeout = cfg
        .mongo_endpoint()
        .map(|m| m.connect_timeout)
        .unwrap_or(std::time::Duration::from_secs(10));
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let mut mongo_sink = None;
    match &cfg.sink {
        SinkEndpoint::Mongodb(m) => {
            let sink = mongo::MongoSink::open("sink", m, cfg, telemetry, cancel).await?;
            mongo_sink = Some(sink.clone());
            sinks.push(Arc::new(sink));
        }
        SinkEndpoint::Kafka(k) => sinks.push(
            kafka::sink::KafkaSink::open_checked("sink", k, true, cfg, telemetry, cancel, timeout)
                .await?,
        ),
        SinkEndpoint::Dynamodb(d) => sinks.push(
            dynamodb::sink::DynamoSink::open_checked("sink", d, cfg, telemetry, cancel).await?,
        ),
        SinkEndpoint::Kinesis(k) => {
            sinks.push(kinesis::sink::KinesisSink::open_checked("sink", k, cfg, cancel).await?)
        }
    }
    for (name, s) in &cfg.sinks {
        let sink: Arc<dyn Sink> = match s {
            ExtraSinkConfig::Kafka(k) => {
                kafka::sink::KafkaSink::open_checked(
                    name, k, false, cfg, telemetry, cancel, timeout,
                )
                .await?
            }
            ExtraSinkConfig::Archive(a) => {
                Arc::new(archive::ArchiveSink::open_checked(name, a, telemetry, cancel).await?)
            }
        };
        sinks.push(sink);
    }
    for s in &sinks {
        tracing::info!(sink = %s.name(), kind = s.kind(), target = %s.describe(), "Sink ready.");
    }
    Ok(OpenedSinks { sinks, mongo_sink })
}

//! One place where a pipeline's progress is counted. The terminal bars, the log lines, the
//! HTTP API and `/metrics` all read from here, so they never disagree.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{Bson, Document, Timestamp};

use serde::Serialize;

use prometheus_client::metrics::histogram::Histogram;

use crate::core::event::OpType;
use crate::core::{AckWindow, Position};

/// Lifecycle of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Connecting and checking.
    Starting,
    /// Waiting for the lease held by another process.
    Standby,
    /// Full sync running.
    Copying,
    /// Following the change stream.
    Streaming,
    /// Finished or shut down.
    Stopped,
}

/// Full-sync progress of one collection.
#[derive(Debug)]
pub struct CollectionProgress {
    /// Bytes copied so far.
    pub bytes: AtomicU64,
    /// Source namespace.
    pub ns: String,
    /// Estimated documents.
    pub estimated: AtomicU64,
    /// Documents copied so far (in this run, plus finished chunks of earlier runs).
    pub copied: AtomicU64,
    /// Copy and index build finished.
    pub done: AtomicBool,
}

/// Counters of one pipeline.
pub struct Telemetry {
    state: Mutex<PipelineState>,
    /// Change events read from the source.
    pub read: AtomicU64,
    applied: [AtomicU64; 5],
    /// Updates skipped because the target document had a later shape (replay).
    pub skipped: AtomicU64,
    collections: Mutex<Vec<Arc<CollectionProgress>>>,
    window: Mutex<Option<Arc<AckWindow>>>,
    /// Cluster time (seconds) of the newest event or position read.
    last_read_secs: AtomicU32,
    /// Cluster time (seconds) of the event the engine holds back (rate, target delay); 0 = none.
    held_secs: AtomicU32,
    /// The last read returned no events: the reader is at the head of the stream.
    idle: AtomicBool,
    started: Instant,
    /// Positions read, acknowledged by the sink, and saved.
    positions: Mutex<RawPositions>,
    /// When the checkpoint was last saved.
    checkpointed_at: Mutex<Option<Instant>>,
    /// Errors seen (retried or fatal) and the last one.
    pub errors: AtomicU64,
    last_error: Mutex<Option<(String, Instant)>>,
    /// Times the change stream was reopened after an error or an invalidate.
    pub stream_restarts: AtomicU64,
    /// Writes that collided on a unique secondary index and were repaired from the source's
    /// current documents.
    pub unique_repairs: AtomicU64,
    /// Writes that collided on a unique secondary index with no source to repair from: their
    /// documents were parked.
    pub unique_parked: AtomicU64,
    /// Unique index builds that met duplicate values on the target and were deferred until
    /// later changes removed them.
    pub unique_indexes_deferred: AtomicU64,
    /// Changes and records sent to the source's dead letters (file, SQS queue, Kafka topic).
    pub dead_lettered: AtomicU64,
    /// Writes per sink round trip.
    pub batch_size: Histogram,
    /// Seconds per sink round trip.
    pub apply_latency: Histogram,
    /// Queue depth of each lane, when streaming.
    lane_depths: Mutex<Option<LaneDepths>>,
    /// Archive sinks, all together.
    pub archive: ArchiveCounters,
    /// Kafka sinks and the Kafka source, all together.
    pub kafka: KafkaCounters,
    /// Per sink, by name.
    sinks: Mutex<Vec<Arc<SinkCounters>>>,
    /// One direction of a two-way pipeline.
    pub two_way: TwoWayCounters,
    /// Shards being read (DynamoDB Streams, Kinesis), by id.
    shards: Mutex<Vec<Arc<ShardLag>>>,
}

/// How far behind one shard of a DynamoDB or Kinesis stream is read.
#[derive(Debug)]
pub struct ShardLag {
    /// The shard's id.
    pub id: String,
    /// Records read from it.
    pub records: AtomicU64,
    /// Milliseconds between the newest record of the last read and the time of that read
    /// (Kinesis: `MillisBehindLatest`); 0 when the read found nothing new.
    pub behind_ms: AtomicU64,
}

impl ShardLag {
    /// Records one read of the shard.
    pub fn read(&self, records: u64, behind_ms: i64) {
        self.records.fetch_add(records, Relaxed);
        self.behind_ms.store(behind_ms.max(0) as u64, Relaxed);
    }
}

/// What one direction of a two-way pipeline decided.
#[derive(Debug, Default)]
pub struct TwoWayCounters {
    /// Changes written to the other cluster.
    pub applied: AtomicU64,
    /// Changes dropped because the other cluster held a later change to the document.
    pub stale: AtomicU64,
    /// Of those, changes recorded in `strait.conflicts` (the later change came from the other
    /// cluster).
    pub conflicts: AtomicU64,
    /// Batches that searched the target's change log for a document's last local change.
    pub searches: AtomicU64,
    /// Events read that were strait's own writes (not shipped back).
    pub echoes: AtomicU64,
    /// Conflict records of the cluster this direction writes into, published to
    /// `[two_way.conflict_topic]`.
    pub conflicts_published: AtomicU64,
}

/// What one sink wrote.
#[derive(Debug)]
pub struct SinkCounters {
    /// The sink's name (`sink`, or `<name>` of `[sinks.<name>]`).
    pub name: String,
    /// Its kind (`mongodb`, `kafka`, `archive`).
    pub kind: &'static str,
    /// Events made durable, by operation (insert, update, replace, delete, other).
    written: [AtomicU64; 5],
    /// Events refused for good (sent to the dead-letter topic).
    pub refused: AtomicU64,
}

impl SinkCounters {
    /// Counts a durable event.
    pub fn wrote(&self, op: &OpType) {
        self.written[op_index(op)].fetch_add(1, Relaxed);
    }

    /// Counts refused events.
    pub fn refused(&self, n: u64) {
        self.refused.fetch_add(n, Relaxed);
    }

    /// Events written, by operation name (`insert`, `update`, `replace`, `delete`, `ddl`).
    pub fn written(&self) -> [(&'static str, u64); 5] {
        let w = |i: usize| self.written[i].load(Relaxed);
        [
            ("insert", w(0)),
            ("update", w(1)),
            ("replace", w(2)),
            ("delete", w(3)),
            ("ddl", w(4)),
        ]
    }
}

/// Progress of Kafka sinks and the Kafka source.
#[derive(Debug, Default)]
pub struct KafkaCounters {
    /// Records the brokers confirmed (sinks).
    pub produced: AtomicU64,
    /// Records consumed (source).
    pub consumed: AtomicU64,
    /// Records sent to the dead-letter topic (source).
    pub dead_lettered: AtomicU64,
    /// Offset commits (source).
    pub commits: AtomicU64,
}

/// Progress of the archive sinks.
#[derive(Debug, Default)]
pub struct ArchiveCounters {
    /// Events stored in archive objects.
    pub events: AtomicU64,
    /// Objects written.
    pub objects: AtomicU64,
    /// Bytes written (after compression).
    pub bytes: AtomicU64,
    /// Events replayed after a restart that an earlier run had already archived.
    pub duplicates: AtomicU64,
}

/// Reads the queue depth of every lane.
pub type LaneDepths = Box<dyn Fn() -> Vec<usize> + Send + Sync>;

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A source position as reported (resume token as relaxed Extended JSON).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PositionReport {
    /// Resume token.
    pub token: Option<serde_json::Value>,
    /// Cluster time, seconds.
    pub cluster_time: Option<u32>,
    /// Cluster time, increment.
    pub increment: Option<u32>,
}

impl PositionReport {
    /// From a token document and optional cluster time.
    pub fn new(token: &Document, time: Option<Timestamp>) -> Self {
        Self {
            token: Some(Bson::Document(token.clone()).into_relaxed_extjson()),
            cluster_time: time.map(|t| t.time),
            increment: time.map(|t| t.increment),
        }
    }
}

type RawPosition = (Option<Document>, Option<Timestamp>);

#[derive(Debug, Default)]
struct RawPositions {
    read: RawPosition,
    acknowledged: RawPosition,
    checkpointed: RawPosition,
}

/// Positions of the streaming phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Positions {
    /// Newest position read from the source.
    pub read: PositionReport,
    /// Newest position whose events (and all before) the sink acknowledged.
    pub acknowledged: PositionReport,
    /// Newest position saved in the checkpoint store.
    pub checkpointed: PositionReport,
}

/// Upper bounds of the histogram buckets (the last is +Inf).
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0];
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            state: Mutex::new(PipelineState::Starting),
            read: AtomicU64::new(0),
            applied: Default::default(),
            skipped: AtomicU64::new(0),
            collections: Mutex::new(Vec::new()),
            window: Mutex::new(None),
            last_read_secs: AtomicU32::new(0),
            held_secs: AtomicU32::new(0),
            idle: AtomicBool::new(false),
            started: Instant::now(),
            positions: Mutex::new(RawPositions::default()),
            checkpointed_at: Mutex::new(None),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stream_restarts: AtomicU64::new(0),
            unique_repairs: AtomicU64::new(0),
            unique_parked: AtomicU64::new(0),
            unique_indexes_deferred: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            archive: ArchiveCounters::default(),
            kafka: KafkaCounters::default(),
            sinks: Mutex::new(Vec::new()),
            batch_size: Histogram::new(BATCH_BUCKETS),
            apply_latency: Histogram::new(LATENCY_BUCKETS),
            lane_depths: Mutex::new(None),
            two_way: TwoWayCounters::default(),
            shards: Mutex::new(Vec::new()),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Lifecycle state.
    pub state: PipelineState,
    /// Seconds the sink is behind the source (0 when caught up).
    pub lag_seconds: f64,
    /// Events read.
    pub read: u64,
    /// Writes applied, by operation.
    pub inserts: u64,
    /// Updates applied.
    pub updates: u64,
    /// Replaces applied.
    pub replaces: u64,
    /// Deletes applied.
    pub deletes: u64,
    /// DDL applied.
    pub ddl: u64,
    /// Updates skipped on replay.
    pub skipped: u64,
    /// Events read but not yet written.
    pub pending: usize,
    /// Full-sync progress: (namespace, copied, estimated, done).
    pub collections: Vec<(String, u64, u64, bool)>,
    /// Seconds since start.
    pub uptime_seconds: f64,
}

fn op_index(op: &OpType) -> usize {
    match op {
        OpType::Insert => 0,
        OpType::Update => 1,
        OpType::Replace => 2,
        OpType::Delete => 3,
        _ => 4,
    }
}

impl Telemetry {
    /// Sets the lifecycle state.
    pub fn set_state(&self, s: PipelineState) {
        *self.state.lock().unwrap() = s;
    }

    /// The lifecycle state.
    pub fn state(&self) -> PipelineState {
        *self.state.lock().unwrap()
    }

    /// Counts an applied event.
    pub fn applied(&self, op: &OpType, n: u64) {
        self.applied[op_index(op)].fetch_add(n, Relaxed);
    }

    /// Registers a collection of the full sync.
    pub fn add_collection(
        &self,
        ns: &str,
        estimated: u64,
        copied: u64,
        done: bool,
    ) -> Arc<CollectionProgress> {
        let p = Arc::new(CollectionProgress {
            bytes: AtomicU64::new(0),
            ns: ns.to_string(),
            estimated: AtomicU64::new(estimated),
            copied: AtomicU64::new(copied),
            done: AtomicBool::new(done),
        });
        self.collections.lock().unwrap().push(p.clone());
        p
    }

    /// Forgets full-sync collections (before a resync).
    pub fn clear_collections(&self) {
        self.collections.lock().unwrap().clear();
    }

    /// Full-sync collections.
    pub fn collections(&self) -> Vec<Arc<CollectionProgress>> {
        self.collections.lock().unwrap().clone()
    }

    /// Attaches the ack window of the streaming phase (for lag and queue depth).
    pub fn set_window(&self, w: Option<Arc<AckWindow>>) {
        *self.window.lock().unwrap() = w;
    }

    /// Records the cluster time of what the reader just saw, and whether it is at the head.
    pub fn saw(&self, secs: Option<u32>, idle: bool) {
        if let Some(s) = secs {
            self.last_read_secs.fetch_max(s, Relaxed);
        }
        self.idle.store(idle, Relaxed);
    }

    /// Records the cluster time of the event the engine is holding back before it enters the
    /// ack window (rate limit, target delay), or `None` once it has entered. Without it a
    /// throttled pipeline whose reader is at the head would report no lag.
    pub fn hold(&self, secs: Option<u32>) {
        self.held_secs.store(secs.unwrap_or(0), Relaxed);
    }

    /// Seconds between now and the oldest change not yet written to the sink.
    pub fn lag_seconds(&self) -> f64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let window = self.window.lock().unwrap().clone();
        let oldest = window.as_ref().and_then(|w| w.oldest_pending_time());
        let held = self.held_secs.load(Relaxed);
        match oldest {
            Some(t) => (now - t.time as f64).max(0.0),
            None if held != 0 => (now - held as f64).max(0.0),
            None if self.idle.load(Relaxed) => 0.0,
            None => {
                let last = self.last_read_secs.load(Relaxed);
                if last == 0 {
                    0.0
                } else {
                    (now - last as f64 - 1.0).max(0.0)
                }
            }
        }
    }

    /// Records an error (retried or not).
    pub fn error(&self, message: &str) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap() = Some((message.to_string(), Instant::now()));
    }

    /// The last error and how long ago it happened.
    pub fn last_error(&self) -> Option<(String, Duration)> {
        self.last_error
            .lock()
            .unwrap()
            .as_ref()
            .map(|(m, t)| (m.clone(), t.elapsed()))
    }

    /// Sets the position last read (converted to JSON only when reported).
    pub fn set_read(&self, token: &Document, time: Option<Timestamp>) {
        let mut g = self.positions.lock().unwrap();
        g.read = (Some(token.clone()), time.or(g.read.1));
    }

    /// The counters of a sink (created on first use).
    pub fn sink(&self, name: &str, kind: &'static str) -> Arc<SinkCounters> {
        let mut g = self.sinks.lock().unwrap();
        if let Some(c) = g.iter().find(|c| c.name == name) {
            return c.clone();
        }
        let c = Arc::new(SinkCounters {
            name: name.to_string(),
            kind,
            written: Default::default(),
            refused: AtomicU64::new(0),
        });
        g.push(c.clone());
        c
    }

    /// The lag of a shard being read (created on first use).
    pub fn shard(&self, id: &str) -> Arc<ShardLag> {
        let mut g = self.shards.lock().unwrap();
        if let Some(c) = g.iter().find(|c| c.id == id) {
            return c.clone();
        }
        let c = Arc::new(ShardLag {
            id: id.to_string(),
            records: AtomicU64::new(0),
            behind_ms: AtomicU64::new(0),
        });
        g.push(c.clone());
        c
    }

    /// A shard read to its end: it is no longer reported.
    pub fn shard_done(&self, id: &str) {
        self.shards.lock().unwrap().retain(|c| c.id != id);
    }

    /// The shards being read.
    pub fn shards(&self) -> Vec<Arc<ShardLag>> {
        self.shards.lock().unwrap().clone()
    }

    /// Every sink's counters, `[sink]` first.
    pub fn sinks(&self) -> Vec<Arc<SinkCounters>> {
        self.sinks.lock().unwrap().clone()
    }

    /// Sets the position that every sink acknowledged and the source committed.
    pub fn set_checkpointed(&self, pos: &Position) {
        let Ok(token) = Document::try_from(pos.token.as_ref()) else {
            return;
        };
        let time = pos.time;
        let mut g = self.positions.lock().unwrap();
        g.acknowledged = (Some(token), time.or(g.acknowledged.1));
        g.checkpointed = g.acknowledged.clone();
        *self.checkpointed_at.lock().unwrap() = Some(Instant::now());
    }

    /// Positions of the streaming phase.
    pub fn positions(&self) -> Positions {
        let g = self.positions.lock().unwrap();
        let r = |p: &RawPosition| match &p.0 {
            Some(t) => PositionReport::new(t, p.1),
            None => PositionReport::default(),
        };
        Positions {
            read: r(&g.read),
            acknowledged: r(&g.acknowledged),
            checkpointed: r(&g.checkpointed),
        }
    }

    /// Seconds since the last checkpoint save.
    pub fn checkpoint_age(&self) -> Option<f64> {
        self.checkpointed_at
            .lock()
            .unwrap()
            .map(|t| t.elapsed().as_secs_f64())
    }

    /// Installs (or removes) the lane-depth reader.
    pub fn set_lane_depths(&self, f: Option<LaneDepths>) {
        *self.lane_depths.lock().unwrap() = f;
    }

    /// Queue depth per lane (empty when not streaming).
    pub fn lane_depths(&self) -> Vec<usize> {
        self.lane_depths
            .lock()
            .unwrap()
            .as_ref()
            .map(|f| f())
            .unwrap_or_default()
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> Snapshot {
        let a = |i: usize| self.applied[i].load(Relaxed);
        Snapshot {
            state: self.state(),
            lag_seconds: self.lag_seconds(),
            read: self.read.load(Relaxed),
            inserts: a(0),
            updates: a(1),
            replaces: a(2),
            deletes: a(3),
            ddl: a(4),
            skipped: self.skipped.load(Relaxed),
            pending: self
                .window
                .lock()
                .unwrap()
                .as_ref()
                .map(|w| w.pending())
                .unwrap_or(0),
            collections: self
                .collections()
                .iter()
                .map(|c| {
                    (
                        c.ns.clone(),
                        c.copied.load(Relaxed),
                        c.estimated.load(Relaxed),
                        c.done.load(Relaxed),
                    )
                })
                .collect(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

//! One place where a pipeline's progress is counted. The terminal bars, the log lines (and
//! later the HTTP API and metrics) all read from here, so they never disagree.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::event::OpType;
use crate::pipeline::ack::AckWindow;

/// Lifecycle of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Connecting and checking.
    Starting,
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
#[derive(Debug)]
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
    /// The last read returned no events: the reader is at the head of the stream.
    idle: AtomicBool,
    started: Instant,
}

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
            idle: AtomicBool::new(false),
            started: Instant::now(),
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
    pub fn add_collection(&self, ns: &str, estimated: u64, copied: u64, done: bool) -> Arc<CollectionProgress> {
        let p = Arc::new(CollectionProgress {
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

    /// Seconds between now and the oldest change not yet written to the sink.
    pub fn lag_seconds(&self) -> f64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let window = self.window.lock().unwrap().clone();
        let oldest = window.as_ref().and_then(|w| w.oldest_pending_time());
        match oldest {
            Some(t) => (now - t.time as f64).max(0.0),
            None if self.idle.load(Relaxed) => 0.0,
            None => {
                let last = self.last_read_secs.load(Relaxed);
                if last == 0 { 0.0 } else { (now - last as f64 - 1.0).max(0.0) }
            }
        }
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
            pending: self.window.lock().unwrap().as_ref().map(|w| w.pending()).unwrap_or(0),
            collections: self
                .collections()
                .iter()
                .map(|c| (c.ns.clone(), c.copied.load(Relaxed), c.estimated.load(Relaxed), c.done.load(Relaxed)))
                .collect(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

//! Following a sharded stream (DynamoDB Streams, Kinesis Data Streams): every shard read in
//! order, a child only after its parents' ends are durable, each shard a part of its own whose
//! durable position goes into the progress map the source saves in its checkpoint.
//!
//! The two services differ only in their calls ([`ShardedStream`]); the order, the retries,
//! the renewal of expired iterators, the lineage and the lag per shard live here once.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bson::raw::cstr;
use bson::{RawDocumentBuf, Timestamp};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::Failure;
use super::shards::{self, ListedShard, ShardProgress};
use super::AwsError;
use crate::backoff::Backoff;
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::connectors::dynamodb::record::StreamChange;
use crate::connectors::{Origin, SourceItem};
use crate::core::{ChangeEvent, Namespace, PartId, Position};
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// One record of a shard, decoded by the stream.
pub(crate) struct ShardRecord {
    /// Its sequence number in the shard.
    pub(crate) seq: String,
    /// When it entered the stream (milliseconds since the epoch): records before a shard's
    /// `skip_before_ms` are passed over, and the lag is measured from it.
    pub(crate) arrived_ms: i64,
    /// The origin attribute of its new image (two-way sync), when it has one.
    pub(crate) origin: Option<String>,
    /// The change (its `_id` the record's position), or the raw record and why it cannot be
    /// read, for the dead-letter destination.
    pub(crate) change: std::result::Result<ChangeEvent, (Arc<dyn Origin>, String)>,
}

/// A shard's record as it arrived, for the dead-letter destination.
#[derive(Debug)]
pub(crate) struct ShardOrigin {
    /// The shard.
    pub(crate) shard: String,
    /// The record's sequence number.
    pub(crate) seq: String,
    /// The record's data, when the service hands raw bytes (Kinesis).
    pub(crate) data: Option<Vec<u8>>,
}

impl Origin for ShardOrigin {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn held_bytes(&self) -> usize {
        self.shard.len() + self.seq.len() + self.data.as_ref().map_or(0, Vec::len)
    }
}

impl ShardRecord {
    /// A record of `shard` whose change `decoded` holds (or why it cannot be read): the change
    /// becomes strait's event at the record's position (`{shard, seq}`) through `to_event`; a
    /// record that cannot be read keeps its raw `data` for the dead-letter destination. It
    /// arrived at `arrived_ms` when the service says (Kinesis), else when the change was made.
    pub(crate) fn new(
        shard: &str,
        seq: String,
        decoded: std::result::Result<StreamChange, String>,
        arrived_ms: Option<i64>,
        origin_attribute: &str,
        data: Option<Vec<u8>>,
        to_event: impl FnOnce(&StreamChange, RawDocumentBuf) -> Result<ChangeEvent>,
    ) -> Self {
        let arrived_ms = arrived_ms
            .or_else(|| decoded.as_ref().ok().map(|c| c.created_ms))
            .unwrap_or(0);
        let origin = decoded.as_ref().ok().and_then(|c| {
            c.new_image
                .as_ref()?
                .get(origin_attribute)?
                .as_s()
                .ok()
                .cloned()
        });
        let mut token = RawDocumentBuf::new();
        token.append(cstr!("shard"), shard);
        token.append(cstr!("seq"), seq.as_str());
        let change = decoded
            .and_then(|c| to_event(&c, token).map_err(|e| e.to_string()))
            .map_err(|reason| {
                let origin: Arc<dyn Origin> = Arc::new(ShardOrigin {
                    shard: shard.to_string(),
                    seq: seq.clone(),
                    data,
                });
                (origin, format!("record {seq} of shard {shard}: {reason}"))
            });
        Self {
            seq,
            arrived_ms,
            origin,
            change,
        }
    }
}

/// The error of a `GetShardIterator` that answered without an iterator.
pub(crate) fn no_iterator(shard: &str) -> AwsError {
    AwsError::Call {
        role: crate::error::Role::Source,
        context: format!("opening shard {shard}"),
        failure: Failure::Transient,
        code: String::new(),
        message: "no shard iterator returned".into(),
    }
}

/// What one read of a shard returned.
pub(crate) struct ShardRead {
    /// The records, in the shard's order.
    pub(crate) records: Vec<ShardRecord>,
    /// The iterator of the next read; `None`: the shard is closed and read to its end.
    pub(crate) next: Option<String>,
    /// How far behind the stream's newest record this read ended, when the service says
    /// (Kinesis' `MillisBehindLatest`).
    pub(crate) behind_ms: Option<i64>,
}

/// A stream of shards: the calls of one service.
#[async_trait]
pub(crate) trait ShardedStream: Send + Sync + 'static {
    /// Every shard of the stream, with its parents.
    async fn list_shards(&self) -> Result<Vec<ListedShard>>;

    /// An iterator at the shard's oldest record (`after` = None) or after the record `after`.
    async fn iterator(
        &self,
        shard: &str,
        after: Option<&str>,
    ) -> std::result::Result<String, AwsError>;

    /// One read from `iterator`.
    async fn read(&self, shard: &str, iterator: &str) -> std::result::Result<ShardRead, AwsError>;
}

/// A source whose positions are planned at its first start and saved in strait's checkpoint
/// (DynamoDB, Kinesis): the supervisor prepares it, and plans again after a lost position when
/// `on_history_lost = "resync"`.
#[async_trait]
pub(crate) trait PlannedSource: Send + Sync + 'static {
    /// Loads the saved positions, or plans them; false when there is nothing to do.
    async fn prepare(&self) -> Result<bool>;

    /// Starts over with new positions (and a new copy, where the source copies).
    async fn replan(&self) -> Result<()>;

    /// The namespaces a new plan copies again, whose targets are emptied first (none where
    /// the stream itself is the copy).
    fn copied(&self) -> Vec<Namespace>;
}

/// How a stream is followed.
#[derive(Debug, Clone)]
pub(crate) struct FollowSettings {
    /// Wait between reads of a shard that had nothing new.
    pub(crate) poll_interval: Duration,
    /// How often the shard list is read for new shards.
    pub(crate) shard_refresh: Duration,
    /// Two-way sync: records whose new image carries this origin were written by the other
    /// direction and are passed over.
    pub(crate) ignore_origin: Option<String>,
}

impl FollowSettings {
    /// Whether an item with this origin was written by the other direction of a two-way pair.
    pub(crate) fn is_echo(&self, origin: Option<&str>) -> bool {
        matches!((&self.ignore_origin, origin), (Some(ignore), Some(o)) if o == ignore)
    }
}

/// Reads every shard of a stream, in lineage order, into the engine.
pub(crate) struct Follower<S> {
    /// The service's calls.
    pub(crate) stream: S,
    settings: FollowSettings,
    /// Each shard's durable position (saved by the source in its checkpoint).
    pub(crate) shards: Mutex<BTreeMap<String, ShardProgress>>,
    /// Woken when a shard is done (its children may start).
    shard_done: Notify,
    telemetry: Arc<Telemetry>,
}

/// The position of a shard's record (or of its end, `closed`).
pub(crate) fn shard_position(
    shard: &str,
    seq: Option<&str>,
    closed: bool,
    time: Option<Timestamp>,
) -> Position {
    let mut token = RawDocumentBuf::new();
    token.append(cstr!("shard"), shard);
    if let Some(s) = seq {
        token.append(cstr!("seq"), s);
    }
    token.append(cstr!("closed"), closed);
    Position {
        part: PartId::new(format!("shard/{shard}")),
        token,
        time,
    }
}

fn seconds(ms: i64) -> Timestamp {
    Timestamp {
        time: (ms / 1000).max(0) as u32,
        increment: 0,
    }
}

impl<S: ShardedStream> Follower<S> {
    pub(crate) fn new(
        stream: S,
        settings: FollowSettings,
        shards: BTreeMap<String, ShardProgress>,
        telemetry: &Arc<Telemetry>,
    ) -> Self {
        Self {
            stream,
            settings,
            shards: Mutex::new(shards),
            shard_done: Notify::new(),
            telemetry: telemetry.clone(),
        }
    }

    /// Whether an item with this origin was written by the other direction.
    pub(crate) fn is_echo(&self, origin: Option<&str>) -> bool {
        self.settings.is_echo(origin)
    }

    /// Follows the shards until stopped: starts each shard once its parents are done, looks
    /// for new shards every `shard_refresh`.
    pub(crate) async fn run(
        self: &Arc<Self>,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
    ) -> Result<()> {
        // A shard read to its end stays in `reading` until its end is durable (done), so it is
        // not read again meanwhile; the readers' results only carry their errors.
        let mut readers: JoinSet<Result<()>> = JoinSet::new();
        let mut reading: HashSet<String> = HashSet::new();
        let mut listed = self.stream.list_shards().await?;
        let mut refreshed = tokio::time::Instant::now();
        loop {
            if refreshed.elapsed() >= self.settings.shard_refresh {
                listed = self.stream.list_shards().await?;
                refreshed = tokio::time::Instant::now();
                // Saved with the next commit.
                shards::forget_gone(&listed, &mut *self.shards.lock().await);
            }
            let progress = self.shards.lock().await.clone();
            let ready = shards::ready(&listed, &progress, &reading).map_err(|lost| {
                Error::HistoryLost {
                    position: format!("shard {}", lost.0),
                    detail: "the shard is no longer in the stream (older than its retention) and was not read to its end".into(),
                }
            })?;
            for id in ready {
                let p = progress.get(&id).cloned().unwrap_or_default();
                reading.insert(id.clone());
                let (me, tx, stop) = (self.clone(), tx.clone(), stop.clone());
                readers.spawn(async move { me.read_shard(&id, p, &tx, &stop).await });
            }
            let wait = self
                .settings
                .shard_refresh
                .saturating_sub(refreshed.elapsed());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.shard_done.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = readers.join_next(), if !readers.is_empty() => {
                    done.map_err(|e| Error::Internal(format!("shard reader panicked: {e}")))??;
                }
            }
        }
        while let Some(done) = readers.join_next().await {
            if let Ok(Err(e)) = done {
                return Err(e);
            }
        }
        Ok(())
    }

    fn lost(&self, shard: &str, after: Option<&str>, e: &AwsError) -> Error {
        Error::HistoryLost {
            position: format!("shard {shard} after {}", after.unwrap_or("its start")),
            detail: e.to_string(),
        }
    }

    /// Reads one shard from `p` to its end (or until stopped), in order.
    async fn read_shard(
        &self,
        shard: &str,
        p: ShardProgress,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let lag = self.telemetry.shard(shard);
        let mut last: Option<String> = p.after.clone();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut iterator: Option<String> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.stream.iterator(shard, last.as_deref()).await {
                    Ok(it) => it,
                    Err(e) if e.failure() == Failure::Trimmed => {
                        return Err(self.lost(shard, last.as_deref(), &e))
                    }
                    Err(e) if e.is_retryable() => {
                        warn!(error = %e, shard, "Opening the shard failed; retrying.");
                        if !backoff.wait(Some(stop)).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(Error::Aws(e)),
                },
            };
            let read = match self.stream.read(shard, &it).await {
                Ok(r) => {
                    backoff.reset();
                    r
                }
                Err(e) => match e.failure() {
                    Failure::Trimmed => return Err(self.lost(shard, last.as_deref(), &e)),
                    // A new iterator from the last record read.
                    Failure::IteratorExpired => continue,
                    _ if e.is_retryable() => {
                        warn!(error = %e, shard, "Reading the shard failed; retrying.");
                        if !backoff.wait(Some(stop)).await {
                            return Ok(());
                        }
                        continue;
                    }
                    _ => return Err(Error::Aws(e)),
                },
            };
            let empty = read.records.is_empty();
            let now_ms = bson::DateTime::now().timestamp_millis();
            let newest = read.records.last().map(|r| r.arrived_ms);
            lag.read(
                read.records.len() as u64,
                read.behind_ms
                    .or(newest.map(|t| (now_ms - t).max(0)))
                    .unwrap_or(0),
            );
            let mut skipped: Option<Position> = None;
            for rec in read.records {
                let here =
                    shard_position(shard, Some(&rec.seq), false, Some(seconds(rec.arrived_ms)));
                last = Some(rec.seq.clone());
                if p.skip_before_ms.is_some_and(|skip| rec.arrived_ms < skip) {
                    skipped = Some(here);
                    continue;
                }
                if self.is_echo(rec.origin.as_deref()) {
                    self.telemetry.two_way.echoes.fetch_add(1, Relaxed);
                    skipped = Some(here);
                    continue;
                }
                if let Some(s) = skipped.take() {
                    if tx.send(SourceItem::Progress(s)).await.is_err() {
                        return Ok(());
                    }
                }
                let item = match rec.change {
                    Ok(ev) => SourceItem::Event {
                        pos: here,
                        event: Box::new(ev),
                        origin: None,
                    },
                    Err((origin, reason)) => SourceItem::Undecodable {
                        pos: here,
                        origin,
                        reason,
                    },
                };
                if tx.send(item).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(s) = skipped {
                if tx.send(SourceItem::Progress(s)).await.is_err() {
                    return Ok(());
                }
            }
            match read.next {
                None => {
                    // Closed and read to its end.
                    let end = shard_position(shard, last.as_deref(), true, None);
                    let _ = tx.send(SourceItem::Progress(end)).await;
                    info!(shard, "Shard read to its end.");
                    return Ok(());
                }
                Some(next) => iterator = Some(next),
            }
            if empty {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                }
            }
        }
    }

    /// Takes the durable position of a shard (a token with `shard`) into the map the source
    /// saves next; returns false for other tokens. A shard done wakes the lineage: its children
    /// start (their positions are saved with, or after, their parent's end).
    pub(crate) async fn commit(&self, token: &bson::RawDocument) -> bool {
        let Ok(shard) = token.get_str("shard") else {
            return false;
        };
        let mut map = self.shards.lock().await;
        let e = map.entry(shard.to_string()).or_default();
        if let Ok(seq) = token.get_str("seq") {
            e.after = Some(seq.to_string());
        }
        if token.get_bool("closed").unwrap_or(false) && !e.done {
            e.done = true;
            self.telemetry.shard_done(shard);
            self.shard_done.notify_one();
        }
        true
    }
}

/// Loads a stream source's saved state (and the rest of the checkpoint into `checkpoint`);
/// `None` when nothing is saved.
pub(crate) async fn load_state<T: serde::de::DeserializeOwned>(
    checkpoint: &Checkpointer,
    pipeline: &str,
) -> Result<Option<T>> {
    let saved = checkpoint.store.load(pipeline).await?;
    let Some(doc) = saved.as_ref().and_then(|c| c.source_state.clone()) else {
        return Ok(None);
    };
    *checkpoint.state.lock().await = saved.unwrap_or_default();
    let state = bson::deserialize_from_document(doc)
        .map_err(|e| Error::Checkpoint(CheckpointError::Corrupt(e.to_string())))?;
    info!(store = %checkpoint.store.describe(), "Resuming from checkpoint.");
    Ok(Some(state))
}

/// Saves a stream source's state in the checkpoint.
pub(crate) async fn save_state<T: serde::Serialize>(
    checkpoint: &Checkpointer,
    state: &T,
) -> Result<()> {
    let doc = bson::serialize_to_document(state)
        .map_err(|e| Error::Internal(format!("checkpoint state: {e}")))?;
    checkpoint.state.lock().await.source_state = Some(doc);
    Ok(checkpoint.save().await?)
}

//! The DynamoDB source: a parallel `Scan` of the table for the full sync, then every shard of
//! its stream, a parent before its children, each shard's position saved in the checkpoint.
//!
//! The positions of the stream are fixed before the scan starts: shards already closed hold
//! only older changes and are skipped; open shards are read from their oldest record, passing
//! over records created more than [`SCAN_OVERLAP`] before the scan. Changes during the scan are
//! applied after it (full images, in order per item), so the target converges.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::StreamViewType;
use aws_sdk_dynamodbstreams::types::{OperationType, ShardIteratorType};
use bson::raw::cstr;
use bson::{Document, RawDocumentBuf, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{classify, AwsAccess, Failure};
use super::config::DynamoSourceConfig;
use super::item::{from_stream_item, item_from_bson, item_to_bson, key_names, key_of, Item};
use super::shards::{self, ListedShard, ShardProgress};
use super::DynamoError;
use crate::backoff::Backoff;
use crate::checkpoint::Checkpointer;
use crate::config::{PipelineConfig, StartAt};
use crate::connectors::{Source, SourceItem};
use crate::core::{ChangeEvent, Namespace, PartId, Position};
use crate::error::{Error, Result, Role};
use crate::telemetry::{PipelineState, Telemetry};

/// Stream records created this long before the scan started are applied again after it: they
/// are already in the scan (applying a full image twice changes nothing) and the margin covers
/// a clock difference between this host and DynamoDB.
pub(crate) const SCAN_OVERLAP: Duration = Duration::from_secs(60);

/// The source's part of the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct DynamoState {
    /// The stream the positions belong to (a stream turned off and on again is a new one).
    pub(crate) stream_arn: String,
    /// The full sync's scan, while it is unfinished.
    #[serde(default)]
    pub(crate) scan: Option<ScanProgress>,
    /// Each shard's position.
    #[serde(default)]
    pub(crate) shards: BTreeMap<String, ShardProgress>,
}

/// The parallel scan of the full sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScanProgress {
    /// One per scan segment.
    pub(crate) segments: Vec<SegmentProgress>,
}

/// One segment of the scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SegmentProgress {
    /// The key after which the segment goes on (`ExclusiveStartKey`), as an item document.
    #[serde(default)]
    pub(crate) after: Option<Document>,
    /// Read to its end and durable.
    #[serde(default)]
    pub(crate) done: bool,
}

impl ScanProgress {
    fn finished(&self) -> bool {
        self.segments.iter().all(|s| s.done)
    }
}

/// A DynamoDB table's stream (and the table, for the full sync).
pub(crate) struct DynamoSource {
    cfg: Arc<PipelineConfig>,
    src: DynamoSourceConfig,
    ddb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    key_names: Vec<String>,
    estimated_items: u64,
    target: String,
    checkpoint: Arc<Checkpointer>,
    state: Mutex<DynamoState>,
    /// Woken when a shard is done (its children may start).
    shard_done: Notify,
    telemetry: Arc<Telemetry>,
}

impl DynamoSource {
    /// Connects and checks the table and its stream: it must exist and stream
    /// `NEW_AND_OLD_IMAGES`.
    pub(crate) async fn open(
        src: &DynamoSourceConfig,
        cfg: &Arc<PipelineConfig>,
        checkpoint: Arc<Checkpointer>,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self> {
        let access: AwsAccess = src.access();
        let sdk = access.sdk_config().await;
        let target = access.describe(sdk.region());
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
        let t = &src.table;
        let desc = ddb
            .describe_table()
            .table_name(t)
            .send()
            .await
            .map_err(|e| classify(e, Role::Source, format!("describing table {t}"), &target))
            .map_err(|e| match e.failure() {
                Failure::NotFound => Error::User(format!(
                    "source: DynamoDB table {t} does not exist at {target} (check [source] table and region)"
                )),
                _ => Error::Dynamo(e),
            })?;
        let table = desc
            .table
            .ok_or_else(|| Error::Internal("DescribeTable without a table".into()))?;
        let fix = format!(
            "aws dynamodb update-table --table-name {t} --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES"
        );
        let spec = table.stream_specification.as_ref();
        let (enabled, view) = match spec {
            Some(s) => (s.stream_enabled, s.stream_view_type.clone()),
            None => (false, None),
        };
        let stream_arn = match (&table.latest_stream_arn, enabled) {
            (Some(arn), true) => arn.clone(),
            _ => {
                return Err(Error::User(format!(
                    "source: DynamoDB table {t} has no stream enabled; turn it on with: {fix}"
                )))
            }
        };
        if view != Some(StreamViewType::NewAndOldImages) {
            let view = view.map(|v| v.as_str().to_string()).unwrap_or_default();
            return Err(Error::User(format!(
                "source: the stream of DynamoDB table {t} has view type {view}; strait needs NEW_AND_OLD_IMAGES. A stream's view type cannot change: turn it off (aws dynamodb update-table --table-name {t} --stream-specification StreamEnabled=false), then on again with: {fix}"
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            src: src.clone(),
            ddb,
            streams,
            stream_arn,
            key_names: key_names(table.key_schema()),
            estimated_items: table.item_count.unwrap_or(0).max(0) as u64,
            target,
            checkpoint,
            state: Mutex::new(DynamoState::default()),
            shard_done: Notify::new(),
            telemetry: telemetry.clone(),
        })
    }

    fn ns(&self) -> Namespace {
        Namespace::new(&self.src.database, Some(&self.src.table))
    }

    /// Loads the saved positions, or plans them (and the scan) when there are none. Returns
    /// false when there is nothing to do (a finished full sync in mode `full`).
    pub(crate) async fn prepare(&self) -> Result<bool> {
        let saved = self.checkpoint.store.load(&self.cfg.id).await?;
        let state = match saved.as_ref().and_then(|c| c.source_state.clone()) {
            Some(doc) => {
                let c = saved.clone().unwrap_or_default();
                *self.checkpoint.state.lock().await = c;
                let s: DynamoState = bson::deserialize_from_document(doc).map_err(|e| {
                    Error::Checkpoint(crate::checkpoint::CheckpointError::Corrupt(e.to_string()))
                })?;
                if s.stream_arn != self.stream_arn {
                    return Err(Error::HistoryLost {
                        position: format!("stream {}", s.stream_arn),
                        detail: format!(
                            "the table's stream is now {} (it was turned off and on again)",
                            self.stream_arn
                        ),
                    });
                }
                info!(store = %self.checkpoint.store.describe(), shards = s.shards.len(), "Resuming from checkpoint.");
                s
            }
            None => self.plan().await?,
        };
        let finished_copy = state.scan.is_none();
        *self.state.lock().await = state;
        self.save().await?;
        Ok(self.cfg.mode.streams() || !finished_copy)
    }

    /// Starts over: a new scan and new stream positions (a lost position with
    /// `on_history_lost = "resync"`).
    pub(crate) async fn replan(&self) -> Result<()> {
        let s = self.plan().await?;
        *self.state.lock().await = s;
        self.save().await
    }

    async fn plan(&self) -> Result<DynamoState> {
        let listed = self.list_shards().await?;
        let now_ms = bson::DateTime::now().timestamp_millis();
        let (scan, shards) = if self.cfg.mode.copies() {
            let segments = self.cfg.full_sync.parallelism.max(1);
            let since = now_ms - SCAN_OVERLAP.as_millis() as i64;
            (
                Some(ScanProgress {
                    segments: vec![SegmentProgress::default(); segments],
                }),
                shards::initial(&listed, Some(since), true),
            )
        } else {
            match self.cfg.stream.start_at {
                StartAt::Now => (None, shards::initial(&listed, Some(now_ms), true)),
                StartAt::Timestamp(t) => (
                    None,
                    shards::initial(&listed, Some(i64::from(t) * 1000), false),
                ),
            }
        };
        info!(
            shards = listed.len(),
            scan = scan.is_some(),
            "Planned the stream positions."
        );
        Ok(DynamoState {
            stream_arn: self.stream_arn.clone(),
            scan,
            shards,
        })
    }

    async fn save(&self) -> Result<()> {
        let doc = bson::serialize_to_document(&*self.state.lock().await)
            .map_err(|e| Error::Internal(format!("checkpoint state: {e}")))?;
        self.checkpoint.state.lock().await.source_state = Some(doc);
        Ok(self.checkpoint.save().await?)
    }

    /// Every shard of the stream.
    async fn list_shards(&self) -> Result<Vec<ListedShard>> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let resp = self
                .streams
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.clone())
                .send()
                .await
                .map_err(|e| classify(e, Role::Source, "listing the stream's shards", &self.target))
                .map_err(Error::Dynamo)?;
            let Some(d) = resp.stream_description else {
                break;
            };
            for s in d.shards() {
                let Some(id) = s.shard_id.clone() else {
                    continue;
                };
                out.push(ListedShard {
                    id,
                    parent: s.parent_shard_id.clone(),
                    closed: s
                        .sequence_number_range
                        .as_ref()
                        .and_then(|r| r.ending_sequence_number.as_ref())
                        .is_some(),
                });
            }
            match d.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        Ok(out)
    }

    /// Reads the unfinished scan segments, each as one part, until every item is handed over.
    async fn scan(
        self: &Arc<Self>,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let Some(scan) = self.state.lock().await.scan.clone() else {
            return Ok(());
        };
        if scan.finished() {
            return Ok(());
        }
        self.telemetry.set_state(PipelineState::Copying);
        self.telemetry.clear_collections();
        let progress =
            self.telemetry
                .add_collection(&self.ns().to_string(), self.estimated_items, 0, false);
        let total = scan.segments.len() as i32;
        let mut readers = JoinSet::new();
        for (i, seg) in scan.segments.iter().enumerate() {
            if seg.done {
                continue;
            }
            let (me, tx, stop, seg, progress) = (
                self.clone(),
                tx.clone(),
                stop.clone(),
                seg.clone(),
                progress.clone(),
            );
            readers.spawn(async move {
                me.scan_segment(i as i32, total, seg.after, &tx, &stop, &progress)
                    .await
            });
        }
        while let Some(r) = readers.join_next().await {
            r.map_err(|e| Error::Internal(format!("scan panicked: {e}")))??;
        }
        if !stop.is_cancelled() {
            progress.done.store(true, Relaxed);
            info!(table = %self.src.table, "Scan handed over; streaming follows.");
        }
        Ok(())
    }

    async fn scan_segment(
        &self,
        segment: i32,
        total: i32,
        mut after: Option<Document>,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
        progress: &crate::telemetry::CollectionProgress,
    ) -> Result<()> {
        let part = PartId::new(format!("scan/{segment}"));
        let pos = |after: &Option<Document>, done: bool| {
            let mut token = RawDocumentBuf::new();
            token.append(cstr!("segment"), segment);
            if let Some(a) = after {
                if let Ok(raw) = RawDocumentBuf::try_from(a) {
                    token.append(cstr!("after"), raw);
                }
            }
            token.append(cstr!("done"), done);
            Position {
                part: part.clone(),
                token,
                time: None,
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let start_key = match &after {
                Some(a) => Some(
                    item_from_bson(
                        &RawDocumentBuf::try_from(a)
                            .map_err(|e| Error::Internal(format!("scan position: {e}")))?,
                    )
                    .map_err(|e| Error::Internal(format!("scan position: {e}")))?,
                ),
                None => None,
            };
            let resp = self
                .ddb
                .scan()
                .table_name(&self.src.table)
                .segment(segment)
                .total_segments(total)
                .consistent_read(true)
                .limit(self.cfg.full_sync.batch_docs.clamp(1, 10_000) as i32)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        Role::Source,
                        format!("scanning {}", self.src.table),
                        &self.target,
                    )
                });
            let resp = match resp {
                Ok(r) => {
                    backoff.reset();
                    r
                }
                Err(e) if e.is_retryable() => {
                    warn!(error = %e, "Scan failed; retrying.");
                    if !backoff.wait(Some(stop)).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(Error::Dynamo(e)),
            };
            let here = pos(&after, false);
            let read_at = bson::DateTime::now();
            for item in resp.items.unwrap_or_default() {
                progress.copied.fetch_add(1, Relaxed);
                let origin = item.get(&self.src.origin_attribute);
                if self.written_by_other_side(origin.and_then(|v| v.as_s().ok())) {
                    self.telemetry.two_way.echoes.fetch_add(1, Relaxed);
                    continue;
                }
                let ev = self.scan_event(segment, &item, read_at)?;
                let item = SourceItem::Event {
                    pos: here.clone(),
                    event: Box::new(ev),
                    origin: None,
                };
                if tx.send(item).await.is_err() {
                    return Ok(());
                }
            }
            after = match resp.last_evaluated_key {
                Some(k) => Some(
                    Document::try_from(item_to_bson(&k).as_ref())
                        .map_err(|e| Error::Internal(e.to_string()))?,
                ),
                None => None,
            };
            let done = after.is_none();
            if tx
                .send(SourceItem::Progress(pos(&after, done)))
                .await
                .is_err()
                || done
            {
                return Ok(());
            }
        }
    }

    fn scan_event(
        &self,
        segment: i32,
        item: &Item,
        read_at: bson::DateTime,
    ) -> Result<ChangeEvent> {
        let key = key_of(item, &self.key_names)
            .ok_or_else(|| Error::Internal("scanned item without its key".into()))?;
        let mut token = RawDocumentBuf::new();
        token.append(cstr!("segment"), segment);
        token.append(cstr!("copyingData"), true);
        let mut dynamo = RawDocumentBuf::new();
        dynamo.append(cstr!("eventName"), "INSERT");
        let mut raw = RawDocumentBuf::new();
        raw.append(cstr!("_id"), token);
        raw.append(cstr!("operationType"), "insert");
        raw.append(cstr!("wallTime"), read_at);
        raw.append(cstr!("ns"), self.ns_doc());
        raw.append(cstr!("documentKey"), item_to_bson(&key));
        raw.append(cstr!("fullDocument"), item_to_bson(item));
        raw.append(cstr!("dynamodb"), dynamo);
        Ok(ChangeEvent::from_raw(raw)?)
    }

    fn ns_doc(&self) -> RawDocumentBuf {
        let mut nsd = RawDocumentBuf::new();
        nsd.append(cstr!("db"), self.src.database.as_str());
        nsd.append(cstr!("coll"), self.src.table.as_str());
        nsd
    }

    /// Follows the stream's shards until stopped: starts each shard once its parent is done,
    /// looks for new shards every `shard_refresh`.
    async fn stream(
        self: &Arc<Self>,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
    ) -> Result<()> {
        self.telemetry.set_state(PipelineState::Streaming);
        // A shard read to its end stays in `reading` until its end is durable (done), so it is
        // not read again meanwhile; the readers' results only carry their errors.
        let mut readers: JoinSet<Result<()>> = JoinSet::new();
        let mut reading: HashSet<String> = HashSet::new();
        let mut listed = self.list_shards().await?;
        let mut refreshed = tokio::time::Instant::now();
        loop {
            if refreshed.elapsed() >= self.src.shard_refresh {
                listed = self.list_shards().await?;
                refreshed = tokio::time::Instant::now();
                // Saved with the next commit.
                shards::forget_gone(&listed, &mut self.state.lock().await.shards);
            }
            let progress = self.state.lock().await.shards.clone();
            let ready = shards::ready(&listed, &progress, &reading).map_err(|lost| {
                Error::HistoryLost {
                    position: format!("shard {}", lost.0),
                    detail: "the shard is no longer in the stream (older than its 24-hour retention) and was not read to its end".into(),
                }
            })?;
            for id in ready {
                let p = progress.get(&id).cloned().unwrap_or_default();
                reading.insert(id.clone());
                let (me, tx, stop) = (self.clone(), tx.clone(), stop.clone());
                readers.spawn(async move { me.read_shard(&id, p, &tx, &stop).await });
            }
            let wait = self.src.shard_refresh.saturating_sub(refreshed.elapsed());
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

    async fn iterator(&self, shard: &str, after: Option<&str>) -> Result<String, DynamoError> {
        let req = self
            .streams
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard);
        let req = match after {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let resp = req.send().await.map_err(|e| {
            classify(
                e,
                Role::Source,
                format!("opening shard {shard}"),
                &self.target,
            )
        })?;
        resp.shard_iterator.ok_or_else(|| DynamoError::Call {
            role: Role::Source,
            context: format!("opening shard {shard}"),
            failure: Failure::Transient,
            code: String::new(),
            message: "no shard iterator returned".into(),
        })
    }

    fn lost(&self, shard: &str, after: Option<&str>, e: &DynamoError) -> Error {
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
        let part = PartId::new(format!("shard/{shard}"));
        let pos = |seq: Option<&str>, closed: bool, time: Option<Timestamp>| {
            let mut token = RawDocumentBuf::new();
            token.append(cstr!("shard"), shard);
            if let Some(s) = seq {
                token.append(cstr!("seq"), s);
            }
            token.append(cstr!("closed"), closed);
            Position {
                part: part.clone(),
                token,
                time,
            }
        };
        let mut last: Option<String> = p.after.clone();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut iterator: Option<String> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(shard, last.as_deref()).await {
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
                    Err(e) => return Err(Error::Dynamo(e)),
                },
            };
            let resp = self
                .streams
                .get_records()
                .shard_iterator(&it)
                .limit(1000)
                .send()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        Role::Source,
                        format!("reading shard {shard}"),
                        &self.target,
                    )
                });
            let resp = match resp {
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
                    _ => return Err(Error::Dynamo(e)),
                },
            };
            let records = resp.records.unwrap_or_default();
            let empty = records.is_empty();
            let mut skipped: Option<Position> = None;
            for rec in records {
                let Some(sr) = rec.dynamodb.as_ref() else {
                    continue;
                };
                let Some(seq) = sr.sequence_number.clone() else {
                    continue;
                };
                let ms = sr
                    .approximate_creation_date_time
                    .map(|t| t.to_millis().unwrap_or(0))
                    .unwrap_or(0);
                let time = Some(Timestamp {
                    time: (ms / 1000).max(0) as u32,
                    increment: 0,
                });
                let here = pos(Some(&seq), false, time);
                last = Some(seq.clone());
                if p.skip_before_ms.is_some_and(|skip| ms < skip) {
                    skipped = Some(here);
                    continue;
                }
                let origin = sr
                    .new_image
                    .as_ref()
                    .and_then(|m| m.get(&self.src.origin_attribute));
                if self.written_by_other_side(origin.and_then(|v| v.as_s().ok())) {
                    self.telemetry.two_way.echoes.fetch_add(1, Relaxed);
                    skipped = Some(here);
                    continue;
                }
                if let Some(s) = skipped.take() {
                    if tx.send(SourceItem::Progress(s)).await.is_err() {
                        return Ok(());
                    }
                }
                let item = match self.stream_event(shard, rec, ms) {
                    Ok(ev) => SourceItem::Event {
                        pos: here,
                        event: Box::new(ev),
                        origin: None,
                    },
                    Err(e) => return Err(e),
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
            match resp.next_shard_iterator {
                None => {
                    // Closed and read to its end.
                    let end = pos(last.as_deref(), true, None);
                    let _ = tx.send(SourceItem::Progress(end)).await;
                    info!(shard, "Shard read to its end.");
                    return Ok(());
                }
                Some(next) => iterator = Some(next),
            }
            if empty {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.src.poll_interval) => {}
                }
            }
        }
    }

    /// Whether an item (scanned, or a stream record's new image) with this origin was written
    /// by the other direction of a two-way pair: that direction's scan and stream carry it.
    fn written_by_other_side(&self, origin: Option<&String>) -> bool {
        matches!((&self.src.ignore_origin, origin), (Some(ignore), Some(o)) if o == ignore)
    }

    fn stream_event(
        &self,
        shard: &str,
        rec: aws_sdk_dynamodbstreams::types::Record,
        ms: i64,
    ) -> Result<ChangeEvent> {
        let name = rec.event_name.clone();
        let Some(sr) = rec.dynamodb else {
            return Err(Error::Internal(format!(
                "a stream record of shard {shard} without its change"
            )));
        };
        let seq = sr.sequence_number.clone().unwrap_or_default();
        let op = match &name {
            Some(OperationType::Insert) => "insert",
            Some(OperationType::Modify) => "update",
            Some(OperationType::Remove) => "delete",
            other => {
                return Err(Error::Internal(format!(
                    "stream record {seq} of shard {shard} has event name {other:?}"
                )))
            }
        };
        let mut token = RawDocumentBuf::new();
        token.append(cstr!("shard"), shard);
        token.append(cstr!("seq"), seq.as_str());
        let when = bson::DateTime::from_millis(ms);
        let mut dynamo = RawDocumentBuf::new();
        if let Some(id) = &rec.event_id {
            dynamo.append(cstr!("eventID"), id.as_str());
        }
        dynamo.append(
            cstr!("eventName"),
            name.map(|n| n.as_str().to_string()).unwrap_or_default(),
        );
        if let Some(r) = &rec.aws_region {
            dynamo.append(cstr!("awsRegion"), r.as_str());
        }
        dynamo.append(cstr!("ApproximateCreationDateTime"), when);
        dynamo.append(cstr!("SequenceNumber"), seq.as_str());
        if let Some(n) = sr.size_bytes {
            dynamo.append(cstr!("SizeBytes"), n);
        }
        if let Some(u) = &rec.user_identity {
            let mut ui = RawDocumentBuf::new();
            if let Some(t) = &u.r#type {
                ui.append(cstr!("type"), t.as_str());
            }
            if let Some(p) = &u.principal_id {
                ui.append(cstr!("principalId"), p.as_str());
            }
            dynamo.append(cstr!("userIdentity"), ui);
        }
        let keys = from_stream_item(sr.keys.unwrap_or_default());
        let mut raw = RawDocumentBuf::new();
        raw.append(cstr!("_id"), token);
        raw.append(cstr!("operationType"), op);
        raw.append(
            cstr!("clusterTime"),
            Timestamp {
                time: (ms / 1000).max(0) as u32,
                increment: 0,
            },
        );
        raw.append(cstr!("wallTime"), when);
        raw.append(cstr!("ns"), self.ns_doc());
        raw.append(cstr!("documentKey"), item_to_bson(&keys));
        if let Some(new) = sr.new_image {
            raw.append(cstr!("fullDocument"), item_to_bson(&from_stream_item(new)));
        }
        if let Some(old) = sr.old_image {
            raw.append(
                cstr!("fullDocumentBeforeChange"),
                item_to_bson(&from_stream_item(old)),
            );
        }
        raw.append(cstr!("dynamodb"), dynamo);
        Ok(ChangeEvent::from_raw(raw)?)
    }
}

#[async_trait]
impl Source for Arc<DynamoSource> {
    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()> {
        self.scan(&tx, &stop).await?;
        if stop.is_cancelled() || !self.cfg.mode.streams() {
            return Ok(());
        }
        self.stream(&tx, &stop).await
    }

    async fn commit(&self, durable: &[Position], _last: bool) -> Result<()> {
        let mut any_done = false;
        {
            let mut s = self.state.lock().await;
            for p in durable {
                let t = &p.token;
                if let Ok(segment) = t.get_i32("segment") {
                    let Some(scan) = s.scan.as_mut() else {
                        continue;
                    };
                    if let Some(seg) = scan.segments.get_mut(segment as usize) {
                        seg.after = t
                            .get_document("after")
                            .ok()
                            .and_then(|d| Document::try_from(d).ok());
                        seg.done = t.get_bool("done").unwrap_or(false);
                    }
                    if scan.finished() {
                        s.scan = None;
                    }
                } else if let Ok(shard) = t.get_str("shard") {
                    let e = s.shards.entry(shard.to_string()).or_default();
                    if let Ok(seq) = t.get_str("seq") {
                        e.after = Some(seq.to_string());
                    }
                    if t.get_bool("closed").unwrap_or(false) {
                        e.done = true;
                        any_done = true;
                    }
                }
            }
        }
        self.save().await?;
        if any_done {
            self.shard_done.notify_one();
        }
        Ok(())
    }
}

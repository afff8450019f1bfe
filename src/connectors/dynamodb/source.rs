//! The DynamoDB source: a parallel `Scan` of the table for the full sync, then every shard of
//! its stream, a parent before its children, each shard's position saved in the checkpoint.
//!
//! The positions of the stream are fixed before the scan starts: shards already closed hold
//! only older changes and are skipped; open shards are read from their oldest record, passing
//! over records created more than [`SCAN_OVERLAP`] before the scan. Changes during the scan are
//! applied after it (full images, in order per item), so the target converges.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::StreamViewType;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use bson::raw::cstr;
use bson::{Document, RawDocumentBuf};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::DynamoSourceConfig;
use super::item::{item_from_bson, item_to_bson, key_names, key_of, Item};
use super::record::{EventName, Shape, StreamChange};
use crate::backoff::Backoff;
use crate::checkpoint::Checkpointer;
use crate::config::{PipelineConfig, StartAt};
use crate::connectors::aws::client::{classify, AwsAccess, Failure};
use crate::connectors::aws::dead_letter;
use crate::connectors::aws::follow::{
    load_state, no_iterator, save_state, FollowSettings, Follower, PlannedSource, ShardRead,
    ShardRecord, ShardedStream,
};
use crate::connectors::aws::shards::{self, ListedShard, ShardProgress};
use crate::connectors::aws::AwsError;
use crate::connectors::{DeadLetters, Source, SourceItem};
use crate::core::{ChangeEvent, Namespace, PartId, Position};
use crate::error::{Error, Result, Role};
use crate::telemetry::{PipelineState, Telemetry};

/// Stream records created this long before the scan started are applied again after it: they
/// are already in the scan (applying a full image twice changes nothing) and the margin covers
/// a clock difference between this host and DynamoDB.
pub(crate) const SCAN_OVERLAP: Duration = Duration::from_secs(60);

/// The source's part of the checkpoint (the shards' positions live in the follower while it
/// runs).
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
    stream_arn: String,
    key_names: Vec<String>,
    estimated_items: u64,
    target: String,
    checkpoint: Arc<Checkpointer>,
    /// The full sync's scan while it is unfinished.
    scan: Mutex<Option<ScanProgress>>,
    /// Reads the stream's shards (and holds their positions).
    follower: Arc<Follower<StreamsApi>>,
    telemetry: Arc<Telemetry>,
    /// Where refused changes and unreadable records go, when configured.
    dead_letters: Option<Arc<dyn DeadLetters>>,
}

/// DynamoDB Streams' calls, for the follower.
pub(crate) struct StreamsApi {
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    target: String,
    database: String,
    table: String,
    origin_attribute: String,
    key_names: Vec<String>,
    /// Items as MongoDB documents (the sink is MongoDB).
    documents: bool,
}

/// The shape of events for a sink that is (`documents`) or is not MongoDB.
fn shape(documents: bool, key_names: &[String]) -> Shape<'_> {
    if documents {
        Shape::Documents(key_names)
    } else {
        Shape::DynamoJson
    }
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
                _ => Error::Aws(e),
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
        let api = StreamsApi {
            client: streams,
            stream_arn: stream_arn.clone(),
            target: target.clone(),
            database: src.database.clone(),
            table: src.table.clone(),
            origin_attribute: src.origin_attribute.clone(),
            key_names: key_names(table.key_schema()),
            documents: cfg.mongo_sink().is_some(),
        };
        let settings = FollowSettings {
            poll_interval: src.poll_interval,
            shard_refresh: src.shard_refresh,
            ignore_origin: src.ignore_origin.clone(),
        };
        let keys = dead_letter::DeadLetterKeys {
            file: src.dead_letter_file.as_deref(),
            queue: src.dead_letter_queue.as_deref(),
            kafka: src.dead_letter_kafka.as_ref(),
        };
        let dead_letters = dead_letter::open(keys, &access, &cfg.id, telemetry).await?;
        Ok(Self {
            cfg: cfg.clone(),
            src: src.clone(),
            ddb,
            stream_arn,
            key_names: key_names(table.key_schema()),
            estimated_items: table.item_count.unwrap_or(0).max(0) as u64,
            target,
            checkpoint,
            scan: Mutex::new(None),
            follower: Arc::new(Follower::new(api, settings, BTreeMap::new(), telemetry)),
            telemetry: telemetry.clone(),
            dead_letters,
        })
    }

    fn ns(&self) -> Namespace {
        Namespace::new(&self.src.database, Some(&self.src.table))
    }

    async fn set(&self, state: DynamoState) {
        *self.scan.lock().await = state.scan;
        *self.follower.shards.lock().await = state.shards;
    }

    async fn plan(&self) -> Result<DynamoState> {
        let listed = self.follower.stream.list_shards().await?;
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
        let state = DynamoState {
            stream_arn: self.stream_arn.clone(),
            scan: self.scan.lock().await.clone(),
            shards: self.follower.shards.lock().await.clone(),
        };
        save_state(&self.checkpoint, &state).await
    }

    /// Reads the unfinished scan segments, each as one part, until every item is handed over.
    async fn scan(
        self: &Arc<Self>,
        tx: &mpsc::Sender<SourceItem>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let Some(scan) = self.scan.lock().await.clone() else {
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
                Err(e) => return Err(Error::Aws(e)),
            };
            let here = pos(&after, false);
            let read_at = bson::DateTime::now();
            for item in resp.items.unwrap_or_default() {
                progress.copied.fetch_add(1, Relaxed);
                let origin = item.get(&self.src.origin_attribute);
                if self
                    .follower
                    .is_echo(origin.and_then(|v| v.as_s().ok()).map(String::as_str))
                {
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
        let keys = key_of(item, &self.key_names)
            .ok_or_else(|| Error::Internal("scanned item without its key".into()))?;
        let mut token = RawDocumentBuf::new();
        token.append(cstr!("segment"), segment);
        token.append(cstr!("copyingData"), true);
        let change = StreamChange {
            event_name: EventName::Insert,
            keys,
            new_image: Some(item.clone()),
            old_image: None,
            created_ms: read_at.timestamp_millis(),
            event_id: None,
            region: None,
            table: Some(self.src.table.clone()),
            sequence_number: None,
            size_bytes: None,
            user_identity: None,
        };
        let api = &self.follower.stream;
        change.to_event(
            token,
            &self.src.database,
            &self.src.table,
            shape(api.documents, &api.key_names),
        )
    }
}

#[async_trait]
impl PlannedSource for DynamoSource {
    /// Loads the saved positions, or plans them (and the scan) when there are none. Returns
    /// false when there is nothing to do (a finished full sync in mode `full`).
    async fn prepare(&self) -> Result<bool> {
        let state = match load_state::<DynamoState>(&self.checkpoint, &self.cfg.id).await? {
            Some(s) if s.stream_arn != self.stream_arn => {
                return Err(Error::HistoryLost {
                    position: format!("stream {}", s.stream_arn),
                    detail: format!(
                        "the table's stream is now {} (it was turned off and on again)",
                        self.stream_arn
                    ),
                })
            }
            Some(s) => s,
            None => self.plan().await?,
        };
        let finished_copy = state.scan.is_none();
        self.set(state).await;
        self.save().await?;
        Ok(self.cfg.mode.streams() || !finished_copy)
    }

    /// Starts over: a new scan and new stream positions (a lost position with
    /// `on_history_lost = "resync"`).
    async fn replan(&self) -> Result<()> {
        let s = self.plan().await?;
        self.set(s).await;
        self.save().await
    }

    fn copied(&self) -> Vec<Namespace> {
        vec![self.ns()]
    }
}

#[async_trait]
impl Source for Arc<DynamoSource> {
    fn dead_letters(&self) -> Option<Arc<dyn DeadLetters>> {
        self.dead_letters.clone()
    }

    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()> {
        self.scan(&tx, &stop).await?;
        if stop.is_cancelled() || !self.cfg.mode.streams() {
            return Ok(());
        }
        self.telemetry.set_state(PipelineState::Streaming);
        self.follower.run(&tx, &stop).await
    }

    async fn commit(&self, durable: &[Position], _last: bool) -> Result<()> {
        for p in durable {
            let t = &p.token;
            if self.follower.commit(t).await {
                continue;
            }
            let Ok(segment) = t.get_i32("segment") else {
                continue;
            };
            let mut scan = self.scan.lock().await;
            let Some(progress) = scan.as_mut() else {
                continue;
            };
            if let Some(seg) = progress.segments.get_mut(segment as usize) {
                seg.after = t
                    .get_document("after")
                    .ok()
                    .and_then(|d| Document::try_from(d).ok());
                seg.done = t.get_bool("done").unwrap_or(false);
            }
            if progress.finished() {
                *scan = None;
            }
        }
        self.save().await
    }
}

#[async_trait]
impl ShardedStream for StreamsApi {
    /// Every shard of the stream.
    async fn list_shards(&self) -> Result<Vec<ListedShard>> {
        let mut out = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let resp = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.clone())
                .send()
                .await
                .map_err(|e| classify(e, Role::Source, "listing the stream's shards", &self.target))
                .map_err(Error::Aws)?;
            let Some(d) = resp.stream_description else {
                break;
            };
            for s in d.shards() {
                let Some(id) = s.shard_id.clone() else {
                    continue;
                };
                out.push(ListedShard {
                    id,
                    parents: s.parent_shard_id.clone().into_iter().collect(),
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

    async fn iterator(
        &self,
        shard: &str,
        after: Option<&str>,
    ) -> std::result::Result<String, AwsError> {
        let req = self
            .client
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
        resp.shard_iterator.ok_or_else(|| no_iterator(shard))
    }

    async fn read(&self, shard: &str, iterator: &str) -> std::result::Result<ShardRead, AwsError> {
        let resp = self
            .client
            .get_records()
            .shard_iterator(iterator)
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
            })?;
        let records = resp
            .records
            .unwrap_or_default()
            .into_iter()
            .filter_map(|rec| {
                let seq = rec.dynamodb.as_ref()?.sequence_number.clone()?;
                let decoded = StreamChange::from_streams(rec, &self.table);
                Some(ShardRecord::new(
                    shard,
                    seq,
                    decoded,
                    None,
                    &self.origin_attribute,
                    None,
                    |c, token| {
                        c.to_event(
                            token,
                            &self.database,
                            &self.table,
                            shape(self.documents, &self.key_names),
                        )
                    },
                ))
            })
            .collect();
        Ok(ShardRead {
            records,
            next: resp.next_shard_iterator,
            behind_ms: None,
        })
    }
}

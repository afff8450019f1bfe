//! Reading a change stream: events in order, plus the position of an idle stream, so a quiet
//! source still moves the checkpoint forward and never ages out of the change log.

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::UpdateMode;
use crate::connectors::mongo::driver_error::error_code;
use crate::connectors::SourceItem;
use crate::core::event::{ChangeEvent, OpType};
use crate::core::{PartId, Position};
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;
use crate::transform::scope::WatchTarget;

/// Server codes meaning the requested position is no longer in the change log:
/// ChangeStreamHistoryLost, CappedPositionLost, ChangeStreamFatalError (token not found).
const HISTORY_LOST_CODES: &[i32] = &[286, 136, 280];

/// The one part of a change stream.
pub fn stream_part() -> PartId {
    PartId::new("stream")
}

/// Where a stream starts.
#[derive(Debug, Clone)]
pub enum StartPosition {
    /// Just after this resume token.
    After(Document),
    /// At this cluster time.
    At(Timestamp),
    /// Now.
    Now,
}

/// Settings of a change stream.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Cluster, database or collection.
    pub target: WatchTarget,
    /// Whether updates need the looked-up document.
    pub update_mode: UpdateMode,
    /// Ask for DDL events (`showExpandedEvents`).
    pub ddl: bool,
    /// Events per batch.
    pub batch_size: u32,
    /// Server wait for an empty batch.
    pub max_await: Duration,
    /// Ask for pre-images (`fullDocumentBeforeChange`), and how strictly.
    pub pre_images: Option<crate::config::PreImages>,
}

/// Converts a driver resume token to a document.
pub fn token_to_doc(t: &ResumeToken) -> Result<Document> {
    match bson::serialize_to_bson(t) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(other) => Err(Error::Internal(format!(
            "resume token is not a document: {other}"
        ))),
        Err(e) => Err(Error::Internal(format!("resume token: {e}"))),
    }
}

fn doc_to_token(d: &Document) -> Result<ResumeToken> {
    bson::deserialize_from_bson(Bson::Document(d.clone()))
        .map_err(|e| Error::Internal(format!("resume token: {e}")))
}

/// Opens a change stream. Spawned so that the driver future is never dropped mid-call.
pub async fn open(
    client: &Client,
    s: &StreamSettings,
    start: &StartPosition,
    start_after: bool,
) -> Result<ChangeStream<RawDocumentBuf>> {
    let client = client.clone();
    let s = s.clone();
    let start = start.clone();
    let task = tokio::spawn(async move {
        let full =
            (s.update_mode == UpdateMode::FullDocument).then_some(FullDocumentType::UpdateLookup);
        let before = s.pre_images.map(|p| match p {
            crate::config::PreImages::Required => FullDocumentBeforeChangeType::Required,
            _ => FullDocumentBeforeChangeType::WhenAvailable,
        });
        macro_rules! configure {
            ($w:expr) => {{
                let mut w = $w
                    .batch_size(s.batch_size)
                    .max_await_time(s.max_await)
                    .show_expanded_events(s.ddl);
                if let Some(f) = full.clone() {
                    w = w.full_document(f);
                }
                if let Some(b) = before.clone() {
                    w = w.full_document_before_change(b);
                }
                match &start {
                    StartPosition::After(d) if start_after => w = w.start_after(doc_to_token(d)?),
                    StartPosition::After(d) => w = w.resume_after(doc_to_token(d)?),
                    StartPosition::At(t) => w = w.start_at_operation_time(*t),
                    StartPosition::Now => {}
                }
                w.await.map(|cs| cs.with_type::<RawDocumentBuf>())
            }};
        }
        let res = match &s.target {
            WatchTarget::Cluster => configure!(client.watch()),
            WatchTarget::Database(db) => {
                let db = client.database(db);
                configure!(db.watch())
            }
            WatchTarget::Collection(ns) => {
                let coll = client
                    .database(&ns.db)
                    .collection::<Document>(ns.coll_name());
                configure!(coll.watch())
            }
        };
        res.map_err(|e| classify(e, &start))
    });
    task.await
        .map_err(|e| Error::Internal(format!("watch task failed: {e}")))?
}

fn classify(e: mongodb::error::Error, start: &StartPosition) -> Error {
    if error_code(&e).is_some_and(|c| HISTORY_LOST_CODES.contains(&c)) {
        return Error::HistoryLost {
            position: describe(start),
            detail: e.to_string(),
        };
    }
    Error::mongo(Role::Source, "change stream", e)
}

fn describe(start: &StartPosition) -> String {
    match start {
        StartPosition::After(d) => format!("resume token {d}"),
        StartPosition::At(t) => format!("cluster time {}.{}", t.time, t.increment),
        StartPosition::Now => "now".into(),
    }
}

/// The current head of the change stream: the position a full sync starts from.
pub async fn head_position(client: &Client, s: &StreamSettings) -> Result<Document> {
    let cs = open(client, s, &StartPosition::Now, false).await?;
    let token = cs
        .resume_token()
        .ok_or_else(|| Error::Internal("the source returned no initial resume token".into()))?;
    token_to_doc(&token)
}

/// Reads the stream from `start` into `tx` until cancelled or `tx` closes.
pub async fn read(
    client: Client,
    settings: StreamSettings,
    start: StartPosition,
    tx: mpsc::Sender<SourceItem>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut stream = open(&client, &settings, &start, false).await?;
    let mut last_token: Option<Document> = match &start {
        StartPosition::After(d) => Some(d.clone()),
        _ => None,
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !cancel.is_cancelled() {
        // next_if_any returns within max_await; it is awaited to completion, never dropped.
        match stream.next_if_any().await {
            Ok(Some(raw)) => {
                backoff.reset();
                let ev = ChangeEvent::from_raw(raw)?;
                telemetry
                    .read
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                telemetry.saw(ev.cluster_time.map(|t| t.time), false);
                let token = Document::try_from(ev.resume_token.as_ref())
                    .map_err(|e| Error::Internal(e.to_string()))?;
                telemetry.set_read(&token, ev.cluster_time);
                last_token = Some(token);
                if ev.op == OpType::Invalidate {
                    // The watched collection or database is gone; continue after it.
                    let pos = Position {
                        part: stream_part(),
                        token: ev.resume_token.clone(),
                        time: ev.cluster_time,
                    };
                    if tx.send(SourceItem::Progress(pos)).await.is_err() {
                        return Ok(());
                    }
                    info!("Change stream invalidated (watched namespace dropped or renamed); reopening after it.");
                    telemetry
                        .stream_restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let after = StartPosition::After(last_token.clone().expect("set above"));
                    stream = open(&client, &settings, &after, true).await?;
                    continue;
                }
                let ev = if ev.op == OpType::CreateIndexes {
                    with_source_specs(&client, ev).await
                } else {
                    ev
                };
                let pos = Position {
                    part: stream_part(),
                    token: ev.resume_token.clone(),
                    time: ev.cluster_time,
                };
                let item = SourceItem::Event {
                    pos,
                    event: Box::new(ev),
                    origin: None,
                };
                if tx.send(item).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => {
                telemetry.saw(None, true);
                if let Some(t) = stream.resume_token() {
                    let d = token_to_doc(&t)?;
                    if last_token.as_ref() != Some(&d) {
                        telemetry.set_read(&d, None);
                        let token = RawDocumentBuf::try_from(&d)
                            .map_err(|e| Error::Internal(e.to_string()))?;
                        last_token = Some(d);
                        if tx
                            .send(SourceItem::Progress(Position {
                                part: stream_part(),
                                token,
                                time: None,
                            }))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                }
            }
            Err(e) => {
                let start = last_token
                    .clone()
                    .map(StartPosition::After)
                    .unwrap_or_else(|| start.clone());
                let err = classify(e, &start);
                if !err.is_retryable() {
                    return Err(err);
                }
                warn!(error = %err, "Change stream failed; reopening.");
                telemetry.error(&format!("source: {err}"));
                telemetry
                    .stream_restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !backoff.wait(Some(&cancel)).await {
                    return Ok(());
                }
                match open(&client, &settings, &start, false).await {
                    Ok(s) => stream = s,
                    Err(e) if e.is_retryable() => {
                        warn!(error = %e, "Reopening the change stream failed; will retry.")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// A createIndexes event with the source's full specs of the indexes it names: the event may
/// lack their options (unique, TTL, partial), and sinks apply or publish it as it is. The event
/// is kept as it came when the specs cannot be read.
async fn with_source_specs(client: &Client, ev: ChangeEvent) -> ChangeEvent {
    let names: Vec<String> = ev
        .raw
        .get_document("operationDescription")
        .ok()
        .and_then(|d| d.get_array("indexes").ok())
        .map(|a| {
            a.into_iter()
                .filter_map(|v| {
                    v.ok()?
                        .as_document()?
                        .get_str("name")
                        .ok()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let specs: Vec<Document> = match super::snapshot::list_indexes(client, &ev.source_ns).await {
        Ok(specs) => specs
            .into_iter()
            .filter(|s| {
                s.get_str("name")
                    .is_ok_and(|n| names.iter().any(|m| m == n))
            })
            .collect(),
        Err(e) => {
            warn!(error = %e, "Could not read index specs from the source; using the event's.");
            return ev;
        }
    };
    if specs.is_empty() {
        return ev;
    }
    match ev.with_index_specs(&specs) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "Could not add index specs to the event.");
            ev
        }
    }
}

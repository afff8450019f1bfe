//! The MongoDB sink: turns change events into idempotent writes and sends them as ordered
//! batches.
//!
//! Idempotency is what makes replay after a crash safe: inserts and replaces become replacement
//! upserts by document key, deletes delete by document key, and updates replay the update
//! description (absolute `$set` / `$unset` values, never increments), so applying an event twice
//! leaves the same document as applying it once.

use std::time::Duration;

use bson::raw::{cstr, CStr};
use bson::{doc, rawdoc, Document, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::Client;
use tracing::{debug, warn};

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{LaneBy, MongoEndpoint, PipelineConfig, RouteOp, UpdateMode};
use crate::connectors::mongo::driver_error::{error_code, is_transient, TRANSIENT_CODES};
use crate::connectors::{BatchPolicy, Ordering, Refusal, Sink, Written};
use crate::core::event::{ChangeEvent, EventError, Namespace, OpType};
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;

/// One idempotent write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Replace the document matching `filter` with `doc`, inserting it if absent.
    Upsert {
        /// Target namespace.
        ns: Namespace,
        /// The document key.
        filter: RawDocumentBuf,
        /// The whole new document.
        doc: RawDocumentBuf,
    },
    /// Apply an update document to the document matching `filter`, if it exists.
    Update {
        /// Target namespace.
        ns: Namespace,
        /// The document key.
        filter: RawDocumentBuf,
        /// `$set` / `$unset` / `$push` update.
        update: RawDocumentBuf,
    },
    /// Delete the document matching `filter`.
    Delete {
        /// Target namespace.
        ns: Namespace,
        /// The document key.
        filter: RawDocumentBuf,
    },
    /// Insert `doc` unless a document with its `_id` exists (then do nothing).
    InsertIfAbsent {
        /// Target namespace.
        ns: Namespace,
        /// The document.
        doc: RawDocumentBuf,
    },
}

/// Which write command a [`WriteOp`] goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Update,
    Delete,
    Insert,
}

impl WriteOp {
    fn ns(&self) -> &Namespace {
        match self {
            WriteOp::Upsert { ns, .. }
            | WriteOp::Update { ns, .. }
            | WriteOp::Delete { ns, .. }
            | WriteOp::InsertIfAbsent { ns, .. } => ns,
        }
    }
    fn is_delete(&self) -> bool {
        matches!(self, WriteOp::Delete { .. })
    }
    fn command(&self) -> Command {
        match self {
            WriteOp::Upsert { .. } | WriteOp::Update { .. } => Command::Update,
            WriteOp::Delete { .. } => Command::Delete,
            WriteOp::InsertIfAbsent { .. } => Command::Insert,
        }
    }
    /// Approximate size on the wire, for batching.
    pub fn size(&self) -> usize {
        match self {
            WriteOp::Upsert { filter, doc, .. } => {
                filter.as_bytes().len() + doc.as_bytes().len() + 32
            }
            WriteOp::Update { filter, update, .. } => {
                filter.as_bytes().len() + update.as_bytes().len() + 32
            }
            WriteOp::Delete { filter, .. } => filter.as_bytes().len() + 16,
            WriteOp::InsertIfAbsent { doc, .. } => doc.as_bytes().len() + 16,
        }
    }
}

/// The writes that reproduce one data event on the target (empty when there is nothing to do,
/// e.g. an update that changed nothing, or a looked-up update whose document is gone).
pub fn ops_for_event(ev: &ChangeEvent, mode: UpdateMode) -> Result<Vec<WriteOp>, EventError> {
    let filter = || {
        ev.document_key()
            .map(ToOwned::to_owned)
            .ok_or_else(|| EventError(format!("{} event without documentKey", ev.op.as_str())))
    };
    let ns = ev.ns.clone();
    Ok(match ev.op {
        OpType::Insert | OpType::Replace => {
            let doc = ev.full_document().map(ToOwned::to_owned).ok_or_else(|| {
                EventError(format!("{} event without fullDocument", ev.op.as_str()))
            })?;
            vec![WriteOp::Upsert {
                ns,
                filter: filter()?,
                doc,
            }]
        }
        OpType::Update if mode == UpdateMode::FullDocument && ev.full_document().is_some() => {
            let doc = ev.full_document().map(ToOwned::to_owned).expect("checked");
            vec![WriteOp::Upsert {
                ns,
                filter: filter()?,
                doc,
            }]
        }
        // Delta mode, or a lookup that found nothing (deleted since): replay the description,
        // so a pipeline that skips deletes still keeps the last update.
        OpType::Update => {
            let ud = ev
                .update_description()
                .ok_or_else(|| EventError("update event without updateDescription".into()))?;
            let filter = filter()?;
            update_ops(ud)?
                .into_iter()
                .map(|update| WriteOp::Update {
                    ns: ns.clone(),
                    filter: filter.clone(),
                    update,
                })
                .collect()
        }
        OpType::Delete => vec![WriteOp::Delete {
            ns,
            filter: filter()?,
        }],
        _ => vec![],
    })
}

/// Update documents reproducing an update description: first the array truncations (as
/// `$push` with `$each: []` and `$slice`), then `$set` of updatedFields and `$unset` of
/// removedFields. Truncation goes in its own update because `$push` on `arr` conflicts with a
/// `$set` of `arr.N` in one update.
pub fn update_ops(ud: &RawDocument) -> Result<Vec<RawDocumentBuf>, EventError> {
    let bad = |e: &dyn std::fmt::Display| EventError(format!("bad updateDescription: {e}"));
    let mut out = Vec::new();
    if let Ok(truncated) = ud.get_array("truncatedArrays") {
        let mut push = RawDocumentBuf::new();
        for t in truncated {
            let t = t.map_err(|e| bad(&e))?;
            let RawBsonRef::Document(t) = t else {
                return Err(bad(&"truncatedArrays entry is not a document"));
            };
            let field = t.get_str("field").map_err(|e| bad(&e))?;
            let size = match t.get("newSize").map_err(|e| bad(&e))? {
                Some(RawBsonRef::Int32(n)) => n as i64,
                Some(RawBsonRef::Int64(n)) => n,
                Some(RawBsonRef::Double(n)) => n as i64,
                _ => return Err(bad(&"truncatedArrays entry without newSize")),
            };
            push.append(
                key(field)?,
                rawdoc! { "$each": RawArrayBuf::new(), "$slice": size },
            );
        }
        if !push.is_empty() {
            out.push(rawdoc! { "$push": push });
        }
    }
    let mut update = RawDocumentBuf::new();
    if let Ok(set) = ud.get_document("updatedFields") {
        if !set.is_empty() {
            update.append(cstr!("$set"), set.to_owned());
        }
    }
    if let Ok(removed) = ud.get_array("removedFields") {
        let mut unset = RawDocumentBuf::new();
        for f in removed {
            match f.map_err(|e| bad(&e))? {
                RawBsonRef::String(f) => unset.append(key(f)?, ""),
                _ => return Err(bad(&"removedFields entry is not a string")),
            }
        }
        if !unset.is_empty() {
            update.append(cstr!("$unset"), unset);
        }
    }
    if !update.is_empty() {
        out.push(update);
    }
    Ok(out)
}

fn key(s: &str) -> Result<&CStr, EventError> {
    <&CStr>::try_from(s).map_err(|e| EventError(format!("bad field name {s:?}: {e}")))
}

/// Server codes of an update that does not fit the target document's current shape. They occur
/// when a replay (after a crash, or of changes made during the copy) meets a document that
/// already holds a later state; later events of the same document repair it, so the write is
/// skipped rather than failing the pipeline.
const SHAPE_MISMATCH_CODES: &[i32] = &[2, 14, 16, 28, 40, 54, 66];

/// Writes larger than this go alone through the driver's write path (see `apply_large`).
const LARGE_WRITE: usize = 15 * 1024 * 1024;

/// Counts of what a batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyCounts {
    /// Writes the server accepted.
    pub written: u64,
    /// Updates skipped because the target document had another shape (see above).
    pub skipped: u64,
}

/// A MongoDB sink.
#[derive(Debug, Clone)]
pub struct MongoSink {
    client: Client,
    telemetry: Option<std::sync::Arc<crate::telemetry::Telemetry>>,
    write_concern: Document,
    /// Give up on a transient failure after this long.
    retry_for: Duration,
    /// Shutdown: stop retrying (what is unwritten stays unacknowledged).
    cancel: Option<tokio_util::sync::CancellationToken>,
    /// How it takes part in a pipeline.
    route: Route,
    /// Where duplicate keys on unique indexes are repaired from.
    lookup: SourceLookup,
    /// Strait's database on the target (`checkpoint.database`).
    meta_db: String,
    /// The pipeline's id (names its parking collections).
    pipeline: String,
    /// Documents set aside after a unique-index collision when there is no source to read.
    parking: Arc<parking::Parking>,
    /// Unique indexes whose build met duplicate values, built again later.
    deferred: Arc<deferred_index::DeferredIndexes>,
}

/// What a pipeline's MongoDB sink receives and how it writes it.
#[derive(Debug, Clone)]
struct Route {
    name: String,
    target: String,
    ops: Option<Vec<RouteOp>>,
    update_mode: UpdateMode,
    ordering: Ordering,
    batch_docs: usize,
}

impl MongoSink {
    /// A sink writing through `client` with write concern majority.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            telemetry: None,
            write_concern: doc! { "w": "majority" },
            retry_for: Duration::from_secs(300),
            cancel: None,
            route: Route {
                name: "sink".into(),
                target: String::new(),
                ops: None,
                update_mode: UpdateMode::default(),
                ordering: Ordering::ByKey { lanes: 1 },
                batch_docs: 500,
            },
            lookup: SourceLookup::default(),
            meta_db: "strait".into(),
            pipeline: "sink".into(),
            parking: Arc::default(),
            deferred: Arc::default(),
        }
    }

    /// Sleeps `every`; false once the sink is shut down (its background tasks end then).
    async fn sleep_unless_stopped(&self, every: Duration) -> bool {
        let stop = async {
            match &self.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop => false,
            _ = tokio::time::sleep(every) => true,
        }
    }

    /// Reads documents' current state from `source` to repair duplicate keys on unique
    /// indexes (then [`Self::finish_interrupted_repairs`] before applying anything).
    pub(crate) fn repair_from(&self, source: Client) {
        self.lookup.set(source);
    }

    /// Connects to the pipeline's MongoDB sink `endpoint` (checked with a ping).
    pub async fn open(
        name: &str,
        endpoint: &MongoEndpoint,
        cfg: &PipelineConfig,
        telemetry: &Arc<Telemetry>,
        cancel: &CancellationToken,
    ) -> Result<Self> {
        let client = super::connect::connect(endpoint, Role::Sink).await?;
        let mut s = Self::new(client)
            .with_telemetry(telemetry.clone())
            .with_cancel(cancel.clone());
        let lanes = cfg.apply.lanes;
        s.route = Route {
            name: name.to_string(),
            target: crate::connectors::mongo::config::redact_uri(&endpoint.uri),
            ops: endpoint.ops.clone(),
            update_mode: cfg.stream.update_mode,
            ordering: match cfg.apply.lane_by {
                LaneBy::Document => Ordering::ByKey { lanes },
                LaneBy::Namespace => Ordering::ByNamespace { lanes },
            },
            batch_docs: cfg.apply.batch_docs,
        };
        s.meta_db = cfg.checkpoint.database.clone();
        s.pipeline = format!("{}.{name}", cfg.id);
        Ok(s)
    }

    /// The writes of one event: what [`ops_for_event`] gives, except that a snapshot insert
    /// (a Kafka capture's initial copy, or `write = "insert"`) is insert-if-absent, and a
    /// delete this sink does not take keeps its pre-image (append-only copies).
    pub fn writes_for(&self, ev: &ChangeEvent) -> Result<Vec<WriteOp>, EventError> {
        if !self.takes_op(&ev.op) {
            // A delete kept off the sink still leaves its document here: if it is missing
            // (deleted during the initial copy, before it was read), the pre-image is inserted,
            // so the copy is the source "minus nothing".
            return Ok(match delete_pre_image(ev) {
                Some(pre) => vec![WriteOp::InsertIfAbsent {
                    ns: ev.ns.clone(),
                    doc: pre.to_owned(),
                }],
                None => vec![],
            });
        }
        match ev.full_document() {
            // If the document exists it holds this state or a later one whose events follow,
            // so leaving it is as right as replacing it, and much cheaper.
            Some(doc) if ev.is_snapshot() && ev.op == OpType::Insert => {
                Ok(vec![WriteOp::InsertIfAbsent {
                    ns: ev.ns.clone(),
                    doc: doc.to_owned(),
                }])
            }
            _ => ops_for_event(ev, self.route.update_mode),
        }
    }

    fn takes_op(&self, op: &OpType) -> bool {
        match &self.route.ops {
            None => true,
            Some(ops) => ops.iter().any(|o| o.matches(op)),
        }
    }

    /// Stops retrying failed writes once `cancel` fires, so a shutdown does not wait for a
    /// sink that is down.
    pub fn with_cancel(mut self, cancel: tokio_util::sync::CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Waits before a retry; `Err(Error::Stopped)` if shutdown comes first.
    pub(crate) async fn backoff(&self, backoff: &mut Backoff) -> Result<()> {
        if backoff.wait(self.cancel.as_ref()).await {
            Ok(())
        } else {
            Err(Error::Stopped)
        }
    }

    /// Reports retried errors to `t`.
    pub fn with_telemetry(mut self, t: std::sync::Arc<crate::telemetry::Telemetry>) -> Self {
        self.telemetry = Some(t);
        self
    }

    pub(crate) fn note_error(&self, message: &str) {
        if let Some(t) = &self.telemetry {
            t.error(message);
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies `ops` in order. Consecutive writes to one namespace go in one command. Transient
    /// failures are retried from the failed write on (writes before it are known applied).
    pub async fn apply(&self, ops: &[WriteOp]) -> Result<ApplyCounts> {
        let mut counts = ApplyCounts::default();
        if !self.parks() {
            self.apply_from(ops, &mut counts).await?;
            return Ok(counts);
        }
        // A write that parks its document changes where that document's later writes go:
        // the rest is planned again.
        let mut from = 0;
        while from < ops.len() {
            let planned = self.plan(&ops[from..]).await?;
            match self.apply_from(&planned.ops, &mut counts).await? {
                None => break,
                Some(parked) => from += parked + 1,
            }
        }
        Ok(counts)
    }

    /// [`Self::apply`] of writes planned already; stops after a write whose document it
    /// parked and says which.
    async fn apply_from(&self, ops: &[WriteOp], counts: &mut ApplyCounts) -> Result<Option<usize>> {
        let mut start = 0;
        while start < ops.len() {
            let mut end = start + 1;
            let mut bytes = ops[start].size();
            while end < ops.len()
                && ops[end].ns() == ops[start].ns()
                && ops[end].command() == ops[start].command()
                && bytes + ops[end].size() < 8 * 1024 * 1024
            {
                bytes += ops[end].size();
                end += 1;
            }
            if let Some(i) = self.apply_run(&ops[start..end], counts).await? {
                return Ok(Some(start + i));
            }
            start = end;
        }
        Ok(None)
    }

    /// Applies a run of writes to one namespace that go in one kind of command. `Some(i)` when
    /// it parked the document of write `i` and stopped there (see [`parking`]).
    async fn apply_run(&self, run: &[WriteOp], counts: &mut ApplyCounts) -> Result<Option<usize>> {
        let mut from = 0;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = std::time::Instant::now();
        while from < run.len() {
            let ns = run[from].ns().clone();
            if run.len() - from == 1 && run[from].size() > LARGE_WRITE {
                // A near-16 MB document does not fit in a command body with its envelope;
                // the driver's own write path sends it as a document sequence.
                self.apply_large(&run[from]).await?;
                counts.written += 1;
                return Ok(None);
            }
            let cmd = self.command(&run[from..])?;
            let client = self.client.clone();
            let db = ns.db.clone();
            // Spawned: a driver future must never be dropped mid-call.
            let reply =
                tokio::spawn(async move { client.database(&db).run_raw_command(cmd).await })
                    .await
                    .map_err(|e| Error::Internal(format!("write task failed: {e}")))?;
            let failure = match reply {
                Ok(reply) if run[from].command() == Command::Insert => {
                    match insert_failure(&reply) {
                        InsertOutcome::Done { present } => {
                            counts.written += (run.len() - from) as u64;
                            if present > 0 {
                                debug!(ns = %ns, present, "Documents already on the target (replayed snapshot records).");
                            }
                            return Ok(None);
                        }
                        // Inserts-if-absent are idempotent: the whole run is tried again.
                        InsertOutcome::Transient(why) => RunFailure::Transient(why),
                        InsertOutcome::Collided(collided) if self.parks() => {
                            match self.park_all(&run[from..], &collided).await? {
                                parking::Step::Retry(why) => RunFailure::Transient(why),
                                _ => {
                                    counts.written += (run.len() - from) as u64;
                                    return Ok(Some(run.len() - 1));
                                }
                            }
                        }
                        InsertOutcome::Collided(collided) => {
                            match self.repair_all(&ns, &run[from..], collided).await {
                                Ok(None) => {
                                    counts.written += (run.len() - from) as u64;
                                    return Ok(None);
                                }
                                Ok(Some(why)) => RunFailure::Transient(why),
                                Err(e) => return Err(e),
                            }
                        }
                        InsertOutcome::Rejected(code, message) => {
                            return Err(Error::Rejected {
                                ns: ns.to_string(),
                                code,
                                message,
                            })
                        }
                    }
                }
                Ok(reply) => match first_write_error(&reply) {
                    None => {
                        if let Ok(wce) = reply.get_document("writeConcernError") {
                            RunFailure::Transient(format!("write concern error: {wce}"))
                        } else {
                            counts.written += (run.len() - from) as u64;
                            return Ok(None);
                        }
                    }
                    Some((index, code, msg, we)) => {
                        counts.written += index as u64;
                        from += index;
                        let op = &run[from];
                        if TRANSIENT_CODES.contains(&code) {
                            RunFailure::Transient(format!("code {code}: {msg}"))
                        } else if matches!(op, WriteOp::Update { .. })
                            && SHAPE_MISMATCH_CODES.contains(&code)
                        {
                            debug!(ns = %ns, code, msg, "skipped an update that does not fit the target document");
                            counts.skipped += 1;
                            from += 1;
                            continue;
                        } else if code == 11000 && op.command() == Command::Insert {
                            // Already there: nothing to do.
                            counts.written += 1;
                            from += 1;
                            continue;
                        } else if code == 11000
                            && !op.is_delete()
                            && self.parks()
                            && unique::on_secondary_index(we)
                        {
                            // A unique secondary index collided and there is no source to
                            // repair from: the document is parked.
                            match self.park(op).await? {
                                parking::Step::Retry(why) => RunFailure::Transient(why),
                                _ => {
                                    counts.written += 1;
                                    return Ok(Some(from));
                                }
                            }
                        } else if code == 11000 && !op.is_delete() {
                            // A unique secondary index collided: repaired from the source's
                            // current documents (when that does not settle, retried).
                            // On `_id`: a concurrent upsert of the same document (a repair);
                            // trying again finds it.
                            let repaired = if unique::on_secondary_index(we) {
                                self.repair_one(&ns, op, unique::dup_key_value(we)).await
                            } else {
                                Ok(false)
                            };
                            match repaired {
                                Ok(true) => {
                                    counts.written += 1;
                                    from += 1;
                                    continue;
                                }
                                Ok(false) => RunFailure::Transient(format!("duplicate key: {msg}")),
                                Err(e) => return Err(e),
                            }
                        } else {
                            return Err(Error::Rejected {
                                ns: ns.to_string(),
                                code,
                                message: msg.to_string(),
                            });
                        }
                    }
                },
                Err(e) if is_transient(&e) || error_code(&e) == Some(11000) => {
                    RunFailure::Transient(e.to_string())
                }
                Err(e) => return Err(Error::mongo(Role::Sink, format!("writing to {ns}"), e)),
            };
            let RunFailure::Transient(why) = failure;
            if started.elapsed() > self.retry_for {
                return Err(Error::User(format!(
                    "sink: writes to {ns} kept failing for {:?}: {why}",
                    self.retry_for
                )));
            }
            warn!(ns = %ns, error = %why, "Sink write failed; retrying.");
            self.note_error(&format!("sink: writing to {ns}: {why}"));
            self.backoff(&mut backoff).await?;
        }
        Ok(None)
    }

    async fn apply_large(&self, op: &WriteOp) -> Result<()> {
        let ns = op.ns().clone();
        let coll = self
            .client
            .database(&ns.db)
            .collection::<RawDocumentBuf>(ns.coll_name());
        let op = op.clone();
        let res = tokio::spawn(async move {
            match op {
                WriteOp::Upsert { filter, doc, .. } => {
                    let filter =
                        Document::try_from(filter).map_err(|e| Error::Internal(e.to_string()))?;
                    coll.replace_one(filter, doc)
                        .upsert(true)
                        .await
                        .map(|_| ())
                        .map_err(Error::from_sink)
                }
                WriteOp::Update { filter, update, .. } => {
                    let filter =
                        Document::try_from(filter).map_err(|e| Error::Internal(e.to_string()))?;
                    let update =
                        Document::try_from(update).map_err(|e| Error::Internal(e.to_string()))?;
                    coll.update_one(filter, update)
                        .await
                        .map(|_| ())
                        .map_err(Error::from_sink)
                }
                WriteOp::Delete { .. } => Ok(()),
                WriteOp::InsertIfAbsent { doc, .. } => match coll.insert_one(doc).await {
                    Err(e) if error_code(&e) == Some(11000) => Ok(()),
                    r => r.map(|_| ()).map_err(Error::from_sink),
                },
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("write task failed: {e}")))?;
        res.map_err(|e| match e {
            Error::Mongo { source, .. } => {
                Error::User(format!("sink rejected a large write to {ns}: {source}"))
            }
            other => other,
        })
    }

    /// Repairs one write that collided on a unique index (see [`unique`]); false when it
    /// cannot (no source to read, or it did not settle) and the write should be retried.
    async fn repair_one(&self, ns: &Namespace, op: &WriteOp, kv: Option<Document>) -> Result<bool> {
        if !self.can_repair() {
            return Ok(false);
        }
        let id = match op {
            WriteOp::Upsert { filter, .. } | WriteOp::Update { filter, .. } => filter.get("_id"),
            WriteOp::InsertIfAbsent { doc, .. } => doc.get("_id"),
            WriteOp::Delete { .. } => return Ok(false),
        };
        let Some(id) = id.ok().flatten().and_then(|v| bson::Bson::try_from(v).ok()) else {
            return Ok(false);
        };
        match self.repair_duplicate(ns, id, kv).await {
            Ok(true) => {
                if let Some(t) = &self.telemetry {
                    t.unique_repairs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) if e.is_retryable() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`Self::repair_one`] for each insert of a run that collided; `Some(reason)` when one
    /// must be retried.
    async fn repair_all(
        &self,
        ns: &Namespace,
        run: &[WriteOp],
        collided: Vec<(usize, Option<Document>)>,
    ) -> Result<Option<String>> {
        for (i, kv) in collided {
            let Some(op) = run.get(i) else { continue };
            if !self.repair_one(ns, op, kv.clone()).await? {
                return Ok(Some(format!(
                    "duplicate key on a unique index inserting into {ns}: {kv:?}"
                )));
            }
        }
        Ok(None)
    }

    /// [`Self::park`] for each insert of a run that collided.
    async fn park_all(
        &self,
        run: &[WriteOp],
        collided: &[(usize, Option<Document>)],
    ) -> Result<parking::Step> {
        for (i, _) in collided {
            if let Some(op) = run.get(*i) {
                if let parking::Step::Retry(why) = self.park(op).await? {
                    return Ok(parking::Step::Retry(why));
                }
            }
        }
        Ok(parking::Step::Done)
    }

    /// The `update` or `delete` command for a run of writes to one namespace.
    fn command(&self, run: &[WriteOp]) -> Result<RawDocumentBuf> {
        let ns = run[0].ns();
        let coll = ns.coll_name();
        let wc = RawDocumentBuf::try_from(&self.write_concern)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut stmts = RawArrayBuf::new();
        if run[0].command() == Command::Insert {
            for op in run {
                if let WriteOp::InsertIfAbsent { doc, .. } = op {
                    stmts.push(doc.clone());
                }
            }
            // Unordered: every insert is tried, so a batch of documents that are already there
            // (replayed snapshot records) costs one round trip, not one per duplicate.
            return Ok(
                rawdoc! { "insert": coll, "documents": stmts, "ordered": false, "writeConcern": wc },
            );
        }
        if run[0].is_delete() {
            for op in run {
                if let WriteOp::Delete { filter, .. } = op {
                    stmts.push(rawdoc! { "q": filter.clone(), "limit": 1_i32 });
                }
            }
            Ok(rawdoc! { "delete": coll, "deletes": stmts, "ordered": true, "writeConcern": wc })
        } else {
            for op in run {
                match op {
                    WriteOp::Upsert { filter, doc, .. } => {
                        stmts.push(rawdoc! { "q": filter.clone(), "u": doc.clone(), "upsert": true, "multi": false })
                    }
                    WriteOp::Update { filter, update, .. } => {
                        stmts.push(rawdoc! { "q": filter.clone(), "u": update.clone(), "upsert": false, "multi": false })
                    }
                    WriteOp::Delete { .. } | WriteOp::InsertIfAbsent { .. } => {}
                }
            }
            Ok(rawdoc! { "update": coll, "updates": stmts, "ordered": true, "writeConcern": wc })
        }
    }
}

enum RunFailure {
    Transient(String),
}

/// What an unordered insert of documents-if-absent came to.
#[derive(Debug, PartialEq)]
enum InsertOutcome {
    /// Every document is on the target; `present` of them were there already.
    Done { present: usize },
    /// These documents (index in the run, `keyValue`) collided on a unique secondary index;
    /// the others are on the target.
    Collided(Vec<(usize, Option<Document>)>),
    /// Worth trying the run again.
    Transient(String),
    /// Refused for good.
    Rejected(i32, String),
}

/// Reads an unordered insert's reply: duplicate-key errors mean "already there".
fn insert_failure(reply: &Document) -> InsertOutcome {
    let errs = reply
        .get_array("writeErrors")
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut present = 0;
    let mut collided = Vec::new();
    for e in errs.iter().filter_map(bson::Bson::as_document) {
        let code = int_field(e, "code").unwrap_or(-1) as i32;
        let msg = e.get_str("errmsg").unwrap_or("").to_string();
        if code == 11000 && unique::on_secondary_index(e) {
            let index = int_field(e, "index").unwrap_or(0) as usize;
            collided.push((index, unique::dup_key_value(e)));
        } else if code == 11000 {
            present += 1;
        } else if TRANSIENT_CODES.contains(&code) {
            return InsertOutcome::Transient(format!("code {code}: {msg}"));
        } else {
            return InsertOutcome::Rejected(code, msg);
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return InsertOutcome::Transient(format!("write concern error: {wce}"));
    }
    if !collided.is_empty() {
        return InsertOutcome::Collided(collided);
    }
    InsertOutcome::Done { present }
}

/// An integer field of a write error (`index`, `code`), whichever integer type it came in.
fn int_field(e: &Document, key: &str) -> Option<i64> {
    match e.get(key) {
        Some(bson::Bson::Int32(v)) => Some(i64::from(*v)),
        Some(bson::Bson::Int64(v)) => Some(*v),
        _ => None,
    }
}

/// The first write error of a reply: its index in the command, code, message, and the error
/// document itself (for `keyPattern` / `keyValue`).
fn first_write_error(reply: &Document) -> Option<(usize, i32, String, &Document)> {
    let errs = reply.get_array("writeErrors").ok()?;
    let first = errs.first()?.as_document()?;
    let index = int_field(first, "index").unwrap_or(0) as usize;
    let code = int_field(first, "code").unwrap_or(-1) as i32;
    let msg = first.get_str("errmsg").unwrap_or("").to_string();
    Some((index, code, msg, first))
}

#[async_trait]
impl Sink for MongoSink {
    fn name(&self) -> &str {
        &self.route.name
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn describe(&self) -> String {
        self.route.target.clone()
    }

    fn takes(&self, op: &OpType) -> bool {
        self.takes_op(op)
    }

    fn accepts(&self, ev: &ChangeEvent) -> bool {
        self.takes_op(&ev.op) || delete_pre_image(ev).is_some()
    }

    fn ordering(&self) -> Ordering {
        self.route.ordering
    }

    fn batching(&self) -> BatchPolicy {
        BatchPolicy {
            max_events: self.route.batch_docs,
            max_bytes: 48 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    fn needs_barrier(&self, ev: &ChangeEvent) -> bool {
        !ev.op.is_data()
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let mut written = Written::default();
        let mut ops: Vec<WriteOp> = Vec::new();
        let mut ranges: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, ev) in batch.iter().enumerate() {
            self.lookup.note(&ev.ns, &ev.source_ns);
            if !ev.op.is_data() {
                // DDL comes alone (the engine makes it a barrier); anything before it first.
                self.write_ops(&ops, &ranges, &mut written).await?;
                ops.clear();
                ranges.clear();
                match self.apply_ddl(ev).await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() || matches!(e, Error::Stopped) => return Err(e),
                    Err(error) => written.refused.push(Refusal { index: i, error }),
                }
                continue;
            }
            match self.writes_for(ev) {
                Ok(mut w) => {
                    let start = ops.len();
                    ops.append(&mut w);
                    ranges.push((i, start..ops.len()));
                }
                Err(e) => written.refused.push(Refusal {
                    index: i,
                    error: Error::Event(e),
                }),
            }
        }
        self.write_ops(&ops, &ranges, &mut written).await?;
        Ok(written)
    }

    fn takes_copy(&self) -> bool {
        true
    }

    async fn prepare_copy(&self, ns: &Namespace, options: &Document, drop: bool) -> Result<()> {
        if drop {
            self.drop_collection(ns).await?;
        }
        self.create_collection(ns, options).await
    }

    async fn copy(&self, ns: &Namespace, docs: Vec<RawDocumentBuf>) -> Result<u64> {
        self.insert_copy(ns, docs).await
    }

    async fn finish_copy(&self, ns: &Namespace, indexes: &[Document]) -> Result<()> {
        if let Err(e) = self.build_or_defer(ns, indexes).await {
            // One unsupported index must not cost the others.
            warn!(%ns, error = %e, "Building all indexes at once failed; building them one by one.");
            for spec in indexes {
                if let Err(e) = self.build_or_defer(ns, std::slice::from_ref(spec)).await {
                    warn!(%ns, index = %spec.get_str("name").unwrap_or("?"), error = %e, "Index not created on the sink.");
                }
            }
        }
        Ok(())
    }

    async fn drop_for_resync(&self, ns: &Namespace) -> Result<()> {
        self.drop_collection(ns).await
    }

    /// Documents parked and unique index builds deferred before a restart are tried again
    /// even if no change comes.
    async fn resume(&self) -> Result<()> {
        if self.parks() {
            self.ensure_loaded().await?;
        }
        self.deferred_loaded().await
    }
}

impl MongoSink {
    /// Applies the writes of a batch's events; when the target refuses the batch for good,
    /// applies them event by event so that only the refused events are reported.
    async fn write_ops(
        &self,
        ops: &[WriteOp],
        ranges: &[(usize, std::ops::Range<usize>)],
        written: &mut Written,
    ) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        match self.apply(ops).await {
            Ok(c) => {
                written.skipped += c.skipped;
                Ok(())
            }
            Err(e) if refused_for_good(&e) => {
                for (i, range) in ranges {
                    match self.apply(&ops[range.clone()]).await {
                        Ok(c) => written.skipped += c.skipped,
                        Err(error) if refused_for_good(&error) => {
                            written.refused.push(Refusal { index: *i, error })
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The pre-image a delete event carries, if any.
fn delete_pre_image(ev: &ChangeEvent) -> Option<&RawDocument> {
    match ev.raw.get("fullDocumentBeforeChange") {
        Ok(Some(RawBsonRef::Document(pre))) if ev.op == OpType::Delete => Some(pre),
        _ => None,
    }
}

/// Whether a write error is the target refusing a write (not an outage, a shutdown, or writes
/// failing for too long).
fn refused_for_good(e: &Error) -> bool {
    !e.is_retryable() && !matches!(e, Error::Stopped | Error::User(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::Timestamp;

    fn update_event(ud: RawDocumentBuf) -> ChangeEvent {
        ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "01" }, "operationType": "update",
            "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": { "db": "d", "coll": "c" }, "documentKey": { "_id": 1_i32 },
            "updateDescription": ud,
        })
        .unwrap()
    }

    #[test]
    fn update_description_becomes_truncate_then_set_unset() {
        let ev = update_event(rawdoc! {
            "updatedFields": { "a.b": 1_i32, "arr.1": "x" },
            "removedFields": ["gone", "n.old"],
            "truncatedArrays": [{ "field": "arr", "newSize": 2_i32 }],
        });
        let ops = ops_for_event(&ev, UpdateMode::Delta).unwrap();
        assert_eq!(ops.len(), 2);
        let WriteOp::Update { update, .. } = &ops[0] else {
            panic!()
        };
        assert_eq!(
            update,
            &rawdoc! { "$push": { "arr": { "$each": [], "$slice": 2_i64 } } }
        );
        let WriteOp::Update { update, filter, .. } = &ops[1] else {
            panic!()
        };
        assert_eq!(filter, &rawdoc! { "_id": 1_i32 });
        assert_eq!(
            update,
            &rawdoc! { "$set": { "a.b": 1_i32, "arr.1": "x" }, "$unset": { "gone": "", "n.old": "" } }
        );
    }

    #[test]
    fn empty_update_writes_nothing() {
        let ev = update_event(
            rawdoc! { "updatedFields": {}, "removedFields": [], "truncatedArrays": [] },
        );
        assert!(ops_for_event(&ev, UpdateMode::Delta).unwrap().is_empty());
    }

    #[test]
    fn full_document_mode_upserts_or_falls_back_to_delta() {
        let ev = update_event(rawdoc! { "updatedFields": { "a": 1_i32 } });
        let ops = ops_for_event(&ev, UpdateMode::FullDocument).unwrap();
        assert!(matches!(&ops[..], [WriteOp::Update { .. }]), "{ops:?}");
        let mut raw = ev.raw.clone();
        raw.append(cstr!("fullDocument"), rawdoc! { "_id": 1_i32, "a": 1_i32 });
        let ev = ChangeEvent::from_raw(raw).unwrap();
        assert!(matches!(
            ops_for_event(&ev, UpdateMode::FullDocument).unwrap()[0],
            WriteOp::Upsert { .. }
        ));
    }

    #[test]
    fn insert_is_a_replacement_upsert_and_delete_by_key() {
        let ev = ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "01" }, "operationType": "insert", "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 1_i32 }, "fullDocument": { "_id": 1_i32, "z": 1_i32, "a": 2_i32 },
        })
        .unwrap();
        let ops = ops_for_event(&ev, UpdateMode::Delta).unwrap();
        assert_eq!(
            ops,
            vec![WriteOp::Upsert {
                ns: Namespace::new("d", Some("c")),
                filter: rawdoc! { "_id": 1_i32 },
                doc: rawdoc! { "_id": 1_i32, "z": 1_i32, "a": 2_i32 },
            }]
        );
        let ev = ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "02" }, "operationType": "delete", "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 1_i32 },
        })
        .unwrap();
        assert!(matches!(
            &ops_for_event(&ev, UpdateMode::Delta).unwrap()[0],
            WriteOp::Delete { .. }
        ));
    }

    #[test]
    fn duplicate_keys_of_an_unordered_insert_mean_already_there() {
        let dup =
            |i: i32| bson::doc! { "index": i, "code": 11000, "errmsg": "E11000 duplicate key" };
        let reply = bson::doc! { "ok": 1, "n": 1, "writeErrors": [dup(0), dup(2)] };
        assert_eq!(insert_failure(&reply), InsertOutcome::Done { present: 2 });
        let reply = bson::doc! { "ok": 1, "n": 0, "writeErrors": [dup(0), { "index": 1, "code": 2, "errmsg": "bad" }] };
        assert_eq!(
            insert_failure(&reply),
            InsertOutcome::Rejected(2, "bad".into())
        );
        let reply = bson::doc! { "ok": 1, "n": 3, "writeConcernError": { "code": 64 } };
        assert!(matches!(
            insert_failure(&reply),
            InsertOutcome::Transient(_)
        ));
    }

    #[test]
    fn insert_without_document_is_malformed() {
        let ev = ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "01" }, "operationType": "insert", "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 1_i32 },
        })
        .unwrap();
        assert!(ops_for_event(&ev, UpdateMode::Delta).is_err());
    }
}

mod copy;
mod ddl;
mod deferred_index;
mod parking;
mod unique;

use unique::SourceLookup;

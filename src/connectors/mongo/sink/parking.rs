//! Duplicate keys on unique secondary indexes where there is no source to read (a Kafka,
//! Kinesis or DynamoDB source): the document whose write collided is parked.
//!
//! Without the source's current documents a collision cannot be repaired (see [`super::unique`]),
//! and waiting does not end a cycle: two documents that swapped a unique value, or a copy taken
//! while users wrote, can each hold the value the other's write needs. So the document whose
//! write collided steps aside: its new state goes to a parking collection in strait's database
//! on the target (`parked.<pipeline>.<db>.<coll>`: the same documents, no unique index) and its
//! target copy is deleted, which frees the values it held. Its later events are written to the
//! parked copy, in order, and a background task moves it back once no other document holds its
//! values. The source's final states satisfy every unique index, so when the changes stop every
//! parked document goes back.
//!
//! Only a document's own lane writes it while it is parked; the task that moves documents back
//! waits for those writes (a read-write gate), so a parked copy never changes while it moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, rawdoc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard};
use tracing::{debug, info, warn};

use super::{first_write_error, unique, MongoSink, WriteOp};
use crate::connectors::mongo::driver_error::{is_transient, TRANSIENT_CODES};
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};

/// How often parked documents are tried back.
const UNPARK_EVERY: Duration = Duration::from_millis(200);

/// A document parked this long is worth a warning (once a minute): something on the target
/// that the source does not have holds its values.
const PARKED_LONG: Duration = Duration::from_secs(60);

/// Parked documents per target namespace, by the bytes of `{_id: ...}`, with when.
type Parked = HashMap<Namespace, HashMap<Vec<u8>, (Bson, Instant)>>;

/// The documents a sink has parked.
#[derive(Debug, Default)]
pub(crate) struct Parking {
    docs: Mutex<Parked>,
    count: AtomicUsize,
    /// Shared by a batch that writes parked copies, exclusive while documents move back.
    gate: RwLock<()>,
    /// The parking collections read back at the first write.
    loaded: OnceCell<()>,
    mover_started: AtomicBool,
    /// When the mover last warned of a document parked for long.
    warned: Mutex<Option<Instant>>,
}

impl Parking {
    fn is_empty(&self) -> bool {
        self.count.load(Relaxed) == 0
    }

    #[allow(clippy::type_complexity)]
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Namespace, HashMap<Vec<u8>, (Bson, Instant)>>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, ns: &Namespace, key: &[u8]) -> bool {
        self.lock().get(ns).is_some_and(|m| m.contains_key(key))
    }

    fn insert(&self, ns: &Namespace, id: Bson) {
        if self
            .lock()
            .entry(ns.clone())
            .or_default()
            .insert(id_key(&id), (id, Instant::now()))
            .is_none()
        {
            self.count.fetch_add(1, Relaxed);
        }
    }

    fn remove(&self, ns: &Namespace, id: &Bson) {
        let mut m = self.lock();
        if let Some(ids) = m.get_mut(ns) {
            if ids.remove(&id_key(id)).is_some() {
                self.count.fetch_sub(1, Relaxed);
            }
            if ids.is_empty() {
                m.remove(ns);
            }
        }
    }

    fn snapshot(&self) -> Vec<(Namespace, Bson)> {
        self.lock()
            .iter()
            .flat_map(|(ns, ids)| ids.values().map(move |(id, _)| (ns.clone(), id.clone())))
            .collect()
    }

    /// The document parked longest, if for longer than `over`, and for how long.
    fn oldest(&self, over: Duration) -> Option<(Namespace, Bson, Duration)> {
        let m = self.lock();
        let (ns, id, at) = m
            .iter()
            .flat_map(|(ns, ids)| ids.values().map(move |(id, at)| (ns, id, *at)))
            .min_by_key(|(_, _, at)| *at)?;
        let age = at.elapsed();
        (age > over).then(|| (ns.clone(), id.clone(), age))
    }

    /// Forgets the parked documents of the namespaces `gone` says are gone.
    fn forget(&self, gone: impl Fn(&Namespace) -> bool) {
        let mut m = self.lock();
        let drop: Vec<Namespace> = m.keys().filter(|ns| gone(ns)).cloned().collect();
        for ns in drop {
            if let Some(ids) = m.remove(&ns) {
                self.count.fetch_sub(ids.len(), Relaxed);
            }
        }
    }
}

/// The bytes of `{_id: id}`: one key per document.
fn id_key(id: &Bson) -> Vec<u8> {
    let mut d = RawDocumentBuf::new();
    if let Ok(v) = bson::RawBson::try_from(id.clone()) {
        d.append(bson::raw::cstr!("_id"), v);
    }
    d.into_bytes()
}

/// The `_id` a write is about.
fn op_id(op: &WriteOp) -> Option<Bson> {
    let raw = match op {
        WriteOp::Upsert { filter, .. }
        | WriteOp::Update { filter, .. }
        | WriteOp::Delete { filter, .. } => filter.get("_id"),
        WriteOp::InsertIfAbsent { doc, .. } => doc.get("_id"),
    };
    raw.ok().flatten().and_then(|v| Bson::try_from(v).ok())
}

fn with_ns(op: &WriteOp, to: Namespace) -> WriteOp {
    let mut op = op.clone();
    match &mut op {
        WriteOp::Upsert { ns, .. }
        | WriteOp::Update { ns, .. }
        | WriteOp::Delete { ns, .. }
        | WriteOp::InsertIfAbsent { ns, .. } => *ns = to,
    }
    op
}

/// Writes prepared for a batch: to parked copies where their documents are parked (then with
/// the gate held until they are written).
pub(super) struct Planned<'a> {
    pub(super) ops: std::borrow::Cow<'a, [WriteOp]>,
    pub(super) _gate: Option<RwLockReadGuard<'a, ()>>,
}

impl MongoSink {
    /// Whether this sink parks colliding documents: it has no source to repair them from.
    pub(super) fn parks(&self) -> bool {
        !self.can_repair()
    }

    /// The parking collection of target namespace `ns`.
    fn lot(&self, ns: &Namespace) -> Namespace {
        Namespace::new(&self.meta_db, Some(&format!("{}{ns}", self.lot_prefix())))
    }

    fn lot_prefix(&self) -> String {
        format!("parked.{}.", self.pipeline)
    }

    /// `ops` with the writes of parked documents sent to their parked copies.
    pub(super) async fn plan<'a>(&'a self, ops: &'a [WriteOp]) -> Result<Planned<'a>> {
        self.ensure_loaded().await?;
        let borrowed = || Planned {
            ops: std::borrow::Cow::Borrowed(ops),
            _gate: None,
        };
        if self.parking.is_empty() {
            return Ok(borrowed());
        }
        let gate = self.parking.gate.read().await;
        let mut planned: Option<Vec<WriteOp>> = None;
        for (i, op) in ops.iter().enumerate() {
            let parked = op_id(op).is_some_and(|id| self.parking.holds(op.ns(), &id_key(&id)));
            if parked {
                let v = planned.get_or_insert_with(|| ops[..i].to_vec());
                v.push(with_ns(op, self.lot(op.ns())));
            } else if let Some(v) = &mut planned {
                v.push(op.clone());
            }
        }
        Ok(match planned {
            Some(v) => Planned {
                ops: std::borrow::Cow::Owned(v),
                _gate: Some(gate),
            },
            None => borrowed(),
        })
    }

    /// The documents parked before a restart, read back once.
    pub(super) async fn ensure_loaded(&self) -> Result<()> {
        self.parking
            .loaded
            .get_or_try_init(|| self.load_parked())
            .await
            .map(|_| ())
    }

    /// Reads back the documents parked before a restart, and starts moving them back.
    async fn load_parked(&self) -> Result<()> {
        let db = self.client.database(&self.meta_db);
        let prefix = self.lot_prefix();
        let names = db
            .list_collection_names()
            .await
            .map_err(|e| Error::mongo(Role::Sink, "listing parking collections", e))?;
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            let ns = Namespace::parse(&name[prefix.len()..]);
            let ids: Vec<Document> = db
                .collection::<Document>(name)
                .find(doc! {})
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| Error::mongo(Role::Sink, "reading parked documents", e))?
                .try_collect()
                .await
                .map_err(|e| Error::mongo(Role::Sink, "reading parked documents", e))?;
            for d in ids {
                if let Some(id) = d.get("_id") {
                    self.parking.insert(&ns, id.clone());
                }
            }
        }
        if !self.parking.is_empty() {
            info!(documents = self.parking.count.load(Relaxed), "Documents parked before the restart (unique-index collisions) go back once their values are free.");
            self.start_mover();
        }
        Ok(())
    }

    /// Parks the document of `op`, a write that collided on a unique secondary index: its new
    /// state goes to the parking collection, then its target copy is deleted. `Retry` when the
    /// target failed in a way worth trying again (the caller backs off; parking again is
    /// idempotent).
    pub(super) async fn park(&self, op: &WriteOp) -> Result<Step> {
        let (ns, Some(id)) = (op.ns().clone(), op_id(op)) else {
            return Err(Error::Internal("a write without _id collided".into()));
        };
        let lot = self.lot(&ns);
        let q = id_filter(&id)?;
        let current = || self.find_by_id(&ns, &id);
        macro_rules! step {
            ($e:expr) => {
                match $e {
                    Step::Done => {}
                    other => return Ok(other),
                }
            };
        }
        match op {
            WriteOp::Upsert { doc, .. } => {
                step!(self.raw_write(&lot, &q, doc.clone(), true).await?)
            }
            WriteOp::Update { update, .. } => {
                let Some(d) = current().await? else {
                    return Ok(Step::Done); // gone: the update has nothing to change
                };
                step!(self.raw_write(&lot, &q, d, true).await?);
                match self.raw_write(&lot, &q, update.clone(), false).await {
                    Ok(Step::Done) => {}
                    Ok(Step::Retry(why)) => return Ok(Step::Retry(why)),
                    // As on the target: an update that does not fit the document is skipped.
                    Ok(Step::Collided) | Err(Error::Rejected { .. }) => {
                        debug!(%ns, "An update of a parked document did not apply.");
                    }
                    Err(e) => return Err(e),
                }
            }
            WriteOp::InsertIfAbsent { doc, .. } => {
                if current().await?.is_some() {
                    return Ok(Step::Done); // insert-if-absent: it is there
                }
                let wc = self.raw_write_concern()?;
                let cmd = rawdoc! { "insert": lot.coll_name(), "documents": [doc.clone()], "writeConcern": wc };
                match self.raw_command(&lot, cmd).await {
                    // Already parked: insert-if-absent.
                    Err(Error::Rejected { code: 11000, .. }) => {}
                    r => step!(r?),
                }
            }
            WriteOp::Delete { .. } => return Ok(Step::Done),
        }
        step!(self.delete_one(&ns, &q).await?);
        self.parking.insert(&ns, id);
        if let Some(t) = &self.telemetry {
            t.unique_parked.fetch_add(1, Relaxed);
        }
        debug!(%ns, "A write collided on a unique index: its document is parked until its values are free.");
        self.start_mover();
        Ok(Step::Done)
    }

    /// Discards or moves the parked documents of a namespace a DDL event drops or renames.
    /// Runs before the DDL is applied (the engine has drained every lane).
    pub(super) async fn ddl_parked(
        &self,
        op: &crate::core::event::OpType,
        ns: &Namespace,
        to: Option<&Namespace>,
    ) -> Result<()> {
        use crate::core::event::OpType;
        if !self.parks() {
            return Ok(());
        }
        self.ensure_loaded().await?;
        if self.parking.is_empty() {
            return Ok(());
        }
        let _gate = self.parking.gate.write().await;
        match op {
            // The parking collection goes first: one left behind would be read back at the
            // next start.
            OpType::Drop => {
                self.drop_lot(ns).await?;
                self.parking.forget(|n| n == ns);
            }
            OpType::DropDatabase => {
                let gone: std::collections::HashSet<Namespace> = self
                    .parking
                    .snapshot()
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| n.db == ns.db)
                    .collect();
                for n in gone {
                    self.drop_lot(&n).await?;
                }
                self.parking.forget(|n| n.db == ns.db);
            }
            OpType::Rename => {
                let Some(to) = to else { return Ok(()) };
                let moved: Vec<Bson> = self
                    .parking
                    .snapshot()
                    .into_iter()
                    .filter(|(n, _)| n == ns)
                    .map(|(_, id)| id)
                    .collect();
                if moved.is_empty() {
                    return Ok(());
                }
                self.run(
                    "admin",
                    doc! { "renameCollection": self.lot(ns).to_string(), "to": self.lot(to).to_string(), "dropTarget": true },
                )
                .await?;
                self.parking.forget(|n| n == ns);
                for id in moved {
                    self.parking.insert(to, id);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn drop_lot(&self, ns: &Namespace) -> Result<()> {
        let lot = self.lot(ns);
        match self.run(&lot.db, doc! { "drop": lot.coll_name() }).await {
            Err(Error::Mongo { source, .. })
                if crate::connectors::mongo::driver_error::error_code(&source) == Some(26) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    fn start_mover(&self) {
        if self.parking.mover_started.swap(true, Relaxed) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            while me.sleep_unless_stopped(UNPARK_EVERY).await {
                // The sink is gone when only this task holds its parking.
                if Arc::strong_count(&me.parking) == 1 {
                    return;
                }
                if me.parking.is_empty() {
                    continue;
                }
                if let Err(e) = me.move_back().await {
                    warn!(error = %e, "Moving parked documents back failed; trying again.");
                }
            }
        });
    }

    /// Writes back every parked document whose values are free.
    async fn move_back(&self) -> Result<()> {
        let _gate = self.parking.gate.write().await;
        let (mut back, mut left) = (0, 0);
        for (ns, id) in self.parking.snapshot() {
            let lot = self.lot(&ns);
            let q = id_filter(&id)?;
            let moved = match self.find_by_id(&lot, &id).await? {
                // Deleted while parked. Its target copy is deleted too: after a crash between
                // parking and deleting it, that copy is an old state.
                None => self.delete_one(&ns, &q).await?,
                Some(d) => match self.raw_write(&ns, &q, d, true).await? {
                    Step::Done => self.delete_one(&lot, &q).await?,
                    other => other,
                },
            };
            if moved == Step::Done {
                self.parking.remove(&ns, &id);
                back += 1;
            } else {
                left += 1;
            }
        }
        if back > 0 {
            debug!(back, left, "Parked documents moved back.");
        }
        if let Some((ns, id, age)) = self.parking.oldest(PARKED_LONG) {
            let mut warned = self
                .parking
                .warned
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if warned.is_none_or(|w| w.elapsed() > PARKED_LONG) {
                *warned = Some(Instant::now());
                warn!(%ns, %id, parked_for = ?age, left, lot = %self.lot(&ns), "A document has waited long in the parking collection: another document on the target holds one of its unique values, which the source does not have (still changing, or a document only the target has).");
            }
        }
        Ok(())
    }

    /// The document `id` of `ns` (a target or a parking collection), as stored.
    async fn find_by_id(&self, ns: &Namespace, id: &Bson) -> Result<Option<RawDocumentBuf>> {
        let coll = self
            .client
            .database(&ns.db)
            .collection::<RawDocumentBuf>(ns.coll_name());
        let filter = doc! { "_id": id.clone() };
        // Spawned: a driver future must never be dropped mid-call.
        tokio::spawn(async move { coll.find_one(filter).await })
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
            .map_err(|e| Error::mongo(Role::Sink, format!("reading a document of {ns}"), e))
    }

    fn raw_write_concern(&self) -> Result<RawDocumentBuf> {
        RawDocumentBuf::try_from(&self.write_concern).map_err(|e| Error::Internal(e.to_string()))
    }

    /// One `update` of `q` in `ns` (a replacement or an update document), with the sink's
    /// write concern.
    async fn raw_write(
        &self,
        ns: &Namespace,
        q: &RawDocumentBuf,
        u: RawDocumentBuf,
        upsert: bool,
    ) -> Result<Step> {
        let cmd = rawdoc! {
            "update": ns.coll_name(),
            "updates": [ { "q": q.clone(), "u": u, "upsert": upsert, "multi": false } ],
            "writeConcern": self.raw_write_concern()?,
        };
        self.raw_command(ns, cmd).await
    }

    async fn delete_one(&self, ns: &Namespace, q: &RawDocumentBuf) -> Result<Step> {
        let cmd = rawdoc! {
            "delete": ns.coll_name(),
            "deletes": [ { "q": q.clone(), "limit": 1_i32 } ],
            "writeConcern": self.raw_write_concern()?,
        };
        self.raw_command(ns, cmd).await
    }

    /// Runs one write command: `Collided` on a unique secondary index, `Retry` on a transient
    /// failure, `Rejected` when the target refuses it for good.
    async fn raw_command(&self, ns: &Namespace, cmd: RawDocumentBuf) -> Result<Step> {
        let (client, db) = (self.client.clone(), ns.db.clone());
        // Spawned: a driver future must never be dropped mid-call.
        let reply = tokio::spawn(async move { client.database(&db).run_raw_command(cmd).await })
            .await
            .map_err(|e| Error::Internal(format!("write task failed: {e}")))?;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if is_transient(&e) => return Ok(Step::Retry(e.to_string())),
            Err(e) => return Err(Error::mongo(Role::Sink, format!("writing to {ns}"), e)),
        };
        if let Some((_, code, message, we)) = first_write_error(&reply) {
            if code == 11000 && unique::on_secondary_index(we) {
                return Ok(Step::Collided);
            }
            if TRANSIENT_CODES.contains(&code) {
                return Ok(Step::Retry(format!("code {code}: {message}")));
            }
            return Err(Error::Rejected {
                ns: ns.to_string(),
                code,
                message,
            });
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Ok(Step::Retry(format!("write concern error: {wce}")));
        }
        Ok(Step::Done)
    }
}

/// What one step of parking or moving back came to.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Done,
    /// It collided on a unique secondary index.
    Collided,
    /// A transient failure: try again after a backoff.
    Retry(String),
}

fn id_filter(id: &Bson) -> Result<RawDocumentBuf> {
    let v = bson::RawBson::try_from(id.clone()).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(rawdoc! { "_id": v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_the_documents_parked() {
        let p = Parking::default();
        let (a, b) = (Namespace::parse("app.a"), Namespace::parse("app.b"));
        p.insert(&a, Bson::Int32(1));
        p.insert(&a, Bson::Int32(1));
        p.insert(&a, Bson::String("x".into()));
        p.insert(&b, Bson::Int64(1));
        assert_eq!(p.count.load(Relaxed), 3);
        // int32 1 and int64 1 are different keys here, as their bytes differ.
        assert!(p.holds(&a, &id_key(&Bson::Int32(1))));
        assert!(!p.holds(&a, &id_key(&Bson::Int64(1))));
        p.remove(&a, &Bson::Int32(1));
        p.remove(&a, &Bson::Int32(1));
        assert_eq!(p.count.load(Relaxed), 2);
        p.forget(|ns| ns.db == "app");
        assert!(p.is_empty());
        assert!(p.snapshot().is_empty());
    }

    #[test]
    fn a_redirected_write_keeps_everything_but_its_namespace() {
        let op = WriteOp::Update {
            ns: Namespace::parse("app.users"),
            filter: rawdoc! { "_id": 7_i32 },
            update: rawdoc! { "$set": { "email": "x" } },
        };
        let lot = Namespace::parse("strait.parked.p.sink.app.users");
        let moved = with_ns(&op, lot.clone());
        assert_eq!(moved.ns(), &lot);
        assert_eq!(op_id(&moved), Some(Bson::Int32(7)));
        match (op, moved) {
            (
                WriteOp::Update { filter, update, .. },
                WriteOp::Update {
                    filter: f2,
                    update: u2,
                    ..
                },
            ) => assert_eq!((filter, update), (f2, u2)),
            _ => unreachable!(),
        }
    }
}

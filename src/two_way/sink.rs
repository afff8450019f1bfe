//! The two-way MongoDB sink: applies one cluster's changes to the other, last writer wins.
//!
//! Each batch is one transaction on a registered session (so the other direction recognises
//! and drops it, see [`super::sessions`]). In it the sink reads the target documents and their
//! version records (`<meta>.versions`, `{_id, ns, id, v, o, h}`: the version strait last
//! wrote or decided, its origin, and a hash of the document it left), decides per event, and
//! writes the winners, their records and the losers' conflict records, all or nothing.
//!
//! A document whose hash still matches its record has not changed locally since: its version
//! is the record's. Otherwise (a local write since, or a document strait never wrote) the
//! version of its last local change is read from the target's change log, searched from
//! `max_clock_skew` before the incoming change (a local change older than that loses anyway)
//! up to a fence written after the transaction's snapshot. A concurrent local write after the
//! snapshot makes the commit fail with a write conflict, and the batch is decided again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{doc, Bson, Document, RawBson, RawBsonRef, RawDocumentBuf};
use mongodb::options::{ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::echo::{stamp, Echoes};
use super::sessions::SessionRegistry;
use super::version::{decide, Decision, Version};
use super::writes::Writes;
use crate::backoff::Backoff;
use crate::connectors::{BatchPolicy, Ordering, Sink, Written};
use crate::core::{ChangeEvent, Namespace, OpType};
use crate::error::{Error, Result, Role};
use crate::telemetry::Telemetry;

/// The sink of one direction of a two-way pipeline.
pub(crate) struct LwwSink {
    inner: Arc<Inner>,
}

struct Inner {
    target: String,
    client: Client,
    registry: Arc<SessionRegistry>,
    /// Recognises strait's writes in the target's change log.
    echoes: Arc<Echoes>,
    /// With `loop_prevention = "origin_field"`: the field stamped on what strait writes.
    origin_field: Option<String>,
    /// `version_field`: where documents carry their own versions.
    version_field: Option<String>,
    meta_db: String,
    versions: Collection<RawDocumentBuf>,
    fence: Collection<Document>,
    /// Name of the cluster the events come from.
    incoming: String,
    /// Name of the cluster written to.
    local: String,
    /// The cluster whose change wins a tie.
    first: String,
    skew: Duration,
    lanes: usize,
    batch_docs: usize,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
    sessions: Mutex<Vec<ClientSession>>,
    /// When the copy into this cluster began (ms; 0 = unknown): a document deleted or written
    /// locally since then is not copied.
    copy_since: std::sync::atomic::AtomicI64,
    /// Per collection being copied: the documents its users changed since the copy began.
    copy_scans: tokio::sync::Mutex<HashMap<String, CopyScan>>,
    /// What has been read of the target's change log, for the apply.
    local_log: tokio::sync::Mutex<LocalLog>,
}

/// Strait's collection of version records, in its database on the target.
const VERSIONS: &str = "versions";
/// Strait's conflict log, in its database on the target.
const CONFLICTS: &str = "conflicts";

/// Above this many documents, [`LocalLog`] forgets local changes older than a minute before
/// the current batch.
const LOCAL_LOG_KEYS: usize = 200_000;

/// What the sink has read of its target's change log: users' (not strait's) changes.
#[derive(Default)]
struct LocalLog {
    /// Where the next read starts (after the last fence); `None` before the first.
    next: Option<LogStart>,
    /// The log has been read from here (ms).
    from_ms: i64,
    /// Per document, the newest `wallTime` of a local change read.
    latest: HashMap<Key, i64>,
    /// Just before the last read's fence was written: transactions that had read the target
    /// by then see no local change that read missed.
    fenced_at: Option<Instant>,
}

/// Where a read of the target's change log starts.
#[derive(Debug, Clone)]
enum LogStart {
    /// At a cluster time. Finding it can cost the server a scan of its log (SecantusDB reads
    /// its whole oplog under its storage lock), so only a first read starts there.
    At(bson::Timestamp),
    /// Right after a fence read before: found directly.
    After(mongodb::change_stream::event::ResumeToken),
}

/// How far below a batch's floor the local log is read when it must be read from there.
const BACKWARD_MARGIN_MS: i64 = 10_000;

impl LocalLog {
    fn merge(&mut self, found: HashMap<Key, i64>) {
        for (k, t) in found {
            let e = self.latest.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
    }
}

/// What the copy knows of a collection's local changes.
#[derive(Default)]
struct CopyScan {
    /// Where the next search starts (after the last fence).
    next: Option<LogStart>,
    /// Documents changed by users since the copy began.
    keys: std::collections::HashSet<Key>,
}

/// How a [`LwwSink`] is set up.
pub(crate) struct LwwSettings {
    /// Redacted URI of the target, for logs.
    pub(crate) target: String,
    /// Strait's database on the target.
    pub(crate) meta_db: String,
    /// Where the events come from.
    pub(crate) incoming: String,
    /// The target's name.
    pub(crate) local: String,
    /// Who wins ties.
    pub(crate) first: String,
    /// `max_clock_skew`.
    pub(crate) skew: Duration,
    /// Parallel lanes.
    pub(crate) lanes: usize,
    /// Events per transaction.
    pub(crate) batch_docs: usize,
    /// The field stamped with `incoming` on every document written (`origin_field` mode).
    pub(crate) origin_field: Option<String>,
    /// The document field that holds versions (`version_field`); `None`: `wallTime`.
    pub(crate) version_field: Option<String>,
}

/// A document key: namespace and the `_id` as `{_id: v}` bytes.
type Key = (String, Vec<u8>);

/// What the transaction knows about one document.
#[derive(Debug, Clone)]
struct State {
    /// The document now (in this transaction), `None` when absent.
    doc: Option<RawDocumentBuf>,
    /// Its version, when known.
    version: Option<Version>,
    /// The record on the target no longer matches (or there is none): write it.
    dirty: bool,
    /// The target had the document when the transaction read it.
    existed: bool,
}

/// A version record as stored.
#[derive(Debug, Clone)]
struct Record {
    version: Version,
    hash: Option<i64>,
}

impl LwwSink {
    /// A sink writing through `client` (a client strait uses for nothing but these writes).
    pub(crate) fn new(
        client: Client,
        registry: Arc<SessionRegistry>,
        echoes: Arc<Echoes>,
        s: LwwSettings,
        telemetry: Arc<Telemetry>,
        cancel: CancellationToken,
    ) -> Self {
        let meta = client.database(&s.meta_db);
        Self {
            inner: Arc::new(Inner {
                target: s.target,
                versions: meta.collection(VERSIONS),
                fence: meta.collection("fence"),
                meta_db: s.meta_db,
                client,
                registry,
                echoes,
                origin_field: s.origin_field,
                version_field: s.version_field,
                incoming: s.incoming,
                local: s.local,
                first: s.first,
                skew: s.skew,
                lanes: s.lanes,
                batch_docs: s.batch_docs,
                telemetry,
                cancel,
                sessions: Mutex::new(Vec::new()),
                copy_since: std::sync::atomic::AtomicI64::new(0),
                copy_scans: tokio::sync::Mutex::new(HashMap::new()),
                local_log: tokio::sync::Mutex::new(LocalLog::default()),
            }),
        }
    }
}

impl LwwSink {
    /// Sets when the copy into this cluster began.
    pub(crate) fn set_copy_since(&self, ms: i64) {
        self.inner
            .copy_since
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

/// FNV-1a of a document's bytes: whether a document is still the one strait left.
pub(crate) fn doc_hash(doc: &RawDocumentBuf) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in doc.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h as i64
}

fn id_key(ns: &str, id: RawBsonRef<'_>) -> Key {
    let mut d = RawDocumentBuf::new();
    d.append(bson::raw::cstr!("_id"), RawBson::from(id));
    (ns.to_string(), d.into_bytes())
}

/// A version record: the document's version and the hash of the document strait left
/// (`null`: absent, a tombstone).
fn record_doc(
    ns: &str,
    id: RawBsonRef<'_>,
    v: &Version,
    doc: Option<&RawDocumentBuf>,
) -> RawDocumentBuf {
    let mut rec = RawDocumentBuf::new();
    rec.append(bson::raw::cstr!("_id"), record_id(ns, id));
    rec.append(bson::raw::cstr!("ns"), ns);
    rec.append(bson::raw::cstr!("id"), RawBson::from(id));
    rec.append(bson::raw::cstr!("v"), bson::DateTime::from_millis(v.t));
    rec.append(bson::raw::cstr!("o"), v.origin.as_str());
    match doc {
        Some(d) => rec.append(bson::raw::cstr!("h"), doc_hash(d)),
        None => rec.append(bson::raw::cstr!("h"), RawBson::Null),
    }
    rec.append(bson::raw::cstr!("at"), bson::DateTime::now());
    rec
}

/// The `_id` of a version record: the namespace and the document's `_id` as bytes. Not a
/// document `{ns, id}`: SecantusDB finds a document-valued `_id` by scanning the collection,
/// which made every write of a record cost the size of the whole collection (found by the
/// crash test, whose batches slowed to minutes as the records grew).
fn record_id(ns: &str, id: RawBsonRef<'_>) -> RawBson {
    let (ns, key) = id_key(ns, id);
    let mut bytes = ns.into_bytes();
    bytes.push(0);
    bytes.extend_from_slice(&key);
    RawBson::Binary(bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    })
}

/// The `_id` of an event's document.
fn event_id(ev: &ChangeEvent) -> Option<RawBsonRef<'_>> {
    ev.document_key()?.get("_id").ok().flatten()
}

/// A document's own version in `field` (`version_field`): a date, or milliseconds as a number.
fn field_version(doc: &bson::RawDocument, field: &str) -> Option<i64> {
    match doc.get(field).ok().flatten()? {
        RawBsonRef::DateTime(d) => Some(d.timestamp_millis()),
        RawBsonRef::Int64(n) => Some(n),
        RawBsonRef::Int32(n) => Some(n as i64),
        RawBsonRef::Double(f) if f.is_finite() => Some(f as i64),
        _ => None,
    }
}

/// The version of an incoming change and origin: the document's `version_field` where it is
/// set and the document has it, else the change's `wallTime` (or cluster time).
fn event_version(ev: &ChangeEvent, origin: &str, version_field: Option<&str>) -> Version {
    let own = match (version_field, ev.full_document()) {
        (Some(f), Some(d)) if ev.op != OpType::Delete => field_version(d, f),
        _ => None,
    };
    if let Some(t) = own {
        return Version::new(t, origin);
    }
    let t = match ev.raw.get("wallTime") {
        Ok(Some(RawBsonRef::DateTime(d))) => d.timestamp_millis(),
        _ => ev
            .cluster_time
            .map(|t| t.time as i64 * 1000)
            .unwrap_or_default(),
    };
    Version::new(t, origin)
}

fn mongo(context: &str) -> impl Fn(mongodb::error::Error) -> Error + '_ {
    move |e| Error::mongo(Role::Sink, context.to_string(), e)
}

impl Inner {
    async fn session(&self) -> Result<ClientSession> {
        if let Some(s) = self.sessions.lock().unwrap().pop() {
            return Ok(s);
        }
        let opts = TransactionOptions::builder()
            .write_concern(WriteConcern::majority())
            .read_concern(ReadConcern::snapshot())
            .build();
        let s = self
            .client
            .start_session()
            .default_transaction_options(opts)
            .await
            .map_err(mongo("starting a session"))?;
        self.registry.register(&s).await?;
        Ok(s)
    }

    fn give_back(&self, s: ClientSession) {
        self.sessions.lock().unwrap().push(s);
    }

    /// Starts a transaction on a registered session.
    async fn begin(&self) -> Result<ClientSession> {
        let mut s = self.session().await?;
        s.start_transaction()
            .await
            .map_err(mongo("starting a transaction"))?;
        Ok(s)
    }

    /// Ends an attempt: commits when `work` succeeded, else aborts. `Some` when done, `None`
    /// to try again (a write conflict with a local write, an outage: after a backoff unless
    /// `split` says the caller retries the batch in smaller parts first), `Err` to give up.
    async fn finish<T>(
        &self,
        mut s: ClientSession,
        work: Result<T>,
        retry: &mut Retry,
        split: bool,
    ) -> Result<Option<T>> {
        let r = match work {
            Ok(v) => commit(&mut s).await.map(|()| v),
            Err(e) => {
                let _ = s.abort_transaction().await;
                Err(e)
            }
        };
        match r {
            Ok(v) => {
                self.give_back(s);
                Ok(Some(v))
            }
            Err(e) if e.is_retryable() => {
                if self.cancel.is_cancelled() {
                    return Err(Error::Stopped);
                }
                if retry.started.elapsed() > Duration::from_secs(300) {
                    return Err(Error::User(format!(
                        "sink: {} on {} kept failing for 5 min: {e}",
                        retry.what, self.target
                    )));
                }
                // A write conflict is a local write racing this batch: decide again.
                debug!(error = %e, split, "{}: transaction failed; retrying.", retry.what);
                retry.conflicted = is_write_conflict(&e);
                if !(split && retry.conflicted) {
                    retry.backoff.wait(None).await;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies a batch in transactions: all of it in one, and where that meets a write
    /// conflict (users writing some of its documents right now) in halves, down to single
    /// events, so that a few busy documents do not hold back the rest. Each part is decided
    /// afresh; the parts run in the batch's order, so each document's changes stay in order.
    async fn write_batch(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let mut retry = Retry::new("applying a batch");
        let mut written = Written::default();
        let mut outcome = Outcome::default();
        let mut parts = std::collections::VecDeque::from([batch]);
        while let Some(part) = parts.pop_front() {
            let split = part.len() > 1;
            let mut s = self.begin().await?;
            let work = self.try_batch(&mut s, part).await;
            match self.finish(s, work, &mut retry, split).await? {
                Some((w, o)) => {
                    written.skipped += w.skipped;
                    outcome.add(o);
                }
                None if split && retry.conflicted => {
                    let (a, b) = part.split_at(part.len() / 2);
                    parts.push_front(b);
                    parts.push_front(a);
                }
                None => parts.push_front(part),
            }
        }
        let t = &self.telemetry.two_way;
        use std::sync::atomic::Ordering::Relaxed;
        t.applied.fetch_add(outcome.applied, Relaxed);
        t.stale.fetch_add(outcome.stale, Relaxed);
        t.conflicts.fetch_add(outcome.conflicts, Relaxed);
        t.searches.fetch_add(outcome.searches, Relaxed);
        Ok(written)
    }

    async fn try_batch(
        &self,
        s: &mut ClientSession,
        batch: &[Arc<ChangeEvent>],
    ) -> Result<(Written, Outcome)> {
        let mut written = Written::default();
        let mut outcome = Outcome::default();
        let began = Instant::now();
        // The documents of the batch, by namespace.
        let mut ids: BTreeMap<String, Vec<RawBson>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for ev in batch.iter().filter(|e| e.op.is_data()) {
            let Some(id) = event_id(ev) else { continue };
            let ns = ev.ns.to_string();
            if seen.insert(id_key(&ns, id)) {
                ids.entry(ns).or_default().push(RawBson::from(id));
            }
        }
        let mut state: HashMap<Key, State> = HashMap::new();
        let mut records: HashMap<Key, Record> = HashMap::new();
        for (ns, list) in &ids {
            for (k, d) in self.read_docs(s, ns, list, false).await? {
                state.insert(
                    k,
                    State {
                        doc: Some(d),
                        version: None,
                        dirty: false,
                        existed: true,
                    },
                );
            }
            records.extend(self.read_records(s, ns, list).await?);
        }
        // The transaction has read the target: local changes it saw are in the log before now.
        let snapshot = Instant::now();
        // Which documents' versions are known from their records; search the change log for
        // the others.
        let mut unknown: BTreeMap<Key, i64> = BTreeMap::new();
        // Documents whose record matches them: the record's version holds unless the change
        // log shows a later local change that left the same bytes.
        let mut matched: std::collections::HashSet<Key> = std::collections::HashSet::new();
        for ev in batch.iter().filter(|e| e.op.is_data()) {
            let Some(id) = event_id(ev) else { continue };
            let k = id_key(&ev.ns.to_string(), id);
            let st = state.entry(k.clone()).or_insert(State {
                doc: None,
                version: None,
                dirty: false,
                existed: false,
            });
            let hash = st.doc.as_ref().map(doc_hash);
            let own = match (&self.version_field, &st.doc) {
                (Some(f), Some(d)) => field_version(d, f),
                _ => None,
            };
            match records.get(&k) {
                // A matching hash is not proof that nothing happened locally: an insert
                // then a delete leaves a tombstone's "absent", a change undone leaves the old
                // bytes (found by the failover test: a local re-insert and delete after
                // strait's delete let an older incoming insert bring the document back).
                Some(r) if r.hash == hash => {
                    st.version = Some(r.version.clone());
                    matched.insert(k.clone());
                    let t = event_version(ev, &self.incoming, self.version_field.as_deref()).t;
                    let e = unknown.entry(k).or_insert(t);
                    *e = (*e).min(t);
                }
                // The document says when it last changed: no need to search for that.
                _ if own.is_some() => {
                    let local = Version::new(own.expect("matched"), &self.local);
                    st.version = Some(match records.get(&k) {
                        Some(r) if r.version.beats(&local, &self.first) => r.version.clone(),
                        _ => local,
                    });
                    st.dirty = true;
                }
                // Even an insert of a document the target lacks is searched for: the target
                // may have deleted it locally after the insert happened (found by the crash
                // test: an old insert replayed after a newer local delete brought it back).
                _ => {
                    let t = event_version(ev, &self.incoming, self.version_field.as_deref()).t;
                    let e = unknown.entry(k).or_insert(t);
                    *e = (*e).min(t);
                }
            }
        }
        let read = began.elapsed();
        if !unknown.is_empty() {
            outcome.searches += 1;
            let floor =
                unknown.values().min().copied().unwrap_or_default() - self.skew.as_millis() as i64;
            let local = self.local_versions(floor, snapshot, unknown.keys()).await?;
            for k in unknown.keys() {
                let st = state.get_mut(k).expect("inserted above");
                let from_record = records.get(k).map(|r| r.version.clone());
                let from_log = local.get(k).map(|t| Version::new(*t, &self.local));
                let later_locally = match (&from_record, &from_log) {
                    (Some(a), Some(b)) => b.beats(a, &self.first),
                    (None, Some(_)) => true,
                    _ => false,
                };
                if later_locally || !matched.contains(k) {
                    st.version = if later_locally {
                        from_log
                    } else {
                        from_record.or(from_log)
                    };
                    st.dirty = true;
                }
            }
        }
        // Decide in order; the last state of each document is written.
        let mut touched: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut lost = Vec::new();
        for ev in batch.iter() {
            if !ev.op.is_data() {
                // Two-way pipelines do not replicate DDL (both sides would apply it).
                written.skipped += 1;
                continue;
            }
            let Some(id) = event_id(ev) else {
                written.skipped += 1;
                continue;
            };
            let ns = ev.ns.to_string();
            let k = id_key(&ns, id);
            let incoming = event_version(ev, &self.incoming, self.version_field.as_deref());
            let new_doc = match ev.op {
                OpType::Delete => None,
                _ => match ev.full_document() {
                    Some(d) => Some(match &self.origin_field {
                        Some(f) => stamp(d, f, &self.incoming),
                        None => d.to_owned(),
                    }),
                    // The document was gone when the source looked it up: its delete follows.
                    None => {
                        written.skipped += 1;
                        continue;
                    }
                },
            };
            let st = state.get_mut(&k).expect("every event has a state");
            match decide(
                &incoming,
                st.version.as_ref(),
                &self.first,
                self.version_field.is_none(),
            ) {
                Decision::Apply => {
                    st.doc = new_doc;
                    st.version = Some(incoming);
                    st.dirty = true;
                    outcome.applied += 1;
                    touched.insert(k);
                }
                Decision::Replay => written.skipped += 1,
                Decision::Lost => {
                    let current = st.version.clone().expect("lost to a version");
                    lost.push(conflict_record(ev, &ns, id, &incoming, st, &current));
                    outcome.stale += 1;
                    outcome.conflicts += 1;
                    written.skipped += 1;
                }
            }
        }
        let searched = began.elapsed();
        let mut writes = Writes::default();
        for (k, st) in state.iter().filter(|(_, st)| st.dirty) {
            let (ns, key) = k;
            let key = bson::RawDocument::from_bytes(key).expect("built above");
            let id = RawBson::from(key.get("_id").ok().flatten().expect("built above"));
            let n = Namespace::parse(ns);
            if touched.contains(k) {
                match &st.doc {
                    Some(d) => writes.replace(&n.db, n.coll_name(), id.clone(), d.clone(), true),
                    None if st.existed => {
                        if let Some(f) = &self.origin_field {
                            // The stamp marks this transaction as strait's for the reader,
                            // which cannot tell whose delete it is from the delete alone.
                            let mut marker = RawDocumentBuf::new();
                            marker.append(bson::raw::cstr!("_id"), id.clone());
                            let marker = stamp(&marker, f, &self.incoming);
                            writes.replace(&n.db, n.coll_name(), id.clone(), marker, false);
                        }
                        writes.delete(&n.db, n.coll_name(), id.clone());
                    }
                    // Absent already: deleting it would change nothing.
                    None => {}
                }
            }
            let Some(v) = &st.version else { continue };
            let rec = record_doc(ns, id.as_raw_bson_ref(), v, st.doc.as_ref());
            let rid = record_id(ns, id.as_raw_bson_ref());
            writes.replace(&self.meta_db, VERSIONS, rid, rec, true);
        }
        for c in lost {
            writes.insert(&self.meta_db, CONFLICTS, c);
        }
        writes.send(&self.client, s).await?;
        debug!(
            events = batch.len(),
            unknown = unknown.len(),
            read_ms = read.as_millis() as u64,
            search_ms = (searched - read).as_millis() as u64,
            write_ms = (began.elapsed() - searched).as_millis() as u64,
            "Batch decided and written."
        );
        Ok((written, outcome))
    }

    /// The target documents of `ids` in `ns`, in the transaction (only their `_id` when
    /// `ids_only`).
    async fn read_docs(
        &self,
        s: &mut ClientSession,
        ns: &str,
        ids: &[RawBson],
        ids_only: bool,
    ) -> Result<HashMap<Key, RawDocumentBuf>> {
        let ctx = "reading target documents";
        let n = Namespace::parse(ns);
        let coll = self
            .client
            .database(&n.db)
            .collection::<RawDocumentBuf>(n.coll_name());
        let mut find = coll.find(doc! { "_id": { "$in": raw_array(ids) } });
        if ids_only {
            find = find.projection(doc! { "_id": 1 });
        }
        let mut cursor = find.session(&mut *s).await.map_err(mongo(ctx))?;
        let mut out = HashMap::new();
        while cursor.advance(&mut *s).await.map_err(mongo(ctx))? {
            let d = cursor.deserialize_current().map_err(mongo(ctx))?;
            if let Ok(Some(id)) = d.get("_id") {
                out.insert(id_key(ns, id), d.clone());
            }
        }
        Ok(out)
    }

    /// The version records of `ids` in `ns`, in the transaction.
    async fn read_records(
        &self,
        s: &mut ClientSession,
        ns: &str,
        ids: &[RawBson],
    ) -> Result<HashMap<Key, Record>> {
        let ctx = "reading version records";
        let rids: Vec<RawBson> = ids
            .iter()
            .map(|id| record_id(ns, id.as_raw_bson_ref()))
            .collect();
        let mut cursor = self
            .versions
            .find(doc! { "_id": { "$in": raw_array(&rids) } })
            .session(&mut *s)
            .await
            .map_err(mongo(ctx))?;
        let mut out = HashMap::new();
        while cursor.advance(&mut *s).await.map_err(mongo(ctx))? {
            let r = cursor.current();
            let (Ok(Some(id)), Ok(v), Ok(o)) = (r.get("id"), r.get_datetime("v"), r.get_str("o"))
            else {
                continue;
            };
            out.insert(
                id_key(ns, id),
                Record {
                    version: Version::new(v.timestamp_millis(), o),
                    hash: r.get_i64("h").ok(),
                },
            );
        }
        Ok(out)
    }

    /// The newest `wallTime` of a local change (not strait's) to each of `keys` since `floor_ms`,
    /// read from the target's change log up to a fence written after `snapshot` (when the
    /// batch's transaction had read the target).
    ///
    /// The log is read once and then only from where the last read ended (the last fence),
    /// into [`LocalLog`]: searching it from `floor_ms` for every batch cost the whole lag per
    /// batch during a catch-up. A read whose fence was written after `snapshot` (another
    /// lane's, done while this one waited for the lock) already covers every local change the
    /// transaction saw, so lanes share reads. A floor older than what was read extends the
    /// read backwards, only over what is missing.
    async fn local_versions<'k>(
        &self,
        floor_ms: i64,
        snapshot: Instant,
        keys: impl Iterator<Item = &'k Key>,
    ) -> Result<HashMap<Key, i64>> {
        let mut log = self.local_log.lock().await;
        let user = || vec![doc! { "ns.db": { "$ne": self.meta_db.as_str() } }];
        let ts = |ms: i64| bson::Timestamp {
            time: (ms.max(1000) / 1000) as u32,
            increment: 0,
        };
        if log.next.is_none() {
            // Some margin below the first floor: the lanes' floors differ a little.
            log.from_ms = floor_ms - BACKWARD_MARGIN_MS;
        } else if floor_ms < log.from_ms {
            let from = floor_ms - BACKWARD_MARGIN_MS;
            let until = ts(log.from_ms);
            let (found, _) = self
                .search_log(user(), LogStart::At(ts(from)), Some(until))
                .await?;
            log.merge(found);
            log.from_ms = from;
        }
        if log.fenced_at.is_none_or(|f| f < snapshot) {
            let start = log
                .next
                .clone()
                .unwrap_or_else(|| LogStart::At(ts(log.from_ms)));
            let fenced = Instant::now();
            let resuming = matches!(start, LogStart::After(_));
            let (found, next) = match self.search_log(user(), start, None).await {
                // The last fence is gone from the log (idle for longer than the server keeps
                // it, or a server that cannot resume there): read again from below the floor.
                Err(e) if resuming && !e.is_retryable() => {
                    warn!(error = %e, "Cannot resume reading the target's change log after the last fence; reading it from the batch's floor.");
                    log.latest.clear();
                    log.from_ms = floor_ms - BACKWARD_MARGIN_MS;
                    self.search_log(user(), LogStart::At(ts(log.from_ms)), None)
                        .await?
                }
                r => r?,
            };
            log.merge(found);
            log.next = next.or(log.next.take());
            log.fenced_at = Some(fenced);
        }
        // Forget changes too old to matter to any batch for a while (a batch with an older
        // floor reads that part of the log again).
        if log.latest.len() > LOCAL_LOG_KEYS {
            let keep_from = floor_ms - 60_000;
            log.latest.retain(|_, t| *t >= keep_from);
            log.from_ms = log.from_ms.max(keep_from);
        }
        Ok(keys
            .filter_map(|k| {
                log.latest
                    .get(k)
                    .filter(|t| **t >= floor_ms)
                    .map(|t| (k.clone(), *t))
            })
            .collect())
    }

    /// Reads the target's change log from `start` up to a fence written now (or only up to
    /// cluster time `until`), keeping the events `or` matches that are not strait's: the
    /// newest `wallTime` per document, and where a next search can start (after the fence;
    /// `None` when it stopped at `until`).
    async fn search_log(
        &self,
        mut or: Vec<Document>,
        start: LogStart,
        until: Option<bson::Timestamp>,
    ) -> Result<(HashMap<Key, i64>, Option<LogStart>)> {
        let fence_id = bson::oid::ObjectId::new();
        // Every fence insert, not only this one: the next read resumes after this fence, and
        // a server may look for the resume token's event among what the pipeline lets through
        // (secantusd-rs does: "the resume token was not found" when only each read's own
        // fence matched).
        or.push(
            doc! { "ns.db": self.meta_db.as_str(), "ns.coll": "fence", "operationType": "insert" },
        );
        let client = self.client.clone();
        let fence = self.fence.clone();
        let echoes = self.echoes.clone();
        let meta_db = self.meta_db.clone();
        // Spawned: the stream and its getMores run to completion.
        tokio::spawn(async move {
            let ctx = "reading the target's change log";
            let watch = client
                .watch()
                .pipeline([doc! { "$match": { "$or": or } }])
                .max_await_time(Duration::from_millis(100));
            let watch = match start {
                LogStart::At(t) => watch.start_at_operation_time(t),
                LogStart::After(token) => watch.resume_after(token),
            };
            let mut stream = watch
                .await
                .map_err(mongo(ctx))?
                .with_type::<RawDocumentBuf>();
            fence
                .insert_one(doc! { "_id": fence_id })
                .await
                .map_err(mongo("writing a fence"))?;
            let mut out: HashMap<Key, i64> = HashMap::new();
            let next: Option<LogStart>;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if Instant::now() > deadline {
                    return Err(Error::Mongo {
                        role: Role::Sink,
                        context: "the target's change log did not show the fence within 60 s"
                            .into(),
                        source: mongodb::error::Error::custom("fence not seen"),
                    });
                }
                let Some(ev) = stream.next_if_any().await.map_err(mongo(ctx))? else {
                    continue;
                };
                let ns = ev.get_document("ns").ok();
                let db = ns.and_then(|n| n.get_str("db").ok()).unwrap_or("");
                let coll = ns.and_then(|n| n.get_str("coll").ok()).unwrap_or("");
                let at = ev.get_timestamp("clusterTime").ok();
                if db == meta_db && coll == "fence" {
                    let ours = ev
                        .get_document("documentKey")
                        .ok()
                        .and_then(|k| k.get_object_id("_id").ok())
                        == Some(fence_id);
                    if ours {
                        next = stream.resume_token().map(LogStart::After);
                        break;
                    }
                    continue;
                }
                if let (Some(u), Some(at)) = (until, at) {
                    if at >= u {
                        next = None;
                        break;
                    }
                }
                if echoes.is_echo(&ev) {
                    continue;
                }
                let Some(id) = ev
                    .get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get("_id").ok().flatten())
                else {
                    continue;
                };
                let t = match ev.get("wallTime") {
                    Ok(Some(RawBsonRef::DateTime(d))) => d.timestamp_millis(),
                    _ => ev
                        .get_timestamp("clusterTime")
                        .map(|t| t.time as i64 * 1000)
                        .unwrap_or_default(),
                };
                let e = out.entry(id_key(&format!("{db}.{coll}"), id)).or_insert(t);
                *e = (*e).max(t);
            }
            let _ = fence.delete_one(doc! { "_id": fence_id }).await;
            Ok((out, next))
        })
        .await
        .map_err(|e| Error::Internal(format!("change-log search failed: {e}")))?
    }

    /// Copies documents absent from the target, each with a record of version zero: any
    /// change made since the copy began beats it, and the record's hash tells whether the
    /// copied document changed locally since.
    async fn copy_batch(&self, ns: &Namespace, docs: &[RawDocumentBuf]) -> Result<u64> {
        let mut retry = Retry::new("copying documents");
        loop {
            let mut s = self.begin().await?;
            let work = self.try_copy(&mut s, ns, docs).await;
            if let Some(n) = self.finish(s, work, &mut retry, false).await? {
                return Ok(n);
            }
        }
    }

    async fn try_copy(
        &self,
        s: &mut ClientSession,
        ns: &Namespace,
        docs: &[RawDocumentBuf],
    ) -> Result<u64> {
        let nss = ns.to_string();
        let inner = self;
        {
            {
                let coll = inner
                    .client
                    .database(&ns.db)
                    .collection::<RawDocumentBuf>(ns.coll_name());
                let ids: Vec<RawBson> = docs
                    .iter()
                    .filter_map(|d| d.get("_id").ok().flatten().map(RawBson::from))
                    .collect();
                // Present, or deleted since strait copied it (its record is there).
                let mut present: std::collections::HashSet<Key> = inner
                    .read_docs(s, &nss, &ids, true)
                    .await?
                    .into_keys()
                    .collect();
                present.extend(inner.read_records(s, &nss, &ids).await?.into_keys());
                // A document the target lacks may have been written and deleted there since
                // the copy began: its users' change is newer than the copied state, and the
                // other direction carries it over; copying would bring the document back.
                let absent: Vec<Key> = docs
                    .iter()
                    .filter_map(|d| d.get("_id").ok().flatten().map(|id| id_key(&nss, id)))
                    .filter(|k| !present.contains(k))
                    .collect();
                if !absent.is_empty() {
                    // What the target's users changed in this collection since the copy
                    // began, read once per process and then from where the last read ended
                    // (searching from the copy's start for every batch grew with the log).
                    let mut scans = inner.copy_scans.lock().await;
                    let scan = scans.entry(nss.clone()).or_default();
                    let since = inner.copy_since.load(std::sync::atomic::Ordering::Relaxed)
                        - inner.skew.as_millis() as i64;
                    let from_copy = LogStart::At(bson::Timestamp {
                        time: (since.max(1000) / 1000) as u32,
                        increment: 0,
                    });
                    let start = scan.next.clone().unwrap_or_else(|| from_copy.clone());
                    let or = vec![doc! { "ns.db": ns.db.as_str(), "ns.coll": ns.coll_name() }];
                    let resuming = matches!(start, LogStart::After(_));
                    let (changed, next) = match inner.search_log(or.clone(), start, None).await {
                        // As in `local_versions`: the last fence cannot be resumed after.
                        Err(e) if resuming && !e.is_retryable() => {
                            warn!(error = %e, "Cannot resume reading the target's change log after the last fence; reading it from the copy's start.");
                            inner.search_log(or, from_copy, None).await?
                        }
                        r => r?,
                    };
                    scan.keys.extend(changed.into_keys());
                    scan.next = next.or(scan.next.take());
                    present.extend(absent.into_iter().filter(|k| scan.keys.contains(k)));
                }
                let mut new_docs = Vec::new();
                let mut recs = Vec::new();
                for d in docs {
                    let Some(id) = d.get("_id").ok().flatten() else {
                        continue;
                    };
                    if present.contains(&id_key(&nss, id)) {
                        continue;
                    }
                    let copied = Version::new(0, &inner.incoming);
                    let d = match &inner.origin_field {
                        Some(f) => stamp(d, f, &inner.incoming),
                        None => d.clone(),
                    };
                    recs.push(record_doc(&nss, id, &copied, Some(&d)));
                    new_docs.push(d);
                }
                let n = new_docs.len() as u64;
                if !new_docs.is_empty() {
                    coll.insert_many(new_docs)
                        .session(&mut *s)
                        .await
                        .map_err(mongo("copying documents"))?;
                    inner
                        .versions
                        .insert_many(recs)
                        .session(&mut *s)
                        .await
                        .map_err(mongo("writing version records"))?;
                }
                Ok(n)
            }
        }
    }

    /// Deletes tombstones older than `ttl` (records of deleted documents).
    pub(crate) async fn expire_tombstones(&self, ttl: Duration) -> Result<u64> {
        let before = bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() - ttl.as_millis() as i64,
        );
        let r = self
            .versions
            .delete_many(doc! { "h": Bson::Null, "at": { "$lt": before } })
            .await
            .map_err(mongo("expiring tombstones"))?;
        Ok(r.deleted_count)
    }
}

/// Commits, retrying a commit whose outcome is unknown (committing twice is safe).
async fn commit(s: &mut ClientSession) -> Result<()> {
    let mut tries = 0;
    loop {
        match s.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label("UnknownTransactionCommitResult") && tries < 3 => {
                tries += 1;
            }
            Err(e) => return Err(Error::mongo(Role::Sink, "committing", e)),
        }
    }
}

fn raw_array(items: &[RawBson]) -> Vec<Bson> {
    items
        .iter()
        .filter_map(|b| Bson::try_from(b.clone()).ok())
        .collect()
}

/// Retries of one batch.
struct Retry {
    what: &'static str,
    started: Instant,
    backoff: Backoff,
    /// Whether the last failed attempt met a write conflict.
    conflicted: bool,
}

impl Retry {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            started: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(20), Duration::from_secs(2)),
            conflicted: false,
        }
    }
}

/// What a batch decided.
#[derive(Debug, Default)]
struct Outcome {
    applied: u64,
    stale: u64,
    conflicts: u64,
    searches: u64,
}

impl Outcome {
    fn add(&mut self, o: Outcome) {
        self.applied += o.applied;
        self.stale += o.stale;
        self.conflicts += o.conflicts;
        self.searches += o.searches;
    }
}

/// A transaction that met a concurrent write to one of its documents (`WriteConflict`, 112).
pub(super) fn is_write_conflict(e: &Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    let Error::Mongo { source, .. } = e else {
        return false;
    };
    match source.kind.as_ref() {
        ErrorKind::Command(c) => c.code == 112,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 112,
        _ => false,
    }
}

/// The conflict record of an incoming change that lost.
fn conflict_record(
    ev: &ChangeEvent,
    ns: &str,
    id: RawBsonRef<'_>,
    incoming: &Version,
    st: &State,
    current: &Version,
) -> RawDocumentBuf {
    let mut inc = RawDocumentBuf::new();
    inc.append(bson::raw::cstr!("op"), ev.op.as_str());
    inc.append(bson::raw::cstr!("origin"), incoming.origin.as_str());
    inc.append(
        bson::raw::cstr!("time"),
        bson::DateTime::from_millis(incoming.t),
    );
    match ev.full_document() {
        Some(d) if ev.op != OpType::Delete => inc.append(bson::raw::cstr!("doc"), d),
        _ => inc.append(bson::raw::cstr!("doc"), RawBson::Null),
    }
    let mut cur = RawDocumentBuf::new();
    cur.append(bson::raw::cstr!("origin"), current.origin.as_str());
    cur.append(
        bson::raw::cstr!("time"),
        bson::DateTime::from_millis(current.t),
    );
    match &st.doc {
        Some(d) => cur.append(bson::raw::cstr!("doc"), d.clone()),
        None => cur.append(bson::raw::cstr!("doc"), RawBson::Null),
    }
    let rule = if incoming.t == current.t {
        "tie: the first cluster's change wins"
    } else {
        "last writer wins (wallTime)"
    };
    let mut c = RawDocumentBuf::new();
    // A random id: ObjectIds grow, and concurrent transactions appending to the same end of
    // the index conflicted on SecantusDB until lanes starved (found by the crash test).
    c.append(
        bson::raw::cstr!("_id"),
        bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: bson::Uuid::new().bytes().to_vec(),
        },
    );
    c.append(bson::raw::cstr!("at"), bson::DateTime::now());
    c.append(bson::raw::cstr!("ns"), ns);
    let mut key = RawDocumentBuf::new();
    key.append(bson::raw::cstr!("_id"), RawBson::from(id));
    c.append(bson::raw::cstr!("documentKey"), key);
    c.append(bson::raw::cstr!("incoming"), inc);
    c.append(bson::raw::cstr!("current"), cur);
    c.append(bson::raw::cstr!("rule"), rule);
    c
}

#[async_trait]
impl Sink for LwwSink {
    fn name(&self) -> &str {
        "sink"
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn describe(&self) -> String {
        format!("{} ({}, two-way)", self.inner.target, self.inner.local)
    }

    fn takes(&self, op: &OpType) -> bool {
        op.is_data()
    }

    fn ordering(&self) -> Ordering {
        Ordering::ByKey {
            lanes: self.inner.lanes,
        }
    }

    fn batching(&self) -> BatchPolicy {
        BatchPolicy {
            max_events: self.inner.batch_docs,
            max_bytes: 12 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let inner = self.inner.clone();
        let batch = batch.to_vec();
        // Spawned: a transaction is never dropped half-way.
        tokio::spawn(async move { inner.write_batch(&batch).await })
            .await
            .map_err(|e| Error::Internal(format!("write task failed: {e}")))?
    }

    fn takes_copy(&self) -> bool {
        true
    }

    async fn prepare_copy(&self, ns: &Namespace, options: &Document, _drop: bool) -> Result<()> {
        let mut cmd = doc! { "create": ns.coll_name() };
        for (k, v) in options {
            cmd.insert(k, v.clone());
        }
        match self.inner.client.database(&ns.db).run_command(cmd).await {
            Ok(_) => Ok(()),
            // Already there (the other side's writes or an earlier run created it).
            Err(e) if crate::connectors::mongo::driver_error::error_code(&e) == Some(48) => Ok(()),
            Err(e) => Err(Error::mongo(Role::Sink, format!("creating {ns}"), e)),
        }
    }

    async fn copy(&self, ns: &Namespace, docs: Vec<RawDocumentBuf>) -> Result<u64> {
        let inner = self.inner.clone();
        let ns = ns.clone();
        tokio::spawn(async move { inner.copy_batch(&ns, &docs).await })
            .await
            .map_err(|e| Error::Internal(format!("copy task failed: {e}")))?
    }

    async fn finish_copy(&self, ns: &Namespace, indexes: &[Document]) -> Result<()> {
        if indexes.is_empty() {
            return Ok(());
        }
        let cmd = doc! { "createIndexes": ns.coll_name(), "indexes": indexes.to_vec() };
        if let Err(e) = self.inner.client.database(&ns.db).run_command(cmd).await {
            warn!(%ns, error = %e, "Indexes not created on the other cluster.");
        }
        Ok(())
    }
}

impl LwwSink {
    /// Deletes expired tombstones now and then until `stop`.
    pub(crate) async fn expire_tombstones_every(&self, ttl: Duration, stop: CancellationToken) {
        let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.inner.expire_tombstones(ttl).await {
                Ok(0) => {}
                Ok(n) => debug!(n, "Expired tombstones deleted."),
                Err(e) => warn!(error = %e, "Expiring tombstones failed; trying again later."),
            }
        }
    }
}

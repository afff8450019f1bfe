//! Duplicate keys on unique secondary indexes, repaired from the source.
//!
//! Events are applied in order per document, but not in the source's order across documents
//! (lanes), and a looked-up update carries the document as it is now, not as it was then. Two
//! documents that swapped values of a unique field can therefore each wait for the other: A's
//! write needs the value B still holds on the target and B's needs A's, and no amount of
//! waiting ends that. So when a write collides, strait reads both documents' current state
//! from the source (where every unique index holds) and writes those: the holder first, which
//! frees the value, then the document that collided. Such a state is newer than the event
//! being applied, as a looked-up document already is, and the events still to come bring
//! both documents to their final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::WriteConcern;
use mongodb::Client;
use tracing::debug;

use super::MongoSink;
use crate::connectors::mongo::driver_error::TRANSIENT_CODES;
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};

/// Strait's collection (in its database on the target) of documents a repair set aside.
const JOURNAL: &str = "repairs";

/// Writes of current states one repair may make before it gives up (and the write is
/// retried after a backoff, as before).
const MAX_STEPS: usize = 32;

/// Where a sink reads documents' current state: the source client (set once the pipeline
/// has connected it; absent for a Kafka source) and the source namespace of each renamed
/// target namespace.
#[derive(Debug, Default, Clone)]
pub(crate) struct SourceLookup {
    client: Arc<OnceLock<Client>>,
    renamed: Arc<Mutex<HashMap<Namespace, Namespace>>>,
    /// Documents a repair set aside and could not write back before it gave up: a task
    /// writes them back (repairing again where they collide).
    left_aside: Arc<Mutex<Vec<(Namespace, Bson)>>>,
    writer_started: Arc<std::sync::atomic::AtomicBool>,
}

impl SourceLookup {
    /// Reads current states through `client` from now on.
    pub(crate) fn set(&self, client: Client) {
        let _ = self.client.set(client);
    }

    /// Notes that `target` holds the documents of source namespace `source`.
    pub(crate) fn note(&self, target: &Namespace, source: &Namespace) {
        if target != source {
            let mut m = self.renamed.lock().unwrap_or_else(|p| p.into_inner());
            if !m.contains_key(target) {
                m.insert(target.clone(), source.clone());
            }
        }
    }

    fn source_ns(&self, target: &Namespace) -> Namespace {
        let m = self.renamed.lock().unwrap_or_else(|p| p.into_inner());
        m.get(target).cloned().unwrap_or_else(|| target.clone())
    }
}

/// The `keyValue` of a duplicate-key write error (`{ email: "x" }`), when the server says.
pub(super) fn dup_key_value(write_error: &Document) -> Option<Document> {
    write_error.get_document("keyValue").ok().cloned()
}

/// Whether a duplicate-key write error is on a secondary index, not on `_id`. Servers that do
/// not say (`keyPattern` absent) are taken to mean `_id`, as before.
pub(super) fn on_secondary_index(write_error: &Document) -> bool {
    match write_error.get_document("keyPattern") {
        Ok(p) => p.keys().any(|k| k != "_id"),
        Err(_) => false,
    }
}

impl MongoSink {
    /// Whether current states can be read from the source.
    pub(super) fn can_repair(&self) -> bool {
        self.lookup.client.get().is_some()
    }

    /// Repairs a write of document `id` into `ns` that collided on a unique secondary index
    /// (`key_value`, when known): writes the current source state of the document holding the
    /// value on the target, then that of `id`. False when it could not settle within
    /// [`MAX_STEPS`] writes (then the caller retries after a backoff).
    pub(super) async fn repair_duplicate(
        &self,
        ns: &Namespace,
        id: Bson,
        key_value: Option<Document>,
    ) -> Result<bool> {
        let Some(source) = self.lookup.client.get().cloned() else {
            return Ok(false);
        };
        let (me, ns, src_ns) = (self.clone(), ns.clone(), self.lookup.source_ns(ns));
        // Spawned: a driver future must never be dropped mid-call.
        tokio::spawn(async move {
            let mut stack = vec![id];
            let mut parked = Vec::new();
            let mut steps = 0;
            // First free the value the write needs, then write the document itself; a state
            // that collides in turn frees its own value first.
            if let Some(kv) = key_value {
                if let Some(h) = me.holder(&ns, kv, &stack[0]).await? {
                    stack.push(h);
                }
            }
            // Giving up (the caller retries its write) must not leave a document set aside:
            // nothing else would bring it back before the next start.
            let give_up = |parked: Vec<Bson>| async {
                me.leave_aside(&ns, parked);
                Ok(false)
            };
            while let Some(id) = stack.last().cloned() {
                steps += 1;
                if steps > MAX_STEPS {
                    return give_up(parked).await;
                }
                match me.write_current(&source, &src_ns, &ns, &id).await? {
                    Step::Done => {
                        stack.pop();
                    }
                    Step::Collided(kv) => match me.holder(&ns, kv, &id).await? {
                        Some(h) if !stack.contains(&h) => stack.push(h),
                        // A cycle (documents that swapped values): the holder is written
                        // further down the stack anyway, so its target copy steps aside until
                        // then. The journal says so first, so a crash in between still
                        // brings it back (see `finish_interrupted`).
                        Some(h) => {
                            me.journal(&ns, &src_ns, &h).await?;
                            parked.push(h.clone());
                            me.delete(&ns, &h).await?;
                        }
                        None => return give_up(parked).await,
                    },
                    Step::Retry => return give_up(parked).await,
                }
            }
            for h in &parked {
                me.unjournal(&ns, h).await?;
            }
            debug!(%ns, steps, parked = parked.len(), "Duplicate key repaired from the source's current documents.");
            Ok(true)
        })
        .await
        .map_err(|e| Error::Internal(format!("repair task failed: {e}")))?
    }

    /// Hands documents set aside by a repair that gave up to a task that writes them back.
    fn leave_aside(&self, ns: &Namespace, ids: Vec<Bson>) {
        if ids.is_empty() {
            return;
        }
        {
            let mut left = self
                .lookup
                .left_aside
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            left.extend(ids.into_iter().map(|id| (ns.clone(), id)));
        }
        if self
            .lookup
            .writer_started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if me.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                    return;
                }
                let left: Vec<(Namespace, Bson)> = {
                    let mut l = me
                        .lookup
                        .left_aside
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    std::mem::take(&mut *l)
                };
                for (ns, id) in left {
                    let back = match me.write_back(&ns, &id).await {
                        Ok(b) => b,
                        Err(e) => {
                            debug!(%ns, error = %e, "Writing back a document set aside failed; trying again.");
                            false
                        }
                    };
                    if !back {
                        let mut l = me
                            .lookup
                            .left_aside
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        l.push((ns, id));
                    }
                }
            }
        });
    }

    /// Writes the source's current state of a document set aside (repairing the collision
    /// it may meet) and clears its journal entry; false when it must be tried again.
    async fn write_back(&self, ns: &Namespace, id: &Bson) -> Result<bool> {
        let Some(source) = self.lookup.client.get().cloned() else {
            return Ok(false);
        };
        let src_ns = self.lookup.source_ns(ns);
        let done = match self.write_current(&source, &src_ns, ns, id).await? {
            Step::Done => true,
            Step::Collided(kv) => self.repair_duplicate(ns, id.clone(), Some(kv)).await?,
            Step::Retry => false,
        };
        if done {
            self.unjournal(ns, id).await?;
            debug!(%ns, %id, "A document set aside by a repair that gave up is back.");
        }
        Ok(done)
    }

    fn journal_coll(&self) -> mongodb::Collection<Document> {
        self.client
            .database(&self.meta_db)
            .collection::<Document>(JOURNAL)
    }

    /// Notes, before its target copy is deleted, that `id` must be written again.
    async fn journal(&self, ns: &Namespace, src_ns: &Namespace, id: &Bson) -> Result<()> {
        let key = doc! { "ns": ns.to_string(), "id": id.clone() };
        self.journal_coll()
            .update_one(
                doc! { "_id": &key },
                doc! { "$set": { "source_ns": src_ns.to_string(), "at": bson::DateTime::now() } },
            )
            .upsert(true)
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| Error::mongo(Role::Sink, "noting a document set aside", e))?;
        Ok(())
    }

    async fn unjournal(&self, ns: &Namespace, id: &Bson) -> Result<()> {
        let key = doc! { "ns": ns.to_string(), "id": id.clone() };
        self.journal_coll()
            .delete_one(doc! { "_id": key })
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| Error::mongo(Role::Sink, "clearing a document set aside", e))?;
        Ok(())
    }

    async fn delete(&self, ns: &Namespace, id: &Bson) -> Result<()> {
        self.client
            .database(&ns.db)
            .collection::<Document>(ns.coll_name())
            .delete_one(doc! { "_id": id.clone() })
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| {
                Error::mongo(Role::Sink, format!("setting a document of {ns} aside"), e)
            })?;
        Ok(())
    }

    /// Writes again the documents a repair set aside and a crash kept from coming back. Runs
    /// before the pipeline applies anything.
    pub(crate) async fn finish_interrupted_repairs(&self) -> Result<()> {
        use futures::TryStreamExt;
        if !self.can_repair() {
            return Ok(());
        }
        let left: Vec<Document> = self
            .journal_coll()
            .find(doc! {})
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading documents set aside", e))?
            .try_collect()
            .await
            .map_err(|e| Error::mongo(Role::Sink, "reading documents set aside", e))?;
        for entry in left {
            let Ok(key) = entry.get_document("_id") else {
                continue;
            };
            let (Ok(ns), Some(id)) = (key.get_str("ns"), key.get("id")) else {
                continue;
            };
            let ns = Namespace::parse(ns);
            // Renamed collections: where the document lives on the source.
            if let Ok(src) = entry.get_str("source_ns") {
                self.lookup.note(&ns, &Namespace::parse(src));
            }
            let source = self.lookup.client.get().cloned().expect("checked");
            let src_ns = self.lookup.source_ns(&ns);
            let mut backoff = crate::backoff::Backoff::new(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(2),
            );
            let mut done = false;
            for _ in 0..10 {
                done = match self.write_current(&source, &src_ns, &ns, id).await? {
                    Step::Done => true,
                    Step::Collided(kv) => self.repair_duplicate(&ns, id.clone(), Some(kv)).await?,
                    Step::Retry => false,
                };
                if done {
                    break;
                }
                self.backoff(&mut backoff).await?;
            }
            if !done {
                return Err(Error::User(format!(
                    "sink: could not write back document {id} of {ns}, set aside by an interrupted duplicate-key repair; it is listed in {}.{JOURNAL}",
                    self.meta_db
                )));
            }
            tracing::info!(%ns, %id, "A document set aside by an interrupted repair is back.");
            self.unjournal(&ns, id).await?;
        }
        Ok(())
    }

    /// The `_id` of the target document (other than `id`) holding `key_value`.
    async fn holder(&self, ns: &Namespace, key_value: Document, id: &Bson) -> Result<Option<Bson>> {
        if key_value.is_empty() {
            return Ok(None);
        }
        let coll = self
            .client
            .database(&ns.db)
            .collection::<Document>(ns.coll_name());
        let mut filter = key_value;
        filter.insert("_id", doc! { "$ne": id.clone() });
        let found = coll
            .find_one(filter)
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| Error::mongo(Role::Sink, format!("finding a duplicate key in {ns}"), e))?;
        Ok(found.and_then(|d| d.get("_id").cloned()))
    }

    /// Writes the source's current state of `id` (or deletes it, if gone there).
    async fn write_current(
        &self,
        source: &Client,
        src_ns: &Namespace,
        ns: &Namespace,
        id: &Bson,
    ) -> Result<Step> {
        let current = source
            .database(&src_ns.db)
            .collection::<RawDocumentBuf>(src_ns.coll_name())
            .find_one(doc! { "_id": id.clone() })
            .await
            .map_err(|e| {
                Error::mongo(Role::Source, format!("reading a document of {src_ns}"), e)
            })?;
        let wc = RawDocumentBuf::try_from(&self.write_concern)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let q = RawDocumentBuf::try_from(&doc! { "_id": id.clone() })
            .map_err(|e| Error::Internal(e.to_string()))?;
        let cmd = match current {
            Some(d) => bson::rawdoc! {
                "update": ns.coll_name(),
                "updates": [ { "q": q, "u": d, "upsert": true, "multi": false } ],
                "writeConcern": wc,
            },
            None => bson::rawdoc! {
                "delete": ns.coll_name(),
                "deletes": [ { "q": q, "limit": 1_i32 } ],
                "writeConcern": wc,
            },
        };
        let reply = self
            .client
            .database(&ns.db)
            .run_raw_command(cmd)
            .await
            .map_err(|e| Error::mongo(Role::Sink, format!("writing to {ns}"), e))?;
        if let Some((_, code, message, we)) = super::first_write_error(&reply) {
            if code == 11000 && on_secondary_index(we) {
                return Ok(Step::Collided(dup_key_value(we).unwrap_or_default()));
            }
            // On `_id`: the document's lane upserted it at the same moment.
            if TRANSIENT_CODES.contains(&code) || code == 11000 {
                return Ok(Step::Retry);
            }
            return Err(Error::Rejected {
                ns: ns.to_string(),
                code,
                message,
            });
        }
        if reply.get_document("writeConcernError").is_ok() {
            return Ok(Step::Retry);
        }
        Ok(Step::Done)
    }
}

/// What writing one current state came to.
enum Step {
    Done,
    /// It collided on this key value (empty when the server did not say).
    Collided(Document),
    /// A transient failure: the caller backs off and tries the original write again.
    Retry,
}

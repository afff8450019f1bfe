//! Unique indexes whose build met duplicate values: built later, once the changes have removed
//! them.
//!
//! A target written from changes that are not in one order across documents (the partitions
//! of a Kafka topic, a copy taken while users wrote) can hold for a while two documents with
//! one value of a unique index: states from different times. A build then fails on the
//! duplicate although the source's final states satisfy the index, and giving up would leave
//! the target without the index for good. So the index is recorded in strait's database on
//! the target (`deferred_indexes`, before the DDL counts as applied, so a restart keeps it) and
//! a task builds it again, with backoff, until it succeeds. A drop or rename of its collection
//! and a drop of the index update the record first, under the lock the builds hold: a build
//! must never run after its collection was dropped (`createIndexes` would create it again).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use futures::TryStreamExt;
use tokio::sync::{Mutex, OnceCell};
use tracing::{info, warn};

use super::MongoSink;
use crate::connectors::mongo::driver_error::{error_code, TRANSIENT_CODES};
use crate::core::event::{Namespace, OpType};
use crate::error::{Error, Result, Role};

/// The collection in strait's database on the target that records deferred builds.
const COLLECTION: &str = "deferred_indexes";

/// First wait before a deferred build is tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// An index deferred this long is worth a warning (once a minute): something on the target
/// that the source does not have holds a duplicate value.
const DEFERRED_LONG: Duration = Duration::from_secs(60);

/// DuplicateKey: what a unique build over duplicate values fails with.
const DUPLICATE_KEY: i32 = 11000;

/// One deferred build.
#[derive(Debug, Clone)]
struct Pending {
    ns: Namespace,
    spec: Document,
    since: Instant,
    next_try: Instant,
    wait: Duration,
}

impl Pending {
    fn new(ns: Namespace, spec: Document) -> Self {
        let now = Instant::now();
        Self {
            ns,
            spec,
            since: now,
            next_try: now + RETRY_FIRST,
            wait: RETRY_FIRST,
        }
    }

    fn name(&self) -> &str {
        self.spec.get_str("name").unwrap_or("")
    }
}

/// The deferred builds of a sink.
#[derive(Debug, Default)]
pub(crate) struct DeferredIndexes {
    /// Held by a build and by a DDL that changes what is pending.
    pending: Mutex<Vec<Pending>>,
    /// The records read back at the first DDL.
    loaded: OnceCell<()>,
    task_started: AtomicBool,
}

/// Whether `e` is a build that failed on duplicate values.
fn is_duplicate(e: &Error) -> bool {
    matches!(e, Error::Mongo { source, .. } if error_code(source) == Some(DUPLICATE_KEY))
}

/// What a DDL event does to each pending build: `None` forgets it, else what it becomes.
fn after_ddl(
    pending: &[Pending],
    op: &OpType,
    ns: &Namespace,
    to: Option<&Namespace>,
    dropped: &[String],
) -> Vec<Option<Pending>> {
    pending
        .iter()
        .map(|p| {
            let mut p = p.clone();
            match op {
                OpType::Drop if p.ns == *ns => return None,
                OpType::DropDatabase if p.ns.db == ns.db => return None,
                OpType::DropIndexes if p.ns == *ns && dropped.iter().any(|n| n == p.name()) => {
                    return None
                }
                OpType::Rename if p.ns == *ns => p.ns = to?.clone(),
                _ => {}
            }
            Some(p)
        })
        .collect()
}

impl MongoSink {
    /// Builds `specs` on `ns`; a unique index that meets duplicate values is deferred (see the
    /// module). Other failures are returned.
    pub(super) async fn build_or_defer(&self, ns: &Namespace, specs: &[Document]) -> Result<()> {
        match self.create_indexes(ns, specs).await {
            Err(e) if is_duplicate(&e) => {}
            r => return r,
        }
        // One at a time: the others must not wait for the one that cannot be built yet.
        for spec in specs {
            match self.create_indexes(ns, std::slice::from_ref(spec)).await {
                Err(e) if is_duplicate(&e) && spec.get_bool("unique").unwrap_or(false) => {
                    info!(%ns, index = spec.get_str("name").unwrap_or("?"), error = %e, "A unique index met duplicate values on the target; building it again once later changes remove them.");
                    self.defer_index(ns, spec.clone()).await?;
                }
                Err(Error::Mongo { source, .. })
                    if error_code(&source)
                        .is_some_and(|c| super::ddl::ALREADY_DONE.contains(&c)) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// The record of a deferred build: one per pipeline, sink, namespace and index name.
    fn deferred_key(&self, ns: &Namespace, name: &str) -> Document {
        doc! { "p": &self.pipeline, "ns": ns.to_string(), "name": name }
    }

    async fn defer_index(&self, ns: &Namespace, spec: Document) -> Result<()> {
        self.deferred_loaded().await?;
        let mut pending = self.deferred.pending.lock().await;
        let p = Pending::new(ns.clone(), spec);
        self.save_deferred(&p).await?;
        pending.retain(|q| !(q.ns == p.ns && q.name() == p.name()));
        pending.push(p);
        if let Some(t) = &self.telemetry {
            t.unique_indexes_deferred.fetch_add(1, Relaxed);
        }
        drop(pending);
        self.start_deferred_task();
        Ok(())
    }

    async fn save_deferred(&self, p: &Pending) -> Result<()> {
        let key = self.deferred_key(&p.ns, p.name());
        self.run(
            &self.meta_db,
            doc! {
                "update": COLLECTION,
                "updates": [{ "q": { "_id": key.clone() }, "u": { "_id": key, "spec": p.spec.clone() }, "upsert": true }],
                "writeConcern": self.write_concern.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    async fn forget_deferred(&self, p: &Pending) -> Result<()> {
        self.run(
            &self.meta_db,
            doc! {
                "delete": COLLECTION,
                "deletes": [{ "q": { "_id": self.deferred_key(&p.ns, p.name()) }, "limit": 1 }],
                "writeConcern": self.write_concern.clone(),
            },
        )
        .await
        .map(|_| ())
    }

    /// The builds deferred before a restart, read back once.
    pub(super) async fn deferred_loaded(&self) -> Result<()> {
        self.deferred
            .loaded
            .get_or_try_init(|| async {
                let found: Vec<Document> = self
                    .client
                    .database(&self.meta_db)
                    .collection::<Document>(COLLECTION)
                    .find(doc! { "_id.p": &self.pipeline })
                    .await
                    .map_err(|e| Error::mongo(Role::Sink, "reading deferred index builds", e))?
                    .try_collect()
                    .await
                    .map_err(|e| Error::mongo(Role::Sink, "reading deferred index builds", e))?;
                let mut pending = self.deferred.pending.lock().await;
                for d in found {
                    let ns = d
                        .get_document("_id")
                        .ok()
                        .and_then(|k| k.get_str("ns").ok());
                    if let (Some(ns), Ok(spec)) = (ns, d.get_document("spec")) {
                        pending.push(Pending::new(Namespace::parse(ns), spec.clone()));
                    }
                }
                if !pending.is_empty() {
                    info!(
                        indexes = pending.len(),
                        "Unique index builds deferred before the restart are tried again."
                    );
                    drop(pending);
                    self.start_deferred_task();
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Updates the deferred builds for a DDL event about to be applied (every lane drained).
    pub(super) async fn ddl_deferred(
        &self,
        op: &OpType,
        ns: &Namespace,
        to: Option<&Namespace>,
        dropped: &[String],
    ) -> Result<()> {
        if !matches!(
            op,
            OpType::Drop | OpType::DropDatabase | OpType::DropIndexes | OpType::Rename
        ) {
            return Ok(());
        }
        self.deferred_loaded().await?;
        let mut pending = self.deferred.pending.lock().await;
        if pending.is_empty() {
            return Ok(());
        }
        let next = after_ddl(&pending, op, ns, to, dropped);
        // Records first (a restart reads them back), then what the task tries. A renamed one
        // is saved under its new name before the old record goes: a crash between leaves both,
        // and the replayed rename makes them one.
        for (old, new) in pending.iter().zip(&next) {
            match new {
                Some(q) if q.ns == old.ns => continue,
                Some(q) => self.save_deferred(q).await?,
                None => {}
            }
            self.forget_deferred(old).await?;
        }
        let mut next: Vec<Pending> = next.into_iter().flatten().collect();
        let mut seen = std::collections::HashSet::new();
        next.retain(|p| seen.insert((p.ns.clone(), p.name().to_string())));
        *pending = next;
        Ok(())
    }

    fn start_deferred_task(&self) {
        if self.deferred.task_started.swap(true, Relaxed) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut warned: Option<Instant> = None;
            while me.sleep_unless_stopped(RETRY_FIRST).await {
                // The sink is gone when only this task holds its deferred builds.
                if Arc::strong_count(&me.deferred) == 1 {
                    return;
                }
                me.build_deferred(&mut warned).await;
            }
        });
    }

    /// Tries every deferred build that is due.
    async fn build_deferred(&self, warned: &mut Option<Instant>) {
        let mut pending = self.deferred.pending.lock().await;
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].next_try > now {
                i += 1;
                continue;
            }
            let p = pending[i].clone();
            match self
                .create_indexes(&p.ns, std::slice::from_ref(&p.spec))
                .await
            {
                Ok(()) => {}
                Err(Error::Mongo { source, .. })
                    if error_code(&source)
                        .is_some_and(|c| super::ddl::ALREADY_DONE.contains(&c)) => {}
                Err(e) => {
                    let again = is_duplicate(&e)
                        || e.is_retryable()
                        || matches!(&e, Error::Mongo { source, .. } if error_code(source).is_some_and(|c| TRANSIENT_CODES.contains(&c)));
                    if again {
                        let q = &mut pending[i];
                        q.wait = (q.wait * 2).min(RETRY_MAX);
                        q.next_try = Instant::now() + q.wait;
                        i += 1;
                        continue;
                    }
                    warn!(ns = %p.ns, index = p.name(), error = %e, "A deferred unique index cannot be built on the target; giving up on it.");
                }
            }
            if let Err(e) = self.forget_deferred(&p).await {
                // Kept: the next round builds it again ("already exists") and forgets it then.
                warn!(error = %e, "Could not remove the record of a deferred index build.");
                i += 1;
                continue;
            }
            pending.remove(i);
            info!(ns = %p.ns, index = p.name(), waited_s = p.since.elapsed().as_secs(), "Deferred unique index built.");
        }
        if let Some(p) = pending.iter().min_by_key(|p| p.since) {
            if p.since.elapsed() > DEFERRED_LONG
                && warned.is_none_or(|w| w.elapsed() > DEFERRED_LONG)
            {
                *warned = Some(Instant::now());
                warn!(ns = %p.ns, index = p.name(), waiting_s = p.since.elapsed().as_secs(), "A unique index still cannot be built on the target: two documents there hold one value, and the source does not (a document only the target has?).");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ns: &str, name: &str) -> Pending {
        Pending::new(
            Namespace::parse(ns),
            doc! { "name": name, "key": { "e": 1 }, "unique": true },
        )
    }

    fn names(v: &[Option<Pending>]) -> Vec<(String, String)> {
        v.iter()
            .flatten()
            .map(|p| (p.ns.to_string(), p.name().to_string()))
            .collect()
    }

    #[test]
    fn a_drop_forgets_its_collections_builds_only() {
        let v = vec![p("a.x", "e_1"), p("a.y", "e_1"), p("b.x", "e_1")];
        let ns = Namespace::parse("a.x");
        assert_eq!(
            names(&after_ddl(&v, &OpType::Drop, &ns, None, &[])),
            [("a.y".into(), "e_1".into()), ("b.x".into(), "e_1".into())]
        );
        assert_eq!(
            names(&after_ddl(&v, &OpType::DropDatabase, &ns, None, &[])),
            [("b.x".into(), "e_1".into())]
        );
    }

    #[test]
    fn a_rename_moves_and_a_dropped_index_is_forgotten() {
        let v = vec![p("a.x", "e_1"), p("a.x", "f_1")];
        let (ns, to) = (Namespace::parse("a.x"), Namespace::parse("c.z"));
        assert_eq!(
            names(&after_ddl(&v, &OpType::Rename, &ns, Some(&to), &[])),
            [("c.z".into(), "e_1".into()), ("c.z".into(), "f_1".into())]
        );
        assert_eq!(
            names(&after_ddl(
                &v,
                &OpType::DropIndexes,
                &ns,
                None,
                &["f_1".into()]
            )),
            [("a.x".into(), "e_1".into())]
        );
        // A namespace it does not name keeps everything.
        let other = Namespace::parse("a.other");
        assert_eq!(
            names(&after_ddl(&v, &OpType::Drop, &other, None, &[])).len(),
            2
        );
    }
}

//! Bulk loading for the full sync, and creating target collections and indexes.

use bson::{doc, Document, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::options::{Acknowledgment, CollectionOptions, WriteConcern};

use super::{MongoSink, WriteOp};
use crate::connectors::mongo::driver_error::{error_code, is_transient, TRANSIENT_CODES};
use crate::core::event::Namespace;
use crate::error::{Error, Result, Role};

impl MongoSink {
    /// Inserts a batch of copied documents, unordered. Documents that already exist (a resumed
    /// chunk, or data already on the target) are replaced by the copied version, so the result
    /// equals the source as of the copy. Returns the number written.
    pub async fn insert_copy(&self, ns: &Namespace, docs: Vec<RawDocumentBuf>) -> Result<u64> {
        let mut backoff = crate::backoff::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        let started = std::time::Instant::now();
        let mut docs = docs;
        loop {
            match self.insert_copy_once(ns, docs).await {
                Ok(n) => return Ok(n),
                // The whole batch again: inserts of existing documents become replaces.
                Err((Error::Mongo { source, .. }, back))
                    if is_transient(&source) && started.elapsed() < self.retry_for =>
                {
                    tracing::warn!(ns = %ns, error = %source, "Copy batch failed; retrying.");
                    self.note_error(&format!("sink: copying into {ns}: {source}"));
                    self.backoff(&mut backoff).await?;
                    docs = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn insert_copy_once(
        &self,
        ns: &Namespace,
        docs: Vec<RawDocumentBuf>,
    ) -> Result<u64, (Error, Vec<RawDocumentBuf>)> {
        let wc = WriteConcern::builder().w(Acknowledgment::Majority).build();
        let coll = self
            .client
            .database(&ns.db)
            .collection_with_options::<RawDocumentBuf>(
                ns.coll_name(),
                CollectionOptions::builder().write_concern(wc).build(),
            );
        let (docs, res) = tokio::spawn(async move {
            let r = coll.insert_many(docs.iter()).ordered(false).await;
            (docs, r)
        })
        .await
        .map_err(|e| {
            (
                Error::Internal(format!("insert task failed: {e}")),
                Vec::new(),
            )
        })?;
        let n = docs.len() as u64;
        let err = match res {
            Ok(_) => return Ok(n),
            Err(e) => e,
        };
        let ErrorKind::InsertMany(ime) = err.kind.as_ref() else {
            return Err((
                Error::mongo(Role::Sink, format!("copying into {ns}"), err),
                docs,
            ));
        };
        if ime.write_concern_error.is_some()
            || ime
                .write_errors
                .iter()
                .flatten()
                .any(|we| TRANSIENT_CODES.contains(&we.code))
        {
            return Err((
                Error::mongo(Role::Sink, format!("copying into {ns}"), err),
                docs,
            ));
        }
        let mut existing = Vec::new();
        for we in ime.write_errors.iter().flatten() {
            if we.code != 11000 {
                let msg = format!(
                    "sink rejected a copied document in {ns} (code {}): {}",
                    we.code, we.message
                );
                return Err((Error::User(msg), Vec::new()));
            }
            let doc = &docs[we.index];
            let id = doc.get("_id").ok().flatten().ok_or_else(|| {
                (
                    Error::Internal("copied document without _id".into()),
                    Vec::new(),
                )
            })?;
            let mut filter = RawDocumentBuf::new();
            filter.append(bson::raw::cstr!("_id"), id);
            existing.push(WriteOp::Upsert {
                ns: ns.clone(),
                filter,
                doc: doc.clone(),
            });
        }
        self.apply(&existing).await.map_err(|e| (e, Vec::new()))?;
        Ok(n)
    }

    /// Creates `ns` with the source's collection options (capped, validator, collation...).
    /// An existing collection is left as it is.
    pub async fn create_collection(&self, ns: &Namespace, options: &Document) -> Result<()> {
        let mut cmd = doc! { "create": ns.coll_name() };
        for (k, v) in options {
            // Identity and storage-engine internals belong to the source.
            if !matches!(k.as_str(), "uuid" | "storageEngine" | "indexOptionDefaults") {
                cmd.insert(k, v.clone());
            }
        }
        match self.run(&ns.db, cmd).await {
            Err(Error::Mongo { source, .. }) if error_code(&source) == Some(48) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Builds indexes from `listIndexes` specs of the source (`_id_` is skipped).
    pub async fn create_indexes(&self, ns: &Namespace, specs: &[Document]) -> Result<()> {
        let specs: Vec<Document> = specs
            .iter()
            .filter(|s| s.get_str("name").map(|n| n != "_id_").unwrap_or(true))
            .map(|s| {
                let mut s = s.clone();
                s.remove("v");
                s.remove("ns");
                s
            })
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        self.run(
            &ns.db,
            doc! { "createIndexes": ns.coll_name(), "indexes": specs },
        )
        .await?;
        Ok(())
    }

    /// Drops `ns` if it exists.
    pub async fn drop_collection(&self, ns: &Namespace) -> Result<()> {
        self.before_ddl(&crate::core::event::OpType::Drop, ns, None, &[])
            .await?;
        match self.run(&ns.db, doc! { "drop": ns.coll_name() }).await {
            Err(Error::Mongo { source, .. }) if error_code(&source) == Some(26) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Runs a command on the sink (spawned, so it is never dropped mid-call).
    pub(super) async fn run(&self, db: &str, cmd: Document) -> Result<Document> {
        let client = self.client.clone();
        let db_name = db.to_string();
        let what = cmd.keys().next().cloned().unwrap_or_default();
        tokio::spawn(async move { client.database(&db_name).run_command(cmd).await })
            .await
            .map_err(|e| Error::Internal(format!("command task failed: {e}")))?
            .map_err(|e| Error::mongo(Role::Sink, format!("{what} on {db}"), e))
    }
}

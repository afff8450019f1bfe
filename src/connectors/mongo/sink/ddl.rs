//! Applying DDL events. Every DDL is idempotent here: replaying a drop of a missing collection,
//! a create of an existing one, or a rename already done is not an error.

use bson::{doc, Bson, Document, RawDocument};
use tracing::{info, warn};

use super::MongoSink;
use crate::connectors::mongo::driver_error::error_code;
use crate::core::event::{ChangeEvent, Namespace, OpType};
use crate::error::{Error, Result, Role};

/// Codes meaning "already done": NamespaceNotFound, NamespaceExists, IndexNotFound,
/// IndexOptionsConflict, IndexKeySpecsConflict, IndexAlreadyExists.
pub(super) const ALREADY_DONE: &[i32] = &[26, 48, 27, 85, 86, 68];

impl MongoSink {
    /// Applies one DDL event (namespaces already renamed).
    pub async fn apply_ddl(&self, ev: &ChangeEvent) -> Result<()> {
        let ns = &ev.ns;
        let desc = ev.raw.get_document("operationDescription").ok();
        let dropped: Vec<String> = match ev.op {
            OpType::DropIndexes => index_specs(desc)
                .iter()
                .filter_map(|s| s.get_str("name").ok().map(String::from))
                .collect(),
            _ => Vec::new(),
        };
        self.before_ddl(&ev.op, ns, ev.rename_to.as_ref(), &dropped)
            .await?;
        let res = match &ev.op {
            OpType::Create => {
                // Expanded create events carry the collection's options (capped, validator...).
                let mut cmd = doc! { "create": ns.coll_name() };
                if let Some(d) = desc.and_then(|d| Document::try_from(d).ok()) {
                    for (k, v) in d {
                        if k != "idIndex" {
                            cmd.insert(k, v);
                        }
                    }
                }
                match self.run(&ns.db, cmd).await {
                    Err(Error::Mongo { source, .. })
                        if error_code(&source).is_some_and(|c| !ALREADY_DONE.contains(&c)) =>
                    {
                        warn!(ns = %ns, error = %source, "Creating with the source's options failed; creating plainly.");
                        self.run(&ns.db, doc! { "create": ns.coll_name() }).await
                    }
                    other => other,
                }
            }
            OpType::Drop | OpType::DropDatabase => self.drop_confirmed(&ev.op, ns).await,
            OpType::Rename => {
                let Some(to) = &ev.rename_to else {
                    return Err(Error::Internal("rename event without target".into()));
                };
                let drop_target = desc
                    .and_then(|d| d.get_bool("dropTarget").ok())
                    .unwrap_or(true);
                self.run(
                    "admin",
                    doc! { "renameCollection": ns.to_string(), "to": to.to_string(), "dropTarget": drop_target },
                )
                .await
            }
            OpType::CreateIndexes => {
                let specs = index_specs(desc);
                if specs.is_empty() {
                    return Ok(());
                }
                self.build_or_defer(ns, &specs)
                    .await
                    .map(|_| Document::new())
            }
            OpType::DropIndexes => {
                let names: Vec<Bson> = index_specs(desc)
                    .iter()
                    .filter_map(|s| s.get_str("name").ok().map(|n| Bson::String(n.into())))
                    .collect();
                if names.is_empty() {
                    return Ok(());
                }
                self.run(
                    &ns.db,
                    doc! { "dropIndexes": ns.coll_name(), "index": names },
                )
                .await
            }
            OpType::Modify => {
                let mut cmd = doc! { "collMod": ns.coll_name() };
                if let Some(d) = desc.and_then(|d| Document::try_from(d).ok()) {
                    for (k, v) in d {
                        cmd.insert(k, v);
                    }
                }
                match self.run(&ns.db, cmd).await {
                    Ok(d) => Ok(d),
                    Err(e) => {
                        warn!(ns = %ns, error = %e, "Could not apply collMod on the sink; continuing.");
                        return Ok(());
                    }
                }
            }
            _ => return Ok(()),
        };
        match res {
            Ok(_) => {
                info!(op = ev.op.as_str(), ns = %ns, "Applied DDL.");
                Ok(())
            }
            Err(Error::Mongo { source, .. })
                if error_code(&source).is_some_and(|c| ALREADY_DONE.contains(&c)) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl MongoSink {
    /// What strait keeps of a namespace beside the target's collection (parked documents,
    /// deferred unique builds) follows a DDL that drops or renames it, or drops indexes;
    /// before the DDL is applied.
    pub(super) async fn before_ddl(
        &self,
        op: &OpType,
        ns: &Namespace,
        to: Option<&Namespace>,
        dropped_indexes: &[String],
    ) -> Result<()> {
        self.ddl_parked(op, ns, to).await?;
        self.ddl_deferred(op, ns, to, dropped_indexes).await
    }

    /// Drops a collection or database and checks it is gone, dropping again if not: once on
    /// the test server a drop answered ok and the collection stayed listed for good (cause not
    /// found), and a collection left behind differs from the source for good. One
    /// `listCollections` per drop.
    async fn drop_confirmed(&self, op: &OpType, ns: &Namespace) -> Result<Document> {
        let cmd = || match op {
            OpType::DropDatabase => doc! { "dropDatabase": 1 },
            _ => doc! { "drop": ns.coll_name() },
        };
        let mut reply = self.run(&ns.db, cmd()).await?;
        for attempt in 1..=DROP_CHECKS {
            let filter = match op {
                OpType::DropDatabase => doc! {},
                _ => doc! { "name": ns.coll_name() },
            };
            let left = self
                .client
                .database(&ns.db)
                .list_collection_names()
                .filter(filter)
                .await
                .map_err(|e| {
                    Error::mongo(Role::Sink, format!("listing {} after a drop", ns.db), e)
                })?;
            if left.is_empty() {
                return Ok(reply);
            }
            warn!(ns = %ns, attempt, left = ?left, "Still listed after the drop; dropping again.");
            tokio::time::sleep(std::time::Duration::from_millis(100 * attempt as u64)).await;
            reply = match self.run(&ns.db, cmd()).await {
                Err(Error::Mongo { source, .. }) if error_code(&source) == Some(26) => reply,
                r => r?,
            };
        }
        // Something else writes there (a user of the target): not strait's to fight.
        warn!(ns = %ns, "Still listed after {DROP_CHECKS} drops; going on.");
        Ok(reply)
    }
}

/// How many times a drop is checked (and repeated).
const DROP_CHECKS: u32 = 5;

fn index_specs(desc: Option<&RawDocument>) -> Vec<Document> {
    let Some(arr) = desc.and_then(|d| d.get_array("indexes").ok()) else {
        return vec![];
    };
    arr.into_iter()
        .filter_map(|v| {
            v.ok()?
                .as_document()
                .and_then(|d| Document::try_from(d).ok())
        })
        .collect()
}

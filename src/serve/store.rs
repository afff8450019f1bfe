//! The control database of `strait serve`: what every worker of a group shares.
//!
//! - `pipelines`: `{_id, config (TOML text), parsed (the config with its defaults, as a
//!   document), version, paused, rate, restarts, updated}`, written
//!   by the REST API; the holder of a pipeline follows it.
//! - `workers`: `{_id, url, heartbeat, max_pipelines, running}`, one per live worker.
//! - `status`: `{_id, worker, version, at, status, progress, rate_ops, metrics}`, published by the
//!   holder of each pipeline every second, so any worker can answer for any pipeline.
//! - `leases` / `lease_log`: the engine's [`Lease`](crate::engine::lease::Lease), one per
//!   pipeline: a pipeline runs only where its lease is held.

use std::collections::HashMap;
use std::future::Future;

use bson::{doc, DateTime, Document};
use futures::TryStreamExt;
use mongodb::options::{CollectionOptions, ReturnDocument, WriteConcern};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::connectors::mongo::driver_error::error_code;
use crate::error::{Error, Result, Role};

/// A pipeline config as a document, defaults filled in, for queries on the control database
/// (the text stays the source of truth).
pub(crate) fn parsed(cfg: &crate::config::PipelineConfig) -> Document {
    // Through JSON: the config's own serde form (durations as text, addresses as strings).
    serde_json::to_value(cfg)
        .ok()
        .and_then(|v| bson::serialize_to_document(&v).ok())
        .unwrap_or_default()
}

/// One stored pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PipelineRecord {
    /// The pipeline's id (its config's `id`).
    #[serde(rename = "_id")]
    pub id: String,
    /// The pipeline file, as given.
    pub config: String,
    /// Bumped by every replace of the config: the holder restarts on a change.
    pub version: i64,
    /// Desired pause state.
    #[serde(default)]
    pub paused: bool,
    /// Desired rate limit (ops/s, 0 = none); `None` keeps the config's `api.rate_limit`.
    #[serde(default)]
    pub rate: Option<i64>,
    /// Bumped by `POST /pipelines/{id}/restart`.
    #[serde(default)]
    pub restarts: i64,
}

/// One worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerRecord {
    /// The worker's name.
    #[serde(rename = "_id")]
    pub id: String,
    /// Where its API listens.
    pub url: String,
    /// Last heartbeat.
    pub heartbeat: DateTime,
    /// Its `max_pipelines`.
    pub max_pipelines: i64,
    /// Pipelines it runs.
    pub running: Vec<String>,
}

/// The control database.
#[derive(Debug, Clone)]
pub(crate) struct ControlStore {
    db: Database,
    pipelines: Collection<Document>,
    workers: Collection<Document>,
    status: Collection<Document>,
    leases: Collection<Document>,
}

/// Runs a driver call on its own task, so a caller that goes away (an HTTP client hanging up)
/// never drops the driver's future mid-call.
async fn spawned<T, F>(what: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = mongodb::error::Result<T>> + Send + 'static,
{
    spawned_raw(f)
        .await?
        .map_err(|e| Error::mongo(Role::Control, what, e))
}

/// [`spawned`] keeping the driver's error, for callers that look at its code.
async fn spawned_raw<T, F>(f: F) -> Result<mongodb::error::Result<T>>
where
    T: Send + 'static,
    F: Future<Output = mongodb::error::Result<T>> + Send + 'static,
{
    tokio::spawn(f)
        .await
        .map_err(|e| Error::Internal(format!("control database task failed: {e}")))
}

/// Every record of `c`, by `_id`.
async fn all<T: serde::de::DeserializeOwned>(
    c: &Collection<Document>,
    what: &'static str,
) -> Result<Vec<T>> {
    let c = c.clone();
    let docs: Vec<Document> = spawned(what, async move {
        c.find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    docs.into_iter().map(record).collect()
}

fn record<T: serde::de::DeserializeOwned>(d: Document) -> Result<T> {
    bson::deserialize_from_document(d)
        .map_err(|e| Error::Internal(format!("unreadable control record: {e}")))
}

impl ControlStore {
    /// The collections of `db`, written with majority write concern.
    pub(crate) fn new(db: Database) -> Self {
        let opts = CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        let coll = |n: &str| db.collection_with_options::<Document>(n, opts.clone());
        Self {
            pipelines: coll("pipelines"),
            workers: coll("workers"),
            status: coll("status"),
            leases: coll("leases"),
            db,
        }
    }

    /// The database (leases live here).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Every pipeline, by id.
    pub(crate) async fn pipelines(&self) -> Result<Vec<PipelineRecord>> {
        all(&self.pipelines, "listing pipelines").await
    }

    /// One pipeline.
    pub(crate) async fn pipeline(&self, id: &str) -> Result<Option<PipelineRecord>> {
        let (c, f) = (self.pipelines.clone(), doc! { "_id": id });
        spawned("reading a pipeline", async move { c.find_one(f).await })
            .await?
            .map(record)
            .transpose()
    }

    /// Stores a new pipeline; false if the id exists.
    pub(crate) async fn create(&self, id: &str, config: &str, parsed: Document) -> Result<bool> {
        let d = doc! {
            "_id": id, "config": config, "parsed": parsed, "version": 1_i64, "paused": false,
            "restarts": 0_i64, "updated": DateTime::now(),
        };
        let c = self.pipelines.clone();
        match spawned_raw(async move { c.insert_one(d).await }).await? {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == Some(11000) => Ok(false),
            Err(e) => Err(Error::mongo(Role::Control, "storing a pipeline", e)),
        }
    }

    /// Replaces a pipeline's config (creating it if absent); returns the stored record.
    pub(crate) async fn replace(
        &self,
        id: &str,
        config: &str,
        parsed: Document,
    ) -> Result<PipelineRecord> {
        let c = self.pipelines.clone();
        let (f, u) = (
            doc! { "_id": id },
            doc! {
                "$set": { "config": config, "parsed": parsed, "updated": DateTime::now() },
                "$inc": { "version": 1_i64 },
                "$setOnInsert": { "paused": false, "restarts": 0_i64 },
            },
        );
        let d = spawned("storing a pipeline", async move {
            c.find_one_and_update(f, u)
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await
        })
        .await?
        .ok_or_else(|| Error::Internal("upsert returned no document".into()))?;
        record(d)
    }

    /// Deletes a pipeline and its published status; false if it did not exist.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool> {
        let (c, s, f) = (
            self.pipelines.clone(),
            self.status.clone(),
            doc! { "_id": id },
        );
        let f2 = f.clone();
        let n = spawned("deleting a pipeline", async move { c.delete_one(f).await })
            .await?
            .deleted_count;
        spawned("deleting a status", async move { s.delete_one(f2).await }).await?;
        Ok(n > 0)
    }

    /// Applies `update` to a pipeline; false if it does not exist.
    pub(crate) async fn update(&self, id: &str, update: Document) -> Result<bool> {
        let (c, f) = (self.pipelines.clone(), doc! { "_id": id });
        let r = spawned("updating a pipeline", async move {
            c.update_one(f, update).await
        })
        .await?;
        Ok(r.matched_count > 0)
    }

    /// Records this worker as alive, with what it runs.
    pub(crate) async fn heartbeat(&self, w: &WorkerRecord) -> Result<()> {
        let d = bson::serialize_to_document(w)
            .map_err(|e| Error::Internal(format!("worker record: {e}")))?;
        let (c, f) = (self.workers.clone(), doc! { "_id": &w.id });
        spawned("writing the worker heartbeat", async move {
            c.replace_one(f, d).upsert(true).await
        })
        .await?;
        Ok(())
    }

    /// Removes a worker that stops.
    pub(crate) async fn remove_worker(&self, id: &str) -> Result<()> {
        let (c, f) = (self.workers.clone(), doc! { "_id": id });
        spawned("removing the worker", async move { c.delete_one(f).await }).await?;
        Ok(())
    }

    /// Every worker that has a heartbeat record.
    pub(crate) async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        all(&self.workers, "listing workers").await
    }

    /// Publishes a pipeline's status.
    pub(crate) async fn publish(&self, id: &str, status: Document) -> Result<()> {
        let (c, f) = (self.status.clone(), doc! { "_id": id });
        spawned("publishing a status", async move {
            c.replace_one(f, status).upsert(true).await
        })
        .await?;
        Ok(())
    }

    /// Every published status, by pipeline id.
    pub(crate) async fn statuses(&self) -> Result<HashMap<String, Document>> {
        let c = self.status.clone();
        let docs: Vec<Document> = spawned("reading statuses", async move {
            c.find(doc! {}).await?.try_collect().await
        })
        .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
            .collect())
    }

    /// The live lease holder of every pipeline that has one.
    pub(crate) async fn holders(&self) -> Result<HashMap<String, String>> {
        let c = self.leases.clone();
        let now = DateTime::now();
        let docs: Vec<Document> = spawned("reading leases", async move {
            c.find(doc! { "expires": { "$gte": now } })
                .await?
                .try_collect()
                .await
        })
        .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                Some((
                    d.get_str("_id").ok()?.to_string(),
                    d.get_str("holder").ok()?.to_string(),
                ))
            })
            .collect())
    }
}

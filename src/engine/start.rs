//! The phases of a pipeline whose source is MongoDB: start-up checks, the full sync, then the
//! change stream through the engine, with the lost-position resync between them.

use std::sync::Arc;

use bson::Timestamp;
use mongodb::Client;
use tracing::{info, warn};

use super::{full_sync, Engine};
use crate::checkpoint::{CheckpointStore, Checkpointer, FileStore, MongoStore};
use crate::config::{CheckpointStoreKind, HistoryLostPolicy, PipelineConfig, StartAt};
use crate::connectors::mongo::connect::connect_uri;
use crate::connectors::mongo::snapshot::list_collections;
use crate::connectors::mongo::stream::{head_position, StartPosition, StreamSettings};
use crate::connectors::mongo::MongoSource;
use crate::error::{Error, Result, Role};
use crate::telemetry::PipelineState;
use crate::transform::Transforms;

/// A pipeline reading a MongoDB deployment: the engine, the source client and the checkpoint.
pub(crate) struct MongoPipeline {
    /// The engine with the sinks.
    pub(crate) engine: Engine,
    /// Source client.
    pub(crate) source: Client,
    /// The MongoDB sink that repairs duplicate keys from the source, if any.
    pub(crate) repairs: Option<crate::connectors::mongo::MongoSink>,
    /// The checkpoint and its store.
    pub(crate) checkpoint: Arc<Checkpointer>,
}

/// Checks the scope against the source and turns on pre-images when asked, without writing
/// anything else.
pub(crate) async fn check_source(
    cfg: &PipelineConfig,
    source: &Client,
    transforms: &Transforms,
) -> Result<()> {
    if !cfg.scope.allow_missing {
        let exact = transforms.scope.exact_includes();
        if !exact.is_empty() {
            let present = list_collections(source, &transforms.scope).await?;
            for ns in exact {
                if !present.iter().any(|c| c.ns == ns) {
                    return Err(Error::User(format!(
                        "collection {ns} named in scope.include does not exist on the source (set scope.allow_missing = true to wait for it)"
                    )));
                }
            }
        }
    }
    if cfg.stream.enable_pre_images {
        enable_pre_images(source, transforms).await?;
    }
    Ok(())
}

/// Turns on `changeStreamPreAndPostImages` for every source collection in scope, so delete
/// events carry the deleted document.
async fn enable_pre_images(source: &Client, transforms: &Transforms) -> Result<()> {
    for c in list_collections(source, &transforms.scope).await? {
        let ns = c.ns;
        source
            .database(&ns.db)
            .run_command(bson::doc! {
                "collMod": ns.coll_name(),
                "changeStreamPreAndPostImages": { "enabled": true },
            })
            .await
            .map_err(|e| {
                Error::mongo(
                    Role::Source,
                    format!("enabling pre-images on {ns} (stream.enable_pre_images)"),
                    e,
                )
            })?;
        info!(%ns, "Pre-images enabled.");
    }
    Ok(())
}

/// The checkpoint store a config asks for (`client`'s deployment unless another URI is given).
pub async fn checkpoint_store(cfg: &PipelineConfig, client: &Client) -> Result<CheckpointStore> {
    let c = &cfg.checkpoint;
    Ok(match c.store {
        CheckpointStoreKind::File => {
            CheckpointStore::File(FileStore::new(c.path.clone().expect("validated")))
        }
        CheckpointStoreKind::Mongodb => {
            let client = match &c.uri {
                Some(uri) => {
                    let defaults = cfg.mongo_endpoint().expect("a MongoDB endpoint");
                    connect_uri(uri, defaults, Role::Checkpoint).await?
                }
                None => client.clone(),
            };
            CheckpointStore::Mongo(MongoStore::new(&client, &c.database, &c.collection))
        }
    })
}

/// The checkpoint store of a pipeline without a MongoDB endpoint of its own: a file, or the
/// MongoDB deployment at `checkpoint.uri`.
pub async fn standalone_checkpoint_store(cfg: &PipelineConfig) -> Result<CheckpointStore> {
    let c = &cfg.checkpoint;
    // Without checkpoint.uri, a MongoDB sink keeps it (as for MongoDB sources).
    let uri = c.uri.as_ref().or(cfg.mongo_sink().map(|m| &m.uri));
    Ok(match (&c.store, uri) {
        (CheckpointStoreKind::Mongodb, Some(uri)) => {
            let defaults = crate::config::MongoEndpoint {
                kind: Default::default(),
                uri: uri.clone(),
                tls: None,
                connect_timeout: std::time::Duration::from_secs(10),
                ops: None,
            };
            let client = connect_uri(uri, &defaults, Role::Checkpoint).await?;
            CheckpointStore::Mongo(MongoStore::new(&client, &c.database, &c.collection))
        }
        _ => CheckpointStore::File(FileStore::new(
            c.path
                .clone()
                .ok_or_else(|| Error::Internal("checkpoint.path validated".into()))?,
        )),
    })
}

impl MongoPipeline {
    /// Saves the current checkpoint.
    pub(crate) async fn save_checkpoint(&self) -> Result<()> {
        Ok(self.checkpoint.save().await?)
    }

    /// Stream settings of the pipeline.
    pub(crate) fn settings(&self) -> StreamSettings {
        let cfg = &self.engine.cfg;
        let s = &cfg.stream;
        StreamSettings {
            target: self.engine.transforms.scope.watch_target(),
            update_mode: s.update_mode,
            ddl: s.ddl,
            batch_size: s.batch_size,
            max_await: s.max_await,
            pre_images: cfg.wants_pre_images().then_some(s.pre_images),
        }
    }

    /// Runs until it finishes (mode `full`), is cancelled, or fails.
    pub(crate) async fn run(self: Arc<Self>) -> Result<()> {
        let p = &self;
        let cfg = p.engine.cfg.clone();
        if let Some(sink) = &p.repairs {
            // Under the lease (when there is one): only the holder writes.
            sink.finish_interrupted_repairs().await?;
        }
        let store = &p.checkpoint.store;
        let saved = store.load(&cfg.id).await?;
        if let Some(c) = &saved {
            info!(store = %store.describe(), cluster_time = ?c.cluster_time, "Resuming from checkpoint.");
            *p.checkpoint.state.lock().await = c.clone();
        }
        let mut fresh = saved.is_none();
        loop {
            let ckpt = p.checkpoint.state.lock().await.clone();
            let copy_pending = ckpt.full_sync.as_ref().is_some_and(|f| !f.done);
            let start = if copy_pending {
                if !full_sync::copy(&self, fresh).await? {
                    return Ok(());
                }
                match p.checkpoint.state.lock().await.resume_token.clone() {
                    Some(t) => StartPosition::After(t),
                    None => StartPosition::Now,
                }
            } else if let Some(token) = ckpt.resume_token.clone() {
                StartPosition::After(token)
            } else if let Some(token) = ckpt.full_sync.as_ref().and_then(|f| f.start_token.clone())
            {
                // A finished copy without a streaming position (written by an older version, or
                // edited): changes since the copy began must still be applied.
                StartPosition::After(token)
            } else if ckpt.full_sync.is_none() && cfg.mode.copies() {
                let start_token = if cfg.mode.streams() {
                    Some(head_position(&p.source, &p.settings()).await?)
                } else {
                    None
                };
                let plan = full_sync::plan(p, start_token).await?;
                let collections = plan.collections.len();
                p.checkpoint.state.lock().await.full_sync = Some(plan);
                p.save_checkpoint().await?;
                // Logged once durable: a crash before this line plans again, after it resumes.
                info!(collections, "Full sync planned.");
                continue;
            } else if cfg.mode.streams() {
                let start = match cfg.stream.start_at {
                    StartAt::Now => {
                        StartPosition::After(head_position(&p.source, &p.settings()).await?)
                    }
                    StartAt::Timestamp(t) => StartPosition::At(Timestamp {
                        time: t,
                        increment: 0,
                    }),
                };
                // Saved before anything is applied, so a crash before the first checkpoint does
                // not move the start to a later "now".
                if let StartPosition::After(token) = &start {
                    p.checkpoint.state.lock().await.resume_token = Some(token.clone());
                    p.save_checkpoint().await?;
                }
                start
            } else {
                info!("Full sync already complete according to the checkpoint; nothing to do (`strait checkpoint reset` starts over).");
                return Ok(());
            };
            if !cfg.mode.streams() {
                p.engine.telemetry.set_state(PipelineState::Stopped);
                return Ok(());
            }
            let source = Arc::new(MongoSource::new(
                p.source.clone(),
                p.settings(),
                start,
                p.checkpoint.clone(),
                p.engine.telemetry.clone(),
            ));
            match p.engine.run(source).await {
                Err(Error::HistoryLost { position, detail })
                    if cfg.stream.on_history_lost == HistoryLostPolicy::Resync =>
                {
                    warn!(%position, %detail, "The saved position is no longer in the source's change log; copying the data again.");
                    let token = head_position(&p.source, &p.settings()).await?;
                    let plan = full_sync::plan(p, Some(token)).await?;
                    // The target may hold documents deleted during the gap: copy into fresh
                    // collections.
                    for c in &plan.collections {
                        let target = p
                            .engine
                            .transforms
                            .target_ns(&crate::core::Namespace::parse(&c.ns));
                        for s in p.engine.sinks.iter().filter(|s| s.takes_copy()) {
                            s.drop_for_resync(&target).await?;
                        }
                    }
                    {
                        let mut c = p.checkpoint.state.lock().await;
                        c.full_sync = Some(plan);
                        c.resume_token = None;
                        c.cluster_time = None;
                    }
                    p.save_checkpoint().await?;
                    fresh = false;
                }
                other => {
                    p.engine.telemetry.set_state(PipelineState::Stopped);
                    return other;
                }
            }
        }
    }
}

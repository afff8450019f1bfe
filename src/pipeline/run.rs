//! Start-up checks and the phases of `strait run`.

use std::sync::Arc;

use bson::Timestamp;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{full_sync, stream, Pipeline};
use crate::checkpoint::{Checkpoint, CheckpointStore, FileStore, MongoStore};
use crate::config::{CheckpointStoreKind, HistoryLostPolicy, PipelineConfig, StartAt};
use crate::connect::{connect, connect_uri};
use crate::error::{Error, Result, Role};
use crate::sink::mongo::MongoSink;
use crate::source::mongo::snapshot::list_collections;
use crate::source::mongo::stream::{head_position, StartPosition};
use crate::telemetry::{PipelineState, Telemetry};
use crate::transform::Transforms;

/// Connects everything a pipeline needs and checks the scope, without writing anything.
pub async fn open(
    cfg: PipelineConfig,
    telemetry: Arc<Telemetry>,
    control: Arc<crate::control::Control>,
    cancel: CancellationToken,
) -> Result<Pipeline> {
    let source_cfg = cfg
        .mongo_source()
        .ok_or_else(|| Error::Internal("this pipeline reads from MongoDB".into()))?;
    let (source, sink) = match cfg.mongo_sink() {
        Some(m) => {
            let (source, sink) =
                tokio::join!(connect(source_cfg, Role::Source), connect(m, Role::Sink));
            (source?, Some(sink?))
        }
        None => (connect(source_cfg, Role::Source).await?, None),
    };
    // Without a MongoDB sink, checkpoints live on the source (as MongoShake keeps them).
    let store = checkpoint_store(&cfg, sink.as_ref().unwrap_or(&source)).await?;
    let transforms = Transforms::from_config(&cfg);
    if !cfg.scope.allow_missing {
        let exact = transforms.scope.exact_includes();
        if !exact.is_empty() {
            let present = list_collections(&source, &transforms.scope).await?;
            for ns in exact {
                if !present.iter().any(|c| c.ns == ns) {
                    return Err(Error::User(format!(
                        "collection {ns} named in scope.include does not exist on the source (set scope.allow_missing = true to wait for it)"
                    )));
                }
            }
        }
    }
    let mut kafkas = Vec::new();
    for (name, k) in cfg.kafka_sinks() {
        let sink = Arc::new(crate::sink::kafka::KafkaSink::open(&name, k)?);
        sink.check(source_cfg.connect_timeout).await?;
        info!(sink = %name, target = %sink.describe(), "Kafka sink ready.");
        kafkas.push(sink);
    }
    let mut archives = Vec::new();
    for (name, a) in cfg.archive_sinks() {
        let sink = crate::sink::archive::ArchiveSink::open(&name, a)?;
        sink.check().await?;
        info!(sink = %name, target = %sink.describe(), ops = ?a.ops, "Archive sink ready.");
        archives.push(sink);
    }
    if cfg.stream.enable_pre_images {
        enable_pre_images(&source, &transforms).await?;
    }
    let checkpoint = Checkpoint {
        pipeline: cfg.id.clone(),
        ..Default::default()
    };
    Ok(Pipeline {
        cfg: Arc::new(cfg),
        source,
        sink: sink.map(|s| {
            MongoSink::new(s)
                .with_telemetry(telemetry.clone())
                .with_cancel(cancel.clone())
        }),
        kafkas,
        archives,
        store,
        transforms,
        telemetry,
        cancel,
        control,
        checkpoint: Arc::new(Mutex::new(checkpoint)),
        save_lock: Mutex::new(()),
    })
}

/// Turns on `changeStreamPreAndPostImages` for every source collection in scope, so delete
/// events carry the deleted document.
async fn enable_pre_images(source: &mongodb::Client, transforms: &Transforms) -> Result<()> {
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

/// The checkpoint store a config asks for (the sink's client unless another URI is given).
pub async fn checkpoint_store(
    cfg: &PipelineConfig,
    sink: &mongodb::Client,
) -> Result<CheckpointStore> {
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
                None => sink.clone(),
            };
            CheckpointStore::Mongo(MongoStore::new(&client, &c.database, &c.collection))
        }
    })
}

/// Runs the pipeline until it finishes (mode `full`), is cancelled, or fails.
pub async fn run(p: Arc<Pipeline>) -> Result<()> {
    let cfg = p.cfg.clone();
    let saved = p.store.load(&cfg.id).await?;
    if let Some(c) = &saved {
        info!(store = %p.store.describe(), cluster_time = ?c.cluster_time, "Resuming from checkpoint.");
        *p.checkpoint.lock().await = c.clone();
    }
    let mut fresh = saved.is_none();
    loop {
        let ckpt = p.checkpoint.lock().await.clone();
        let copy_pending = ckpt.full_sync.as_ref().is_some_and(|f| !f.done);
        let start = if copy_pending {
            if !full_sync::copy(&p, fresh).await? {
                return Ok(());
            }
            after_copy(&p).await?
        } else if let Some(token) = ckpt.resume_token.clone() {
            StartPosition::After(token)
        } else if let Some(token) = ckpt.full_sync.as_ref().and_then(|f| f.start_token.clone()) {
            // A finished copy without a streaming position (written by an older version, or
            // edited): changes since the copy began must still be applied.
            StartPosition::After(token)
        } else if ckpt.full_sync.is_none() && cfg.mode.copies() {
            let start_token = if cfg.mode.streams() {
                Some(head_position(&p.source, &stream::settings(&p)).await?)
            } else {
                None
            };
            let plan = full_sync::plan(&p, start_token).await?;
            info!(collections = plan.collections.len(), "Full sync planned.");
            p.checkpoint.lock().await.full_sync = Some(plan);
            p.save_checkpoint().await?;
            continue;
        } else if cfg.mode.streams() {
            let start = match cfg.stream.start_at {
                StartAt::Now => {
                    StartPosition::After(head_position(&p.source, &stream::settings(&p)).await?)
                }
                StartAt::Timestamp(t) => StartPosition::At(Timestamp {
                    time: t,
                    increment: 0,
                }),
            };
            // Saved before anything is applied, so a crash before the first checkpoint does
            // not move the start to a later "now".
            if let StartPosition::After(token) = &start {
                p.checkpoint.lock().await.resume_token = Some(token.clone());
                p.save_checkpoint().await?;
            }
            start
        } else {
            info!("Full sync already complete according to the checkpoint; nothing to do (`strait checkpoint reset` starts over).");
            return Ok(());
        };
        if !cfg.mode.streams() {
            p.telemetry.set_state(PipelineState::Stopped);
            return Ok(());
        }
        match stream::follow(&p, start).await {
            Err(Error::HistoryLost { position, detail })
                if cfg.stream.on_history_lost == HistoryLostPolicy::Resync =>
            {
                warn!(%position, %detail, "The saved position is no longer in the source's change log; copying the data again.");
                let token = head_position(&p.source, &stream::settings(&p)).await?;
                let plan = full_sync::plan(&p, Some(token)).await?;
                // The target may hold documents deleted during the gap: copy into fresh collections.
                for c in &plan.collections {
                    let target = p
                        .transforms
                        .target_ns(&crate::event::Namespace::parse(&c.ns));
                    if let Some(sink) = &p.sink {
                        sink.drop_collection(&target).await?;
                    }
                }
                {
                    let mut c = p.checkpoint.lock().await;
                    c.full_sync = Some(plan);
                    c.resume_token = None;
                    c.cluster_time = None;
                }
                p.save_checkpoint().await?;
                fresh = false;
            }
            other => {
                p.telemetry.set_state(PipelineState::Stopped);
                return other;
            }
        }
    }
}

/// After the copy, streaming starts at the position taken before it (saved by the copy).
async fn after_copy(p: &Pipeline) -> Result<StartPosition> {
    match p.checkpoint.lock().await.resume_token.clone() {
        Some(t) => Ok(StartPosition::After(t)),
        None => Ok(StartPosition::Now),
    }
}

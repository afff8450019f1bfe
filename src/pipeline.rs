//! Running a pipeline: the full sync, then the change stream through ordered lanes, with the
//! checkpoint following what the sink has made durable.

pub mod ack;
pub mod full_sync;
pub mod kafka_apply;
pub mod lanes;
pub mod lease;
pub mod run;
pub mod stream;

use std::sync::Arc;

use mongodb::Client;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::PipelineConfig;
use crate::error::Result;
use crate::sink::mongo::MongoSink;
use crate::telemetry::Telemetry;
use crate::transform::Transforms;

/// Everything a running pipeline shares.
pub struct Pipeline {
    /// The validated configuration.
    pub cfg: Arc<PipelineConfig>,
    /// Source client.
    pub source: Client,
    /// The MongoDB sink (`None` when `[sink]` is Kafka).
    pub sink: Option<MongoSink>,
    /// Kafka sinks: `[sink]` when it is Kafka, then `[sinks.<name>]` ones, in name order.
    pub kafkas: Vec<Arc<crate::sink::kafka::KafkaSink>>,
    /// Archive sinks (`[sinks.<name>]`), in name order.
    pub archives: Vec<crate::sink::archive::ArchiveSink>,
    /// Checkpoint store.
    pub store: CheckpointStore,
    /// Filters and renames.
    pub transforms: Transforms,
    /// Progress counters.
    pub telemetry: Arc<Telemetry>,
    /// Graceful shutdown.
    pub cancel: CancellationToken,
    /// Pause and rate limit.
    pub control: Arc<crate::control::Control>,
    /// The checkpoint as last saved (or about to be).
    pub checkpoint: Arc<Mutex<Checkpoint>>,
    /// Serializes saves, so a slower save of an older state never lands after a newer one.
    pub save_lock: Mutex<()>,
}

impl Pipeline {
    /// The MongoDB sink, for steps that only exist with one.
    pub fn mongo_sink(&self) -> Result<&MongoSink> {
        self.sink
            .as_ref()
            .ok_or_else(|| crate::error::Error::Internal("no MongoDB sink".into()))
    }

    /// The Kafka sink that is `[sink]`, which also receives the initial copy.
    pub fn primary_kafka(&self) -> Option<&Arc<crate::sink::kafka::KafkaSink>> {
        self.kafkas
            .first()
            .filter(|k| k.name == "sink" && self.sink.is_none())
    }

    /// Saves the current checkpoint.
    pub async fn save_checkpoint(&self) -> Result<()> {
        let _turn = self.save_lock.lock().await;
        let c = self.checkpoint.lock().await.clone();
        self.store.save(&c).await?;
        Ok(())
    }
}

//! Checkpoints: the position up to which every change is durable in the sink, plus the plan
//! and progress of an unfinished full sync.
//!
//! The contract: a checkpoint is written only after the sink acknowledged every event at or
//! before its position, so restarting from it can replay but never skip.

mod file;
mod mongo;

use bson::{Bson, DateTime, Document, Timestamp};
use serde::{Deserialize, Serialize};

pub use file::FileStore;
pub use mongo::MongoStore;

/// Failure to read or write a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The MongoDB store failed.
    #[error("checkpoint store: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// The file store failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The checkpoint file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored checkpoint cannot be understood.
    #[error("checkpoint is corrupt: {0}")]
    Corrupt(String),
}

impl CheckpointError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CheckpointError::Mongo(e) => crate::connectors::mongo::driver_error::is_transient(e),
            _ => false,
        }
    }
}

/// What is saved for a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The pipeline id.
    #[serde(rename = "_id")]
    pub pipeline: String,
    /// Resume token of the last change durable in the sink (or of an idle stream's position).
    #[serde(default)]
    pub resume_token: Option<Document>,
    /// Cluster time of that position, when known.
    #[serde(default)]
    pub cluster_time: Option<Timestamp>,
    /// Plan and progress of the full sync, while it is unfinished or for the record after.
    #[serde(default)]
    pub full_sync: Option<FullSyncState>,
    /// Positions a source keeps itself (DynamoDB Streams: a sequence number per shard, the
    /// scan's progress), in the source's own shape.
    #[serde(default)]
    pub source_state: Option<Document>,
    /// Wall-clock time of the save.
    #[serde(default)]
    pub updated_at: Option<DateTime>,
}

/// Progress of a full sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FullSyncState {
    /// Change-stream position taken before the copy started; streaming starts here.
    #[serde(default)]
    pub start_token: Option<Document>,
    /// Cluster time of `start_token`, when known.
    #[serde(default)]
    pub start_time: Option<Timestamp>,
    /// Collections to copy.
    pub collections: Vec<CollectionPlan>,
    /// Every collection copied and indexed.
    #[serde(default)]
    pub done: bool,
}

/// One collection of a full sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectionPlan {
    /// Source namespace `db.coll`.
    pub ns: String,
    /// Document count estimated when planning.
    pub estimated: u64,
    /// `_id` ranges; together they cover the collection.
    pub chunks: Vec<ChunkPlan>,
    /// Target collection created with the source's options.
    #[serde(default)]
    pub created: bool,
    /// Indexes built on the target.
    #[serde(default)]
    pub indexes_done: bool,
}

/// An `_id` range `[lower, upper)`; a missing bound is open.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// Inclusive lower bound.
    #[serde(default)]
    pub lower: Option<Bson>,
    /// Exclusive upper bound.
    #[serde(default)]
    pub upper: Option<Bson>,
    /// Copied completely.
    #[serde(default)]
    pub done: bool,
    /// The last `_id` every copy sink has made durable (a chunk is read in `_id` order): a
    /// resumed copy reads only after it, instead of from the chunk's start.
    #[serde(default)]
    pub copied_to: Option<Bson>,
}

/// Where checkpoints live.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    /// A collection in a MongoDB deployment.
    Mongo(MongoStore),
    /// A local file.
    File(FileStore),
}

impl CheckpointStore {
    /// Reads the checkpoint of `pipeline`, if any.
    pub async fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        match self {
            CheckpointStore::Mongo(s) => s.load(pipeline).await,
            CheckpointStore::File(s) => s.load(pipeline).await,
        }
    }

    /// Durably replaces the checkpoint.
    pub async fn save(&self, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
        let mut ckpt = ckpt.clone();
        ckpt.updated_at = Some(DateTime::now());
        match self {
            CheckpointStore::Mongo(s) => s.save(&ckpt).await,
            CheckpointStore::File(s) => s.save(&ckpt).await,
        }
    }

    /// Deletes the checkpoint; the next run starts from scratch. Returns whether one existed.
    pub async fn reset(&self, pipeline: &str) -> Result<bool, CheckpointError> {
        match self {
            CheckpointStore::Mongo(s) => s.reset(pipeline).await,
            CheckpointStore::File(s) => s.reset(pipeline).await,
        }
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        match self {
            CheckpointStore::Mongo(s) => s.describe(),
            CheckpointStore::File(s) => s.describe(),
        }
    }
}

/// The checkpoint of a running pipeline: the state in memory and the store it is saved to.
/// Saves are serialized, so a slower save of an older state never lands after a newer one.
#[derive(Debug)]
pub struct Checkpointer {
    /// Where it is saved.
    pub store: CheckpointStore,
    /// The checkpoint as last saved (or about to be).
    pub state: tokio::sync::Mutex<Checkpoint>,
    save_lock: tokio::sync::Mutex<()>,
}

impl Checkpointer {
    /// An empty checkpoint of `pipeline`, saved to `store`.
    pub fn new(store: CheckpointStore, pipeline: &str) -> Self {
        Self {
            store,
            state: tokio::sync::Mutex::new(Checkpoint {
                pipeline: pipeline.to_string(),
                ..Default::default()
            }),
            save_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Saves the current state.
    pub async fn save(&self) -> Result<(), CheckpointError> {
        let _turn = self.save_lock.lock().await;
        let c = self.state.lock().await.clone();
        self.store.save(&c).await
    }
}

impl Checkpoint {
    /// The checkpoint as BSON.
    pub fn to_document(&self) -> Result<Document, CheckpointError> {
        bson::serialize_to_document(self).map_err(|e| CheckpointError::Corrupt(e.to_string()))
    }

    /// Reads a checkpoint from BSON.
    pub fn from_document(doc: Document) -> Result<Self, CheckpointError> {
        bson::deserialize_from_document(doc).map_err(|e| CheckpointError::Corrupt(e.to_string()))
    }

    /// The checkpoint as canonical Extended JSON (types survive the trip through a file).
    pub fn to_json(&self) -> Result<String, CheckpointError> {
        let v = Bson::Document(self.to_document()?).into_canonical_extjson();
        serde_json::to_string_pretty(&v).map_err(|e| CheckpointError::Corrupt(e.to_string()))
    }

    /// Reads a checkpoint from Extended JSON.
    pub fn from_json(text: &str) -> Result<Self, CheckpointError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        match Bson::try_from(v).map_err(|e| CheckpointError::Corrupt(e.to_string()))? {
            Bson::Document(d) => Self::from_document(d),
            _ => Err(CheckpointError::Corrupt("not a document".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(token: String, t: u32, i: u32, lower: i64) -> Checkpoint {
        Checkpoint {
            pipeline: "p".into(),
            resume_token: Some(bson::doc! { "_data": token }),
            cluster_time: Some(Timestamp {
                time: t,
                increment: i,
            }),
            full_sync: Some(FullSyncState {
                start_token: None,
                start_time: Some(Timestamp {
                    time: t,
                    increment: 0,
                }),
                collections: vec![CollectionPlan {
                    ns: "a.b".into(),
                    estimated: 10,
                    chunks: vec![
                        ChunkPlan {
                            lower: None,
                            upper: Some(Bson::Int64(lower)),
                            done: true,
                            copied_to: None,
                        },
                        ChunkPlan {
                            lower: Some(Bson::Int64(lower)),
                            upper: None,
                            done: false,
                            copied_to: Some(Bson::Int64(lower + 3)),
                        },
                    ],
                    created: true,
                    indexes_done: false,
                }],
                done: false,
            }),
            source_state: None,
            updated_at: None,
        }
    }

    proptest! {
        #[test]
        fn json_round_trip_keeps_types(token in "[0-9A-F]{0,40}", t: u32, i: u32, lower: i64) {
            let c = sample(token, t, i, lower);
            let back = Checkpoint::from_json(&c.to_json().unwrap()).unwrap();
            prop_assert_eq!(back, c);
        }
    }
}

//! The dead-letter file of a DynamoDB or Kinesis source: changes the target refused for good
//! and records that could not be read, one JSON line each with the reason, appended and synced
//! before the pipeline goes past them.
//!
//! ```json
//! {"time": "2026-12-04T19:20:00Z", "pipeline": "cn-to-global", "reason": "...",
//!  "shard": "shardId-...", "seq": "4960...", "record": {<the change as Kinesis Data Streams
//!  for DynamoDB writes it>}, "data": "<a Kinesis record's bytes that are not such a change>"}
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tracing::warn;

use super::follow::ShardOrigin;
use crate::connectors::dynamodb::record::StreamChange;
use crate::connectors::{DeadLetters, Origin};
use crate::core::ChangeEvent;
use crate::error::{Error, Result};

/// Appends dead letters to a file.
pub(crate) struct DeadLetterFile {
    path: PathBuf,
    pipeline: String,
    file: Mutex<Option<tokio::fs::File>>,
}

impl DeadLetterFile {
    pub(crate) fn new(path: &Path, pipeline: &str) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_path_buf(),
            pipeline: pipeline.to_string(),
            file: Mutex::new(None),
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::User(format!("dead-letter file {}: {e}", self.path.display()))
    }
}

/// One dead letter as its JSON line.
pub(crate) fn dead_letter_line(
    pipeline: &str,
    origin: Option<&dyn Origin>,
    event: Option<&ChangeEvent>,
    reason: &str,
) -> String {
    let mut line = json!({
        "time": bson::DateTime::now().try_to_rfc3339_string().unwrap_or_default(),
        "pipeline": pipeline,
        "reason": reason,
    });
    let shard = origin.and_then(|o| o.as_any().downcast_ref::<ShardOrigin>());
    let token = event.map(|e| &e.resume_token);
    let text = |k: &str| token.and_then(|t| t.get_str(k).ok()).map(str::to_string);
    if let Some(s) = shard.map(|s| s.shard.clone()).or_else(|| text("shard")) {
        line["shard"] = json!(s);
    }
    if let Some(s) = shard.map(|s| s.seq.clone()).or_else(|| text("seq")) {
        line["seq"] = json!(s);
    }
    if let Some(ev) = event {
        line["record"] = match StreamChange::from_event(ev) {
            Ok(c) => c.to_json(),
            Err(_) => {
                bson::Bson::Document(bson::Document::try_from(ev.raw.as_ref()).unwrap_or_default())
                    .into_relaxed_extjson()
            }
        };
    }
    if let Some(data) = shard.and_then(|s| s.data.as_ref()) {
        line["data"] = json!(String::from_utf8_lossy(data));
    }
    line.to_string()
}

#[async_trait]
impl DeadLetters for DeadLetterFile {
    async fn dead_letter(
        &self,
        origin: Option<&dyn Origin>,
        event: Option<&ChangeEvent>,
        reason: &str,
    ) -> Result<()> {
        let mut line = dead_letter_line(&self.pipeline, origin, event, reason);
        line.push('\n');
        let mut guard = self.file.lock().await;
        if guard.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| self.io(e))?;
            *guard = Some(f);
        }
        let Some(f) = guard.as_mut() else {
            return Err(Error::Internal("dead-letter file not open".into()));
        };
        f.write_all(line.as_bytes()).await.map_err(|e| self.io(e))?;
        f.sync_data().await.map_err(|e| self.io(e))?;
        warn!(file = %self.path.display(), %reason, "Change written to the dead-letter file.");
        Ok(())
    }
}

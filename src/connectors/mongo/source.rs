//! The MongoDB change stream as a [`Source`]: one part, positions saved to the checkpoint
//! store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::Document;
use mongodb::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::stream::{read, StartPosition, StreamSettings};
use crate::checkpoint::Checkpointer;
use crate::connectors::{Source, SourceItem};
use crate::core::Position;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// A change stream from a start position, checkpointed in `checkpoint`.
pub struct MongoSource {
    client: Client,
    settings: StreamSettings,
    start: StartPosition,
    checkpoint: Arc<Checkpointer>,
    telemetry: Arc<Telemetry>,
}

impl MongoSource {
    /// A change stream of `client` from `start`.
    pub fn new(
        client: Client,
        settings: StreamSettings,
        start: StartPosition,
        checkpoint: Arc<Checkpointer>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            client,
            settings,
            start,
            checkpoint,
            telemetry,
        }
    }
}

#[async_trait]
impl Source for MongoSource {
    async fn run(&self, tx: mpsc::Sender<SourceItem>, stop: CancellationToken) -> Result<()> {
        read(
            self.client.clone(),
            self.settings.clone(),
            self.start.clone(),
            tx,
            self.telemetry.clone(),
            stop,
        )
        .await
    }

    /// Saves the resume token. A store that is down is retried with backoff; the last save
    /// gives up after 5 s, so a shutdown does not hang on it (the next run resumes from the
    /// previous save and re-applies idempotently).
    async fn commit(&self, durable: &[Position], last: bool) -> Result<()> {
        let Some(pos) = durable.last() else {
            return Ok(());
        };
        let token = Document::try_from(pos.token.as_ref())
            .map_err(|e| Error::Internal(format!("resume token: {e}")))?;
        {
            let mut c = self.checkpoint.state.lock().await;
            c.resume_token = Some(token);
            if pos.time.is_some() {
                c.cluster_time = pos.time;
            }
        }
        let give_up = last.then(|| Instant::now() + Duration::from_secs(5));
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.checkpoint.save().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && give_up.is_none_or(|t| Instant::now() < t) => {
                    warn!(error = %e, "Saving the checkpoint failed; retrying.");
                    self.telemetry.error(&format!("checkpoint: {e}"));
                    backoff.wait(None).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

//! The archive as a [`Sink`] of the engine: one lane, batches formed over `batch_interval`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::writer::{write, WriterState};
use super::ArchiveSink;
use crate::config::ArchiveSinkConfig;
use crate::connectors::{BatchPolicy, Ordering, Sink, Written};
use crate::core::{ChangeEvent, OpType};
use crate::error::Result;
use crate::telemetry::Telemetry;

/// An archive receiving events.
pub(crate) struct ArchiveEventSink {
    archive: ArchiveSink,
    state: tokio::sync::Mutex<WriterState>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
}

impl ArchiveSink {
    /// Opens the archive and checks it can be listed (a missing bucket or refused credentials
    /// fail here, at start).
    pub(crate) async fn open_checked(
        name: &str,
        cfg: &ArchiveSinkConfig,
        telemetry: &Arc<Telemetry>,
        cancel: &CancellationToken,
    ) -> Result<ArchiveEventSink> {
        let archive = ArchiveSink::open(name, cfg)?;
        archive.check().await?;
        Ok(ArchiveEventSink {
            archive,
            state: Default::default(),
            telemetry: telemetry.clone(),
            cancel: cancel.clone(),
        })
    }
}

#[async_trait]
impl Sink for ArchiveEventSink {
    fn name(&self) -> &str {
        &self.archive.name
    }

    fn kind(&self) -> &'static str {
        "archive"
    }

    fn describe(&self) -> String {
        format!(
            "{} (ops {:?})",
            self.archive.describe(),
            self.archive.cfg.ops
        )
    }

    fn takes(&self, op: &OpType) -> bool {
        self.archive.cfg.ops.iter().any(|o| o.matches(op))
    }

    // Objects of a namespace must hold a prefix of its events in order, and a restart reads
    // them back: one writer.
    fn ordering(&self) -> Ordering {
        Ordering::Single
    }

    fn batching(&self) -> BatchPolicy {
        let c = &self.archive.cfg;
        BatchPolicy {
            max_events: c.batch_events,
            max_bytes: c.batch_mib as usize * 1024 * 1024,
            linger: c.batch_interval,
        }
    }

    async fn write(&self, batch: &[Arc<ChangeEvent>]) -> Result<Written> {
        let mut state = self.state.lock().await;
        write(
            &self.archive,
            &mut state,
            batch,
            &self.telemetry,
            &self.cancel,
        )
        .await?;
        Ok(Written::default())
    }
}

//! The supervisor: starts one pipeline from its config, with what runs beside it (the HTTP API,
//! the progress reporter, the lease), runs it until it ends or is cancelled, and reports how it
//! stopped. The command line runs one; a multi-pipeline server runs many.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::lease::Lease;
use super::start::{check_source, checkpoint_store, standalone_checkpoint_store, MongoPipeline};
use super::Engine;
use crate::checkpoint::{CheckpointStore, Checkpointer};
use crate::config::{HistoryLostPolicy, PipelineConfig, SourceEndpoint};
use crate::connectors::aws::follow::PlannedSource;
use crate::connectors::dynamodb::source::DynamoSource;
use crate::connectors::kafka::source::KafkaSource;
use crate::connectors::kinesis::source::KinesisSource;
use crate::connectors::mongo::connect::connect;
use crate::connectors::{open_sinks, Source};
use crate::control::Control;
use crate::error::{Error, Result, Role};
use crate::telemetry::{PipelineState, Telemetry};
use crate::transform::Transforms;

/// One pipeline and its counters and controls.
pub struct Supervisor {
    cfg: Arc<PipelineConfig>,
    /// Progress counters (what the API, the metrics and the reporter show).
    pub telemetry: Arc<Telemetry>,
    /// Pause and rate limit.
    pub control: Arc<Control>,
    /// Stops the pipeline: it drains, commits and returns.
    pub cancel: CancellationToken,
    /// Two-way pipelines: the counters of the second direction (`telemetry` has the first).
    pub backward: Option<Arc<Telemetry>>,
    /// Hosted by `strait serve`: the server's API stands for the pipeline's own `[api]`
    /// listener, and progress goes to log lines (many pipelines share one terminal).
    hosted: bool,
    /// Progress bars on a terminal (else log lines): off when pipelines share the terminal.
    bars: bool,
}

/// A task beside the pipeline, stopped by its own token.
struct Companion(JoinHandle<()>, CancellationToken);

impl Companion {
    async fn stop(self) {
        self.1.cancel();
        let _ = self.0.await;
    }
}

impl Supervisor {
    /// A supervisor of `cfg`, not started yet.
    pub fn new(cfg: PipelineConfig) -> Self {
        let control = Arc::new(Control::new(
            cfg.api.as_ref().map(|a| a.rate_limit).unwrap_or(0),
        ));
        Self {
            backward: cfg
                .two_way
                .is_some()
                .then(|| Arc::new(Telemetry::default())),
            cfg: Arc::new(cfg),
            telemetry: Arc::new(Telemetry::default()),
            control,
            cancel: CancellationToken::new(),
            hosted: false,
            bars: true,
        }
    }

    /// Progress as log lines, not bars: for pipelines that share a terminal.
    pub fn without_bars(self) -> Self {
        Self {
            bars: false,
            ..self
        }
    }

    /// A supervisor of `cfg` inside `strait serve`: no API listener of its own, no progress
    /// bars. The worker holds the pipeline's lease, so `cfg.checkpoint.lease` must be off.
    pub(crate) fn hosted(cfg: PipelineConfig) -> Self {
        Self {
            hosted: true,
            ..Self::new(cfg).without_bars()
        }
    }

    /// The pipeline's config.
    pub fn config(&self) -> &Arc<PipelineConfig> {
        &self.cfg
    }

    /// Runs the pipeline until it finishes or is cancelled. Returns `Ok` on a clean stop,
    /// including a stop requested while a sink kept failing (nothing is lost; the next run goes
    /// on from the checkpoint).
    pub async fn run(&self) -> Result<()> {
        let span = tracing::info_span!("pipeline", id = %self.cfg.id);
        self.run_in_span().instrument(span).await
    }

    async fn run_in_span(&self) -> Result<()> {
        let api = self.start_api().await?;
        let mut reporter = None;
        let result = self.run_pipeline(&mut reporter).await;
        for c in reporter.into_iter().chain(api) {
            c.stop().await;
        }
        match result {
            Err(Error::Stopped) => {
                warn!("{}", Error::Stopped);
                Ok(())
            }
            other => other,
        }
    }

    async fn start_api(&self) -> Result<Option<Companion>> {
        let Some(a) = self.cfg.api.clone().filter(|_| !self.hosted) else {
            return Ok(None);
        };
        let stop = CancellationToken::new();
        let directions = match &self.backward {
            Some(b) => {
                let [f, r] = crate::two_way::directions(&self.cfg);
                vec![(f, self.telemetry.clone()), (r, b.clone())]
            }
            None => Vec::new(),
        };
        let (addr, handle) = crate::api::serve_directions(
            &a,
            self.cfg.clone(),
            self.telemetry.clone(),
            directions,
            self.control.clone(),
            stop.clone(),
        )
        .await
        .map_err(|e| Error::User(e.to_string()))?;
        info!(%addr, "HTTP API listening.");
        Ok(Some(Companion(handle, stop)))
    }

    /// The progress bars / periodic status lines; a standby reports nothing.
    fn start_reporter(&self) -> Companion {
        self.reporter(self.telemetry.clone())
    }

    fn reporter(&self, telemetry: Arc<Telemetry>) -> Companion {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(
            crate::report::report(telemetry, stop.clone(), Duration::from_secs(10), self.bars)
                .in_current_span(),
        );
        Companion(handle, stop)
    }

    async fn run_pipeline(&self, reporter: &mut Option<Companion>) -> Result<()> {
        let cfg = &self.cfg;
        if let Some(backward) = &self.backward {
            // The lease of a two-way pipeline lives on its first cluster.
            let lease = match (&cfg.source, cfg.checkpoint.lease) {
                (SourceEndpoint::Mongodb(m), true) => {
                    let client = connect(m, Role::Source).await?;
                    Some(Lease::new(
                        &client.database(&cfg.checkpoint.database),
                        &cfg.id,
                        holder_id(),
                        cfg.checkpoint.lease_ttl,
                    ))
                }
                _ => None,
            };
            let (cancel, control) = (self.cancel.clone(), self.control.clone());
            let telemetry = [self.telemetry.clone(), backward.clone()];
            let result = self
                .under_lease(lease, &[&self.telemetry, backward], || {
                    let [f, b] = crate::two_way::directions(cfg);
                    let reporters = [
                        self.reporter(telemetry[0].clone()),
                        self.reporter(telemetry[1].clone()),
                    ];
                    async move {
                        let result =
                            crate::two_way::run(cfg, telemetry.clone(), control, cancel).await;
                        info!(forward = %f.id, backward = %b.id, "Two-way sync stopped.");
                        for r in reporters {
                            r.stop().await;
                        }
                        result
                    }
                })
                .await;
            self.telemetry.set_state(PipelineState::Stopped);
            backward.set_state(PipelineState::Stopped);
            return result;
        }
        let transforms = Arc::new(Transforms::from_config(cfg));
        let engine = |sinks| Engine {
            cfg: cfg.clone(),
            transforms: transforms.clone(),
            sinks,
            telemetry: self.telemetry.clone(),
            control: self.control.clone(),
            cancel: self.cancel.clone(),
        };
        match &cfg.source {
            SourceEndpoint::Kafka(k) => {
                let opened = open_sinks(cfg, &self.telemetry, &self.cancel).await?;
                let timeout = cfg
                    .mongo_endpoint()
                    .map(|m| m.connect_timeout)
                    .unwrap_or(Duration::from_secs(10));
                let source: Arc<dyn Source> =
                    Arc::new(KafkaSource::open(k, &cfg.id, &self.telemetry, timeout).await?);
                info!(pipeline = %cfg.id, "Pipeline started (Kafka source).");
                *reporter = Some(self.start_reporter());
                let result = engine(opened.sinks).run(source.clone()).await;
                // Leaving the group blocks: the last reference goes off the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || drop(source)).await;
                self.telemetry.set_state(PipelineState::Stopped);
                result
            }
            SourceEndpoint::Dynamodb(_) | SourceEndpoint::Kinesis(_) => {
                let opened = open_sinks(cfg, &self.telemetry, &self.cancel).await?;
                let store = standalone_checkpoint_store(cfg).await?;
                let lease = match (&store, cfg.checkpoint.lease) {
                    (CheckpointStore::Mongo(m), true) => Some(Lease::new(
                        m.database(),
                        &cfg.id,
                        holder_id(),
                        cfg.checkpoint.lease_ttl,
                    )),
                    _ => None,
                };
                let checkpoint = Arc::new(Checkpointer::new(store, &cfg.id));
                let engine = engine(opened.sinks);
                let result = match &cfg.source {
                    SourceEndpoint::Dynamodb(d) => {
                        let source =
                            DynamoSource::open(d, cfg, checkpoint, &self.telemetry).await?;
                        info!(pipeline = %cfg.id, mode = ?cfg.mode, table = %d.table, "Pipeline started (DynamoDB source).");
                        self.under_lease(lease, &[&self.telemetry], || {
                            *reporter = Some(self.start_reporter());
                            run_planned(engine, Arc::new(source))
                        })
                        .await
                    }
                    SourceEndpoint::Kinesis(k) => {
                        let source =
                            KinesisSource::open(k, cfg, checkpoint, &self.telemetry).await?;
                        info!(pipeline = %cfg.id, mode = ?cfg.mode, stream = %k.stream, "Pipeline started (Kinesis source).");
                        self.under_lease(lease, &[&self.telemetry], || {
                            *reporter = Some(self.start_reporter());
                            run_planned(engine, Arc::new(source))
                        })
                        .await
                    }
                    _ => unreachable!("matched above"),
                };
                self.telemetry.set_state(PipelineState::Stopped);
                result
            }
            SourceEndpoint::Mongodb(m) => {
                let (source, opened) = tokio::join!(
                    connect(m, Role::Source),
                    open_sinks(cfg, &self.telemetry, &self.cancel)
                );
                let (source, opened) = (source?, opened?);
                if let Some(sink) = &opened.mongo_sink {
                    sink.repair_from(source.clone());
                }
                // Without a MongoDB sink, checkpoints live on the source (as MongoShake keeps
                // them).
                let store = checkpoint_store(
                    cfg,
                    opened.mongo_sink.as_ref().map_or(&source, |s| s.client()),
                )
                .await?;
                check_source(cfg, &source, &transforms).await?;
                let lease = match (&store, cfg.checkpoint.lease) {
                    (CheckpointStore::Mongo(m), true) => Some(Lease::new(
                        m.database(),
                        &cfg.id,
                        holder_id(),
                        cfg.checkpoint.lease_ttl,
                    )),
                    _ => None,
                };
                let pipeline = Arc::new(MongoPipeline {
                    engine: engine(opened.sinks),
                    repairs: opened.mongo_sink,
                    source,
                    checkpoint: Arc::new(Checkpointer::new(store, &cfg.id)),
                });
                info!(pipeline = %cfg.id, mode = ?cfg.mode, "Pipeline started.");
                self.run_leased(pipeline, lease, reporter).await
            }
        }
    }

    /// Runs a MongoDB-source pipeline, holding the lease when there is one.
    async fn run_leased(
        &self,
        pipeline: Arc<MongoPipeline>,
        lease: Option<Lease>,
        reporter: &mut Option<Companion>,
    ) -> Result<()> {
        self.under_lease(lease, &[&self.telemetry], || {
            *reporter = Some(self.start_reporter());
            async move { pipeline.run().await }
        })
        .await
    }

    /// Runs what `start` starts while holding the lease, when there is one: a standby (its
    /// `telemetry` says so) waits for the lease first, and losing it stops the run.
    async fn under_lease<F>(
        &self,
        lease: Option<Lease>,
        telemetry: &[&Arc<Telemetry>],
        start: impl FnOnce() -> F,
    ) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        if let Some(l) = &lease {
            for t in telemetry {
                t.set_state(PipelineState::Standby);
            }
            if !l.acquire(&self.cancel).await? {
                info!("Stopped while standing by.");
                return Ok(());
            }
        }
        let (lease_stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let keeper = lease
            .clone()
            .map(|l| tokio::spawn(l.keep_owned(lease_stop.clone(), lost.clone())));
        let on_lost = {
            let (lost, cancel) = (lost.clone(), self.cancel.clone());
            tokio::spawn(async move {
                lost.cancelled().await;
                cancel.cancel();
            })
        };
        let result = start().await;
        lease_stop.cancel();
        on_lost.abort();
        if let Some(k) = keeper {
            let _ = k.await;
        }
        match result {
            Err(Error::Stopped) => warn!("{}", Error::Stopped),
            other => other?,
        }
        if lost.is_cancelled() {
            return Err(Error::LeaseLost);
        }
        if let Some(l) = &lease {
            l.release().await;
        }
        Ok(())
    }
}

/// Runs a DynamoDB or Kinesis pipeline: the saved or planned positions, then the engine, again from
/// a new plan when the stream's history was lost and `on_history_lost = "resync"`.
async fn run_planned<S: PlannedSource>(engine: Engine, source: Arc<S>) -> Result<()>
where
    Arc<S>: Source,
{
    let cfg = engine.cfg.clone();
    let mut prepared = source.prepare().await;
    loop {
        match prepared {
            Ok(true) => {}
            Ok(false) => {
                info!("Full sync already complete according to the checkpoint; nothing to do (`strait checkpoint reset` starts over).");
                return Ok(());
            }
            Err(Error::HistoryLost { position, detail })
                if cfg.stream.on_history_lost == HistoryLostPolicy::Resync =>
            {
                warn!(%position, %detail, "The saved position is no longer in the stream; scanning the table again.");
                // The target may hold items deleted during the gap: copy into emptied targets.
                for ns in source.copied() {
                    let target = engine.transforms.target_ns(&ns);
                    for s in engine.sinks.iter() {
                        s.drop_for_resync(&target).await?;
                    }
                }
                source.replan().await?;
            }
            Err(e) => return Err(e),
        }
        match engine.run(Arc::new(source.clone())).await {
            Err(Error::HistoryLost { position, detail })
                if cfg.stream.on_history_lost == HistoryLostPolicy::Resync =>
            {
                prepared = Err(Error::HistoryLost { position, detail });
            }
            other => return other,
        }
    }
}

/// A lease holder id: host name and process id.
pub(crate) fn holder_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}", std::process::id())
}

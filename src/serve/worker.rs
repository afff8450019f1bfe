//! One worker of `strait serve`: every second it reads the control database and makes what it
//! runs agree with it. It takes unowned pipelines (through each pipeline's lease) up to its
//! share, restarts a pipeline whose config changed, stops deleted ones, applies pause and rate,
//! and publishes the status of what it runs, so that any worker can answer for any pipeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{doc, DateTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::store::{ControlStore, PipelineRecord, WorkerRecord};
use crate::backoff::Backoff;
use crate::config::PipelineConfig;
use crate::engine::lease::Lease;
use crate::engine::supervisor::Supervisor;
use crate::error::Result;
use crate::telemetry::PipelineState;

/// How often the worker reconciles, heartbeats and publishes statuses.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// What the worker runs and knows, shared with its API.
pub(crate) struct Worker {
    /// This worker's name.
    pub name: String,
    /// The lease holder id: the name plus this process's instance, so a restarted worker
    /// waits for its predecessor's leases like any other worker.
    holder: String,
    /// Where the API listens (filled once it is bound).
    pub url: Mutex<String>,
    pub(crate) store: ControlStore,
    pub(crate) lease_ttl: Duration,
    max_pipelines: usize,
    hosted: Mutex<HashMap<String, Hosted>>,
}

/// A pipeline this worker runs.
struct Hosted {
    /// The record it runs (config version, restarts).
    record: PipelineRecord,
    /// The current run (replaced on each retry).
    run: Arc<RunSlot>,
    /// Stops the run loop.
    stop: CancellationToken,
    task: JoinHandle<()>,
    lease: Lease,
    /// Fired when the lease can no longer be trusted.
    lost: CancellationToken,
    keeper_stop: CancellationToken,
    keeper: JoinHandle<()>,
    /// Applied-count and time of the last status, for the rate.
    last: (Instant, u64),
}

/// The live supervisor of a hosted pipeline and how its runs went.
#[derive(Default)]
pub(crate) struct RunSlot {
    current: Mutex<Option<Arc<Supervisor>>>,
    /// The last run's failure, while it waits to retry.
    failure: Mutex<Option<String>>,
    /// A `mode = "full"` pipeline that finished.
    finished: std::sync::atomic::AtomicBool,
    /// Desired pause and rate, applied to every new run.
    paused: std::sync::atomic::AtomicBool,
    rate: Mutex<Option<u64>>,
}

impl RunSlot {
    fn supervisor(&self) -> Option<Arc<Supervisor>> {
        self.current.lock().expect("slot lock").clone()
    }

    fn apply_controls(&self, s: &Supervisor) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.paused.load(Relaxed) {
            s.control.pause();
        } else {
            s.control.resume();
        }
        if let Some(r) = *self.rate.lock().expect("rate lock") {
            s.control.set_rate(r);
        }
    }
}

impl Worker {
    pub(crate) fn new(
        name: String,
        store: ControlStore,
        lease_ttl: Duration,
        max_pipelines: usize,
    ) -> Self {
        let instance = format!(
            "{}.{}",
            std::process::id(),
            DateTime::now().timestamp_millis()
        );
        Self {
            holder: format!("{name}/{instance}"),
            name,
            url: Mutex::new(String::new()),
            store,
            lease_ttl,
            max_pipelines,
            hosted: Mutex::new(HashMap::new()),
        }
    }

    /// The supervisors of the pipelines running here (for `/metrics`).
    pub(crate) fn running(&self) -> Vec<(String, Arc<Supervisor>)> {
        let hosted = self.hosted.lock().expect("hosted lock");
        let mut v: Vec<_> = hosted
            .iter()
            .filter_map(|(id, h)| Some((id.clone(), h.run.supervisor()?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The ids of the pipelines hosted here, sorted.
    fn hosted_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .hosted
            .lock()
            .expect("hosted lock")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Whether a record written at `at` (a heartbeat, a published status) is recent enough to
    /// stand for a live worker: younger than the lease TTL.
    pub(crate) fn is_recent(&self, at: DateTime) -> bool {
        DateTime::now().timestamp_millis() - at.timestamp_millis()
            < self.lease_ttl.as_millis() as i64
    }

    /// The published status of `id`, if its lease holder wrote it within the lease TTL (a
    /// status left by an earlier holder says nothing about the pipeline now).
    pub(crate) fn live_status<'a>(
        &self,
        id: &str,
        statuses: &'a HashMap<String, bson::Document>,
        holders: &HashMap<String, String>,
    ) -> Option<&'a bson::Document> {
        let holder = Self::worker_of(holders.get(id)?);
        statuses.get(id).filter(|s| {
            s.get_str("worker").ok() == Some(holder)
                && s.get_datetime("at").is_ok_and(|at| self.is_recent(*at))
        })
    }

    /// The worker name of a lease holder id.
    pub(crate) fn worker_of(holder: &str) -> &str {
        holder.rsplit_once('/').map_or(holder, |(w, _)| w)
    }

    /// Reconciles every [`TICK`] until `stop`, then stops every pipeline (each drains and
    /// checkpoints), gives their leases up and leaves the group.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = Backoff::new(TICK, Duration::from_secs(10));
        loop {
            match self.reconcile().await {
                Ok(()) => failures.reset(),
                Err(e) => {
                    warn!(error = %e, "Control database unreachable; pipelines keep running while their leases hold.");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(failures.next_delay()) => {}
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        info!(worker = %self.name, "Stopping every pipeline on this worker.");
        let all = self.hosted_ids();
        futures::future::join_all(all.iter().map(|id| self.stop_pipeline(id, true))).await;
        if let Err(e) = self.store.remove_worker(&self.name).await {
            warn!(error = %e, "Could not remove this worker's record; it ages out.");
        }
    }

    async fn reconcile(&self) -> Result<()> {
        let records = self.store.pipelines().await?;
        let wanted: HashMap<&str, &PipelineRecord> =
            records.iter().map(|r| (r.id.as_str(), r)).collect();

        // Stop what was deleted or lost; restart what changed; apply pause and rate.
        let here: Vec<(String, PipelineRecord, bool)> = {
            let hosted = self.hosted.lock().expect("hosted lock");
            hosted
                .iter()
                .map(|(id, h)| (id.clone(), h.record.clone(), h.lost.is_cancelled()))
                .collect()
        };
        for (id, running, lost) in here {
            match wanted.get(id.as_str()) {
                None => {
                    info!(pipeline = %id, "Pipeline deleted; stopping it.");
                    self.stop_pipeline(&id, true).await;
                }
                Some(_) if lost => {
                    warn!(pipeline = %id, "Lease lost; stopped the pipeline here.");
                    self.stop_pipeline(&id, false).await;
                }
                Some(r) if r.version != running.version || r.restarts != running.restarts => {
                    info!(pipeline = %id, version = r.version, "Config changed or restart asked; restarting from the checkpoint.");
                    self.restart_pipeline(r).await;
                }
                Some(r) => self.apply_controls(r),
            }
        }

        // Take unowned pipelines, up to this worker's share.
        let workers = self.store.workers().await?;
        let holders = self.store.holders().await?;
        let others: Vec<&WorkerRecord> = workers
            .iter()
            .filter(|w| w.id != self.name && self.is_recent(w.heartbeat))
            .collect();
        let fair = records.len().div_ceil(others.len() + 1);
        // Beyond its fair share a worker takes a pipeline only when no other worker can.
        let others_have_room = others
            .iter()
            .any(|w| w.running.len() < fair.min(w.max_pipelines.max(0) as usize));
        let limit = if others_have_room {
            fair.min(self.max_pipelines)
        } else {
            self.max_pipelines
        };
        for r in &records {
            if self.hosted.lock().expect("hosted lock").len() >= limit {
                break;
            }
            if self.hosted.lock().expect("hosted lock").contains_key(&r.id)
                || holders.contains_key(&r.id)
            {
                continue;
            }
            let lease = Lease::new(
                self.store.database(),
                &r.id,
                self.holder.clone(),
                self.lease_ttl,
            );
            match lease.try_take().await {
                Ok(true) => self.start_pipeline(r, lease),
                Ok(false) => {}
                Err(e) => warn!(pipeline = %r.id, error = %e, "Could not take the lease."),
            }
        }

        let running = self.hosted_ids();
        let me = WorkerRecord {
            id: self.name.clone(),
            url: self.url.lock().expect("url lock").clone(),
            heartbeat: DateTime::now(),
            max_pipelines: self.max_pipelines as i64,
            running,
        };
        self.store.heartbeat(&me).await?;
        self.publish().await
    }

    /// Starts hosting `r`, whose lease this worker now holds.
    fn start_pipeline(&self, r: &PipelineRecord, lease: Lease) {
        info!(pipeline = %r.id, worker = %self.name, "Lease acquired; starting the pipeline here.");
        let (lost, keeper_stop) = (CancellationToken::new(), CancellationToken::new());
        let keeper = tokio::spawn(lease.clone().keep_owned(keeper_stop.clone(), lost.clone()));
        let run = Arc::new(RunSlot::default());
        let stop = CancellationToken::new();
        // Losing the lease stops the run before the lease can expire.
        let task = tokio::spawn(run_loop(r.clone(), run.clone(), stop.clone(), lost.clone()));
        let hosted = Hosted {
            record: r.clone(),
            run,
            stop,
            task,
            lease,
            lost,
            keeper_stop,
            keeper,
            last: (Instant::now(), 0),
        };
        self.hosted
            .lock()
            .expect("hosted lock")
            .insert(r.id.clone(), hosted);
        self.apply_controls(r);
    }

    /// Stops a hosted pipeline (it drains and checkpoints) and, when `release`, gives up its
    /// lease so another worker can take it at once.
    async fn stop_pipeline(&self, id: &str, release: bool) {
        let Some(h) = self.hosted.lock().expect("hosted lock").remove(id) else {
            return;
        };
        h.stop.cancel();
        let _ = h.task.await;
        h.keeper_stop.cancel();
        let _ = h.keeper.await;
        if release && !h.lost.is_cancelled() {
            h.lease.release().await;
        }
    }

    /// Runs `r` again (new config or a restart), keeping the lease.
    async fn restart_pipeline(&self, r: &PipelineRecord) {
        let Some(old) = self.hosted.lock().expect("hosted lock").remove(&r.id) else {
            return;
        };
        old.stop.cancel();
        let _ = old.task.await;
        let run = Arc::new(RunSlot::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_loop(
            r.clone(),
            run.clone(),
            stop.clone(),
            old.lost.clone(),
        ));
        self.hosted.lock().expect("hosted lock").insert(
            r.id.clone(),
            Hosted {
                record: r.clone(),
                run,
                stop,
                task,
                last: (Instant::now(), 0),
                ..old
            },
        );
        self.apply_controls(r);
    }

    /// Makes the running pipeline's pause and rate match its record.
    fn apply_controls(&self, r: &PipelineRecord) {
        use std::sync::atomic::Ordering::Relaxed;
        let hosted = self.hosted.lock().expect("hosted lock");
        let Some(h) = hosted.get(&r.id) else { return };
        h.run.paused.store(r.paused, Relaxed);
        *h.run.rate.lock().expect("rate lock") = r.rate.map(|n| n.max(0) as u64);
        if let Some(s) = h.run.supervisor() {
            h.run.apply_controls(&s);
        }
    }

    /// Publishes the status of every pipeline running here.
    async fn publish(&self) -> Result<()> {
        let statuses: Vec<(String, bson::Document)> = {
            let mut hosted = self.hosted.lock().expect("hosted lock");
            hosted
                .iter_mut()
                .map(|(id, h)| (id.clone(), self.status_record(h)))
                .collect()
        };
        for (id, d) in statuses {
            self.store.publish(&id, d).await?;
        }
        Ok(())
    }

    /// The published status of one hosted pipeline: `/status`'s body as JSON text plus the
    /// fields the list view needs.
    fn status_record(&self, h: &mut Hosted) -> bson::Document {
        use std::sync::atomic::Ordering::Relaxed;
        let (status, progress, rate, metrics) = match h.run.supervisor() {
            Some(s) => {
                // A failure shows until a later run gets going again.
                let mut failure = h.run.failure.lock().expect("failure lock");
                if matches!(
                    s.telemetry.state(),
                    PipelineState::Copying | PipelineState::Streaming
                ) {
                    *failure = None;
                }
                let failure = failure.clone();
                let mut st = crate::api::status_of(s.config(), &s.telemetry, &s.control);
                if let Some(f) = &failure {
                    st.state = "failed".into();
                    st.reason = Some(f.clone());
                } else if h.run.finished.load(Relaxed) {
                    st.state = "finished".into();
                }
                let t = s.telemetry.snapshot();
                let applied = t.inserts + t.updates + t.replaces + t.deletes + t.ddl;
                let secs = h.last.0.elapsed().as_secs_f64().max(0.001);
                let rate = applied.saturating_sub(h.last.1) as f64 / secs;
                h.last = (Instant::now(), applied);
                let progress: Vec<serde_json::Value> = t
                    .collections
                    .iter()
                    .map(|(ns, copied, estimated, done)| {
                        serde_json::json!({ "ns": ns, "copied": copied, "estimated": estimated, "done": done })
                    })
                    .collect();
                (
                    serde_json::to_value(st).unwrap_or_default(),
                    progress,
                    rate,
                    pipeline_metrics(&h.record.id, &s),
                )
            }
            None => (
                serde_json::json!({ "pipeline": h.record.id, "state": "starting" }),
                Vec::new(),
                0.0,
                String::new(),
            ),
        };
        doc! {
            "_id": &h.record.id,
            "worker": &self.name,
            "version": h.record.version,
            "at": DateTime::now(),
            "rate_ops": rate,
            "status": status.to_string(),
            "progress": serde_json::Value::from(progress).to_string(),
            "metrics": metrics,
        }
    }
}

/// The OpenMetrics text of one running pipeline (labelled with its id).
pub(crate) fn pipeline_metrics(id: &str, s: &Supervisor) -> String {
    let mut m = crate::metrics::Metrics::default();
    m.add_pipeline(id, s.telemetry.clone(), s.control.clone());
    m.render()
}

/// Runs one pipeline until `stop`: a failed run is reported and retried with backoff (a
/// change of its config or a restart call starts a fresh loop at once).
async fn run_loop(
    r: PipelineRecord,
    slot: Arc<RunSlot>,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let span = tracing::info_span!("hosted", pipeline = %r.id);
    async move {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        loop {
            let mut cfg = match PipelineConfig::parse(&r.config, std::path::Path::new(&r.id)) {
                Ok(c) => c,
                Err(e) => {
                    // The API validated it; a config stored by an older strait may not parse.
                    *slot.failure.lock().expect("failure lock") = Some(e.to_string());
                    break;
                }
            };
            // The worker holds this pipeline's lease in the control database.
            cfg.checkpoint.lease = false;
            let mut s = Supervisor::hosted(cfg);
            s.cancel = stop.child_token();
            let s = Arc::new(s);
            slot.apply_controls(&s);
            *slot.current.lock().expect("slot lock") = Some(s.clone());
            let on_lost = {
                let (lost, cancel) = (lost.clone(), s.cancel.clone());
                tokio::spawn(async move {
                    lost.cancelled().await;
                    cancel.cancel();
                })
            };
            let result = s.run().await;
            on_lost.abort();
            if stop.is_cancelled() || lost.is_cancelled() {
                break;
            }
            match result {
                Ok(()) => {
                    info!("Pipeline finished.");
                    slot.finished.store(true, Relaxed);
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "Pipeline failed.");
                    *slot.failure.lock().expect("failure lock") = Some(e.to_string());
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = lost.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // A finished or unrecoverable pipeline keeps its lease and its last status until it is
        // deleted, replaced or restarted.
        stop.cancelled().await;
    }
    .instrument(span)
    .await
}

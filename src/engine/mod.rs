//! The engine: the one machine every pipeline runs. A [`Source`] yields events per part,
//! transforms filter and rename them, and the engine routes each to the sinks whose `ops` take
//! it, keeps one document's events in order (lanes), holds an ack window per part, bounds
//! memory, applies DDL as a barrier, honours target delay, rate and pause, and tells the source
//! which positions are durable so it can commit them.

pub(crate) mod full_sync;
pub(crate) mod lanes;
pub(crate) mod lease;
pub mod start;
pub mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::config::PipelineConfig;
use crate::connectors::{DeadLetters, Ordering, Sink, Source, SourceItem};
use crate::control::Control;
use crate::core::{AckWindow, ChangeEvent, PartId, Position};
use crate::error::{Error, Result};
use crate::telemetry::{PipelineState, Telemetry};
use crate::transform::{Transforms, Verdict};
use lanes::{lane_count, lane_of, run_lane, LaneItem};

/// Everything the engine needs besides the source: the sinks and the pipeline's shared state.
pub(crate) struct Engine {
    /// The validated configuration.
    pub(crate) cfg: Arc<PipelineConfig>,
    /// Filters and renames.
    pub(crate) transforms: Arc<Transforms>,
    /// Every sink, `[sink]` first.
    pub(crate) sinks: Vec<Arc<dyn Sink>>,
    /// Progress counters.
    pub(crate) telemetry: Arc<Telemetry>,
    /// Pause and rate limit.
    pub(crate) control: Arc<Control>,
    /// Graceful shutdown.
    pub(crate) cancel: CancellationToken,
}

/// The ack windows of the parts being read.
type Windows = Arc<Mutex<HashMap<PartId, Arc<AckWindow>>>>;

/// Whether the dispatcher goes on.
enum Flow {
    Continue,
    Stop,
}

/// Bytes an event costs beyond its BSON and origin (its struct, namespaces, queue slots).
const EVENT_OVERHEAD: usize = 256;

/// `apply.max_inflight_mib` in bytes: what events read and not yet written may hold.
fn inflight_budget(cfg: &PipelineConfig) -> usize {
    cfg.apply.max_inflight_mib as usize * 1024 * 1024
}

/// The sinks' lane queues.
struct Routes {
    /// Per sink: its ordering and its lanes' queues.
    lanes: Vec<(Ordering, Vec<mpsc::Sender<LaneItem>>)>,
}

impl Engine {
    /// Runs `source` through the sinks until cancelled, the source ends, or something fails.
    /// Positions are committed every `checkpoint.interval` and on the way out, always at a
    /// position whose events every sink has made durable.
    pub(crate) async fn run(&self, source: Arc<dyn Source>) -> Result<()> {
        self.telemetry.set_state(PipelineState::Streaming);
        let cfg = &self.cfg;
        let stop = self.cancel.child_token();
        let dead_letters = source.dead_letters();
        for sink in &self.sinks {
            sink.resume().await?;
        }

        // Lanes of every sink: a failed one stops the pipeline and reports its own error.
        let mut writers = JoinSet::new();
        let mut routes = Routes { lanes: Vec::new() };
        for sink in &self.sinks {
            let ordering = sink.ordering();
            let counters = self.telemetry.sink(sink.name(), sink.kind());
            let mut queues = Vec::new();
            for _ in 0..lane_count(ordering) {
                let (tx, rx) = mpsc::channel::<LaneItem>(cfg.apply.queue_depth);
                queues.push(tx);
                let lane = run_lane(
                    rx,
                    sink.clone(),
                    dead_letters.clone(),
                    self.telemetry.clone(),
                    counters.clone(),
                );
                let stop = stop.clone();
                let span =
                    tracing::info_span!("lane", sink = %sink.name(), lane = queues.len() - 1);
                writers.spawn(
                    async move {
                        let r = lane.await;
                        if r.is_err() {
                            stop.cancel();
                        }
                        r
                    }
                    .instrument(span),
                );
            }
            routes.lanes.push((ordering, queues));
        }
        if let Some((_, first)) = routes.lanes.first() {
            let weak: Vec<_> = first.iter().map(|s| s.downgrade()).collect();
            self.telemetry.set_lane_depths(Some(Box::new(move || {
                weak.iter()
                    .map(|w| {
                        w.upgrade()
                            .map(|s| s.max_capacity() - s.capacity())
                            .unwrap_or(0)
                    })
                    .collect()
            })));
        }

        let windows: Windows = Arc::default();
        let (tx, mut rx) = mpsc::channel::<SourceItem>(1024);
        let reader = {
            let (source, stop) = (source.clone(), stop.clone());
            tokio::spawn(
                async move {
                    let r = source.run(tx, stop.clone()).await;
                    if r.is_err() {
                        stop.cancel();
                    }
                    r
                }
                .in_current_span(),
            )
        };
        let committed: Arc<tokio::sync::Mutex<HashMap<PartId, Position>>> = Arc::default();
        let checkpointer = {
            let (source, windows, committed, telemetry, stop) = (
                source.clone(),
                windows.clone(),
                committed.clone(),
                self.telemetry.clone(),
                stop.clone(),
            );
            let interval = cfg.checkpoint.interval;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok::<_, Error>(()),
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(e) = commit(&*source, &windows, &committed, &telemetry, false).await
                    {
                        // Not saving positions is not a state to run on in: stop, and say why.
                        stop.cancel();
                        return Err(e);
                    }
                }
            })
        };

        let budget = Arc::new(Semaphore::new(inflight_budget(cfg)));
        let mut d = Dispatcher {
            engine: self,
            windows: &windows,
            routes: &routes,
            budget: &budget,
            stop: &stop,
            dead_letters: dead_letters.as_deref(),
            max_window: cfg.apply.lanes.max(1) * cfg.apply.queue_depth * 2,
            last: None,
        };
        let mut dispatch_result = Ok(());
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                item = rx.recv() => item,
            };
            let Some(item) = item else { break };
            match d.dispatch(item).await {
                Ok(Flow::Continue) => {}
                // Stopping (shutdown, or a lane failed and reports its own error): what is not
                // dispatched is not acknowledged, so it is read again after a restart.
                Ok(Flow::Stop) => break,
                Err(e) => {
                    dispatch_result = Err(e);
                    stop.cancel();
                    break;
                }
            }
        }
        // Closing the queues lets the lanes finish what is queued, then stop.
        drop(routes);
        drop(rx);
        let mut lane_result = Ok(());
        while let Some(r) = writers.join_next().await {
            let r = r.unwrap_or_else(|e| Err(Error::Internal(format!("sink lane panicked: {e}"))));
            lane_result = lane_result.and(r);
        }
        stop.cancel();
        for s in &self.sinks {
            s.close().await;
        }
        let reader_result = reader
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("source panicked: {e}"))));
        checkpointer
            .await
            .map_err(|e| Error::Internal(format!("checkpointer panicked: {e}")))??;
        // Final commit: everything the lanes finished is durable.
        commit(&*source, &windows, &committed, &self.telemetry, true).await?;
        self.telemetry.set_window(None);
        self.telemetry.set_lane_depths(None);
        reader_result.and(dispatch_result).and(lane_result)
    }
}

/// Commits the durable position of every part that moved since the last commit.
async fn commit(
    source: &dyn Source,
    windows: &Windows,
    committed: &tokio::sync::Mutex<HashMap<PartId, Position>>,
    telemetry: &Telemetry,
    last: bool,
) -> Result<()> {
    let mut done = committed.lock().await;
    let moved: Vec<Position> = {
        let w = windows.lock().unwrap();
        w.values()
            .filter_map(|w| w.committed())
            .filter(|p| done.get(&p.part) != Some(p))
            .collect()
    };
    if moved.is_empty() {
        return Ok(());
    }
    source.commit(&moved, last).await?;
    for p in moved {
        debug!(part = %p.part, time = ?p.time, "Position committed.");
        telemetry.set_checkpointed(&p);
        done.insert(p.part.clone(), p);
    }
    Ok(())
}

struct Dispatcher<'a> {
    engine: &'a Engine,
    windows: &'a Windows,
    routes: &'a Routes,
    budget: &'a Arc<Semaphore>,
    stop: &'a CancellationToken,
    dead_letters: Option<&'a dyn DeadLetters>,
    max_window: usize,
    /// The window of the last event's part (most events follow one of the same part).
    last: Option<(PartId, Arc<AckWindow>)>,
}

impl Dispatcher<'_> {
    fn window(&mut self, part: &PartId) -> Arc<AckWindow> {
        if let Some((p, w)) = &self.last {
            if p == part {
                return w.clone();
            }
        }
        let mut w = self.windows.lock().unwrap();
        let window = match w.get(part) {
            Some(window) => window.clone(),
            None => {
                let window = Arc::new(AckWindow::new(None));
                w.insert(part.clone(), window.clone());
                // Lag and pending counts follow the first part (the only one of a change stream).
                if w.len() == 1 {
                    self.engine.telemetry.set_window(Some(window.clone()));
                }
                window
            }
        };
        drop(w);
        self.last = Some((part.clone(), window.clone()));
        window
    }

    fn all_windows(&self) -> Vec<Arc<AckWindow>> {
        self.windows.lock().unwrap().values().cloned().collect()
    }

    /// Waits until every event handed to the sinks is durable; false if stopped first.
    async fn drain(&self) -> bool {
        for w in self.all_windows() {
            tokio::select! {
                biased;
                _ = w.wait_drained() => {}
                _ = self.stop.cancelled() => return false,
            }
        }
        true
    }

    async fn dispatch(&mut self, item: SourceItem) -> Result<Flow> {
        let e = self.engine;
        let (pos, mut ev, origin) = match item {
            SourceItem::Progress(pos) => {
                self.window(&pos.part).push_done(pos);
                return Ok(Flow::Continue);
            }
            SourceItem::Undecodable {
                pos,
                origin,
                reason,
            } => {
                let window = self.window(&pos.part);
                match self.dead_letters {
                    Some(dl) => {
                        dl.dead_letter(Some(origin.as_ref()), None, &reason).await?;
                        e.telemetry
                            .dead_lettered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => return Err(Error::Internal(format!("undecodable record: {reason}"))),
                }
                window.push_done(pos);
                return Ok(Flow::Continue);
            }
            SourceItem::Revoked { reply } => {
                if !self.drain().await {
                    return Ok(Flow::Stop);
                }
                let positions: Vec<Position> = {
                    let mut w = self.windows.lock().unwrap();
                    let p = w.values().filter_map(|w| w.committed()).collect();
                    w.clear();
                    p
                };
                self.last = None;
                e.telemetry.set_window(None);
                let _ = reply.send(positions);
                return Ok(Flow::Continue);
            }
            SourceItem::Event { pos, event, origin } => (pos, *event, origin),
        };
        let window = self.window(&pos.part);
        // A failed lane never acks again: waiting on the window must end with the pipeline.
        tokio::select! {
            biased;
            _ = window.wait_len_at_most(self.max_window) => {}
            _ = self.stop.cancelled() => return Ok(Flow::Stop),
        }
        if e.transforms.apply(&mut ev) == Verdict::Skip {
            window.push_done(pos);
            return Ok(Flow::Continue);
        }
        let targets: Vec<usize> = e
            .sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.accepts(&ev))
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            window.push_done(pos);
            return Ok(Flow::Continue);
        }
        // DDL is a barrier: everything before it is durable first, nothing after it starts
        // until it is.
        let barrier = targets.iter().any(|&i| e.sinks[i].needs_barrier(&ev));
        if barrier && !self.drain().await {
            return Ok(Flow::Stop);
        }
        e.telemetry
            .hold(ev.cluster_time.or(pos.time).map(|t| t.time));
        if !e.control.admit(1, self.stop).await || !self.delay(&ev, &pos).await {
            return Ok(Flow::Stop);
        }
        // What the event holds while in flight: its BSON, once per sink that queues it, and
        // what its origin keeps (a Kafka record's bytes, for the dead-letter topic).
        let held = EVENT_OVERHEAD
            + ev.raw.as_bytes().len() * targets.len()
            + origin.as_ref().map_or(0, |o| o.held_bytes());
        let bytes = held.min(inflight_budget(&e.cfg));
        let permit = tokio::select! {
            biased;
            p = self.budget.clone().acquire_many_owned(bytes as u32) => {
                p.map_err(|_| Error::Internal("budget closed".into()))?
            }
            _ = self.stop.cancelled() => return Ok(Flow::Stop),
        };
        let permit = Some(Arc::new(permit));
        let seq = window.push(pos, targets.len() as u32);
        e.telemetry.hold(None);
        let ev = Arc::new(ev);
        for i in targets {
            let (ordering, queues) = &self.routes.lanes[i];
            let item = LaneItem {
                seq,
                window: window.clone(),
                ev: ev.clone(),
                origin: origin.clone(),
                _budget: permit.clone(),
            };
            // A closed queue means its lane has failed and reports its own error.
            if queues[lane_of(&ev, *ordering)].send(item).await.is_err() {
                return Ok(Flow::Stop);
            }
        }
        if barrier && !self.drain().await {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// Waits until the event is `stream.target_delay` old; false if stopped meanwhile.
    async fn delay(&self, ev: &ChangeEvent, pos: &Position) -> bool {
        let delay = self.engine.cfg.stream.target_delay;
        let Some(t) = ev.cluster_time.or(pos.time).filter(|_| !delay.is_zero()) else {
            return true;
        };
        let due = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.time as u64) + delay;
        let Ok(wait) = due.duration_since(std::time::SystemTime::now()) else {
            return true;
        };
        if wait > std::time::Duration::from_secs(1) {
            debug!(wait = ?wait, "Holding events back (stream.target_delay).");
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

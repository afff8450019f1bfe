//! The streaming phase: reader -> transforms -> lanes -> sink, with a checkpointer that saves
//! the ack window's committed position.

use std::sync::Arc;

use bson::Document;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::ack::{AckWindow, Position};
use super::lanes::{lane_of, run_lane, LaneItem};
use super::Pipeline;
use crate::error::{Error, Result};
use crate::event::{ChangeEvent, OpType};
use crate::sink::archive::writer::ArchiveItem;
use crate::sink::mongo::{ops_for_event, WriteOp};
use crate::source::mongo::stream::{read, SourceItem, StartPosition, StreamSettings};
use crate::telemetry::PipelineState;
use crate::transform::Verdict;

/// Stream settings of a pipeline.
pub fn settings(p: &Pipeline) -> StreamSettings {
    let s = &p.cfg.stream;
    StreamSettings {
        target: p.transforms.scope.watch_target(),
        update_mode: s.update_mode,
        ddl: s.ddl,
        batch_size: s.batch_size,
        max_await: s.max_await,
        pre_images: p.cfg.wants_pre_images().then_some(s.pre_images),
    }
}

/// Follows the change stream from `start` until cancelled or failed. The checkpoint is saved
/// every `checkpoint.interval` and on the way out, always at a position whose events are all
/// written.
pub async fn follow(p: &Pipeline, start: StartPosition) -> Result<()> {
    p.telemetry.set_state(PipelineState::Streaming);
    let cfg = &p.cfg;
    let window = Arc::new(AckWindow::new(None));
    p.telemetry.set_window(Some(window.clone()));
    let stop = p.cancel.child_token();

    // Every sink writer (lanes and archives): a failed one stops the pipeline and reports
    // its own error when joined.
    let mut writers = JoinSet::new();
    let mut spawn_writer =
        |task: std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>| {
            let stop = stop.clone();
            writers.spawn(async move {
                let r = task.await;
                if r.is_err() {
                    stop.cancel();
                }
                r
            });
        };
    let mut senders = Vec::with_capacity(cfg.apply.lanes);
    if let Some(sink) = &p.sink {
        for _ in 0..cfg.apply.lanes {
            let (tx, rx) = mpsc::channel::<LaneItem>(cfg.apply.queue_depth);
            senders.push(tx);
            let (sink, window, telemetry) = (sink.clone(), window.clone(), p.telemetry.clone());
            spawn_writer(Box::pin(run_lane(
                rx,
                sink,
                window,
                telemetry,
                cfg.apply.batch_docs,
                None,
            )));
        }
    }
    // Event sinks (archives, Kafka): one queue and one writer each.
    let event_queue = || {
        let (tx, rx) = mpsc::channel::<ArchiveItem>(cfg.apply.queue_depth);
        (tx, rx, window.clone(), p.telemetry.clone(), stop.clone())
    };
    let mut archive_senders = Vec::with_capacity(p.archives.len());
    let mut kafka_senders = Vec::with_capacity(p.kafkas.len());
    let mut event_writers = Vec::new();
    for sink in &p.archives {
        let (tx, rx, window, telemetry, stop) = event_queue();
        archive_senders.push(tx);
        let run = crate::sink::archive::writer::run(rx, sink.clone(), window, telemetry, stop);
        event_writers.push(Box::pin(async move { run.await.map_err(Error::from) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>);
    }
    for sink in &p.kafkas {
        let (tx, rx, window, telemetry, stop) = event_queue();
        kafka_senders.push(tx);
        let run = crate::sink::kafka::run(rx, sink.clone(), window, telemetry, stop);
        event_writers.push(Box::pin(async move { run.await.map_err(Error::from) }));
    }
    for w in event_writers {
        spawn_writer(w);
    }
    let sinks = Senders {
        lanes: senders,
        archives: archive_senders,
        kafkas: kafka_senders,
    };

    let weak: Vec<_> = sinks.lanes.iter().map(|s| s.downgrade()).collect();
    p.telemetry.set_lane_depths(Some(Box::new(move || {
        weak.iter()
            .map(|w| {
                w.upgrade()
                    .map(|s| s.max_capacity() - s.capacity())
                    .unwrap_or(0)
            })
            .collect()
    })));
    let (tx, mut rx) = mpsc::channel::<SourceItem>(64);
    let reader = tokio::spawn(read(
        p.source.clone(),
        settings(p),
        start,
        tx,
        p.telemetry.clone(),
        stop.clone(),
    ));

    let checkpointer = {
        let window = window.clone();
        let stop = stop.clone();
        let interval = cfg.checkpoint.interval;
        let (store, ckpt, telemetry) = (p.store.clone(), p.checkpoint.clone(), p.telemetry.clone());
        tokio::spawn(async move {
            let mut last: Option<Position> = None;
            loop {
                let done = tokio::select! {
                    _ = stop.cancelled() => true,
                    _ = tokio::time::sleep(interval) => false,
                };
                if done {
                    return Ok::<_, Error>(());
                }
                save_committed(&window, &mut last, &store, &ckpt, &telemetry, None).await?;
            }
        })
    };

    let max_window = cfg.apply.lanes * cfg.apply.queue_depth * 2;
    // In-flight bytes, in KiB permits.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        cfg.apply.max_inflight_mib as usize * 1024,
    ));
    let mut dispatch_result = Ok(());
    while let Some(item) = rx.recv().await {
        match dispatch(p, &window, &sinks, item, max_window, &budget, &stop).await {
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
    // Closing the sinks' queues lets them finish what is queued, then stop.
    drop(sinks);
    drop(rx);
    let mut lane_result = Ok(());
    while let Some(r) = writers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => lane_result = lane_result.and(Err(e)),
            Err(e) => {
                lane_result =
                    lane_result.and(Err(Error::Internal(format!("sink writer panicked: {e}"))))
            }
        }
    }
    stop.cancel();
    let reader_result = reader
        .await
        .map_err(|e| Error::Internal(format!("reader panicked: {e}")))?;
    checkpointer
        .await
        .map_err(|e| Error::Internal(format!("checkpointer panicked: {e}")))??;
    // Final save: everything the lanes finished is durable. Bounded, so a shutdown does not
    // hang on a checkpoint store that is down (the next run resumes from the previous save and
    // re-applies idempotently).
    let mut none = None;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    save_committed(
        &window,
        &mut none,
        &p.store,
        &p.checkpoint,
        &p.telemetry,
        Some(give_up),
    )
    .await?;
    p.telemetry.set_window(None);
    p.telemetry.set_lane_depths(None);
    reader_result.and(dispatch_result).and(lane_result)
}

async fn save_committed(
    window: &AckWindow,
    last: &mut Option<Position>,
    store: &crate::checkpoint::CheckpointStore,
    ckpt: &tokio::sync::Mutex<crate::checkpoint::Checkpoint>,
    telemetry: &crate::telemetry::Telemetry,
    give_up: Option<std::time::Instant>,
) -> Result<()> {
    let Some(pos) = window.committed() else {
        return Ok(());
    };
    if last.as_ref() == Some(&pos) {
        return Ok(());
    }
    let token =
        Document::try_from(pos.token.as_ref()).map_err(|e| Error::Internal(e.to_string()))?;
    let snapshot = {
        let mut c = ckpt.lock().await;
        c.resume_token = Some(token.clone());
        if pos.time.is_some() {
            c.cluster_time = pos.time;
        }
        c.clone()
    };
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    loop {
        match store.save(&snapshot).await {
            Ok(()) => break,
            Err(e) if e.is_retryable() && give_up.is_none_or(|t| std::time::Instant::now() < t) => {
                warn!(error = %e, "Saving the checkpoint failed; retrying.");
                telemetry.error(&format!("checkpoint: {e}"));
                backoff.wait(None).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    debug!(time = ?pos.time, "Checkpoint saved.");
    telemetry.set_checkpointed(&token, pos.time);
    *last = Some(pos);
    Ok(())
}

/// The queues of every sink.
struct Senders {
    lanes: Vec<mpsc::Sender<LaneItem>>,
    archives: Vec<mpsc::Sender<ArchiveItem>>,
    kafkas: Vec<mpsc::Sender<ArchiveItem>>,
}

/// Whether the dispatcher goes on.
enum Flow {
    Continue,
    Stop,
}

async fn dispatch(
    p: &Pipeline,
    window: &AckWindow,
    sinks: &Senders,
    item: SourceItem,
    max_window: usize,
    budget: &Arc<tokio::sync::Semaphore>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Flow> {
    // A failed lane never acks again: waiting on the window must end with the pipeline.
    tokio::select! {
        biased;
        _ = window.wait_len_at_most(max_window) => {}
        _ = stop.cancelled() => return Ok(Flow::Stop),
    }
    let mut ev: ChangeEvent = match item {
        SourceItem::Position(pos) => {
            window.push_done(pos);
            return Ok(Flow::Continue);
        }
        SourceItem::Event(ev) => *ev,
    };
    let pos = Position {
        token: ev.resume_token.clone(),
        time: ev.cluster_time,
    };
    if p.transforms.apply(&mut ev) == Verdict::Skip {
        window.push_done(pos);
        return Ok(Flow::Continue);
    }
    let to_mongo = p.cfg.sink_takes(&ev.op);
    let archives: Vec<usize> = p
        .archives
        .iter()
        .enumerate()
        .filter(|(_, a)| a.cfg.ops.iter().any(|o| o.matches(&ev.op)))
        .map(|(i, _)| i)
        .collect();
    let kafkas: Vec<usize> = p
        .kafkas
        .iter()
        .enumerate()
        .filter(|(_, k)| k.takes(&ev.op))
        .map(|(i, _)| i)
        .collect();
    if ev.op == OpType::CreateIndexes && !kafkas.is_empty() {
        // Kafka consumers apply the event as it is: give it the source's full specs.
        if let Some(specs) = source_index_specs(p, &ev).await {
            match ev.with_index_specs(&specs) {
                Ok(e) => ev = e,
                Err(e) => warn!(error = %e, "Could not add index specs to the event."),
            }
        }
    }
    let mut ops = Vec::new();
    if to_mongo && !ev.op.is_data() {
        // DDL is a barrier: everything before it is written first, nothing after it starts
        // until it is done.
        tokio::select! {
            biased;
            _ = window.wait_drained() => {}
            _ = stop.cancelled() => return Ok(Flow::Stop),
        }
        apply_ddl(p, &ev).await?;
        p.telemetry.applied(&ev.op, 1);
    } else if to_mongo {
        ops = ops_for_event(&ev, p.cfg.stream.update_mode)
            .map_err(|e| Error::Internal(e.to_string()))?;
    } else if ev.op == OpType::Delete && p.sink.is_some() {
        // A delete kept off the sink (append-only copy) still leaves its document there: if it
        // is missing (deleted during the initial copy, before it was read), the pre-image is
        // inserted, so the copy is the source "minus nothing".
        if let Ok(Some(bson::RawBsonRef::Document(pre))) = ev.raw.get("fullDocumentBeforeChange") {
            ops.push(WriteOp::InsertIfAbsent {
                ns: ev.ns.clone(),
                doc: pre.to_owned(),
            });
        }
    }
    let parts = u32::from(!ops.is_empty()) + archives.len() as u32 + kafkas.len() as u32;
    if parts == 0 {
        window.push_done(pos);
        return Ok(Flow::Continue);
    }
    if !p.control.admit(1, stop).await || !delay(p, &ev, stop).await {
        return Ok(Flow::Stop);
    }
    let max_kib = p.cfg.apply.max_inflight_mib as usize * 1024;
    let acquire = |kib: usize| async move {
        tokio::select! {
            biased;
            permit = budget.clone().acquire_many_owned(kib.min(max_kib) as u32) => permit.map(Some).map_err(|_| Error::Internal("budget closed".into())),
            _ = stop.cancelled() => Ok(None),
        }
    };
    let lane_permit = if ops.is_empty() {
        None
    } else {
        match acquire(ops.iter().map(|o| o.size()).sum::<usize>() / 1024 + 1).await? {
            Some(p) => Some(p),
            None => return Ok(Flow::Stop),
        }
    };
    let mut archive_permits = Vec::with_capacity(archives.len() + kafkas.len());
    for _ in archives.iter().chain(&kafkas) {
        match acquire(ev.raw.as_bytes().len() / 1024 + 1).await? {
            Some(p) => archive_permits.push(p),
            None => return Ok(Flow::Stop),
        }
    }
    let seq = window.push(pos, parts);
    let op = to_mongo.then(|| ev.op.clone());
    let lane = match sinks.lanes.len() {
        0 => 0,
        n => lane_of(&ev, p.cfg.apply.lane_by, n),
    };
    let ev = Arc::new(ev);
    // A closed queue means its sink has failed and reports its own error.
    let queues = archives
        .into_iter()
        .map(|i| &sinks.archives[i])
        .chain(kafkas.into_iter().map(|i| &sinks.kafkas[i]));
    for (queue, permit) in queues.zip(archive_permits) {
        let item = ArchiveItem {
            seq,
            ev: ev.clone(),
            budget: Some(permit),
        };
        if queue.send(item).await.is_err() {
            return Ok(Flow::Stop);
        }
    }
    if let Some(permit) = lane_permit {
        let item = LaneItem {
            seq,
            op,
            ops,
            budget: Some(permit),
            window: None,
            origin: None,
        };
        if sinks.lanes[lane].send(item).await.is_err() {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// Waits until the event is `stream.target_delay` old; false if stopped meanwhile.
async fn delay(p: &Pipeline, ev: &ChangeEvent, stop: &tokio_util::sync::CancellationToken) -> bool {
    let delay = p.cfg.stream.target_delay;
    let Some(t) = ev.cluster_time.filter(|_| !delay.is_zero()) else {
        return true;
    };
    let due = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.time as u64) + delay;
    let Ok(wait) = due.duration_since(std::time::SystemTime::now()) else {
        return true;
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The source's full specs of the indexes a createIndexes event names: the event may lack
/// their options (unique, TTL, partial). `None` when they cannot be read.
async fn source_index_specs(p: &Pipeline, ev: &ChangeEvent) -> Option<Vec<Document>> {
    let names: Vec<String> = ev
        .raw
        .get_document("operationDescription")
        .ok()
        .and_then(|d| d.get_array("indexes").ok())
        .map(|a| {
            a.into_iter()
                .filter_map(|v| {
                    v.ok()?
                        .as_document()?
                        .get_str("name")
                        .ok()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    match crate::source::mongo::snapshot::list_indexes(&p.source, &ev.source_ns).await {
        Ok(specs) => {
            let specs: Vec<Document> = specs
                .into_iter()
                .filter(|s| {
                    s.get_str("name")
                        .is_ok_and(|n| names.iter().any(|m| m == n))
                })
                .collect();
            (!specs.is_empty()).then_some(specs)
        }
        Err(e) => {
            warn!(error = %e, "Could not read index specs from the source; using the event's.");
            None
        }
    }
}

async fn apply_ddl(p: &Pipeline, ev: &ChangeEvent) -> Result<()> {
    if ev.op == OpType::CreateIndexes {
        if let Some(specs) = source_index_specs(p, ev).await {
            p.mongo_sink()?.create_indexes(&ev.ns, &specs).await?;
            info!(ns = %ev.ns, indexes = ?specs.iter().filter_map(|s| s.get_str("name").ok()).collect::<Vec<_>>(), "Created indexes.");
            return Ok(());
        }
    }
    p.mongo_sink()?.apply_ddl(ev).await
}

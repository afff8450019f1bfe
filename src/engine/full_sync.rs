//! The full sync: copies the planned collections chunk by chunk, in parallel, checkpointing
//! each finished chunk so a restart redoes only unfinished ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bson::Document;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::info;

use super::start::MongoPipeline as Pipeline;
use crate::checkpoint::{CollectionPlan, FullSyncState};
use crate::connectors::mongo::snapshot::{
    list_collections, list_indexes, plan_collection, read_chunk,
};
use crate::core::event::Namespace;
use crate::error::{Error, Result};
use crate::telemetry::{CollectionProgress, PipelineState};

/// Plans a full sync of every collection in scope, starting from `start_token`.
pub async fn plan(p: &Pipeline, start_token: Option<Document>) -> Result<FullSyncState> {
    let colls = list_collections(&p.source, &p.engine.transforms.scope).await?;
    let mut collections = Vec::with_capacity(colls.len());
    for c in &colls {
        collections
            .push(plan_collection(&p.source, &c.ns, p.engine.cfg.full_sync.chunk_docs).await?);
    }
    Ok(FullSyncState {
        start_token,
        start_time: None,
        collections,
        done: false,
    })
}

/// Runs (or resumes) the full sync recorded in the checkpoint. `fresh` allows dropping target
/// collections first when configured. Returns `false` if cancelled before the end.
pub async fn copy(p: &Arc<Pipeline>, fresh: bool) -> Result<bool> {
    p.engine.telemetry.set_state(PipelineState::Copying);
    let state = p
        .checkpoint
        .state
        .lock()
        .await
        .full_sync
        .clone()
        .ok_or_else(|| Error::Internal("no full-sync plan".into()))?;
    let options: HashMap<String, Document> =
        list_collections(&p.source, &p.engine.transforms.scope)
            .await?
            .into_iter()
            .map(|c| (c.ns.to_string(), c.options))
            .collect();

    p.engine.telemetry.clear_collections();
    let mut progress = Vec::new();
    for plan in &state.collections {
        let done_chunks = plan.chunks.iter().filter(|c| c.done).count() as u64;
        let copied = (done_chunks * p.engine.cfg.full_sync.chunk_docs).min(plan.estimated);
        progress.push(p.engine.telemetry.add_collection(
            &plan.ns,
            plan.estimated,
            copied,
            plan.indexes_done,
        ));
    }

    for (ci, plan) in state.collections.iter().enumerate() {
        if plan.created {
            continue;
        }
        let target = p.engine.transforms.target_ns(&Namespace::parse(&plan.ns));
        let opts = options.get(&plan.ns).cloned().unwrap_or_default();
        // The indexes, unique ones included, are built after the copy, which is faster than
        // inserting into them (and on some servers much faster than unique checks during the
        // copy). A copy taken under writes may hold two documents with one unique value (they
        // swapped it meanwhile): that build is deferred until the stream has removed the
        // duplicate (see the MongoDB sink's deferred builds).
        for sink in copy_sinks(p) {
            sink.prepare_copy(&target, &opts, fresh && p.engine.cfg.full_sync.drop_target)
                .await?;
        }
        with_plan(p, ci, |plan| plan.created = true).await;
    }
    p.save_checkpoint().await?;

    let queue: VecDeque<(usize, usize)> = state
        .collections
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| {
            c.chunks
                .iter()
                .enumerate()
                .filter(|(_, k)| !k.done)
                .map(move |(ki, _)| (ci, ki))
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(queue));
    let progress = Arc::new(progress);
    let stop = p.engine.cancel.child_token();
    let builds: Builds = Arc::default();
    // Collections with nothing left to copy (a restart) may still need their indexes: built
    // in the background like the others.
    for (ci, plan) in state.collections.iter().enumerate() {
        if plan.chunks.iter().all(|c| c.done) && !plan.indexes_done {
            build_in_background(p, ci, &progress, &builds);
        }
    }
    let mut workers = JoinSet::new();
    for _ in 0..p.engine.cfg.full_sync.parallelism {
        let (p, queue, progress, stop, builds) = (
            p.clone(),
            queue.clone(),
            progress.clone(),
            stop.clone(),
            builds.clone(),
        );
        workers.spawn(tracing::Instrument::in_current_span(async move {
            let r = worker(&p, &queue, &progress, &stop, &builds).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        }));
    }
    let mut result = Ok(());
    while let Some(r) = workers.join_next().await {
        let r = r.unwrap_or_else(|e| Err(Error::Internal(format!("copy worker panicked: {e}"))));
        result = result.and(r);
    }
    // Index builds still running are awaited, stopped or not: a build is one server command,
    // never dropped halfway.
    let running: Vec<_> = std::mem::take(&mut *builds.lock().unwrap());
    for b in running {
        let r = b
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("index build panicked: {e}"))));
        result = result.and(r);
    }
    result?;
    if p.engine.cancel.is_cancelled() {
        return Ok(false);
    }
    {
        // Done and the streaming start are saved together: a crash between them must not
        // leave a finished copy without a position.
        let mut c = p.checkpoint.state.lock().await;
        let fs = c.full_sync.as_mut().expect("plan");
        fs.done = true;
        let start = fs.start_token.clone();
        if c.resume_token.is_none() {
            c.resume_token = start;
        }
    }
    p.save_checkpoint().await?;
    info!(collections = state.collections.len(), "Full sync finished.");
    Ok(true)
}

/// How often a chunk's progress inside it is saved (its end is always saved): what a killed
/// copy publishes or writes again is at most this much of copying.
const PROGRESS_SAVE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// ... and after this many documents, whichever comes first: on a fast copy 250 ms is already
/// thousands of documents (a loaded test run republished 5,899 of 9,004 after a kill).
const PROGRESS_SAVE_DOCS: u64 = 2000;

/// Index builds of copied collections, running while the workers copy other collections.
type Builds = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<Result<()>>>>>;

async fn worker(
    p: &Arc<Pipeline>,
    queue: &std::sync::Mutex<VecDeque<(usize, usize)>>,
    progress: &Arc<Vec<Arc<CollectionProgress>>>,
    stop: &tokio_util::sync::CancellationToken,
    builds: &Builds,
) -> Result<()> {
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let Some((ci, ki)) = queue.lock().unwrap().pop_front() else {
            return Ok(());
        };
        let (src, chunk) = {
            let c = p.checkpoint.state.lock().await;
            let plan: &CollectionPlan = &c.full_sync.as_ref().expect("plan").collections[ci];
            (Namespace::parse(&plan.ns), plan.chunks[ki].clone())
        };
        let target = p.engine.transforms.target_ns(&src);
        let (tx, mut rx) = mpsc::channel(2);
        let reader = tokio::spawn(read_chunk(
            p.source.clone(),
            src.clone(),
            chunk,
            p.engine.cfg.full_sync.batch_docs,
            tx,
        ));
        let mut complete = true;
        let mut saves = Saves {
            at: std::time::Instant::now(),
            unsaved: 0,
        };
        let sinks: Vec<Arc<dyn crate::connectors::Sink>> =
            copy_sinks(p).into_iter().cloned().collect();
        let depth = sinks
            .iter()
            .map(|s| s.copy_depth())
            .min()
            .unwrap_or(1)
            .max(1);
        // Batches being written, oldest first; each its own task, so a sink that encodes can
        // use every core. Progress moves only past batches every copy sink has made durable.
        let mut writing: VecDeque<CopyBatch> = VecDeque::new();
        loop {
            let next = if writing.len() >= depth {
                None
            } else {
                tokio::select! {
                    biased;
                    b = rx.recv() => Some(b),
                    done = async { writing.front_mut().expect("a batch is being written").await }, if !writing.is_empty() => {
                        writing.pop_front();
                        batch_done(p, ci, ki, progress, done, &mut saves).await?;
                        continue;
                    }
                }
            };
            let batch = match next {
                Some(Some(batch)) => batch,
                // The range is read: finish what is being written.
                Some(None) => break,
                // As many batches as the sinks take at once: wait for the oldest.
                None => {
                    let done = writing.pop_front().expect("a batch is being written").await;
                    batch_done(p, ci, ki, progress, done, &mut saves).await?;
                    continue;
                }
            };
            if stop.is_cancelled() {
                complete = false;
                break;
            }
            if !p.engine.control.admit(batch.len() as u64, stop).await {
                complete = false;
                break;
            }
            let sinks = sinks.clone();
            let target = target.clone();
            writing.push_back(tokio::spawn(async move {
                let bytes: usize = batch.iter().map(|d| d.as_bytes().len()).sum();
                let last_id = batch
                    .last()
                    .and_then(|d| d.get("_id").ok().flatten())
                    .and_then(|v| bson::Bson::try_from(bson::RawBson::from(v)).ok());
                let mut n = 0;
                let last = sinks.len().saturating_sub(1);
                let mut batch = Some(batch);
                for (i, sink) in sinks.iter().enumerate() {
                    let docs = if i == last {
                        batch.take().unwrap_or_default()
                    } else {
                        batch.clone().unwrap_or_default()
                    };
                    n = sink.copy(&target, docs).await?;
                }
                Ok((n, bytes as u64, last_id))
            }));
        }
        // Batches handed to the sinks are finished (never dropped mid-write), and count: they
        // are durable, stopped or not.
        while let Some(w) = writing.pop_front() {
            batch_done(p, ci, ki, progress, w.await, &mut saves).await?;
        }
        drop(rx);
        reader
            .await
            .map_err(|e| Error::Internal(format!("chunk reader panicked: {e}")))??;
        if !complete || stop.is_cancelled() {
            return Ok(());
        }
        let collection_done = with_plan(p, ci, |plan| {
            plan.chunks[ki].done = true;
            plan.chunks.iter().all(|k| k.done)
        })
        .await;
        p.save_checkpoint().await?;
        if collection_done {
            // The worker goes on with the next range while the server builds this
            // collection's indexes: builds overlap the copy of the other collections.
            build_in_background(p, ci, progress, builds);
        }
    }
}

/// A batch of a copy range being written by every copy sink: how many documents they wrote,
/// its bytes and its last `_id`.
type CopyBatch = tokio::task::JoinHandle<Result<(u64, u64, Option<bson::Bson>)>>;

/// When a range's progress was last saved, and how many documents were copied since.
struct Saves {
    at: std::time::Instant,
    unsaved: u64,
}

/// Counts a finished batch that every copy sink has, and moves the range's progress past its
/// last `_id` (saved every [`PROGRESS_SAVE_EVERY`] or [`PROGRESS_SAVE_DOCS`]); a batch that
/// failed or panicked is the range's error.
async fn batch_done(
    p: &Pipeline,
    ci: usize,
    ki: usize,
    progress: &[Arc<CollectionProgress>],
    done: std::result::Result<Result<(u64, u64, Option<bson::Bson>)>, tokio::task::JoinError>,
    saves: &mut Saves,
) -> Result<()> {
    let (n, bytes, last_id) =
        done.map_err(|e| Error::Internal(format!("copy batch panicked: {e}")))??;
    progress[ci].copied.fetch_add(n, Relaxed);
    progress[ci].bytes.fetch_add(bytes, Relaxed);
    // Every copy sink has the batch: a restart may continue after its last `_id`.
    if let Some(id) = last_id {
        with_plan(p, ci, |plan| plan.chunks[ki].copied_to = Some(id)).await;
        // Not after every batch: a save per batch cost the copy ~12 %.
        saves.unsaved += n;
        if saves.at.elapsed() >= PROGRESS_SAVE_EVERY || saves.unsaved >= PROGRESS_SAVE_DOCS {
            p.save_checkpoint().await?;
            saves.at = std::time::Instant::now();
            saves.unsaved = 0;
        }
    }
    Ok(())
}

/// Builds collection `ci`'s indexes (and marks it copied) in a task of `builds`, which
/// [`copy`] awaits before the copy is done.
fn build_in_background(
    p: &Arc<Pipeline>,
    ci: usize,
    progress: &Arc<Vec<Arc<CollectionProgress>>>,
    builds: &Builds,
) {
    let (p, progress) = (p.clone(), progress.clone());
    let build = tokio::spawn(tracing::Instrument::in_current_span(async move {
        finish_collection(&p, ci).await?;
        progress[ci].done.store(true, Relaxed);
        Ok(())
    }));
    builds.lock().unwrap().push(build);
}

/// Builds the indexes of a copied collection and records it.
async fn finish_collection(p: &Pipeline, ci: usize) -> Result<()> {
    let ns = with_plan(p, ci, |plan| plan.ns.clone()).await;
    let src = Namespace::parse(&ns);
    if p.engine.cfg.full_sync.indexes {
        let target = p.engine.transforms.target_ns(&src);
        let specs = list_indexes(&p.source, &src).await?;
        for sink in copy_sinks(p) {
            sink.finish_copy(&target, &specs).await?;
        }
    }
    with_plan(p, ci, |plan| plan.indexes_done = true).await;
    p.save_checkpoint().await?;
    info!(ns = %ns, "Collection copied.");
    Ok(())
}

/// Reads or changes the plan of collection `ci` in the checkpoint (saved by the caller).
async fn with_plan<R>(p: &Pipeline, ci: usize, f: impl FnOnce(&mut CollectionPlan) -> R) -> R {
    let mut c = p.checkpoint.state.lock().await;
    f(&mut c.full_sync.as_mut().expect("plan").collections[ci])
}

/// The sinks that receive the initial copy.
fn copy_sinks(p: &Pipeline) -> Vec<&Arc<dyn crate::connectors::Sink>> {
    p.engine.sinks.iter().filter(|s| s.takes_copy()).collect()
}

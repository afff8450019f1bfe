//! Ordered parallel writers. Each lane is a task that hands its events to one sink in arrival
//! order, a batch at a time, so all events of one document (or one namespace) keep their order
//! while lanes run in parallel.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connectors::{DeadLetters, Ordering, Origin, Sink};
use crate::core::{AckWindow, ChangeEvent};
use crate::error::Result;
use crate::telemetry::{SinkCounters, Telemetry};

/// One event queued for one sink.
#[derive(Debug)]
pub(crate) struct LaneItem {
    /// Sequence number in `window`.
    pub seq: u64,
    /// The ack window of the event's part.
    pub window: Arc<AckWindow>,
    /// The event.
    pub ev: Arc<ChangeEvent>,
    /// The source record, for the dead-letter destination.
    pub origin: Option<Arc<dyn Origin>>,
    /// The event's share of the in-flight byte budget, returned once every sink has it.
    pub _budget: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// The lane of an event among `lanes`: a stable hash of its namespace and, for
/// [`Ordering::ByKey`], of its document key.
pub(crate) fn lane_of(ev: &ChangeEvent, ordering: Ordering) -> usize {
    let (lanes, by_key) = match ordering {
        Ordering::ByKey { lanes } => (lanes, true),
        Ordering::ByNamespace { lanes } => (lanes, false),
        Ordering::Single => return 0,
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ev.ns.hash(&mut h);
    if by_key {
        ev.key_bytes().hash(&mut h);
    }
    (h.finish() % lanes.max(1) as u64) as usize
}

/// How many lanes an ordering has.
pub(crate) fn lane_count(ordering: Ordering) -> usize {
    match ordering {
        Ordering::ByKey { lanes } | Ordering::ByNamespace { lanes } => lanes.max(1),
        Ordering::Single => 1,
    }
}

/// Runs one lane until its queue closes: batches what is queued (per the sink's batch policy),
/// writes it, and acknowledges every event the sink made durable. An event the sink refuses for
/// good goes to the dead-letter destination when its source has one and the event came with
/// its record; otherwise the refusal stops the pipeline (the checkpoint stays before it).
pub(crate) async fn run_lane(
    mut rx: mpsc::Receiver<LaneItem>,
    sink: Arc<dyn Sink>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    telemetry: Arc<Telemetry>,
    counters: Arc<SinkCounters>,
) -> Result<()> {
    let policy = sink.batching();
    let primary = sink.name() == "sink";
    let mut items: Vec<LaneItem> = Vec::new();
    let mut batch: Vec<Arc<ChangeEvent>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.ev.raw.as_bytes().len();
        items.push(first);
        let deadline = Instant::now() + policy.linger;
        let mut open = true;
        while open && items.len() < policy.max_events && bytes < policy.max_bytes {
            let next = match rx.try_recv() {
                Ok(i) => Some(i),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if policy.linger.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    i = rx.recv() => i,
                    _ = tokio::time::sleep_until(deadline) => break,
                },
            };
            match next {
                Some(i) => {
                    bytes += i.ev.raw.as_bytes().len();
                    items.push(i);
                }
                None => open = false,
            }
        }
        batch.clear();
        batch.extend(items.iter().map(|i| i.ev.clone()));
        let started = std::time::Instant::now();
        let written = sink.write(&batch).await?;
        telemetry
            .apply_latency
            .observe(started.elapsed().as_secs_f64());
        telemetry.batch_size.observe(batch.len() as f64);
        telemetry
            .skipped
            .fetch_add(written.skipped, std::sync::atomic::Ordering::Relaxed);
        let mut refused = vec![false; items.len()];
        for r in written.refused {
            let item = &items[r.index];
            match &dead_letters {
                Some(dl) => {
                    dl.dead_letter(item.origin.as_deref(), Some(&item.ev), &r.error.to_string())
                        .await?;
                    counters.refused(1);
                    telemetry
                        .dead_lettered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                None => return Err(r.error),
            }
            refused[r.index] = true;
        }
        // One ack (one lock, one wake-up) per run of events of the same part.
        let mut seqs: Vec<u64> = Vec::with_capacity(items.len());
        for (i, (item, refused)) in items.iter().zip(refused).enumerate() {
            if !refused && sink.takes(&item.ev.op) {
                counters.wrote(&item.ev.op);
                if primary {
                    telemetry.applied(&item.ev.op, 1);
                }
            }
            seqs.push(item.seq);
            let part_ends = items
                .get(i + 1)
                .is_none_or(|next| !Arc::ptr_eq(&next.window, &item.window));
            if part_ends {
                item.window.ack(&seqs);
                seqs.clear();
            }
        }
        items.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn ev(coll: &str, id: i32) -> ChangeEvent {
        ChangeEvent::from_raw(rawdoc! {
            "_id": { "_data": "01" }, "operationType": "delete",
            "ns": { "db": "d", "coll": coll }, "documentKey": { "_id": id },
        })
        .unwrap()
    }

    #[test]
    fn same_document_same_lane_and_keys_spread() {
        let by_key = Ordering::ByKey { lanes: 8 };
        assert_eq!(lane_of(&ev("c", 1), by_key), lane_of(&ev("c", 1), by_key));
        let lanes: std::collections::HashSet<_> =
            (0..100).map(|i| lane_of(&ev("c", i), by_key)).collect();
        assert!(lanes.len() > 4);
        let by_ns: std::collections::HashSet<_> = (0..100)
            .map(|i| lane_of(&ev("c", i), Ordering::ByNamespace { lanes: 8 }))
            .collect();
        assert_eq!(by_ns.len(), 1);
        assert_eq!(lane_of(&ev("c", 3), Ordering::Single), 0);
    }
}

//! Ordered parallel apply. Each lane is a task that writes its events in arrival order, so all
//! events of one document (or one namespace) keep their order while lanes run in parallel.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::LaneBy;
use crate::error::Result;
use crate::event::{ChangeEvent, OpType};
use crate::pipeline::ack::AckWindow;
use crate::sink::mongo::{MongoSink, WriteOp};
use crate::source::kafka::ConsumedRecord;
use crate::telemetry::Telemetry;

/// One event's writes, queued on a lane.
#[derive(Debug)]
pub struct LaneItem {
    /// Sequence number in the ack window.
    pub seq: u64,
    /// Operation, for counting (`None`: not counted as applied, e.g. the pre-image kept for
    /// a delete that went to an archive instead).
    pub op: Option<OpType>,
    /// The writes.
    pub ops: Vec<WriteOp>,
    /// This event's share of the in-flight byte budget, returned when the item is dropped
    /// after its writes are acknowledged.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The ack window of this item, when not the lane's (a Kafka source has one per
    /// partition).
    pub window: Option<Arc<AckWindow>>,
    /// The Kafka record this item came from, for the dead-letter topic.
    pub origin: Option<Arc<ConsumedRecord>>,
}

/// Where records whose writes the sink refuses go (a Kafka source's dead-letter topic).
pub trait DeadLetters: Send + Sync {
    /// Stores the record with the reason, durably.
    fn dead_letter<'a>(
        &'a self,
        rec: &'a ConsumedRecord,
        reason: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
}

/// The lane of an event: a stable hash of its namespace and, unless `by` is namespace, of its
/// document key.
pub fn lane_of(ev: &ChangeEvent, by: LaneBy, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ev.ns.hash(&mut h);
    if by == LaneBy::Document {
        ev.key_bytes().hash(&mut h);
    }
    (h.finish() % lanes as u64) as usize
}

/// Runs one lane until its queue closes. Batches whatever is queued (up to `batch_docs`
/// writes) into one round trip, then acknowledges those events. With `dead_letters`, a batch
/// the sink refuses for good is retried one event at a time, and the events still refused go
/// there instead of stopping the pipeline.
pub async fn run_lane(
    mut rx: mpsc::Receiver<LaneItem>,
    sink: MongoSink,
    window: Arc<AckWindow>,
    telemetry: Arc<Telemetry>,
    batch_docs: usize,
    dead_letters: Option<Arc<dyn DeadLetters>>,
) -> Result<()> {
    let mut items: Vec<LaneItem> = Vec::new();
    let mut ops: Vec<WriteOp> = Vec::new();
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    while let Some(first) = rx.recv().await {
        items.push(first);
        while ops_len(&items) < batch_docs {
            match rx.try_recv() {
                Ok(i) => items.push(i),
                Err(_) => break,
            }
        }
        ops.clear();
        ranges.clear();
        for i in &mut items {
            let start = ops.len();
            ops.append(&mut i.ops);
            ranges.push(start..ops.len());
        }
        let started = std::time::Instant::now();
        let counts = match (sink.apply(&ops).await, &dead_letters) {
            (Ok(c), _) => c,
            (Err(e), Some(dl))
                if !e.is_retryable() && !matches!(e, crate::error::Error::Stopped) =>
            {
                let mut counts = crate::sink::mongo::ApplyCounts::default();
                for (item, range) in items.iter().zip(&ranges) {
                    match sink.apply(&ops[range.clone()]).await {
                        Ok(c) => counts.skipped += c.skipped,
                        Err(e)
                            if !e.is_retryable() && !matches!(e, crate::error::Error::Stopped) =>
                        {
                            match &item.origin {
                                Some(rec) => dl.dead_letter(rec, &e.to_string()).await?,
                                None => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                counts
            }
            (Err(e), _) => return Err(e),
        };
        telemetry
            .apply_latency
            .observe(started.elapsed().as_secs_f64());
        telemetry.batch_size.observe(ops.len() as f64);
        telemetry
            .skipped
            .fetch_add(counts.skipped, std::sync::atomic::Ordering::Relaxed);
        for i in items.iter().filter_map(|i| i.op.as_ref()) {
            telemetry.applied(i, 1);
        }
        let seqs: Vec<u64> = items
            .iter()
            .filter(|i| i.window.is_none())
            .map(|i| i.seq)
            .collect();
        window.ack(&seqs);
        for i in items.iter() {
            if let Some(w) = &i.window {
                w.ack(&[i.seq]);
            }
        }
        items.clear();
    }
    Ok(())
}

fn ops_len(items: &[LaneItem]) -> usize {
    items.iter().map(|i| i.ops.len()).sum()
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
        assert_eq!(
            lane_of(&ev("c", 1), LaneBy::Document, 8),
            lane_of(&ev("c", 1), LaneBy::Document, 8)
        );
        let lanes: std::collections::HashSet<_> = (0..100)
            .map(|i| lane_of(&ev("c", i), LaneBy::Document, 8))
            .collect();
        assert!(lanes.len() > 4);
        let by_ns: std::collections::HashSet<_> = (0..100)
            .map(|i| lane_of(&ev("c", i), LaneBy::Namespace, 8))
            .collect();
        assert_eq!(by_ns.len(), 1);
    }
}

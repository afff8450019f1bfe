//! The archive writer: batches events per namespace into objects and acknowledges them once
//! the object is stored.
//!
//! Exactly once across crashes: each namespace has one open batch, written before the next
//! one starts, so the objects of a namespace always hold a prefix of its events in stream
//! order. After a restart the stream replays from the checkpoint; the first event of each
//! namespace and day makes the writer read back the objects of that day that end at or after
//! it, and events already in them are acknowledged without being written again. Object names
//! are made from the first and last event, so a new object never replaces an old one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::record::{day_of, event_id, event_time, label, object_name, parse_object_name, record};
use super::{ArchiveError, ArchiveSink};
use crate::backoff::Backoff;
use crate::event::{ChangeEvent, Namespace};
use crate::pipeline::ack::AckWindow;
use crate::telemetry::Telemetry;

/// One event for an archive.
#[derive(Debug)]
pub struct ArchiveItem {
    /// Sequence number in the ack window.
    pub seq: u64,
    /// The event.
    pub ev: Arc<ChangeEvent>,
    /// This event's share of the in-flight byte budget, held until it is archived.
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

struct Batch {
    day: [String; 3],
    opened: Instant,
    lines: Vec<u8>,
    seqs: Vec<u64>,
    first: String,
    last: String,
    _budget: Vec<tokio::sync::OwnedSemaphorePermit>,
}

/// Event ids already archived by an earlier run, for one namespace and day.
struct Archived {
    ids: HashSet<String>,
    /// Time of the newest of them; later events cannot be among them.
    until: (u32, u32),
}

/// Writes the events it receives until the channel closes, then writes what is left.
/// Returns early (without error) when `cancel` fires while a write keeps failing; what was not
/// written is not acknowledged, so the checkpoint stays before it.
pub async fn run(
    mut rx: mpsc::Receiver<ArchiveItem>,
    sink: ArchiveSink,
    window: Arc<AckWindow>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
) -> Result<(), ArchiveError> {
    let w = Writer {
        sink,
        window,
        telemetry,
        cancel,
    };
    let interval = w.sink.cfg.batch_interval;
    let max_events = w.sink.cfg.batch_events;
    let max_bytes = w.sink.cfg.batch_mib as usize * 1024 * 1024;
    let mut open: HashMap<Namespace, Batch> = HashMap::new();
    let mut archived: HashMap<(Namespace, [String; 3]), Archived> = HashMap::new();
    loop {
        let deadline = open.values().map(|b| b.opened + interval).min();
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                let due: Vec<Namespace> = open
                    .iter()
                    .filter(|(_, b)| b.opened + interval <= now)
                    .map(|(ns, _)| ns.clone())
                    .collect();
                for ns in due {
                    let b = open.remove(&ns).expect("listed");
                    if !w.flush(&ns, b).await {
                        return Ok(());
                    }
                }
                continue;
            }
        };
        let Some(item) = item else { break };
        let ev = &item.ev;
        let ns = ev.source_ns.clone();
        let time = event_time(ev);
        let day = day_of(time.0);
        let id = event_id(ev);

        let key = (ns.clone(), day.clone());
        if !archived.contains_key(&key) {
            let Some(a) = w.archived_since(&ns, &day, time).await else {
                return Ok(());
            };
            archived.insert(key.clone(), a);
        }
        let done = archived.get_mut(&key).expect("inserted");
        if time <= done.until && done.ids.remove(&id) {
            debug!(sink = %w.sink.name, %ns, event = %id, "Already archived by an earlier run.");
            w.telemetry.archive.duplicates.fetch_add(1, Relaxed);
            w.window.ack(&[item.seq]);
            continue;
        }

        // One open batch per namespace, all of one day: a new day starts a new object.
        if open.get(&ns).is_some_and(|b| b.day != day) {
            let b = open.remove(&ns).expect("checked");
            if !w.flush(&ns, b).await {
                return Ok(());
            }
        }
        let lbl = label(time, &id);
        let b = open.entry(ns.clone()).or_insert_with(|| Batch {
            day,
            opened: Instant::now(),
            lines: Vec::new(),
            seqs: Vec::new(),
            first: lbl.clone(),
            last: String::new(),
            _budget: Vec::new(),
        });
        serde_json::to_writer(&mut b.lines, &record(ev, w.sink.cfg.json))
            .expect("a JSON value always serializes");
        b.lines.push(b'\n');
        b.seqs.push(item.seq);
        b.last = lbl;
        if let Some(p) = item.budget {
            b._budget.push(p);
        }
        if b.seqs.len() >= max_events || b.lines.len() >= max_bytes {
            let b = open.remove(&ns).expect("present");
            if !w.flush(&ns, b).await {
                return Ok(());
            }
        }
    }
    for (ns, b) in open.drain() {
        if !w.flush(&ns, b).await {
            break;
        }
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Writer {
    sink: ArchiveSink,
    window: Arc<AckWindow>,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
}

impl Writer {
    fn day_path(&self, ns: &Namespace, day: &[String; 3]) -> Path {
        ArchiveSink::child(
            &self.sink.ns_path(Some(&ns.db), ns.coll.as_deref()),
            &[&day[0], &day[1], &day[2]],
        )
    }

    /// Writes one batch, retrying until it is stored; false if cancelled first.
    async fn flush(&self, ns: &Namespace, b: Batch) -> bool {
        let name = object_name(&b.first, &b.last, self.sink.extension());
        let path = ArchiveSink::child(&self.day_path(ns, &b.day), &[&name]);
        let bytes = Bytes::from(self.sink.encode(&b.lines));
        let size = bytes.len() as u64;
        let stored = self
            .retry(&format!("writing {path}"), || {
                self.sink.put(&path, bytes.clone())
            })
            .await;
        if stored.is_none() {
            return false;
        }
        debug!(sink = %self.sink.name, %path, events = b.seqs.len(), "Archived.");
        let a = &self.telemetry.archive;
        a.events.fetch_add(b.seqs.len() as u64, Relaxed);
        a.objects.fetch_add(1, Relaxed);
        a.bytes.fetch_add(size, Relaxed);
        self.window.ack(&b.seqs);
        true
    }

    /// The events of `ns` on `day` already archived at or after `from`; `None` if cancelled.
    async fn archived_since(
        &self,
        ns: &Namespace,
        day: &[String; 3],
        from: (u32, u32),
    ) -> Option<Archived> {
        let dir = self.day_path(ns, day);
        let objects = self
            .retry(&format!("listing {dir}"), || self.sink.list(&dir))
            .await?;
        let mut a = Archived {
            ids: HashSet::new(),
            until: (0, 0),
        };
        for o in objects {
            let Some((_, last)) = o.location.filename().and_then(parse_object_name) else {
                continue;
            };
            if last < from {
                continue;
            }
            let records = self
                .retry(&format!("reading {}", o.location), || {
                    self.sink.read(&o.location)
                })
                .await?;
            for r in records {
                if let Some(id) = r.get("eventId").and_then(|v| v.as_str()) {
                    a.ids.insert(id.to_string());
                }
            }
            a.until = a.until.max(last);
        }
        if !a.ids.is_empty() {
            info!(sink = %self.sink.name, %ns, events = a.ids.len(), "Found events archived by an earlier run; they will not be written again.");
        }
        Some(a)
    }

    /// Runs `f` until it succeeds, backing off up to 10 s between tries; `None` once cancelled.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ArchiveError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match f().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    warn!(error = %e, "Archive {what} failed; retrying. Events stay unacknowledged until stored.");
                    self.telemetry.error(&e.to_string());
                    if !backoff.wait(Some(&self.cancel)).await {
                        return None;
                    }
                }
            }
        }
    }
}

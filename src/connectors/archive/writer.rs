//! The archive writer: turns a batch of events into objects, per namespace, and returns once
//! they are stored.
//!
//! Exactly once across crashes: the archive has one lane, and a batch's objects are stored
//! before the next batch starts, so the objects of a namespace always hold a prefix of its events in stream
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
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::record::{day_of, event_id, event_time, label, object_name, parse_object_name, record};
use super::{ArchiveError, ArchiveSink};
use crate::backoff::Backoff;
use crate::core::event::{ChangeEvent, Namespace};
use crate::telemetry::Telemetry;

struct Batch {
    day: [String; 3],
    lines: Vec<u8>,
    events: u64,
    first: String,
    last: String,
}

/// Event ids already archived by an earlier run, for one namespace and day.
struct Archived {
    ids: HashSet<String>,
    /// Time of the newest of them; later events cannot be among them.
    until: (u32, u32),
}

/// What the archive remembers between batches: what earlier runs archived, per namespace and
/// day (read back once, at the first event of each).
#[derive(Default)]
pub(crate) struct WriterState {
    archived: HashMap<(Namespace, [String; 3]), Archived>,
}

/// Archives a batch: per namespace, in order, objects of at most `batch_events` events /
/// `batch_mib` MiB, one day each. Returns once all are stored; `Err(Stopped)` when shutdown
/// comes while a write keeps failing (nothing of the batch counts as written then).
pub(crate) async fn write(
    sink: &ArchiveSink,
    state: &mut WriterState,
    batch: &[Arc<ChangeEvent>],
    telemetry: &Telemetry,
    cancel: &CancellationToken,
) -> Result<(), crate::error::Error> {
    let w = Writer {
        sink,
        telemetry,
        cancel,
    };
    let max_events = w.sink.cfg.batch_events as u64;
    let max_bytes = w.sink.cfg.batch_mib as usize * 1024 * 1024;
    // Namespaces in order of first appearance, each with its events in batch order.
    let mut by_ns: Vec<(Namespace, Vec<&ChangeEvent>)> = Vec::new();
    for ev in batch {
        match by_ns.iter_mut().find(|(ns, _)| *ns == ev.source_ns) {
            Some((_, evs)) => evs.push(ev),
            None => by_ns.push((ev.source_ns.clone(), vec![ev])),
        }
    }
    let stopped = || crate::error::Error::Stopped;
    for (ns, events) in by_ns {
        let mut open: Option<Batch> = None;
        for ev in events {
            let time = event_time(ev);
            let day = day_of(time.0);
            let id = event_id(ev);
            let key = (ns.clone(), day.clone());
            if !state.archived.contains_key(&key) {
                let a = w
                    .archived_since(&ns, &day, time)
                    .await
                    .ok_or_else(stopped)?;
                state.archived.insert(key.clone(), a);
            }
            let done = state.archived.get_mut(&key).expect("inserted");
            if time <= done.until && done.ids.remove(&id) {
                debug!(sink = %w.sink.name, %ns, event = %id, "Already archived by an earlier run.");
                w.telemetry.archive.duplicates.fetch_add(1, Relaxed);
                continue;
            }
            // One object per day: a new day starts a new object.
            if open.as_ref().is_some_and(|b| b.day != day) {
                let b = open.take().expect("checked");
                w.flush(&ns, b).await.then_some(()).ok_or_else(stopped)?;
            }
            let lbl = label(time, &id);
            let b = open.get_or_insert_with(|| Batch {
                day,
                lines: Vec::new(),
                events: 0,
                first: lbl.clone(),
                last: String::new(),
            });
            serde_json::to_writer(&mut b.lines, &record(ev, w.sink.cfg.json))
                .expect("a JSON value always serializes");
            b.lines.push(b'\n');
            b.events += 1;
            b.last = lbl;
            if b.events >= max_events || b.lines.len() >= max_bytes {
                let b = open.take().expect("present");
                w.flush(&ns, b).await.then_some(()).ok_or_else(stopped)?;
            }
        }
        if let Some(b) = open {
            w.flush(&ns, b).await.then_some(()).ok_or_else(stopped)?;
        }
    }
    Ok(())
}

struct Writer<'a> {
    sink: &'a ArchiveSink,
    telemetry: &'a Telemetry,
    cancel: &'a CancellationToken,
}

impl Writer<'_> {
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
        debug!(sink = %self.sink.name, %path, events = b.events, "Archived.");
        let a = &self.telemetry.archive;
        a.events.fetch_add(b.events, Relaxed);
        a.objects.fetch_add(1, Relaxed);
        a.bytes.fetch_add(size, Relaxed);
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
                    if !backoff.wait(Some(self.cancel)).await {
                        return None;
                    }
                }
            }
        }
    }
}

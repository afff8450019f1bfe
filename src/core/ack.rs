//! The ack window: which source positions are safe to checkpoint.
//!
//! Every event read gets a sequence number and a slot, with one part per sink it goes to. Each
//! sink acknowledges its part once it has durably written the event; the slot is done when all
//! parts are. The committed position is that of the last slot of the longest
//! all-done prefix, so a checkpoint never passes an event that some lane has not yet written,
//! however the lanes interleave.

use std::collections::VecDeque;
use std::sync::Mutex;

use bson::Timestamp;
use tokio::sync::Notify;

use super::position::Position;

#[derive(Debug)]
struct Slot {
    pos: Position,
    /// Sinks that have not yet acknowledged this event.
    parts: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot>,
    committed: Option<Position>,
    /// Slots not yet done.
    pending: usize,
}

/// Tracks in-flight events between the reader and the lanes.
#[derive(Debug, Default)]
pub struct AckWindow {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl AckWindow {
    /// An empty window whose committed position starts at `start`.
    pub fn new(start: Option<Position>) -> Self {
        let w = AckWindow::default();
        w.inner.lock().unwrap().committed = start;
        w
    }

    /// Adds a position with nothing to write (a filtered event, an idle post-batch token).
    pub fn push_done(&self, pos: Position) -> u64 {
        self.push(pos, 0)
    }

    /// Adds a position whose event goes to `parts` sinks, each of which acks it once (0: nothing
    /// to write). Returns its sequence number.
    pub fn push(&self, pos: Position, parts: u32) -> u64 {
        let mut g = self.inner.lock().unwrap();
        let seq = g.base + g.slots.len() as u64;
        g.slots.push_back(Slot { pos, parts });
        if parts == 0 {
            Self::advance(&mut g);
        } else {
            g.pending += 1;
        }
        seq
    }

    /// Marks events written by one sink (one part each).
    pub fn ack(&self, seqs: &[u64]) {
        {
            let mut g = self.inner.lock().unwrap();
            for &seq in seqs {
                let Some(i) = seq.checked_sub(g.base) else {
                    continue;
                };
                if let Some(slot) = g.slots.get_mut(i as usize) {
                    if slot.parts > 0 {
                        slot.parts -= 1;
                        if slot.parts == 0 {
                            g.pending -= 1;
                        }
                    }
                }
            }
            Self::advance(&mut g);
        }
        self.changed.notify_waiters();
    }

    fn advance(g: &mut Inner) {
        while g.slots.front().is_some_and(|s| s.parts == 0) {
            let mut s = g.slots.pop_front().expect("front exists");
            g.base += 1;
            // An idle stream's position has no cluster time of its own; it is at least as late
            // as the events before it.
            if s.pos.time.is_none() {
                s.pos.time = g.committed.as_ref().and_then(|c| c.time);
            }
            g.committed = Some(s.pos);
        }
    }

    /// The newest position all of whose events (and all before) are written.
    pub fn committed(&self) -> Option<Position> {
        self.inner.lock().unwrap().committed.clone()
    }

    /// Events not yet written.
    pub fn pending(&self) -> usize {
        self.inner.lock().unwrap().pending
    }

    /// Slots held (written or not) behind the oldest unwritten one.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().slots.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cluster time of the oldest unwritten event.
    pub fn oldest_pending_time(&self) -> Option<Timestamp> {
        let g = self.inner.lock().unwrap();
        g.slots
            .iter()
            .find(|s| s.parts > 0)
            .and_then(|s| s.pos.time)
    }

    /// Waits until every event pushed so far is written.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.changed.notified();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits until at most `max` slots are held.
    pub async fn wait_len_at_most(&self, max: usize) {
        loop {
            let notified = self.changed.notified();
            if self.len() <= max {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PartId;
    use bson::rawdoc;
    use proptest::prelude::*;

    fn pos(i: u32) -> Position {
        Position {
            part: PartId::new("p"),
            token: rawdoc! { "i": i as i64 },
            time: Some(Timestamp {
                time: i,
                increment: 0,
            }),
        }
    }

    #[test]
    fn committed_waits_for_the_oldest_event() {
        let w = AckWindow::new(None);
        let a = w.push(pos(1), 1);
        let b = w.push(pos(2), 1);
        let _c = w.push_done(pos(3));
        w.ack(&[b]);
        assert_eq!(w.committed(), None);
        w.ack(&[a]);
        assert_eq!(w.committed(), Some(pos(3)));
        assert_eq!(w.pending(), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn an_idle_position_keeps_the_time_of_the_events_before_it() {
        let w = AckWindow::new(None);
        let a = w.push(pos(5), 1);
        let idle = Position {
            part: PartId::new("p"),
            token: rawdoc! { "idle": 1 },
            time: None,
        };
        w.push_done(idle.clone());
        w.ack(&[a]);
        assert_eq!(w.committed().unwrap().token, idle.token);
        assert_eq!(w.committed().unwrap().time, pos(5).time);
    }

    #[test]
    fn an_event_for_two_sinks_waits_for_both() {
        let w = AckWindow::new(None);
        let a = w.push(pos(1), 2);
        w.ack(&[a]);
        assert_eq!(w.committed(), None);
        assert_eq!(w.pending(), 1);
        w.ack(&[a]);
        assert_eq!(w.committed(), Some(pos(1)));
        assert_eq!(w.pending(), 0);
    }

    proptest! {
        /// Whatever order lanes ack in, the committed position never passes an unacked event
        /// and reaches the last position once everything is acked.
        #[test]
        fn never_passes_an_unacked_event(order in Just((0u32..40).collect::<Vec<_>>()).prop_shuffle()) {
            let w = AckWindow::new(None);
            let seqs: Vec<u64> = (0..40).map(|i| w.push(pos(i), 1)).collect();
            let mut acked = std::collections::HashSet::new();
            for i in order {
                w.ack(&[seqs[i as usize]]);
                acked.insert(i);
                if let Some(c) = w.committed() {
                    let upto = c.time.unwrap().time;
                    for j in 0..=upto { prop_assert!(acked.contains(&j)); }
                }
            }
            prop_assert_eq!(w.committed(), Some(pos(39)));
        }
    }
}

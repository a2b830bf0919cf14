//! The writers gathering a batch on one topic: each waits until the topic's head passes a
//! threshold of its own, a share of its lag bounds, so a writer that holds back to write many
//! events at once (see the hub's write pacing) is woken long before it could lag out of the
//! log or past its byte budget.
//!
//! A publish checks the lowest threshold (a few atomic loads) and takes the lock only when it
//! has passed one. A writer that parks again moves its own threshold without the lock; the
//! lowest one then may be stale (too low), which costs one scan that finds it out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use slab::Slab;

use super::readers::Reader;
use crate::event::{Event, Wire};

/// A gathering writer is due once its backlog passes this share of what it may lag (the events
/// the log holds, its byte budget): far enough from eviction that it writes in time, whatever
/// the delay.
const SHARE: u64 = 4;

/// When one writer is due, those within this share of their own threshold are woken with it.
const SOON: u64 = 8;

/// How far beyond its cursor a gathering writer's backlog may grow before it is due.
pub(super) struct Threshold {
    pub(super) events: u64,
    pub(super) bytes: u64,
}

impl Threshold {
    /// The threshold of a reader of a log of `capacity` events whose budget is `lag_limit`.
    pub(super) fn of(capacity: u64, lag_limit: usize) -> Self {
        Threshold { events: (capacity / SHARE).max(1), bytes: lag_limit as u64 / SHARE }
    }
}

/// Writers gathering on one topic, and the lowest of their thresholds.
#[derive(Debug)]
pub(super) struct Gatherers {
    /// Each at the key its reader keeps. Allocated when a writer first gathers here.
    parked: Mutex<Option<Box<Slab<Arc<Reader>>>>>,
    /// The lowest head sequence number at which one of them is due (`u64::MAX`: none).
    due_seq: AtomicU64,
    /// The lowest stream length, per wire format, at which one of them is due.
    due_end: [AtomicU64; Wire::COUNT],
}

impl Default for Gatherers {
    fn default() -> Self {
        Gatherers {
            parked: Mutex::new(None),
            due_seq: AtomicU64::new(u64::MAX),
            due_end: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        }
    }
}

impl Gatherers {
    /// Parks `reader`'s writer until the head reaches sequence number `at_seq` or the stream
    /// length of the reader's wire reaches `at_end`. The caller re-reads the head afterwards.
    pub(super) fn park(&self, reader: &Arc<Reader>, at_seq: u64, at_end: u64) {
        reader.gather_at_seq.store(at_seq, Ordering::SeqCst);
        reader.gather_at_end.store(at_end, Ordering::SeqCst);
        if !reader.gathering.swap(true, Ordering::AcqRel) {
            let mut parked = self.parked.lock();
            let key = parked.get_or_insert_default().insert(reader.clone());
            reader.gather_key.store(key, Ordering::Relaxed);
        }
        self.due_seq.fetch_min(at_seq, Ordering::SeqCst);
        self.due_end[reader.subscriber.wire().index()].fetch_min(at_end, Ordering::SeqCst);
    }

    /// Wakes the writers whose threshold `event` (the new head of a log of `capacity` events)
    /// reached, and with them those within [`SOON`] of theirs: they would be due in a moment,
    /// and waking them together makes one scan of the list serve many, rather than a scan per
    /// publish while the writers' thresholds are spread out.
    pub(super) fn wake_due(&self, event: &Event, capacity: u64) {
        let soon = capacity / SOON;
        let seq = event.id.seq;
        let due = seq >= self.due_seq.load(Ordering::SeqCst)
            || Wire::ALL
                .iter()
                .any(|w| event.stream_end(*w) >= self.due_end[w.index()].load(Ordering::SeqCst));
        if due {
            self.wake(|reader| {
                let soon_bytes = reader.subscriber.lag_limit() as u64 / SOON;
                seq.saturating_add(soon) >= reader.gather_at_seq.load(Ordering::SeqCst)
                    || event.stream_end(reader.subscriber.wire()).saturating_add(soon_bytes)
                        >= reader.gather_at_end.load(Ordering::SeqCst)
            });
        }
    }

    /// Wakes every gathering writer (the topic was replaced).
    pub(super) fn wake_all(&self) {
        self.wake(|_| true);
    }

    /// Wakes and removes the writers `is_due` picks, and recomputes the lowest thresholds of
    /// the others.
    fn wake(&self, is_due: impl Fn(&Reader) -> bool) {
        let mut woken = Vec::new();
        {
            let mut parked = self.parked.lock();
            let Some(list) = parked.as_deref_mut() else { return };
            // Reset first: a writer that moves its threshold during the scan either lowers
            // these after the reset, or is read below with its new threshold.
            self.due_seq.store(u64::MAX, Ordering::SeqCst);
            for end in &self.due_end {
                end.store(u64::MAX, Ordering::SeqCst);
            }
            list.retain(|_, reader| {
                if is_due(reader) {
                    reader.gathering.store(false, Ordering::Release);
                    woken.push(reader.clone());
                    return false;
                }
                self.due_seq
                    .fetch_min(reader.gather_at_seq.load(Ordering::SeqCst), Ordering::SeqCst);
                let end = &self.due_end[reader.subscriber.wire().index()];
                end.fetch_min(reader.gather_at_end.load(Ordering::SeqCst), Ordering::SeqCst);
                true
            });
        }
        for reader in woken {
            reader.subscriber.wake();
        }
    }

    /// Takes `reader`'s writer out, if it is gathering here (it unsubscribed).
    pub(super) fn remove(&self, reader: &Arc<Reader>) {
        take_out(&self.parked, reader, &reader.gathering, &reader.gather_key);
    }

    /// Frees the list once nobody gathers (the topic went idle).
    pub(super) fn release_if_empty(&self) {
        let mut parked = self.parked.lock();
        if parked.as_ref().is_some_and(|list| list.is_empty()) {
            *parked = None;
        }
    }
}

/// Takes `reader` out of a list of parked writers, where it sits at `key` while `listed` says
/// so. The key may be stale (the list was taken by a publish since): who is there is checked.
pub(super) fn take_out(
    list: &Mutex<Option<Box<Slab<Arc<Reader>>>>>,
    reader: &Arc<Reader>,
    listed: &AtomicBool,
    key: &AtomicUsize,
) {
    if !listed.load(Ordering::Acquire) {
        return;
    }
    let mut list = list.lock();
    let key = key.load(Ordering::Relaxed);
    if let Some(parked) = list.as_deref_mut()
        && parked.get(key).is_some_and(|parked| Arc::ptr_eq(parked, reader))
    {
        parked.remove(key);
        listed.store(false, Ordering::Release);
    }
}

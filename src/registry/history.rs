//! A topic's log of recent events: a ring written by the topic's publishers (one at a time, in
//! order) and read without locks by every subscriber's writer and by resume.
//!
//! The ring holds the last `limit` events. It starts small and doubles up to `limit`, so a
//! quiet topic costs little. Sequence numbers need not start at 1 (a cluster node's copy of a
//! topic starts wherever it joined). Event `seq` lives in slot `seq % capacity`; a reader detects an
//! overwritten or missing slot by its sequence number, so it never mistakes one event for
//! another. Replaced events and outgrown rings are freed with epochs (crossbeam-epoch) once no
//! reader can still hold them.

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};

use super::reclaim::defer_release;
use crate::event::Event;

struct Ring {
    slots: Box<[AtomicPtr<Event>]>,
}

impl Ring {
    fn with_capacity(capacity: usize) -> Self {
        Ring { slots: (0..capacity).map(|_| AtomicPtr::new(ptr::null_mut())).collect() }
    }

    fn slot(&self, seq: u64) -> &AtomicPtr<Event> {
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }
}

/// The retained events of one topic.
pub(crate) struct History {
    ring: Atomic<Ring>,
    /// Most events held (32 bits: a topic's state stays small).
    limit: u32,
    /// How many of the most recent events a resume may replay (`--history`; the ring may hold
    /// more, for live readers).
    resume_window: u32,
    /// Sequence number of the first event pushed (0 before any): with the head, how many
    /// events the ring would hold, so it grows only when it must.
    first: AtomicU64,
}

const FIRST_CAPACITY: usize = 8;

impl History {
    /// An empty history that keeps at most `limit` events (0 keeps none), of which a resume
    /// may replay the last `resume_window`.
    pub(crate) fn new(limit: usize, resume_window: usize) -> Self {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let resume_window = u32::try_from(resume_window).unwrap_or(u32::MAX);
        History { ring: Atomic::null(), limit, resume_window, first: AtomicU64::new(0) }
    }

    /// How many of the most recent events a resume may replay.
    pub(crate) fn resume_window(&self) -> u64 {
        u64::from(self.resume_window)
    }

    /// Appends `event`, evicting the oldest once `limit` events are held.
    ///
    /// Callers must append in sequence order and never concurrently (the topic's publish order
    /// guarantees both).
    pub(crate) fn push(&self, event: Arc<Event>, guard: &Guard) {
        if self.limit == 0 {
            return;
        }
        let seq = event.id.seq;
        let first = match self.first.load(Ordering::Relaxed) {
            0 => {
                self.first.store(seq, Ordering::Relaxed);
                seq
            }
            first => first,
        };
        let mut ring = self.ring.load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`; only this (single) writer replaces it.
        let capacity = unsafe { ring.as_ref() }.map_or(0, |r| r.slots.len());
        let limit = self.limit as usize;
        if capacity < limit && (seq - first) as usize >= capacity {
            ring = self.grow(ring, (capacity * 2).max(FIRST_CAPACITY).min(limit), guard);
        }
        // SAFETY: non-null after `grow`, and alive for `guard`.
        let ring = unsafe { ring.deref() };
        let old = ring.slot(seq).swap(Arc::into_raw(event).cast_mut(), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: `old` came from `Arc::into_raw` and this ring owned that reference; it is
            // unreachable for new readers, and readers that loaded it are pinned.
            unsafe { defer_release(guard, old) };
        }
    }

    fn grow<'g>(
        &self,
        old: Shared<'g, Ring>,
        capacity: usize,
        guard: &'g Guard,
    ) -> Shared<'g, Ring> {
        let new = Ring::with_capacity(capacity);
        // SAFETY: loaded under `guard` by the single writer.
        if let Some(old) = unsafe { old.as_ref() } {
            for slot in old.slots.iter() {
                let event = slot.load(Ordering::Relaxed);
                // SAFETY: entries of the current ring are live `Arc<Event>`s it owns.
                if let Some(e) = unsafe { event.as_ref() } {
                    new.slot(e.id.seq).store(event, Ordering::Relaxed);
                }
            }
        }
        let new = Owned::new(new).into_shared(guard);
        self.ring.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: the old ring is unreachable for new readers; its entries now belong to the
            // new ring, and dropping a `Ring` does not drop entries.
            unsafe { guard.defer_destroy(old) };
        }
        new
    }

    /// The event with sequence number `seq`, if still retained, borrowed while `guard` is held.
    pub(crate) fn get<'g>(&self, seq: u64, guard: &'g Guard) -> Option<&'g Event> {
        let ring = self.ring.load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`, so the ring outlives the borrow.
        let entry = unsafe { ring.as_ref() }?.slot(seq).load(Ordering::Acquire);
        // SAFETY: a non-null entry is a live `Arc<Event>` until `guard` is released (a replaced
        // entry's drop is deferred past every pinned reader).
        unsafe { entry.as_ref() }.filter(|event| event.id.seq == seq)
    }

    /// Most events the ring holds once full: how far a reader may fall behind the head.
    pub(crate) fn capacity(&self) -> usize {
        self.limit as usize
    }
}

impl Drop for History {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer is using the history any more.
        unsafe {
            let guard = epoch::unprotected();
            let ring = self.ring.load(Ordering::Relaxed, guard);
            if let Some(r) = ring.as_ref() {
                for slot in r.slots.iter() {
                    let event = slot.load(Ordering::Relaxed);
                    if !event.is_null() {
                        drop(Arc::from_raw(event));
                    }
                }
                drop(ring.into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Epoch, EventData, EventId, Frames, TopicName, Wire};

    fn event(seq: u64) -> Arc<Event> {
        let id = EventId { epoch: Epoch::from_u64(1).unwrap(), seq };
        let data = EventData::from(seq.to_string());
        let frames = Frames::new(bytes::Bytes::new(), 0, 0, 0);
        Arc::new(Event::new(TopicName::new("t").unwrap(), id, None, data, frames, [0; Wire::COUNT]))
    }

    fn retained(history: &History, head: u64) -> Vec<u64> {
        let guard = epoch::pin();
        (1..=head).filter(|&s| history.get(s, &guard).is_some_and(|e| e.id.seq == s)).collect()
    }

    #[test]
    fn keeps_the_last_limit_events_across_growth() {
        let history = History::new(20, 20);
        for seq in 1..=50 {
            history.push(event(seq), &epoch::pin());
            let first = seq.saturating_sub(19).max(1);
            assert_eq!(retained(&history, seq), (first..=seq).collect::<Vec<_>>(), "after {seq}");
        }
        assert!(history.get(51, &epoch::pin()).is_none(), "nothing beyond the head");
    }

    #[test]
    fn a_log_may_start_at_any_sequence_number() {
        let history = History::new(20, 20);
        for seq in 1_000_001..=1_000_050 {
            history.push(event(seq), &epoch::pin());
        }
        let guard = epoch::pin();
        let kept: Vec<u64> =
            (1_000_000..=1_000_051).filter(|&s| history.get(s, &guard).is_some()).collect();
        assert_eq!(kept, (1_000_031..=1_000_050).collect::<Vec<_>>());
        // It grew as it filled, not on the first large sequence number.
        let ring = history.ring.load(Ordering::Acquire, &guard);
        assert_eq!(unsafe { ring.deref() }.slots.len(), 20);
        let small = History::new(1000, 1000);
        small.push(event(5_000_000), &guard);
        let ring = small.ring.load(Ordering::Acquire, &guard);
        assert_eq!(unsafe { ring.deref() }.slots.len(), FIRST_CAPACITY);
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let history = History::new(0, 0);
        history.push(event(1), &epoch::pin());
        assert!(history.get(1, &epoch::pin()).is_none());
    }

    #[test]
    fn events_are_freed_when_evicted_and_dropped() {
        let history = History::new(4, 4);
        let first = event(1);
        let weak = Arc::downgrade(&first);
        history.push(first, &epoch::pin());
        for seq in 2..=200 {
            history.push(event(seq), &epoch::pin());
        }
        // Deferred drops run once every thread pinned at eviction time has moved on (other
        // tests in this process pin too), so wait for it with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while weak.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "an evicted event must eventually be freed"
            );
            epoch::pin().flush();
            std::thread::yield_now();
        }
        drop(history);
    }

    #[test]
    fn concurrent_readers_never_see_a_wrong_event() {
        let history = Arc::new(History::new(64, 64));
        let head = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let (history, head) = (history.clone(), head.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                loop {
                    let h = head.load(Ordering::Acquire);
                    let guard = epoch::pin();
                    for seq in h.saturating_sub(100)..=h {
                        if let Some(e) = history.get(seq, &guard) {
                            assert_eq!(e.id.seq, seq);
                        }
                    }
                    reads += 1;
                    if h >= 20_000 {
                        return reads;
                    }
                }
            })
        };
        for seq in 1..=20_000 {
            history.push(event(seq), &epoch::pin());
            head.store(seq, Ordering::Release);
        }
        assert!(reader.join().unwrap() > 0);
    }
}

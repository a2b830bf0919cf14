//! The readers of one topic: a growable array of slots that publishers scan without a lock
//! while subscribers come and go.
//!
//! Each slot holds a pointer to a [`Reader`] or null. Subscribe and unsubscribe serialize on
//! a writer mutex that publishers never take: subscribe fills a free slot (reusing freed ones
//! first, so the scanned range stays dense), unsubscribe nulls its slot. Both are O(1) amortised;
//! growth doubles the array and copies the pointers once. Memory is reclaimed with epochs
//! (crossbeam-epoch): an unsubscribed entry, or an array replaced by a larger one, is freed only
//! after every publisher that might still be reading it has finished its scan.

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use parking_lot::Mutex;

use super::reclaim::defer_release;
use super::subscriber::Subscriber;

/// A subscriber's reader of one topic: which subscriber, which of its topics this is, and how
/// far it has read.
#[derive(Debug)]
pub(crate) struct Reader {
    /// The subscriber.
    pub(crate) subscriber: Arc<Subscriber>,
    /// Index of this topic in the subscriber's topic list.
    pub(crate) topic_index: u16,
    /// In the topic's waiter list and not yet woken.
    pub(super) waiting: AtomicBool,
    /// Where in the waiter list, while `waiting`.
    pub(super) waiter_key: AtomicUsize,
    /// In the topic's gathering list (see [`super::gathering`]).
    pub(super) gathering: AtomicBool,
    /// Where in the gathering list, while `gathering`.
    pub(super) gather_key: AtomicUsize,
    /// The head sequence number at which a gathering writer is due.
    pub(super) gather_at_seq: AtomicU64,
    /// The stream length (of the subscriber's wire) at which a gathering writer is due.
    pub(super) gather_at_end: AtomicU64,
    /// Sequence number of the last event the writer took (for the sweeper; the writer keeps
    /// its own copy).
    cursor: AtomicU64,
    /// The topic's stream length at that event.
    cursor_end: AtomicU64,
}

impl Reader {
    /// A reader for `subscriber` starting after event `cursor`, whose stream length is
    /// `cursor_end`.
    pub(crate) fn new(
        subscriber: Arc<Subscriber>,
        topic_index: u16,
        cursor: u64,
        cursor_end: u64,
    ) -> Self {
        Reader {
            subscriber,
            topic_index,
            waiting: AtomicBool::new(false),
            waiter_key: AtomicUsize::new(usize::MAX),
            gathering: AtomicBool::new(false),
            gather_key: AtomicUsize::new(usize::MAX),
            gather_at_seq: AtomicU64::new(u64::MAX),
            gather_at_end: AtomicU64::new(u64::MAX),
            cursor: AtomicU64::new(cursor),
            cursor_end: AtomicU64::new(cursor_end),
        }
    }

    /// Records how far the writer has read.
    pub(crate) fn set_position(&self, cursor: u64, cursor_end: u64) {
        self.cursor.store(cursor, Ordering::Relaxed);
        self.cursor_end.store(cursor_end, Ordering::Relaxed);
    }

    /// How far the writer has read: (sequence number, stream length).
    pub(crate) fn position(&self) -> (u64, u64) {
        (self.cursor.load(Ordering::Relaxed), self.cursor_end.load(Ordering::Relaxed))
    }
}

/// Where a subscription sits in its topic's set; needed to unsubscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotId(u32);

struct Slots {
    /// Each non-null entry is an `Arc<Reader>` the array owns (from `Arc::into_raw`).
    entries: Box<[AtomicPtr<Reader>]>,
}

impl Slots {
    fn with_capacity(capacity: usize) -> Self {
        Slots { entries: (0..capacity).map(|_| AtomicPtr::new(ptr::null_mut())).collect() }
    }
}

/// The readers of one topic. Small while empty (most topics, most of the time): the slot
/// array and the free list are allocated by the first subscribe and freed by
/// [`ReaderSet::release_if_empty`].
pub(crate) struct ReaderSet {
    /// The slot array; replaced (never mutated in size) when it grows.
    slots: Atomic<Slots>,
    /// One past the highest slot ever used: publishers scan `0..high_water`.
    high_water: AtomicU32,
    /// Live subscriptions.
    len: AtomicU32,
    /// Free slots below `high_water`, touched only by subscribe and unsubscribe, which
    /// serialize on it.
    #[expect(clippy::box_collection, reason = "8 bytes in every topic rather than 24")]
    writer: Mutex<Option<Box<Vec<u32>>>>,
}

const FIRST_CAPACITY: usize = 4;

impl ReaderSet {
    /// An empty set; the slot array is allocated on the first subscribe.
    pub(crate) fn new() -> Self {
        ReaderSet {
            slots: Atomic::null(),
            high_water: AtomicU32::new(0),
            len: AtomicU32::new(0),
            writer: Mutex::new(None),
        }
    }

    /// Number of subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// Whether there are no subscriptions.
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// Adds a reader. The entry is visible to scans when this returns.
    pub(crate) fn insert(&self, reader: Arc<Reader>) -> SlotId {
        let guard = epoch::pin();
        let mut writer = self.writer.lock();
        let index = match writer.as_mut().and_then(|free| free.pop()) {
            Some(index) => index as usize,
            None => self.high_water.load(Ordering::Relaxed) as usize,
        };
        let mut slots = self.slots.load(Ordering::Acquire, &guard);
        // SAFETY: `slots` is only replaced under the writer lock, which we hold, and the array
        // it points to is freed no earlier than the end of our pin.
        let capacity = unsafe { slots.as_ref() }.map_or(0, |s| s.entries.len());
        if index >= capacity {
            slots = self.grow(slots, (capacity * 2).max(FIRST_CAPACITY), &guard);
        }
        let entry = Arc::into_raw(reader).cast_mut();
        // SAFETY: as above; after `grow` the array is non-null and longer than `index`.
        let array = unsafe { slots.deref() };
        array.entries[index].store(entry, Ordering::Release);
        if index >= self.high_water.load(Ordering::Relaxed) as usize {
            self.high_water.store(index as u32 + 1, Ordering::Release);
        }
        // Sequentially consistent, with `is_empty`: the reaper and a subscriber each write,
        // then read the other's write (see `Topic::reap_if_idle`).
        self.len.fetch_add(1, Ordering::SeqCst);
        SlotId(index as u32)
    }

    /// Replaces the slot array with one of `capacity` slots holding the same pointers.
    fn grow<'g>(
        &self,
        old: Shared<'g, Slots>,
        capacity: usize,
        guard: &'g Guard,
    ) -> Shared<'g, Slots> {
        let new = Slots::with_capacity(capacity);
        // SAFETY: see `insert`; we hold the writer lock so no slot changes under us.
        if let Some(old) = unsafe { old.as_ref() } {
            for (to, from) in new.entries.iter().zip(old.entries.iter()) {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        let new = Owned::new(new).into_shared(guard);
        self.slots.store(new, Ordering::Release);
        if !old.is_null() {
            // SAFETY: the old array is unreachable for new readers; readers pinned now finish
            // before it is freed. Freeing an array does not free its entries, which the new
            // array now owns.
            unsafe { guard.defer_destroy(old) };
        }
        new
    }

    /// Removes the reader in `slot`; returns whether it was still there.
    pub(crate) fn remove(&self, slot: SlotId) -> bool {
        let guard = epoch::pin();
        let mut writer = self.writer.lock();
        let slots = self.slots.load(Ordering::Acquire, &guard);
        // SAFETY: see `insert`.
        let Some(array) = (unsafe { slots.as_ref() }) else {
            return false;
        };
        let Some(cell) = array.entries.get(slot.0 as usize) else {
            return false;
        };
        let entry = cell.swap(ptr::null_mut(), Ordering::AcqRel);
        if entry.is_null() {
            return false;
        }
        writer.get_or_insert_default().push(slot.0);
        drop(writer);
        self.len.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: the entry came from `Arc::into_raw` in `insert` and is now unreachable from
        // the current array; scans that loaded it (from this or an older array) are pinned and
        // finish before the deferred drop runs. Only this call nulled the slot, so the array's
        // reference is released once.
        unsafe { defer_release(&guard, entry) };
        guard.flush();
        true
    }

    /// Frees the slot array and the free list if there is no reader: a topic that had
    /// readers holds nothing for them once idle.
    pub(crate) fn release_if_empty(&self) {
        let guard = epoch::pin();
        let mut writer = self.writer.lock();
        // Under the writer lock, no reader means every slot is null.
        if self.len.load(Ordering::SeqCst) != 0 {
            return;
        }
        *writer = None;
        self.high_water.store(0, Ordering::Release);
        let slots = self.slots.swap(Shared::null(), Ordering::AcqRel, &guard);
        if !slots.is_null() {
            // SAFETY: unreachable for new scans now; scans pinned earlier finish before it is
            // freed, and it holds no entry to release.
            unsafe { guard.defer_destroy(slots) };
        }
    }

    /// Calls `f` with every reader present when the scan reaches its slot.
    ///
    /// Never blocks: concurrent subscribes may or may not be seen, concurrent unsubscribes may
    /// still be seen once.
    pub(crate) fn for_each(&self, guard: &Guard, mut f: impl FnMut(&Reader)) {
        let high_water = self.high_water.load(Ordering::Acquire) as usize;
        let slots = self.slots.load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`, so the array outlives this scan.
        let Some(array) = (unsafe { slots.as_ref() }) else {
            return;
        };
        for cell in &array.entries[..high_water.min(array.entries.len())] {
            let entry = cell.load(Ordering::Acquire);
            // SAFETY: a non-null entry was published with Release by `insert` and is freed only
            // after `guard` is released.
            if let Some(reader) = unsafe { entry.as_ref() } {
                f(reader);
            }
        }
    }
}

impl Default for ReaderSet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ReaderSet {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no publisher or writer is using the set; older arrays were
        // handed to the collector already.
        unsafe {
            let guard = epoch::unprotected();
            let slots = self.slots.load(Ordering::Relaxed, guard);
            if let Some(array) = slots.as_ref() {
                for cell in array.entries.iter() {
                    let entry = cell.load(Ordering::Relaxed);
                    if !entry.is_null() {
                        drop(Arc::from_raw(entry));
                    }
                }
                drop(slots.into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Wire;
    use std::collections::HashSet;

    fn reader(tag: u16) -> Arc<Reader> {
        let subscriber = Arc::new(Subscriber::new(1 << 20, Wire::Sse, None));
        Arc::new(Reader::new(subscriber, tag, 0, 0))
    }

    fn seen(set: &ReaderSet) -> Vec<u16> {
        let mut tags = Vec::new();
        set.for_each(&epoch::pin(), |s| tags.push(s.topic_index));
        tags.sort_unstable();
        tags
    }

    #[test]
    fn insert_remove_reuses_slots() {
        let set = ReaderSet::new();
        let ids: Vec<_> = (0..10).map(|i| set.insert(reader(i))).collect();
        assert_eq!(seen(&set), (0..10).collect::<Vec<_>>());
        assert!(set.remove(ids[3]));
        assert!(!set.remove(ids[3]), "removing twice is a no-op");
        assert_eq!(set.len(), 9);
        let again = set.insert(reader(99));
        assert_eq!(again, ids[3], "a freed slot is reused before the array grows");
        assert_eq!(set.high_water.load(Ordering::Relaxed), 10);
        assert!(seen(&set).contains(&99));
    }

    #[test]
    fn concurrent_churn_never_loses_a_stable_subscriber() {
        let set = Arc::new(ReaderSet::new());
        let stable: Vec<_> = (0..64).map(|i| set.insert(reader(i))).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churners: Vec<_> = (0..2)
            .map(|t| {
                let (set, stop) = (set.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let ids: Vec<_> = (0..50).map(|_| set.insert(reader(1000 + t))).collect();
                        for id in ids {
                            assert!(set.remove(id));
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for _ in 0..2000 {
            let tags: HashSet<u16> = {
                let mut tags = HashSet::new();
                set.for_each(&epoch::pin(), |s| {
                    tags.insert(s.topic_index);
                });
                tags
            };
            for i in 0..64u16 {
                assert!(tags.contains(&i), "stable reader {i} missed during churn");
            }
        }
        stop.store(true, Ordering::Relaxed);
        for c in churners {
            assert!(c.join().unwrap() > 0);
        }
        assert_eq!(set.len(), stable.len());
    }
}

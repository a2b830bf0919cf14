//! One topic: its sequence, its log of recent events, its subscribers and the writers parked
//! waiting for its next event; publishing and appending, subscribing at a resume position, the
//! sweep that finds subscribers lagging past their bounds, and the check that lets an idle
//! topic be dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::{self as epoch, Guard};
use parking_lot::Mutex;
use slab::Slab;

use super::MIN_LOG_EVENTS;
use super::gathering::{Gatherers, Threshold, take_out};
use super::history::History;
use super::lifecycle::Lifecycle;
use super::readers::{Reader, ReaderSet, SlotId};
use super::subscriber::{Closed, Subscriber};
use crate::event::{
    Epoch, Event, EventData, EventId, EventName, Frames, Gap, GapReason, TopicName, Wire,
};

/// A topic: its sequence, log of recent events, subscribers and parked writers.
pub(crate) struct Topic {
    name: TopicName,
    epoch: Epoch,
    /// Serializes publishers (and the reaper's decision).
    order: Mutex<()>,
    /// Sequence number of the last published event (0 before the first).
    head: AtomicU64,
    /// Stream lengths including the head event, in each wire format (bytes of frames published
    /// so far); written under the order.
    head_end: [AtomicU64; Wire::COUNT],
    /// Recent events by sequence number: what writers read and resume replays.
    log: History,
    readers: ReaderSet,
    /// Writers parked until the next event, each at the key it keeps (so an unsubscribe takes
    /// its own out at once, and a quiet topic holds no one who left). Allocated when a writer
    /// first parks, freed when the topic goes idle: most topics never have one.
    waiters: Mutex<Option<Box<Slab<Arc<Reader>>>>>,
    /// Writers gathering a batch, woken when their backlog nears their lag bounds; allocated
    /// when a writer first gathers (most topics never have one).
    gatherers: OnceLock<Box<Gatherers>>,
    /// Set once, in cluster mode, when this copy of the topic is replaced (its history of
    /// record lost or out of reach): nothing is appended after, and readers move on.
    successor: OnceLock<Box<Successor>>,
    /// The registry's clock and lists of active and idle topics.
    lifecycle: Arc<Lifecycle>,
    /// When the topic last had an event published here or lost a subscriber, on the
    /// lifecycle's clock.
    last_active: AtomicU64,
    /// In the lifecycle's active set (it has, or just had, subscribers).
    active: AtomicBool,
    /// In the lifecycle's idle queue.
    idle_queued: AtomicBool,
    /// Dropped from the registry: nothing may be published to or subscribe to this copy.
    reaped: AtomicBool,
    /// Kept whoever follows it, never dropped for idleness ([`Registry::pin`](super::Registry::pin)).
    pinned: AtomicBool,
}

/// A publish to a copy dropped for idleness while the caller held it, handed back to be
/// published to the topic looked up again (a new copy, with a new epoch).
#[derive(Debug)]
pub(crate) struct Unpublished {
    pub(crate) name: Option<EventName>,
    pub(crate) data: EventData,
}

/// The topic was dropped for idleness while the caller held it: look it up again (a new copy
/// starts with a new epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the topic was dropped for idleness")]
pub(crate) struct Reaped;

/// What [`Topic::reap_if_idle`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reap {
    /// Dropped: the caller removes it from the registry.
    Reaped,
    /// It has subscribers again (and is back in the active set).
    Active,
    /// Idle, but not for long enough: look again then.
    NotYet { deadline_ms: u64 },
}

/// The topic that replaced another, and how its readers move over.
#[derive(Debug)]
pub(crate) struct Successor {
    /// The new copy of the topic.
    pub(crate) topic: Arc<Topic>,
    /// Where readers of the old copy continue: they take the events after it.
    pub(crate) start: EventId,
    /// The `crier.gap` event readers are handed first when events were lost between the old
    /// copy's head and `start`.
    pub(crate) notice: Option<Arc<Event>>,
}

/// An appended event does not continue the topic's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {id} does not follow {head}")]
pub(crate) struct Discontinuity {
    /// The event's id.
    pub(crate) id: EventId,
    /// The log's head.
    pub(crate) head: EventId,
}

/// Where a new subscription starts on one topic.
#[derive(Debug)]
pub(crate) struct TopicStart {
    /// Its slot, for unsubscribing.
    pub(crate) slot: SlotId,
    /// Its entry in the topic's reader set.
    pub(crate) reader: Arc<Reader>,
    /// The position it starts after: the first event it receives is the next one.
    pub(crate) position: EventId,
    /// The topic's stream length at `position`, in the subscriber's wire format.
    pub(crate) position_end: u64,
    /// Set when the requested position cannot be resumed exactly.
    pub(crate) gap: Option<Gap>,
}

impl Topic {
    /// An empty topic of `epoch` whose next event is `base + 1`, living by `lifecycle`.
    pub(super) fn new(
        name: TopicName,
        epoch: Epoch,
        base: u64,
        history_limit: usize,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Topic {
            name,
            epoch,
            order: Mutex::new(()),
            head: AtomicU64::new(base),
            head_end: Default::default(),
            log: History::new(history_limit.max(MIN_LOG_EVENTS), history_limit),
            readers: ReaderSet::new(),
            waiters: Mutex::new(None),
            gatherers: OnceLock::new(),
            successor: OnceLock::new(),
            last_active: AtomicU64::new(lifecycle.now()),
            lifecycle,
            active: AtomicBool::new(false),
            idle_queued: AtomicBool::new(false),
            reaped: AtomicBool::new(false),
            pinned: AtomicBool::new(false),
        }
    }

    /// Keeps the topic whoever follows it: it is never dropped for idleness.
    pub(super) fn pin(&self) {
        self.pinned.store(true, Ordering::SeqCst);
    }

    /// The epoch of the topic's ids.
    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The copy that replaced this one, if any (cluster mode).
    pub(crate) fn successor(&self) -> Option<&Successor> {
        self.successor.get().map(|successor| &**successor)
    }

    /// The topic's name.
    pub(crate) fn name(&self) -> &TopicName {
        &self.name
    }

    /// The id of the last published event (sequence 0 before the first).
    pub(crate) fn head(&self) -> EventId {
        EventId { epoch: self.epoch, seq: self.head.load(Ordering::SeqCst) }
    }

    /// The reader set.
    pub(crate) fn readers(&self) -> &ReaderSet {
        &self.readers
    }

    /// Assigns the next id, finishes the event's frames with it (`frames`, called under the
    /// topic's order, must be quick), appends the event to the log and wakes the writers
    /// parked on this topic.
    pub(crate) fn publish(
        &self,
        name: Option<EventName>,
        data: EventData,
        frames: impl FnOnce(EventId) -> Frames,
    ) -> Result<Arc<Event>, Unpublished> {
        let event = {
            let _order = self.order.lock();
            // Checked under the order, which the reaper holds while it decides.
            if self.reaped.load(Ordering::SeqCst) {
                return Err(Unpublished { name, data });
            }
            let id = EventId { epoch: self.epoch, seq: self.head.load(Ordering::Relaxed) + 1 };
            // On a single node an event keeps its topic; in cluster mode (`append`) only
            // readers do, since the node hears the topic as long as it holds it.
            self.last_active.store(self.lifecycle.now(), Ordering::Relaxed);
            self.push_locked(id, name, data, frames(id))
        };
        self.wake_waiters();
        if let Some(gatherers) = self.gatherers.get() {
            gatherers.wake_due(&event, self.log.capacity() as u64);
        }
        Ok(event)
    }

    /// Appends an event whose id was assigned elsewhere (by Redis, in cluster mode): it must be
    /// the next one of this topic's epoch. It does not count as activity: a copy without
    /// readers is dropped after the idle time however busy its topic is elsewhere.
    pub(crate) fn append(
        &self,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        frames: Frames,
    ) -> Result<Arc<Event>, Discontinuity> {
        let event = {
            let _order = self.order.lock();
            let head = self.head.load(Ordering::Relaxed);
            // A dropped copy continues nothing: the caller reads the topic again.
            if id.epoch != self.epoch || id.seq != head + 1 || self.reaped.load(Ordering::SeqCst) {
                return Err(Discontinuity { id, head: EventId { epoch: self.epoch, seq: head } });
            }
            self.push_locked(id, name, data, frames)
        };
        self.wake_waiters();
        if let Some(gatherers) = self.gatherers.get() {
            gatherers.wake_due(&event, self.log.capacity() as u64);
        }
        Ok(event)
    }

    /// Appends the next event; the caller holds the order.
    fn push_locked(
        &self,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        frames: Frames,
    ) -> Arc<Event> {
        let stream_len = Wire::ALL.map(|wire| {
            self.head_end[wire.index()].load(Ordering::Relaxed) + frames.len(wire) as u64
        });
        let event = Arc::new(Event::new(self.name.clone(), id, name, data, frames, stream_len));
        self.log.push(event.clone(), &epoch::pin());
        for (end, len) in self.head_end.iter().zip(stream_len) {
            end.store(len, Ordering::Relaxed);
        }
        // Pairs with the head read in a writer's re-check after `register_waiter`.
        self.head.store(id.seq, Ordering::SeqCst);
        event
    }

    fn wake_waiters(&self) {
        let waiters = {
            let mut waiters = self.waiters.lock();
            match waiters.as_deref_mut() {
                Some(parked) if !parked.is_empty() => std::mem::take(parked),
                _ => return,
            }
        };
        for (_, reader) in waiters {
            reader.waiting.store(false, Ordering::Release);
            reader.subscriber.wake();
        }
    }

    /// Marks this copy as replaced by `successor` and wakes its parked writers so they move
    /// over. Nothing may be appended to this copy afterwards.
    pub(super) fn retire(&self, successor: Successor) {
        // Set before the waiter list is taken: a writer that parks after that sees it. A copy
        // is retired once, by the registry that replaced it.
        let _ = self.successor.set(Box::new(successor));
        self.wake_waiters();
        if let Some(gatherers) = self.gatherers.get() {
            gatherers.wake_all();
        }
    }

    /// The event with sequence number `seq`, if the log still holds it.
    pub(crate) fn event<'g>(&self, seq: u64, guard: &'g Guard) -> Option<&'g Event> {
        self.log.get(seq, guard)
    }

    /// Parks `reader`'s writer until the next event: the caller must re-read the head
    /// afterwards and not sleep if it moved.
    pub(crate) fn register_waiter(&self, reader: &Arc<Reader>) {
        if !reader.waiting.swap(true, Ordering::AcqRel) {
            let mut waiters = self.waiters.lock();
            let key = waiters.get_or_insert_default().insert(reader.clone());
            reader.waiter_key.store(key, Ordering::Relaxed);
        }
    }

    /// Parks `reader`'s writer, which gathers a batch, until its backlog beyond its cursor
    /// (`cursor`, `cursor_end`) passes a share of what it may lag (see [`super::gathering`]);
    /// returns whether it has already (or the copy was replaced): then the writer takes its
    /// events now rather than wait.
    pub(crate) fn gather(&self, reader: &Arc<Reader>, (cursor, cursor_end): (u64, u64)) -> bool {
        let threshold = Threshold::of(self.log.capacity() as u64, reader.subscriber.lag_limit());
        let gatherers = self.gatherers.get_or_init(Box::default);
        gatherers.park(
            reader,
            cursor.saturating_add(threshold.events),
            cursor_end.saturating_add(threshold.bytes),
        );
        // Looked at once more after parking: a backlog that passed the threshold before the
        // writer was listed would not wake it.
        let wire = reader.subscriber.wire();
        self.head.load(Ordering::SeqCst).saturating_sub(cursor) >= threshold.events
            || self.head_end[wire.index()].load(Ordering::Acquire).saturating_sub(cursor_end)
                >= threshold.bytes
            || self.successor().is_some()
    }

    /// Registers a reader for `subscriber`, starting after `resume` if given (or at the oldest
    /// retained event with a gap if that position is gone), else after the head.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        subscriber: &Arc<Subscriber>,
        topic_index: u16,
        resume: Option<EventId>,
    ) -> Result<TopicStart, Reaped> {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::SeqCst);
        let oldest = self.oldest_resumable(head, &guard);
        let (cursor, gap) = match resume {
            None => (head, None),
            Some(requested) if requested.epoch != self.epoch => {
                (oldest - 1, Some(Gap { reason: GapReason::Epoch, requested, missed: None }))
            }
            Some(requested) if requested.seq > head => {
                (head, Some(Gap { reason: GapReason::Unknown, requested, missed: None }))
            }
            Some(requested) if requested.seq + 1 < oldest => {
                let missed = Some(oldest - 1 - requested.seq);
                (oldest - 1, Some(Gap { reason: GapReason::Expired, requested, missed }))
            }
            Some(requested) => (requested.seq, None),
        };
        let mut start = self.subscribe_after(subscriber, topic_index, cursor, &guard)?;
        start.gap = gap;
        Ok(start)
    }

    /// Registers a reader for `subscriber` whose next event is `after + 1`, whatever the log
    /// holds: for readers moving over from a replaced copy, which were told what they lost.
    pub(crate) fn subscribe_after(
        self: &Arc<Self>,
        subscriber: &Arc<Subscriber>,
        topic_index: u16,
        after: u64,
        guard: &Guard,
    ) -> Result<TopicStart, Reaped> {
        let position_end = self.stream_end_at(after, subscriber.wire(), guard);
        let reader = Arc::new(Reader::new(subscriber.clone(), topic_index, after, position_end));
        let slot = self.readers.insert(reader.clone());
        // Inserted, then checked; the reaper marks, then counts (see `reap_if_idle`).
        if self.reaped.load(Ordering::SeqCst) {
            self.readers.remove(slot);
            return Err(Reaped);
        }
        if !self.active.swap(true, Ordering::SeqCst) {
            self.lifecycle.activate(self);
        }
        Ok(TopicStart {
            slot,
            reader,
            position: EventId { epoch: self.epoch, seq: after },
            position_end,
            gap: None,
        })
    }

    /// Calls `visit` with each event the log holds within the resume window, oldest first,
    /// until it answers `false`; returns the head at the start of the visit.
    pub(crate) fn visit_held(&self, mut visit: impl FnMut(&Event) -> bool) -> EventId {
        let guard = epoch::pin();
        let head = self.head.load(Ordering::SeqCst);
        for seq in self.oldest_resumable(head, &guard)..=head {
            match self.log.get(seq, &guard) {
                Some(event) if visit(event) => {}
                // Overwritten meanwhile by a publisher racing ahead: the rest is newer still.
                _ => break,
            }
        }
        EventId { epoch: self.epoch, seq: head }
    }

    /// The oldest event a resume may start from: within the resume window and still logged.
    fn oldest_resumable(&self, head: u64, guard: &Guard) -> u64 {
        let mut oldest = (head + 1).saturating_sub(self.log.resume_window()).max(1);
        // A publisher racing ahead may have overwritten the first few; never report them.
        while oldest <= head && self.log.get(oldest, guard).is_none() {
            oldest += 1;
        }
        oldest
    }

    /// The stream length in `wire` after event `seq` (0 before the first event).
    fn stream_end_at(&self, seq: u64, wire: Wire, guard: &Guard) -> u64 {
        if seq == 0 {
            return 0;
        }
        if let Some(event) = self.log.get(seq, guard) {
            return event.stream_end(wire);
        }
        match self.log.get(seq + 1, guard) {
            Some(next) => next.stream_end(wire) - next.frames.len(wire) as u64,
            None => self.head_end[wire.index()].load(Ordering::Relaxed),
        }
    }

    /// Removes a subscription made by [`Topic::subscribe`], and its writer from the waiters:
    /// nothing of it stays, whether or not the topic ever publishes again.
    pub(crate) fn unsubscribe(&self, slot: SlotId, reader: &Arc<Reader>) -> bool {
        let removed = self.readers.remove(slot);
        if let Some(gatherers) = self.gatherers.get() {
            gatherers.remove(reader);
        }
        take_out(&self.waiters, reader, &reader.waiting, &reader.waiter_key);
        self.last_active.store(self.lifecycle.now(), Ordering::Relaxed);
        removed
    }

    /// Moves the topic from the active set to the idle queue if it has no subscriber left;
    /// for the sweeper, which visits active topics.
    pub(super) fn settle(self: &Arc<Self>) {
        if !self.readers.is_empty() {
            return;
        }
        self.active.store(false, Ordering::SeqCst);
        // A subscriber that arrived meanwhile either saw the flag cleared (and re-adds the
        // topic to the active set) or is counted here.
        if !self.readers.is_empty() {
            self.active.store(true, Ordering::SeqCst);
            return;
        }
        self.lifecycle.deactivate(self);
        if self.active.load(Ordering::SeqCst) {
            // Re-activated between the check and the removal: put it back.
            self.lifecycle.activate(self);
            return;
        }
        self.readers.release_if_empty();
        {
            let mut waiters = self.waiters.lock();
            if waiters.as_ref().is_some_and(|parked| parked.is_empty()) {
                *waiters = None;
            }
        }
        if let Some(gatherers) = self.gatherers.get() {
            gatherers.release_if_empty();
        }
        self.queue_idle();
    }

    /// Writers parked now, for tests.
    #[cfg(test)]
    pub(super) fn parked(&self) -> usize {
        self.waiters.lock().as_ref().map_or(0, |parked| parked.len())
    }

    /// Whether the topic is in the active set (it has, or just had, subscribers).
    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Puts the topic in the idle queue (once), to be looked at when its idle time is up.
    pub(super) fn queue_idle(self: &Arc<Self>) {
        if self.pinned.load(Ordering::SeqCst) {
            return;
        }
        if !self.idle_queued.swap(true, Ordering::SeqCst) {
            let deadline = self.last_active.load(Ordering::Relaxed) + self.lifecycle.idle_ttl_ms();
            self.lifecycle.queue_idle(self.clone(), deadline);
        }
    }

    /// For the sweeper, once the topic's idle deadline has come: marks it dropped if it has had
    /// no subscriber and no event for the idle time, else says why not. The caller holds the
    /// registry's shard lock for the topic's name and removes it on [`Reap::Reaped`].
    pub(super) fn reap_if_idle(self: &Arc<Self>, now_ms: u64) -> Reap {
        self.idle_queued.store(false, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) {
            return Reap::Active;
        }
        // Publishers stamp the topic under the order: holding it, the stamp is final.
        let _order = self.order.lock();
        let deadline_ms = self.last_active.load(Ordering::Relaxed) + self.lifecycle.idle_ttl_ms();
        if now_ms < deadline_ms
            || self.successor.get().is_some()
            || self.pinned.load(Ordering::SeqCst)
        {
            return Reap::NotYet { deadline_ms };
        }
        self.reaped.store(true, Ordering::SeqCst);
        // A subscriber inserts, then checks the mark; we mark, then count.
        if !self.readers.is_empty() || self.active.load(Ordering::SeqCst) {
            self.reaped.store(false, Ordering::SeqCst);
            return Reap::Active;
        }
        Reap::Reaped
    }

    /// Calls `evict` for every reader that lags beyond its subscriber's byte budget (in its
    /// own wire format) or beyond what the log holds (its writer has stopped reading).
    pub(crate) fn sweep(&self, mut evict: impl FnMut(&Reader)) {
        let head = self.head.load(Ordering::Acquire);
        let head_end = self.head_end.each_ref().map(|end| end.load(Ordering::Relaxed));
        let capacity = self.log.capacity() as u64;
        self.readers.for_each(&epoch::pin(), |reader| {
            let (cursor, cursor_end) = reader.position();
            let wire = reader.subscriber.wire();
            let lag_bytes = head_end[wire.index()].saturating_sub(cursor_end);
            if lag_bytes > reader.subscriber.lag_limit() as u64
                || head.saturating_sub(cursor) > capacity
            {
                evict(reader);
            }
        });
    }

    /// Closes the subscriber of every reader.
    pub(crate) fn close_subscribers(&self, why: Closed) {
        self.readers.for_each(&epoch::pin(), |reader| {
            reader.subscriber.close(why);
        });
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("head", &self.head())
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

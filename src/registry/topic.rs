//! One topic: its sequence, its log of recent events, its subscribers and the writers parked
//! waiting for its next event; publishing and appending, subscribing at a resume position, and
//! the sweep that finds subscribers lagging past their bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::{self as epoch, Guard};
use parking_lot::Mutex;

use super::MIN_LOG_EVENTS;
use super::client::{Client, Closed};
use super::history::History;
use super::subscribers::{SlotId, Subscriber, SubscriberSet};
use crate::event::{
    Epoch, Event, EventData, EventId, EventName, Frames, Gap, GapReason, TopicName, Wire,
};

/// A topic: its sequence, log of recent events, subscribers and parked writers.
pub(crate) struct Topic {
    name: TopicName,
    epoch: Epoch,
    /// Serializes publishers; holds the stream length in each wire format (bytes of frames
    /// published so far).
    order: Mutex<[u64; Wire::COUNT]>,
    /// Sequence number of the last published event (0 before the first).
    head: AtomicU64,
    /// Stream lengths including the head event.
    head_end: [AtomicU64; Wire::COUNT],
    /// Recent events by sequence number: what writers read and resume replays.
    log: History,
    /// How many of the most recent events a resume may replay (`--history`).
    resume_window: u64,
    subscribers: SubscriberSet,
    /// Writers parked until the next event.
    waiters: Mutex<Vec<Arc<Subscriber>>>,
    /// Set once, in cluster mode, when this copy of the topic is replaced (its history of
    /// record lost or out of reach): nothing is appended after, and readers move on.
    successor: OnceLock<Successor>,
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
    /// Its entry in the topic's subscriber set.
    pub(crate) subscriber: Arc<Subscriber>,
    /// The position it starts after: the first event it receives is the next one.
    pub(crate) position: EventId,
    /// The topic's stream length at `position`, in the client's wire format.
    pub(crate) position_end: u64,
    /// Set when the requested position cannot be resumed exactly.
    pub(crate) gap: Option<Gap>,
}

impl Topic {
    /// An empty topic of `epoch` whose next event is `base + 1`.
    pub(crate) fn new(name: TopicName, epoch: Epoch, base: u64, history_limit: usize) -> Self {
        Topic {
            name,
            epoch,
            order: Mutex::new([0; Wire::COUNT]),
            head: AtomicU64::new(base),
            head_end: Default::default(),
            log: History::new(history_limit.max(MIN_LOG_EVENTS)),
            resume_window: history_limit as u64,
            subscribers: SubscriberSet::new(),
            waiters: Mutex::new(Vec::new()),
            successor: OnceLock::new(),
        }
    }

    /// The epoch of the topic's ids.
    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The copy that replaced this one, if any (cluster mode).
    pub(crate) fn successor(&self) -> Option<&Successor> {
        self.successor.get()
    }

    /// The topic's name.
    pub(crate) fn name(&self) -> &TopicName {
        &self.name
    }

    /// The id of the last published event (sequence 0 before the first).
    pub(crate) fn head(&self) -> EventId {
        EventId { epoch: self.epoch, seq: self.head.load(Ordering::SeqCst) }
    }

    /// The subscriber set.
    pub(crate) fn subscribers(&self) -> &SubscriberSet {
        &self.subscribers
    }

    /// Assigns the next id, finishes the event's frames with it (`frames`, called under the
    /// topic's order, must be quick), appends the event to the log and wakes the writers
    /// parked on this topic.
    pub(crate) fn publish(
        &self,
        name: Option<EventName>,
        data: EventData,
        frames: impl FnOnce(EventId) -> Frames,
    ) -> Arc<Event> {
        let event = {
            let mut stream_len = self.order.lock();
            let id = EventId { epoch: self.epoch, seq: self.head.load(Ordering::Relaxed) + 1 };
            self.push_locked(&mut stream_len, id, name, data, frames(id))
        };
        self.wake_waiters();
        event
    }

    /// Appends an event whose id was assigned elsewhere (by Redis, in cluster mode): it must be
    /// the next one of this topic's epoch.
    pub(crate) fn append(
        &self,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        frames: Frames,
    ) -> Result<Arc<Event>, Discontinuity> {
        let event = {
            let mut stream_len = self.order.lock();
            let head = self.head.load(Ordering::Relaxed);
            if id.epoch != self.epoch || id.seq != head + 1 {
                return Err(Discontinuity { id, head: EventId { epoch: self.epoch, seq: head } });
            }
            self.push_locked(&mut stream_len, id, name, data, frames)
        };
        self.wake_waiters();
        Ok(event)
    }

    fn push_locked(
        &self,
        stream_len: &mut [u64; Wire::COUNT],
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        frames: Frames,
    ) -> Arc<Event> {
        for wire in Wire::ALL {
            stream_len[wire.index()] += frames.len(wire) as u64;
        }
        let event = Arc::new(Event::new(self.name.clone(), id, name, data, frames, *stream_len));
        self.log.push(event.clone(), &epoch::pin());
        for (end, len) in self.head_end.iter().zip(stream_len.iter()) {
            end.store(*len, Ordering::Relaxed);
        }
        // Pairs with the head read in a writer's re-check after `register_waiter`.
        self.head.store(id.seq, Ordering::SeqCst);
        event
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for subscriber in waiters {
            subscriber.waiting.store(false, Ordering::Release);
            subscriber.client.wake();
        }
    }

    /// Marks this copy as replaced by `successor` and wakes its parked writers so they move
    /// over. Nothing may be appended to this copy afterwards.
    pub(super) fn retire(&self, successor: Successor) {
        // Set before the waiter list is taken: a writer that parks after that sees it. A copy
        // is retired once, by the registry that replaced it.
        let _ = self.successor.set(successor);
        self.wake_waiters();
    }

    /// The event with sequence number `seq`, if the log still holds it.
    pub(crate) fn event<'g>(&self, seq: u64, guard: &'g Guard) -> Option<&'g Event> {
        self.log.get(seq, guard)
    }

    /// Parks `subscriber`'s writer until the next event: the caller must re-read the head
    /// afterwards and not sleep if it moved.
    pub(crate) fn register_waiter(&self, subscriber: &Arc<Subscriber>) {
        if !subscriber.waiting.swap(true, Ordering::AcqRel) {
            self.waiters.lock().push(subscriber.clone());
        }
    }

    /// Registers `client` as a subscriber, starting after `resume` if given (or at the oldest
    /// retained event with a gap if that position is gone), else after the head.
    pub(crate) fn subscribe(
        &self,
        client: &Arc<Client>,
        topic_index: u16,
        resume: Option<EventId>,
    ) -> TopicStart {
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
        let mut start = self.subscribe_after(client, topic_index, cursor, &guard);
        start.gap = gap;
        start
    }

    /// Registers `client` as a subscriber whose next event is `after + 1`, whatever the log
    /// holds: for readers moving over from a replaced copy, which were told what they lost.
    pub(crate) fn subscribe_after(
        &self,
        client: &Arc<Client>,
        topic_index: u16,
        after: u64,
        guard: &Guard,
    ) -> TopicStart {
        let position_end = self.stream_end_at(after, client.wire(), guard);
        let subscriber =
            Arc::new(Subscriber::new(client.clone(), topic_index, after, position_end));
        let slot = self.subscribers.insert(subscriber.clone());
        TopicStart {
            slot,
            subscriber,
            position: EventId { epoch: self.epoch, seq: after },
            position_end,
            gap: None,
        }
    }

    /// The oldest event a resume may start from: within the resume window and still logged.
    fn oldest_resumable(&self, head: u64, guard: &Guard) -> u64 {
        let mut oldest = (head + 1).saturating_sub(self.resume_window).max(1);
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

    /// Removes a subscription made by [`Topic::subscribe`].
    pub(crate) fn unsubscribe(&self, slot: SlotId) -> bool {
        self.subscribers.remove(slot)
    }

    /// Calls `evict` for every subscriber that lags beyond its client's byte budget (in its
    /// own wire format) or beyond what the log holds (its writer has stopped reading).
    pub(crate) fn sweep(&self, mut evict: impl FnMut(&Subscriber)) {
        let head = self.head.load(Ordering::Acquire);
        let head_end = self.head_end.each_ref().map(|end| end.load(Ordering::Relaxed));
        let capacity = self.log.capacity() as u64;
        self.subscribers.for_each(&epoch::pin(), |subscriber| {
            let (cursor, cursor_end) = subscriber.position();
            let wire = subscriber.client.wire();
            let lag_bytes = head_end[wire.index()].saturating_sub(cursor_end);
            if lag_bytes > subscriber.client.lag_limit() as u64
                || head.saturating_sub(cursor) > capacity
            {
                evict(subscriber);
            }
        });
    }

    /// Closes every subscriber's client.
    pub(crate) fn close_subscribers(&self, why: Closed) {
        self.subscribers.for_each(&epoch::pin(), |subscriber| {
            subscriber.client.close(why);
        });
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("head", &self.head())
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

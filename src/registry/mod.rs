//! The registry: topic → state (sequence, log, subscribers), sharded by topic hash, and the
//! protocol by which each subscriber's writer follows a topic's log.
//!
//! # Concurrency contract
//!
//! - **Lookup.** Topics live in `shards` (a power of two, four per core) of read-mostly hash
//!   maps. Publishing, subscribing and unsubscribing on an existing topic take only a shard's
//!   read lock, shared with each other. The write lock is taken to create a topic, for one map
//!   insert. Topics are never removed while the node runs.
//! - **Publish order.** Publishers of one topic serialize on the topic's `order` lock only to
//!   assign the next id, finish the frame and append the event to the topic's log: a few
//!   hundred nanoseconds, whatever the number of subscribers. Every subscriber reads a topic's
//!   events in id order because it reads them from the log by sequence number.
//! - **Fan-out by reference, without per-subscriber work on publish.** An event is encoded
//!   once and appended once. Each subscriber's writer keeps its own cursor into the log and,
//!   when it runs, takes everything after its cursor: small frames are copied straight into its
//!   write buffer, large ones shared as `Bytes`. Publishing touches no subscriber except those
//!   whose writers are parked waiting for news ([`Topic::register_waiter`]); those it wakes,
//!   once each. So publishing never waits on subscribers, subscribe or unsubscribe, and costs
//!   the same for one subscriber or a hundred thousand.
//! - **No lost wakeup.** A writer that found nothing new registers as a waiter and then
//!   re-reads the head; a publisher advances the head and then takes the waiter list. The
//!   waiter list's lock orders the two, so either the writer sees the new head or the
//!   publisher sees the waiter.
//! - **Bounded lag, eviction.** A subscriber may fall behind by at most its client's byte
//!   budget (`--client-queue-bytes`) and at most the events the log holds (`--history`, at
//!   least [`MIN_LOG_EVENTS`]). A writer that finds its next event already overwritten is
//!   evicted on the spot (never a silent gap); the hub's sweeper evicts subscribers whose
//!   writers stopped reading (a stalled socket) once they exceed either bound. Eviction closes
//!   the client and its connection; nobody else is affected, and memory stays bounded by the
//!   log.
//! - **Resume without gap or duplicate.** A new subscription starts with its cursor at the
//!   requested position (or the head), and its writer reads from the log after it: the replay
//!   and the live stream are the same read, so nothing is skipped or repeated. A position the
//!   log no longer covers, or from another epoch, starts at the oldest retained event with a
//!   [`Gap`] to report.
//! - **Closing.** A client closes once: for eviction (nothing more is written) or for shutdown
//!   (its writer sends what is already published, then ends the stream). Dropping a
//!   subscription removes it from every topic's set; memory a scan may still be reading is
//!   reclaimed by epochs.
//!
//! ```
//! use crier::event::{EventData, TopicName};
//! use crier::registry::{Client, Registry};
//! use crier::metrics::Transport;
//! use std::sync::Arc;
//!
//! let registry = Registry::new(100);
//! let topic = registry.topic_or_create(&TopicName::new("news").unwrap()).0;
//! let client = Arc::new(Client::new(1 << 20, Transport::Sse, None));
//! let start = topic.subscribe(&client, 0, None);
//! let data = EventData::text("hi".into()).unwrap();
//! let body = crier::sse::encode::encode_body(None, &data);
//! let event = topic.publish(None, data, body);
//! assert_eq!(event.id.seq, start.position.seq + 1);
//! let guard = crossbeam_epoch::pin();
//! assert_eq!(topic.event(event.id.seq, &guard).map(|e| e.id), Some(event.id));
//! topic.unsubscribe(start.slot);
//! ```

mod client;
mod subscribers;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::{self as epoch, Guard};
use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::event::{Epoch, Event, EventData, EventId, EventName, TopicName};
use crate::history::History;
use crate::sse::encode::{self, EncodedBody};

pub use client::{Client, Closed, ConnectionCloser};
pub use subscribers::{SlotId, Subscriber, SubscriberSet};

/// Events a topic's log holds at least, whatever `--history` says: how far behind a live
/// subscriber may fall when history is small or off.
pub const MIN_LOG_EVENTS: usize = 64;

impl Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// One shard of the topic map.
type Shard = CachePadded<RwLock<HashMap<TopicName, Arc<Topic>>>>;

/// All topics of a node.
pub struct Registry {
    shards: Box<[Shard]>,
    hasher: RandomState,
    history_limit: usize,
    epoch: Epoch,
    /// Copies replaced in cluster mode that still have subscribers moving off them: kept
    /// reachable for shutdown and the sweeper until they have none.
    retired: Mutex<Vec<Arc<Topic>>>,
}

impl Registry {
    /// A registry whose topics keep `history_limit` events each, with a fresh epoch.
    pub fn new(history_limit: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = (cores.next_power_of_two() * 4).max(4);
        Registry {
            shards: (0..shards).map(|_| CachePadded::new(RwLock::new(HashMap::new()))).collect(),
            hasher: RandomState::new(),
            history_limit,
            epoch: Epoch::random(),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The epoch of this node's topics.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn shard(&self, name: &str) -> &RwLock<HashMap<TopicName, Arc<Topic>>> {
        let hash = self.hasher.hash_one(name) as usize;
        &self.shards[hash & (self.shards.len() - 1)]
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shard(name).read().get(name).cloned()
    }

    /// The topic, created if missing; the flag says whether this call created it.
    pub fn topic_or_create(&self, name: &TopicName) -> (Arc<Topic>, bool) {
        let shard = self.shard(name.as_str());
        if let Some(topic) = shard.read().get(name.as_str()) {
            return (topic.clone(), false);
        }
        let mut map = shard.write();
        if let Some(topic) = map.get(name.as_str()) {
            return (topic.clone(), false);
        }
        let topic = Arc::new(Topic::new(name.clone(), self.epoch, 0, self.history_limit));
        map.insert(name.clone(), topic.clone());
        (topic, true)
    }

    /// Events each topic keeps for resume (`--history`).
    pub fn history_limit(&self) -> usize {
        self.history_limit
    }

    /// Makes `topic` the node's copy of its name (cluster mode), replacing the current copy if
    /// any: readers of the old copy take its remaining events, then `notice` if given, then
    /// continue after `start` on the new copy. Returns whether a copy was replaced.
    ///
    /// The caller must be the topic's only writer: nothing is appended to the old copy after.
    pub fn install(&self, topic: Arc<Topic>, start: EventId, notice: Option<Arc<Event>>) -> bool {
        let old = self.shard(topic.name.as_str()).write().insert(topic.name.clone(), topic.clone());
        let Some(old) = old else { return false };
        old.retire(Successor { topic, start, notice });
        self.retired.lock().push(old);
        true
    }

    /// Forgets replaced copies that nobody reads any more.
    pub fn prune_retired(&self) {
        self.retired.lock().retain(|topic| !topic.subscribers.is_empty());
    }

    /// Every current topic, at some moment during the call.
    pub fn live_topics(&self) -> Vec<Arc<Topic>> {
        self.shards
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Every topic, at some moment during the call, and the replaced copies still read.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut topics = self.live_topics();
        topics.extend(self.retired.lock().iter().cloned());
        topics
    }
}

/// A topic: its sequence, log of recent events, subscribers and parked writers.
pub struct Topic {
    name: TopicName,
    epoch: Epoch,
    /// Serializes publishers; holds the stream length (bytes of SSE frames published so far).
    order: Mutex<u64>,
    /// Sequence number of the last published event (0 before the first).
    head: AtomicU64,
    /// Stream length including the head event.
    head_end: AtomicU64,
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
pub struct Successor {
    /// The new copy of the topic.
    pub topic: Arc<Topic>,
    /// Where readers of the old copy continue: they take the events after it.
    pub start: EventId,
    /// The `crier.gap` event readers are handed first when events were lost between the old
    /// copy's head and `start`.
    pub notice: Option<Arc<Event>>,
}

/// An appended event does not continue the topic's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {id} does not follow {head}")]
pub struct Discontinuity {
    /// The event's id.
    pub id: EventId,
    /// The log's head.
    pub head: EventId,
}

/// Where a new subscription starts on one topic.
#[derive(Debug)]
pub struct TopicStart {
    /// Its slot, for unsubscribing.
    pub slot: SlotId,
    /// Its entry in the topic's subscriber set.
    pub subscriber: Arc<Subscriber>,
    /// The position it starts after: the first event it receives is the next one.
    pub position: EventId,
    /// The topic's stream length at `position`.
    pub position_end: u64,
    /// Set when the requested position cannot be resumed exactly.
    pub gap: Option<Gap>,
}

/// Why a resume is not exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// The events after the requested id are no longer retained.
    Expired,
    /// The id is from another epoch: the server restarted or the topic's history was lost.
    Epoch,
    /// The id is newer than anything this topic has issued.
    Unknown,
}

impl GapReason {
    /// The name used in `crier.gap` events.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::Epoch => "epoch",
            GapReason::Unknown => "unknown",
        }
    }
}

/// What a resumed subscription lost on one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// The id the client asked to resume after.
    pub requested: EventId,
    /// How many events were lost, when known.
    pub missed: Option<u64>,
}

impl Topic {
    /// An empty topic of `epoch` whose next event is `base + 1`.
    pub fn new(name: TopicName, epoch: Epoch, base: u64, history_limit: usize) -> Self {
        Topic {
            name,
            epoch,
            order: Mutex::new(0),
            head: AtomicU64::new(base),
            head_end: AtomicU64::new(0),
            log: History::new(history_limit.max(MIN_LOG_EVENTS)),
            resume_window: history_limit as u64,
            subscribers: SubscriberSet::new(),
            waiters: Mutex::new(Vec::new()),
            successor: OnceLock::new(),
        }
    }

    /// The epoch of the topic's ids.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The copy that replaced this one, if any (cluster mode).
    pub fn successor(&self) -> Option<&Successor> {
        self.successor.get()
    }

    /// The topic's name.
    pub fn name(&self) -> &TopicName {
        &self.name
    }

    /// The id of the last published event (sequence 0 before the first).
    pub fn head(&self) -> EventId {
        EventId { epoch: self.epoch, seq: self.head.load(Ordering::SeqCst) }
    }

    /// The subscriber set.
    pub fn subscribers(&self) -> &SubscriberSet {
        &self.subscribers
    }

    /// Assigns the next id, finishes the frame, appends the event to the log and wakes the
    /// writers parked on this topic.
    pub fn publish(
        &self,
        name: Option<EventName>,
        data: EventData,
        body: EncodedBody,
    ) -> Arc<Event> {
        let event = {
            let mut stream_len = self.order.lock();
            let id = EventId { epoch: self.epoch, seq: self.head.load(Ordering::Relaxed) + 1 };
            self.push_locked(&mut stream_len, id, name, data, body)
        };
        self.wake_waiters();
        event
    }

    /// Appends an event whose id was assigned elsewhere (by Redis, in cluster mode): it must be
    /// the next one of this topic's epoch.
    pub fn append(
        &self,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        body: EncodedBody,
    ) -> Result<Arc<Event>, Discontinuity> {
        let event = {
            let mut stream_len = self.order.lock();
            let head = self.head.load(Ordering::Relaxed);
            if id.epoch != self.epoch || id.seq != head + 1 {
                return Err(Discontinuity { id, head: EventId { epoch: self.epoch, seq: head } });
            }
            self.push_locked(&mut stream_len, id, name, data, body)
        };
        self.wake_waiters();
        Ok(event)
    }

    fn push_locked(
        &self,
        stream_len: &mut u64,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        body: EncodedBody,
    ) -> Arc<Event> {
        let sse = encode::finish(body, id);
        *stream_len += sse.frame.len() as u64;
        let stream_end = *stream_len;
        let event = Arc::new(Event::new(self.name.clone(), id, name, data, sse, stream_end));
        self.log.push(event.clone(), &epoch::pin());
        self.head_end.store(stream_end, Ordering::Relaxed);
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
    fn retire(&self, successor: Successor) {
        // Set before the waiter list is taken: a writer that parks after that sees it.
        let _ = self.successor.set(successor);
        self.wake_waiters();
    }

    /// The event with sequence number `seq`, if the log still holds it.
    pub fn event<'g>(&self, seq: u64, guard: &'g Guard) -> Option<&'g Event> {
        self.log.get(seq, guard)
    }

    /// Parks `subscriber`'s writer until the next event: the caller must re-read the head
    /// afterwards and not sleep if it moved.
    pub fn register_waiter(&self, subscriber: &Arc<Subscriber>) {
        if !subscriber.waiting.swap(true, Ordering::AcqRel) {
            self.waiters.lock().push(subscriber.clone());
        }
    }

    /// Registers `client` as a subscriber, starting after `resume` if given (or at the oldest
    /// retained event with a gap if that position is gone), else after the head.
    pub fn subscribe(
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
        let position_end = self.stream_end_at(cursor, &guard);
        let subscriber =
            Arc::new(Subscriber::new(client.clone(), topic_index, cursor, position_end));
        let slot = self.subscribers.insert(subscriber.clone());
        TopicStart {
            slot,
            subscriber,
            position: EventId { epoch: self.epoch, seq: cursor },
            position_end,
            gap,
        }
    }

    /// Registers `client` as a subscriber whose next event is `after + 1`, whatever the log
    /// holds: for readers moving over from a replaced copy, which were told what they lost.
    pub fn subscribe_after(
        &self,
        client: &Arc<Client>,
        topic_index: u16,
        after: u64,
    ) -> TopicStart {
        let position_end = self.stream_end_at(after, &epoch::pin());
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

    /// The stream length after event `seq` (0 before the first event).
    fn stream_end_at(&self, seq: u64, guard: &Guard) -> u64 {
        if seq == 0 {
            return 0;
        }
        if let Some(event) = self.log.get(seq, guard) {
            return event.stream_end;
        }
        match self.log.get(seq + 1, guard) {
            Some(next) => next.stream_end - next.sse.frame.len() as u64,
            None => self.head_end.load(Ordering::Relaxed),
        }
    }

    /// Removes a subscription made by [`Topic::subscribe`].
    pub fn unsubscribe(&self, slot: SlotId) -> bool {
        self.subscribers.remove(slot)
    }

    /// Calls `evict` for every subscriber that lags beyond its client's byte budget or beyond
    /// what the log holds (its writer has stopped reading).
    pub fn sweep(&self, mut evict: impl FnMut(&Subscriber)) {
        let head = self.head.load(Ordering::Acquire);
        let head_end = self.head_end.load(Ordering::Relaxed);
        let capacity = self.log.capacity() as u64;
        self.subscribers.for_each(&epoch::pin(), |subscriber| {
            let (cursor, cursor_end) = subscriber.position();
            let lag_bytes = head_end.saturating_sub(cursor_end);
            if lag_bytes > subscriber.client.lag_limit() as u64
                || head.saturating_sub(cursor) > capacity
            {
                evict(subscriber);
            }
        });
    }

    /// Closes every subscriber's client.
    pub fn close_subscribers(&self, why: Closed) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Transport;

    fn text(s: &str) -> EventData {
        EventData::text(bytes::Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn publish(topic: &Topic, s: &str) -> Arc<Event> {
        let data = text(s);
        let body = encode::encode_body(None, &data);
        topic.publish(None, data, body)
    }

    fn client() -> Arc<Client> {
        Arc::new(Client::new(1 << 20, Transport::Sse, None))
    }

    /// What a writer reads after `after` up to the head, or `None` if it was lapped.
    fn read_after(topic: &Topic, after: u64) -> Option<Vec<u64>> {
        let guard = epoch::pin();
        let head = topic.head().seq;
        (after + 1..=head).map(|seq| topic.event(seq, &guard).map(|e| e.id.seq)).collect()
    }

    #[test]
    fn resume_starts_at_the_requested_position_or_reports_the_gap() {
        let registry = Registry::new(5);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        let ids: Vec<_> = (0..8).map(|i| publish(&topic, &i.to_string()).id).collect();

        let start = topic.subscribe(&client(), 0, Some(ids[5]));
        assert_eq!((start.position, start.gap.as_ref()), (ids[5], None));
        assert_eq!(read_after(&topic, start.position.seq), Some(vec![7, 8]));
        topic.unsubscribe(start.slot);

        let start = topic.subscribe(&client(), 0, Some(ids[0]));
        assert_eq!(start.position.seq, 3, "history keeps 5: the oldest is 4");
        assert_eq!(
            start.gap,
            Some(Gap { reason: GapReason::Expired, requested: ids[0], missed: Some(2) })
        );
        assert_eq!(read_after(&topic, 3), Some(vec![4, 5, 6, 7, 8]));
        topic.unsubscribe(start.slot);

        let foreign =
            EventId { epoch: Epoch::from_u64(registry.epoch().as_u64() ^ 1).unwrap(), seq: 3 };
        let start = topic.subscribe(&client(), 0, Some(foreign));
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Epoch));
        assert_eq!(start.position.seq, 3);
        topic.unsubscribe(start.slot);

        let future = EventId { epoch: registry.epoch(), seq: 100 };
        let start = topic.subscribe(&client(), 0, Some(future));
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Unknown));
        assert_eq!(start.position.seq, 8);

        let fresh = topic.subscribe(&client(), 0, None);
        assert_eq!((fresh.position.seq, fresh.gap.as_ref()), (8, None));
        assert_eq!(fresh.position_end, topic.head_end.load(Ordering::Relaxed));
    }

    #[test]
    fn zero_history_resumes_nothing_but_still_logs_for_live_readers() {
        let registry = Registry::new(0);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        let first = publish(&topic, "a");
        publish(&topic, "b");
        let start = topic.subscribe(&client(), 0, Some(first.id));
        assert_eq!(start.gap.as_ref().and_then(|g| g.missed), Some(1));
        assert_eq!(start.position.seq, 2);
        for i in 0..MIN_LOG_EVENTS {
            publish(&topic, &i.to_string());
        }
        assert_eq!(read_after(&topic, 2).map(|v| v.len()), Some(MIN_LOG_EVENTS));
    }

    #[test]
    fn a_reader_lapped_by_the_log_notices() {
        let registry = Registry::new(MIN_LOG_EVENTS);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        for i in 0..=MIN_LOG_EVENTS {
            publish(&topic, &i.to_string());
        }
        assert_eq!(read_after(&topic, 0), None, "event 1 was overwritten");
        assert!(read_after(&topic, 1).is_some());
    }

    #[test]
    fn sweep_finds_subscribers_beyond_their_budget_or_the_log() {
        let registry = Registry::new(100);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        let small = Arc::new(Client::new(300, Transport::Sse, None));
        let big = client();
        let small_start = topic.subscribe(&small, 0, None);
        let big_start = topic.subscribe(&big, 1, None);
        let swept = |topic: &Topic| {
            let mut found = Vec::new();
            topic.sweep(|s| found.push(s.topic_index));
            found
        };
        publish(&topic, &"x".repeat(100));
        assert!(swept(&topic).is_empty());
        publish(&topic, &"x".repeat(300));
        assert_eq!(swept(&topic), [0], "over 300 bytes behind");
        // A writer that keeps up reports its position and is left alone.
        let head = topic.head().seq;
        small_start.subscriber.set_position(head, topic.head_end.load(Ordering::Relaxed));
        assert!(swept(&topic).is_empty());
        for _ in 0..150 {
            publish(&topic, "y");
        }
        assert_eq!(swept(&topic), [0, 1], "both lapped by the 100-event log");
        drop(big_start);
    }

    #[test]
    fn parked_writers_are_woken_once_by_the_next_event() {
        use std::sync::atomic::AtomicUsize;
        use std::task::{Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let registry = Registry::new(10);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        let client = client();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        client.register(&Waker::from(count.clone()));
        let start = topic.subscribe(&client, 0, None);
        topic.register_waiter(&start.subscriber);
        topic.register_waiter(&start.subscriber);
        publish(&topic, "a");
        publish(&topic, "b");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake per parking");
        // A writer registers its waker on every poll.
        client.register(&Waker::from(count.clone()));
        topic.register_waiter(&start.subscriber);
        publish(&topic, "c");
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn racing_publishers_and_subscribers_see_every_event_once_in_order() {
        let registry = Arc::new(Registry::new(100_000));
        let topic = registry.topic_or_create(&TopicName::new("race").unwrap()).0;
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let topic = topic.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        publish(&topic, &i.to_string());
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let resume_at = topic.head();
            let start = topic.subscribe(&client(), 0, Some(resume_at));
            assert_eq!(start.position, resume_at);
            std::thread::yield_now();
            let got = read_after(&topic, start.position.seq).expect("history covers the run");
            let expected: Vec<u64> =
                (resume_at.seq + 1..=resume_at.seq + got.len() as u64).collect();
            assert_eq!(got, expected);
            topic.unsubscribe(start.slot);
        }
        for p in publishers {
            p.join().unwrap();
        }
    }
}

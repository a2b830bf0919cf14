//! The registry: topic → state (sequence, log, subscribers), sharded by topic hash, and the
//! protocol by which each subscriber's writer follows a topic's log. It moves events; it knows
//! no wire format, transport or relay (an event's frames and their lengths come with it).
//!
//! # Concurrency contract
//!
//! - **Lookup.** Topics live in `shards` (a power of two, four per core) of read-mostly hash
//!   maps. Publishing, subscribing and unsubscribing on an existing topic take only a shard's
//!   read lock, shared with each other. The write lock is taken to create a topic, for one map
//!   insert, and to drop one.
//! - **Bounded topic state.** A topic with no subscriber and no event for the idle time is
//!   dropped with its log ([`lifecycle`]); a later topic of the same name draws a new epoch, so
//!   no id is issued twice and a stale id gets a gap. A publish or subscribe racing the drop
//!   finds the copy marked [`Reaped`] and looks the topic up again. The sweeper visits only
//!   topics with subscribers. At most `max_topics` topics exist at once.
//! - **Publish order.** Publishers of one topic serialize on the topic's `order` lock only to
//!   assign the next id, finish the frames and append the event to the topic's log: a few
//!   hundred nanoseconds, whatever the number of subscribers. Every subscriber reads a topic's
//!   events in id order because it reads them from the log by sequence number.
//! - **Fan-out by reference, without per-subscriber work on publish.** An event is encoded
//!   once and appended once. Each subscriber's writer keeps its own cursor into the log and,
//!   when it runs, takes everything after its cursor. Publishing touches no subscriber except
//!   those whose writers are parked waiting for news ([`Topic::register_waiter`]); those it
//!   wakes, once each. So publishing never waits on subscribers, subscribe or unsubscribe, and
//!   costs the same for one subscriber or a hundred thousand.
//! - **No lost wakeup.** A writer that found nothing new registers as a waiter and then
//!   re-reads the head; a publisher advances the head and then takes the waiter list. The
//!   waiter list's lock orders the two, so either the writer sees the new head or the
//!   publisher sees the waiter.
//! - **Bounded lag, eviction.** A subscriber may fall behind by at most its byte budget
//!   (`--max-lag-bytes`, counted in the bytes of the subscriber's own wire format) and
//!   at most the events the log holds (`--history`, at least [`MIN_LOG_EVENTS`]). A writer that
//!   finds its next event already overwritten is evicted on the spot (never a silent gap); the
//!   hub's sweeper evicts subscribers whose writers stopped reading (a stalled socket) once they
//!   exceed either bound. Eviction closes the subscriber and its connection; nobody else is
//!   affected, and memory stays bounded by the log.
//! - **Resume without gap or duplicate.** A new subscription starts with its cursor at the
//!   requested position (or the head), and its writer reads from the log after it: the replay
//!   and the live stream are the same read, so nothing is skipped or repeated. A position the
//!   log no longer covers, or from another epoch, starts at the oldest retained event with a
//!   [`Gap`](crate::event::Gap) to report.
//! - **Closing.** A subscriber closes once: for eviction (nothing more is written) or for shutdown
//!   (its writer sends what is already published, then ends the stream). Dropping a
//!   subscription removes it from every topic's set and waiter list; memory a scan may still be
//!   reading is reclaimed by epochs.
//!
//! The test `the_contract_in_one_walk` below goes through these steps on one topic.

mod gathering;
mod history;
mod lifecycle;
mod readers;
mod reclaim;
mod subscriber;
mod topic;

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::event::{Epoch, Event, EventId, TopicName};
use lifecycle::Lifecycle;
use topic::Reap;

pub(crate) use readers::{Reader, SlotId};
pub use subscriber::Closed;
pub(crate) use subscriber::{ConnectionCloser, Subscriber};
pub(crate) use topic::{Successor, Topic, Unpublished};

/// Most idle topics dropped per sweep, so one sweep after a flood stays short.
const MAX_REAPED_PER_SWEEP: usize = 1 << 16;

/// The node holds as many topics as it may: a new one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server holds its limit of {max} topics; try again later")]
pub struct TopicLimit {
    /// The limit.
    pub max: usize,
}

/// Shrinks a map that holds less than a quarter of what it has room for.
fn shrink_if_sparse<T: Eq + Hash>(map: &mut HashSet<T>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Subscribers evicted.
    pub(crate) evicted: usize,
    /// Idle topics dropped.
    pub(crate) reaped: usize,
}

/// Events a topic's log holds at least, whatever `--history` says: how far behind a live
/// subscriber may fall when history is small or off.
pub(crate) const MIN_LOG_EVENTS: usize = 64;

/// How many events each topic keeps for resume: `--history`, or its own number for one of the
/// server's logs of record (an edge's own history).
#[derive(Clone, Debug, Default)]
pub(crate) struct HistoryLimits {
    default: usize,
    logs: Box<[(TopicName, usize)]>,
}

impl HistoryLimits {
    /// `default` events per topic, and `logs`' own numbers.
    pub(crate) fn new(default: usize, logs: Vec<(TopicName, usize)>) -> Self {
        HistoryLimits { default, logs: logs.into() }
    }

    /// The events a resume of `topic` may replay.
    pub(crate) fn of(&self, topic: &str) -> usize {
        self.logs.iter().find(|(name, _)| name.as_str() == topic).map_or(self.default, |l| l.1)
    }

    /// The events `topic`'s log holds, for live readers as well as resumes.
    pub(crate) fn log_events(&self, topic: &str) -> usize {
        self.of(topic).max(MIN_LOG_EVENTS)
    }

    /// The events the log of a topic without a number of its own holds.
    pub(crate) fn default_log_events(&self) -> usize {
        self.default.max(MIN_LOG_EVENTS)
    }

    /// The logs with a number of their own, and theirs.
    pub(crate) fn logs(&self) -> impl Iterator<Item = (&TopicName, usize)> {
        self.logs.iter().map(|(name, limit)| (name, *limit))
    }
}

/// One shard of the topic map.
type Shard = CachePadded<RwLock<HashSet<Held>>>;

/// A topic in its shard's table, found by its name: the table holds one pointer per topic
/// (the name lives in the topic).
#[derive(Clone)]
struct Held(Arc<Topic>);

impl Borrow<str> for Held {
    fn borrow(&self) -> &str {
        self.0.name().as_str()
    }
}

impl Hash for Held {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name().as_str().hash(state);
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for Held {}

/// All topics of a node.
pub(crate) struct Registry {
    shards: Box<[Shard]>,
    hasher: RandomState,
    history: HistoryLimits,
    /// The epoch the next topic created here draws: random at start, then one more per topic,
    /// so two copies of a topic on one node never share an epoch.
    next_epoch: AtomicU64,
    /// Copies replaced in cluster mode that still have subscribers moving off them: kept
    /// reachable for shutdown and the sweeper until they have none.
    retired: Mutex<Vec<Arc<Topic>>>,
    lifecycle: Arc<Lifecycle>,
    /// The names of the topics kept whoever follows them ([`Registry::pin`]).
    pinned: RwLock<Vec<TopicName>>,
    /// Topics in the map.
    count: AtomicUsize,
    max_topics: usize,
}

impl Registry {
    /// A registry whose topics keep `history_limit` events each, are dropped after ten minutes
    /// idle, and are not limited in number.
    #[cfg(test)]
    pub(crate) fn new(history_limit: usize) -> Self {
        let history = HistoryLimits::new(history_limit, Vec::new());
        Self::with_limits(history, Duration::from_secs(600), usize::MAX)
    }

    /// A registry whose topics keep `history` events each and are dropped after `idle_ttl`
    /// without subscriber or event, holding at most `max_topics`.
    pub(crate) fn with_limits(
        history: HistoryLimits,
        idle_ttl: Duration,
        max_topics: usize,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = (cores.next_power_of_two() * 4).max(4);
        Registry {
            shards: (0..shards).map(|_| CachePadded::new(RwLock::new(HashSet::new()))).collect(),
            hasher: RandomState::new(),
            history,
            next_epoch: AtomicU64::new(Epoch::random().as_u64()),
            retired: Mutex::new(Vec::new()),
            lifecycle: Arc::new(Lifecycle::new(idle_ttl)),
            pinned: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
            max_topics,
        }
    }

    fn next_epoch(&self) -> Epoch {
        loop {
            let value = self.next_epoch.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1);
            if let Some(epoch) = Epoch::from_u64(value) {
                return epoch;
            }
        }
    }

    /// A copy of topic `name` in `epoch` whose next event is `base + 1`, for the relay to
    /// fill and [`Registry::install`].
    pub(crate) fn new_topic(&self, name: TopicName, epoch: Epoch, base: u64) -> Arc<Topic> {
        let pinned = self.pinned.read().contains(&name);
        let lifecycle = self.lifecycle.clone();
        let history_limit = self.history.of(name.as_str());
        let topic = Topic::new(name, epoch, base, history_limit, lifecycle);
        if pinned {
            topic.pin();
        }
        Arc::new(topic)
    }

    /// Keeps topic `name` (every copy of it, now and later) whoever follows it: it is never
    /// dropped for idleness, and in cluster mode its keys in Redis are kept fresh. For a log
    /// that is the history of something beyond its own readers (an edge's log of record).
    pub(crate) fn pin(&self, name: TopicName) {
        let mut pinned = self.pinned.write();
        if let Some(topic) = self.topic(name.as_str()) {
            topic.pin();
        }
        if !pinned.contains(&name) {
            pinned.push(name);
        }
    }

    /// Topics held.
    pub(crate) fn topic_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether `more` topics may be added.
    pub(crate) fn has_room(&self, more: usize) -> Result<(), TopicLimit> {
        match self.topic_count().checked_add(more) {
            Some(total) if total <= self.max_topics => Ok(()),
            _ => Err(TopicLimit { max: self.max_topics }),
        }
    }

    fn shard(&self, name: &str) -> &RwLock<HashSet<Held>> {
        let hash = self.hasher.hash_one(name) as usize;
        &self.shards[hash & (self.shards.len() - 1)]
    }

    /// The topic, if it exists.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shard(name).read().get(name).map(|held| held.0.clone())
    }

    /// The topic, created with a new epoch if missing; the flag says whether this call
    /// created it.
    pub(crate) fn topic_or_create(
        &self,
        name: &TopicName,
    ) -> Result<(Arc<Topic>, bool), TopicLimit> {
        let shard = self.shard(name.as_str());
        if let Some(held) = shard.read().get(name.as_str()) {
            return Ok((held.0.clone(), false));
        }
        let mut map = shard.write();
        if let Some(held) = map.get(name.as_str()) {
            return Ok((held.0.clone(), false));
        }
        self.has_room(1)?;
        let topic = self.new_topic(name.clone(), self.next_epoch(), 0);
        map.insert(Held(topic.clone()));
        self.count.fetch_add(1, Ordering::Relaxed);
        drop(map);
        topic.queue_idle();
        Ok((topic, true))
    }

    /// Events each topic keeps for resume.
    pub(crate) fn history(&self) -> &HistoryLimits {
        &self.history
    }

    /// Makes `topic` the node's copy of its name (cluster mode), replacing the current copy if
    /// any: readers of the old copy take its remaining events, then `notice` if given, then
    /// continue after `start` on the new copy. Returns whether a copy was replaced.
    ///
    /// The caller must be the topic's only writer: nothing is appended to the old copy after.
    pub(crate) fn install(
        &self,
        topic: Arc<Topic>,
        start: EventId,
        notice: Option<Arc<Event>>,
    ) -> bool {
        let name = topic.name().clone();
        let old = self.shard(name.as_str()).write().replace(Held(topic.clone())).map(|held| held.0);
        topic.queue_idle();
        let Some(old) = old else {
            self.count.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        old.retire(Successor { topic, start, notice });
        self.retired.lock().push(old);
        true
    }

    /// Forgets replaced copies that nobody reads any more.
    pub(crate) fn prune_retired(&self) {
        self.retired.lock().retain(|topic| !topic.readers().is_empty());
    }

    /// Every current topic, at some moment during the call.
    pub(crate) fn live_topics(&self) -> Vec<Arc<Topic>> {
        self.shards
            .iter()
            .flat_map(|shard| shard.read().iter().map(|held| held.0.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// Every topic, at some moment during the call, and the replaced copies still read.
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        let mut topics = self.live_topics();
        topics.extend(self.retired.lock().iter().cloned());
        topics
    }

    /// Calls `evict` for every subscriber lagging past its bounds (see [`Topic::sweep`]),
    /// visiting only topics with subscribers; then drops the topics idle for too long.
    pub(crate) fn sweep(&self, mut evict: impl FnMut(&Reader) -> bool) -> Swept {
        let now = self.lifecycle.tick();
        let mut swept = Swept::default();
        let mut count = |reader: &Reader| swept.evicted += usize::from(evict(reader));
        self.prune_retired();
        for topic in self.lifecycle.active() {
            topic.sweep(&mut count);
            topic.settle();
        }
        for topic in self.retired.lock().clone() {
            topic.sweep(&mut count);
        }
        let mut due = self.lifecycle.take_due(now);
        if due.len() > MAX_REAPED_PER_SWEEP {
            // The rest waits for the next sweep.
            for topic in due.split_off(MAX_REAPED_PER_SWEEP) {
                self.lifecycle.queue_idle(topic, now);
            }
        }
        for topic in due {
            let name = topic.name().clone();
            let mut map = self.shard(name.as_str()).write();
            // A copy replaced since (cluster mode) is not this registry's to drop.
            if !map.get(name.as_str()).is_some_and(|held| Arc::ptr_eq(&held.0, &topic)) {
                continue;
            }
            match topic.reap_if_idle(now) {
                Reap::Reaped => {
                    map.remove(name.as_str());
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    swept.reaped += 1;
                }
                Reap::Active if topic.is_active() => {}
                Reap::Active | Reap::NotYet { .. } => {
                    drop(map);
                    topic.queue_idle();
                }
            }
        }
        if swept.reaped > 0 {
            // Tables keep their size when emptied: give back what a flood grew them to.
            for shard in self.shards.iter() {
                shrink_if_sparse(&mut shard.write());
            }
        }
        self.lifecycle.shrink();
        swept
    }

    /// The names of the topics with subscribers, and of the pinned ones held, at some moment
    /// during the call.
    pub(crate) fn followed_topics(&self) -> Vec<TopicName> {
        let mut followed: Vec<TopicName> =
            self.lifecycle.active().iter().map(|topic| topic.name().clone()).collect();
        // Pinned topics are kept whoever follows them.
        for name in self.pinned.read().iter() {
            if self.topic(name.as_str()).is_some() && !followed.contains(name) {
                followed.push(name.clone());
            }
        }
        followed
    }

    /// How many topics are active (have subscribers) and idle, for tests.
    #[cfg(test)]
    pub(crate) fn lifecycle_counts(&self) -> (usize, usize) {
        self.lifecycle.counts()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventData, Frames, Gap, GapReason, Wire};
    use crossbeam_epoch as epoch;
    use std::sync::atomic::Ordering;

    /// Publishes `s` with frames of made-up lengths: the registry only adds them up. The SSE
    /// frame is the data plus 20 bytes, the JSON frame twice the data plus 60 (as if every
    /// byte were escaped), the raw frame the data plus 2.
    fn publish(topic: &Topic, s: &str) -> Arc<Event> {
        let data = EventData::from(s.to_owned());
        let sse = bytes::Bytes::from(vec![b'x'; s.len() + 20]);
        topic
            .publish(None, data, |_| Frames::new(sse, 10, 2 * s.len() + 60, s.len() + 2))
            .expect("a live topic")
    }

    fn subscriber() -> Arc<Subscriber> {
        Arc::new(Subscriber::new(1 << 20, Wire::Sse, None))
    }

    #[test]
    fn the_contract_in_one_walk() {
        let registry = Registry::new(100);
        let topic = registry.topic_or_create(&TopicName::new("news").unwrap()).unwrap().0;
        let start = topic.subscribe(&subscriber(), 0, None).unwrap();
        let event = publish(&topic, "hi");
        assert_eq!(event.id.seq, start.position.seq + 1, "the next event follows the start");
        let guard = epoch::pin();
        assert_eq!(topic.event(event.id.seq, &guard).map(|e| e.id), Some(event.id));
        assert!(topic.unsubscribe(start.slot, &start.reader));
        assert!(topic.readers().is_empty());
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
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        let ids: Vec<_> = (0..8).map(|i| publish(&topic, &i.to_string()).id).collect();

        let start = topic.subscribe(&subscriber(), 0, Some(ids[5])).unwrap();
        assert_eq!((start.position, start.gap.as_ref()), (ids[5], None));
        assert_eq!(read_after(&topic, start.position.seq), Some(vec![7, 8]));
        topic.unsubscribe(start.slot, &start.reader);

        let start = topic.subscribe(&subscriber(), 0, Some(ids[0])).unwrap();
        assert_eq!(start.position.seq, 3, "history keeps 5: the oldest is 4");
        assert_eq!(
            start.gap,
            Some(Gap { reason: GapReason::Expired, requested: ids[0], missed: Some(2) })
        );
        assert_eq!(read_after(&topic, 3), Some(vec![4, 5, 6, 7, 8]));
        topic.unsubscribe(start.slot, &start.reader);

        let foreign =
            EventId { epoch: Epoch::from_u64(topic.epoch().as_u64() ^ 1).unwrap(), seq: 3 };
        let start = topic.subscribe(&subscriber(), 0, Some(foreign)).unwrap();
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Epoch));
        assert_eq!(start.position.seq, 3);
        topic.unsubscribe(start.slot, &start.reader);

        let future = EventId { epoch: topic.epoch(), seq: 100 };
        let start = topic.subscribe(&subscriber(), 0, Some(future)).unwrap();
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Unknown));
        assert_eq!(start.position.seq, 8);

        let fresh = topic.subscribe(&subscriber(), 0, None).unwrap();
        assert_eq!((fresh.position.seq, fresh.gap.as_ref()), (8, None));
        assert_eq!(fresh.position_end, last_sse_end(&topic));
    }

    #[test]
    fn zero_history_resumes_nothing_but_still_logs_for_live_readers() {
        let registry = Registry::new(0);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        let first = publish(&topic, "a");
        publish(&topic, "b");
        let start = topic.subscribe(&subscriber(), 0, Some(first.id)).unwrap();
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
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        for i in 0..=MIN_LOG_EVENTS {
            publish(&topic, &i.to_string());
        }
        assert_eq!(read_after(&topic, 0), None, "event 1 was overwritten");
        assert!(read_after(&topic, 1).is_some());
    }

    #[test]
    fn sweep_finds_subscribers_beyond_their_budget_or_the_log() {
        let registry = Registry::new(100);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        let small = Arc::new(Subscriber::new(300, Wire::Sse, None));
        let big = subscriber();
        let small_start = topic.subscribe(&small, 0, None).unwrap();
        let big_start = topic.subscribe(&big, 1, None).unwrap();
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
        small_start.reader.set_position(head, last_sse_end(&topic));
        assert!(swept(&topic).is_empty());
        for _ in 0..150 {
            publish(&topic, "y");
        }
        assert_eq!(swept(&topic), [0, 1], "both lapped by the 100-event log");
        drop(big_start);
    }

    /// The SSE stream length at the topic's head.
    fn last_sse_end(topic: &Topic) -> u64 {
        let guard = epoch::pin();
        topic.event(topic.head().seq, &guard).map_or(0, |e| e.stream_end(Wire::Sse))
    }

    #[test]
    fn lag_is_counted_in_each_subscribers_own_wire_bytes() {
        let registry = Registry::new(100);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        // Two events of 100 bytes: 240 bytes of SSE, 520 of JSON, 204 of raw frames.
        let budget = 400;
        let subscribers = Wire::ALL.map(|wire| Arc::new(Subscriber::new(budget, wire, None)));
        let starts = subscribers.each_ref().map(|c| topic.subscribe(c, 0, None).unwrap());
        for _ in 0..2 {
            publish(&topic, &"q".repeat(100));
        }
        let guard = epoch::pin();
        let head = topic.event(2, &guard).unwrap();
        let ends = Wire::ALL.map(|wire| head.stream_end(wire));
        assert_eq!(ends, [240, 520, 204]);
        let mut evicted = Vec::new();
        topic.sweep(|s| evicted.push(s.subscriber.wire()));
        assert_eq!(evicted, [Wire::WsJson], "only the JSON reader is over its budget");
        drop(starts);
    }

    #[test]
    fn parked_writers_are_woken_once_by_the_next_event() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        use std::task::Waker;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let registry = Registry::new(10);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        let subscriber = subscriber();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        subscriber.register(&Waker::from(count.clone()));
        let start = topic.subscribe(&subscriber, 0, None).unwrap();
        topic.register_waiter(&start.reader);
        topic.register_waiter(&start.reader);
        publish(&topic, "a");
        publish(&topic, "b");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake per parking");
        // A writer registers its waker on every poll.
        subscriber.register(&Waker::from(count.clone()));
        topic.register_waiter(&start.reader);
        publish(&topic, "c");
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    /// Sweeps until `check` holds, for at most five seconds.
    fn sweep_until(registry: &Registry, what: &str, mut check: impl FnMut(Swept) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !check(registry.sweep(|_| false)) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn short_lived(ttl_ms: u64, max_topics: usize) -> Registry {
        Registry::with_limits(
            HistoryLimits::new(10, Vec::new()),
            std::time::Duration::from_millis(ttl_ms),
            max_topics,
        )
    }

    #[test]
    fn an_idle_topic_is_dropped_and_comes_back_with_a_new_epoch() {
        let registry = short_lived(30, usize::MAX);
        let name = TopicName::new("t").unwrap();
        let (old, created) = registry.topic_or_create(&name).unwrap();
        assert!(created);
        let first = publish(&old, "a");
        assert_eq!(registry.sweep(|_| false).reaped, 0, "not idle for long enough yet");
        sweep_until(&registry, "the idle topic to be dropped", |swept| swept.reaped == 1);
        assert!(registry.topic("t").is_none());
        assert_eq!(registry.topic_count(), 0);
        assert_eq!(registry.lifecycle_counts(), (0, 0), "nothing of it is left");
        // A publisher still holding the old copy gets its event back.
        let refused = old.publish(None, EventData::from("late".to_owned()), |_| unreachable!());
        assert!(refused.is_err());
        let (new, created) = registry.topic_or_create(&name).unwrap();
        assert!(created);
        assert_ne!(new.epoch(), old.epoch(), "ids are never issued twice");
        let start = new.subscribe(&subscriber(), 0, Some(first.id)).unwrap();
        assert_eq!(start.gap.map(|g| g.reason), Some(GapReason::Epoch));
    }

    #[test]
    fn a_topic_is_kept_while_it_has_subscribers_or_events() {
        let registry = short_lived(30, usize::MAX);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        let start = topic.subscribe(&subscriber(), 0, None).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(120);
        while std::time::Instant::now() < until {
            assert_eq!(registry.sweep(|_| false).reaped, 0);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(registry.lifecycle_counts().0, 1, "an active topic");
        topic.unsubscribe(start.slot, &start.reader);
        // Events keep it too: each publish stamps it.
        for i in 0..10 {
            publish(&topic, &i.to_string());
            assert_eq!(registry.sweep(|_| false).reaped, 0);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        sweep_until(&registry, "the topic to be dropped", |swept| swept.reaped == 1);
    }

    #[test]
    fn a_pinned_topic_is_kept_however_long_it_is_idle() {
        let registry = short_lived(20, usize::MAX);
        let log = TopicName::internal("log").unwrap();
        let (early, late) = (TopicName::new("early").unwrap(), TopicName::new("idle").unwrap());
        registry.topic_or_create(&early).unwrap();
        // Pinned before it exists, or once it does.
        registry.pin(log.clone());
        registry.pin(early.clone());
        registry.topic_or_create(&log).unwrap();
        registry.topic_or_create(&late).unwrap();
        sweep_until(&registry, "the idle topic to go", |_| registry.topic("idle").is_none());
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(registry.sweep(|_| false).reaped, 0);
        assert!(registry.topic("~log").is_some() && registry.topic("early").is_some());
        let mut followed = registry.followed_topics();
        followed.sort();
        assert_eq!(followed, [early, log.clone()], "kept fresh in Redis as if followed");
        // A copy made later (cluster mode) is pinned too.
        let copy = registry.new_topic(log.clone(), registry.next_epoch(), 0);
        registry.install(copy, EventId { epoch: registry.next_epoch(), seq: 0 }, None);
        std::thread::sleep(std::time::Duration::from_millis(40));
        registry.sweep(|_| false);
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(registry.sweep(|_| false).reaped, 0);
        assert!(registry.topic("~log").is_some());
    }

    #[test]
    fn unsubscribing_takes_a_parked_writer_out_of_the_waiters() {
        let registry = Registry::new(10);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).unwrap().0;
        for _ in 0..1000 {
            let start = topic.subscribe(&subscriber(), 0, None).unwrap();
            topic.register_waiter(&start.reader);
            assert_eq!(topic.parked(), 1);
            topic.unsubscribe(start.slot, &start.reader);
            assert_eq!(topic.parked(), 0, "the waiter list lets go of who left");
        }
    }

    #[test]
    fn the_topic_limit_refuses_new_topics_until_idle_ones_go() {
        let registry = short_lived(20, 2);
        for name in ["a", "b"] {
            registry.topic_or_create(&TopicName::new(name).unwrap()).unwrap();
        }
        let c = TopicName::new("c").unwrap();
        assert_eq!(registry.topic_or_create(&c).unwrap_err(), TopicLimit { max: 2 });
        assert!(registry.topic_or_create(&TopicName::new("a").unwrap()).is_ok(), "existing");
        sweep_until(&registry, "idle topics to go", |_| registry.topic_count() == 0);
        assert!(registry.topic_or_create(&c).is_ok());
    }

    #[test]
    fn the_sweep_visits_topics_with_subscribers_only() {
        let registry = short_lived(60_000, usize::MAX);
        for i in 0..1000 {
            registry.topic_or_create(&TopicName::new(&format!("idle{i}")).unwrap()).unwrap();
        }
        let busy = registry.topic_or_create(&TopicName::new("busy").unwrap()).unwrap().0;
        let start = busy.subscribe(&subscriber(), 0, None).unwrap();
        registry.sweep(|_| false);
        assert_eq!(registry.lifecycle_counts(), (1, 1001));
        busy.unsubscribe(start.slot, &start.reader);
        registry.sweep(|_| false);
        assert_eq!(registry.lifecycle_counts().0, 0, "settled into the idle queue");
    }

    #[test]
    fn subscribers_and_publishers_racing_the_reaper_never_use_a_dropped_copy() {
        let registry = Arc::new(short_lived(1, usize::MAX));
        let name = TopicName::new("race").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = {
            let (registry, stop) = (registry.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reaped = 0;
                while !stop.load(Ordering::Relaxed) {
                    reaped += registry.sweep(|_| false).reaped;
                }
                reaped
            })
        };
        // Now and then both workers stay away together for longer than the idle time, so the
        // sweeper drops the topic between their uses however the threads are scheduled.
        let pause = Arc::new(std::sync::Barrier::new(2));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (registry, name, pause) = (registry.clone(), name.clone(), pause.clone());
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        if i % 1_000 == 999 {
                            pause.wait();
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            pause.wait();
                        }
                        let start = loop {
                            let topic = registry.topic_or_create(&name).unwrap().0;
                            if let Ok(start) = topic.subscribe(&subscriber(), 0, None) {
                                break (topic, start);
                            }
                        };
                        let (topic, start) = start;
                        // While subscribed, the copy is the registry's.
                        let held = registry.topic("race").expect("a subscribed topic stays");
                        assert!(Arc::ptr_eq(&held, &topic));
                        if i % 2 == 0 {
                            publish(&topic, "x");
                        }
                        topic.unsubscribe(start.slot, &start.reader);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(sweeper.join().unwrap() > 0, "the topic was dropped between uses");
    }

    #[test]
    fn racing_publishers_and_subscribers_see_every_event_once_in_order() {
        let registry = Arc::new(Registry::new(100_000));
        let topic = registry.topic_or_create(&TopicName::new("race").unwrap()).unwrap().0;
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
            let start = topic.subscribe(&subscriber(), 0, Some(resume_at)).unwrap();
            assert_eq!(start.position, resume_at);
            std::thread::yield_now();
            let got = read_after(&topic, start.position.seq).expect("history covers the run");
            let expected: Vec<u64> =
                (resume_at.seq + 1..=resume_at.seq + got.len() as u64).collect();
            assert_eq!(got, expected);
            topic.unsubscribe(start.slot, &start.reader);
        }
        for p in publishers {
            p.join().unwrap();
        }
    }
}

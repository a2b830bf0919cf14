//! The registry: topic → state (order, history, subscribers), sharded by topic hash, and the
//! fan-out of one published event to every subscriber's queue.
//!
//! # Concurrency contract
//!
//! - **Lookup.** Topics live in `shards` (a power of two, four per core) of read-mostly hash
//!   maps. Publishing, subscribing and unsubscribing on an existing topic take only a shard's
//!   read lock, shared with each other. The write lock is taken to create a topic, for one map
//!   insert. Topics are never removed while the node runs.
//! - **Publish order.** Publishers of one topic serialize on the topic's `order` lock: sequence
//!   number, frame, history append and fan-out of event *n* all complete before event *n + 1*
//!   starts, so every subscriber receives a topic's events in id order. Publishers of different
//!   topics never contend.
//! - **Publishing never waits on subscribers.** The fan-out scans the topic's
//!   [`SubscriberSet`] without a lock and pushes into each [`ClientQueue`], which never blocks:
//!   a push that does not fit the client's byte budget evicts that client (the queue closes and
//!   its connection is closed) and the fan-out moves on. Subscribe and unsubscribe take the
//!   set's writer lock, which publishers never take, and cost O(1) amortised.
//! - **Zero-copy fan-out.** An event is encoded once; each subscriber's queue gets a reference
//!   (`Arc`) to the shared event and its `Bytes` frames. Nothing is allocated or copied per
//!   subscriber on the publish path (a queue reuses its deque's capacity).
//! - **Resume without gap or duplicate.** A subscriber registers first and reads the topic's
//!   head and history second; a publisher appends to history and advances the head first and
//!   scans subscribers second, with a sequentially consistent fence between the two steps on
//!   both sides. So for every event either the publisher's scan sees the new subscriber (live
//!   delivery) or the subscriber's read sees the event (replay), and possibly both: the
//!   subscriber drops live events at or below the head it read ([`TopicStart::head`]).
//! - **Closing.** A queue closes once: for eviction (nothing more is written) or for shutdown
//!   (what is queued is written, then the stream ends). Dropping a subscription removes it from
//!   every topic's set; memory a publisher may still be reading is reclaimed by epochs.
//!
//! ```
//! use crier::event::{EventData, TopicName};
//! use crier::registry::{ClientQueue, Registry};
//! use crier::metrics::Transport;
//! use std::sync::Arc;
//!
//! let registry = Registry::new(100);
//! let topic = registry.topic_or_create(&TopicName::new("news").unwrap()).0;
//! let queue = Arc::new(ClientQueue::new(1 << 20, Transport::Sse, None));
//! let start = topic.subscribe(&queue, 0, None);
//! let body = crier::sse::encode::encode_body(None, &EventData::text("hi".into()).unwrap());
//! let event = topic.publish(None, EventData::text("hi".into()).unwrap(), body, |_| {});
//! assert_eq!(event.id.seq, start.live_after + 1);
//! assert_eq!(queue.queued_bytes(), event.sse_frame().len());
//! topic.unsubscribe(start.slot);
//! ```

mod queue;
mod subscribers;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crossbeam_epoch as epoch;
use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::event::{Epoch, Event, EventData, EventId, EventName, TopicName};
use crate::history::History;
use crate::metrics::Transport;
use crate::sse::encode::{self, EncodedBody};

pub use queue::{ClientQueue, Closed, ConnectionCloser, Delivery, Drained, Push};
pub use subscribers::{SlotId, Subscriber, SubscriberSet};

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
        let topic = Arc::new(Topic::new(name.clone(), self.epoch, self.history_limit));
        map.insert(name.clone(), topic.clone());
        (topic, true)
    }

    /// Every topic, at some moment during the call.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.shards
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// A topic: its publish order, retained history and subscribers.
pub struct Topic {
    name: TopicName,
    epoch: Epoch,
    /// Sequenced events waiting for fan-out. Publishers hold it only to assign the next id,
    /// append to history and queue the event.
    pending: Mutex<Vec<Arc<Event>>>,
    /// Sequence number of the last sequenced event (0 before the first).
    head: AtomicU64,
    /// Sequence number of the last event handed to a fan-out scan.
    fanned_out: AtomicU64,
    /// Set while a publisher fans out pending events for everyone.
    combining: AtomicBool,
    history: History,
    subscribers: SubscriberSet,
}

/// Where a new subscription starts on one topic.
#[derive(Debug)]
pub struct TopicStart {
    /// Its slot, for unsubscribing.
    pub slot: SlotId,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Live delivery covers the events after this sequence number. Live events at or below it
    /// were replayed (or precede the requested position) and must be dropped.
    pub live_after: u64,
    /// Retained events to send before live ones, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Set when the requested position cannot be resumed exactly.
    pub gap: Option<Gap>,
}

impl TopicStart {
    /// The position just before the first event this subscription will deliver.
    pub fn position(&self) -> EventId {
        let seq = self.replay.first().map_or(self.live_after, |e| e.id.seq - 1);
        EventId { epoch: self.epoch, seq }
    }
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
    fn new(name: TopicName, epoch: Epoch, history_limit: usize) -> Self {
        Topic {
            name,
            epoch,
            pending: Mutex::new(Vec::new()),
            head: AtomicU64::new(0),
            fanned_out: AtomicU64::new(0),
            combining: AtomicBool::new(false),
            history: History::new(history_limit),
            subscribers: SubscriberSet::new(),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &TopicName {
        &self.name
    }

    /// The id of the last published event (sequence 0 before the first).
    pub fn head(&self) -> EventId {
        EventId { epoch: self.epoch, seq: self.head.load(Ordering::Acquire) }
    }

    /// The subscriber set.
    pub fn subscribers(&self) -> &SubscriberSet {
        &self.subscribers
    }

    /// Assigns the next id, finishes the frame, records the event in history and queues it for
    /// every subscriber. `evicted` is called for each client a push evicted.
    ///
    /// Publishers only wait for each other while ids are assigned. The fan-out is combined:
    /// whichever publisher finds no fan-out running pushes everything pending to every
    /// subscriber, one queue operation per subscriber for the whole batch, while the others
    /// return at once; their events are in the batch.
    pub fn publish(
        &self,
        name: Option<EventName>,
        data: EventData,
        body: EncodedBody,
        evicted: impl FnMut(Transport),
    ) -> Arc<Event> {
        let event = {
            let mut pending = self.pending.lock();
            let seq = self.head.load(Ordering::Relaxed) + 1;
            let id = EventId { epoch: self.epoch, seq };
            let sse = encode::finish(body, id);
            let event = Arc::new(Event { topic: self.name.clone(), id, name, data, sse });
            self.history.push(event.clone(), &epoch::pin());
            self.head.store(seq, Ordering::Release);
            pending.push(event.clone());
            event
        };
        self.fan_out(evicted);
        event
    }

    /// Pushes pending events to every subscriber unless another publisher is doing so.
    fn fan_out(&self, mut evicted: impl FnMut(Transport)) {
        let mut batch = Vec::new();
        loop {
            if self.combining.swap(true, Ordering::AcqRel) {
                // The running fan-out takes our event: it re-checks before it stops.
                return;
            }
            loop {
                std::mem::swap(&mut batch, &mut *self.pending.lock());
                let Some(last) = batch.last() else { break };
                self.fanned_out.store(last.id.seq, Ordering::SeqCst);
                // Pairs with the fence in `subscribe`: see "Resume without gap or duplicate".
                fence(Ordering::SeqCst);
                let bytes = batch.iter().map(|e| e.sse.frame.len()).sum();
                self.subscribers.for_each(&epoch::pin(), |subscriber| {
                    let pushed = subscriber.queue.push_batch(&batch, subscriber.topic_index, bytes);
                    if pushed == Push::Evicted {
                        evicted(subscriber.queue.transport());
                    }
                });
                batch.clear();
            }
            self.combining.store(false, Ordering::Release);
            // A publisher may have queued an event after our last take and left because we
            // were still combining.
            if self.pending.lock().is_empty() {
                return;
            }
        }
    }

    /// Registers `queue` as a subscriber and works out where it starts: after `resume` if
    /// given (replaying retained events, or reporting a gap), else after the last event
    /// already fanned out.
    pub fn subscribe(
        &self,
        queue: &Arc<ClientQueue>,
        topic_index: u16,
        resume: Option<EventId>,
    ) -> TopicStart {
        let slot = self.subscribers.insert(Subscriber { queue: queue.clone(), topic_index });
        // Pairs with the fence in `fan_out`.
        fence(Ordering::SeqCst);
        let fanned_out = self.fanned_out.load(Ordering::SeqCst);
        let head = self.head.load(Ordering::Acquire);
        let mut start = TopicStart {
            slot,
            epoch: self.epoch,
            live_after: fanned_out,
            replay: Vec::new(),
            gap: None,
        };
        let Some(requested) = resume else { return start };
        if requested.epoch != self.epoch {
            start.replay = self.history.read(0, fanned_out).events;
            start.gap = Some(Gap { reason: GapReason::Epoch, requested, missed: None });
        } else if requested.seq > head {
            start.gap = Some(Gap { reason: GapReason::Unknown, requested, missed: None });
        } else if requested.seq >= fanned_out {
            // Known but not fanned out yet (a publisher resuming from its own publish's id):
            // everything after it arrives live.
            start.live_after = requested.seq;
        } else {
            let retained = self.history.read(requested.seq, fanned_out);
            if retained.missed > 0 {
                let missed = Some(retained.missed);
                start.gap = Some(Gap { reason: GapReason::Expired, requested, missed });
            }
            start.replay = retained.events;
        }
        start
    }

    /// Removes a subscription made by [`Topic::subscribe`].
    pub fn unsubscribe(&self, slot: SlotId) -> bool {
        self.subscribers.remove(slot)
    }

    /// Closes every subscriber's queue.
    pub fn close_subscribers(&self, why: Closed) {
        self.subscribers.for_each(&epoch::pin(), |subscriber| {
            subscriber.queue.close(why);
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
    use std::collections::VecDeque;
    use std::task::{Context, Poll, Waker};

    fn text(s: &str) -> EventData {
        EventData::text(bytes::Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn publish(topic: &Topic, s: &str) -> Arc<Event> {
        let data = text(s);
        let body = encode::encode_body(None, &data);
        topic.publish(None, data, body, |_| {})
    }

    fn drain(queue: &ClientQueue) -> Vec<u64> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = VecDeque::new();
        match queue.poll_drain(&mut cx, &mut out) {
            Poll::Ready(Drained::Events) => out.iter().map(|d| d.event.id.seq).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn resume_replays_retained_events_then_goes_live() {
        let registry = Registry::new(5);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        let ids: Vec<_> = (0..8).map(|i| publish(&topic, &i.to_string()).id).collect();
        let queue = Arc::new(ClientQueue::new(1 << 20, Transport::Sse, None));

        let start = topic.subscribe(&queue, 0, Some(ids[5]));
        assert_eq!(start.replay.iter().map(|e| e.id.seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(start.gap, None);
        assert_eq!(start.position(), ids[5]);
        publish(&topic, "live");
        assert_eq!(drain(&queue), [9]);
        topic.unsubscribe(start.slot);

        let start = topic.subscribe(&queue, 0, Some(ids[0]));
        assert_eq!(start.replay.first().map(|e| e.id.seq), Some(5), "history keeps 5");
        assert_eq!(
            start.gap,
            Some(Gap { reason: GapReason::Expired, requested: ids[0], missed: Some(3) })
        );
        assert_eq!(start.position().seq, 4);
        topic.unsubscribe(start.slot);

        let foreign =
            EventId { epoch: Epoch::from_u64(registry.epoch().as_u64() ^ 1).unwrap(), seq: 3 };
        let start = topic.subscribe(&queue, 0, Some(foreign));
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Epoch));
        assert_eq!(start.replay.len(), 5);
        topic.unsubscribe(start.slot);

        let future = EventId { epoch: registry.epoch(), seq: 100 };
        let start = topic.subscribe(&queue, 0, Some(future));
        assert_eq!(start.gap.as_ref().map(|g| g.reason), Some(GapReason::Unknown));
        assert!(start.replay.is_empty());
        assert_eq!(start.position().seq, 9);
    }

    #[test]
    fn events_sequenced_but_not_yet_fanned_out_are_delivered_once() {
        let registry = Registry::new(10);
        let topic = registry.topic_or_create(&TopicName::new("t").unwrap()).0;
        publish(&topic, "fanned out");
        // Another publisher is mid fan-out: this event is sequenced and pending.
        topic.combining.store(true, Ordering::SeqCst);
        let pending = publish(&topic, "pending");
        let fresh = Arc::new(ClientQueue::new(1 << 20, Transport::Sse, None));
        let fresh_start = topic.subscribe(&fresh, 0, None);
        assert_eq!(fresh_start.live_after, 1);
        // A publisher resuming from the id its own publish returned.
        let own = Arc::new(ClientQueue::new(1 << 20, Transport::Sse, None));
        let own_start = topic.subscribe(&own, 0, Some(pending.id));
        assert_eq!((own_start.live_after, own_start.gap.as_ref()), (2, None));
        assert!(own_start.replay.is_empty());
        topic.combining.store(false, Ordering::SeqCst);
        publish(&topic, "next");
        assert_eq!(drain(&fresh), [2, 3], "the pending event arrives live after the subscribe");
        let live: Vec<u64> =
            drain(&own).into_iter().filter(|&s| s > own_start.live_after).collect();
        assert_eq!(live, [3]);
    }

    #[test]
    fn racing_publishers_and_resumers_see_no_gap_and_no_duplicate() {
        // Each subscriber registers while publishers run, then combines replay + live (dropping
        // live events at or below its head) and must see every event after its start exactly once.
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
        let mut checked = 0;
        while checked < 200 {
            let resume_at = topic.head();
            let queue = Arc::new(ClientQueue::new(usize::MAX, Transport::Sse, None));
            let start = topic.subscribe(&queue, 0, Some(resume_at));
            std::thread::yield_now();
            topic.unsubscribe(start.slot);
            let end_head = topic.head().seq;
            let mut got: Vec<u64> = start.replay.iter().map(|e| e.id.seq).collect();
            got.extend(drain(&queue).into_iter().filter(|&s| s > start.live_after));
            // Every event published after the resume point and before the live window closed.
            let live_until = got.last().copied().unwrap_or(resume_at.seq).max(start.live_after);
            assert_eq!(got, ((resume_at.seq + 1)..=live_until).collect::<Vec<_>>());
            assert!(live_until <= end_head);
            checked += 1;
        }
        for p in publishers {
            p.join().unwrap();
        }
    }
}

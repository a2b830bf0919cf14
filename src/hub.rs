//! The hub: the publish and subscribe API every edge uses (HTTP publish, SSE, and in-process
//! callers such as tests and benchmarks), on top of the registry, and the sweeper that evicts
//! subscribers whose writers stopped reading.
//!
//! A [`Subscription`] is one client's reader: the topics it follows in canonical (sorted)
//! order, its cursor on each topic's log, and the gap notice it starts with. Its writer calls
//! [`Subscription::poll_events`] to take what was published since. Dropping it unsubscribes
//! from every topic.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_epoch as epoch;

use crate::event::{Cursor, Event, EventData, EventId, EventName, IdError, TopicName};
use crate::metrics::{EvictReason, Metrics, Transport};
use crate::registry::{Client, Closed, ConnectionCloser, Gap, Registry, SlotId, Subscriber, Topic};
use crate::relay::{Relay, RelayConfig, RelayError, RelayStartError};
use crate::sse::encode;

/// Limits the hub enforces.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Events retained per topic for resume.
    pub history: usize,
    /// How far (in stream bytes) a client may fall behind a topic before it is evicted.
    pub client_queue_bytes: usize,
    /// Largest event payload accepted.
    pub max_event_bytes: usize,
    /// Most topics one stream may follow.
    pub max_topics_per_stream: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: 1000,
            client_queue_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            max_topics_per_stream: 64,
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload is larger than `--max-event-bytes`.
    #[error("event data is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Cluster mode: Redis did not take the event (nothing was published).
    #[error(transparent)]
    Unavailable(#[from] RelayError),
}

/// Why a subscribe was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No topic was given.
    #[error("at least one topic is required")]
    NoTopics,
    /// More topics than `max_topics_per_stream`.
    #[error("{count} topics requested, at most {max} per stream")]
    TooManyTopics {
        /// Topics requested.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The resume id could not be read.
    #[error(transparent)]
    BadId(#[from] IdError),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Cluster mode: the topic's state could not be read from Redis.
    #[error(transparent)]
    Unavailable(#[from] RelayError),
}

/// The publish/subscribe core of one node.
pub struct Hub {
    registry: Registry,
    config: HubConfig,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Set in cluster mode: events are published through Redis and topics follow it.
    relay: OnceLock<Relay>,
}

impl Hub {
    /// A hub with an empty registry and a fresh epoch.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        Hub {
            registry: Registry::new(config.history),
            config,
            metrics,
            draining: AtomicBool::new(false),
            relay: OnceLock::new(),
        }
    }

    /// Joins the cluster behind `config`'s Redis: from now on publishes go through Redis and
    /// topics follow it. Must be called before the hub serves anyone.
    pub fn start_relay(self: &Arc<Self>, config: &RelayConfig) -> Result<(), RelayStartError> {
        let relay = Relay::start(self, config)?;
        let _ = self.relay.set(relay);
        Ok(())
    }

    /// The relay, in cluster mode.
    pub fn relay(&self) -> Option<&Relay> {
        self.relay.get()
    }

    /// Whether the node can serve: always on a single node; in cluster mode, while its link
    /// to Redis is up.
    pub fn is_connected(&self) -> bool {
        self.relay.get().is_none_or(Relay::is_connected)
    }

    /// The hub's limits.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Publishes an event and returns its id once it is accepted. On a single node it is
    /// assigned an id and appended to the topic's log, from which every subscriber's writer
    /// takes it. In cluster mode it is accepted once Redis has it, and reaches subscribers
    /// (here too) through the relay.
    pub async fn publish(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<EventId, PublishError> {
        let Some(relay) = self.relay.get() else {
            return self.publish_now(topic, name, data).map(|event| event.id);
        };
        self.check_size(&data)?;
        let id = relay.publish(topic.clone(), name, data).await?;
        self.metrics.events_published.increment(1);
        Ok(id)
    }

    fn check_size(&self, data: &EventData) -> Result<(), PublishError> {
        if data.len() > self.config.max_event_bytes {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max: self.config.max_event_bytes,
            });
        }
        Ok(())
    }

    /// [`Hub::publish`] without the future, for in-process callers on a single node.
    ///
    /// # Panics
    ///
    /// In cluster mode, where ids come from Redis.
    pub fn publish_now(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<Arc<Event>, PublishError> {
        assert!(self.relay.get().is_none(), "in cluster mode ids come from Redis");
        let started = Instant::now();
        self.check_size(&data)?;
        let body = encode::encode_body(name.as_ref(), &data);
        let (topic, created) = self.registry.topic_or_create(topic);
        if created {
            self.metrics.topics.increment(1);
        }
        let event = topic.publish(name, data, body);
        self.metrics.events_published.increment(1);
        self.metrics.publish_took(started.elapsed());
        Ok(event)
    }

    /// Cluster mode: makes sure this node's copies of `topics` can serve a subscription that
    /// resumes after `last_event_id` (read the same way as by [`Hub::subscribe`]): topics the
    /// node has never seen, and positions it has not reached yet, are read from Redis first.
    /// Does nothing on a single node, or when the node's copies already serve.
    pub async fn prepare(
        &self,
        topics: &[TopicName],
        last_event_id: Option<&str>,
    ) -> Result<(), SubscribeError> {
        let Some(relay) = self.relay.get() else { return Ok(()) };
        let mut sorted = topics.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        // An unreadable id is refused by `subscribe`; here it just asks for nothing.
        let resume = match last_event_id {
            None => None,
            Some(text) if sorted.len() == 1 => text.parse::<EventId>().ok().map(|id| vec![id]),
            Some(text) => Cursor::parse(text, sorted.len()).ok().map(|cursor| cursor.0),
        };
        let needed: Vec<TopicName> = sorted
            .iter()
            .enumerate()
            .filter(|(index, name)| match self.registry.topic(name.as_str()) {
                None => true,
                Some(topic) => resume.as_ref().is_some_and(|ids| {
                    let (id, head) = (ids[*index], topic.head());
                    id.epoch != head.epoch || id.seq > head.seq
                }),
            })
            .map(|(_, name)| name.clone())
            .collect();
        if needed.is_empty() {
            return Ok(());
        }
        relay.sync(needed).await?;
        Ok(())
    }

    /// Subscribes a new client to `topics`, resuming after `last_event_id` if given (an event
    /// id for one topic, a cursor for several). `closer` is told to drop the connection if the
    /// client is evicted.
    pub fn subscribe(
        &self,
        topics: Vec<TopicName>,
        last_event_id: Option<&str>,
        transport: Transport,
        closer: Option<Arc<dyn ConnectionCloser>>,
    ) -> Result<Subscription, SubscribeError> {
        let mut topics = topics;
        topics.sort_unstable();
        topics.dedup();
        // A WebSocket may start with no topic and subscribe by command; a stream may not.
        if topics.is_empty() && transport == Transport::Sse {
            return Err(SubscribeError::NoTopics);
        }
        if topics.len() > self.config.max_topics_per_stream {
            return Err(SubscribeError::TooManyTopics {
                count: topics.len(),
                max: self.config.max_topics_per_stream,
            });
        }
        let resume = match last_event_id {
            None => None,
            Some(text) if topics.len() == 1 => Some(vec![text.parse::<EventId>()?]),
            Some(text) => Some(Cursor::parse(text, topics.len())?.0),
        };
        if self.draining.load(Ordering::SeqCst) {
            return Err(SubscribeError::ShuttingDown);
        }

        let client = Arc::new(Client::new(self.config.client_queue_bytes, transport, closer));
        let mut subscription = Subscription {
            client,
            topics: Vec::with_capacity(topics.len()),
            gaps: Vec::new(),
            next_topic: 0,
            metrics: self.metrics.clone(),
        };
        for (index, name) in topics.iter().enumerate() {
            let gap = subscription.follow(self, name, resume.as_ref().map(|ids| ids[index]))?;
            if let Some(gap) = gap {
                subscription.gaps.push((index as u16, gap));
            }
        }

        // Pairs with the fence in `shutdown`: either its scan closes this client, or we see it.
        fence(Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            subscription.client.close(Closed::Shutdown);
        }
        Ok(subscription)
    }

    /// Starts draining: refuses new subscriptions and closes every client for shutdown, so each
    /// stream ends once it has written what is already published.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for topic in self.registry.topics() {
            topic.close_subscribers(Closed::Shutdown);
        }
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Evicts every subscriber whose writer has fallen further behind than its budget or the
    /// log allows (typically one whose socket stopped draining); returns how many.
    pub fn sweep(&self) -> usize {
        self.registry.prune_retired();
        let mut evicted = 0;
        for topic in self.registry.topics() {
            topic.sweep(|subscriber| {
                if subscriber.client.close(Closed::Evicted) {
                    self.metrics.evicted(subscriber.client.transport(), EvictReason::SlowConsumer);
                    evicted += 1;
                }
            });
        }
        evicted
    }

    /// Runs [`Hub::sweep`] every `interval`, forever.
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

struct SubscribedTopic {
    topic: Arc<Topic>,
    slot: SlotId,
    subscriber: Arc<Subscriber>,
    /// Where the subscription started.
    start: EventId,
    /// Sequence number of the last event taken.
    cursor: u64,
    /// The topic's stream length at the cursor.
    cursor_end: u64,
}

/// The data of a `crier.gap` event for `(topic, gap, position resumed after)` triples.
fn gap_notice(gaps: &[(&str, &Gap, EventId)]) -> String {
    #[derive(serde::Serialize)]
    struct TopicGap<'a> {
        topic: &'a str,
        reason: &'static str,
        last_event_id: String,
        resumed_after: String,
        missed: Option<u64>,
    }
    #[derive(serde::Serialize)]
    struct Notice<'a> {
        gaps: Vec<TopicGap<'a>>,
    }
    let gaps = gaps
        .iter()
        .map(|&(topic, gap, resumed_after)| TopicGap {
            topic,
            reason: gap.reason.as_str(),
            last_event_id: gap.requested.to_string(),
            resumed_after: resumed_after.to_string(),
            missed: gap.missed,
        })
        .collect();
    serde_json::to_string(&Notice { gaps }).unwrap_or_default()
}

/// The `crier.gap` notice for readers of `topic` who lost events and continue after
/// `resumed_after`, as an event of that topic: it reaches SSE and WebSocket streams like any
/// other, with `resumed_after` as its id so that resuming from it is exact.
pub fn gap_notice_event(topic: &TopicName, gap: &Gap, resumed_after: EventId) -> Arc<Event> {
    let notice = gap_notice(&[(topic.as_str(), gap, resumed_after)]);
    let name = EventName::gap();
    let data = EventData::Text(bytes::Bytes::from(notice.into_bytes()));
    let sse = encode::finish(encode::encode_body(Some(&name), &data), resumed_after);
    Arc::new(Event::new(topic.clone(), resumed_after, Some(name), data, sse, 0))
}

/// A topic added to a live subscription.
#[derive(Debug)]
pub struct Added {
    /// The position the topic starts after.
    pub position: EventId,
    /// The data of a `crier.gap` event to send first, if the resume was not exact.
    pub gap_notice: Option<String>,
}

/// Why a topic could not be added to a live subscription.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The topic is already followed.
    #[error("already subscribed to this topic")]
    AlreadySubscribed,
    /// Refused for the same reasons as a new subscription.
    #[error(transparent)]
    Refused(#[from] SubscribeError),
}

/// What [`Subscription::poll_events`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// Events were handed to the sink.
    Events,
    /// Nothing more will come: the client was closed (after everything published before a
    /// shutdown was taken).
    Closed(Closed),
}

/// One client's subscription to one or more topics.
pub struct Subscription {
    client: Arc<Client>,
    topics: Vec<SubscribedTopic>,
    gaps: Vec<(u16, Gap)>,
    /// The topic to read first next time, so no topic starves the others.
    next_topic: usize,
    metrics: Arc<Metrics>,
}

impl Subscription {
    /// Subscribes to one more topic (at the end of the topic list); returns its gap, if any.
    fn follow(
        &mut self,
        hub: &Hub,
        name: &TopicName,
        resume: Option<EventId>,
    ) -> Result<Option<Gap>, SubscribeError> {
        let topic = if hub.relay.get().is_some() {
            // Cluster topics are created by the relay, from Redis ([`Hub::prepare`]).
            hub.registry.topic(name.as_str()).ok_or_else(|| {
                RelayError::Unavailable(format!(
                    "topic {:?} is not synced from Redis yet",
                    name.as_str()
                ))
            })?
        } else {
            let (topic, created) = hub.registry.topic_or_create(name);
            if created {
                hub.metrics.topics.increment(1);
            }
            topic
        };
        let topic_index = self.topics.len() as u16;
        let start = topic.subscribe(&self.client, topic_index, resume);
        hub.metrics.subscriptions.increment(1);
        self.topics.push(SubscribedTopic {
            topic,
            slot: start.slot,
            subscriber: start.subscriber,
            start: start.position,
            cursor: start.position.seq,
            cursor_end: start.position_end,
        });
        Ok(start.gap)
    }

    /// Adds a topic to a live subscription (a WebSocket `subscribe` command), resuming after
    /// `last_event_id` if given. Returns where it starts and its gap notice, if the resume was
    /// not exact.
    pub fn add_topic(
        &mut self,
        hub: &Hub,
        name: TopicName,
        last_event_id: Option<&str>,
    ) -> Result<Added, AddError> {
        if self.topics.iter().any(|t| t.topic.name() == &name) {
            return Err(AddError::AlreadySubscribed);
        }
        if self.topics.len() >= hub.config.max_topics_per_stream {
            let max = hub.config.max_topics_per_stream;
            return Err(AddError::Refused(SubscribeError::TooManyTopics { count: max + 1, max }));
        }
        let resume = last_event_id
            .map(str::parse::<EventId>)
            .transpose()
            .map_err(|e| AddError::Refused(e.into()))?;
        let gap = self.follow(hub, &name, resume)?;
        let index = self.topics.len() - 1;
        let position = self.topics[index].start;
        let gap_notice = gap.map(|gap| gap_notice(&[(name.as_str(), &gap, position)]));
        Ok(Added { position, gap_notice })
    }

    /// Stops following a topic; returns whether it was followed.
    pub fn remove_topic(&mut self, name: &str) -> bool {
        let Some(index) = self.topics.iter().position(|t| t.topic.name().as_str() == name) else {
            return false;
        };
        let removed = self.topics.swap_remove(index);
        removed.topic.unsubscribe(removed.slot);
        self.metrics.subscriptions.decrement(1);
        self.next_topic = 0;
        true
    }

    /// The topics, in canonical order; the `topic_index` given to a sink indexes this list.
    pub fn topics(&self) -> impl ExactSizeIterator<Item = &TopicName> {
        self.topics.iter().map(|t| t.topic.name())
    }

    /// Where the stream started on each topic: just before the first event it delivers.
    pub fn start_positions(&self) -> Vec<EventId> {
        self.topics.iter().map(|t| t.start).collect()
    }

    /// The topics whose requested position could not be resumed exactly.
    pub fn gaps(&self) -> &[(u16, Gap)] {
        &self.gaps
    }

    /// The data of the `crier.gap` event that opens a stream whose resume was not exact: JSON
    /// naming, for each affected topic, why, the id the client gave, the position the stream
    /// resumes after, and how many events were lost when known.
    ///
    /// ```text
    /// {"gaps":[{"topic":"news","reason":"expired","last_event_id":"k2j8f0qz-3",
    ///           "resumed_after":"k2j8f0qz-9","missed":6}]}
    /// ```
    pub fn gap_notice(&self) -> String {
        let gaps: Vec<_> = self
            .gaps
            .iter()
            .map(|(index, gap)| {
                let topic = &self.topics[usize::from(*index)];
                (topic.topic.name().as_str(), gap, topic.start)
            })
            .collect();
        gap_notice(&gaps)
    }

    /// One `crier.gap` notice per topic whose resume was not exact: (topic, position resumed
    /// after, notice data).
    pub fn gap_notices(&self) -> Vec<(String, EventId, String)> {
        self.gaps
            .iter()
            .map(|(index, gap)| {
                let topic = &self.topics[usize::from(*index)];
                let name = topic.topic.name().as_str();
                (name.to_owned(), topic.start, gap_notice(&[(name, gap, topic.start)]))
            })
            .collect()
    }

    /// The client.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Hands `sink` every event published after the cursors (about `budget` stream bytes at
    /// most), oldest first per topic, with the index of its topic; or parks the task until
    /// there is more.
    ///
    /// A subscription whose next event the log no longer holds is evicted here rather than
    /// skipping ahead. After a shutdown, it reports `Closed(Shutdown)` once it has handed over
    /// everything published before.
    pub fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
        budget: usize,
        mut sink: impl FnMut(u16, &Event),
    ) -> Poll<Polled> {
        self.client.register(cx.waker());
        let closed = self.client.closed();
        if closed == Some(Closed::Evicted) {
            return Poll::Ready(Polled::Closed(Closed::Evicted));
        }
        let mut moving = Vec::new();
        loop {
            let mut taken = 0;
            let mut lapped = false;
            {
                let guard = epoch::pin();
                let count = self.topics.len();
                for i in 0..count {
                    let index = (self.next_topic + i) % count;
                    let t = &mut self.topics[index];
                    // Read before the head: once a copy is replaced, its head is final.
                    let replaced = t.topic.successor().is_some();
                    let head = t.topic.head().seq;
                    let before = t.cursor;
                    while t.cursor < head && taken < budget {
                        let Some(event) = t.topic.event(t.cursor + 1, &guard) else {
                            lapped = true;
                            break;
                        };
                        sink(t.subscriber.topic_index, event);
                        t.cursor += 1;
                        t.cursor_end = event.stream_end;
                        taken += event.sse.frame.len().max(1);
                    }
                    if t.cursor != before {
                        t.subscriber.set_position(t.cursor, t.cursor_end);
                    }
                    if replaced && t.cursor == head && !lapped {
                        moving.push(index);
                    }
                }
                self.next_topic = (self.next_topic + 1) % count.max(1);
            }
            for index in moving.drain(..) {
                taken += self.move_over(index, &mut sink);
            }
            if lapped {
                if self.client.close(Closed::Evicted) {
                    self.metrics.evicted(self.client.transport(), EvictReason::SlowConsumer);
                }
                return Poll::Ready(Polled::Closed(Closed::Evicted));
            }
            if taken > 0 {
                return Poll::Ready(Polled::Events);
            }
            if closed == Some(Closed::Shutdown) {
                return Poll::Ready(Polled::Closed(Closed::Shutdown));
            }
            // Park, then look once more: an event published before we registered must not
            // wait for the next one.
            for t in &self.topics {
                t.topic.register_waiter(&t.subscriber);
            }
            if self
                .topics
                .iter()
                .all(|t| t.topic.head().seq == t.cursor && t.topic.successor().is_none())
            {
                return Poll::Pending;
            }
        }
    }

    /// Moves the reader of topic `index`, which has read everything of a replaced copy, to the
    /// copy that replaced it, handing `sink` the gap notice if events were lost in between;
    /// returns the stream bytes handed over.
    fn move_over(&mut self, index: usize, sink: &mut impl FnMut(u16, &Event)) -> usize {
        let t = &mut self.topics[index];
        let Some(next) = t.topic.successor() else { return 0 };
        let topic_index = t.subscriber.topic_index;
        let topic = next.topic.clone();
        let start = topic.subscribe_after(&self.client, topic_index, next.start.seq);
        let notice = next.notice.clone();
        t.topic.unsubscribe(t.slot);
        *t = SubscribedTopic {
            topic,
            slot: start.slot,
            subscriber: start.subscriber,
            start: t.start,
            cursor: start.position.seq,
            cursor_end: start.position_end,
        };
        match notice {
            Some(notice) => {
                sink(topic_index, &notice);
                notice.sse.frame.len()
            }
            None => 0,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for t in &self.topics {
            t.topic.unsubscribe(t.slot);
        }
        self.metrics.subscriptions.decrement(self.topics.len() as f64);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics().collect::<Vec<_>>())
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;
    use crate::registry::GapReason;
    use std::task::Waker;

    fn text(s: &str) -> EventData {
        EventData::text(bytes::Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn append(topic: &Topic, id: EventId, s: &str) {
        let data = text(s);
        let body = encode::encode_body(None, &data);
        topic.append(id, None, data, body).unwrap();
    }

    /// Everything the subscription hands over now: (id, event name).
    fn drain(subscription: &mut Subscription) -> Vec<(String, Option<String>)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        while let Poll::Ready(Polled::Events) =
            subscription.poll_events(&mut cx, 1 << 20, |_, e| {
                got.push((e.id.to_string(), e.name.as_ref().map(|n| n.to_string())))
            })
        {}
        got
    }

    #[test]
    fn readers_of_a_replaced_copy_finish_it_then_get_the_notice_then_the_new_copy() {
        let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::new()));
        let name = TopicName::new("t").unwrap();
        let (old_epoch, new_epoch) =
            (Epoch::from_u64(1000).unwrap(), Epoch::from_u64(2000).unwrap());
        let id = |epoch, seq| EventId { epoch, seq };
        let old = Arc::new(Topic::new(name.clone(), old_epoch, 10, 100));
        assert!(!hub.registry().install(old.clone(), id(old_epoch, 10), None));
        append(&old, id(old_epoch, 11), "a");
        let mut subscription =
            hub.subscribe(vec![name.clone()], None, Transport::Sse, None).unwrap();
        assert_eq!(subscription.start_positions(), [id(old_epoch, 11)]);
        append(&old, id(old_epoch, 12), "b");
        assert_eq!(drain(&mut subscription), [(id(old_epoch, 12).to_string(), None)]);
        append(&old, id(old_epoch, 13), "c");

        let new = Arc::new(Topic::new(name.clone(), new_epoch, 0, 100));
        append(&new, id(new_epoch, 1), "x");
        let gap = Gap { reason: GapReason::Epoch, requested: id(old_epoch, 13), missed: None };
        let notice = gap_notice_event(&name, &gap, id(new_epoch, 0));
        assert!(hub.registry().install(new.clone(), id(new_epoch, 0), Some(notice)));
        append(&new, id(new_epoch, 2), "y");
        assert_eq!(
            drain(&mut subscription),
            [
                (id(old_epoch, 13).to_string(), None),
                (id(new_epoch, 0).to_string(), Some("crier.gap".to_owned())),
                (id(new_epoch, 1).to_string(), None),
                (id(new_epoch, 2).to_string(), None),
            ]
        );
        assert_eq!(old.subscribers().len(), 0, "moved off the old copy");
        assert_eq!(new.subscribers().len(), 1);
        hub.registry().prune_retired();
        assert_eq!(hub.registry().topics().len(), 1);

        // A resume from the old epoch on the new copy reports the gap.
        let resumed =
            hub.subscribe(vec![name], Some(&id(old_epoch, 12).to_string()), Transport::Sse, None);
        let gaps = resumed.unwrap().gaps().to_vec();
        assert_eq!(gaps[0].1.reason, GapReason::Epoch);
    }
}

//! The hub: the publish and subscribe API every edge uses (HTTP publish, SSE, and in-process
//! callers such as tests and benchmarks), on top of the registry.
//!
//! A [`Subscription`] is one client's view: its queue, the topics it follows in canonical
//! (sorted) order, the replay and gap notice it starts with, and the watermarks that drop live
//! duplicates of the replay. Dropping it unsubscribes from every topic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::{Context, Poll};
use std::time::Instant;

use crate::event::{Cursor, Event, EventData, EventId, EventName, IdError, TopicName};
use crate::metrics::{EvictReason, Metrics, Transport};
use crate::registry::{
    ClientQueue, Closed, ConnectionCloser, Delivery, Drained, Gap, Registry, SlotId, Topic,
};
use crate::sse::encode;

/// Limits the hub enforces.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Events retained per topic for resume.
    pub history: usize,
    /// Byte budget of each client's queue.
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
}

/// The publish/subscribe core of one node.
pub struct Hub {
    registry: Registry,
    config: HubConfig,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Hub {
    /// A hub with an empty registry and a fresh epoch.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        Hub {
            registry: Registry::new(config.history),
            config,
            metrics,
            draining: AtomicBool::new(false),
        }
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

    /// Publishes an event: assigns its id, records it in the topic's history and queues it for
    /// every subscriber. Returns once the event is accepted; the id is in the returned event.
    pub async fn publish(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<Arc<Event>, PublishError> {
        self.publish_now(topic, name, data)
    }

    /// [`Hub::publish`] without the future, for in-process callers that do not run in async code.
    pub fn publish_now(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<Arc<Event>, PublishError> {
        let started = Instant::now();
        if data.len() > self.config.max_event_bytes {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max: self.config.max_event_bytes,
            });
        }
        let body = encode::encode_body(name.as_ref(), &data);
        let (topic, created) = self.registry.topic_or_create(topic);
        if created {
            self.metrics.topics.increment(1);
        }
        let event = topic.publish(name, data, body, |transport| {
            self.metrics.evicted(transport, EvictReason::SlowConsumer);
        });
        self.metrics.events_published.increment(1);
        self.metrics.publish_took(started.elapsed());
        Ok(event)
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
        if topics.is_empty() {
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

        let queue = Arc::new(ClientQueue::new(self.config.client_queue_bytes, transport, closer));
        let mut subscription = Subscription {
            queue,
            topics: Vec::with_capacity(topics.len()),
            replay: VecDeque::new(),
            gaps: Vec::new(),
            undeduplicated: topics.len(),
            metrics: self.metrics.clone(),
        };
        for (index, name) in topics.iter().enumerate() {
            let (topic, created) = self.registry.topic_or_create(name);
            if created {
                self.metrics.topics.increment(1);
            }
            let resume_at = resume.as_ref().map(|ids| ids[index]);
            let topic_index = index as u16;
            let start = topic.subscribe(&subscription.queue, topic_index, resume_at);
            self.metrics.subscriptions.increment(1);
            if let Some(gap) = start.gap.clone() {
                subscription.gaps.push((topic_index, gap));
            }
            let position = start.position();
            subscription
                .replay
                .extend(start.replay.into_iter().map(|event| Delivery { event, topic_index }));
            subscription.topics.push(SubscribedTopic {
                topic,
                slot: start.slot,
                live_after: Some(start.live_after),
                position,
            });
        }
        // Pairs with the fence in `shutdown`: either its scan closes this queue, or we see it.
        fence(Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            subscription.queue.close(Closed::Shutdown);
        }
        Ok(subscription)
    }

    /// Starts draining: refuses new subscriptions and closes every queue for shutdown, so each
    /// stream ends after writing what is already queued.
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
}

struct SubscribedTopic {
    topic: Arc<Topic>,
    slot: SlotId,
    /// Live events at or below this sequence number were replayed (or predate the
    /// subscription); `None` once a later live event has passed, as nothing older follows it.
    live_after: Option<u64>,
    /// Where the stream starts on this topic.
    position: EventId,
}

/// One client's subscription to one or more topics.
pub struct Subscription {
    queue: Arc<ClientQueue>,
    topics: Vec<SubscribedTopic>,
    replay: VecDeque<Delivery>,
    gaps: Vec<(u16, Gap)>,
    /// Topics whose first live event has not been seen yet; while non-zero, drained events are
    /// checked against the replay watermarks.
    undeduplicated: usize,
    metrics: Arc<Metrics>,
}

impl Subscription {
    /// The topics, in canonical order; a delivery's `topic_index` indexes this list.
    pub fn topics(&self) -> impl ExactSizeIterator<Item = &TopicName> {
        self.topics.iter().map(|t| t.topic.name())
    }

    /// Where the stream starts on each topic: just before the first event it will deliver.
    pub fn start_positions(&self) -> Vec<EventId> {
        self.topics.iter().map(|t| t.position).collect()
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
        let gaps = self
            .gaps
            .iter()
            .map(|(index, gap)| {
                let topic = &self.topics[usize::from(*index)];
                TopicGap {
                    topic: topic.topic.name().as_str(),
                    reason: gap.reason.as_str(),
                    last_event_id: gap.requested.to_string(),
                    resumed_after: topic.position.to_string(),
                    missed: gap.missed,
                }
            })
            .collect();
        serde_json::to_string(&Notice { gaps }).unwrap_or_default()
    }

    /// Takes the retained events to send before anything live.
    pub fn take_replay(&mut self) -> VecDeque<Delivery> {
        std::mem::take(&mut self.replay)
    }

    /// The client's queue.
    pub fn queue(&self) -> &Arc<ClientQueue> {
        &self.queue
    }

    /// Moves queued live events into `into` (which must be empty), dropping duplicates of the
    /// replay, or registers the task to be woken when more arrive or the queue closes.
    pub fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Delivery>,
    ) -> Poll<Drained> {
        loop {
            let drained = std::task::ready!(self.queue.poll_drain(cx, into));
            if drained != Drained::Events || self.undeduplicated == 0 {
                return Poll::Ready(drained);
            }
            self.drop_replayed(into);
            if !into.is_empty() {
                return Poll::Ready(Drained::Events);
            }
        }
    }

    fn drop_replayed(&mut self, events: &mut VecDeque<Delivery>) {
        let before = events.len();
        let mut released = 0;
        events.retain(|d| {
            let topic = &mut self.topics[d.topic_index as usize];
            let Some(live_after) = topic.live_after else { return true };
            if d.event.id.seq <= live_after {
                released += d.event.sse.frame.len();
                return false;
            }
            topic.live_after = None;
            self.undeduplicated -= 1;
            true
        });
        if events.len() != before {
            self.queue.release(released);
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
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

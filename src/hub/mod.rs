//! The hub: the publish and subscribe API of one node, used by every edge (HTTP publish, SSE,
//! WebSocket) and by in-process callers (benchmarks, fuzzing), on top of the registry and one
//! seam, the [`Sequencer`], through which events get their ids and reach the topic logs: on a
//! single node directly, in cluster mode through Redis and the relay. The hub asks the same
//! things of both, so no caller needs to know which mode the node runs in.
//!
//! A [`Subscription`] is one subscriber's reading: the topics it follows in canonical (sorted)
//! order, its cursor on each topic's log, and the gaps its resume could not avoid. Its writer
//! calls [`Subscription::poll_events`] to take what was published since. Dropping it
//! unsubscribes from every topic.
//!
//! The hub also runs the sweeper that evicts subscribers whose writers stopped reading.

mod idempotency;
mod pacing;
mod roster;
mod sequencer;
mod subscription;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use crate::event::{
    Cursor, Event, EventData, EventId, EventName, IdError, IdempotencyKey, TopicName, Wire,
};
use crate::metrics::{EvictReason, Metrics, Rejection, Transport};
use crate::registry::{HistoryLimits, Registry, Subscriber, TopicLimit};
pub use crate::relay::Ticket;
use crate::relay::{RelayConfig, RelayError, RelayStartError};
use sequencer::Sequencer;

pub(crate) use crate::registry::Closed;
pub(crate) use crate::registry::ConnectionCloser;
pub(crate) use pacing::WritePacing;
pub(crate) use roster::Roster;
pub(crate) use subscription::ReadsAfter;
pub use subscription::{Polled, Subscription};

/// Topics dropped after which the allocator is asked to return free memory.
const TRIM_AFTER_REAPED: usize = 1024;

/// How the process's allocator returns the free memory it keeps, if the program set one
/// ([`set_free_memory_release`]; the crier binary runs on jemalloc).
static FREE_MEMORY_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Tells the hub how the process's allocator returns the free memory it keeps to the system,
/// once a flood of topics is dropped; without it, glibc's `malloc_trim`.
pub fn set_free_memory_release(release: fn()) {
    let _ = FREE_MEMORY_RELEASE.set(release);
}

/// Asks the allocator to return the free memory it keeps to the system. glibc's malloc keeps
/// what a flood of topics freed in its arenas (fragmented, so not at the top of the heap, where
/// it would return it by itself); `malloc_trim` releases those pages too.
fn release_free_memory() {
    if let Some(release) = FREE_MEMORY_RELEASE.get() {
        return release();
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Limits the hub enforces.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Events retained per topic for resume.
    pub history: usize,
    /// How far (in bytes of its own wire format) a subscriber may fall behind a topic before it is
    /// evicted.
    pub max_lag_bytes: usize,
    /// Largest event payload accepted.
    pub max_event_bytes: usize,
    /// Most topics one stream may follow.
    pub max_topics_per_stream: usize,
    /// A topic with no subscriber and no event for this long is dropped with its history.
    pub topic_idle_ttl: Duration,
    /// Most topics the node holds at once.
    pub max_topics: usize,
    /// How long a publish's idempotency key is remembered (on a single node; in cluster mode
    /// the relay's configuration says).
    pub idempotency_window: Duration,
    /// The server's own logs that keep a number of events of their own for resume, not
    /// `history` (an edge's log of record).
    pub log_histories: Vec<(TopicName, usize)>,
    /// The longest a busy stream gathers events before it writes them (0: never).
    pub write_delay: Duration,
    /// Stream writes per second the write delay adapts to keep the node near (0: the delay
    /// is always `write_delay`).
    pub writes_per_sec: u64,
}

/// How a publish is made, beyond its event.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// A retry with the same key (to the same topic) within the window publishes nothing and
    /// answers the first publish's id.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Lets the caller withdraw a cluster publish still queued for Redis (then it is never
    /// published).
    pub ticket: Option<Arc<Ticket>>,
}

/// What a publish got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: EventId,
    /// The id is an earlier publish's with the same idempotency key: nothing was published.
    pub replayed: bool,
}

impl HubConfig {
    /// The registry of a node whose topics without subscribers are dropped after `idle_ttl`.
    fn registry(&self, idle_ttl: Duration) -> Registry {
        let history = HistoryLimits::new(self.history, self.log_histories.clone());
        Registry::with_limits(history, idle_ttl, self.max_topics)
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: 1000,
            max_lag_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            max_topics_per_stream: 64,
            topic_idle_ttl: Duration::from_secs(600),
            max_topics: 1_000_000,
            idempotency_window: Duration::from_secs(300),
            log_histories: Vec::new(),
            write_delay: Duration::ZERO,
            writes_per_sec: 0,
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
    /// The topic is new and the node holds as many topics as it may.
    #[error(transparent)]
    TopicLimit(#[from] TopicLimit),
}

impl PublishError {
    /// Whether the event may have been published all the same (sent to Redis, no answer).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, PublishError::Unavailable(RelayError::OutcomeUnknown(_)))
    }
}

/// Why a subscription, or a topic added to one, was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// No topic was given to a stream that needs one.
    #[error("at least one topic query parameter is required")]
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
    /// The topic is already followed.
    #[error("already subscribed to this topic")]
    AlreadySubscribed,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Cluster mode: the topic's state could not be read from Redis.
    #[error(transparent)]
    Unavailable(#[from] RelayError),
    /// A topic is new and the node holds as many topics as it may.
    #[error(transparent)]
    TopicLimit(#[from] TopicLimit),
}

/// What a new subscription asks for.
pub struct SubscriptionRequest {
    /// The topics, in any order, duplicates allowed.
    topics: Vec<TopicName>,
    /// Where to resume: an event id for one topic, a cursor for several.
    last_event_id: Option<String>,
    /// The wire format the subscriber is sent; its lag is counted in those bytes.
    wire: Wire,
    /// Told to drop the subscriber's connection if it is evicted.
    closer: Option<Arc<dyn ConnectionCloser>>,
    /// Where to start on each topic (in `topics`' order), when given one by one.
    starts: Option<Vec<Option<EventId>>>,
    /// Links two topics causally ([`Subscription::link_causally`]).
    causal: Option<ReadsAfter>,
}

impl SubscriptionRequest {
    /// A subscription to `topics` in `wire`, resuming after `last_event_id` if given (an event
    /// id for one topic, a cursor for several).
    pub fn new(topics: Vec<TopicName>, last_event_id: Option<String>, wire: Wire) -> Self {
        SubscriptionRequest {
            topics,
            last_event_id,
            wire,
            closer: None,
            starts: None,
            causal: None,
        }
    }

    /// A subscription to `topics` in `wire`, each starting after its own position (live if
    /// none).
    pub(crate) fn starting_at(starts: Vec<(TopicName, Option<EventId>)>, wire: Wire) -> Self {
        let (topics, starts) = starts.into_iter().unzip();
        SubscriptionRequest {
            topics,
            last_event_id: None,
            wire,
            closer: None,
            starts: Some(starts),
            causal: None,
        }
    }

    /// Links the two topics causally by `reads_after` ([`Subscription::link_causally`]).
    pub(crate) fn linked_causally(mut self, reads_after: ReadsAfter) -> Self {
        self.causal = Some(reads_after);
        self
    }

    /// Has `closer` drop the subscriber's connection if it is evicted.
    pub(crate) fn closed_by(mut self, closer: Arc<dyn ConnectionCloser>) -> Self {
        self.closer = Some(closer);
        self
    }
}

/// The publish/subscribe core of one node.
pub struct Hub {
    registry: Arc<Registry>,
    sequencer: Sequencer,
    config: HubConfig,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    roster: Roster,
    /// How long busy streams gather events before writing.
    pacing: Arc<WritePacing>,
}

impl Hub {
    /// A single node: ids are drawn here, with a fresh epoch.
    pub fn local(config: HubConfig, metrics: Arc<Metrics>) -> Self {
        let registry = Arc::new(config.registry(config.topic_idle_ttl));
        let sequencer = Sequencer::local(registry.clone(), &metrics, config.idempotency_window);
        let roster = Roster::Local(Default::default());
        let pacing = Arc::new(WritePacing::new(config.write_delay, config.writes_per_sec));
        let draining = AtomicBool::new(false);
        Hub { registry, sequencer, config, metrics, draining, roster, pacing }
    }

    /// A node of the cluster behind `relay`'s Redis: publishes go through Redis and topics
    /// follow it. Starts connecting at once, on the current runtime; [`Hub::is_ready`] says when
    /// the link is up.
    pub fn cluster(
        config: HubConfig,
        metrics: Arc<Metrics>,
        relay: &RelayConfig,
    ) -> Result<Self, RelayStartError> {
        // A node holds (and hears) a topic while it has readers, and for the grace period
        // after the last one leaves: what arrives meanwhile does not keep it.
        let registry = Arc::new(config.registry(relay.interest_grace));
        let sequencer = Sequencer::relay(registry.clone(), &metrics, relay)?;
        let roster = match &sequencer {
            Sequencer::Relay(relay) => Roster::Cluster(relay.roster().clone()),
            Sequencer::Local(_) => Roster::Local(Default::default()),
        };
        let pacing = Arc::new(WritePacing::new(config.write_delay, config.writes_per_sec));
        let draining = AtomicBool::new(false);
        Ok(Hub { registry, sequencer, config, metrics, draining, roster, pacing })
    }

    /// Whether the node can serve: always on a single node; in cluster mode, while its link
    /// to Redis is up and caught up.
    pub fn is_ready(&self) -> bool {
        self.sequencer.is_ready()
    }

    /// Whether publishes go through Redis, where one may wait in a queue that a
    /// [`Ticket`] can withdraw it from.
    pub(crate) fn is_relayed(&self) -> bool {
        matches!(self.sequencer, Sequencer::Relay(_))
    }

    /// Who holds what, node by node (see [`Roster`]).
    pub(crate) fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Keeps `topic` whoever follows it: never dropped for idleness, its keys in Redis kept
    /// fresh in cluster mode. For a log of record beyond its readers (an edge's own log).
    pub(crate) fn pin(&self, topic: TopicName) {
        self.registry.pin(topic);
    }

    /// The hub's limits.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The id of the last event of `topic` this node holds, if it holds the topic.
    pub fn head(&self, topic: &str) -> Option<EventId> {
        self.registry.topic(topic).map(|topic| topic.head())
    }

    /// Calls `visit` with each event of `topic` this node holds for resume, oldest first,
    /// until it answers `false`; returns the head when the visit started, or `None` if the
    /// node does not hold the topic.
    pub fn visit_held(&self, topic: &str, visit: impl FnMut(&Event) -> bool) -> Option<EventId> {
        self.registry.topic(topic).map(|topic| topic.visit_held(visit))
    }

    /// Publishes an event and returns its id once it is accepted: on a single node once it is
    /// in its topic's log, from which every subscriber's writer takes it; in cluster mode once
    /// Redis has it (it reaches subscribers, here too, through the relay).
    pub async fn publish(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<EventId, PublishError> {
        let published = self.publish_with(topic, name, data, PublishOptions::default()).await;
        published.map(|published| published.id)
    }

    /// [`Hub::publish`] with an idempotency key and a ticket to withdraw it by.
    pub async fn publish_with(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
        options: PublishOptions,
    ) -> Result<Published, PublishError> {
        if data.len() > self.config.max_event_bytes {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max: self.config.max_event_bytes,
            });
        }
        let published = self.sequencer.publish(topic, name, data, options).await;
        if let Err(PublishError::TopicLimit(_)) = published {
            self.metrics.rejected(Rejection::TopicLimit);
        }
        let new = published.as_ref().is_ok_and(|published| !published.replayed);
        self.metrics.events_published.increment(u64::from(new));
        published
    }

    /// Publishes `events` in their order (a batch): each as [`Hub::publish_with`] would, and
    /// in cluster mode through Redis together, so the batch costs one round trip rather than
    /// one per event. Their answers, in order.
    pub async fn publish_group(
        &self,
        events: Vec<(TopicName, Option<EventName>, EventData, PublishOptions)>,
    ) -> Vec<Result<Published, PublishError>> {
        let max = self.config.max_event_bytes;
        let (mut sized, mut results): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for (index, event) in events.into_iter().enumerate() {
            match event.2.len() {
                size if size > max => results.push(Some(Err(PublishError::TooLarge { size, max }))),
                _ => {
                    sized.push((index, event));
                    results.push(None);
                }
            }
        }
        let (indexes, sized): (Vec<usize>, Vec<_>) = sized.into_iter().unzip();
        for (index, published) in indexes.into_iter().zip(self.sequencer.publish_group(sized).await)
        {
            if let Err(PublishError::TopicLimit(_)) = published {
                self.metrics.rejected(Rejection::TopicLimit);
            }
            let new = published.as_ref().is_ok_and(|published| !published.replayed);
            self.metrics.events_published.increment(u64::from(new));
            results[index] = Some(published);
        }
        results.into_iter().flatten().collect()
    }

    /// Subscribes a new subscriber to `request.topics`, resuming after `request.last_event_id` if
    /// given. In cluster mode, topics the node has not seen and positions it has not reached
    /// yet are read from Redis first.
    pub async fn subscribe(
        &self,
        request: SubscriptionRequest,
    ) -> Result<Subscription, SubscribeError> {
        let subscribed = self.start_subscription(request).await;
        if let Err(SubscribeError::TopicLimit(_)) = subscribed {
            self.metrics.rejected(Rejection::TopicLimit);
        }
        subscribed
    }

    async fn start_subscription(
        &self,
        request: SubscriptionRequest,
    ) -> Result<Subscription, SubscribeError> {
        let SubscriptionRequest { mut topics, last_event_id, wire, closer, starts, causal } =
            request;
        let wanted: Vec<(TopicName, Option<EventId>)> = match starts {
            Some(starts) => {
                let mut wanted: Vec<_> = topics.into_iter().zip(starts).collect();
                wanted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                wanted.dedup_by(|a, b| a.0 == b.0);
                wanted
            }
            None => {
                topics.sort_unstable();
                topics.dedup();
                let resume = match last_event_id.as_deref() {
                    None => None,
                    Some(text) if topics.len() == 1 => Some(vec![text.parse::<EventId>()?]),
                    Some(text) => Some(Cursor::parse(text, topics.len())?.0),
                };
                topics
                    .into_iter()
                    .enumerate()
                    .map(|(index, name)| (name, resume.as_ref().map(|ids| ids[index])))
                    .collect()
            }
        };
        if wanted.len() > self.config.max_topics_per_stream {
            return Err(SubscribeError::TooManyTopics {
                count: wanted.len(),
                max: self.config.max_topics_per_stream,
            });
        }
        if self.is_draining() {
            return Err(SubscribeError::ShuttingDown);
        }
        self.sequencer.prepare(&wanted).await?;

        let subscriber = self.subscriber(wire, closer);
        let mut subscription =
            Subscription::new(subscriber, wanted.len(), self.pacing.clone(), self.metrics.clone());
        for (name, resume) in wanted {
            subscription.start_on(&self.sequencer, &name, resume)?;
        }
        if let Some(reads_after) = causal {
            subscription.link_causally(reads_after);
        }
        // Pairs with the fence in `shutdown`: either its scan closes this subscriber, or we see it.
        fence(Ordering::SeqCst);
        if self.is_draining() {
            subscription.close(Closed::Shutdown);
        }
        Ok(subscription)
    }

    fn subscriber(&self, wire: Wire, closer: Option<Arc<dyn ConnectionCloser>>) -> Arc<Subscriber> {
        Arc::new(Subscriber::new(self.config.max_lag_bytes, wire, closer))
    }

    /// Makes sure this node can add `topic`, resuming after `last_event_id`, to a live
    /// subscription with `Subscription::add_topic`: in cluster mode, reads what the node
    /// does not hold yet from Redis. The future owns what it needs, so a connection can keep
    /// it while it goes on serving.
    pub fn prepare_topic(
        self: &Arc<Self>,
        topic: TopicName,
        last_event_id: Option<EventId>,
    ) -> impl Future<Output = Result<(), SubscribeError>> + Send + 'static {
        let hub = self.clone();
        async move {
            hub.sequencer.prepare(&[(topic, last_event_id)]).await?;
            Ok(())
        }
    }

    /// Starts draining: refuses new subscriptions and closes every subscriber for shutdown, so each
    /// stream ends once it has written what is already published.
    pub fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for topic in self.registry.topics() {
            topic.close_subscribers(Closed::Shutdown);
        }
    }

    /// Whether any subscriber reads any topic (an open stream).
    pub fn has_readers(&self) -> bool {
        self.registry.topics().iter().any(|topic| !topic.readers().is_empty())
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Evicts every subscriber whose writer has fallen further behind than its budget or the
    /// log allows (typically one whose socket stopped draining), and drops the topics idle for
    /// longer than `topic_idle_ttl`; returns how many subscribers were evicted.
    pub fn sweep(&self) -> usize {
        self.sweep_topics().evicted
    }

    fn sweep_topics(&self) -> crate::registry::Swept {
        let swept = self.registry.sweep(|reader| {
            let evicted = reader.subscriber.close(Closed::Evicted);
            if evicted {
                let transport = Transport::of(reader.subscriber.wire());
                self.metrics.evicted(transport, EvictReason::SlowConsumer);
            }
            evicted
        });
        if swept.reaped > 0 {
            self.metrics.topics.decrement(swept.reaped as f64);
            self.metrics.topics_reaped.increment(swept.reaped as u64);
        }
        swept
    }

    /// Runs [`Hub::sweep`] every `interval`, forever, and adapts the write delay to the
    /// writes since the last; after many topics were dropped, hands the memory they held back
    /// to the system.
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reaped_since_trim = 0;
        // Sweeps until a second trim: what the dropped topics' readers and epochs held is
        // freed a little after the topics themselves.
        let mut second_trim_in: Option<u32> = None;
        loop {
            tick.tick().await;
            self.pacing.adjust(self.metrics.stream_writes(), tokio::time::Instant::now());
            self.metrics.write_delay.set(self.pacing.delay().as_secs_f64());
            let reaped = self.sweep_topics().reaped;
            reaped_since_trim += reaped;
            // Once a burst of drops is over (or every so often during a long one).
            if (reaped == 0 && reaped_since_trim >= TRIM_AFTER_REAPED)
                || reaped_since_trim >= 16 * TRIM_AFTER_REAPED
            {
                reaped_since_trim = 0;
                release_free_memory();
                second_trim_in = Some(10);
            } else if let Some(sweeps) = second_trim_in {
                second_trim_in = sweeps.checked_sub(1);
                if sweeps == 0 {
                    release_free_memory();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

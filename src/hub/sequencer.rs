//! The seam between the hub and cluster mode: how an event gets its id and reaches its topic's
//! log, and where a reader's topics come from.
//!
//! Two implementations, the same four operations:
//! - **local** (a single node): the topic's order assigns the next id in the node's epoch and
//!   the event is appended at once; topics are created on first use.
//! - **relay** (cluster mode): Redis assigns the id, and the relay's link appends what Redis
//!   publishes, on every node alike; topics are created by the link from Redis.
//!
//! An enum rather than a trait object: both are known at compile time, and a local publish
//! stays a plain call, with no boxed future per event: its answer is ready when
//! [`Sequencer::publish`] returns, and only the relay's is a future (boxed, so it does not grow
//! the local one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Gauge, Histogram};

use super::idempotency::Remembered;
use super::{PublishError, PublishOptions, Published, SubscribeError};
use crate::codec::Draft;
use crate::event::{EventData, EventId, EventName, TopicName};
use crate::metrics::Metrics;
use crate::registry::{Registry, Topic, TopicLimit, Unpublished};
use crate::relay::{Relay, RelayConfig, RelayStartError, RelayedEvent};

/// How events get their ids and reach the topic logs.
pub(super) enum Sequencer {
    /// A single node.
    Local(Local),
    /// A node of a cluster joined through Redis.
    Relay(Relay),
}

/// The single-node sequencer.
pub(super) struct Local {
    registry: Arc<Registry>,
    /// Idempotency keys of recent publishes.
    remembered: Remembered,
    /// `crier_topics`.
    topics: Gauge,
    /// `crier_publish_duration_seconds`.
    publish_duration: Histogram,
}

impl Sequencer {
    pub(super) fn local(
        registry: Arc<Registry>,
        metrics: &Metrics,
        idempotency_window: std::time::Duration,
    ) -> Self {
        Sequencer::Local(Local {
            registry,
            remembered: Remembered::new(idempotency_window),
            topics: metrics.topics.clone(),
            publish_duration: metrics.publish_duration.clone(),
        })
    }

    pub(super) fn relay(
        registry: Arc<Registry>,
        metrics: &Metrics,
        config: &RelayConfig,
    ) -> Result<Self, RelayStartError> {
        Relay::start(registry, metrics, config).map(Sequencer::Relay)
    }

    /// Gives the event its id and puts it on its way to every reader of its topic; the answer
    /// is its id once the event is accepted. On a single node the event is published by this
    /// call (callers call it from inside their own futures, which stay lazy).
    pub(super) fn publish(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
        options: PublishOptions,
    ) -> Publishing<'_> {
        match self {
            Sequencer::Local(local) => {
                Publishing::Done(Some(local.publish_with(topic, name, data, options, &mut None)))
            }
            Sequencer::Relay(relay) => {
                let topic = topic.clone();
                let PublishOptions { idempotency_key, ticket } = options;
                Publishing::Relayed(Box::pin(async move {
                    let ticket = ticket.unwrap_or_default();
                    let (id, replayed) =
                        relay.publish(topic, name, data, idempotency_key, ticket).await?;
                    Ok(Published { id, replayed })
                }))
            }
        }
    }

    /// Publishes `events` in their order, as [`Sequencer::publish`] does each: on a single
    /// node one after the other; in cluster mode through Redis together (one pipeline), which
    /// assigns their ids in that order.
    pub(super) async fn publish_group(
        &self,
        events: Vec<(TopicName, Option<EventName>, EventData, PublishOptions)>,
    ) -> Vec<Result<Published, PublishError>> {
        let relay = match self {
            Sequencer::Local(local) => {
                // A batch's events mostly go to a few topics: each is looked up once in a run.
                let mut last_topic = None;
                return events
                    .into_iter()
                    .map(|(topic, name, data, options)| {
                        local.publish_with(&topic, name, data, options, &mut last_topic)
                    })
                    .collect();
            }
            Sequencer::Relay(relay) => relay,
        };
        let events = events
            .into_iter()
            .map(|(topic, name, data, options)| RelayedEvent {
                topic,
                name,
                data,
                idempotency_key: options.idempotency_key,
                ticket: options.ticket.unwrap_or_default(),
            })
            .collect();
        let answers = relay.publish_group(events).await;
        answers
            .into_iter()
            .map(|answer| {
                let (id, replayed) = answer?;
                Ok(Published { id, replayed })
            })
            .collect()
    }

    /// Makes sure the node's copies of these topics can serve a reader resuming after the
    /// given positions (local: always).
    pub(super) async fn prepare(
        &self,
        wanted: &[(TopicName, Option<EventId>)],
    ) -> Result<(), SubscribeError> {
        match self {
            Sequencer::Local(_) => Ok(()),
            Sequencer::Relay(relay) => {
                let registry = relay.registry();
                let new = wanted.iter().filter(|(name, _)| registry.topic(name.as_str()).is_none());
                registry.has_room(new.count())?;
                Ok(Box::pin(relay.prepare(wanted)).await?)
            }
        }
    }

    /// The node's copy of `name` for a new reader: created on first use on a single node; in
    /// cluster mode, the copy [`Sequencer::prepare`] made sure of.
    pub(super) fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, SubscribeError> {
        match self {
            Sequencer::Local(local) => Ok(local.topic(name)?),
            Sequencer::Relay(relay) => Ok(relay.topic(name)?),
        }
    }

    /// Whether the node can serve.
    pub(super) fn is_ready(&self) -> bool {
        match self {
            Sequencer::Local(_) => true,
            Sequencer::Relay(relay) => relay.is_connected(),
        }
    }
}

/// The answer to [`Sequencer::publish`].
pub(super) enum Publishing<'a> {
    /// Published already, or refused (a single node).
    Done(Option<Result<Published, PublishError>>),
    /// Waiting for Redis.
    Relayed(Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send + 'a>>),
}

impl Future for Publishing<'_> {
    type Output = Result<Published, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Publishing::Done(id) => Poll::Ready(id.take().expect("polled after completion")),
            Publishing::Relayed(future) => future.as_mut().poll(cx),
        }
    }
}

impl Local {
    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, TopicLimit> {
        let (topic, created) = self.registry.topic_or_create(name)?;
        if created {
            self.topics.increment(1);
        }
        Ok(topic)
    }

    /// Publishes, or answers the earlier publish's id if the idempotency key was seen;
    /// `last_topic` is the topic the caller published to last, kept for the next publish.
    fn publish_with(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
        options: PublishOptions,
        last_topic: &mut Option<Arc<Topic>>,
    ) -> Result<Published, PublishError> {
        match options.idempotency_key {
            None => self
                .publish(topic, name, data, last_topic)
                .map(|id| Published { id, replayed: false }),
            Some(key) => {
                self.remembered.publish(topic, key, || self.publish(topic, name, data, last_topic))
            }
        }
    }

    fn publish(
        &self,
        topic: &TopicName,
        name: Option<EventName>,
        data: EventData,
        last_topic: &mut Option<Arc<Topic>>,
    ) -> Result<EventId, PublishError> {
        let started = Instant::now();
        // Encoded before the topic's order is taken: only the id line waits for it.
        let mut draft = Some(Draft::new(topic, name.as_ref(), &data));
        // The frames are finished only by the publish that takes the event.
        let mut frames = |id| draft.take().expect("an event is published once").finish(id);
        let mut copy = match last_topic.take() {
            Some(last) if last.name() == topic => last,
            _ => self.topic(topic)?,
        };
        let mut unpublished = Unpublished { name, data };
        let event = loop {
            let Unpublished { name, data } = unpublished;
            match copy.publish(name, data, &mut frames) {
                Ok(event) => break event,
                // Dropped for idleness just now: the next lookup makes a new copy.
                Err(back) => {
                    unpublished = back;
                    copy = self.topic(topic)?;
                }
            }
        };
        *last_topic = Some(copy);
        self.publish_duration.record(started.elapsed().as_secs_f64());
        Ok(event.id)
    }
}

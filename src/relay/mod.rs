//! Cluster mode: the Redis relay that makes several nodes act as one (DESIGN decision 6).
//!
//! - **Publish** ([`Relay::publish`]): one atomic Lua script per event takes the topic's next
//!   sequence number, appends the envelope to the topic's capped stream and publishes it;
//!   batched into pipelines under load ([`publisher`]). The caller gets the id once Redis has
//!   the event, or an error (answered 503) if Redis could not be reached.
//! - **Relay in** ([`link`]): one Pub/Sub connection per node receives every envelope and
//!   appends it to the node's copy of the topic; the publishing node delivers its own events
//!   the same way, so every node has the same ids in the same order.
//! - **Catch-up**: after a reconnect, on a sequence jump, or when a subscriber needs a topic the
//!   node has not seen (or a position it has not reached yet), the link reads the topic's
//!   stream. Events Redis no longer has become a `crier.gap` notice, never a silent hole.
//!
//! The stored format is in [`scripts`], the envelope in [`envelope`].

mod commands;
pub mod envelope;
mod link;
mod publisher;
pub mod scripts;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::event::{EventData, EventId, EventName, TopicName};
use crate::hub::Hub;
use crate::metrics::RelayMetrics;
use crate::registry::MIN_LOG_EVENTS;

/// How a node reaches Redis.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// `redis://…` URL of the Redis; with `cluster`, of one or more masters of a Redis Cluster.
    pub urls: Vec<String>,
    /// Speak the Redis Cluster protocol.
    pub cluster: bool,
    /// Publish workers, each with a pooled connection (the pool has one more, for catch-up
    /// reads).
    pub pool_size: usize,
}

/// Why Redis could not serve a request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RelayError {
    /// Redis is unreachable or failed the request; nothing was half-done.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayStartError {
    /// A URL is not a Redis URL.
    #[error("bad Redis URL: {0}")]
    Url(#[from] redis::RedisError),
    /// No URL was given.
    #[error("no Redis URL")]
    NoUrl,
    /// The pool could not be built.
    #[error("cannot build the Redis pool: {0}")]
    Pool(String),
}

/// Queued publishes beyond which publishers wait for room.
const PUBLISH_QUEUE: usize = 64 << 10;

/// The relay of one node: the publish queue and the link's request queue.
pub struct Relay {
    publishes: mpsc::Sender<publisher::PublishJob>,
    syncs: mpsc::Sender<link::SyncJob>,
    shared: Arc<Shared>,
}

/// What the relay's tasks and the node share.
struct Shared {
    /// The link is up and caught up.
    connected: AtomicBool,
    /// How many times the link has come up: a command connection taken before the last time
    /// may lead to a Redis that has restarted since.
    links: AtomicU64,
    metrics: RelayMetrics,
}

impl Relay {
    /// Connects `hub` to Redis: starts the publish workers and the Pub/Sub link. Returns at
    /// once; the link connects (and reconnects) in the background, and [`Relay::is_connected`]
    /// says when it is up.
    pub fn start(hub: &Arc<Hub>, config: &RelayConfig) -> Result<Relay, RelayStartError> {
        let clients = config
            .urls
            .iter()
            .map(|url| redis::Client::open(url.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err(RelayStartError::NoUrl);
        }
        // One connection per publish worker, which keeps it while busy, and one for the link's
        // catch-up reads.
        let pool = Arc::new(commands::Commands::new(config, config.pool_size.max(1) + 1)?);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            links: AtomicU64::new(0),
            metrics: hub.metrics().relay(),
        });
        let stream_len = hub.registry().history_limit().max(MIN_LOG_EVENTS);
        let (publishes, publish_jobs) = mpsc::channel(PUBLISH_QUEUE);
        publisher::spawn(pool.clone(), publish_jobs, config.pool_size, stream_len, shared.clone());
        let (syncs, sync_jobs) = mpsc::channel(1024);
        let link = link::Link::new(
            Arc::downgrade(hub),
            clients,
            pool,
            sync_jobs,
            shared.clone(),
            stream_len,
        );
        tokio::spawn(link.run());
        Ok(Relay { publishes, syncs, shared })
    }

    /// Publishes through Redis; returns the id Redis assigned once it has the event.
    pub async fn publish(
        &self,
        topic: TopicName,
        name: Option<EventName>,
        data: EventData,
    ) -> Result<EventId, RelayError> {
        let stopped = || RelayError::Unavailable("the relay has stopped".into());
        let (reply, answer) = oneshot::channel();
        let job = publisher::PublishJob { topic, name, data, queued: Instant::now(), reply };
        self.publishes.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Brings the node's copies of `topics` up to date with Redis (creating them if the node
    /// has none), so a subscriber can start on them or resume a position the node has not
    /// reached yet.
    pub async fn sync(&self, topics: Vec<TopicName>) -> Result<(), RelayError> {
        let stopped = || RelayError::Unavailable("the relay has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.syncs.send(link::SyncJob { topics, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Whether the Pub/Sub link is up and caught up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.shared.metrics
    }
}

/// Jittered exponential backoff between reconnection attempts.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// The next delay: doubling from [`Self::FIRST`] up to [`Self::MAX`], each drawn
    /// uniformly from its upper half so nodes that lost Redis together do not return together.
    fn next_delay(&mut self) -> Duration {
        let ceiling = Self::FIRST.saturating_mul(1 << self.attempt.min(10)).min(Self::MAX);
        self.attempt += 1;
        let half = ceiling.as_micros() as u64 / 2;
        Duration::from_micros(half + fastrand::u64(0..=half))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        for (i, delay) in delays.iter().enumerate() {
            let ceiling = (Backoff::FIRST * (1 << i)).min(Backoff::MAX);
            assert!(*delay >= ceiling / 2 && *delay <= ceiling, "{i}: {delay:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Backoff::FIRST);
    }
}

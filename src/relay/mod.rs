//! Cluster mode: the Redis relay that makes several nodes act as one (DESIGN decision 6).
//!
//! - **Publish** ([`Relay::publish`]): one atomic Lua script per event takes the topic's next
//!   sequence number, appends the envelope to the topic's capped stream and publishes it;
//!   batched into pipelines under load ([`publisher`]). The caller gets the id once Redis has
//!   the event, or an error (answered 503) if Redis could not be reached.
//! - **Relay in** ([`link`]): a node hears only the topics it holds (those with readers, and for
//!   `--interest-grace` after the last one leaves), each on its own channel (a shard channel
//!   in the topic's slot on a Redis Cluster), and appends every envelope to its copy of the
//!   topic; a publishing node with readers delivers its own events the same way, so every node
//!   has the same ids in the same order. The work is spread over lanes, one task each.
//! - **Catch-up**: after a reconnect, on a sequence jump, when a channel moves to another
//!   Redis Cluster node, or when a subscriber needs a topic the node does not hold (or a
//!   position it has not reached yet), the link reads the topic's stream. Events Redis no
//!   longer has become a `crier.gap` notice, never a silent hole.
//!
//! The relay knows the registry, not the hub: the hub hands it the node's registry and asks it
//! to publish, to prepare topics for readers, and whether it is connected; its link is the only
//! writer of the node's topics. The stored format is in [`scripts`], the envelope between nodes
//! in [`crate::codec::envelope`].

mod catch_up;
mod channels;
mod commands;
mod link;
mod publisher;
mod pubsub;
mod roster;
mod scripts;
mod shards;

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::event::{EventData, EventId, EventName, IdempotencyKey, TopicName};
use crate::metrics::{Metrics, RelayMetrics};
use crate::registry::{Registry, Topic};
pub(crate) use roster::{HEARTBEAT as ROSTER_HEARTBEAT, RedisRoster};

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
    /// A topic's keys expire after this long without a publish (or a node reading them).
    pub key_ttl: std::time::Duration,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
    /// How long a node keeps hearing a topic after its last reader left.
    pub interest_grace: std::time::Duration,
    /// Relay lanes (tasks with their own Pub/Sub connections, topics split among them by
    /// slot); 0 picks for the machine.
    pub lanes: usize,
}

/// Where a publish is on its way to Redis, shared by its caller and the worker that sends it:
/// the caller may withdraw it while it waits in the queue; once it is sent, only Redis knows
/// whether it ran.
#[derive(Debug, Default)]
pub struct Ticket(AtomicU8);

const QUEUED: u8 = 0;
const SENT: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Ticket {
    /// Withdraws the publish if it was not sent yet: whether it is certain not to be published.
    pub fn withdraw(&self) -> bool {
        match self.0.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == WITHDRAWN,
        }
    }

    /// Marks the publish as sent, unless it was withdrawn: whether it may be sent.
    fn send(&self) -> bool {
        self.0.compare_exchange(QUEUED, SENT, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// Why Redis could not serve a request. Nothing was half-done: a publish that failed was not
/// published (but see the README on a connection lost after Redis ran the script). The
/// message names only what failed; the cause, for logs, is the error's source.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RelayError {
    /// No connection to Redis could be had.
    #[error("Redis is unreachable")]
    Connect(#[source] Cause),
    /// Redis failed the call, or the connection broke during it.
    #[error("Redis failed the call")]
    Call(#[source] Cause),
    /// A publish was sent to Redis and no answer came (the connection broke, or the caller
    /// stopped waiting): Redis may or may not have published it. Retry with the same
    /// idempotency key to find out without publishing twice.
    #[error("Redis may or may not have published the event")]
    OutcomeUnknown(#[source] Cause),
    /// Redis answered what the scripts never return.
    #[error("unexpected answer from Redis: {0}")]
    Answer(&'static str),
    /// The node's link to Redis is down; it is reconnecting.
    #[error("the Redis link is down; the node is reconnecting")]
    LinkDown,
    /// The topic's stream could not be read while Redis answered for others (on a Redis
    /// Cluster, its master is down).
    #[error("Redis could not give topic {0}")]
    TopicUnreadable(TopicName),
    /// The topic has not been read from Redis yet.
    #[error("topic {0} is not synced from Redis yet")]
    NotSynced(TopicName),
    /// The relay's tasks have stopped (the node is going away).
    #[error("the relay has stopped")]
    Stopped,
}

/// The underlying error of a [`RelayError`], shared by every publish of a failed batch.
#[derive(Clone, Debug)]
pub struct Cause(Arc<dyn StdError + Send + Sync>);

impl Cause {
    fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }

    fn message(message: impl Into<String>) -> Self {
        Cause(Arc::new(TextCause(message.into())))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// A cause known only as text (a pool's or a timeout's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TextCause(String);

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
    #[error("cannot build the Redis pool")]
    Pool(#[source] deadpool_redis::CreatePoolError),
}

/// Queued publishes beyond which publishers wait for room.
const PUBLISH_QUEUE: usize = 64 << 10;

/// One event of a group published through Redis together ([`Relay::publish_group`]).
pub(crate) struct RelayedEvent {
    pub(crate) topic: TopicName,
    pub(crate) name: Option<EventName>,
    pub(crate) data: EventData,
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    /// Withdraws the event while it is queued.
    pub(crate) ticket: Arc<Ticket>,
}

/// The relay of one node: the publish queue and the link's request queue. Dropping it stops
/// the relay's tasks.
pub(crate) struct Relay {
    publishes: mpsc::Sender<publisher::Queued>,
    /// Each lane's request queue.
    syncs: Vec<mpsc::Sender<link::SyncJob>>,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    roster: Arc<RedisRoster>,
}

/// What the relay's tasks and the node share.
struct Shared {
    /// Lanes not up and caught up: the node is connected when none is.
    lanes_down: AtomicUsize,
    /// How many times a lane has come up: a command connection taken before the last time
    /// may lead to a Redis that has restarted since.
    links: AtomicU64,
    metrics: RelayMetrics,
    /// How long a topic's keys live after their last publish or read, in milliseconds.
    key_ttl_ms: u64,
    /// How long an idempotency key is remembered, in milliseconds.
    idempotency_window_ms: u64,
}

impl Relay {
    /// Connects the node whose topics are in `registry` to Redis: starts the publish workers
    /// and the Pub/Sub link. Returns at once; the link connects (and reconnects) in the
    /// background, and [`Relay::is_connected`] says when it is up.
    pub(crate) fn start(
        registry: Arc<Registry>,
        metrics: &Metrics,
        config: &RelayConfig,
    ) -> Result<Relay, RelayStartError> {
        let seeds = config
            .urls
            .iter()
            .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(RelayStartError::NoUrl);
        }
        let lanes = if config.lanes == 0 { lanes() } else { config.lanes };
        // One connection per publish worker, which keeps it while busy, and one per lane for
        // its catch-up reads.
        let pool = Arc::new(commands::Commands::new(config, config.pool_size.max(1) + lanes)?);
        let pool_for_refresh = pool.clone();
        let relay_metrics = metrics.relay();
        relay_metrics.connected.set(0.0);
        let shared = Arc::new(Shared {
            lanes_down: AtomicUsize::new(lanes),
            links: AtomicU64::new(0),
            metrics: relay_metrics,
            key_ttl_ms: u64::try_from(config.key_ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            idempotency_window_ms: u64::try_from(config.idempotency_window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        });
        let (publishes, publish_jobs) = mpsc::channel(PUBLISH_QUEUE);
        let script = scripts::publish(config.cluster);
        publisher::spawn(
            pool.clone(),
            publish_jobs,
            script,
            config.pool_size,
            registry.history(),
            shared.clone(),
        );
        let seeds = link::Seeds { nodes: seeds, cluster: config.cluster };
        let mut syncs = Vec::with_capacity(lanes);
        for index in 0..lanes {
            let (sender, jobs) = mpsc::channel(1024);
            syncs.push(sender);
            let lane = link::Lane::new(
                (index, lanes),
                registry.clone(),
                metrics.topics.clone(),
                seeds.clone(),
                pool.clone(),
                jobs,
                shared.clone(),
            );
            tokio::spawn(lane.run());
        }
        let roster = Arc::new(RedisRoster::new(pool_for_refresh.clone()));
        tokio::spawn(keep_followed_topics(registry.clone(), pool_for_refresh, shared.clone()));
        Ok(Relay { publishes, syncs, registry, shared, roster })
    }

    /// Publishes through Redis; returns the id Redis assigned once it has the event, and
    /// whether it is the id of an earlier publish with the same idempotency key (then nothing
    /// was published). `ticket` lets the caller withdraw the publish while it is queued.
    pub(crate) async fn publish(
        &self,
        topic: TopicName,
        name: Option<EventName>,
        data: EventData,
        idempotency_key: Option<IdempotencyKey>,
        ticket: Arc<Ticket>,
    ) -> Result<(EventId, bool), RelayError> {
        let (reply, answer) = oneshot::channel();
        let queued = Instant::now();
        let event = RelayedEvent { topic, name, data, idempotency_key, ticket };
        let job = publisher::PublishJob { event, queued, reply };
        self.publishes.send(publisher::Queued::One(job)).await.map_err(|_| RelayError::Stopped)?;
        answer.await.map_err(|_| RelayError::Stopped)?
    }

    /// Publishes `events` through Redis together and in their order (one pipeline, on one
    /// connection), as [`Relay::publish`] does each; their answers, in order.
    pub(crate) async fn publish_group(
        &self,
        events: Vec<RelayedEvent>,
    ) -> Vec<Result<(EventId, bool), RelayError>> {
        let queued = Instant::now();
        let (jobs, answers): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|event| {
                let (reply, answer) = oneshot::channel();
                (publisher::PublishJob { event, queued, reply }, answer)
            })
            .unzip();
        if self.publishes.send(publisher::Queued::Group(jobs)).await.is_err() {
            return answers.iter().map(|_| Err(RelayError::Stopped)).collect();
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(answer.await.unwrap_or(Err(RelayError::Stopped)));
        }
        results
    }

    /// Makes sure the node's copies of the `wanted` topics can serve a reader resuming after
    /// the given positions: topics the node has never seen, and positions of its epoch it has
    /// not reached yet (or of another epoch), are read from Redis first.
    pub(crate) async fn prepare(
        &self,
        wanted: &[(TopicName, Option<EventId>)],
    ) -> Result<(), RelayError> {
        let needed: Vec<TopicName> = wanted
            .iter()
            .filter(|(name, resume)| match self.registry.topic(name.as_str()) {
                None => true,
                Some(topic) => resume.is_some_and(|id| {
                    let head = topic.head();
                    id.epoch != head.epoch || id.seq > head.seq
                }),
            })
            .map(|(name, _)| name.clone())
            .collect();
        if needed.is_empty() {
            return Ok(());
        }
        let lanes = self.syncs.len();
        let mut by_lane: Vec<Vec<TopicName>> = vec![Vec::new(); lanes];
        for topic in needed {
            by_lane[link::lane_of(&topic, lanes)].push(topic);
        }
        let mut answers = Vec::new();
        for (lane, topics) in by_lane.into_iter().enumerate() {
            if topics.is_empty() {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            let job = link::SyncJob { topics, reply };
            self.syncs[lane].send(job).await.map_err(|_| RelayError::Stopped)?;
            answers.push(answer);
        }
        for answer in answers {
            answer.await.map_err(|_| RelayError::Stopped)??;
        }
        Ok(())
    }

    /// The node's copy of `name`: cluster topics are created by the link, from Redis
    /// ([`Relay::prepare`]).
    pub(crate) fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, RelayError> {
        self.registry.topic(name.as_str()).ok_or_else(|| RelayError::NotSynced(name.clone()))
    }

    /// The node's registry, which the link fills.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The node's place in the cluster's roster.
    pub(crate) fn roster(&self) -> &Arc<RedisRoster> {
        &self.roster
    }

    /// Whether every lane's Pub/Sub link is up and caught up.
    pub(crate) fn is_connected(&self) -> bool {
        self.shared.lanes_down.load(Ordering::Acquire) == 0
    }
}

/// Lanes of the relay link: one per core, at most four.
fn lanes() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 4)
}

/// Topics whose keys one refresh call covers.
const REFRESH_BATCH: usize = 256;

/// Keeps the Redis keys of the topics this node has subscribers for from expiring while they
/// are quiet: their subscribers would otherwise get a `crier.gap` (a new epoch) at the next
/// event. Every third of the keys' time-to-live, their expiry is set again.
async fn keep_followed_topics(
    registry: Arc<Registry>,
    pool: Arc<commands::Commands>,
    shared: Arc<Shared>,
) {
    let every = std::time::Duration::from_millis((shared.key_ttl_ms / 3).max(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let followed = registry.followed_topics();
        if followed.is_empty() {
            continue;
        }
        let Ok(mut conn) = pool.get().await else { continue };
        for batch in followed.chunks(REFRESH_BATCH) {
            let calls = batch
                .iter()
                .flat_map(|name| {
                    let keys = scripts::TopicKeys::new(name);
                    [keys.meta, keys.log].map(|key| {
                        let mut call = redis::cmd("PEXPIRE");
                        call.arg(key).arg(shared.key_ttl_ms);
                        call
                    })
                })
                .collect();
            if let Err(e) = conn.send(calls).await {
                tracing::debug!(error = %e, "refreshing the keys of followed topics failed");
                break;
            }
        }
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

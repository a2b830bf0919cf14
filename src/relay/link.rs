//! The relay's link to Redis: one Pub/Sub connection per node that receives every envelope and
//! appends it to the node's copy of its topic, and the catch-up reads that fill what Pub/Sub
//! missed.
//!
//! The link's task is the only writer of a cluster node's topics, so each topic is appended in
//! exactly Redis's order. An envelope that continues its topic is appended; one already held is
//! skipped; anything else (a sequence jump, another epoch, a topic the node has not seen) makes
//! the link read the topic's stream first. After a reconnect the link reads every topic's
//! stream from the last sequence number it delivered before it reports itself connected.
//!
//! When the stream no longer holds what the node missed (trimmed, or Redis lost its data), the
//! node's copy of the topic is replaced ([`Registry::install`](crate::registry::Registry::install)):
//! its readers finish the old copy, get one `crier.gap` notice, and continue on the new one.
//!
//! A topic whose stream cannot be read while Redis otherwise answers (on a Redis Cluster, a
//! master that is down) is kept aside as stale and read again every second; the link stays up
//! and every other topic stays live.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metrics::Gauge;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::commands::Commands;
use super::scripts::{self, CHANNEL_PATTERN};
use super::{Backoff, Cause, RelayError, RelayMetrics, Shared};
use crate::codec::envelope::{self, Envelope};
use crate::codec::{Draft, gap};
use crate::event::{Epoch, EventId, Gap, GapReason, TopicName};
use crate::metrics::RelayErrorKind;
use crate::registry::{Registry, Topic};

/// How often the Pub/Sub connection is pinged, so a dead link is noticed while it is quiet.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a ping may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Topics caught up per pipeline.
const SYNC_BATCH: usize = 128;

/// How often the streams of stale topics are read again.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// A request to bring topics up to date with Redis.
pub(super) struct SyncJob {
    pub(super) topics: Vec<TopicName>,
    pub(super) reply: oneshot::Sender<Result<(), RelayError>>,
}

/// The link's task state.
pub(super) struct Link {
    /// The node's topics; the link is their only writer.
    registry: Arc<Registry>,
    /// `crier_topics`: topics with state on this node.
    topics: Gauge,
    /// Where the Pub/Sub connection may go: the Redis, or any master of a Redis Cluster (which
    /// forwards every publish to every shard); tried in turn.
    clients: Vec<redis::Client>,
    pool: Arc<Commands>,
    script: redis::Script,
    jobs: mpsc::Receiver<SyncJob>,
    shared: Arc<Shared>,
    stream_len: usize,
    /// Topics of this node whose streams could not be read while Redis answered for others.
    stale: BTreeSet<TopicName>,
}

/// Why the link stopped serving.
enum Stop {
    /// The connection to Redis was lost or failed: reconnect.
    Lost(RelayError),
    /// The node dropped its relay: end the task.
    NodeGone,
}

impl Link {
    pub(super) fn new(
        registry: Arc<Registry>,
        topics: Gauge,
        clients: Vec<redis::Client>,
        pool: Arc<Commands>,
        jobs: mpsc::Receiver<SyncJob>,
        shared: Arc<Shared>,
        stream_len: usize,
    ) -> Self {
        let script = scripts::sync();
        let stale = BTreeSet::new();
        Link { registry, topics, clients, pool, script, jobs, shared, stream_len, stale }
    }

    /// Connects, catches up and relays until the relay is dropped, reconnecting with backoff
    /// whenever the link is lost.
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        for attempt in 0.. {
            let client = self.clients[attempt % self.clients.len()].clone();
            match self.serve(&client, &mut backoff).await {
                Stop::NodeGone => return,
                Stop::Lost(why) => {
                    let was_connected = self.set_connected(false);
                    let cause = std::error::Error::source(&why).map(ToString::to_string);
                    if was_connected {
                        tracing::warn!(error = %why, cause, "Redis link lost; reconnecting");
                    } else {
                        tracing::debug!(error = %why, cause, "Redis link not up yet");
                    }
                }
            }
            if !self.refuse_jobs_for(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Records the link state; returns the previous one.
    fn set_connected(&self, connected: bool) -> bool {
        self.shared.metrics.connected.set(if connected { 1.0 } else { 0.0 });
        self.shared.connected.swap(connected, Ordering::AcqRel)
    }

    /// Waits `delay`, answering sync requests with an error meanwhile; `false` if the relay
    /// was dropped.
    async fn refuse_jobs_for(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                job = self.jobs.recv() => match job {
                    Some(job) => {
                        let _ = job.reply.send(Err(RelayError::LinkDown));
                    }
                    None => return false,
                },
            }
        }
    }

    /// One connection's life: subscribe, catch every topic up, then relay until it breaks.
    async fn serve(&mut self, client: &redis::Client, backoff: &mut Backoff) -> Stop {
        let lost = |e: redis::RedisError| Stop::Lost(RelayError::Connect(Cause::new(e)));
        if self.jobs.is_closed() {
            return Stop::NodeGone;
        }
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                self.shared.metrics.error(RelayErrorKind::Connect);
                return lost(e);
            }
        };
        if let Err(e) = pubsub.psubscribe(CHANNEL_PATTERN).await {
            self.shared.metrics.error(RelayErrorKind::Connect);
            return lost(e);
        }
        self.shared.links.fetch_add(1, Ordering::AcqRel);
        let (mut sink, mut messages) = pubsub.split();
        // Subscribed first, then caught up: whatever is published meanwhile is both in the
        // streams and queued on the subscription, and the copy already held is skipped.
        let topics: Vec<TopicName> =
            self.registry.live_topics().iter().map(|t| t.name().clone()).collect();
        self.stale.clear();
        if let Err(e) = self.sync(&topics, true).await {
            self.shared.metrics.error(RelayErrorKind::Sync);
            return Stop::Lost(e);
        }
        self.set_connected(true);
        backoff.reset();
        tracing::info!(topics = topics.len(), stale = self.stale.len(), "Redis link up");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(STALE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        self.shared.metrics.error(RelayErrorKind::Link);
                        let closed = Cause::message("the Pub/Sub connection closed");
                        return Stop::Lost(RelayError::Call(closed));
                    };
                    if let Err(stop) = self.on_message(&message).await {
                        return stop;
                    }
                }
                job = self.jobs.recv() => {
                    let Some(job) = job else { return Stop::NodeGone };
                    match self.sync(&job.topics, false).await {
                        Ok(unread) if unread.is_empty() => {
                            let _ = job.reply.send(Ok(()));
                        }
                        Ok(mut unread) => {
                            let topic = unread.swap_remove(0);
                            let _ = job.reply.send(Err(RelayError::TopicUnreadable(topic)));
                        }
                        Err(e) => {
                            let _ = job.reply.send(Err(e.clone()));
                            self.shared.metrics.error(RelayErrorKind::Sync);
                            return Stop::Lost(e);
                        }
                    }
                }
                _ = retry.tick(), if !self.stale.is_empty() => {
                    let stale: Vec<TopicName> = self.stale.iter().cloned().collect();
                    if let Err(e) = self.sync(&stale, true).await {
                        self.shared.metrics.error(RelayErrorKind::Sync);
                        return Stop::Lost(e);
                    }
                }
                _ = ping.tick() => {
                    let why = match tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => Cause::new(e),
                        Err(_) => Cause::message("Redis did not answer a ping"),
                    };
                    self.shared.metrics.error(RelayErrorKind::Link);
                    return Stop::Lost(RelayError::Call(why));
                }
            }
        }
    }

    /// Relays one Pub/Sub message.
    async fn on_message(&mut self, message: &redis::Msg) -> Result<(), Stop> {
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        let envelope = match envelope::decode(&payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.shared.metrics.error(RelayErrorKind::Envelope);
                tracing::warn!(error = %e, channel = %message.get_channel_name(), "skipping a malformed envelope");
                return Ok(());
            }
        };
        self.shared.metrics.received.increment(1);
        if let Some(topic) = self.registry.topic(envelope.topic.as_str()) {
            let head = topic.head();
            if head.epoch == envelope.id.epoch {
                // Normally a copy of an event already delivered (published before the last
                // catch-up read); if the node delivered another event under this id, Redis
                // forgot events and issued the id again, and the catch-up below tells.
                if envelope.id.seq <= head.seq && delivered(&topic, &envelope) {
                    return Ok(());
                }
                if envelope.id.seq == head.seq + 1 {
                    append(&topic, envelope);
                    return Ok(());
                }
            }
        }
        // A jump, another epoch, a topic new to this node, or an id issued again: the stream has
        // what is missing, and the sync script checks Redis still has what the node delivered.
        if let Err(e) = self.sync(std::slice::from_ref(&envelope.topic), false).await {
            self.shared.metrics.error(RelayErrorKind::Sync);
            return Err(Stop::Lost(e));
        }
        Ok(())
    }

    /// Brings the node's copies of `topics` up to date with their streams. `reconnect` says
    /// the events read fill what a lost link missed. Returns the topics whose streams could not
    /// be read while Redis answered for the others (kept as stale if the node has them); `Err`
    /// when Redis could not be asked at all.
    async fn sync(
        &mut self,
        topics: &[TopicName],
        reconnect: bool,
    ) -> Result<Vec<TopicName>, RelayError> {
        let mut unread = Vec::new();
        if topics.is_empty() {
            return Ok(unread);
        }
        let failed = |e: redis::RedisError| RelayError::Call(Cause::new(e));
        let mut conn = self.pool.get().await?;
        let max_entries = self.stream_len.to_string();
        for batch in topics.chunks(SYNC_BATCH) {
            let calls = || {
                batch
                    .iter()
                    .map(|name| {
                        let local = self.registry.topic(name.as_str());
                        let head = local.as_ref().map(|t| t.head());
                        let ttl = self.shared.key_ttl_ms;
                        let mut call = scripts::call(&self.script, name, ttl);
                        call.arg(head.map_or("-".to_owned(), |head| head.epoch.to_string()))
                            .arg(head.map_or(0, |head| head.seq))
                            .arg(&max_entries)
                            .arg(local.as_deref().map_or(String::new(), last_envelope_digest));
                        call
                    })
                    .collect()
            };
            let answers = conn.send_script(&self.script, calls).await.map_err(failed)?;
            for (name, answer) in batch.iter().zip(answers) {
                let state = answer
                    .map_err(failed)
                    .and_then(|value| TopicState::parse(value, &self.shared.metrics));
                let state = match state {
                    Ok(state) => state,
                    Err(e) => {
                        self.shared.metrics.error(RelayErrorKind::Sync);
                        tracing::debug!(topic = %name, error = %e, "cannot read a topic's stream");
                        if self.registry.topic(name.as_str()).is_some() {
                            self.stale.insert(name.clone());
                        }
                        unread.push(name.clone());
                        continue;
                    }
                };
                self.stale.remove(name);
                let applied = apply(&self.registry, &self.topics, name, state);
                if applied.existed && (reconnect || applied.appended > 0) {
                    self.shared.metrics.backfilled.increment(applied.appended as u64);
                }
                if applied.gap {
                    self.shared.metrics.gaps.increment(1);
                }
            }
        }
        self.shared.metrics.stale_topics.set(self.stale.len() as f64);
        Ok(unread)
    }
}

/// A topic as the sync script reports it.
#[derive(Debug)]
struct TopicState {
    /// The topic's epoch.
    epoch: Epoch,
    /// The last sequence number issued.
    seq: u64,
    /// The stream's envelopes after the node's position (all of them for another epoch).
    events: Vec<Envelope>,
}

impl TopicState {
    fn parse(value: Value, metrics: &RelayMetrics) -> Result<Self, RelayError> {
        let bad = || RelayError::Answer("the sync script's answer is not {epoch, seq, envelope…}");
        let Value::Array(items) = value else { return Err(bad()) };
        let mut items = items.into_iter();
        let epoch = match items.next() {
            Some(Value::BulkString(b)) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 36).ok())
                .and_then(Epoch::from_u64),
            _ => None,
        }
        .ok_or_else(bad)?;
        let seq = match items.next() {
            Some(Value::Int(seq)) => u64::try_from(seq).ok(),
            _ => None,
        }
        .ok_or_else(bad)?;
        let mut events = Vec::with_capacity(items.len());
        for item in items {
            let Value::BulkString(bytes) = item else { return Err(bad()) };
            match envelope::decode(&Bytes::from(bytes)) {
                Ok(envelope) if envelope.id.epoch == epoch => events.push(envelope),
                Ok(_) | Err(_) => metrics.error(RelayErrorKind::Envelope),
            }
        }
        Ok(TopicState { epoch, seq, events })
    }
}

/// What [`apply`] did to a topic.
#[derive(Debug, Default, PartialEq, Eq)]
struct Applied {
    /// The node had a copy of the topic.
    existed: bool,
    /// Events added to the node's copy (or to the new copy).
    appended: usize,
    /// Events were lost: the copy was replaced and its readers get a `crier.gap`.
    gap: bool,
}

/// Brings the node's copy of `name` to `state`: appends what continues it, or replaces it when
/// the stream cannot continue it (events trimmed away, or another epoch).
///
/// Must only run on the link's task, the only writer of cluster topics; `topics` counts the
/// topics created.
fn apply(registry: &Registry, topics: &Gauge, name: &TopicName, state: TopicState) -> Applied {
    let local = registry.topic(name.as_str());
    let mut applied = Applied { existed: local.is_some(), ..Applied::default() };
    let first = state.events.first().map(|e| e.id.seq);
    let gap = match &local {
        Some(topic) if topic.epoch() == state.epoch => {
            let head = topic.head();
            let fresh: Vec<Envelope> =
                state.events.into_iter().filter(|e| e.id.seq > head.seq).collect();
            let continues = match fresh.first() {
                Some(e) => e.id.seq == head.seq + 1,
                None => state.seq <= head.seq,
            };
            if continues {
                for envelope in fresh {
                    if !append(topic, envelope) {
                        break;
                    }
                    applied.appended += 1;
                }
                return applied;
            }
            let base = fresh.first().map_or(state.seq, |e| e.id.seq - 1);
            let gap =
                Gap { reason: GapReason::Expired, requested: head, missed: Some(base - head.seq) };
            let gap = Some(gap);
            return replace(registry, topics, name, state.epoch, base, fresh, gap, applied);
        }
        Some(topic) => {
            Some(Gap { reason: GapReason::Epoch, requested: topic.head(), missed: None })
        }
        None => None,
    };
    let base = first.map_or(state.seq, |seq| seq - 1);
    replace(registry, topics, name, state.epoch, base, state.events, gap, applied)
}

/// Installs a new copy of `name` starting after `base` and holding `events`; readers of the
/// old copy (if any) get the notice of `gap` before moving over.
#[allow(clippy::too_many_arguments)]
fn replace(
    registry: &Registry,
    topics: &Gauge,
    name: &TopicName,
    epoch: Epoch,
    base: u64,
    events: Vec<Envelope>,
    gap: Option<Gap>,
    mut applied: Applied,
) -> Applied {
    let topic = registry.new_topic(name.clone(), epoch, base);
    for envelope in events {
        if !append(&topic, envelope) {
            break;
        }
        applied.appended += 1;
    }
    let start = EventId { epoch, seq: base };
    applied.gap = gap.is_some();
    let notice = gap.map(|gap| {
        tracing::warn!(topic = %name.as_str(), reason = gap.reason.as_str(), missed = ?gap.missed, "events lost; subscribers get crier.gap");
        let part = gap::TopicGap { topic: name, gap: &gap, resumed_after: start };
        Arc::new(gap::notice(&[part], start))
    });
    if !registry.install(topic, start, notice) {
        topics.increment(1);
    }
    applied
}

/// Whether the node delivered `envelope`'s event under its id (false if the log no longer holds
/// that id).
fn delivered(topic: &Topic, envelope: &Envelope) -> bool {
    let guard = crossbeam_epoch::pin();
    topic
        .event(envelope.id.seq, &guard)
        .is_some_and(|event| event.name == envelope.name && event.data == envelope.data)
}

/// The SHA-1 (hex) of the envelope of the last event the node delivered on `topic`, as the
/// publish script stored it; empty if the log no longer holds it.
fn last_envelope_digest(topic: &Topic) -> String {
    let guard = crossbeam_epoch::pin();
    let head = topic.head();
    match topic.event(head.seq, &guard) {
        Some(event) => {
            let envelope = envelope::encode(topic.name(), head, event.name.as_ref(), &event.data);
            sha1_smol::Sha1::from(envelope).digest().to_string()
        }
        None => String::new(),
    }
}

/// Appends an envelope to a copy of its topic; `false` if it does not continue it.
fn append(topic: &Topic, envelope: Envelope) -> bool {
    let draft = Draft::new(&envelope.topic, envelope.name.as_ref(), &envelope.data);
    let frames = draft.finish(envelope.id);
    topic.append(envelope.id, envelope.name, envelope.data, frames).is_ok()
}

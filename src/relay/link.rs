//! The relay's link to Redis: the node hears only the topics it holds, each on its own
//! channel, and appends what arrives to its copy of the topic; catch-up reads fill what
//! Pub/Sub missed.
//!
//! # Interest
//!
//! In cluster mode the node's registry holds a topic while it has readers, and for the grace
//! period after the last one leaves (`--interest-grace`); the link subscribes to a topic's
//! channel exactly while the registry holds it. A reader of a topic the node does not hold
//! makes the link subscribe first, wait until Redis confirms, then read the topic's stream:
//! whatever is published meanwhile is both in the stream and queued on the subscription, and
//! the copy already held is skipped, so the reader gets history then live events with no gap
//! and no duplicate. Topics dropped from the registry are unsubscribed every second. Bursts are
//! batched: every request waiting is served by one buffer of subscribe commands per Redis node
//! and one pipelined read.
//!
//! # Lanes
//!
//! Topics are split into lanes by slot; each lane is a task with its own Pub/Sub
//! connections (one to the single Redis, or one per master of a Redis Cluster, subscribed with
//! `SSUBSCRIBE` so a message never crosses the cluster bus) and is the only writer of its
//! topics, so each topic is appended in exactly Redis's order while ingest spreads over cores.
//!
//! # Order and repair
//!
//! An envelope that continues its topic is appended; one already held is skipped; anything
//! else (a sequence jump, another epoch) makes the lane read the topic's stream first. After a
//! reconnect the lane subscribes again and reads every topic's stream from the last sequence
//! number it delivered before it reports itself connected. On a Redis Cluster, a shard channel
//! whose slot moves (Redis drops the subscription, or answers `MOVED`) or whose master is lost
//! is subscribed again at the slot's new owner, then caught up from its stream.
//!
//! When the stream no longer holds what the node missed (trimmed, or Redis lost its data), the
//! node's copy of the topic is replaced ([`Registry::install`](crate::registry::Registry::install)):
//! its readers finish the old copy, get one `crier.gap` notice, and continue on the new one.
//!
//! A topic whose stream cannot be read while Redis otherwise answers (on a Redis Cluster, a
//! master that is down) is kept aside as stale and read again every second; the lane stays up
//! and every other topic stays live.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use metrics::Gauge;
use redis::ConnectionInfo;
use tokio::sync::{mpsc, oneshot};

use super::catch_up::{self, CatchUp};
use super::channels::{Channels, ConnId, PING_TIMEOUT};
use super::commands::Commands;
use super::pubsub::{Flavor, Push};
use super::scripts;
use super::shards::{self, Layout, Node};
use super::{Backoff, Cause, RelayError, Shared};
use crate::codec::envelope;
use crate::event::TopicName;
use crate::metrics::{InterestChange, RelayErrorKind};
use crate::registry::Registry;

/// How often each Pub/Sub connection is pinged, so a dead link is noticed while it is quiet.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How often the streams of stale topics are read again, and topics the registry dropped
/// are unsubscribed.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// How often topics whose channel moved are subscribed again at their new node.
const REROUTE_EVERY: Duration = Duration::from_millis(100);

/// Most requests served by one batch of subscriptions.
const MAX_JOBS_PER_BATCH: usize = 4096;

/// The lane of `topic` among `lanes`: by slot, so on a Redis Cluster a slot's topics share one
/// lane.
pub(super) fn lane_of(topic: &TopicName, lanes: usize) -> usize {
    usize::from(shards::slot(topic)) % lanes
}

/// A request to bring topics up to date with Redis (and to hear them).
pub(super) struct SyncJob {
    pub(super) topics: Vec<TopicName>,
    pub(super) reply: oneshot::Sender<Result<(), RelayError>>,
}

/// Where a lane finds Redis.
#[derive(Clone)]
pub(super) struct Seeds {
    /// The Redis, or masters of a Redis Cluster to ask for the slot map, tried in turn.
    pub(super) nodes: Vec<ConnectionInfo>,
    pub(super) cluster: bool,
}

/// One lane's task state.
pub(super) struct Lane {
    index: usize,
    lanes: usize,
    /// The node's topics; the lane is the only writer of those in its lane.
    registry: Arc<Registry>,
    seeds: Seeds,
    jobs: mpsc::Receiver<SyncJob>,
    shared: Arc<Shared>,
    /// Catch-up reads, and this lane's stale topics.
    catch_up: CatchUp,
    /// The Pub/Sub connections, and which topic is heard where.
    channels: Channels,
    /// Held topics whose subscription was lost (slot moved, node lost): subscribed again, then
    /// caught up.
    displaced: BTreeSet<TopicName>,
    up: bool,
    /// This lane's share of `crier_relay_stale_topics`, as last reported.
    reported_stale: usize,
}

/// Why the lane stopped serving.
enum Stop {
    /// The connection to Redis was lost or failed: reconnect.
    Lost(RelayError),
    /// The node dropped its relay: end the task.
    NodeGone,
}

impl Lane {
    pub(super) fn new(
        (index, lanes): (usize, usize),
        registry: Arc<Registry>,
        topics: Gauge,
        seeds: Seeds,
        pool: Arc<Commands>,
        jobs: mpsc::Receiver<SyncJob>,
        shared: Arc<Shared>,
    ) -> Self {
        let catch_up = CatchUp::new(registry.clone(), topics, pool, shared.clone());
        Lane {
            index,
            lanes,
            registry,
            seeds,
            jobs,
            channels: Channels::new(shared.clone()),
            shared,
            catch_up,
            displaced: BTreeSet::new(),
            up: false,
            reported_stale: 0,
        }
    }

    /// Connects, catches up and relays until the relay is dropped, reconnecting with backoff
    /// whenever the link is lost.
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        for attempt in 0.. {
            match self.serve(attempt, &mut backoff).await {
                Stop::NodeGone => return,
                Stop::Lost(why) => {
                    let was_up = self.set_up(false);
                    self.channels.reset();
                    self.displaced.clear();
                    self.report_stale();
                    let cause = std::error::Error::source(&why).map(ToString::to_string);
                    if was_up {
                        tracing::warn!(lane = self.index, error = %why, cause, "Redis link lost; reconnecting");
                    } else {
                        tracing::debug!(lane = self.index, error = %why, cause, "Redis link not up yet");
                    }
                }
            }
            if !self.refuse_jobs_for(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Records the lane's state; returns the previous one. The node is connected while every
    /// lane is.
    fn set_up(&mut self, up: bool) -> bool {
        let was = std::mem::replace(&mut self.up, up);
        if was != up {
            let down = if up {
                self.shared.lanes_down.fetch_sub(1, Ordering::AcqRel) - 1
            } else {
                self.shared.lanes_down.fetch_add(1, Ordering::AcqRel) + 1
            };
            self.shared.metrics.connected.set(if down == 0 { 1.0 } else { 0.0 });
        }
        was
    }

    /// Adds this lane's stale and displaced topics (held, not live) to
    /// `crier_relay_stale_topics`.
    fn report_stale(&mut self) {
        let now = self.catch_up.stale.union(&self.displaced).count();
        let gauge = &self.shared.metrics.stale_topics;
        gauge.increment(now as f64 - self.reported_stale as f64);
        self.reported_stale = now;
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

    /// The registry's topics of this lane.
    fn own_topics(&self) -> Vec<TopicName> {
        self.registry
            .live_topics()
            .iter()
            .map(|topic| topic.name().clone())
            .filter(|name| lane_of(name, self.lanes) == self.index)
            .collect()
    }

    /// Where channels live now: the single Redis (the seeds in turn), or the Redis Cluster's
    /// slot map.
    async fn find_layout(&self, attempt: usize) -> Result<Layout, RelayError> {
        if self.seeds.cluster {
            let mut seeds: Vec<ConnectionInfo> = match &self.channels.layout {
                Some(layout) => layout.nodes().iter().map(|n| layout.connection_info(n)).collect(),
                None => Vec::new(),
            };
            seeds.extend(self.seeds.nodes.iter().cloned());
            Layout::cluster(&seeds).await.map_err(|e| RelayError::Connect(Cause::new(e)))
        } else {
            let seed = &self.seeds.nodes[attempt % self.seeds.nodes.len()];
            Layout::single(seed).ok_or_else(|| {
                RelayError::Connect(Cause::message("the Redis URL is not a TCP address"))
            })
        }
    }

    /// One link's life: find Redis, subscribe to and catch up every topic of the lane, then
    /// relay until it breaks.
    async fn serve(&mut self, attempt: usize, backoff: &mut Backoff) -> Stop {
        if self.jobs.is_closed() {
            return Stop::NodeGone;
        }
        let layout = match self.find_layout(attempt).await {
            Ok(layout) => layout,
            Err(e) => {
                self.shared.metrics.error(RelayErrorKind::Connect);
                return Stop::Lost(e);
            }
        };
        let single = if layout.flavor == Flavor::Classic { layout.nodes() } else { Vec::new() };
        self.channels.layout = Some(layout);
        // A single Redis that cannot be reached is a link down, before anything else.
        if let Some(node) = single.first()
            && let Err(e) = self.channels.connect(node).await
        {
            self.shared.metrics.error(RelayErrorKind::Connect);
            return Stop::Lost(e);
        }
        self.shared.links.fetch_add(1, Ordering::AcqRel);
        let topics = self.own_topics();
        self.catch_up.stale.clear();
        if let Err(e) = self.hear(&topics, true).await {
            self.shared.metrics.error(RelayErrorKind::Sync);
            return Stop::Lost(e);
        }
        self.set_up(true);
        backoff.reset();
        let stale = self.catch_up.stale.len();
        tracing::info!(lane = self.index, topics = topics.len(), stale, "Redis link up");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(STALE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reroute = tokio::time::interval(REROUTE_EVERY);
        reroute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                (from, push) = self.channels.next() => self.on_push(from, push).await,
                job = self.jobs.recv() => {
                    let Some(job) = job else { return Stop::NodeGone };
                    self.serve_jobs(job).await
                }
                _ = retry.tick() => {
                    self.forget_dropped().await;
                    let stale: Vec<TopicName> = self.catch_up.stale.iter().cloned().collect();
                    self.sync(&stale, true).await.map(drop)
                }
                _ = reroute.tick(), if !self.displaced.is_empty() => self.reroute().await,
                _ = ping.tick() => {
                    let mut result = Ok(());
                    for (node, why) in self.channels.ping().await {
                        result = result.and(self.lose(&node, RelayError::Call(why)));
                    }
                    result
                }
            };
            if let Err(e) = result {
                return Stop::Lost(e);
            }
        }
    }

    /// Serves `first` and every request waiting behind it with one batch.
    async fn serve_jobs(&mut self, first: SyncJob) -> Result<(), RelayError> {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_BATCH {
            match self.jobs.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut topics: Vec<TopicName> =
            jobs.iter().flat_map(|job| job.topics.iter().cloned()).collect();
        topics.sort_unstable();
        topics.dedup();
        match self.hear(&topics, false).await {
            Ok(unread) => {
                for job in jobs {
                    let failed = job.topics.iter().find(|topic| unread.contains(topic));
                    let answer = match failed {
                        None => Ok(()),
                        Some(topic) => Err(RelayError::TopicUnreadable(topic.clone())),
                    };
                    let _ = job.reply.send(answer);
                }
                Ok(())
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
                self.shared.metrics.error(RelayErrorKind::Sync);
                Err(e)
            }
        }
    }

    /// The lane's connection to `node` is gone: its topics are displaced. On a single Redis
    /// the link is lost.
    fn lose(&mut self, node: &Node, why: RelayError) -> Result<(), RelayError> {
        let moved = self.channels.disconnect(node);
        self.shared.metrics.error(RelayErrorKind::Link);
        if !self.channels.is_sharded() {
            return Err(why);
        }
        tracing::warn!(lane = self.index, %node, error = %why, "lost a Redis Cluster node; moving its topics");
        self.displace(moved);
        Ok(())
    }

    /// Marks `topics` as heard nowhere: they are subscribed again where they live now.
    fn displace(&mut self, topics: Vec<TopicName>) {
        for topic in topics {
            self.channels.unhear(&topic);
            self.displaced.insert(topic);
        }
        self.report_stale();
    }

    /// Subscribes to the channels of `topics` not heard yet, waits until Redis confirms, then
    /// brings every one of them up to date with its stream. Returns the topics that could not
    /// be subscribed to or read (kept aside to try again if the node holds them); `Err` when
    /// Redis could not be asked at all.
    async fn hear(
        &mut self,
        topics: &[TopicName],
        reconnect: bool,
    ) -> Result<Vec<TopicName>, RelayError> {
        let Some(layout) = self.channels.layout.clone() else { return Err(RelayError::LinkDown) };
        let mut unread = Vec::new();
        let mut by_node: HashMap<Node, Vec<TopicName>> = HashMap::new();
        for topic in topics {
            if self.channels.hears(topic) {
                continue;
            }
            match layout.owner(topic) {
                Some(node) => by_node.entry(node.clone()).or_default().push(topic.clone()),
                None => unread.push(topic.clone()),
            }
        }
        let mut awaiting: HashMap<Node, Bytes> = HashMap::new();
        for (node, group) in by_node {
            let connected = if self.channels.is_connected(&node) {
                Ok(())
            } else {
                self.channels.connect(&node).await
            };
            let subscribed = match connected {
                Ok(()) => self.channels.subscribe(&node, &group).await,
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(token) => {
                    self.shared.metrics.interest(InterestChange::Subscribe, group.len());
                    awaiting.insert(node, token);
                }
                Err(e) => {
                    self.lose(&node, e)?;
                    unread.extend(group);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + PING_TIMEOUT;
        while !awaiting.is_empty() {
            let Ok((from, push)) = tokio::time::timeout_at(deadline, self.channels.next()).await
            else {
                let nodes: Vec<Node> = awaiting.drain().map(|(node, _)| node).collect();
                for node in nodes {
                    let why = Cause::message("Redis did not confirm the subscriptions");
                    self.lose(&node, RelayError::Call(why))?;
                }
                break;
            };
            if let Some(Ok(Push::Pong(token))) = &push
                && awaiting.get(&from.node) == Some(token)
            {
                awaiting.remove(&from.node);
                continue;
            }
            self.on_push(from, push).await?;
            awaiting.retain(|node, _| self.channels.is_connected(node));
        }
        let mut confirmed = Vec::with_capacity(topics.len());
        for topic in topics {
            if self.channels.hears(topic) {
                confirmed.push(topic.clone());
            } else if !unread.contains(topic) {
                unread.push(topic.clone());
            }
        }
        for topic in &unread {
            if self.registry.topic(topic.as_str()).is_some() {
                self.displaced.insert(topic.clone());
            }
        }
        unread.extend(self.sync(&confirmed, reconnect).await?);
        Ok(unread)
    }

    /// Acts on what one connection sent.
    async fn on_push(
        &mut self,
        from: ConnId,
        push: Option<std::io::Result<Push>>,
    ) -> Result<(), RelayError> {
        let current = self.channels.is_current(&from);
        let push = match push {
            Some(Ok(push)) => push,
            Some(Err(e)) if current => {
                return self.lose(&from.node, RelayError::Call(Cause::new(e)));
            }
            None if current => {
                let closed = Cause::message("the Pub/Sub connection closed");
                return self.lose(&from.node, RelayError::Call(closed));
            }
            // The end of a connection replaced since.
            Some(Err(_)) | None => return Ok(()),
        };
        match push {
            Push::Message { channel, payload } => return self.on_message(&channel, payload).await,
            Push::Pong(token) => self.channels.pong(&from, &token),
            Push::Unsubscribed(channel) => {
                // One the lane asked for is no longer heard; one Redis dropped moved away.
                if let Some(topic) = scripts::topic_of_channel(&channel)
                    && current
                    && self.channels.hears_on(&topic, &from.node)
                {
                    self.shared.metrics.interest(InterestChange::Moved, 1);
                    self.displace(vec![topic]);
                }
            }
            Push::Refused(error) => {
                let moved_slot = error
                    .strip_prefix("MOVED ")
                    .or_else(|| error.strip_prefix("ASK "))
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|slot| slot.parse::<u16>().ok());
                let Some(slot) = moved_slot else {
                    self.shared.metrics.error(RelayErrorKind::Link);
                    tracing::warn!(lane = self.index, node = %from.node, %error, "Redis refused a Pub/Sub command");
                    return Ok(());
                };
                let moved = self.channels.heard_in_slot(&from.node, slot);
                self.shared.metrics.interest(InterestChange::Moved, moved.len());
                self.displace(moved);
            }
        }
        Ok(())
    }

    /// Subscribes the displaced topics again where their slots live now, then catches them up.
    async fn reroute(&mut self) -> Result<(), RelayError> {
        match self.find_layout(0).await {
            Ok(layout) => self.channels.layout = Some(layout),
            Err(e) => {
                tracing::debug!(lane = self.index, error = %e, "cannot ask the Redis Cluster for its slots");
                return Ok(());
            }
        }
        let displaced: Vec<TopicName> = std::mem::take(&mut self.displaced)
            .into_iter()
            .filter(|topic| self.registry.topic(topic.as_str()).is_some())
            .collect();
        if displaced.is_empty() {
            return Ok(());
        }
        tracing::info!(
            lane = self.index,
            topics = displaced.len(),
            "subscribing moved topics again"
        );
        self.hear(&displaced, true).await.map(drop)
    }

    /// Unsubscribes the topics the registry dropped (no reader for the grace period).
    async fn forget_dropped(&mut self) {
        let registry = &self.registry;
        let dropped = self.channels.heard_where(|topic| registry.topic(topic.as_str()).is_none());
        self.displaced.retain(|topic| registry.topic(topic.as_str()).is_some());
        self.report_stale();
        let mut by_node: HashMap<Node, Vec<TopicName>> = HashMap::new();
        for (topic, node) in dropped {
            self.catch_up.stale.remove(&topic);
            by_node.entry(node).or_default().push(topic);
        }
        for (node, group) in by_node {
            self.channels.unsubscribe(&node, &group).await;
            self.shared.metrics.interest(InterestChange::Unsubscribe, group.len());
        }
    }

    /// Relays one Pub/Sub message.
    async fn on_message(&mut self, channel: &[u8], payload: Bytes) -> Result<(), RelayError> {
        // The event may stay in the topic's history long after the read buffer it arrived in
        // is otherwise free: it gets its own allocation, so it never pins a whole buffer.
        let payload = Bytes::copy_from_slice(&payload);
        let envelope = match envelope::decode(&payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.shared.metrics.error(RelayErrorKind::Envelope);
                let channel = String::from_utf8_lossy(channel);
                tracing::warn!(error = %e, %channel, "skipping a malformed envelope");
                return Ok(());
            }
        };
        self.shared.metrics.received.increment(1);
        // A topic the node no longer holds (a message sent before its unsubscription).
        let Some(topic) = self.registry.topic(envelope.topic.as_str()) else { return Ok(()) };
        let head = topic.head();
        if head.epoch == envelope.id.epoch {
            // Normally a copy of an event already delivered (published before the last
            // catch-up read); if the node delivered another event under this id, Redis forgot
            // events and issued the id again, and the catch-up below tells.
            if envelope.id.seq <= head.seq && catch_up::delivered(&topic, &envelope) {
                return Ok(());
            }
            if envelope.id.seq == head.seq + 1 {
                catch_up::append(&topic, envelope);
                return Ok(());
            }
        }
        // A jump, another epoch, or an id issued again: the stream has what is missing, and
        // the sync script checks Redis still has what the node delivered.
        if let Err(e) = self.sync(std::slice::from_ref(&envelope.topic), false).await {
            self.shared.metrics.error(RelayErrorKind::Sync);
            return Err(e);
        }
        Ok(())
    }

    /// Brings the node's copies of `topics` up to date with their streams (see
    /// [`CatchUp::read`]).
    async fn sync(
        &mut self,
        topics: &[TopicName],
        reconnect: bool,
    ) -> Result<Vec<TopicName>, RelayError> {
        let read = self.catch_up.read(topics, reconnect).await;
        self.report_stale();
        read
    }
}

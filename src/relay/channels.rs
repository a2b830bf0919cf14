//! A lane's Pub/Sub connections, one per Redis node its topics live on, and which topic's
//! channel is heard on which: batches of subscriptions written at once and confirmed by a
//! ping, pings that tell a dead connection, and the end of a connection told apart from the
//! end of one that replaced it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::SelectAll;

use super::pubsub::{self, Flavor, PubSubWriter, Push, Tagged};
use super::scripts::TopicKeys;
use super::shards::{self, Layout, Node};
use super::{Cause, RelayError, Shared};
use crate::event::TopicName;

/// How long a ping may go unanswered.
pub(super) const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One Pub/Sub connection, as its stream tags what it receives: a connection replaced since
/// still delivers what it had read, but its end is not the new one's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConnId {
    pub(super) node: Node,
    generation: u64,
}

/// What one connection sent: a push, a read error, or (`None`) its end.
pub(super) type Received = (ConnId, Option<std::io::Result<Push>>);

/// The sending half of the connection to one node.
struct Writer {
    socket: PubSubWriter,
    generation: u64,
    /// The token of the ping in flight, and when it was sent.
    ping: Option<(Bytes, Instant)>,
}

/// A lane's connections and subscriptions.
pub(super) struct Channels {
    /// Where channels live, as last asked.
    pub(super) layout: Option<Layout>,
    writers: HashMap<Node, Writer>,
    pushes: SelectAll<Tagged<ConnId>>,
    generations: u64,
    /// The topics subscribed (or being subscribed), and on which node.
    heard: HashMap<TopicName, Node>,
    next_token: u64,
    shared: Arc<Shared>,
}

impl Channels {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Channels {
            layout: None,
            writers: HashMap::new(),
            pushes: SelectAll::new(),
            generations: 0,
            heard: HashMap::new(),
            next_token: 0,
            shared,
        }
    }

    /// Closes every connection and forgets every subscription.
    pub(super) fn reset(&mut self) {
        self.shared.metrics.pubsub_connections.decrement(self.writers.len() as f64);
        self.writers.clear();
        self.pushes = SelectAll::new();
        self.shared.metrics.topics_heard.decrement(self.heard.len() as f64);
        self.heard.clear();
    }

    /// Whether channels are shard channels (a Redis Cluster).
    pub(super) fn is_sharded(&self) -> bool {
        self.layout.as_ref().is_some_and(|layout| layout.flavor == Flavor::Sharded)
    }

    /// What the connections send next; pending forever while there is none.
    pub(super) async fn next(&mut self) -> Received {
        match self.pushes.next().await {
            Some(received) => received,
            None => std::future::pending().await,
        }
    }

    /// Whether `from` is the node's current connection.
    pub(super) fn is_current(&self, from: &ConnId) -> bool {
        self.writers.get(&from.node).is_some_and(|writer| writer.generation == from.generation)
    }

    /// Whether there is a connection to `node`.
    pub(super) fn is_connected(&self, node: &Node) -> bool {
        self.writers.contains_key(node)
    }

    /// Opens a connection to `node`.
    pub(super) async fn connect(&mut self, node: &Node) -> Result<(), RelayError> {
        let Some(layout) = &self.layout else { return Err(RelayError::LinkDown) };
        let (socket, pushes) = pubsub::connect(&layout.connection_info(node), layout.flavor)
            .await
            .map_err(|e| RelayError::Connect(Cause::new(e)))?;
        self.generations += 1;
        let generation = self.generations;
        self.pushes.push(Tagged::new(ConnId { node: node.clone(), generation }, pushes));
        self.writers.insert(node.clone(), Writer { socket, generation, ping: None });
        self.shared.metrics.pubsub_connections.increment(1);
        Ok(())
    }

    /// Drops the connection to `node`; returns the topics that were heard on it.
    pub(super) fn disconnect(&mut self, node: &Node) -> Vec<TopicName> {
        if self.writers.remove(node).is_some() {
            self.shared.metrics.pubsub_connections.decrement(1);
        }
        let lost: Vec<TopicName> =
            self.heard.iter().filter(|(_, at)| *at == node).map(|(t, _)| t.clone()).collect();
        for topic in &lost {
            self.unhear(topic);
        }
        lost
    }

    /// Whether `topic`'s channel is subscribed (or being subscribed).
    pub(super) fn hears(&self, topic: &TopicName) -> bool {
        self.heard.contains_key(topic)
    }

    /// Whether `topic`'s channel is subscribed on `node`.
    pub(super) fn hears_on(&self, topic: &TopicName, node: &Node) -> bool {
        self.heard.get(topic) == Some(node)
    }

    /// Forgets `topic`'s subscription (Redis dropped it, or it is being unsubscribed).
    pub(super) fn unhear(&mut self, topic: &TopicName) -> Option<Node> {
        let node = self.heard.remove(topic);
        if node.is_some() {
            self.shared.metrics.topics_heard.decrement(1);
        }
        node
    }

    /// The topics heard on `node` whose channels are in `slot`.
    pub(super) fn heard_in_slot(&self, node: &Node, slot: u16) -> Vec<TopicName> {
        self.heard
            .iter()
            .filter(|(topic, at)| *at == node && shards::slot(topic) == slot)
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// The topics heard for which `dropped` says yes, and where.
    pub(super) fn heard_where(
        &self,
        mut dropped: impl FnMut(&TopicName) -> bool,
    ) -> Vec<(TopicName, Node)> {
        self.heard
            .iter()
            .filter(|(topic, _)| dropped(topic))
            .map(|(topic, node)| (topic.clone(), node.clone()))
            .collect()
    }

    /// Subscribes to the channels of `topics` on `node` in one write, then a ping; returns the
    /// ping's token, which comes back once Redis has confirmed them all.
    pub(super) async fn subscribe(
        &mut self,
        node: &Node,
        topics: &[TopicName],
    ) -> Result<Bytes, RelayError> {
        let (token, digits) = self.token();
        let sharded = self.is_sharded();
        let Some(writer) = self.writers.get_mut(node) else { return Err(RelayError::LinkDown) };
        for group in channel_groups(sharded, topics) {
            writer.socket.subscribe(group.iter().map(|c| c.as_bytes()));
        }
        writer.socket.ping(digits);
        writer.socket.flush().await.map_err(|e| RelayError::Call(Cause::new(e)))?;
        for topic in topics {
            if self.heard.insert(topic.clone(), node.clone()).is_none() {
                self.shared.metrics.topics_heard.increment(1);
            }
        }
        Ok(token)
    }

    /// Unsubscribes from the channels of `topics` on `node`, which are no longer heard.
    pub(super) async fn unsubscribe(&mut self, node: &Node, topics: &[TopicName]) {
        for topic in topics {
            self.unhear(topic);
        }
        let sharded = self.is_sharded();
        let Some(writer) = self.writers.get_mut(node) else { return };
        for group in channel_groups(sharded, topics) {
            writer.socket.unsubscribe(group.iter().map(|c| c.as_bytes()));
        }
        // A failed write is the connection's end, which its stream reports.
        let _ = writer.socket.flush().await;
    }

    /// Takes the answer to a ping.
    pub(super) fn pong(&mut self, from: &ConnId, token: &Bytes) {
        if let Some(writer) = self.writers.get_mut(&from.node)
            && writer.ping.as_ref().is_some_and(|(sent, _)| sent == token)
        {
            writer.ping = None;
        }
    }

    /// Pings every connection not waiting for an answer; returns those whose last ping went
    /// unanswered too long, or whose ping could not be written.
    pub(super) async fn ping(&mut self) -> Vec<(Node, Cause)> {
        let mut lost = Vec::new();
        let nodes: Vec<Node> = self.writers.keys().cloned().collect();
        for node in nodes {
            let (token, digits) = self.token();
            let Some(writer) = self.writers.get_mut(&node) else { continue };
            match &writer.ping {
                Some((_, sent)) if sent.elapsed() > PING_TIMEOUT => {
                    lost.push((node, Cause::message("Redis did not answer a ping")));
                }
                Some(_) => {}
                None => {
                    writer.socket.ping(digits);
                    writer.ping = Some((token, Instant::now()));
                    if let Err(e) = writer.socket.flush().await {
                        lost.push((node, Cause::new(e)));
                    }
                }
            }
        }
        lost
    }

    /// A fresh ping token, as Redis echoes it and as a number.
    fn token(&mut self) -> (Bytes, u64) {
        self.next_token += 1;
        let mut digits = itoa::Buffer::new();
        (Bytes::copy_from_slice(digits.format(self.next_token).as_bytes()), self.next_token)
    }
}

/// The channels of `topics`, in groups one command may name: all of them on a single Redis,
/// one slot's on a Redis Cluster.
fn channel_groups(sharded: bool, topics: &[TopicName]) -> Vec<Vec<String>> {
    let channel = |topic: &TopicName| TopicKeys::new(topic).channel;
    if !sharded {
        return vec![topics.iter().map(channel).collect()];
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for topic in topics {
        by_slot.entry(shards::slot(topic)).or_default().push(channel(topic));
    }
    by_slot.into_values().collect()
}

//! Where a topic's channel lives: the one Redis, or on a Redis Cluster the master that owns the
//! slot of the topic's hash tag, as `CLUSTER SLOTS` tells.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Value};

use super::pubsub::Flavor;
use crate::event::TopicName;

/// Slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// How long asking a node for the slot map may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// A Redis node, by address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Node {
    pub(super) host: String,
    pub(super) port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The slot of `topic`'s keys and channel: they all carry the hash tag `{topic}` (a topic name
/// has no braces), so Redis hashes the topic's name.
pub(super) fn slot(topic: &TopicName) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(topic.as_str().as_bytes()) % SLOTS
}

/// Where channels are subscribed.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// The node of every slot; a single Redis holds them all.
    owners: Vec<Option<Node>>,
    /// Connection settings (credentials) shared by every node.
    template: ConnectionInfo,
    pub(super) flavor: Flavor,
}

impl Layout {
    /// A single Redis.
    pub(super) fn single(info: &ConnectionInfo) -> Option<Layout> {
        let node = node_of(info)?;
        Some(Layout { owners: vec![Some(node)], template: info.clone(), flavor: Flavor::Classic })
    }

    /// Asks the nodes of `seeds`, in turn, which master owns each slot.
    pub(super) async fn cluster(seeds: &[ConnectionInfo]) -> Result<Layout, redis::RedisError> {
        let mut last = None;
        for seed in seeds {
            match ask_slots(seed).await {
                Ok(owners) => {
                    let flavor = Flavor::Sharded;
                    return Ok(Layout { owners, template: seed.clone(), flavor });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::Io, "no Redis URL").into()))
    }

    /// The node that owns `topic`'s channel, if any does.
    pub(super) fn owner(&self, topic: &TopicName) -> Option<&Node> {
        match self.flavor {
            Flavor::Classic => self.owners[0].as_ref(),
            Flavor::Sharded => self.owners[usize::from(slot(topic))].as_ref(),
        }
    }

    /// Every node that owns a slot, then the seeds: where to ask for the next slot map.
    pub(super) fn nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self.owners.iter().flatten().cloned().collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// How to connect to `node`.
    pub(super) fn connection_info(&self, node: &Node) -> ConnectionInfo {
        self.template.clone().set_addr(ConnectionAddr::Tcp(node.host.clone(), node.port))
    }
}

fn node_of(info: &ConnectionInfo) -> Option<Node> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => Some(Node { host: host.clone(), port: *port }),
        _ => None,
    }
}

/// `CLUSTER SLOTS` of one node, as the owner of each slot.
async fn ask_slots(seed: &ConnectionInfo) -> Result<Vec<Option<Node>>, redis::RedisError> {
    let timed_out = || redis::RedisError::from((redis::ErrorKind::Io, "timed out"));
    let ask = async {
        let client = redis::Client::open(seed.clone())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER").arg("SLOTS").query_async::<Value>(&mut conn).await
    };
    let answer = tokio::time::timeout(ASK_TIMEOUT, ask).await.map_err(|_| timed_out())??;
    parse_slots(answer, seed)
        .ok_or_else(|| (redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS answer").into())
}

/// Each slot's master in a `CLUSTER SLOTS` answer; a master announced with an empty host is
/// `seed`'s host.
fn parse_slots(answer: Value, seed: &ConnectionInfo) -> Option<Vec<Option<Node>>> {
    let Value::Array(ranges) = answer else { return None };
    let mut owners = vec![None; usize::from(SLOTS)];
    for range in ranges {
        let Value::Array(range) = range else { return None };
        let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = &range[..] else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let host = if host.is_empty() || host == "?" { node_of(seed)?.host } else { host };
        let Value::Int(port) = master.get(1)? else { return None };
        let node = Node { host, port: u16::try_from(*port).ok()? };
        let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
        for owner in owners.get_mut(start..=end)? {
            *owner = Some(node.clone());
        }
    }
    Some(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_for_keys_with_the_topic_hash_tag() {
        // `CLUSTER KEYSLOT crier:{T}:ev` of redis-server 7.0.
        for (topic, expected) in [("foo", 12182), ("bar", 5061), ("news", 5161), ("a:b/c", 2265)] {
            assert_eq!(slot(&TopicName::new(topic).unwrap()), expected, "{topic}");
        }
        assert_eq!(slot(&TopicName::internal("mercure").unwrap()), 4575);
    }

    #[test]
    fn a_slot_map_names_each_slots_master() {
        let seed: ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:7000").unwrap();
        let master = |port| Value::Array(vec![Value::BulkString(b"".to_vec()), Value::Int(port)]);
        let answer = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), master(7000)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), master(7001)]),
        ]);
        let owners = parse_slots(answer, &seed).unwrap();
        assert_eq!(owners[5460].as_ref().map(|n| n.port), Some(7000));
        assert_eq!(
            owners[5461].as_ref().map(|n| (n.host.as_str(), n.port)),
            Some(("127.0.0.1", 7001))
        );
        assert!(parse_slots(Value::Int(1), &seed).is_none());
    }
}

//! What crier keeps in Redis and the Lua scripts that change it, one atomic step each.
//!
//! Per topic `T`, all under the hash tag `{T}` so each script touches one Redis Cluster slot:
//!
//! | key / channel | type | holds |
//! |---|---|---|
//! | `crier:{T}:meta` | hash | `epoch` (the topic's current epoch) and `seq` (last sequence number issued) |
//! | `crier:{T}:log` | stream | the last `--history` envelopes (at least 64), entry id `<seq>-0`, field `e` |
//! | `crier:{T}:ev` | Pub/Sub channel (a shard channel on Redis Cluster, in the slot of `{T}`) | every envelope as it is published |
//! | `crier:{T}:idem:<key>` | string | the id a publish with idempotency key `<key>` got, for `--idempotency-window` |
//!
//! A topic whose `meta` is missing (never published, expired, or Redis lost its data) starts a
//! new epoch proposed by the caller, so ids from before are never issued again: readers who held
//! them get `crier.gap` instead of a silent hole.
//!
//! Both keys expire after `--topic-idle-ttl` (every script takes it as `ARGV[2]`, in
//! milliseconds): each publish, each node reading the topic, and each node following it
//! (`keep_followed_topics` in the relay) sets the time again, so the keys of a topic nobody
//! publishes to, reads or follows are gone after it.

use redis::{Cmd, Script};

use crate::event::{Epoch, IdempotencyKey, TopicName};

/// The keys and channel of a topic.
pub(crate) struct TopicKeys {
    /// `crier:{T}:meta`.
    pub(crate) meta: String,
    /// `crier:{T}:log`.
    pub(crate) log: String,
    /// `crier:{T}:ev`.
    pub(crate) channel: String,
}

/// The topic whose channel is `channel` (`crier:{T}:ev`).
pub(crate) fn topic_of_channel(channel: &[u8]) -> Option<TopicName> {
    let name = channel.strip_prefix(b"crier:{")?.strip_suffix(b"}:ev")?;
    let name = std::str::from_utf8(name).ok()?;
    TopicName::stored(name).ok()
}

impl TopicKeys {
    /// The keys of `topic`.
    pub(crate) fn new(topic: &TopicName) -> Self {
        let topic = topic.as_str();
        TopicKeys {
            meta: format!("crier:{{{topic}}}:meta"),
            log: format!("crier:{{{topic}}}:log"),
            channel: format!("crier:{{{topic}}}:ev"),
        }
    }
}

/// Publishes one event.
///
/// `KEYS`: meta, log, and the idempotency key's key if the publish has one. `ARGV`: proposed
/// epoch, key time-to-live (ms), stream length, channel, the envelope's header after the id,
/// data, how long the idempotency key is remembered (ms).
///
/// With an idempotency key already remembered, nothing is published and the answer is the
/// earlier publish's `{epoch, seq, 1}`; otherwise the key remembers the new id. Takes the next sequence number, appends the envelope to the capped
/// stream and publishes it, and returns `{epoch, seq}`. If the stream refuses the entry (its
/// last id is ahead of `seq`: the hash and the stream disagree, as after a partial restore),
/// the topic starts a new epoch rather than reuse ids.
pub(crate) const PUBLISH: &str = r#"
if #KEYS == 3 then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local dash = string.find(prior, '-', 1, true)
    return {string.sub(prior, 1, dash - 1), tonumber(string.sub(prior, dash + 1)), 1}
  end
end
local function fresh()
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', 0)
  return ARGV[1]
end
local epoch = redis.call('HGET', KEYS[1], 'epoch') or fresh()
local function append()
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local id = string.format('%d', seq)
  local envelope = 'crier1 ' .. epoch .. '-' .. id .. ' ' .. ARGV[5] .. '\n' .. ARGV[6]
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], id .. '-0', 'e', envelope)
  if type(added) == 'table' and added.err then
    return nil
  end
  redis.call('PUBLISH', ARGV[4], envelope)
  return seq
end
local seq = append()
if not seq then
  epoch = fresh()
  seq = append()
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if #KEYS == 3 then
  redis.call('SET', KEYS[3], epoch .. '-' .. seq, 'PX', ARGV[7])
end
return {epoch, seq}
"#;

/// Reads a topic's state for a node catching up.
///
/// `KEYS`: meta, log. `ARGV`: proposed epoch, key time-to-live (ms), the node's epoch for the
/// topic (or `-`), the node's last sequence number, most entries, the SHA-1 (hex) of the node's
/// last envelope (or empty). Returns `{epoch, seq, envelope…}`: the envelopes after the node's last sequence
/// number if the epoch is the node's, else the whole stream. A topic never published gets an
/// epoch now, so every node agrees on it from the first subscriber on.
///
/// Redis may have forgotten events the node delivered: restored from an older snapshot, or a
/// replica promoted before it got the last writes. Then it has issued, or will issue, those
/// sequence numbers again for other events. Either it is behind the node, or its entry at the
/// node's last sequence number is not the event the node delivered; in both cases the topic
/// starts a new epoch, and every node's subscribers get `crier.gap` instead of a silent swap.
pub(crate) const SYNC: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = 0
if epoch then
  seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
  if epoch == ARGV[3] then
    if seq < tonumber(ARGV[4]) then
      epoch = nil
    elseif ARGV[6] ~= '' then
      local at = ARGV[4] .. '-0'
      local entry = redis.call('XRANGE', KEYS[2], at, at)[1]
      if entry and redis.sha1hex(entry[2][2]) ~= ARGV[6] then
        epoch = nil
      end
    end
  end
end
if not epoch then
  epoch = ARGV[1]
  seq = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local start = '-'
if epoch == ARGV[3] then
  start = string.format('%d', tonumber(ARGV[4]) + 1) .. '-0'
end
local entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[5])
local out = {epoch, seq}
for i, entry in ipairs(entries) do
  out[i + 2] = entry[2][2]
end
return out
"#;

/// A call of `script` for `topic` with the arguments every script takes first (the topic's
/// keys, a fresh epoch in case the topic starts one, and how long the keys live); the caller
/// adds the rest.
pub(crate) fn call(script: &Script, topic: &TopicName, key_ttl_ms: u64) -> Cmd {
    let keys = TopicKeys::new(topic);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(2).arg(keys.meta).arg(keys.log);
    cmd.arg(Epoch::random().to_string()).arg(key_ttl_ms);
    cmd
}

/// A call of the publish script for `topic`, with `idempotency_key`'s key if given, and the
/// proposed epoch; the caller adds the rest.
pub(crate) fn publish_call(
    script: &Script,
    topic: &TopicName,
    idempotency_key: Option<&IdempotencyKey>,
) -> Cmd {
    let keys = TopicKeys::new(topic);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(2 + usize::from(idempotency_key.is_some()));
    cmd.arg(keys.meta).arg(keys.log);
    if let Some(key) = idempotency_key {
        cmd.arg(format!("crier:{{{}}}:idem:{}", topic.as_str(), key.as_str()));
    }
    cmd.arg(Epoch::random().to_string());
    cmd
}

/// The publish script: with `PUBLISH` on a single Redis; on a Redis Cluster with `SPUBLISH`,
/// whose shard channel is in the slot of the script's keys, so the message stays in its shard
/// (a classic `PUBLISH` there is forwarded over the cluster bus to every node).
pub(crate) fn publish(cluster: bool) -> Script {
    if cluster {
        let sharded = PUBLISH.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'");
        debug_assert_ne!(sharded, PUBLISH, "the publish script publishes with PUBLISH");
        Script::new(&sharded)
    } else {
        Script::new(PUBLISH)
    }
}

/// The sync script.
pub(crate) fn sync() -> Script {
    Script::new(SYNC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_topic_hash_tag() {
        let keys = TopicKeys::new(&TopicName::new("a:b/c").unwrap());
        assert_eq!(keys.meta, "crier:{a:b/c}:meta");
        assert_eq!(keys.log, "crier:{a:b/c}:log");
        assert_eq!(keys.channel, "crier:{a:b/c}:ev");
        let topic = topic_of_channel(keys.channel.as_bytes()).unwrap();
        assert_eq!(topic.as_str(), "a:b/c");
        assert!(topic_of_channel(b"crier:{a b}:ev").is_none());
        assert!(topic_of_channel(b"other").is_none());
    }

    #[test]
    fn on_a_redis_cluster_the_publish_script_publishes_to_the_shard_channel() {
        assert!(publish(true).get_hash() != publish(false).get_hash());
        assert!(PUBLISH.contains("redis.call('PUBLISH', ARGV[4], envelope)"));
    }
}

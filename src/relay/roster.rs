//! The cluster's roster: which nodes are alive, and the entries each one holds (what its
//! subscribers hold, for presence), kept in Redis so any node can list every node's entries and
//! the survivors learn what a node that died held.
//!
//! All under the hash tag `{crier:roster}`, so each script touches one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `crier:{crier:roster}:nodes` | sorted set | each node, scored by its last heartbeat (Redis time, ms) |
//! | `crier:{crier:roster}:node:<id>` | hash | the node's entries, key → value |
//!
//! A node beats every [`HEARTBEAT`]; one silent for [`NODE_TIMEOUT`] is dead: listings leave it
//! out, and the first survivor to look takes its entries (one atomic step, so exactly one
//! survivor does) to announce their end. A node that was taken for dead while cut off from
//! Redis finds itself missing at its next beat and writes its entries again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Cmd, Script, Value};

use super::commands::Commands;
use super::{Cause, RelayError};

/// How often a node beats.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// Silence after which a node is dead.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a node's entries outlive its last beat if no survivor takes them.
const ENTRIES_TTL: Duration = Duration::from_secs(600);

const NODES: &str = "crier:{crier:roster}:nodes";

fn node_key(node: &str) -> String {
    format!("crier:{{crier:roster}}:node:{node}")
}

/// Beats: `KEYS[1]` nodes, `KEYS[2]` the node's hash; `ARGV[1]` node id, `ARGV[2]` entries'
/// ttl (ms). Returns 1 if the node was missing (taken for dead, or new).
const BEAT: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return added
";

/// Lists the live nodes' entries: `KEYS[1]` nodes; `ARGV[1]` node timeout (ms). Returns the
/// values of every live node's entries.
const LIST: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[1]), '+inf')) do
  for _, value in ipairs(redis.call('HVALS', 'crier:{crier:roster}:node:' .. node)) do
    out[#out + 1] = value
  end
end
return out
";

/// Takes the dead nodes' entries: `KEYS[1]` nodes; `ARGV[1]` node timeout (ms). Returns their
/// values; the nodes and their hashes are gone.
const TAKE_DEAD: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (ms - tonumber(ARGV[1])))) do
  redis.call('ZREM', KEYS[1], node)
  local key = 'crier:{crier:roster}:node:' .. node
  for _, value in ipairs(redis.call('HVALS', key)) do
    out[#out + 1] = value
  end
  redis.call('DEL', key)
end
return out
";

/// This node's place in the cluster's roster.
pub(crate) struct RedisRoster {
    node: String,
    pool: Arc<Commands>,
    /// What the node holds, to write again if it was taken for dead.
    entries: Mutex<HashMap<String, String>>,
    beat: Script,
    list: Script,
    take_dead: Script,
}

impl RedisRoster {
    pub(super) fn new(pool: Arc<Commands>) -> Self {
        RedisRoster {
            node: format!("{:016x}", fastrand::u64(..)),
            pool,
            entries: Mutex::new(HashMap::new()),
            beat: Script::new(BEAT),
            list: Script::new(LIST),
            take_dead: Script::new(TAKE_DEAD),
        }
    }

    /// Adds (or replaces) one of this node's entries.
    pub(crate) async fn put(&self, key: String, value: String) -> Result<(), RelayError> {
        self.entries.lock().insert(key.clone(), value.clone());
        let mut call = redis::cmd("HSET");
        call.arg(node_key(&self.node)).arg(key).arg(value);
        self.send(call).await.map(drop)
    }

    /// Removes one of this node's entries.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), RelayError> {
        self.entries.lock().remove(key);
        let mut call = redis::cmd("HDEL");
        call.arg(node_key(&self.node)).arg(key);
        self.send(call).await.map(drop)
    }

    /// Tells the cluster this node is alive; writes its entries again if it was missing.
    pub(crate) async fn beat(&self) -> Result<(), RelayError> {
        let key = node_key(&self.node);
        let mut call = self.script_call(&self.beat, &[NODES, &key]);
        call.arg(&self.node).arg(ENTRIES_TTL.as_millis() as u64);
        let missing = matches!(self.send_script(&self.beat, call).await?, Value::Int(1));
        let entries: Vec<(String, String)> =
            self.entries.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if missing && !entries.is_empty() {
            let mut call = redis::cmd("HSET");
            call.arg(&key);
            for (k, v) in entries {
                call.arg(k).arg(v);
            }
            self.send(call).await?;
        }
        Ok(())
    }

    /// The values of every live node's entries.
    pub(crate) async fn list(&self) -> Result<Vec<String>, RelayError> {
        let mut call = self.script_call(&self.list, &[NODES]);
        call.arg(NODE_TIMEOUT.as_millis() as u64);
        strings(self.send_script(&self.list, call).await?)
    }

    /// Takes the entries of the nodes that died (no other node gets them).
    pub(crate) async fn take_dead(&self) -> Result<Vec<String>, RelayError> {
        let mut call = self.script_call(&self.take_dead, &[NODES]);
        call.arg(NODE_TIMEOUT.as_millis() as u64);
        strings(self.send_script(&self.take_dead, call).await?)
    }

    fn script_call(&self, script: &Script, keys: &[&str]) -> Cmd {
        let mut call = redis::cmd("EVALSHA");
        call.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            call.arg(*key);
        }
        call
    }

    async fn send_script(&self, script: &Script, call: Cmd) -> Result<Value, RelayError> {
        let failed = |e: redis::RedisError| RelayError::Call(Cause::new(e));
        let mut conn = self.pool.get().await?;
        let mut answers = conn.send_script(script, || vec![call.clone()]).await.map_err(failed)?;
        answers.pop().ok_or(RelayError::Answer("no answer"))?.map_err(failed)
    }

    async fn send(&self, call: Cmd) -> Result<Value, RelayError> {
        let failed = |e: redis::RedisError| RelayError::Call(Cause::new(e));
        let mut conn = self.pool.get().await?;
        let mut answers = conn.send(vec![call]).await.map_err(failed)?;
        answers.pop().ok_or(RelayError::Answer("no answer"))?.map_err(failed)
    }
}

fn strings(value: Value) -> Result<Vec<String>, RelayError> {
    let Value::Array(items) = value else { return Err(RelayError::Answer("not a list")) };
    Ok(items
        .into_iter()
        .filter_map(|item| match item {
            Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
            _ => None,
        })
        .collect())
}

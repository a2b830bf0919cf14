//! Who holds what, node by node: entries (what a node's subscribers hold, for presence) that
//! any node can list for the whole cluster, and that the survivors take over when a node dies.
//! On a single node they are a map in memory; in cluster mode they live in Redis
//! ([`RedisRoster`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::relay::{RedisRoster, RelayError};

/// The entries of every node.
pub(crate) enum Roster {
    /// A single node.
    Local(Mutex<BTreeMap<String, String>>),
    /// A node of a cluster.
    Cluster(Arc<RedisRoster>),
}

impl Roster {
    /// Adds (or replaces) one of this node's entries.
    pub(crate) async fn put(&self, key: String, value: String) -> Result<(), RelayError> {
        match self {
            Roster::Local(entries) => {
                entries.lock().insert(key, value);
                Ok(())
            }
            Roster::Cluster(roster) => roster.put(key, value).await,
        }
    }

    /// Removes one of this node's entries.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), RelayError> {
        match self {
            Roster::Local(entries) => {
                entries.lock().remove(key);
                Ok(())
            }
            Roster::Cluster(roster) => roster.remove(key).await,
        }
    }

    /// Tells the cluster this node is alive (call it every [`Roster::HEARTBEAT`]).
    pub(crate) async fn beat(&self) -> Result<(), RelayError> {
        match self {
            Roster::Local(_) => Ok(()),
            Roster::Cluster(roster) => roster.beat().await,
        }
    }

    /// The values of every live node's entries.
    pub(crate) async fn list(&self) -> Result<Vec<String>, RelayError> {
        match self {
            Roster::Local(entries) => Ok(entries.lock().values().cloned().collect()),
            Roster::Cluster(roster) => roster.list().await,
        }
    }

    /// Takes the entries of the nodes that died: each goes to one survivor only.
    pub(crate) async fn take_dead(&self) -> Result<Vec<String>, RelayError> {
        match self {
            Roster::Local(_) => Ok(Vec::new()),
            Roster::Cluster(roster) => roster.take_dead().await,
        }
    }

    /// How often a node beats.
    pub(crate) const HEARTBEAT: std::time::Duration = crate::relay::ROSTER_HEARTBEAT;
}

//! Command connections to Redis, standalone or Redis Cluster, behind one interface: getting a
//! connection, and sending a batch of script calls with one result per call.
//!
//! On a standalone Redis a batch is one pipeline (one round trip). On Redis Cluster a pipeline
//! may not cross slots, and a batch holds calls for many topics, so the calls are sent
//! concurrently over a cluster connection, which routes each to its slot's master and
//! multiplexes those going to the same master.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::Runtime;
use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};
use tokio::sync::Mutex;

use super::{Cause, RelayConfig, RelayError, RelayStartError};

/// How long a connection attempt to one Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a call may take on a Redis Cluster, redirections and retries included.
const CLUSTER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Command connections.
pub(super) enum Commands {
    /// A deadpool-redis pool: each publish worker holds one connection while it sends.
    Standalone(deadpool_redis::Pool),
    /// Redis Cluster connections, handed out in turn.
    Cluster(Box<ClusterConnections>),
}

/// Cluster connections handed out in turn, each made on first use. A cluster connection
/// multiplexes its calls over one connection per master and finds and reconnects masters by
/// itself, so it needs no pool's health checks; several of them keep parallel workers from
/// queueing behind one socket per master. (deadpool-redis's cluster pool cannot bound the
/// client's retries: by default a call to a lost master retries 16 times, for minutes.)
pub(super) struct ClusterConnections {
    client: ClusterClient,
    connections: Vec<Mutex<Option<ClusterConnection>>>,
    next: AtomicUsize,
}

/// A connection to send on.
pub(super) enum RedisConnection {
    Standalone(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl Commands {
    /// `size` connections to the Redis (or Redis Cluster) of `config`, made when first needed.
    pub(super) fn new(config: &RelayConfig, size: usize) -> Result<Self, RelayStartError> {
        if config.cluster {
            let client = ClusterClientBuilder::new(config.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CLUSTER_CALL_TIMEOUT)
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(250)
                .build()?;
            let connections = (0..size).map(|_| Mutex::new(None)).collect();
            Ok(Commands::Cluster(Box::new(ClusterConnections {
                client,
                connections,
                next: AtomicUsize::new(0),
            })))
        } else {
            let mut limits = deadpool_redis::PoolConfig::new(size);
            limits.timeouts.wait = Some(Duration::from_secs(2));
            limits.timeouts.create = Some(CONNECT_TIMEOUT);
            limits.timeouts.recycle = Some(Duration::from_secs(1));
            let url = config.urls.first().map_or("", String::as_str);
            let mut pool = deadpool_redis::Config::from_url(url);
            pool.pool = Some(limits);
            Ok(Commands::Standalone(
                pool.create_pool(Some(Runtime::Tokio1)).map_err(RelayStartError::Pool)?,
            ))
        }
    }

    /// A connection: from the pool (checked with a ping if it was idle), or the next cluster
    /// connection.
    pub(super) async fn get(&self) -> Result<RedisConnection, RelayError> {
        match self {
            Commands::Standalone(pool) => pool
                .get()
                .await
                .map(RedisConnection::Standalone)
                .map_err(|e| RelayError::Connect(Cause::new(e))),
            Commands::Cluster(cluster) => {
                let ClusterConnections { client, connections, next } = &**cluster;
                let turn = next.fetch_add(1, Ordering::Relaxed) % connections.len();
                let mut shared = connections[turn].lock().await;
                if let Some(connection) = &*shared {
                    return Ok(RedisConnection::Cluster(connection.clone()));
                }
                let connection =
                    tokio::time::timeout(CLUSTER_CALL_TIMEOUT, client.get_async_connection())
                        .await
                        .map_err(|_| {
                            let why = "timed out connecting to the Redis Cluster";
                            RelayError::Connect(Cause::message(why))
                        })?
                        .map_err(|e| RelayError::Connect(Cause::new(e)))?;
                *shared = Some(connection.clone());
                Ok(RedisConnection::Cluster(connection))
            }
        }
    }
}

impl RedisConnection {
    /// Sends `calls` and returns one result per call, in order. `Err` when the connection
    /// failed as a whole (nothing can be said about any call).
    pub(super) async fn send(&mut self, calls: Vec<Cmd>) -> RedisResult<Vec<RedisResult<Value>>> {
        match self {
            RedisConnection::Standalone(conn) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for call in calls {
                    pipe.add_command(call);
                }
                let values: Vec<Value> = pipe.query_async(conn).await?;
                Ok(values
                    .into_iter()
                    .map(|value| match value {
                        Value::ServerError(e) => Err(e.into()),
                        value => Ok(value),
                    })
                    .collect())
            }
            RedisConnection::Cluster(conn) => {
                let conn: &ClusterConnection = conn;
                let results = join_all(calls.into_iter().map(|call| {
                    let mut conn = conn.clone();
                    async move { call.query_async::<Value>(&mut conn).await }
                }))
                .await;
                Ok(results)
            }
        }
    }

    /// Sends `calls` (made by `calls`) of `script`; if Redis had lost the script, loads it and
    /// sends them all again. For calls that may run twice (reads), or a batch of one: a call
    /// refused for a missing script did not run.
    pub(super) async fn send_script(
        &mut self,
        script: &redis::Script,
        calls: impl Fn() -> Vec<Cmd>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let answers = self.send(calls()).await?;
        if !answers.iter().any(|a| a.as_ref().is_err_and(is_no_script)) {
            return Ok(answers);
        }
        self.load(script).await?;
        self.send(calls()).await
    }

    /// Loads `script` into Redis's script cache (on every master of a cluster).
    pub(super) async fn load(&mut self, script: &redis::Script) -> RedisResult<()> {
        match self {
            RedisConnection::Standalone(conn) => script.prepare_invoke().load_async(conn).await?,
            RedisConnection::Cluster(conn) => script.prepare_invoke().load_async(conn).await?,
        };
        Ok(())
    }
}

/// Whether Redis refused a call because it did not have the script (it did not run).
pub(super) fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// Whether an error says the connection itself is broken, rather than one call failed.
pub(super) fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

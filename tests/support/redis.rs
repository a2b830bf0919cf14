//! Real `redis-server` processes for the cluster tests, on free ports, killed with the test:
//! started, killed (SIGKILL) and restarted on the same port, with or without their data; and a
//! Redis Cluster of three masters made of them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::WAIT;

/// A redis-server process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// Flags for redis-server beyond the defaults.
    extra: Vec<String>,
}

impl RedisServer {
    /// A server that keeps nothing across a restart.
    pub async fn start() -> RedisServer {
        Self::launch(false).await
    }

    /// A server that writes every command to its append-only file before answering, so a
    /// restart after SIGKILL comes back with everything it acknowledged.
    pub async fn start_persistent() -> RedisServer {
        Self::launch(true).await
    }

    async fn launch(persistent: bool) -> RedisServer {
        Self::launch_with(persistent, &[]).await
    }

    async fn launch_with(persistent: bool, extra: &[&str]) -> RedisServer {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crier-test-redis-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let port = free_port();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer { child: None, port, dir, persistent, extra };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--loglevel", "warning", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command.args(&self.extra);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        self.child =
            Some(command.spawn().expect("redis-server is installed (.ci/run installs it)"));
        let deadline = Instant::now() + WAIT;
        while !self.pings().await {
            assert!(Instant::now() < deadline, "redis-server did not answer PING in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The URL crier is given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
            Ok(Ok(_)) if &reply == b"+PONG\r\n"
        )
    }

    /// SIGKILLs the server and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts it again on the same port: with its data if persistent, empty otherwise.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// A command connection for the test itself.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

/// A Redis Cluster of three masters, with or without one replica each, created with
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    /// `replicas[i]` replicates `masters[i]` (empty without replicas).
    pub replicas: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub async fn start() -> RedisCluster {
        Self::launch(false).await
    }

    /// Three masters and a replica for each, which takes over within about two seconds of its
    /// master's loss.
    pub async fn start_with_replicas() -> RedisCluster {
        Self::launch(true).await
    }

    async fn launch(with_replicas: bool) -> RedisCluster {
        // A master is declared failed a second after it stops answering, and the other masters
        // keep serving their slots meanwhile (by default the whole cluster stops).
        let flags = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
        ];
        let mut servers = Vec::new();
        for _ in 0..if with_replicas { 6 } else { 3 } {
            servers.push(RedisServer::launch_with(false, &flags).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for server in &servers {
            create.arg(format!("127.0.0.1:{}", server.port));
        }
        let output = create
            .args(["--cluster-replicas", if with_replicas { "1" } else { "0" }, "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli is installed with redis-server");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        // redis-cli makes the first three the masters and picks each replica's master itself.
        let mut replicas = servers.split_off(3);
        let mut master_ids = Vec::new();
        for master in &servers {
            master_ids.push(node_line(master).await.split(' ').next().unwrap_or("").to_owned());
        }
        let mut masters_of = Vec::new();
        for replica in &replicas {
            let line = node_line(replica).await;
            let master = line.split(' ').nth(3).unwrap_or("").to_owned();
            masters_of.push(master_ids.iter().position(|id| *id == master).expect("a master"));
        }
        let mut order: Vec<usize> = (0..replicas.len()).collect();
        order.sort_by_key(|&i| masters_of[i]);
        let mut sorted: Vec<Option<RedisServer>> = replicas.drain(..).map(Some).collect();
        let replicas: Vec<RedisServer> = order.iter().filter_map(|&i| sorted[i].take()).collect();
        let cluster = RedisCluster { masters: servers, replicas };
        let deadline = Instant::now() + WAIT;
        for server in cluster.masters.iter().chain(&cluster.replicas) {
            loop {
                let mut conn = server.connection().await;
                let info: String =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not converge: {info}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster
    }

    /// Every master's URL, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.masters.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

/// The server's own line of `CLUSTER NODES`: `<id> <addr> myself,<role> <master id or -> …`.
async fn node_line(server: &RedisServer) -> String {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut server.connection().await)
        .await
        .expect("CLUSTER NODES");
    nodes.lines().find(|line| line.contains("myself")).expect("its own line").to_owned()
}

/// Whether `observer` holds `server` as failed (not merely suspected).
pub async fn sees_failed(observer: &RedisServer, server: &RedisServer) -> bool {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut observer.connection().await)
        .await
        .expect("CLUSTER NODES");
    let address = format!("127.0.0.1:{}", server.port);
    nodes.lines().any(|line| {
        let mut fields = line.split(' ');
        let _id = fields.next();
        let at = fields.next().unwrap_or("");
        let flags = fields.next().unwrap_or("");
        at.split('@').next() == Some(address.as_str())
            && flags.split(',').any(|flag| flag == "fail")
    })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis URL nothing answers at: a free port, rather than a just-killed server's, which may
/// still accept for a moment.
pub fn unreachable_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

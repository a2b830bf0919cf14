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

/// A Redis Cluster of three masters (no replicas), created with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut masters = Vec::new();
        for _ in 0..3 {
            masters.push(RedisServer::launch_with(false, &["--cluster-enabled", "yes"]).await);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for m in &masters {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli is installed with redis-server");
        assert!(
            output.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + WAIT;
        for m in &masters {
            loop {
                let mut conn = m.connection().await;
                let info: String =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not converge: {info}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        RedisCluster { masters }
    }

    /// Every master's URL, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.masters.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

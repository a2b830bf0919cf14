//! What the end-to-end benchmarks share: a throwaway `redis-server` and CPU accounting.

#![allow(dead_code)]

/// The tests' Redis processes (servers and a three-master Redis Cluster), for benches that run
/// inside a tokio runtime.
#[path = "../../tests/support/redis.rs"]
pub mod redis;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the Redis helpers wait for a server to come up.
pub const WAIT: Duration = Duration::from_secs(10);

/// A redis-server on a free port, without persistence, killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        // Owned from here, so the process is killed and reaped whatever happens next.
        let redis = Redis { child, port };
        let started = Instant::now();
        while !redis.pongs() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    fn pongs(&self) -> bool {
        use std::io::{Read, Write};
        let mut pong = [0u8; 7];
        std::net::TcpStream::connect(("127.0.0.1", self.port))
            .and_then(|mut s| s.write_all(b"PING\r\n").and_then(|()| s.read_exact(&mut pong)))
            .is_ok()
            && &pong == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of process `pid`, in seconds.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 =
        fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// Starts a crier binary on a free port with `args`, its limits opened up for a load generator
/// (a few addresses opening thousands of streams and publishing as fast as they can); returns
/// the process and the address it listens on.
pub fn spawn_crier(bin: &std::path::Path, args: &[String]) -> (Child, std::net::SocketAddr) {
    let mut command = Command::new(bin);
    command
        .env("CRIER_MAX_CONNECTIONS", "1000000")
        .env("CRIER_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("CRIER_NEW_STREAMS_PER_SEC", "1000000")
        .env("CRIER_RESUMES_PER_SEC", "1000000")
        .env("CRIER_MAX_STREAMS_PER_IP", "1000000")
        .env("CRIER_PUBLISHES_PER_SEC", "10000000")
        .env("CRIER_NEW_TOPICS_PER_SEC", "1000000");
    spawn_crier_command(command, args)
}

/// Starts a crier binary on a free port with `args` and its default limits.
pub fn spawn_crier_as_deployed(
    bin: &std::path::Path,
    args: &[String],
) -> (Child, std::net::SocketAddr) {
    spawn_crier_command(Command::new(bin), args)
}

fn spawn_crier_command(mut command: Command, args: &[String]) -> (Child, std::net::SocketAddr) {
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env("CRIER_LOG", "warn,crier=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crier");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().expect("crier exited before listening").expect("read log");
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(listen) = json["fields"]["listen"].as_str() {
            break listen.parse().expect("listen address");
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

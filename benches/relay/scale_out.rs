//! The scale-out scenarios of the relay bench, with real `crier` processes: does a node
//! receive only the events of the topics it has readers for, and how do the Redis processes
//! share the work.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::support::{self, process_cpu_seconds};
use super::{Args, Backend, print_redis};

const NODES: usize = 4;
const TOPICS: usize = 4000;
const TOPICS_PER_STREAM: usize = 50;
const PUBLISHERS: usize = 16;

pub(super) async fn run(args: &Args) {
    let bin = args.server_bin.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crier")));
    for (name, cluster, broadcast) in
        [("disjoint", false, false), ("shards", true, false), ("broadcast", false, true)]
    {
        if args.only.as_deref().is_none_or(|only| only == name) {
            scenario(&bin, args, cluster, broadcast).await;
        }
    }
}

async fn scenario(bin: &std::path::Path, args: &Args, cluster: bool, broadcast: bool) {
    let backend = Backend::start(cluster).await;
    let urls = match &backend {
        Backend::Server(redis) => redis.url(),
        Backend::Cluster(cluster) => cluster.urls(),
    };
    let mut flags = vec!["--redis-url".to_owned(), urls, "--max-topics-per-stream=64".to_owned()];
    if cluster {
        flags.push("--redis-cluster".to_owned());
    }
    let mut nodes: Vec<(Child, SocketAddr)> =
        (0..NODES).map(|_| support::spawn_crier(bin, &flags)).collect();
    for (_, addr) in &nodes {
        wait_for("a node to be ready", || async { get(*addr, "/readyz").await.0 == 200 }).await;
    }

    // Readers: every topic on every node, or each node a disjoint quarter.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut subscriptions = 0;
    for (n, (_, addr)) in nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..TOPICS).filter(|t| broadcast || t % NODES == n).collect();
        subscriptions += mine.len();
        for chunk in mine.chunks(TOPICS_PER_STREAM) {
            let query: Vec<String> = chunk.iter().map(|t| format!("topic=t{t}")).collect();
            let target = format!("/sse?{}", query.join("&"));
            readers.push(tokio::spawn(read_stream(*addr, target, delivered.clone())));
        }
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, addr)| *addr).collect();
    wait_for("every reader to be subscribed", || async {
        let mut total = 0.0;
        for addr in &addrs {
            total += metric(*addr, "crier_subscriptions").await;
        }
        total as usize == subscriptions
    })
    .await;

    let node_before = node_stats(&nodes).await;
    let redis_before = backend.pubsub_stats().await;
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_publisher = args.rate as f64 / PUBLISHERS as f64;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (addrs, published, duration) = (addrs.clone(), published.clone(), args.duration);
            let payload = "x".repeat(args.payload);
            tokio::spawn(async move {
                let mut connections = Vec::new();
                for addr in &addrs {
                    let stream = TcpStream::connect(addr).await.expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    connections.push(BufReader::new(stream));
                }
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_publisher));
                let mut k = p;
                while started.elapsed() < duration {
                    tick.tick().await;
                    let node = k % NODES;
                    let topic = k % TOPICS;
                    k += PUBLISHERS;
                    if post(&mut connections[node], &format!("t{topic}"), &payload).await {
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let took = started.elapsed();
    let total = published.load(Ordering::Acquire);
    let readers_per_topic = if broadcast { NODES as u64 } else { 1 };
    let expected = total * readers_per_topic;
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.load(Ordering::Acquire) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node_after = node_stats(&nodes).await;
    let redis_after = backend.pubsub_stats().await;
    for reader in readers {
        reader.abort();
    }

    println!();
    println!(
        "scale-out: {NODES} nodes through {}, {TOPICS} topics, readers {}, {} events/s for {:?}, {} B",
        backend.name(),
        if broadcast { "for every topic on every node" } else { "for a disjoint quarter per node" },
        args.rate,
        args.duration,
        args.payload
    );
    println!(
        "  published     {total} events in {:.2} s; delivered {} of {expected}",
        took.as_secs_f64(),
        delivered.load(Ordering::Acquire)
    );
    for (n, (after, before)) in node_after.iter().zip(&node_before).enumerate() {
        let received = after.received - before.received;
        let cpu = after.cpu - before.cpu;
        println!(
            "  node {n}        received {received} ({:.1}% of all events), {cpu:.2} CPU-s ({:.1} µs per event published), RSS {:.1} MiB",
            received * 100.0 / total.max(1) as f64,
            cpu / total.max(1) as f64 * 1e6,
            after.rss_kib as f64 / 1024.0
        );
    }
    print_redis(&redis_before, &redis_after, total);
    for (child, _) in &mut nodes {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What one node says of itself.
struct NodeStats {
    received: f64,
    cpu: f64,
    rss_kib: u64,
}

async fn node_stats(nodes: &[(Child, SocketAddr)]) -> Vec<NodeStats> {
    let mut stats = Vec::new();
    for (child, addr) in nodes {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        stats.push(NodeStats {
            received: metric(*addr, "crier_relay_received_total").await,
            cpu: process_cpu_seconds(child.id()),
            rss_kib,
        });
    }
    stats
}

/// Reads an SSE stream until aborted, counting its events.
async fn read_stream(addr: SocketAddr, target: String, delivered: Arc<AtomicU64>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let needle = b"data: ";
    let mut carry: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let Ok(n) = stream.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        carry.extend_from_slice(&buffer[..n]);
        let found = memchr::memmem::find_iter(&carry, needle).count() as u64;
        delivered.fetch_add(found, Ordering::Relaxed);
        // Keep what could start a match split by the next read.
        let keep = carry.len().min(needle.len() - 1);
        carry.drain(..carry.len() - keep);
    }
}

/// Publishes `data` to `topic` on a keep-alive connection; whether it was taken.
async fn post(connection: &mut BufReader<TcpStream>, topic: &str, data: &str) -> bool {
    let request = format!(
        "POST /publish?topic={topic} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    );
    if connection.get_mut().write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut status = String::new();
    if connection.read_line(&mut status).await.is_err() {
        return false;
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        if connection.read_line(&mut line).await.is_err() {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    connection.read_exact(&mut body).await.is_ok() && status.contains(" 200 ")
}

/// GET over a new connection: the status and the body.
async fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return (0, String::new()) };
    let request = format!("GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    (status, body)
}

/// A sample of the node's `/metrics` (0 when missing).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = get(addr, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Relay benchmark: how many events per second one Redis takes and hands back, without HTTP in
//! the way. Starts a `redis-server` on a free port and 1, 2 or 3 in-process nodes joined through
//! it; publisher tasks on every node call `Hub::publish` (one Lua script per event, pipelined by
//! the relay) as fast as Redis answers, and one subscriber per node checks that it receives every
//! event once, in one order.
//!
//! ```text
//! cargo bench --bench relay                          # 1, 2 and 3 nodes, 256 publishers, 5 s
//! cargo bench --bench relay -- --nodes 2 --publishers 64 --duration 10s
//! cargo bench --bench relay -- --redis-cluster       # through a Redis Cluster of 3 masters
//! ```
//!
//! The end-to-end view (HTTP publishers, SSE subscribers, real binaries) is
//! `cargo bench --bench fanout -- --cluster`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use crier::internals::{
    EventData, Hub, HubConfig, Metrics, Polled, RelayConfig, SubscriptionRequest, TopicName, Wire,
};
use support::redis::RedisCluster;
use support::{Redis, process_cpu_seconds};

#[derive(Parser, Debug, Clone)]
#[command(about = "Events per second through one Redis, in-process nodes")]
struct Args {
    /// Nodes (all of 1, 2 and 3 when not given).
    #[arg(long)]
    nodes: Option<usize>,
    /// Concurrent publisher tasks, spread over the nodes.
    #[arg(long, default_value_t = 256)]
    publishers: usize,
    /// Publish workers (pooled connections) per node.
    #[arg(long, default_value_t = 4)]
    pool_size: usize,
    /// How long to publish.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Event payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Go through a Redis Cluster of three masters instead of one redis-server.
    #[arg(long)]
    redis_cluster: bool,
    /// Topics the publishers spread over (on a Redis Cluster, topics land on different masters).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let counts = match args.nodes {
        Some(n) => vec![n],
        None => vec![1, 2, 3],
    };
    for nodes in counts {
        runtime.block_on(run(&args, nodes));
    }
}

/// The Redis the nodes go through.
enum Backend {
    Server(Redis),
    Cluster(RedisCluster),
}

impl Backend {
    async fn start(cluster: bool) -> Backend {
        if cluster {
            Backend::Cluster(RedisCluster::start().await)
        } else {
            Backend::Server(Redis::start())
        }
    }

    fn relay(&self, pool_size: usize) -> RelayConfig {
        match self {
            Backend::Server(redis) => {
                let key_ttl = Duration::from_secs(600);
                let idempotency_window = Duration::from_secs(300);
                RelayConfig {
                    urls: vec![redis.url()],
                    cluster: false,
                    pool_size,
                    key_ttl,
                    idempotency_window,
                    interest_grace: Duration::from_secs(60),
                }
            }
            Backend::Cluster(cluster) => RelayConfig {
                urls: cluster.masters.iter().map(|m| m.url()).collect(),
                cluster: true,
                pool_size,
                key_ttl: Duration::from_secs(600),
                idempotency_window: Duration::from_secs(300),
                interest_grace: Duration::from_secs(60),
            },
        }
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Backend::Server(redis) => redis.cpu_seconds(),
            Backend::Cluster(cluster) => {
                cluster.masters.iter().filter_map(|m| m.pid()).map(process_cpu_seconds).sum()
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Server(_) => "one Redis",
            Backend::Cluster(_) => "a Redis Cluster of 3 masters",
        }
    }
}

async fn run(args: &Args, nodes: usize) {
    let redis = Backend::start(args.redis_cluster).await;
    let relay = redis.relay(args.pool_size);
    let hubs: Vec<Arc<Hub>> = (0..nodes)
        .map(|_| {
            let metrics = Arc::new(Metrics::new());
            Arc::new(Hub::cluster(HubConfig::default(), metrics, &relay).expect("relay starts"))
        })
        .collect();
    for hub in &hubs {
        let started = Instant::now();
        while !hub.is_ready() {
            assert!(started.elapsed() < Duration::from_secs(10), "relay did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let topics: Vec<TopicName> =
        (0..args.topics.max(1)).map(|i| TopicName::new(&format!("bench-{i}")).unwrap()).collect();

    // One subscriber per node, to every topic: counts events and checks each topic's order.
    let mut subscribers = Vec::new();
    for hub in &hubs {
        let request = SubscriptionRequest::new(topics.clone(), None, Wire::Sse);
        let mut subscription = hub.subscribe(request).await.expect("subscribe");
        let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let task = tokio::spawn({
            let counts = counts.clone();
            let mut last = vec![0; topics.len()];
            async move {
                std::future::poll_fn(|cx| {
                    while let std::task::Poll::Ready(Polled::Events) =
                        subscription.poll_events(cx, usize::MAX, |topic, event| {
                            let last = &mut last[usize::from(topic)];
                            if *last != 0 && event.id.seq != *last + 1 {
                                counts.1.fetch_add(1, Ordering::Relaxed);
                            }
                            *last = event.id.seq;
                            counts.0.fetch_add(1, Ordering::Relaxed);
                        })
                    {}
                    std::task::Poll::<()>::Pending
                })
                .await
            }
        });
        subscribers.push((task, counts));
    }

    let published = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let cpu_before = redis.cpu_seconds();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            let (hub, topic) = (hubs[i % nodes].clone(), topics[i % topics.len()].clone());
            let (published, latencies) = (published.clone(), latencies.clone());
            let (duration, payload) = (args.duration, args.payload);
            tokio::spawn(async move {
                let data = EventData::from("x".repeat(payload));
                let mut own = Vec::new();
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    hub.publish(&topic, None, data.clone()).await.expect("Redis takes the event");
                    own.push(sent.elapsed().as_micros() as u64);
                    published.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().extend(own);
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let took = started.elapsed();
    let redis_cpu = redis.cpu_seconds() - cpu_before;
    let total = published.load(Ordering::Acquire);
    // Let the last events arrive everywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = |hub: &Hub| -> u64 {
        topics.iter().filter_map(|t| hub.head(t.as_str())).map(|id| id.seq).sum()
    };
    while hubs.iter().any(|h| delivered(h) < total) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while subscribers.iter().any(|(_, c)| c.0.load(Ordering::Acquire) < total)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report: Vec<(u64, u64)> = subscribers
        .iter()
        .map(|(task, c)| {
            task.abort();
            (c.0.load(Ordering::Acquire), c.1.load(Ordering::Acquire))
        })
        .collect();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_unstable();
    let q = |p: f64| latencies.get((latencies.len() as f64 * p) as usize).copied().unwrap_or(0);
    println!();
    println!(
        "crier relay: {nodes} node{} through {}, {} topic{}, {} publishers, {} publish workers per node, {} B events",
        if nodes > 1 { "s" } else { "" },
        redis.name(),
        topics.len(),
        if topics.len() > 1 { "s" } else { "" },
        args.publishers,
        args.pool_size,
        args.payload
    );
    println!(
        "  published     {total} events in {:.2} s: {:.0} events/s (Redis {:.2} CPU-seconds per second)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        redis_cpu / took.as_secs_f64()
    );
    println!(
        "  acknowledged  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        q(0.5) as f64 / 1e3,
        q(0.99) as f64 / 1e3,
        latencies.last().copied().unwrap_or(0) as f64 / 1e3
    );
    for (node, (received, out_of_order)) in report.iter().enumerate() {
        println!(
            "  node {node}        received {received} of {total}, {} missing, {out_of_order} out of order",
            total.saturating_sub(*received)
        );
    }
}

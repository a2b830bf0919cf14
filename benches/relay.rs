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
//! cargo bench --bench relay -- --scale-out           # 4 real nodes, 4,000 topics (see below)
//! cargo bench --bench relay -- --scale-out --server-bin ../old/target/release/crier
//! ```
//!
//! `--scale-out` runs real `crier` processes: 4 nodes and 4,000 topics, events published over
//! HTTP at `--rate` spread evenly over the topics and the nodes, with SSE readers (streams of
//! 50 topics) for a disjoint quarter of the topics on each node (through one Redis, then a
//! Redis Cluster of 3 masters), then for every topic on every node (broadcast). It reports
//! each node's received events as a share of all events, its CPU and RSS, and each Redis
//! process's CPU and share of the Pub/Sub publishes.
//!
//! The end-to-end view (HTTP publishers, SSE subscribers, real binaries) is
//! `cargo bench --bench fanout -- --cluster`.

#[path = "relay/scale_out.rs"]
mod scale_out;
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
    /// Run the scale-out scenarios with real nodes instead.
    #[arg(long)]
    scale_out: bool,
    /// Scale-out: the crier binary to run (default: this build's), to measure another build
    /// with the same load in the same session.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Scale-out: only this scenario (`disjoint`, `shards` or `broadcast`).
    #[arg(long)]
    only: Option<String>,
    /// Scale-out: events published per second.
    #[arg(long, default_value_t = 4000)]
    rate: u64,
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
    if args.scale_out {
        runtime.block_on(scale_out::run(&args));
        return;
    }
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

    /// The relay configuration, read from flags as the binary reads them (so this bench also
    /// builds against earlier versions of the crate, to measure before and after).
    fn relay(&self, pool_size: usize) -> RelayConfig {
        let (urls, cluster) = match self {
            Backend::Server(redis) => (redis.url(), false),
            Backend::Cluster(cluster) => (cluster.urls(), true),
        };
        let mut argv = vec!["crier", "--redis-url", urls.as_str()];
        if cluster {
            argv.push("--redis-cluster");
        }
        let config = crier::Config::try_parse_from(argv).expect("flags");
        let mut relay = config.relay().expect("cluster mode");
        relay.pool_size = pool_size;
        relay
    }

    /// Per Redis process: its CPU seconds, the Pub/Sub publishes it ran (`PUBLISH` and
    /// `SPUBLISH`, from the publish script), those it sent over the cluster bus, and the
    /// seconds it spent running scripts (`EVALSHA`).
    async fn pubsub_stats(&self) -> Vec<(f64, u64, u64, f64)> {
        match self {
            Backend::Server(redis) => {
                let (publishes, bus, scripts) = redis_pubsub(&redis.url()).await;
                vec![(redis.cpu_seconds(), publishes, bus, scripts)]
            }
            Backend::Cluster(cluster) => {
                let mut stats = Vec::new();
                for master in &cluster.masters {
                    let (publishes, bus, scripts) = redis_pubsub(&master.url()).await;
                    let cpu = master.pid().map_or(0.0, process_cpu_seconds);
                    stats.push((cpu, publishes, bus, scripts));
                }
                stats
            }
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
    let stats_before = redis.pubsub_stats().await;
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
    let stats_after = redis.pubsub_stats().await;
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
    print_redis(&stats_before, &stats_after, total);
    for (node, (received, out_of_order)) in report.iter().enumerate() {
        println!(
            "  node {node}        received {received} of {total}, {} missing, {out_of_order} out of order",
            total.saturating_sub(*received)
        );
    }
}

/// The Pub/Sub publishes (`PUBLISH` and `SPUBLISH` calls) a Redis has run, the publish
/// messages it has sent over the cluster bus (0 outside a cluster), and the seconds its
/// `EVALSHA` calls took.
async fn redis_pubsub(url: &str) -> (u64, u64, f64) {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let stats: String =
        redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.expect("INFO");
    let field = |command: &str, name: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
            .and_then(|line| line.split(',').find_map(|f| f.strip_prefix(name)))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let calls = |command: &str| field(command, "calls=");
    let cluster: String =
        redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.unwrap_or_default();
    let bus = cluster
        .lines()
        .filter(|line| line.starts_with("cluster_stats_messages_publish"))
        .filter(|line| line.contains("_sent:"))
        .filter_map(|line| line.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum();
    let scripts = field("evalsha", "usec=") as f64 / 1e6;
    (calls("publish") + calls("spublish"), bus, scripts)
}

/// Prints what the Redis processes did between two [`Backend::pubsub_stats`], for `events`
/// published.
fn print_redis(before: &[(f64, u64, u64, f64)], after: &[(f64, u64, u64, f64)], events: u64) {
    let per_event = |seconds: f64| seconds / events.max(1) as f64 * 1e6;
    let cpu: f64 = after.iter().zip(before).map(|(a, b)| a.0 - b.0).sum();
    let scripts: f64 = after.iter().zip(before).map(|(a, b)| a.3 - b.3).sum();
    println!(
        "  Redis         {:.1} µs CPU per event, summed over {} process{} ({:.1} µs of it running the script)",
        per_event(cpu),
        after.len(),
        if after.len() > 1 { "es" } else { "" },
        per_event(scripts)
    );
    let publishes: Vec<u64> = after.iter().zip(before).map(|(a, b)| a.1 - b.1).collect();
    let all: u64 = publishes.iter().sum();
    for (i, ((after, before), published)) in after.iter().zip(before).zip(&publishes).enumerate() {
        println!(
            "  redis {i}       {:.2} CPU-s, {published} Pub/Sub publishes ({:.1}%), {} cluster-bus publish messages",
            after.0 - before.0,
            *published as f64 * 100.0 / all.max(1) as f64,
            after.2 - before.2
        );
    }
}

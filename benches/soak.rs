//! Soak: a two-node cluster on a persistent Redis, run for half an hour (not in CI) while
//! subscribers churn (each stream lives 5 to 60 s, then the client reconnects to a node at
//! random with its `Last-Event-ID`), keyed publishes go in at a steady rate (a refused one is
//! retried with its key until it is answered), Redis is restarted twice and a node once. Every
//! minute it prints each node's RSS, open file descriptors and CPU, and the events lost,
//! duplicated and skipped so far; at the end, what every subscriber still missed.
//!
//! ```text
//! cargo bench --bench soak                          # 30 minutes, 300 subscribers, 100 events/s
//! cargo bench --bench soak -- --minutes 5 --subscribers 100 --rate 50
//! ```
//!
//! The schedule scales with `--minutes`: Redis restarts at 27% and 67% of the run, node B at
//! 47%. A subscriber's data counts up by one per topic, so a repeated number is a duplicate and
//! a skipped one a gap (announced if a `crier.gap` came first, silent otherwise).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[path = "support/storm.rs"]
mod storm;

use support::redis::RedisServer;

struct Args {
    minutes: u64,
    subscribers: usize,
    topics: usize,
    rate: u32,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args { minutes: 30, subscribers: 300, topics: 20, rate: 100 };
        let mut given = std::env::args().skip(1);
        while let Some(arg) = given.next() {
            let mut value = || given.next().unwrap_or_else(|| panic!("{arg} takes a value"));
            match arg.as_str() {
                "--minutes" => args.minutes = value().parse().expect("minutes"),
                "--subscribers" => args.subscribers = value().parse().expect("a count"),
                "--topics" => args.topics = value().parse().expect("a count"),
                "--rate" => args.rate = value().parse().expect("events per second"),
                _ => {}
            }
        }
        args
    }
}

/// What every subscriber and the publisher share.
struct Soak {
    topics: usize,
    /// The nodes' addresses (a restarted node comes back on another port).
    nodes: std::sync::Mutex<Vec<SocketAddr>>,
    /// The last number published to each topic.
    published: Vec<AtomicU64>,
    duplicates: AtomicU64,
    silent_gaps: AtomicU64,
    gap_notices: AtomicU64,
    reconnects: AtomicU64,
    refusals: AtomicU64,
    publish_retries: AtomicU64,
    stop: AtomicBool,
}

impl Soak {
    fn node(&self) -> SocketAddr {
        let nodes = self.nodes.lock().unwrap();
        nodes[fastrand::usize(..nodes.len())]
    }
}

fn main() {
    let args = Args::parse();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_crier"));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(soak(args, bin));
}

async fn soak(args: Args, bin: PathBuf) {
    let mut redis = RedisServer::start_persistent().await;
    let node_args = vec!["--redis-url".to_owned(), redis.url()];
    let (node_a, a) = support::spawn_crier(&bin, &node_args);
    let (mut node_b, b) = support::spawn_crier(&bin, &node_args);
    let world = Arc::new(Soak {
        topics: args.topics,
        nodes: std::sync::Mutex::new(vec![a, b]),
        published: (0..args.topics).map(|_| AtomicU64::new(0)).collect(),
        duplicates: AtomicU64::new(0),
        silent_gaps: AtomicU64::new(0),
        gap_notices: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        refusals: AtomicU64::new(0),
        publish_retries: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    println!(
        "soak: {} min, {} subscribers on {} topics, {} keyed publishes/s, 2 nodes, persistent Redis",
        args.minutes, args.subscribers, args.topics, args.rate
    );
    let lasts: Vec<Arc<AtomicU64>> =
        (0..args.subscribers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::new();
    for (index, last) in lasts.iter().enumerate() {
        tasks.push(tokio::spawn(subscribe(world.clone(), index % args.topics, last.clone())));
    }
    let publisher = tokio::spawn(publish(world.clone(), args.rate));

    let total = Duration::from_secs(args.minutes * 60);
    let started = Instant::now();
    let at = |share: f64| total.mul_f64(share);
    let mut schedule = vec![
        (at(0.27), "restart Redis"),
        (at(0.47), "restart node B"),
        (at(0.67), "restart Redis"),
    ];
    let cpu = |child: &Child| support::process_cpu_seconds(child.id());
    let mut last_cpu = (cpu(&node_a), cpu(&node_b));
    println!(
        "min | RSS A, B (MiB) | fds A, B | CPU A, B (s/min) | published | reconnects | refusals | duplicates | silent gaps | crier.gap | behind"
    );
    let mut minute = 0;
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(&(when, what)) = schedule.first()
            && started.elapsed() >= when
        {
            schedule.remove(0);
            println!("-- {:.1} min: {what}", started.elapsed().as_secs_f64() / 60.0);
            if what == "restart Redis" {
                redis.restart().await;
            } else {
                let _ = node_b.kill();
                let _ = node_b.wait();
                let (child, addr) = support::spawn_crier(&bin, &node_args);
                node_b = child;
                world.nodes.lock().unwrap()[1] = addr;
                last_cpu.1 = cpu(&node_b);
            }
        }
        if started.elapsed() >= Duration::from_secs((minute + 1) * 60) {
            minute += 1;
            let now_cpu = (cpu(&node_a), cpu(&node_b));
            let published: u64 = world.published.iter().map(|n| n.load(Ordering::SeqCst)).sum();
            let behind = lasts
                .iter()
                .enumerate()
                .filter(|(i, last)| {
                    let topic = world.published[i % world.topics].load(Ordering::SeqCst);
                    last.load(Ordering::SeqCst) + u64::from(args.rate) < topic
                })
                .count();
            println!(
                "{minute:>3} | {:.1}, {:.1} | {}, {} | {:.2}, {:.2} | {published} | {} | {} | {} | {} | {} | {behind}",
                rss_mib(&node_a),
                rss_mib(&node_b),
                fds(&node_a),
                fds(&node_b),
                now_cpu.0 - last_cpu.0,
                now_cpu.1 - last_cpu.1,
                world.reconnects.load(Ordering::Relaxed),
                world.refusals.load(Ordering::Relaxed),
                world.duplicates.load(Ordering::Relaxed),
                world.silent_gaps.load(Ordering::Relaxed),
                world.gap_notices.load(Ordering::Relaxed),
            );
            last_cpu = now_cpu;
        }
    }
    world.stop.store(true, Ordering::SeqCst);
    let _ = publisher.await;
    // Every subscriber catches up with the last number of its topic, or what it missed is lost.
    let finals: Vec<u64> = world.published.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let lost: u64 = lasts
            .iter()
            .enumerate()
            .map(|(i, last)| finals[i % world.topics].saturating_sub(last.load(Ordering::SeqCst)))
            .sum();
        if lost == 0 || Instant::now() >= deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for task in tasks {
        task.abort();
    }
    println!(
        "end: {} events published, {lost} lost, {} duplicated, {} silent gaps, {} crier.gap, {} publish retries",
        finals.iter().sum::<u64>(),
        world.duplicates.load(Ordering::Relaxed),
        world.silent_gaps.load(Ordering::Relaxed),
        world.gap_notices.load(Ordering::Relaxed),
        world.publish_retries.load(Ordering::Relaxed),
    );
    for mut node in [node_a, node_b] {
        let _ = node.kill();
        let _ = node.wait();
    }
}

fn rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn fds(child: &Child) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", child.id())).map_or(0, |dir| dir.count())
}

/// Publishes 1, 2, … to every topic in turn, each with an idempotency key, through a node at
/// random; a publish that is not answered 200 is retried with its key until it is.
async fn publish(world: Arc<Soak>, rate: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut topic = 0;
    while !world.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let number = world.published[topic].load(Ordering::SeqCst) + 1;
        let body = number.to_string();
        let request = format!(
            "POST /publish?topic=soak/{topic} HTTP/1.1\r\nHost: crier\r\nIdempotency-Key: {topic}-{number}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        loop {
            let answered = async {
                let mut stream = BufReader::new(TcpStream::connect(world.node()).await.ok()?);
                stream.get_mut().write_all(request.as_bytes()).await.ok()?;
                storm::read_head_and_body(&mut stream).await
            };
            if let Some((200, _, _)) = answered.await {
                break;
            }
            world.publish_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        world.published[topic].store(number, Ordering::SeqCst);
        topic = (topic + 1) % world.topics;
    }
}

/// A subscriber: follows its topic on a node at random, drops its stream after 5 to 60 s and
/// reconnects with its `Last-Event-ID`, as a browser's `EventSource` would after a network
/// change; after a refusal or a dead node, retries after the `retry:` it was given.
async fn subscribe(world: Arc<Soak>, topic: usize, last: Arc<AtomicU64>) {
    let mut last_id: Option<String> = None;
    let mut gap_announced = false;
    loop {
        let node = world.node();
        let mut retry_ms = 1000;
        if let Ok(stream) = TcpStream::connect(node).await {
            let mut stream = BufReader::new(stream);
            let mut request = format!(
                "GET /sse?topic=soak/{topic} HTTP/1.1\r\nHost: crier\r\nAccept: text/event-stream\r\n"
            );
            if let Some(id) = &last_id {
                request.push_str(&format!("Last-Event-ID: {id}\r\n"));
            }
            request.push_str("\r\n");
            let head = async {
                stream.get_mut().write_all(request.as_bytes()).await.ok()?;
                storm::read_head(&mut stream).await
            };
            match head.await {
                Some(head) if storm::header(&head, "transfer-encoding").is_some() => {
                    let lifetime = Duration::from_secs(fastrand::u64(5..=60));
                    let mut pending = String::new();
                    let mut retry = None;
                    let read = async {
                        while let Some(chunk) = storm::read_chunk(&mut stream).await {
                            let text = String::from_utf8_lossy(&chunk).into_owned();
                            for event in storm::parse_events(&mut pending, &text, &mut retry) {
                                if let Some(id) = event.id {
                                    last_id = Some(id);
                                }
                                if event.kind == "crier.gap" {
                                    world.gap_notices.fetch_add(1, Ordering::Relaxed);
                                    gap_announced = true;
                                    continue;
                                }
                                let Ok(number) = event.data.parse::<u64>() else { continue };
                                let seen = last.load(Ordering::SeqCst);
                                if number <= seen {
                                    world.duplicates.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    if number > seen + 1 && seen > 0 && !gap_announced {
                                        world.silent_gaps.fetch_add(1, Ordering::Relaxed);
                                    }
                                    last.store(number, Ordering::SeqCst);
                                }
                                gap_announced = false;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(lifetime, read).await;
                    retry_ms = 0;
                }
                Some(_) => {
                    world.refusals.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        if world.stop.load(Ordering::SeqCst) {
            return;
        }
        world.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(retry_ms + fastrand::u64(0..500))).await;
    }
}

//! End-to-end fan-out benchmark: starts the real `crier` binary, opens N real SSE connections on
//! loopback, publishes events of a given size over HTTP at a set rate (or as fast as the
//! subscribers keep up), and reports published/s, deliveries/s, lost and duplicate events,
//! publish-to-delivery latency (the send time travels in the payload) and server memory per
//! connection.
//!
//! ```text
//! cargo bench --bench fanout                       # the scenarios of the performance bar
//! cargo bench --bench fanout -- --subscribers 10000 --rate 1000 --duration 10s
//! cargo bench --bench fanout -- --subscribers 1000 --rate 0 --duration 10s
//! cargo bench --bench fanout -- --cluster           # cluster mode through one redis-server
//! cargo bench --bench fanout -- --subscribers 30 --redis-nodes 3 --rate 0
//! cargo bench --bench fanout -- --server-bin ../old/target/release/crier   # another build
//! cargo bench --bench fanout -- --mercure           # Mercure hub against native SSE
//! cargo bench --bench fanout -- --tls-vs-plain      # SSE over TLS against plain
//! cargo bench --bench fanout -- --subscribers 1000 --transport mercure-template
//! ```
//!
//! The Mercure transports subscribe to `/.well-known/mercure` (anonymously) with an exact topic
//! (`mercure-exact`) or a URI template matching it (`mercure-template`), and publish form
//! updates from loopback (no publisher key: crier's development mode) with sequential ids.
//!
//! With `--redis-nodes N` the benchmark starts a `redis-server` on a free port and N crier nodes
//! joined through it; subscribers and publishers are spread over the nodes.
//!
//! "As fast as possible" (`--rate 0`) keeps at most `--window` events in flight (published but
//! not yet delivered to every subscriber), so it measures the throughput the system sustains
//! rather than how fast a queue can be overfilled; slow subscribers are still evicted by the
//! server as usual, and are reported.

mod support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use support::{Redis, process_cpu_seconds};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Debug, Clone)]
#[command(about = "End-to-end fan-out benchmark against the real crier binary")]
struct Args {
    /// Subscriber connections.
    #[arg(long)]
    subscribers: Option<usize>,
    /// Events per second to publish; 0 publishes as fast as the subscribers keep up.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Event payload size in bytes (the send timestamp is written into it).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Keep-alive connections publishing in parallel.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// With --rate 0: most events published but not yet delivered to every subscriber (keep it
    /// under the server's --history, which bounds how far a subscriber may lag).
    #[arg(long, default_value_t = 500)]
    window: u64,
    /// Threads reading the subscriber connections.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Extra flag for the server (repeatable), e.g. --server-arg=--max-lag-bytes=4MiB.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Only measure idle memory: connect, measure, disconnect.
    #[arg(long)]
    idle_only: bool,
    /// How subscribers connect: `sse`, `ws` (WebSocket, JSON frames), `ws-raw` (WebSocket,
    /// `format=raw`: the bare data), `mercure-exact` or
    /// `mercure-template` (the Mercure hub, with an exact topic or a URI template).
    #[arg(long, default_value = "sse")]
    transport: String,
    /// Cluster mode: start a redis-server and this many crier nodes joined through it (0: one
    /// node, embedded mode).
    #[arg(long, default_value_t = 0)]
    redis_nodes: usize,
    /// Run the cluster scenarios (single node against 1, 2 and 3 nodes through one Redis)
    /// instead of the single-node performance bars.
    #[arg(long)]
    cluster: bool,
    /// Serve TLS (a certificate made for the run) and connect every subscriber and publisher
    /// over it, HTTP/1.1 by ALPN (a connection per stream, as a load of separate clients).
    #[arg(long)]
    tls: bool,
    /// Run SSE fan-out over TLS against plain, at 1,000 subscribers, instead of the
    /// single-node performance bars.
    #[arg(long)]
    tls_vs_plain: bool,
    /// Publish on each connection without waiting for each answer (HTTP/1.1 pipelining): one
    /// connection then publishes in order as fast as the server takes it. Mercure publishes
    /// need it with more than one event in flight (their ids are the publisher's, in order).
    #[arg(long)]
    pipeline: bool,
    /// Run the Mercure scenarios (native SSE, then the Mercure hub with exact selectors and
    /// with URI templates, at 1000 subscribers each) instead of the single-node performance
    /// bars.
    #[arg(long)]
    mercure: bool,
    /// The server binary to run (default: this build's `crier`), to measure another build
    /// with the same load generator in the same session.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    match args.subscribers {
        Some(subscribers) => run(&args, subscribers),
        None if args.cluster => {
            // Added latency at a steady rate, against the single node; then how many events
            // per second one Redis takes with 1, 2 and 3 nodes publishing and delivering.
            let paced = Args { rate: 2_000, publishers: 16, ..args.clone() };
            for nodes in [0, 1, 2, 3] {
                run(&Args { redis_nodes: nodes, ..paced.clone() }, 30);
            }
            for nodes in [1, 2, 3] {
                let fast = Args { rate: 0, publishers: 64, redis_nodes: nodes, ..args.clone() };
                run(&fast, 30);
            }
        }
        None if args.tls_vs_plain => {
            for tls in [false, true] {
                run(&Args { tls, rate: 0, ..args.clone() }, 1_000);
            }
        }
        None if args.mercure => {
            // One pipelined publisher connection for each: Mercure ids are chosen by the
            // publisher, in order.
            for transport in ["sse", "mercure-exact", "mercure-template"] {
                let transport = transport.into();
                let args =
                    Args { transport, rate: 0, publishers: 1, pipeline: true, ..args.clone() };
                run(&args, 1_000);
            }
        }
        None => {
            // The performance bars, SSE then WebSocket: idle memory at 10k, throughput at 1k,
            // 10k paced at 1000 events/s (as configured by default, and with a write delay).
            for (transport, delay) in [("sse", "150ms"), ("ws", "200ms")] {
                let args = Args { transport: transport.into(), ..args.clone() };
                run(&Args { idle_only: true, ..args.clone() }, 10_000);
                run(&Args { rate: 0, ..args.clone() }, 1_000);
                let paced = Args { rate: 1_000, publishers: 32, client_threads: 2, ..args.clone() };
                run(&paced, 10_000);
                let mut delayed = paced.clone();
                delayed.server_args.push(format!("--write-delay={delay}"));
                run(&delayed, 10_000);
            }
        }
    }
}

/// The server under test, as a child process.
struct Server {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &Args, extra: &[String]) -> Server {
        let bin = args
            .server_bin
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_crier")));
        let (child, addr) = support::spawn_crier(&bin, extra);
        Server { child, addr }
    }

    fn proc_status(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    /// User + system CPU time, in seconds.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get(self.addr, "/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match TLS_CLIENT.get() {
        None => {
            let mut stream = tcp;
            stream.write_all(request.as_bytes()).expect("write");
            let _ = stream.read_to_end(&mut response);
        }
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
            let conn = rustls::ClientConnection::new(config.clone(), name).expect("TLS");
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.write_all(request.as_bytes()).expect("write");
            // The server may close without close_notify: what was read is the answer.
            let _ = stream.read_to_end(&mut response);
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The client side of TLS, once a run has made its certificate (`--tls`).
static TLS_CLIENT: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Makes a certificate for localhost in `dir` (cert.pem, key.pem) and the client
/// configuration that trusts it (HTTP/1.1 by ALPN).
fn make_tls(dir: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::create_dir_all(dir).expect("a directory");
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).expect("a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A connection to the server: plain, or TLS when the run uses it.
async fn dial(addr: SocketAddr, socket: Option<TcpSocket>) -> Conn {
    let tcp = match socket {
        Some(socket) => socket.connect(addr).await.expect("connect"),
        None => TcpStream::connect(addr).await.expect("connect"),
    };
    tcp.set_nodelay(true).expect("nodelay");
    match TLS_CLIENT.get() {
        None => Conn::Plain(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            Conn::Tls(Box::new(tls), vec![0; 16 << 10])
        }
    }
}

/// A connection, plain or TLS (with its own read buffer: TLS records are read whole).
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Vec<u8>),
}

/// Counters shared by the publisher and every subscriber thread.
struct Shared {
    /// Timestamps in payloads are nanoseconds since this instant.
    origin: Instant,
    /// Subscribers use WebSocket rather than SSE, with this `format`.
    websocket: Option<&'static str>,
    /// Subscribers use the Mercure hub, with this selector.
    mercure: Option<&'static str>,
    /// Payload size of every event.
    payload: usize,
    published: AtomicU64,
    delivered: AtomicU64,
    subscribed: AtomicUsize,
    evicted: AtomicUsize,
    stop: AtomicBool,
}

/// What one subscriber saw.
#[derive(Default, Clone)]
struct Stream {
    last_seq: u64,
    received: u64,
    duplicates: u64,
    gaps: u64,
    evicted: bool,
}

/// What one subscriber thread collected.
struct ThreadReport {
    streams: Vec<Stream>,
    latency: Latency,
}

fn run(args: &Args, subscribers: usize) {
    let redis = (args.redis_nodes > 0).then(Redis::start);
    // Every publisher is one address: lift the per-address publish rate (10,000/s by default)
    // so a fast machine measures fan-out, not 429s. The check itself still runs.
    let mut server_args = args.server_args.clone();
    if !server_args.iter().any(|arg| arg.starts_with("--publishes-per-sec")) {
        server_args.push("--publishes-per-sec=4000000000".to_owned());
    }
    if args.tls {
        assert_eq!(args.transport, "sse", "--tls measures SSE streams");
        let dir = std::env::temp_dir().join(format!("crier-bench-tls-{}", std::process::id()));
        let config = make_tls(&dir);
        // One certificate per process: the client configuration is set once.
        let _ = TLS_CLIENT.set(config);
        server_args.push(format!("--tls-cert={}", dir.join("cert.pem").display()));
        server_args.push(format!("--tls-key={}", dir.join("key.pem").display()));
    }
    if args.transport.starts_with("mercure") {
        server_args.push("--mercure-anonymous".to_owned());
    }
    let servers: Vec<Server> = match &redis {
        None => vec![Server::start(args, &server_args)],
        Some(redis) => (0..args.redis_nodes)
            .map(|_| {
                let mut flags = vec![format!("--redis-url={}", redis.url())];
                flags.extend(server_args.iter().cloned());
                let server = Server::start(args, &flags);
                let started = Instant::now();
                while !http_get(server.addr, "/readyz").contains("ready") {
                    assert!(started.elapsed() < Duration::from_secs(10), "node not ready");
                    std::thread::sleep(Duration::from_millis(10));
                }
                server
            })
            .collect(),
    };
    let server = &servers[0];
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(servers.iter().map(|s| s.addr).collect());
    let topic = format!("bench-{}", std::process::id());
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        websocket: match args.transport.as_str() {
            "ws" => Some("json"),
            "ws-raw" => Some("raw"),
            _ => None,
        },
        mercure: match args.transport.as_str() {
            "mercure-exact" => Some(MERCURE_TOPIC),
            "mercure-template" => Some(MERCURE_TEMPLATE),
            _ => None,
        },
        payload: args.payload.max(21),
        published: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        subscribed: AtomicUsize::new(0),
        evicted: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    // Let the server settle, then take the memory baseline.
    std::thread::sleep(Duration::from_millis(300));
    let rss_base = server.rss_kib();

    let threads = args.client_threads.max(1);
    let per_thread: Vec<usize> = (0..threads)
        .map(|t| subscribers / threads + usize::from(t < subscribers % threads))
        .collect();
    let handles: Vec<_> = per_thread
        .iter()
        .enumerate()
        .map(|(t, &count)| {
            let (shared, topic, addrs) = (shared.clone(), topic.clone(), addrs.clone());
            std::thread::spawn(move || subscriber_thread(t, count, &addrs, &topic, &shared))
        })
        .collect();
    let connect_started = Instant::now();
    while shared.subscribed.load(Ordering::Acquire) < subscribers {
        assert!(
            connect_started.elapsed() < Duration::from_secs(120),
            "subscribers did not all connect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_took = connect_started.elapsed();
    // Idle memory: every stream open, nothing published yet.
    std::thread::sleep(Duration::from_millis(1000));
    let rss_idle = server.rss_kib();
    let subscriptions: usize =
        servers.iter().map(|s| s.metric("crier_subscriptions").unwrap_or(0.0) as usize).sum();
    println!();
    println!(
        "crier fanout: {}{subscribers} {}{} subscribers, {} B events, {}, {} publisher connections, server flags {:?}",
        match args.redis_nodes {
            0 => String::new(),
            n => format!("{n} node{} through one Redis, ", if n > 1 { "s" } else { "" }),
        },
        args.transport.to_uppercase(),
        if args.tls { " over TLS" } else { "" },
        args.payload,
        if args.idle_only {
            "idle streams only".to_owned()
        } else if args.rate == 0 {
            format!("as fast as possible (window {})", args.window)
        } else {
            format!("{}/s", args.rate)
        },
        args.publishers,
        server_args
    );
    println!(
        "  connect       {subscribers} streams in {:.2} s; server holds {subscriptions} subscriptions",
        connect_took.as_secs_f64()
    );
    println!(
        "  server RSS    {:.1} MiB before, {:.1} MiB with {subscribers} idle streams: {:.2} KiB per connection",
        rss_base as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        (rss_idle.saturating_sub(rss_base)) as f64 / subscribers as f64
    );
    if args.idle_only {
        shared.stop.store(true, Ordering::Release);
        for h in handles {
            let _ = h.join();
        }
        return;
    }

    let servers_cpu = || {
        servers.iter().map(Server::cpu_seconds).sum::<f64>()
            + redis.as_ref().map_or(0.0, Redis::cpu_seconds)
    };
    // Writes of events, every transport, every node (`None`: a build without the metric).
    let stream_writes = || -> Option<f64> {
        let mut total = 0.0;
        for server in &servers {
            for transport in ["sse", "ws"] {
                total += server
                    .metric(&format!("crier_stream_writes_total{{transport=\"{transport}\"}}"))?;
            }
        }
        Some(total)
    };
    let writes_before = stream_writes();
    let cpu_before = servers_cpu();
    let own_cpu_before = process_cpu_seconds(std::process::id());
    let publish_started = Instant::now();
    publish(args, &addrs, &topic, &shared, subscribers);
    let publish_took = publish_started.elapsed();
    let write_delay = server.metric("crier_write_delay_seconds");
    let published = shared.published.load(Ordering::Acquire);
    // Let in-flight events arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alive = subscribers - shared.evicted.load(Ordering::Acquire);
        if shared.delivered.load(Ordering::Acquire) >= published * alive as u64
            || Instant::now() > drain_deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered_took = publish_started.elapsed();
    let cpu_used = servers_cpu() - cpu_before;
    let own_cpu_used = process_cpu_seconds(std::process::id()) - own_cpu_before;
    let rss_busy = server.rss_kib();
    let writes = stream_writes().zip(writes_before).map(|(after, before)| after - before);
    shared.stop.store(true, Ordering::Release);
    let reports: Vec<ThreadReport> =
        handles.into_iter().map(|h| h.join().expect("subscriber thread")).collect();

    let mut latency = Latency::default();
    let (mut received, mut duplicates, mut lost, mut evicted, mut evicted_missed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for report in &reports {
        latency.merge(&report.latency);
        for s in &report.streams {
            received += s.received;
            duplicates += s.duplicates;
            let missing = s.gaps + published.saturating_sub(s.last_seq);
            if s.evicted {
                evicted += 1;
                evicted_missed += missing;
            } else {
                lost += missing;
            }
        }
    }
    let secs = delivered_took.as_secs_f64();
    println!(
        "  published     {published} events in {:.2} s: {:.0} events/s",
        publish_took.as_secs_f64(),
        published as f64 / publish_took.as_secs_f64()
    );
    println!(
        "  deliveries    {received} in {secs:.2} s: {:.0} deliveries/s",
        received as f64 / secs
    );
    println!(
        "  lost          {lost}   duplicates {duplicates}   evicted {evicted} subscribers (missing {evicted_missed} events after eviction)"
    );
    let ms = |q: f64| latency.quantile(q) as f64 / 1e6;
    println!(
        "  latency       p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max as f64 / 1e6
    );
    println!(
        "  server        {:.2} CPU-seconds per second{}, {:.3} µs of CPU per delivery, RSS {:.1} MiB under load; load generator {:.2} CPU-seconds per second",
        cpu_used / secs,
        if redis.is_some() { " (every node and Redis)" } else { "" },
        cpu_used * 1e6 / received.max(1) as f64,
        rss_busy as f64 / 1024.0,
        own_cpu_used / secs
    );
    if let Some(writes) = writes {
        println!(
            "  writes        {writes:.0} writes of events: {:.1} deliveries per write; write delay as publishing ended {:.1} ms",
            received as f64 / writes.max(1.0),
            write_delay.unwrap_or(0.0) * 1e3
        );
    }
}

/// Publishes for `args.duration`: paced at `args.rate`, or as fast as the window allows.
fn publish(
    args: &Args,
    addrs: &[SocketAddr],
    topic: &str,
    shared: &Arc<Shared>,
    subscribers: usize,
) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let started = tokio::time::Instant::now();
        let end = started + args.duration;
        let tasks: Vec<_> = (0..args.publishers.max(1))
            .map(|i| {
                let (shared, next, topic) = (shared.clone(), next.clone(), topic.to_owned());
                let addr = addrs[i % addrs.len()];
                let (rate, window, payload) = (args.rate, args.window, args.payload);
                let pipelined = args.pipeline;
                tokio::spawn(async move {
                    let mercure = shared.mercure.is_some();
                    let mut conn =
                        Publisher::connect(addr, &topic, payload, mercure, pipelined).await;
                    loop {
                        let k = next.fetch_add(1, Ordering::AcqRel);
                        if let Some(offset) = (k * 1_000_000_000).checked_div(rate) {
                            let due = started + Duration::from_nanos(offset);
                            if due >= end {
                                return conn.finish().await;
                            }
                            tokio::time::sleep_until(due).await;
                        } else {
                            if tokio::time::Instant::now() >= end {
                                return conn.finish().await;
                            }
                            loop {
                                let alive =
                                    (subscribers - shared.evicted.load(Ordering::Acquire)) as u64;
                                let published = shared.published.load(Ordering::Acquire);
                                if published * alive
                                    <= shared.delivered.load(Ordering::Acquire) + window * alive
                                {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_micros(200)).await;
                            }
                        }
                        let ts = shared.origin.elapsed().as_nanos() as u64;
                        conn.publish(ts).await;
                        shared.published.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("publisher task");
        }
    });
}

/// The topic Mercure updates are published to, and the selectors that subscribe to it.
const MERCURE_TOPIC: &str = "https://bench.example/books/1";
const MERCURE_TEMPLATE: &str = "https://bench.example/books/{id}";

/// A keep-alive HTTP/1.1 publishing connection.
type Reader = BufReader<Box<dyn tokio::io::AsyncRead + Unpin + Send>>;

struct Publisher {
    writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    /// Where answers are read after each publish; `None` when a task reads them (pipelined).
    reader: Option<Reader>,
    head: Vec<u8>,
    body: Vec<u8>,
    /// Publishes Mercure updates, with ids `m-1`, `m-2`, …
    mercure: bool,
    /// Publishes sent (pipelined: answered or not).
    sent: u64,
    /// Pipelined publishes answered so far.
    answered: Arc<AtomicU64>,
}

impl Publisher {
    /// A connection; `pipelined`, it sends each publish without waiting for the answer to the
    /// one before (a task reads the answers), so the publishes' order is the order they are
    /// sent in, and one connection keeps the server busy.
    async fn connect(
        addr: SocketAddr,
        topic: &str,
        payload: usize,
        mercure: bool,
        pipelined: bool,
    ) -> Publisher {
        let head = format!(
            "POST /publish?topic={topic} HTTP/1.1\r\nHost: bench\r\nContent-Length: {payload}\r\n\r\n"
        );
        let (read, writer): (
            Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        ) = match dial(addr, None).await {
            Conn::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (Box::new(read), Box::new(write))
            }
            Conn::Tls(tls, _) => {
                let (read, write) = tokio::io::split(*tls);
                (Box::new(read), Box::new(write))
            }
        };
        let mut reader = Some(BufReader::new(read));
        let answered = Arc::new(AtomicU64::new(0));
        if pipelined {
            let mut answers = reader.take().expect("the reader");
            let answered = answered.clone();
            tokio::spawn(async move {
                while read_answer(&mut answers).await {
                    answered.fetch_add(1, Ordering::AcqRel);
                }
            });
        }
        Publisher {
            writer,
            reader,
            head: head.into_bytes(),
            body: vec![b'x'; payload.max(21)],
            mercure,
            sent: 0,
            answered,
        }
    }

    /// Waits until every pipelined publish is answered (a publish still in the socket when
    /// the connection closes is never made).
    async fn finish(&mut self) {
        if self.reader.is_some() {
            return;
        }
        while self.answered.load(Ordering::Acquire) < self.sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn publish(&mut self, ts: u64) {
        // The payload starts with the send time: 20 digits and a space.
        let stamp = format!("{ts:020} ");
        self.body[..21].copy_from_slice(stamp.as_bytes());
        let mut request = Vec::with_capacity(self.head.len() + self.body.len() + 128);
        self.sent += 1;
        if self.mercure {
            let sent = self.sent;
            let topic: String = form_urlencoded::byte_serialize(MERCURE_TOPIC.as_bytes()).collect();
            let data: String = form_urlencoded::byte_serialize(&self.body).collect();
            let form = format!("topic={topic}&id=m-{sent}&data={data}");
            request.extend_from_slice(
                format!(
                    "POST /.well-known/mercure HTTP/1.1\r\nHost: bench\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
                    form.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(form.as_bytes());
        } else {
            request.extend_from_slice(&self.head);
            request.extend_from_slice(&self.body);
        }
        self.writer.write_all(&request).await.expect("send publish");
        if let Some(reader) = &mut self.reader {
            assert!(read_answer(reader).await, "the publish was answered");
        }
    }
}

/// Reads one publish answer, asserting it is a 200; false once the connection is closed.
async fn read_answer(reader: &mut Reader) -> bool {
    let mut status = String::new();
    if reader.read_line(&mut status).await.unwrap_or(0) == 0 {
        return false;
    }
    assert!(status.starts_with("HTTP/1.1 200"), "publish failed: {status}");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("publish response head");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.expect("publish response body");
    true
}

fn subscriber_thread(
    thread: usize,
    count: usize,
    addrs: &[SocketAddr],
    topic: &str,
    shared: &Arc<Shared>,
) -> ThreadReport {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    let streams = Rc::new(RefCell::new(vec![Stream::default(); count]));
    let latency = Rc::new(RefCell::new(Latency::default()));
    let buffer = Rc::new(RefCell::new(vec![0u8; 256 << 10]));
    // Beyond one source address's ephemeral ports, spread over 127.0.0.x.
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (thread % 200) as u8);
    local.block_on(&runtime, async {
        let connecting = Rc::new(tokio::sync::Semaphore::new(128));
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let addr = addrs[index % addrs.len()];
            let (streams, latency, buffer, shared, topic, connecting) = (
                streams.clone(),
                latency.clone(),
                buffer.clone(),
                shared.clone(),
                topic.to_owned(),
                connecting.clone(),
            );
            tasks.push(tokio::task::spawn_local(async move {
                let permit = connecting.acquire().await.expect("semaphore");
                let stream =
                    connect_subscriber(addr, source, &topic, shared.websocket, shared.mercure)
                        .await;
                drop(permit);
                shared.subscribed.fetch_add(1, Ordering::AcqRel);
                read_stream(stream, index, &streams, &latency, &buffer, &shared).await;
            }));
        }
        while !shared.stop.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.abort();
        }
    });
    drop(local);
    let streams = streams.borrow().clone();
    let latency = latency.borrow().clone();
    ThreadReport { streams, latency }
}

async fn connect_subscriber(
    addr: SocketAddr,
    source: std::net::Ipv4Addr,
    topic: &str,
    websocket: Option<&str>,
    mercure: Option<&str>,
) -> Conn {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source.into(), 0)).expect("bind source address");
    let mut stream = dial(addr, Some(socket)).await;
    let request = if let Some(selector) = mercure {
        let selector: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
        format!(
            "GET /.well-known/mercure?topic={selector} HTTP/1.1\r\nHost: bench\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
    } else if let Some(format) = websocket {
        format!(
            "GET /ws?topic={topic}&format={format} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    } else {
        format!(
            "GET /sse?topic={topic} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        )
    };
    match &mut stream {
        Conn::Plain(tcp) => tcp.write_all(request.as_bytes()).await,
        Conn::Tls(tls, _) => tls.write_all(request.as_bytes()).await,
    }
    .expect("send subscribe");
    stream
}

/// Reads a chunked SSE stream, checking every event's sequence number and recording latency.
/// The thread's subscribers share one read buffer: each reads only when its socket is ready.
async fn read_stream(
    mut stream: Conn,
    index: usize,
    streams: &RefCell<Vec<Stream>>,
    latency: &RefCell<Latency>,
    buffer: &RefCell<Vec<u8>>,
    shared: &Shared,
) {
    let mut decoder = if let Some(format) = shared.websocket {
        Decoder::Ws(WsDecoder { raw: format == "raw", ..WsDecoder::default() })
    } else {
        Decoder::Sse(StreamDecoder { payload: shared.payload, ..StreamDecoder::default() })
    };
    let mut pongs = Vec::new();
    loop {
        let n = match &mut stream {
            Conn::Plain(tcp) => {
                let ready = tcp.readable().await;
                let mut buf = buffer.borrow_mut();
                match ready.and_then(|()| tcp.try_read(&mut buf)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => 0,
                }
            }
            Conn::Tls(tls, own) => {
                let n = tls.read(own).await.unwrap_or(0);
                // Processed from the thread's buffer, like a plain read, with no await between.
                buffer.borrow_mut()[..n].copy_from_slice(&own[..n]);
                n
            }
        };
        let buf = buffer.borrow_mut();
        if n == 0 {
            let mut streams = streams.borrow_mut();
            if !shared.stop.load(Ordering::Acquire) {
                streams[index].evicted = true;
                shared.evicted.fetch_add(1, Ordering::AcqRel);
            }
            return;
        }
        let now = shared.origin.elapsed().as_nanos() as u64;
        let mut stats = streams.borrow_mut();
        let s = &mut stats[index];
        let mut hist = latency.borrow_mut();
        let before = s.received;
        let on_event = |seq: u64, ts: u64| {
            if seq <= s.last_seq {
                s.duplicates += 1;
                return;
            }
            s.gaps += seq - s.last_seq - 1;
            s.last_seq = seq;
            s.received += 1;
            hist.record(now.saturating_sub(ts));
        };
        match &mut decoder {
            Decoder::Sse(decoder) => decoder.feed(&buf[..n], on_event),
            Decoder::Ws(decoder) => decoder.feed(&buf[..n], on_event, &mut pongs),
        }
        if !pongs.is_empty() {
            // Liveness answers are tiny; a full socket just means the next ping is answered.
            if let Conn::Plain(tcp) = &stream {
                let _ = tcp.try_write(&pongs);
            }
            pongs.clear();
        }
        let delivered = s.received - before;
        if delivered > 0 {
            shared.delivered.fetch_add(delivered, Ordering::AcqRel);
        }
    }
}

enum Decoder {
    Sse(StreamDecoder),
    Ws(WsDecoder),
}

/// Reads WebSocket frames: each JSON event's sequence number (from its id) and send timestamp
/// (the first 20 digits of its data); answers pings. Raw frames carry no id: their sequence
/// numbers are counted, so only losses (not reordering) show.
#[derive(Default)]
struct WsDecoder {
    /// `format=raw`: each text frame is bare data.
    raw: bool,
    /// Raw frames seen.
    raw_seen: u64,
    head_done: bool,
    /// Unparsed bytes: the response head, or a frame cut by a read.
    carry: Vec<u8>,
}

impl WsDecoder {
    fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(u64, u64), pongs: &mut Vec<u8>) {
        if !self.head_done {
            self.carry.extend_from_slice(bytes);
            let Some(end) = memchr::memmem::find(&self.carry, b"\r\n\r\n") else { return };
            assert!(self.carry.starts_with(b"HTTP/1.1 101"), "handshake refused");
            self.head_done = true;
            let rest = self.carry.split_off(end + 4);
            self.carry.clear();
            return self.feed(&rest, on_event, pongs);
        }
        // Frames are parsed where they lie; only a frame cut by the read is carried over.
        let carried = !self.carry.is_empty();
        if carried {
            self.carry.extend_from_slice(bytes);
        }
        let data: &[u8] = if carried { &self.carry } else { bytes };
        let used = if self.raw {
            let seen = &mut self.raw_seen;
            let mut on_data = |payload: &[u8]| {
                *seen += 1;
                on_event(*seen, parse_u64(&payload[..payload.len().min(20)]));
            };
            ws_frames(data, &mut on_data, pongs)
        } else {
            let mut on_data = |payload: &[u8]| {
                if let Some((seq, ts)) = json_event(payload) {
                    on_event(seq, ts);
                }
            };
            ws_frames(data, &mut on_data, pongs)
        };
        if carried {
            self.carry.drain(..used);
        } else {
            self.carry.extend_from_slice(&bytes[used..]);
        }
    }
}

/// Handles the complete frames at the start of `data` (text payloads to `on_text`); returns the
/// bytes they took.
fn ws_frames(data: &[u8], on_text: &mut impl FnMut(&[u8]), pongs: &mut Vec<u8>) -> usize {
    let mut pos = 0;
    while data.len() - pos >= 2 {
        let (len, header) = match data[pos + 1] & 0x7f {
            126 if data.len() - pos >= 4 => {
                (usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]])), 4)
            }
            127 if data.len() - pos >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&data[pos + 2..pos + 10]);
                (u64::from_be_bytes(len) as usize, 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if data.len() - pos < header + len {
            break;
        }
        let payload = &data[pos + header..pos + header + len];
        match data[pos] & 0x0f {
            0x1 => on_text(payload),
            0x9 => {
                // A masked pong with the ping's payload (a zero mask keeps it as is).
                pongs.extend_from_slice(&[0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
                pongs.extend_from_slice(payload);
            }
            _ => {}
        }
        pos += header + len;
    }
    pos
}

static ID_FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"id\":\""));
static DATA_FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"data\":\""));

/// (seq, ts) from `{"topic":…,"id":"<epoch>-<seq>",…,"data":"<ts> …"}`.
fn json_event(payload: &[u8]) -> Option<(u64, u64)> {
    // The usual shape, an unnamed event: `…","id":"<id>","event":null,"data":"<ts> …`.
    const UNNAMED: &[u8] = b"\",\"event\":null,\"data\":\"";
    if let Some(start) = payload.strip_prefix(b"{\"topic\":\"") {
        let topic_end = memchr::memchr(b'"', start)?;
        if let Some(id) = start[topic_end..].strip_prefix(b"\",\"id\":\"") {
            let quote = memchr::memchr(b'"', id)?;
            let dash = memchr::memchr(b'-', &id[..quote])? + 1;
            if let Some(data) = id[quote..].strip_prefix(UNNAMED) {
                return Some((parse_u64(&id[dash..quote]), parse_u64(&data[..data.len().min(20)])));
            }
        }
    }
    let id = ID_FIELD.find(payload)? + 6;
    let dash = id + memchr::memchr(b'-', &payload[id..])? + 1;
    let seq = parse_u64(&payload[dash..]);
    let data = DATA_FIELD.find(&payload[dash..])? + dash + 8;
    Some((seq, parse_u64(&payload[data..(data + 20).min(payload.len())])))
}

/// Undoes chunked transfer coding and reads each event's sequence number (from its `id:`) and
/// send timestamp (the first 20 digits of its data), line by line without copying whole
/// events.
#[derive(Default)]
struct StreamDecoder {
    /// Payload size every event is expected to have (events of another shape take a slower path).
    payload: usize,
    head_done: bool,
    /// Bytes left in the current chunk including its trailing CRLF; None while reading a size line.
    chunk_left: Option<usize>,
    /// A response head or chunk-size line split across reads.
    framing: Vec<u8>,
    /// An event-stream line split across reads or chunks.
    line: Vec<u8>,
    event: EventFields,
}

#[derive(Default)]
struct EventFields {
    seq: Option<u64>,
    ts: u64,
}

impl EventFields {
    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(u64, u64)) {
        if line.is_empty() {
            if let Some(seq) = self.seq.take() {
                on_event(seq, self.ts);
            }
        } else if let Some(id) = line.strip_prefix(b"id: ") {
            let dash = memchr::memchr(b'-', id).map_or(0, |d| d + 1);
            self.seq = Some(parse_u64(&id[dash..]));
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            self.ts = parse_u64(&data[..data.len().min(20)]);
        }
    }
}

impl StreamDecoder {
    fn feed(&mut self, mut bytes: &[u8], mut on_event: impl FnMut(u64, u64)) {
        if !self.head_done {
            self.framing.extend_from_slice(bytes);
            let Some(end) = memchr::memmem::find(&self.framing, b"\r\n\r\n") else {
                return;
            };
            let rest = self.framing.split_off(end + 4);
            self.framing.clear();
            self.head_done = true;
            self.feed_chunked(&rest, &mut on_event);
            bytes = &[];
        }
        self.feed_chunked(bytes, &mut on_event);
    }

    fn feed_chunked(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(u64, u64)) {
        while !bytes.is_empty() {
            match self.chunk_left {
                None => match memchr::memchr(b'\n', bytes) {
                    None => {
                        self.framing.extend_from_slice(bytes);
                        return;
                    }
                    Some(nl) => {
                        self.framing.extend_from_slice(&bytes[..nl]);
                        bytes = &bytes[nl + 1..];
                        let text = std::str::from_utf8(&self.framing).unwrap_or("").trim();
                        let size = usize::from_str_radix(text, 16).unwrap_or(0);
                        self.framing.clear();
                        self.chunk_left = Some(size + 2);
                    }
                },
                Some(left) => {
                    let take = left.min(bytes.len());
                    // The last two bytes of a chunk are its CRLF.
                    let data = take.min(left.saturating_sub(2));
                    self.scan_lines(&bytes[..data], on_event);
                    bytes = &bytes[take..];
                    self.chunk_left = if left == take { None } else { Some(left - take) };
                }
            }
        }
    }

    fn scan_lines(&mut self, mut data: &[u8], on_event: &mut impl FnMut(u64, u64)) {
        loop {
            // Fast path: a whole event of the expected shape at the start of the data.
            if self.line.is_empty()
                && self.event.seq.is_none()
                && let Some((seq, ts, len)) = whole_event(data, self.payload)
            {
                on_event(seq, ts);
                data = &data[len..];
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', data) else { break };
            if self.line.is_empty() {
                self.event.line(&data[..nl], on_event);
            } else {
                self.line.extend_from_slice(&data[..nl]);
                self.event.line(&self.line, on_event);
                self.line.clear();
            }
            data = &data[nl + 1..];
        }
        self.line.extend_from_slice(data);
    }
}

/// Reads `id: <epoch>-<seq>\ndata: <ts> <payload>\n\n` at the start of `data` if it is all
/// there: (seq, ts, frame length).
fn whole_event(data: &[u8], payload: usize) -> Option<(u64, u64, usize)> {
    let id = data.strip_prefix(b"id: ")?;
    let nl = id.iter().take(40).position(|&b| b == b'\n')?;
    let dash = id[..nl].iter().position(|&b| b == b'-')?;
    let seq = parse_u64(&id[dash + 1..nl]);
    let rest = &id[nl + 1..];
    let data_line = b"data: ".len() + payload;
    if rest.len() < data_line + 2
        || !rest.starts_with(b"data: ")
        || &rest[data_line..data_line + 2] != b"\n\n"
    {
        return None;
    }
    let ts = parse_u64(&rest[6..26.min(data_line)]);
    Some((seq, ts, 4 + nl + 1 + data_line + 2))
}

/// Latency histogram: microsecond buckets with 1/128 relative precision, cheap to record.
#[derive(Clone)]
struct Latency {
    counts: Vec<u64>,
    max: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { counts: vec![0; 128 * 40], max: 0 }
    }
}

impl Latency {
    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let shift = 63 - us.leading_zeros() as usize - 7;
        128 * (shift + 1) + ((us >> shift) as usize - 128)
    }

    fn lower_bound(index: usize) -> u64 {
        if index < 128 {
            return index as u64;
        }
        let shift = index / 128 - 1;
        ((index % 128) as u64 + 128) << shift
    }

    fn record(&mut self, ns: u64) {
        self.max = self.max.max(ns);
        let index = Self::index(ns / 1000).min(self.counts.len() - 1);
        self.counts[index] += 1;
    }

    fn merge(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max = self.max.max(other.max);
    }

    /// The latency (ns) at quantile `q`.
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return Self::lower_bound(index) * 1000;
            }
        }
        self.max
    }
}

fn parse_u64(digits: &[u8]) -> u64 {
    digits.iter().take_while(|b| b.is_ascii_digit()).fold(0, |n, &b| n * 10 + u64::from(b - b'0'))
}

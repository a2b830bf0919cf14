//! A reconnect storm from one address: 3,000 clients behind one forwarded address (a NAT, a
//! corporate proxy) follow topics on node A of a two-node cluster while events are published
//! through node B; node A is SIGKILLed, and every client resumes on node B, which runs with
//! its default flags. Reports how long the resumes took (p50, p90, max from the kill), how
//! many clients gave up, and every duplicate, gap and lost event.
//!
//! ```text
//! cargo bench --bench storm                                   # 3,000 clients, 30 topics, 200 events/s
//! cargo bench --bench storm -- --clients 1000 --topics 1      # one busy topic
//! cargo bench --bench storm -- --retry-hard                   # clients that retry after a 429 too
//! cargo bench --bench storm -- --server-bin ../old/target/release/crier
//! ```
//!
//! Clients behave as a browser's `EventSource`: they reconnect after the stream's `retry:`
//! with `Last-Event-ID`, retry a soft refusal (`crier.refused`) after its `retry:`, and give
//! up for good after any other status, unless `--retry-hard` makes them retry after its
//! `Retry-After` (with up to a second of jitter), as a hand-written client would.

mod support;

use std::path::PathBuf;
use std::time::Duration;

#[path = "support/storm.rs"]
mod storm;

struct Args {
    clients: usize,
    topics: usize,
    rate: u32,
    retry_hard: bool,
    server_bin: Option<PathBuf>,
}

impl Args {
    fn parse() -> Args {
        let mut args =
            Args { clients: 3000, topics: 30, rate: 200, retry_hard: false, server_bin: None };
        let mut given = std::env::args().skip(1);
        while let Some(arg) = given.next() {
            let mut value = || given.next().unwrap_or_else(|| panic!("{arg} takes a value"));
            match arg.as_str() {
                "--clients" => args.clients = value().parse().expect("a number of clients"),
                "--topics" => args.topics = value().parse().expect("a number of topics"),
                "--rate" => args.rate = value().parse().expect("events per second"),
                "--retry-hard" => args.retry_hard = true,
                "--server-bin" => args.server_bin = Some(PathBuf::from(value())),
                // cargo bench passes --bench.
                _ => {}
            }
        }
        args
    }
}

fn main() {
    let args = Args::parse();
    let bin = args.server_bin.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crier")));
    let redis = support::Redis::start();
    let url = redis.url();
    // Node A lets the crowd in at once; the storm is node B's, with default flags.
    let node_args = vec!["--redis-url".to_owned(), url];
    let (mut node_a, a) = support::spawn_crier(&bin, &node_args);
    let (mut node_b, b) = support::spawn_crier_as_deployed(&bin, &node_args);
    let shape = storm::Storm {
        clients: args.clients,
        topics: args.topics,
        rate: args.rate,
        address: "203.0.113.7".to_owned(),
        browser_like: !args.retry_hard,
        deadline: Duration::from_secs(60),
    };
    println!(
        "storm: {} clients from one address, {} topics, {} events/s, {} clients, {}",
        shape.clients,
        shape.topics,
        shape.rate,
        if args.retry_hard { "retrying" } else { "browser-like" },
        bin.display()
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let b_pid = node_b.id();
    let cpu_before = support::process_cpu_seconds(b_pid);
    let report = runtime.block_on(storm::run(shape, a, b, || {
        let _ = node_a.kill();
    }));
    let cpu = support::process_cpu_seconds(b_pid) - cpu_before;
    println!("{}", report.summary());
    println!("node B CPU during the run: {cpu:.2} s");
    let _ = node_a.wait();
    let _ = node_b.kill();
    let _ = node_b.wait();
}

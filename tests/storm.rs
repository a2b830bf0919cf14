//! A reconnect storm from one address, test-sized: 600 browser-like clients behind one
//! forwarded address follow 20 topics on node A of a cluster while 200 events a second are
//! published; node A is killed, and every client resumes on node B (default flags) after its
//! `retry:`, with its `Last-Event-ID`. All resume within 10 s (the slowest within 20 s), none
//! gives up, and none sees a duplicate, a gap or a `crier.gap` (the history holds what they
//! missed). The 3,000-client version is `cargo bench --bench storm`.

#[path = "../benches/support/storm.rs"]
mod storm;
mod support;

use std::time::Duration;

use support::CrierProcess;
use support::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_behind_one_address_resumes_on_another_node_at_once_and_loses_nothing() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    // Node A lets the crowd in quickly; the storm is node B's, with default flags.
    let node_a =
        CrierProcess::spawn(&["--redis-url", &url, "--new-streams-per-sec", "100000"]).await;
    let node_b = CrierProcess::spawn(&["--redis-url", &url]).await;
    let shape = storm::Storm {
        clients: 600,
        topics: 20,
        rate: 200,
        address: "203.0.113.7".to_owned(),
        browser_like: true,
        deadline: Duration::from_secs(30),
    };
    let (a, b) = (node_a.addr, node_b.addr);
    let report = storm::run(shape, a, b, || node_a.signal("KILL")).await;
    let summary = report.summary();
    eprintln!("{summary}");
    assert_eq!((report.resumed, report.gave_up), (600, 0), "{summary}");
    assert!(report.percentile(0.9).is_some_and(|s| s <= 10.0), "{summary}");
    assert!(report.percentile(1.0).is_some_and(|s| s <= 20.0), "{summary}");
    assert_eq!((report.duplicates, report.silent_gaps, report.lost), (0, 0, 0), "{summary}");
    assert_eq!(report.gap_notices, 0, "the history held every event missed: {summary}");
}

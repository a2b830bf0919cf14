//! `--max-lag-bytes` bounds each subscriber's lag in the bytes of its own stream: SSE
//! frames, WebSocket JSON frames or WebSocket raw frames, whose sizes differ for the same event.

mod support;

use support::{SseClient, TestServer, metric, publish_ok, wait_until};

const BUDGET: usize = 10_000;

/// Publishes events `from..to` of 100 quotes each: about 123 bytes as an SSE frame, 102 as a
/// raw WebSocket frame, and 259 as a JSON frame (each quote escaped).
async fn publish(server: &TestServer, from: usize, to: usize) {
    for _ in from..to {
        publish_ok(server.addr, "t", None, "\"".repeat(100).as_bytes(), None).await;
    }
}

async fn evictions(server: &TestServer, transport: &str) -> f64 {
    let series =
        format!(r#"crier_evictions_total{{transport="{transport}",reason="slow_consumer"}}"#);
    metric(&server.metrics().await, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_lags_in_its_own_wire_bytes() {
    // With a minute's write delay, writers take the first event and then nothing more for the
    // rest of the test: each subscriber's lag grows with every publish, by its own frame size.
    let budget = BUDGET.to_string();
    let server = TestServer::start(&["--max-lag-bytes", &budget, "--write-delay", "60s"]).await;
    let _json = support::ws::connect(server.addr, "/ws?topic=t").await;
    let _raw = support::ws::connect(server.addr, "/ws?topic=t&format=raw").await;
    let _sse = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(3).await;

    // 45 events: 11.6 kB of JSON frames, 5.5 kB of SSE, 4.6 kB of raw.
    publish(&server, 0, 45).await;
    wait_until("the JSON reader's eviction", || async { evictions(&server, "ws").await == 1.0 })
        .await;
    assert_eq!(evictions(&server, "sse").await, 0.0);
    server.wait_subscriptions(2).await;

    // 90 events: 11 kB of SSE, 9.2 kB of raw.
    publish(&server, 45, 90).await;
    wait_until("the SSE reader's eviction", || async { evictions(&server, "sse").await == 1.0 })
        .await;
    // The sweep that evicted the SSE reader saw the raw reader within its budget.
    assert_eq!(evictions(&server, "ws").await, 1.0, "the raw reader is within its budget");

    // 110 events: 11.2 kB of raw frames.
    publish(&server, 90, 110).await;
    wait_until("the raw reader's eviction", || async { evictions(&server, "ws").await == 2.0 })
        .await;
    server.wait_subscriptions(0).await;
}

//! `--max-lag-bytes` bounds each subscriber's lag in the bytes of its own stream (counted per
//! wire format in the registry's own tests): a subscriber whose socket stops draining is
//! evicted on every transport, while those that keep reading are not, even with a write delay
//! in which far more than the budget is published (a gathering writer writes once its backlog
//! reaches a quarter of the budget).

mod support;

use support::{RawWs, SseClient, TestServer, metric, publish_ok, wait_until};

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

async fn evictions(server: &TestServer, transport: &str) -> f64 {
    let series =
        format!(r#"crier_evictions_total{{transport="{transport}",reason="slow_consumer"}}"#);
    metric(&server.metrics().await, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_evicted_by_their_budget_and_readers_that_keep_up_are_not() {
    let server = TestServer::start(&[
        "--max-lag-bytes",
        "64KiB",
        "--write-delay",
        "3s",
        "--writes-per-sec",
        "0",
    ])
    .await;
    let sse_request = format!("GET /sse?topic=t HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let ws_request = format!("GET /ws?topic=t HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n\r\n");
    let _stalled_sse = support::stalled_connection(server.addr, &sse_request).await;
    let _stalled_ws = support::stalled_connection(server.addr, &ws_request).await;
    let mut sse = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let json = RawWs::connect(server.addr, "/ws?topic=t").await;
    let raw = RawWs::connect(server.addr, "/ws?topic=t&format=raw").await;
    server.wait_subscriptions(5).await;
    let sse = tokio::spawn(async move {
        let mut count = 0;
        while sse.next_event().await.data != "end" {
            count += 1;
        }
        count
    });
    let readers = [json, raw].map(|mut ws| {
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                let frame = ws.read().await.expect("the connection stays open");
                if frame.payload.ends_with(b"end") || frame.payload.ends_with(b"end\"}") {
                    return count;
                }
                count += 1;
            }
        })
    });

    // 1 KB events until both stalled readers are gone (their sockets absorb a few MiB first).
    let payload = "x".repeat(1000);
    let mut published = 0;
    while evictions(&server, "sse").await < 1.0 || evictions(&server, "ws").await < 1.0 {
        for _ in 0..100 {
            publish_ok(server.addr, "t", None, payload.as_bytes(), None).await;
        }
        published += 100;
        assert!(published < 64_000, "the stalled readers were not evicted");
    }
    publish_ok(server.addr, "t", None, b"end", None).await;
    assert_eq!(sse.await.unwrap(), published, "the SSE reader got every event");
    for reader in readers {
        assert_eq!(reader.await.unwrap(), published, "a WebSocket reader got every event");
    }
    wait_until("exactly the stalled readers evicted", || async {
        evictions(&server, "sse").await == 1.0 && evictions(&server, "ws").await == 1.0
    })
    .await;
}

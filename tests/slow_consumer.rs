//! Slow consumers over real sockets: a subscriber that stops reading is evicted (counted, its
//! connection closed) while a healthy subscriber of the same topic receives every event, and
//! the server's memory stays bounded however much is published.

mod support;

use support::{CrierProcess, SseClient, TestServer, metric, publish_ok, wait_until};
use tokio::net::TcpStream;

/// Opens an SSE request on a socket with a tiny receive buffer and never reads from it.
/// A subscriber that never reads. With `via_hyper`, the stream request follows another request
/// on the connection, so hyper serves it rather than the fast path for dedicated streams.
async fn stalled_subscriber(addr: std::net::SocketAddr, topic: &str, via_hyper: bool) -> TcpStream {
    let first = if via_hyper { "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" } else { "" };
    let request = format!("{first}GET /sse?topic={topic} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    support::stalled_connection(addr, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_evicted_while_a_healthy_one_gets_everything() {
    for via_hyper in [false, true] {
        stalled_subscriber_is_evicted(via_hyper).await;
    }
}

async fn stalled_subscriber_is_evicted(via_hyper: bool) {
    let server = TestServer::start(&["--max-lag-bytes", "256KiB"]).await;
    let mut stalled = stalled_subscriber(server.addr, "t", via_hyper).await;
    let mut healthy = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(2).await;

    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let event = healthy.next_event().await;
            if event.data == "end" {
                break;
            }
            seen.push(event.data.split(':').next().unwrap().parse::<usize>().unwrap());
        }
        (seen, healthy)
    });
    let total = support::publish_until_evicted(&server, "t", "sse", 4000).await;
    let (seen, _healthy) = reader.await.unwrap();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "the healthy subscriber missed or repeated events"
    );

    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, r#"crier_evictions_total{transport="sse",reason="slow_consumer"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "crier_subscriptions"),
        Some(1.0),
        "the evicted subscription is gone"
    );
    assert_eq!(metric(&metrics, r#"crier_connections{transport="sse"}"#), Some(1.0));

    // The server closed the stalled connection: draining what the kernel buffered reaches EOF.
    support::assert_closed_by_server(&mut stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_memory_stays_bounded_under_a_stalled_subscriber() {
    let server = CrierProcess::spawn(&["--max-lag-bytes", "256KiB", "--history", "10"]).await;
    let _stalled = stalled_subscriber(server.addr, "t", false).await;
    wait_until("the subscriber to be registered", || async {
        let text = support::request(server.addr, "GET", "/metrics", &[], b"").await.text();
        metric(&text, "crier_subscriptions") == Some(1.0)
    })
    .await;
    let payload = vec![b'x'; 16 << 10];
    let publish_mib = |mib: usize| {
        let payload = payload.clone();
        async move {
            for _ in 0..mib * 64 {
                publish_ok(server.addr, "t", None, &payload, None).await;
            }
        }
    };
    // Warm up (allocator arenas, the log at full size), then publish 64 MiB more, twice, while
    // the subscriber reads nothing: memory must level off, not follow what was published.
    publish_mib(16).await;
    let warm = server.rss_kib();
    publish_mib(64).await;
    let first = server.rss_kib();
    publish_mib(64).await;
    let second = server.rss_kib();
    eprintln!("RSS {warm} KiB warm, {first} KiB after 64 MiB, {second} KiB after 128 MiB");
    // Unbounded, each round would add about 64 MiB; allocator and reclamation noise is a few.
    assert!(first < warm + (16 << 10), "RSS grew {} KiB over 64 MiB", first - warm);
    assert!(second < first + (16 << 10), "RSS kept growing: {first} -> {second} KiB");
    let metrics = support::request(server.addr, "GET", "/metrics", &[], b"").await.text();
    let evicted = r#"crier_evictions_total{transport="sse",reason="slow_consumer"}"#;
    assert_eq!(metric(&metrics, evicted), Some(1.0));
    assert_eq!(metric(&metrics, "crier_events_published_total"), Some(144.0 * 64.0));
}

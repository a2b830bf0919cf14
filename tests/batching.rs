//! Write batching: a busy stream gathers events for the write delay and writes them at once, a
//! quiet one writes at once, a gathering stream writes early rather than lag out of the log or
//! past its byte budget, and the delay adapts to the node's writes.

mod support;

use std::time::Duration;

use support::{RawWs, SseClient, TestServer, metric, publish_ok, wait_until};
use tokio::time::Instant;

async fn series(server: &TestServer, name: &str) -> f64 {
    metric(&server.metrics().await, name).unwrap_or(0.0)
}

/// Reads `count` events from an SSE stream in the background: their data, in order.
fn read_sse(mut client: SseClient, count: usize) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut data = Vec::with_capacity(count);
        for _ in 0..count {
            data.push(client.next_event_within(Duration::from_secs(30)).await.data);
        }
        data
    })
}

/// Reads `count` raw WebSocket messages in the background.
fn read_raw(mut ws: RawWs, count: usize) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut data = Vec::with_capacity(count);
        for _ in 0..count {
            let frame = ws.read().await.expect("the connection stays open");
            data.push(String::from_utf8(frame.payload).expect("text"));
        }
        data
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_goes_out_at_once_and_a_burst_in_one_write() {
    let server = TestServer::start(&["--write-delay", "2s", "--writes-per-sec", "0"]).await;
    let mut client = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;
    let sent = Instant::now();
    server.publish("t", "lone").await;
    assert_eq!(client.next_event().await.data, "lone");
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(1000), "a lone event waited {took:?}");

    // Twenty more within the delay: gathered, then written together.
    for i in 0..20 {
        server.publish("t", &format!("burst {i}")).await;
    }
    let burst = client.events(20).await;
    assert_eq!(burst.last().map(|e| e.data.as_str()), Some("burst 19"));
    let writes = series(&server, r#"crier_stream_writes_total{transport="sse"}"#).await;
    let deliveries = series(&server, r#"crier_deliveries_total{transport="sse"}"#).await;
    assert_eq!(
        (writes, deliveries),
        (2.0, 21.0),
        "one write for the lone event, one for the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_keeps_up_is_never_evicted_by_the_write_delay() {
    // A delay of 2 s and a log of 400 events: a writer that waited the whole delay would find
    // its next event overwritten after 400 publishes. Gathering writers are woken at a
    // quarter of the log instead, so readers that keep up get all 4,000 (the last few when
    // the delay has passed).
    const EVENTS: usize = 4_000;
    let server =
        TestServer::start(&["--write-delay", "2s", "--writes-per-sec", "0", "--history", "400"])
            .await;
    let sse = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let raw = RawWs::connect(server.addr, "/ws?topic=t&format=raw").await;
    server.wait_subscriptions(2).await;
    // The first event goes out at once and starts each stream's delay.
    let sse = read_sse(sse, EVENTS + 1);
    let raw = read_raw(raw, EVENTS + 1);
    server.publish("t", "first").await;
    wait_until("both streams took the first event", || async {
        series(&server, r#"crier_stream_writes_total{transport="sse"}"#).await == 1.0
            && series(&server, r#"crier_stream_writes_total{transport="ws"}"#).await == 1.0
    })
    .await;
    for i in 0..EVENTS {
        publish_ok(server.addr, "t", None, i.to_string().as_bytes(), None).await;
    }
    let expected: Vec<String> =
        std::iter::once("first".to_owned()).chain((0..EVENTS).map(|i| i.to_string())).collect();
    assert!(sse.await.unwrap() == expected, "the SSE reader got every event in order");
    assert!(raw.await.unwrap() == expected, "the WebSocket reader got every event in order");
    for transport in ["sse", "ws"] {
        let evicted =
            format!(r#"crier_evictions_total{{transport="{transport}",reason="slow_consumer"}}"#);
        assert_eq!(series(&server, &evicted).await, 0.0, "{transport}");
        let writes = format!(r#"crier_stream_writes_total{{transport="{transport}"}}"#);
        let writes = series(&server, &writes).await;
        assert!(writes >= 2.0, "{transport}: gathered writes went out before the delay: {writes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_delay_grows_under_load_and_vanishes_when_it_goes() {
    // A budget of 20 writes a second: five streams of a topic published to steadily pass it,
    // so the delay grows; once publishing stops, the node writes nothing and it goes to 0.
    let server = TestServer::start(&["--write-delay", "300ms", "--writes-per-sec", "20"]).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        readers.push(SseClient::connect(server.addr, "/sse?topic=t", &[]).await);
    }
    server.wait_subscriptions(5).await;
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                loop {
                    if client.next_event_within(Duration::from_secs(60)).await.data == "end" {
                        return;
                    }
                }
            })
        })
        .collect();
    let delay = r#"crier_write_delay_seconds"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while series(&server, delay).await == 0.0 {
        assert!(Instant::now() < deadline, "the delay never grew");
        for _ in 0..10 {
            server.publish("t", "tick").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let grown = series(&server, delay).await;
    assert!(grown > 0.0 && grown <= 0.3, "{grown}");
    server.publish("t", "end").await;
    for reader in readers {
        reader.await.unwrap();
    }
    wait_until("the delay back to 0", || async { series(&server, delay).await == 0.0 }).await;
}

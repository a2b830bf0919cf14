//! Refusals a browser retries, with real clients: under `--new-streams-per-sec 2`, six
//! `EventSource`s opened at once in headless Chromium, and six with npm's `eventsource`, all
//! open in time and none gives up (a refused one is answered a 200 stream with `retry:` and a
//! `crier.refused` event, which it retries); a refused WebSocket is closed 1013 with a JSON
//! reason a page can read, whether admission refused it or a connection cap did.

mod support;

use std::time::Duration;

use support::browser::{Browser, serve_page};
use support::{RawWs, SseClient, TestServer, metric, wait_until};

/// The page: opens six `EventSource`s to crier (its address in the query) at once, and
/// records what each saw.
const EVENT_SOURCES: &str = r#"<!doctype html><title>crowd</title><script>
const crier = "http://" + new URLSearchParams(location.search).get("crier");
window.seen = [];
for (let i = 0; i < 6; i++) {
  const seen = { opens: 0, refusals: [], received: null, closed: false };
  window.seen.push(seen);
  const source = new EventSource(crier + "/sse?topic=crowd");
  source.onopen = () => { seen.opens++; };
  source.addEventListener("crier.refused", (e) => { seen.refusals.push(JSON.parse(e.data)); });
  source.onmessage = (e) => { seen.received = e.data; };
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) seen.closed = true; };
}
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_eventsources_in_chromium_all_open_under_a_stream_rate_of_two() {
    let page_addr = serve_page(EVENT_SOURCES.to_owned()).await;
    let origin = format!("http://{page_addr}");
    let server =
        TestServer::start(&["--new-streams-per-sec", "2", "--cors-origins", &origin]).await;
    let mut browser = Browser::launch().await;
    let started = tokio::time::Instant::now();
    let page = browser.open(&format!("http://{page_addr}/?crier={}", server.addr)).await;
    server.wait_subscriptions(6).await;
    let opened = started.elapsed();
    server.publish("crowd", "all here").await;
    let all = "window.seen.every((s) => s.received === 'all here') ? window.seen : null";
    let seen = browser.wait_for(&page, all).await;
    assert!(opened < Duration::from_secs(20), "all six open in {opened:?}");
    let seen = seen.as_array().expect("six records");
    assert!(seen.iter().all(|s| s["closed"] == false), "none gave up: {seen:?}");
    let refusals: Vec<&serde_json::Value> =
        seen.iter().flat_map(|s| s["refusals"].as_array().unwrap()).collect();
    assert!(refusals.len() >= 4, "two admitted at once, the others refused first: {seen:?}");
    for refusal in refusals {
        assert_eq!(refusal["error"], "rate_limited", "{refusal}");
        assert!(refusal["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{refusal}");
    }
    let metrics = server.metrics().await;
    let soft = metric(&metrics, r#"crier_soft_refusals_total{transport="sse"}"#).unwrap_or(0.0);
    assert!(soft >= 4.0, "{metrics}");
}

/// Opens six npm `eventsource` clients at once; prints one JSON line per client once each got
/// the message published after they all opened (or gave up).
const EVENTSOURCE_SCRIPT: &str = r#"
import { EventSource } from "eventsource";
const url = process.argv[2];
const seen = [];
const done = () => seen.every((s) => s.received || s.closed);
for (let i = 0; i < 6; i++) {
  const s = { refusals: 0, received: null, closed: false };
  seen.push(s);
  const source = new EventSource(url);
  source.addEventListener("crier.refused", () => { s.refusals++; });
  source.onmessage = (e) => { s.received = e.data; source.close(); if (done()) finish(); };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) { s.closed = true; if (done()) finish(); }
  };
}
function finish() { console.log(JSON.stringify(seen)); process.exit(0); }
setTimeout(finish, 30000);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_npm_eventsources_all_open_under_a_stream_rate_of_two() {
    let server = TestServer::start(&["--new-streams-per-sec", "2"]).await;
    let url = format!("http://{}/sse?topic=crowd", server.addr);
    let started = tokio::time::Instant::now();
    let clients = support::npm::NodeScript::start("eventsource@4.1.1", EVENTSOURCE_SCRIPT, &url);
    server.wait_subscriptions(6).await;
    let opened = started.elapsed();
    server.publish("crowd", "all here").await;
    let seen = clients.json_output().await;
    assert!(opened < Duration::from_secs(20), "all six open in {opened:?}");
    let seen = seen.as_array().expect("six records");
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| s["received"] == "all here" && s["closed"] == false), "{seen:?}");
    let refusals: u64 = seen.iter().map(|s| s["refusals"].as_u64().unwrap()).sum();
    assert!(refusals >= 4, "the others were refused first, and retried: {seen:?}");
}

/// The page: opens a WebSocket and records how it closed.
const WEBSOCKET: &str = r#"<!doctype html><title>ws</title><script>
const crier = "ws://" + new URLSearchParams(location.search).get("crier");
const ws = new WebSocket(crier + "/ws?topic=crowd");
ws.onclose = (e) => { window.ended = { code: e.code, reason: e.reason, clean: e.wasClean }; };
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_websocket_is_closed_1013_with_a_reason_a_page_can_read() {
    // The address's one stream is open: the page's WebSocket is refused, however long the
    // browser takes to start.
    let page_addr = serve_page(WEBSOCKET.to_owned()).await;
    let origin = format!("http://{page_addr}");
    let server = TestServer::start(&["--max-streams-per-ip", "1", "--cors-origins", &origin]).await;
    let _first = SseClient::connect(server.addr, "/sse?topic=crowd", &[]).await;
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{page_addr}/?crier={}", server.addr)).await;
    let closed = browser.wait_for(&page, "window.ended").await;
    assert_eq!(closed["code"], 1013, "{closed}");
    assert_eq!(closed["clean"], true, "{closed}");
    let reason: serde_json::Value =
        serde_json::from_str(closed["reason"].as_str().unwrap()).expect("a JSON reason");
    assert_eq!(reason["error"], "too_many_streams", "{reason}");
    assert!(reason["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{reason}");
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, r#"crier_soft_refusals_total{transport="ws"}"#), Some(1.0));
    assert_eq!(metric(&metrics, r#"crier_ws_closes_total{code="1013"}"#), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_a_cap_is_refused_softly_to_a_browser_and_hard_to_others() {
    // Not behind a trusted proxy, so connections are counted per address.
    let args = ["--max-connections-per-ip", "1", "--trusted-proxies", "192.0.2.1/32"];
    let server = TestServer::start(&args).await;
    let held = SseClient::connect(server.addr, "/sse?topic=a", &[]).await;

    let mut ws = RawWs::connect(server.addr, "/ws?topic=a").await;
    let frames = ws.read_until_closed().await;
    let close = frames.last().expect("a close frame");
    assert_eq!(close.close_code(), Some(1013), "{frames:?}");
    let reason: serde_json::Value = serde_json::from_slice(&close.payload[2..]).expect("JSON");
    assert_eq!(reason["error"], "too_many_connections", "{reason}");

    let accept = [("Accept", "text/event-stream")];
    let soft = support::request(server.addr, "GET", "/sse?topic=a", &accept, b"").await;
    assert_eq!(soft.status, 200, "{}", soft.text());
    assert_eq!(soft.header("content-type").as_deref(), Some("text/event-stream"));
    let mut parser = support::whatwg::Parser::new();
    let events = parser.feed(&soft.body);
    assert_eq!(events.len(), 1, "{}", soft.text());
    assert_eq!(events[0].kind, "crier.refused");
    let body: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
    assert_eq!(body["error"], "too_many_connections", "{body}");
    assert!(parser.retry.is_some_and(|ms| ms >= 1000), "retry: set to the wait");

    let hard = support::request(server.addr, "GET", "/sse?topic=a", &[], b"").await;
    assert_eq!(hard.status, 429, "{}", hard.text());
    drop(held);
    wait_until("the refusals to be counted", || async {
        let metrics = support::request(server.addr, "GET", "/metrics", &[], b"").await.text();
        let counted = metric(&metrics, r#"crier_rejections_total{reason="connections_per_ip"}"#);
        metric(&metrics, r#"crier_soft_refusals_total{transport="ws"}"#) == Some(1.0)
            && metric(&metrics, r#"crier_soft_refusals_total{transport="sse"}"#) == Some(1.0)
            && counted.is_some_and(|n| n >= 3.0)
    })
    .await;
}

/// The Mercure hub's subscribers are `EventSource`s too: a subscribe the hub cannot serve for
/// now (in cluster mode, with Redis away) is a stream a browser retries, and the reference
/// hub's 503 for any other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mercure_subscribe_with_redis_away_is_refused_so_a_browser_retries() {
    let url = support::redis::unreachable_url();
    let server = TestServer::start(&["--redis-url", &url, "--mercure-anonymous"]).await;
    let target = "/.well-known/mercure?topic=https://example.com/books/1";
    let accept = [("Accept", "text/event-stream")];
    let soft = support::request(server.addr, "GET", target, &accept, b"").await;
    assert_eq!(soft.status, 200, "{}", soft.text());
    let events = support::whatwg::Parser::new().feed(&soft.body);
    assert_eq!(events.len(), 1, "{}", soft.text());
    assert_eq!(events[0].kind, "crier.refused");
    let body: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
    assert_eq!(body["error"], "unavailable", "{body}");
    // On the fast path too (a connection's first request), and the status for other clients.
    let stream = SseClient::connect(server.addr, target, &[]).await;
    assert_eq!(stream.status, 200, "{}", stream.head);
    assert!(stream.header("content-length").is_some(), "a whole answer: {}", stream.head);
    let hard = support::request(server.addr, "GET", target, &[], b"").await;
    assert_eq!(hard.status, 503, "{}", hard.text());
    assert_eq!(hard.header("retry-after").as_deref(), Some("1"));
}

//! One origin policy (`--cors-origins`) for reading, WebSockets and writes: a page of another
//! origin publishes nothing, whatever authorised it (loopback trust in development), in headless
//! Chromium and on the wire, on crier's API and the Mercure hub; the server's own pages and
//! clients that are not pages go on as before.

mod support;

use support::browser::{Browser, serve_page};
use support::ws;
use support::{SseClient, TestServer, metric, request};

/// A page that publishes to the crier named by `?crier=` as any site could: a simple
/// cross-origin `POST` (no preflight), then a WebSocket publish command.
const FOREIGN_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
const crier = new URLSearchParams(location.search).get("crier");
window.tried = {};
fetch(`http://${crier}/publish?topic=news`, { method: "POST", body: "from a foreign page", mode: "no-cors" })
  .then(() => { tried.fetch = "answered"; }, () => { tried.fetch = "failed"; });
const socket = new WebSocket(`ws://${crier}/ws`);
socket.onopen = () => {
  socket.send(JSON.stringify({ op: "publish", topic: "news", data: "over a foreign socket" }));
  tried.socket = "open";
};
socket.onclose = (e) => { tried.socket = tried.socket || `closed ${e.code}`; };
</script>"#;

/// Events the server published.
async fn published(server: &TestServer) -> f64 {
    metric(&server.metrics().await, "crier_events_published_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_publishes_nothing_unless_its_origin_is_listed() {
    let page_addr = serve_page(FOREIGN_PAGE.to_owned()).await;
    let guarded = TestServer::start(&[]).await;
    let mut browser = Browser::launch().await;
    let mut news = SseClient::connect(guarded.addr, "/sse?topic=news", &[]).await;
    let page = browser.open(&format!("http://{page_addr}/?crier={}", guarded.addr)).await;
    let tried = browser.wait_for(&page, "tried.fetch && tried.socket ? tried : null").await;
    // The POST reached the server (the page cannot read the answer either way); the WebSocket
    // handshake was refused.
    assert_eq!(tried["fetch"], "answered", "{tried}");
    assert_ne!(tried["socket"], "open", "{tried}");
    assert_eq!(published(&guarded).await, 0.0);
    guarded.publish("news", "from this host").await;
    assert_eq!(news.next_event().await.data, "from this host", "nothing before it");

    // Listed, the same page publishes both ways.
    let origin = format!("http://{page_addr}");
    let open = TestServer::start(&["--cors-origins", &origin]).await;
    let page = browser.open(&format!("http://{page_addr}/?crier={}", open.addr)).await;
    let tried = browser.wait_for(&page, "tried.fetch && tried.socket ? tried : null").await;
    assert_eq!(tried["socket"], "open", "{tried}");
    open.wait_metric("crier_events_published_total", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_checked_by_origin_or_referer_and_clients_without_either_are_not() {
    let server = TestServer::start(&["--mercure-anonymous"]).await;
    let own = format!("http://{}", server.addr);
    let publish = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(server.addr, "POST", "/publish?topic=t", &headers, b"x").await
    };
    let refused = publish(vec![("Origin", "https://evil.example".into())]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "cross_origin");
    assert!(refused.json()["detail"].as_str().unwrap().contains("--cors-origins"));
    let by_referer = publish(vec![("Referer", "https://evil.example/page".into())]).await;
    assert_eq!(by_referer.status, 403);
    assert_eq!(publish(vec![("Origin", own.clone())]).await.status, 200, "the server's own page");
    assert_eq!(publish(vec![]).await.status, 200, "not a page");
    // The Mercure hub: its development mode (no publisher key) trusts loopback the same way.
    let form = b"topic=https://example.com/t&data=x";
    let mercure = |origin: &'static str| async move {
        let headers = [("Origin", origin), ("Content-Type", "application/x-www-form-urlencoded")];
        request(server.addr, "POST", "/.well-known/mercure", &headers, form).await
    };
    let refused = mercure("https://evil.example").await;
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("--cors-origins"), "{}", refused.text());
    // WebSockets: a page of another origin is refused at the handshake, the server's own is not.
    let handshake = [
        ("Origin", "https://evil.example"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let response = request(server.addr, "GET", "/ws", &handshake, b"").await;
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error"], "origin_not_allowed");
    let _own_page = ws::connect_with(server.addr, "/ws", &[("Origin", own.as_str())]).await;
    assert_eq!(published(&server).await, 2.0, "the two publishes allowed");
}

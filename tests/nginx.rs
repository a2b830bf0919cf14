//! crier behind a real nginx configured with the project's `nginx/` files: two nodes joined
//! through a real Redis act as one through the proxy (SSE and WebSocket unbuffered, heartbeats,
//! publishing, the largest event and one byte more), a client whose node goes away resumes on
//! the other, the shipped body limit is crier's default event limit, and the shipped whole
//! configuration passes `nginx -t`.

mod support;

use serde_json::json;
use support::nginx::{self, Nginx};
use support::redis::RedisServer;
use support::ws;
use support::{SseClient, TestServer, metric, publish, request, request_from, wait_until};

async fn node(redis: &RedisServer) -> TestServer {
    // nginx reaches the nodes from 127.0.0.1, the test's clients come from 127.0.0.2.
    let args =
        ["--redis-url", &redis.url(), "--heartbeat", "300ms", "--trusted-proxies", "127.0.0.1"];
    let server = TestServer::start(&args).await;
    wait_until("the node to join", || async {
        request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    server
}

async fn publishes(server: &TestServer) -> f64 {
    let series = r#"crier_http_requests_total{route="publish",status="200"}"#;
    metric(&server.metrics().await, series).unwrap_or(0.0)
}

async fn sse_connections(server: &TestServer) -> f64 {
    metric(&server.metrics().await, r#"crier_connections{transport="sse"}"#).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_act_as_one() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let proxy = Nginx::start(&[a.addr, b.addr]).await;

    let mut sse = SseClient::connect(proxy.addr, "/sse?topic=t", &[]).await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    assert_eq!(sse.header("content-type").as_deref(), Some("text/event-stream"));
    let mut socket = ws::connect(proxy.addr, "/ws?topic=t").await;

    // Lockstep: each event must come through before the next is published, so nothing may sit
    // in a proxy buffer. nginx spreads the publishes over both nodes.
    let mut ids = Vec::new();
    for i in 0..10 {
        let data = format!("event {i}");
        let response = publish(proxy.addr, "t", None, data.as_bytes(), None).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let id = response.json()["id"].as_str().unwrap().to_owned();
        let event = sse.next_event().await;
        assert_eq!((&event.last_event_id, &event.data), (&id, &data));
        let frame = ws::next_json(&mut socket).await;
        assert_eq!(frame["id"], id.as_str());
        assert_eq!(frame["data"], data.as_str());
        ids.push(id);
    }
    let seqs: Vec<u64> =
        ids.iter().map(|id| id.rsplit_once('-').unwrap().1.parse().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "one sequence whichever node took the publish");
    for node in [&a, &b] {
        assert!(publishes(node).await > 0.0, "nginx spreads the publishes over both nodes");
    }

    // A quiet stream gets heartbeats through the proxy.
    let before = sse.body.len();
    sse.read_body_until(|body| body[before..].windows(12).any(|w| w == b": heartbeat\n")).await;

    // Whatever X-Forwarded-For a client sends, nginx appends the address it really saw
    // (127.0.0.2, not a trusted proxy), and crier takes that hop as the client: these publishes
    // are local. Were the header passed on unchanged, crier would refuse both.
    for (claimed, data) in [("127.0.0.1, 203.0.113.7", "forged"), ("203.0.113.7", "forwarded")] {
        let headers = [("X-Forwarded-For", claimed)];
        let target = "/publish?topic=t";
        let response =
            request_from(Some("127.0.0.2"), proxy.addr, "POST", target, &headers, data.as_bytes());
        let response = response.await;
        assert_eq!(response.status, 200, "{claimed}: {}", response.text());
    }
    for expected in ["forged", "forwarded"] {
        assert_eq!(sse.next_event().await.data, expected);
        assert_eq!(ws::next_json(&mut socket).await["data"], expected);
    }

    // An event as large as crier takes passes nginx; one byte more gets crier's JSON error,
    // not nginx's HTML page.
    let largest = vec![b'x'; 64 << 10];
    let response = publish(proxy.addr, "t", None, &largest, None).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let event = sse.next_event().await;
    assert_eq!(event.data.len(), largest.len());
    let last = event.last_event_id;
    assert_eq!(ws::next_json(&mut socket).await["data"].as_str().map(str::len), Some(64 << 10));
    let oversized = vec![b'x'; (64 << 10) + 1];
    let response = publish(proxy.addr, "t", None, &oversized, None).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(response.json()["error"], "too_large");

    // WebSocket commands go through the proxy too.
    let reply = ws::command(&mut socket, json!({"op":"ping","ref":1})).await;
    assert_eq!(reply, json!({"op":"ok","ref":1}));

    // The node serving the stream goes away; the client reconnects through nginx, lands on the
    // other node and resumes exactly where it was, including what was published meanwhile.
    let serving_a = sse_connections(&a).await == 1.0;
    let (gone, stays) = if serving_a { (a, b) } else { (b, a) };
    assert_eq!(sse_connections(&stays).await, 0.0);
    gone.handle.shutdown().await.expect("node shuts down");
    assert!(sse.read_to_end().await, "the stream ends cleanly through nginx");
    let mut meanwhile = Vec::new();
    for i in 0..5 {
        let data = format!("meanwhile {i}");
        let response = publish(proxy.addr, "t", None, data.as_bytes(), None).await;
        assert_eq!(response.status, 200, "{}", response.text());
        meanwhile.push((response.json()["id"].as_str().unwrap().to_owned(), data));
    }
    let mut resumed =
        SseClient::connect(proxy.addr, "/sse?topic=t", &[("Last-Event-ID", &last)]).await;
    assert_eq!(resumed.status, 200, "{}", resumed.head);
    let events = resumed.events(5).await;
    let got: Vec<(String, String)> =
        events.into_iter().map(|e| (e.last_event_id, e.data)).collect();
    assert_eq!(got, meanwhile, "no duplicate, no gap");
    assert_eq!(sse_connections(&stays).await, 1.0);
}

#[test]
fn the_shipped_configuration_passes_nginx_t() {
    // As the README runs it: the pid file and temporary files under the prefix.
    let dir = nginx::prefix();
    std::fs::create_dir_all(dir.join("tmp")).expect("a temporary directory");
    let output = std::process::Command::new(nginx::binary())
        .arg("-t")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(nginx::config_dir().join("nginx.conf"))
        .output()
        .expect("run nginx -t");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
}

/// The shipped `client_max_body_size` for `/publish` is crier's default `--max-event-bytes`:
/// change one, and this fails until the other follows.
#[test]
fn the_shipped_body_limit_is_criers_default_event_limit() {
    use clap::Parser as _;
    let locations = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/crier-locations.conf"),
    )
    .expect("nginx/crier-locations.conf");
    let limit = locations
        .lines()
        .find_map(|line| line.trim().strip_prefix("client_max_body_size "))
        .and_then(|value| value.strip_suffix(';'))
        .expect("a client_max_body_size line");
    let bytes: usize = match limit.strip_suffix(['k', 'K']) {
        Some(kib) => kib.parse::<usize>().expect("a size") << 10,
        None => match limit.strip_suffix(['m', 'M']) {
            Some(mib) => mib.parse::<usize>().expect("a size") << 20,
            None => limit.parse().expect("a size"),
        },
    };
    let defaults = crier::Config::try_parse_from(["crier"]).expect("the defaults parse");
    assert_eq!(bytes, defaults.max_event_bytes, "client_max_body_size {limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_servers_own_page_publishes_and_reads_its_stats_and_others_may_not() {
    let server = TestServer::start(&[]).await;
    let proxy = Nginx::start(&[server.addr]).await;
    // The page's origin is the address the browser reached: nginx's, passed on as `Host`.
    let own = format!("http://{}", proxy.addr);
    let publish_from = |origin: String| async move {
        let headers = [("Origin", origin.as_str())];
        request(proxy.addr, "POST", "/publish?topic=t", &headers, b"x").await
    };
    assert_eq!(publish_from(own.clone()).await.status, 200);
    let foreign = publish_from("https://evil.example".to_owned()).await;
    assert_eq!((foreign.status, foreign.json()["error"].as_str()), (403, Some("cross_origin")));
    let _socket = ws::connect_with(proxy.addr, "/ws?topic=t", &[("Origin", own.as_str())]).await;
    // The page's stats reach a remote browser; the metrics stay in.
    let remote = Some("127.0.0.2");
    let metrics = request_from(remote, proxy.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(metrics.status, 403);
    let stats = request_from(remote, proxy.addr, "GET", "/stats", &[], b"").await;
    assert_eq!(stats.status, 200, "{}", stats.text());
    assert_eq!(stats.json()["streams_open"], 1.0, "the WebSocket: {}", stats.text());
}

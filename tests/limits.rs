//! Limits at the edge, on real sockets: connection caps (in all, and per client address from
//! several source addresses), rates of new streams and of publishes (429 with Retry-After, and
//! recovering), the request head cap (431), and deadlines for peers that stall (a publish body,
//! an h2c preface or half a HEADERS frame).

mod support;

use std::time::Duration;

use serde_json::json;
use support::tokens::{SECRET, grant, hs256};
use support::{
    HttpResponse, SseClient, TestServer, WAIT, connect_from, metric, parse_response, request,
    request_from, wait_until,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn assert_refused(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.json()["error"], code, "{}", response.text());
}

async fn rejections(server: &TestServer, reason: &str) -> f64 {
    let series = format!("crier_rejections_total{{reason=\"{reason}\"}}");
    metric(&server.metrics().await, &series).unwrap_or(0.0)
}

/// Reads a whole response from a raw connection the server answers and closes.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("answered").unwrap();
    parse_response(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_client_address() {
    let server =
        TestServer::start(&["--max-connections-per-ip", "3", "--trusted-proxies", "none"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let stream = connect_from("127.0.0.2", server.addr).await;
        let sse = SseClient::on_stream(stream, server.addr, "/sse?topic=t", &[]).await;
        assert_eq!(sse.status, 200);
        held.push(sse);
    }
    let mut fourth = connect_from("127.0.0.2", server.addr).await;
    let refused = read_answer(&mut fourth).await;
    assert_refused(&refused, 429, "too_many_connections");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    // Another address has its own allowance.
    let other = request_from(Some("127.0.0.3"), server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(other.status, 200);
    assert_eq!(rejections(&server, "connections_per_ip").await, 1.0);
    // A connection that closes frees its place.
    held.pop();
    wait_until("a place for 127.0.0.2 again", || async {
        request_from(Some("127.0.0.2"), server.addr, "GET", "/healthz", &[], b"").await.status
            == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_global_cap_are_503() {
    let server = TestServer::start(&["--max-connections", "2"]).await;
    let _a = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let _b = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let refused = read_answer(&mut third).await;
    assert_refused(&refused, 503, "at_capacity");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_are_rate_limited_per_address_and_recover() {
    let server = TestServer::start(&["--new-streams-per-sec", "2"]).await;
    let first = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let second = support::ws::connect(server.addr, "/ws?topic=t").await;
    assert_eq!(first.status, 200);
    drop(second);
    let refused = request(server.addr, "GET", "/sse?topic=t", &[], b"").await;
    assert_refused(&refused, 429, "rate_limited");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    // Through hyper too (a connection that served a request first), to a browser's
    // EventSource: the soft refusal it retries, a whole 200 answer rather than a stream.
    let refused = SseClient::connect_after_request(server.addr, "/sse?topic=t", &[]).await;
    assert_eq!(refused.status, 200);
    assert!(refused.header("content-length").is_some(), "not a stream: {}", refused.head);
    assert!(rejections(&server, "stream_rate").await >= 2.0);
    // Another address is not held back; this one recovers.
    let other = connect_from("127.0.0.4", server.addr).await;
    assert_eq!(SseClient::on_stream(other, server.addr, "/sse?topic=t", &[]).await.status, 200);
    wait_until("a new stream to be let in", || async {
        request(server.addr, "GET", "/healthz", &[], b"").await;
        let stream = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
        stream.status == 200 && stream.header("transfer-encoding").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_rate_limited_per_principal() {
    let server = TestServer::start(&["--jwt-key", SECRET, "--publishes-per-sec", "2"]).await;
    let alice = hs256(&support::tokens::with(grant(&["*"], &[]), json!({"sub": "alice"})));
    let bob = hs256(&support::tokens::with(grant(&["*"], &[]), json!({"sub": "bob"})));
    let publish = |token: String| async move {
        let auth = format!("Bearer {token}");
        request(server.addr, "POST", "/publish?topic=t", &[("Authorization", &auth)], b"x").await
    };
    assert_eq!(publish(alice.clone()).await.status, 200);
    assert_eq!(publish(alice.clone()).await.status, 200);
    let refused = publish(alice.clone()).await;
    assert_refused(&refused, 429, "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(publish(bob.clone()).await.status, 200, "bob has his own rate");
    // WebSocket publishes count against the same principal.
    let mut ws = support::ws::connect(server.addr, &format!("/ws?token={alice}")).await;
    let reply = support::ws::command(&mut ws, json!({"op":"publish","topic":"t","data":"y"})).await;
    assert_eq!(reply["error"], "rate_limited", "{reply}");
    assert!(rejections(&server, "publish_rate").await >= 2.0);
    wait_until("alice to publish again", || {
        let alice = alice.clone();
        async move { publish(alice).await.status == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_431() {
    let server = TestServer::start(&["--max-request-head-bytes", "4KiB"]).await;
    let big = "x".repeat(5000);
    let refused = request(server.addr, "GET", "/sse?topic=t", &[("X-Padding", &big)], b"").await;
    assert_refused(&refused, 431, "head_too_large");
    let fits = "x".repeat(3000);
    let ok = request(server.addr, "GET", "/healthz", &[("X-Padding", &fits)], b"").await;
    assert_eq!(ok.status, 200);
    assert_eq!(rejections(&server, "head_too_large").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_publish_body_is_408_and_closed() {
    let server = TestServer::start(&["--body-read-timeout", "500ms"]).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'a'; 1024]).await.unwrap();
    // The answer comes, and the connection closes, without the client sending anything more.
    let started = tokio::time::Instant::now();
    let answer = read_answer(&mut stream).await;
    assert_refused(&answer, 408, "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rejections(&server, "body_timeout").await, 1.0);
    assert_eq!(metric(&server.metrics().await, "crier_events_published_total"), Some(0.0));
}

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends `bytes` and waits for the server to close the connection.
async fn closed_after(server: &TestServer, bytes: &[u8]) -> Duration {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes a stalled h2c connection")
        .ok();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connections_that_stall_before_a_request_are_closed() {
    let server = TestServer::start(&["--header-read-timeout", "500ms"]).await;
    // The preface alone.
    assert!(closed_after(&server, PREFACE).await < Duration::from_secs(3));
    // The preface, empty SETTINGS, and a HEADERS frame without END_HEADERS (no CONTINUATION).
    let mut stalled = PREFACE.to_vec();
    stalled.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    stalled.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]);
    assert!(closed_after(&server, &stalled).await < Duration::from_secs(3));
    assert!(rejections(&server, "head_timeout").await >= 2.0);
    // A real h2c request on time is served.
    assert_eq!(h2c_healthz(server.addr).await, 200);
}

/// An h2c (HTTP/2 with prior knowledge) client connection to `addr`, driven by a task.
async fn h2c_connect(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(conn))
}

/// `GET /healthz` over h2c; the status.
async fn h2c_healthz(addr: std::net::SocketAddr) -> u16 {
    let (mut sender, _conn) = h2c_connect(addr).await;
    let req = http::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

/// Opens idle connections to `addr` until `count` are open.
async fn idle_connections(addr: std::net::SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_pauses_logs_rarely_and_recovers() {
    let node = support::CrierProcess::spawn_with_fd_limit(
        64,
        &["--header-read-timeout", "60s", "--max-connections", "1000"],
    )
    .await;
    let pid = node.pid();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<String> =
            stat.rsplit_once(')').unwrap().1.split_whitespace().map(str::to_owned).collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    // More connections than descriptors: the kernel completes the handshakes, the server's
    // accepts fail with EMFILE.
    let held = idle_connections(node.addr, 150).await;
    let failing = |log: &Vec<String>| log.iter().filter(|l| l.contains("accept failed")).count();
    wait_until("accepts to fail", || async { failing(&node.log.lock().unwrap()) >= 1 }).await;
    let (before, ticks) = (failing(&node.log.lock().unwrap()), cpu());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, used) = (failing(&node.log.lock().unwrap()), cpu() - ticks);
    assert!(after - before <= 1, "{} more accept-failure lines in 3 s", after - before);
    assert!(used <= 30, "{used} clock ticks of CPU in 3 s: the accept loop spins");
    // Descriptors free up: HTTP/1 and h2c are served again.
    drop(held);
    wait_until("the server to answer again", || async {
        tokio::time::timeout(
            Duration::from_millis(500),
            request(node.addr, "GET", "/healthz", &[], b""),
        )
        .await
        .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert_eq!(h2c_healthz(node.addr).await, 200);
    let metrics = request(node.addr, "GET", "/metrics", &[], b"").await.text();
    assert!(metric(&metrics, "crier_accept_errors_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_are_rate_limited_per_address() {
    let server = TestServer::start(&["--new-topics-per-sec", "3"]).await;
    // Three new topics in one stream use the burst; a fourth is refused, an existing one not.
    let first = SseClient::connect(server.addr, "/sse?topic=a&topic=b&topic=c", &[]).await;
    assert_eq!(first.status, 200);
    let refused = request(server.addr, "GET", "/sse?topic=d", &[], b"").await;
    assert_refused(&refused, 429, "rate_limited");
    assert!(refused.text().contains("new topics"), "{}", refused.text());
    assert_eq!(SseClient::connect(server.addr, "/sse?topic=a", &[]).await.status, 200);
    // Publishing creates topics too; and a WebSocket subscribe.
    let publish = support::publish(server.addr, "e", None, b"x", None).await;
    assert_refused(&publish, 429, "rate_limited");
    let mut ws = support::ws::connect(server.addr, "/ws").await;
    let reply = support::ws::command(&mut ws, json!({"op":"subscribe","topic":"f"})).await;
    assert_eq!(reply["error"], "rate_limited", "{reply}");
    // Another address has its own budget.
    let other = connect_from("127.0.0.5", server.addr).await;
    assert_eq!(SseClient::on_stream(other, server.addr, "/sse?topic=g", &[]).await.status, 200);
    assert!(rejections(&server, "topic_rate").await >= 3.0);
    wait_until("a new topic to be let in again", || async {
        support::publish(server.addr, "h", None, b"x", None).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_in_flight_are_closed_after_the_idle_timeout() {
    let server = TestServer::start(&["--idle-timeout", "500ms"]).await;
    // HTTP/2: the connection ends (GOAWAY, then close) once nothing is in flight.
    let (mut sender, conn) = h2c_connect(server.addr).await;
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", server.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(sender.send_request(get("/healthz")).await.unwrap().status(), 200);
    let started = tokio::time::Instant::now();
    tokio::time::timeout(WAIT, conn).await.expect("the idle h2c connection is closed").ok();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // HTTP/1.1 keep-alive too.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 200);
    // An open stream is a request in flight: an h2c SSE stream outlives the idle timeout.
    let (mut sender, _conn) = h2c_connect(server.addr).await;
    let response = sender.send_request(get("/sse?topic=t")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    server.wait_subscriptions(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.publish("t", "still here").await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("still here") {
        use http_body_util::BodyExt as _;
        let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("a frame in time");
        let frame = frame.expect("the stream is open").expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
}

/// Streams, not sockets: one HTTP/2 connection's SSE streams count against
/// `--max-streams-per-ip` one by one, with the address's WebSockets and HTTP/1.1 streams; a
/// stream that ends gives its place back. And HTTP/2 connections offer 100 concurrent streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_count_against_the_streams_per_address() {
    let server =
        TestServer::start(&["--max-streams-per-ip", "3", "--new-streams-per-sec", "100"]).await;
    let (mut sender, _conn) = h2c_connect(server.addr).await;
    let open = |sender: &mut hyper::client::conn::http2::SendRequest<_>| {
        let req = http::Request::get(format!("http://{}/sse?topic=a", server.addr))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(req)
    };
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = open(&mut sender).await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let http1 = SseClient::connect(server.addr, "/sse?topic=a", &[]).await;
    assert_eq!(http1.status, 200);
    let refused = open(&mut sender).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body = http_body_util::BodyExt::collect(refused.into_body()).await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "too_many_streams", "{body}");
    // A WebSocket of the same address: upgraded, then closed 1013 with the reason.
    let mut ws = support::RawWs::connect(server.addr, "/ws?topic=a").await;
    let frames = ws.read_until_closed().await;
    let close = frames.last().expect("a close frame");
    assert_eq!(close.close_code(), Some(1013), "{frames:?}");
    let reason: serde_json::Value = serde_json::from_slice(&close.payload[2..]).unwrap();
    assert_eq!(reason["error"], "too_many_streams", "{reason}");
    drop(streams.pop());
    wait_until("an ended stream to give its place back", || async {
        open(&mut sender.clone()).await.is_ok_and(|response| response.status() == 200)
    })
    .await;
    let metrics = server.metrics().await;
    let refused = metric(&metrics, r#"crier_rejections_total{reason="streams_per_ip"}"#);
    assert!(refused.is_some_and(|n| n >= 1.0), "{metrics}");

    // The server's SETTINGS: MAX_CONCURRENT_STREAMS (0x3) is 100.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(support::WAIT, raw.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut settings = vec![0u8; len];
    raw.read_exact(&mut settings).await.unwrap();
    let max_streams = settings
        .chunks_exact(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == 0x3)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(max_streams, Some(100));
}

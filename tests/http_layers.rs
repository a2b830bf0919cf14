//! The limits every publish passes, whichever edge it comes from: publishes beyond
//! `--max-concurrent-publishes` in flight are shed at once (503 `overloaded`, counted), and a
//! publish Redis does not answer within `--publish-timeout` is answered 503 `outcome_unknown`,
//! both with `Retry-After`; a WebSocket `publish` is held to both alike.

mod support;

use support::redis::RedisServer;
use support::{TestServer, metric, publish, publish_ok, request, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts a publish whose body is 10 bytes, sends 5 of them and waits: a publish in flight.
async fn unfinished_publish(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 10\r\n\r\nhello";
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_the_limit_in_flight_are_shed_and_counted() {
    let server = TestServer::start(&["--max-concurrent-publishes", "1"]).await;
    let mut held = unfinished_publish(&server).await;

    // Once the held publish has its place, the next one is refused at once.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let refused = loop {
        // A held publish that lost the race for the one place (it was answered, shed) is
        // started again.
        let mut answered = [0u8; 1];
        if held.try_read(&mut answered).is_ok() {
            held = unfinished_publish(&server).await;
        }
        let response = publish(server.addr, "t", None, b"x", None).await;
        if response.status != 200 {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "no publish was shed");
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "overloaded", "{}", refused.text());
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert_eq!(refused.header("content-type").as_deref(), Some("application/json"));
    let counted = metric(&server.metrics().await, r#"crier_shed_requests_total{route="publish"}"#);
    assert!(counted >= Some(1.0), "{counted:?}");

    // The held publish completes; then there is room again.
    held.write_all(b"world").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(support::WAIT, held.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""topic":"t""#), "{answer}");
    publish_ok(server.addr, "t", None, b"again", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_does_not_answer_in_time_is_refused_with_retry_after() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let server = TestServer::start(&["--redis-url", &url, "--publish-timeout", "300ms"]).await;
    wait_until("the node to be ready", || async {
        request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    publish_ok(server.addr, "t", None, b"before", None).await;

    let pid = redis.pid().expect("redis-server runs") as i32;
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let response = publish(server.addr, "t", None, b"frozen", None).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    assert_eq!(response.status, 503, "{}", response.text());
    let body = response.json();
    // The publish was on its way to Redis: nobody knows yet whether it ran.
    assert_eq!(body["error"], "outcome_unknown");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("Idempotency-Key")), "{body}");
    assert_eq!(response.header("retry-after").as_deref(), Some("1"));
    wait_until("the node to take publishes again", || async {
        publish(server.addr, "t", None, b"after", None).await.status == 200
    })
    .await;
}

/// A WebSocket `publish` goes through the same policy as `POST /publish`: with Redis frozen,
/// each is answered within `--publish-timeout` (not after the relay's own timeout, one after
/// another), and past `--max-concurrent-publishes` in flight it is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_publish_redis_does_not_take_in_time_is_answered_within_the_timeout() {
    use futures_util::SinkExt as _;
    use serde_json::json;
    use support::ws;

    let redis = RedisServer::start().await;
    let url = redis.url();
    let args =
        ["--redis-url", &url, "--publish-timeout", "300ms", "--max-concurrent-publishes", "1"];
    let server = TestServer::start(&args).await;
    wait_until("the node to be ready", || async {
        request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    let mut socket = ws::connect(server.addr, "/ws").await;
    let mut other = ws::connect(server.addr, "/ws").await;
    let ok =
        ws::command(&mut socket, json!({"op": "publish", "topic": "t", "data": "before"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");

    let pid = redis.pid().expect("redis-server runs") as i32;
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let mut took = Vec::new();
    for n in 0..3 {
        let started = tokio::time::Instant::now();
        let publish =
            json!({"op": "publish", "topic": "t", "data": format!("frozen {n}"), "ref": n});
        let reply = ws::command(&mut socket, publish).await;
        took.push(started.elapsed());
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["ref"], n, "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(matches!(error, "unavailable" | "outcome_unknown"), "{reply}");
    }
    // While one connection's publish waits for Redis, it holds the one place in flight: the
    // other connection's is refused at once.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let shed = loop {
        let holding = json!({"op": "publish", "topic": "t", "data": "holding"});
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(holding.to_string()))
            .await
            .unwrap();
        let reply =
            ws::command(&mut other, json!({"op": "publish", "topic": "t", "data": "x"})).await;
        let held = ws::next_json(&mut socket).await;
        assert_eq!(held["op"], "error", "{held}");
        if reply["error"] == "overloaded" {
            break reply;
        }
        // The second was taken first (the first was shed instead): again.
        assert!(tokio::time::Instant::now() < deadline, "no publish was shed: {reply}");
    };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    for elapsed in &took {
        // 300 ms, give or take the scheduling of a loaded machine; the relay's own timeout
        // (1 s and more, one after another) is far beyond.
        assert!(*elapsed < std::time::Duration::from_millis(900), "{took:?}");
    }
    assert!(shed["detail"].as_str().is_some_and(|d| d.contains("in flight")), "{shed}");
    let counted = metric(&server.metrics().await, r#"crier_shed_requests_total{route="publish"}"#);
    assert!(counted >= Some(1.0), "{counted:?}");
    wait_until("the node to take publishes again", || async {
        publish(server.addr, "t", None, b"after", None).await.status == 200
    })
    .await;
}

//! `Idempotency-Key`: a retried publish publishes nothing and answers the first id, on one
//! node (in memory) and in cluster mode (in Redis, from any node); and a cluster publish that
//! times out says whether it may have been published: `unavailable` (withdrawn before it was
//! sent: never published) or `outcome_unknown` (sent: retry with the key), tested with Redis
//! frozen by SIGSTOP.

mod support;

use serde_json::json;
use support::redis::RedisServer;
use support::{HttpResponse, SseClient, TestServer, metric, request, wait_until};

async fn publish_keyed(
    addr: std::net::SocketAddr,
    topic: &str,
    key: &str,
    data: &str,
) -> HttpResponse {
    let target = format!("/publish?topic={topic}");
    request(addr, "POST", &target, &[("Idempotency-Key", key)], data.as_bytes()).await
}

/// A ready node of `redis` with one publish worker (while it waits on a frozen Redis, the next
/// publish stays queued) and `timeout` as `--publish-timeout`, and a stream of topic `t`.
async fn one_worker_node(redis: &RedisServer, timeout: &str) -> (TestServer, SseClient) {
    let url = redis.url();
    let args = ["--redis-url", &url, "--publish-timeout", timeout, "--redis-pool-size", "1"];
    let server = TestServer::start(&args).await;
    wait_until("the node to be ready", || async {
        request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    let stream = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;
    (server, stream)
}

/// Publishes "paid" to `t` with `key` until it is answered 200 (Redis is back).
async fn retry_until_answered(addr: std::net::SocketAddr, key: &str) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let answer = publish_keyed(addr, "t", key, "paid").await;
        if answer.status == 200 {
            return answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "Redis answers again in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_publishes_once_and_answers_the_first_id() {
    let server = TestServer::start(&[]).await;
    let mut stream = SseClient::connect(server.addr, "/sse?topic=orders", &[]).await;
    server.wait_subscriptions(1).await;
    let first = publish_keyed(server.addr, "orders", "order-42", "created").await;
    assert_eq!(first.status, 200);
    assert!(first.header("idempotent-replayed").is_none());
    let again = publish_keyed(server.addr, "orders", "order-42", "created (retry)").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    // The same key on another topic is another publish.
    let other = publish_keyed(server.addr, "invoices", "order-42", "x").await;
    assert!(other.header("idempotent-replayed").is_none());
    // Over WebSocket too, sharing the keys of HTTP.
    let mut ws = support::ws::connect(server.addr, "/ws").await;
    let reply = support::ws::command(
        &mut ws,
        json!({"op":"publish","topic":"orders","data":"ws retry","idempotency_key":"order-42"}),
    )
    .await;
    assert_eq!((&reply["id"], &reply["replayed"]), (&first.json()["id"], &json!(true)), "{reply}");
    server.publish("orders", "marker").await;
    let events = stream.events(2).await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["created", "marker"], "the retries published nothing");
    assert_eq!(metric(&server.metrics().await, "crier_events_published_total"), Some(3.0));
    // Keys are visible ASCII, at most 255 characters.
    let bad = publish_keyed(server.addr, "orders", &"k".repeat(256), "x").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_idempotency_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_remembered_by_redis_for_every_node() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (a, b) = (
        TestServer::start(&["--redis-url", &url]).await,
        TestServer::start(&["--redis-url", &url]).await,
    );
    for node in [&a, &b] {
        wait_until("the node to be ready", || async {
            request(node.addr, "GET", "/readyz", &[], b"").await.status == 200
        })
        .await;
    }
    let first = publish_keyed(a.addr, "t", "k1", "one").await;
    let again = publish_keyed(b.addr, "t", "k1", "one again").await;
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    let mut conn = redis.connection().await;
    let ttl: i64 =
        redis::cmd("PTTL").arg("crier:{t}:idem:k1").query_async(&mut conn).await.unwrap();
    assert!(ttl > 290_000 && ttl <= 300_000, "remembered for the window: PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_neither_loses_nor_duplicates_a_keyed_publish() {
    let redis = RedisServer::start().await;
    // One publish worker: while it waits on the frozen Redis, the next publish stays queued.
    let (server, mut stream) = one_worker_node(&redis, "500ms").await;

    let pid = redis.pid().expect("redis-server runs") as i32;
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let timed = std::time::Instant::now();
    let sent = publish_keyed(server.addr, "t", "pay-7", "paid").await;
    let sent_took = timed.elapsed();
    let queued = support::publish(server.addr, "t", None, b"withdrawn", None).await;
    // A retry while Redis is still frozen is queued behind the first attempt, and withdrawn
    // in time: yet it may not say "never published", since the first attempt may be.
    let timed = std::time::Instant::now();
    let retry = publish_keyed(server.addr, "t", "pay-7", "paid").await;
    let retry_took = timed.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    assert_eq!(sent.status, 503);
    assert_eq!(sent.json()["error"], "outcome_unknown", "{}", sent.text());
    assert_eq!(sent.header("retry-after").as_deref(), Some("1"));
    assert_eq!(queued.status, 503);
    assert_eq!(queued.json()["error"], "unavailable", "withdrawn before it was sent");
    assert_eq!(retry.status, 503);
    assert_eq!(retry.json()["error"], "outcome_unknown", "{}", retry.text());
    for took in [sent_took, retry_took] {
        assert!(
            took < std::time::Duration::from_millis(1500),
            "answered within the timeout: {took:?}"
        );
    }
    // Redis answers again: the retry with the key gets the first publish's id.
    let answered = retry_until_answered(server.addr, "pay-7").await;
    server.publish("t", "marker").await;
    let events = stream.events(2).await;
    let got: Vec<(&str, &str)> =
        events.iter().map(|e| (e.data.as_str(), e.last_event_id.as_str())).collect();
    let id = answered.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(got[0], ("paid", id.as_str()), "published once, under the id the retry got");
    assert_eq!(got[1].0, "marker", "the withdrawn publish was never published");
}

/// A key whose first attempt was answered `outcome_unknown` is never answered `unavailable`
/// (never published) while that attempt may still be published, however its retries fail to
/// reach Redis (queued and withdrawn, or no connection to be had); and every answer comes
/// within `--publish-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_never_told_unavailable_while_the_first_attempt_may_be_published() {
    let redis = RedisServer::start().await;
    let timeout = std::time::Duration::from_secs(2);
    let (server, mut stream) = one_worker_node(&redis, "2s").await;
    // Connections in use a moment ago are trusted: the first attempt is sent at once.
    server.publish("t", "before").await;

    let pid = redis.pid().expect("redis-server runs") as i32;
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let mut answers = Vec::new();
    for _ in 0..4 {
        let timed = std::time::Instant::now();
        let answer = publish_keyed(server.addr, "t", "pay-8", "paid").await;
        answers.push((answer.status, answer.json()["error"].clone(), timed.elapsed()));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    for (status, error, took) in &answers {
        assert_eq!((*status, error.as_str()), (503, Some("outcome_unknown")), "{answers:?}");
        assert!(*took < timeout + std::time::Duration::from_millis(500), "{answers:?}");
    }
    let answered = retry_until_answered(server.addr, "pay-8").await;
    server.publish("t", "marker").await;
    let events = stream.events(3).await;
    let got: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(got, ["before", "paid", "marker"], "published once");
    assert_eq!(events[1].last_event_id, answered.json()["id"].as_str().unwrap());
}

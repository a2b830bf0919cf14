//! The Mercure hub as a cluster, against a real `redis-server` and real crier processes: one
//! log in one order on every node, resume by Mercure id on any node after another died, the
//! updates a Redis outage held back, the subscriptions of every node, with the departure
//! of a dead node's subscribers announced by the survivors, and the history's bounds in Redis.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::mercure::{self, HUB, bearer, publish, subscribe, subscriber};
use support::redis::RedisServer;
use support::{CrierProcess, request, wait_until};
use tokio::time::Instant;

/// A node of the hub behind `redis`, once it is ready.
async fn node(redis: &RedisServer, extra: &[&str]) -> CrierProcess {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(&HUB);
    args.extend_from_slice(extra);
    let node = CrierProcess::spawn(&args).await;
    let addr = node.addr;
    wait_until("the node to be ready", || async {
        request(addr, "GET", "/readyz", &[], b"").await.status == 200
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_published_on_one_node_reach_template_subscribers_on_another_and_resume_anywhere() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]).await;
    let mut b = node(&redis, &[]).await;
    let auth = bearer(&subscriber(&["*"]));
    let auth = [("Authorization", auth.as_str())];
    let template = "https://example.com/books/{id}";
    let mut on_b = subscribe(b.addr, &[template], &auth).await;
    let mut published = Vec::new();
    for i in 0..20 {
        let id = format!("book-{i}");
        let topic = format!("https://example.com/books/{i}");
        let private = if i % 2 == 0 { "on" } else { "" };
        let fields = [("topic", topic.as_str()), ("data", &format!("v{i}")), ("id", &id)];
        let mut fields = fields.to_vec();
        if !private.is_empty() {
            fields.push(("private", private));
        }
        assert_eq!(publish(a.addr, &fields).await, id);
        published.push(id);
        // Not matched by the template: never delivered.
        publish(a.addr, &[("topic", "https://example.com/authors/1"), ("data", "no")]).await;
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(on_b.next_event().await.last_event_id);
    }
    assert_eq!(seen, published[..10]);
    // B dies; its subscriber resumes on A from the last id it got: the rest, once each.
    b.child.kill().await.expect("kill B");
    let last = seen.last().unwrap().clone();
    let mut on_a =
        subscribe(a.addr, &[template], &[auth[0], ("Last-Event-ID", last.as_str())]).await;
    assert_eq!(on_a.header("last-event-id").as_deref(), Some(last.as_str()));
    let mut rest = Vec::new();
    for _ in 0..10 {
        rest.push(on_a.next_event().await.last_event_id);
    }
    assert_eq!(rest, published[10..]);
    let live =
        publish(a.addr, &[("topic", "https://example.com/books/99"), ("data", "live")]).await;
    assert_eq!(on_a.next_event().await.last_event_id, live, "no duplicate after the replay");
    // A node that joins later holds the same history.
    let c = node(&redis, &[]).await;
    let mut on_c = subscribe(c.addr, &[template], &[auth[0], ("Last-Event-ID", "book-17")]).await;
    let replay: Vec<String> = on_c.events(3).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(replay, ["book-18", "book-19", live.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_a_node_missed_while_its_redis_link_was_down_are_backfilled() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]).await;
    let b = node(&redis, &[]).await;
    let mut on_b =
        subscribe(b.addr, &["*"], &[("Authorization", &bearer(&subscriber(&["*"])))]).await;
    let first = publish(a.addr, &[("topic", "t"), ("data", "before")]).await;
    assert_eq!(on_b.next_event().await.last_event_id, first);
    // Every node's Pub/Sub link drops; A publishes while B reconnects.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut published = Vec::new();
    for i in 0..5 {
        let fields = [("topic", "t"), ("data", &format!("during {i}"))];
        let published_now = loop {
            let response = mercure::post(
                a.addr,
                &[("Authorization", &bearer(&mercure::publisher()))],
                &fields,
            )
            .await;
            if response.status == 200 {
                break response.text();
            }
            // A's link is down too for a moment: 503, nothing published; try again.
            assert_eq!(response.status, 503, "{}", response.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        published.push(published_now);
    }
    let got: Vec<String> = on_b.events(5).await.into_iter().map(|e| e.last_event_id).collect();
    assert_eq!(got, published, "in order, none lost, none twice");
    let metrics = request(b.addr, "GET", "/metrics", &[], b"").await.text();
    let backfilled = support::metric(&metrics, "crier_relay_backfilled_total");
    assert!(backfilled >= Some(1.0), "B read what it missed from the stream: {backfilled:?}");
    let last = publish(a.addr, &[("topic", "t"), ("data", "after")]).await;
    assert_eq!(on_b.next_event().await.last_event_id, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_subscriptions_are_listed_and_a_dead_nodes_are_ended_by_the_survivors() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &["--mercure-subscriptions"]).await;
    let mut b = node(&redis, &["--mercure-subscriptions"]).await;
    let api = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";
    let watcher = bearer(&subscriber(&[api]));
    let mut watch = subscribe(a.addr, &[api], &[("Authorization", &watcher)]).await;
    let on_b = subscribe(
        b.addr,
        &["https://example.com/{x}"],
        &[("Authorization", &bearer(&subscriber(&["*"])))],
    )
    .await;
    let arrived: Value = serde_json::from_str(&watch.next_event().await.data).unwrap();
    assert_eq!(
        (arrived["active"].as_bool(), arrived["topic"].as_str()),
        (Some(true), Some("https://example.com/{x}"))
    );
    let subscriber_id = arrived["subscriber"].as_str().unwrap().to_owned();
    let listed_on = |addr| {
        let watcher = watcher.clone();
        async move {
            let list = mercure::get(addr, "/.well-known/mercure/subscriptions", &watcher).await;
            assert_eq!(list.status, 200, "{}", list.text());
            let body = list.json();
            body["subscriptions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["subscriber"].as_str().unwrap().to_owned())
                .collect::<Vec<String>>()
        }
    };
    // Node A lists B's subscriber (and its own watcher).
    let on_a = listed_on(a.addr).await;
    assert!(on_a.contains(&subscriber_id), "{on_a:?}");
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    // C shuts down cleanly: it announces its own subscriber's departure as its stream ends,
    // long before a survivor would take it for dead (20 s of silence).
    let mut c = node(&redis, &["--mercure-subscriptions"]).await;
    let on_c = subscribe(
        c.addr,
        &["https://example.com/c"],
        &[("Authorization", &bearer(&subscriber(&["*"])))],
    )
    .await;
    let arrived: Value = serde_json::from_str(&watch.next_event().await.data).unwrap();
    assert_eq!(arrived["active"], true);
    let subscriber_on_c = arrived["subscriber"].as_str().unwrap().to_owned();
    let stopped = Instant::now();
    c.signal("TERM");
    let left = watch.next_event_within(Duration::from_secs(10)).await;
    let left: Value = serde_json::from_str(&left.data).unwrap();
    assert_eq!(
        (left["active"].as_bool(), left["subscriber"].as_str()),
        (Some(false), Some(subscriber_on_c.as_str()))
    );
    let status = tokio::time::timeout(support::WAIT, c.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "C exited with {status}");
    eprintln!("C's departure announced {:?} after SIGTERM", stopped.elapsed());
    drop(on_c);
    assert!(!listed_on(a.addr).await.contains(&subscriber_on_c));
    // B dies without a word: within 30 s A no longer lists its subscriber and announces it left.
    let killed = Instant::now();
    b.child.kill().await.expect("kill B");
    drop(on_b);
    let left = watch.next_event_within(Duration::from_secs(30)).await;
    let left: Value = serde_json::from_str(&left.data).unwrap();
    assert_eq!(
        (left["active"].as_bool(), left["subscriber"].as_str()),
        (Some(false), Some(subscriber_id.as_str()))
    );
    assert!(killed.elapsed() < Duration::from_secs(30), "{:?}", killed.elapsed());
    let on_a = listed_on(a.addr).await;
    assert!(!on_a.contains(&subscriber_id), "{on_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_redis_does_not_take_in_time_is_refused_with_retry_after() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &["--publish-timeout", "300ms"]).await;
    publish(a.addr, &[("topic", "https://example.com/t"), ("data", "before")]).await;

    let pid = redis.pid().expect("redis-server runs") as i32;
    // SAFETY: signalling a child process of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let sent = Instant::now();
    let auth = bearer(&mercure::publisher());
    let fields = [("topic", "https://example.com/t"), ("data", "frozen")];
    let response = mercure::post(a.addr, &[("Authorization", &auth)], &fields).await;
    let waited = sent.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.text(), "Service Unavailable\n");
    assert_eq!(response.header("retry-after").as_deref(), Some("1"));
    // Answered at the timeout, not when Redis came back.
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    wait_until("the node to take publishes again", || async {
        let fields = [("topic", "https://example.com/t"), ("data", "after")];
        mercure::post(a.addr, &[("Authorization", &auth)], &fields).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_update_history_is_mercure_history_long_and_subscription_events_apart() {
    let redis = RedisServer::start().await;
    let flags = ["--mercure-anonymous", "--mercure-subscriptions", "--mercure-history", "100"];
    let a = node(&redis, &flags).await;
    for n in 0..130 {
        publish(a.addr, &[("topic", "https://example.com/t"), ("data", &n.to_string())]).await;
    }
    // Redis keeps the updates' stream at --mercure-history, the events' at --history.
    let conn = redis.connection().await;
    let len = |key: &'static str| {
        let mut conn = conn.clone();
        async move { redis::cmd("XLEN").arg(key).query_async::<u64>(&mut conn).await.unwrap() }
    };
    assert_eq!(len("crier:{~mercure}:log").await, 100);
    // A node that joins later replays them from Redis, and subscription events do not count.
    let b = node(&redis, &flags).await;
    let visitors: Vec<_> = futures_util::future::join_all(
        (0..20).map(|_| subscribe(b.addr, &["https://example.com/elsewhere"], &[])),
    )
    .await;
    drop(visitors);
    let mut replay = subscribe(b.addr, &["*"], &[("Last-Event-ID", "earliest")]).await;
    let held: Vec<String> = replay.events(100).await.into_iter().map(|e| e.data).collect();
    let expected: Vec<String> = (30..130).map(|n| n.to_string()).collect();
    assert_eq!(held, expected);
    wait_until("the visitors' 40 events and the replay's arrival", || async {
        len("crier:{~mercure-subscriptions}:log").await == 41
    })
    .await;
    assert_eq!(len("crier:{~mercure}:log").await, 100);
}

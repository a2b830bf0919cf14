//! Cluster mode against real `redis-server` processes and several crier nodes: one order and
//! one set of ids on every node, resume on any node, and what subscribers see when Redis is
//! killed, comes back with its data, or comes back empty.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::ws::{self, Ws};
use support::{SseClient, TestServer, metric, publish, publish_ok, request, wait_until, whatwg};
use tokio_tungstenite::tungstenite::Message;

/// A node of the cluster behind `redis`, once its link to Redis is up.
async fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args).await;
    wait_ready(&server).await;
    server
}

async fn ready(server: &TestServer) -> bool {
    request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
}

async fn wait_ready(server: &TestServer) {
    wait_until("the node to be ready", || ready(server)).await;
}

fn ids_and_data(events: &[whatwg::Event]) -> Vec<(String, String)> {
    events.iter().map(|e| (e.last_event_id.clone(), e.data.clone())).collect()
}

/// The next `n` events of a JSON WebSocket as (id, data).
async fn ws_events(ws: &mut Ws, n: usize) -> Vec<(String, String)> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let frame = ws::next_json(ws).await;
        let id = frame["id"].as_str().expect("an event frame").to_owned();
        events.push((id, frame["data"].as_str().expect("text data").to_owned()));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_node_reaches_every_node_with_the_same_id() {
    let redis = RedisServer::start().await;
    let (a, b, c) = (node(&redis, &[]).await, node(&redis, &[]).await, node(&redis, &[]).await);
    let mut sse_a = SseClient::connect(a.addr, "/sse?topic=news", &[]).await;
    let mut sse_b = SseClient::connect(b.addr, "/sse?topic=news", &[]).await;
    let mut ws_c = ws::connect(c.addr, "/ws?topic=news").await;
    let mut published = Vec::new();
    for i in 0..50 {
        let data = format!("event {i}");
        published.push((a.publish("news", &data).await, data));
    }
    assert_eq!(ids_and_data(&sse_a.events(50).await), published);
    assert_eq!(ids_and_data(&sse_b.events(50).await), published);
    assert_eq!(ws_events(&mut ws_c, 50).await, published);
    // Consecutive sequence numbers of one epoch, as on a single node.
    let epoch = published[0].0.split('-').next().unwrap().to_owned();
    for (i, (id, _)) in published.iter().enumerate() {
        assert_eq!(id, &format!("{epoch}-{}", i + 1));
    }

    let metrics = b.metrics().await;
    assert_eq!(metric(&metrics, "crier_relay_connected"), Some(1.0));
    assert!(metric(&metrics, "crier_relay_received_total") >= Some(50.0));
    let metrics = a.metrics().await;
    assert_eq!(metric(&metrics, "crier_relay_publish_duration_seconds_count"), Some(50.0));
    assert_eq!(metric(&metrics, "crier_events_published_total"), Some(50.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_every_node_give_every_subscriber_one_sequence() {
    let redis = RedisServer::start().await;
    let nodes = [node(&redis, &[]).await, node(&redis, &[]).await, node(&redis, &[]).await];
    let mut sse = Vec::new();
    let mut wss = Vec::new();
    for n in &nodes {
        sse.push(SseClient::connect(n.addr, "/sse?topic=t", &[]).await);
        wss.push(ws::connect(n.addr, "/ws?topic=t").await);
    }
    const EACH: usize = 100;
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let addr = n.addr;
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for j in 0..EACH {
                    let data = format!("node{i}-{j}");
                    ids.push(publish_ok(addr, "t", None, data.as_bytes(), None).await);
                }
                ids
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for p in publishers {
        acknowledged.extend(p.await.unwrap());
    }
    let reference = ids_and_data(&sse[0].events(3 * EACH).await);
    for client in &mut sse[1..] {
        assert_eq!(ids_and_data(&client.events(3 * EACH).await), reference);
    }
    for ws in &mut wss {
        assert_eq!(ws_events(ws, 3 * EACH).await, reference);
    }
    // Every acknowledged id was delivered once, and each publisher's events keep its order.
    let mut delivered: Vec<&String> = reference.iter().map(|(id, _)| id).collect();
    delivered.sort();
    acknowledged.sort();
    assert_eq!(delivered, acknowledged.iter().collect::<Vec<_>>());
    for i in 0..3 {
        let own: Vec<&str> =
            reference.iter().filter_map(|(_, d)| d.strip_prefix(&format!("node{i}-"))).collect();
        let expected: Vec<String> = (0..EACH).map(|j| j.to_string()).collect();
        assert_eq!(own, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_without_duplicate_or_gap() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis, &[]).await, node(&redis, &[]).await);
    let mut on_a = SseClient::connect(a.addr, "/sse?topic=t", &[]).await;
    for i in 0..20 {
        a.publish("t", &format!("e{i}")).await;
    }
    let seen = on_a.events(10).await;
    let last = seen.last().unwrap().last_event_id.clone();
    drop(on_a);

    // SSE on B with the header, WebSocket on B with the subscribe command.
    let mut on_b = SseClient::connect(b.addr, "/sse?topic=t", &[("Last-Event-ID", &last)]).await;
    let mut ws_b = ws::connect(b.addr, "/ws").await;
    let reply = ws::command(
        &mut ws_b,
        json!({"op": "subscribe", "topic": "t", "last_event_id": last, "ref": 1}),
    )
    .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    let replay = on_b.events(10).await;
    let expected: Vec<String> = (10..20).map(|i| format!("e{i}")).collect();
    assert_eq!(replay.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), expected);
    let ws_replay = ws_events(&mut ws_b, 10).await;
    assert_eq!(ws_replay, ids_and_data(&replay));
    let live = b.publish("t", "live").await;
    let event = on_b.next_event().await;
    assert_eq!((event.last_event_id, event.data), (live.clone(), "live".to_owned()));
    assert_eq!(ws_events(&mut ws_b, 1).await, [(live, "live".to_owned())]);
    assert!(!String::from_utf8_lossy(&on_b.body).contains("crier.gap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_resuming_clients_from_redis() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]).await;
    let b = node(&redis, &[]).await;
    let mut on_b = SseClient::connect(b.addr, "/sse?topic=t", &[]).await;
    a.publish("t", "before").await;
    let last = on_b.next_event().await.last_event_id;
    b.handle.shutdown().await.unwrap();
    // The others keep publishing while B is down.
    let mut missed = Vec::new();
    for i in 0..30 {
        let data = format!("while down {i}");
        missed.push((a.publish("t", &data).await, data));
    }
    // A new node has no copy of the topic: it reads it from Redis for the resuming client.
    let b = node(&redis, &[]).await;
    let mut resumed = SseClient::connect(b.addr, "/sse?topic=t", &[("Last-Event-ID", &last)]).await;
    assert_eq!(ids_and_data(&resumed.events(30).await), missed);
    let live = a.publish("t", "live").await;
    assert_eq!(resumed.next_event().await.last_event_id, live);
    assert!(!String::from_utf8_lossy(&resumed.body).contains("crier.gap"));

    // A position the cluster already issued but this node has not delivered yet is read from
    // Redis too, rather than called unknown.
    let c = node(&redis, &[]).await;
    let ahead = a.publish("t", "fresh").await;
    let mut exact = SseClient::connect(c.addr, "/sse?topic=t", &[("Last-Event-ID", &ahead)]).await;
    let next = a.publish("t", "next").await;
    let event = exact.next_event().await;
    assert_eq!((event.kind.as_str(), event.last_event_id), ("message", next));
}

/// What a publisher saw during an outage.
struct Outcomes {
    /// (id, data) of the publishes answered 200.
    acknowledged: Vec<(String, String)>,
    /// Data of the publishes answered 503.
    refused: Vec<String>,
    /// Data of the publishes answered 503 `outcome_unknown` (sent to Redis, no answer): the
    /// only refused ones that may have been published.
    unknown: Vec<String>,
}

/// Publishes `count` numbered events on `server` one after another, checking that refusals are
/// 503s with the JSON error and `Retry-After`.
async fn publish_through_outage(server: std::net::SocketAddr, count: usize) -> Outcomes {
    let mut outcomes =
        Outcomes { acknowledged: Vec::new(), refused: Vec::new(), unknown: Vec::new() };
    for i in 0..count {
        let data = format!("n{i}");
        let response = publish(server, "t", None, data.as_bytes(), None).await;
        match response.status {
            200 => {
                let id = response.json()["id"].as_str().unwrap().to_owned();
                outcomes.acknowledged.push((id, data));
            }
            503 => {
                let error = response.json()["error"].as_str().unwrap_or_default().to_owned();
                match error.as_str() {
                    "unavailable" => {}
                    "outcome_unknown" => outcomes.unknown.push(data.clone()),
                    other => panic!("unexpected refusal {other}: {}", response.text()),
                }
                assert_eq!(response.header("retry-after").as_deref(), Some("1"));
                outcomes.refused.push(data);
            }
            other => panic!("unexpected status {other}: {}", response.text()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outcomes
}

/// Checks a subscriber's events up to the `end` marker: consecutive ids (no gap, no
/// duplicate), every acknowledged event among them, and nothing else but events whose publish
/// was answered 503 `outcome_unknown` while Redis died (taken by Redis, answer lost): never one
/// answered `unavailable`.
fn check_delivery(delivered: &[(String, String)], outcomes: &Outcomes) {
    let seqs: Vec<u64> =
        delivered.iter().map(|(id, _)| id.rsplit('-').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive ids: {seqs:?}");
    let mut acknowledged = outcomes.acknowledged.iter().peekable();
    for event in delivered {
        if acknowledged.peek() == Some(&event) {
            acknowledged.next();
        } else {
            assert!(outcomes.unknown.contains(&event.1), "{event:?} was refused as unpublished");
        }
    }
    assert_eq!(acknowledged.next(), None, "an acknowledged event was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_persistent().await;
    let (a, b) = (node(&redis, &[]).await, node(&redis, &[]).await);
    let mut sse_b = SseClient::connect(b.addr, "/sse?topic=t", &[]).await;
    let mut ws_a = ws::connect(a.addr, "/ws?topic=t").await;
    let publisher = tokio::spawn(publish_through_outage(a.addr, 300));

    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill().await;
    wait_until("both nodes to report the link down", || async {
        !ready(&a).await && !ready(&b).await
    })
    .await;
    let down = publish(a.addr, "t", None, b"while down", None).await;
    assert_eq!(down.status, 503);
    // The detail names what failed, not the pool's or the client library's internals.
    // (A connection Redis dropped may take the publish first: outcome unknown.)
    let refused = down.json();
    let said = (refused["error"].as_str().unwrap(), refused["detail"].as_str().unwrap());
    assert!(
        [
            ("unavailable", "Redis is unreachable"),
            ("unavailable", "the Redis link is down; the node is reconnecting"),
            ("outcome_unknown", "Redis may or may not have published the event"),
        ]
        .contains(&said),
        "{said:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    let outcomes = publisher.await.unwrap();
    assert!(!outcomes.refused.is_empty(), "some publishes fell in the outage");
    assert!(outcomes.acknowledged.len() > 100, "most got through: {}", outcomes.acknowledged.len());
    let end = a.publish("t", "end").await;
    let mut sse_events = Vec::new();
    loop {
        let event = sse_b.next_event().await;
        assert_eq!(event.kind, "message", "no gap notice: {}", event.data);
        if event.last_event_id == end {
            break;
        }
        sse_events.push((event.last_event_id, event.data));
    }
    check_delivery(&sse_events, &outcomes);
    let ws_delivered = ws_events(&mut ws_a, sse_events.len() + 1).await;
    assert_eq!(ws_delivered[..sse_events.len()], sse_events[..]);
    assert_eq!(ws_delivered[sse_events.len()].0, end);
    let metrics = b.metrics().await;
    assert!(metric(&metrics, "crier_relay_errors_total{kind=\"link\"}") >= Some(1.0));
    assert_eq!(metric(&metrics, "crier_relay_gaps_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_subscribers_a_gap_notice() {
    let mut redis = RedisServer::start().await;
    let (a, b) = (node(&redis, &[]).await, node(&redis, &[]).await);
    let mut sse_b = SseClient::connect(b.addr, "/sse?topic=t", &[]).await;
    let mut ws_a = ws::connect(a.addr, "/ws?topic=t").await;
    let mut raw_b = ws::connect(b.addr, "/ws?topic=t&format=raw").await;
    for i in 0..5 {
        a.publish("t", &format!("old {i}")).await;
    }
    for i in 0..5 {
        assert_eq!(ws::next(&mut raw_b).await, Message::text(format!("old {i}")));
    }
    let old = sse_b.events(5).await;
    let old_last = old.last().unwrap().last_event_id.clone();
    assert_eq!(ws_events(&mut ws_a, 5).await, ids_and_data(&old));

    redis.restart().await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    // Both streams get one crier.gap notice naming what they had, then the new epoch.
    let notice = sse_b.next_event().await;
    assert_eq!(notice.kind, "crier.gap");
    let gap: Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(gap["gaps"][0]["topic"], "t");
    assert_eq!(gap["gaps"][0]["reason"], "epoch");
    assert_eq!(gap["gaps"][0]["last_event_id"], old_last.as_str());
    assert_eq!(gap["gaps"][0]["resumed_after"], notice.last_event_id.as_str());
    let frame = ws::next_json(&mut ws_a).await;
    assert_eq!(
        (frame["event"].as_str(), frame["id"].as_str()),
        (Some("crier.gap"), Some(notice.last_event_id.as_str()))
    );
    // A raw stream, which has no frame for the notice, is closed with it as the reason.
    match ws::next(&mut raw_b).await {
        Message::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 4010);
            let reason: Value = serde_json::from_str(&close.reason).unwrap();
            assert_eq!(reason["reason"], "epoch");
            assert_eq!(reason["resumed_after"], notice.last_event_id.as_str());
        }
        other => panic!("expected a close, got {other:?}"),
    }

    let new = a.publish("t", "new").await;
    assert_ne!(new.split('-').next(), old_last.split('-').next(), "a new epoch");
    assert_eq!(sse_b.next_event().await.last_event_id, new);
    assert_eq!(ws_events(&mut ws_a, 1).await, [(new, "new".to_owned())]);
    // A client resuming from before the loss, on either node, is told too.
    let mut late =
        SseClient::connect(a.addr, "/sse?topic=t", &[("Last-Event-ID", &old_last)]).await;
    assert_eq!(late.next_event().await.kind, "crier.gap");
    assert_eq!(late.next_event().await.data, "new");
    assert!(metric(&b.metrics().await, "crier_relay_gaps_total") >= Some(1.0));
}

/// Makes Redis forget a topic's events after `keep`, as a replica promoted before it got them
/// would, or a snapshot taken then; `then` (sequence number, data) are stored after them as if
/// published there since, and only the first of those is sent on Pub/Sub (the node has not
/// seen the others yet). All in one atomic step, while every node's link stays up.
async fn forget_events(redis: &RedisServer, topic: &str, keep: u64, then: &[(u64, &str)]) {
    let mut conn = redis.connection().await;
    let epoch: String = redis::cmd("HGET")
        .arg(format!("crier:{{{topic}}}:meta"))
        .arg("epoch")
        .query_async(&mut conn)
        .await
        .unwrap();
    let script = redis::Script::new(
        r#"
        local kept = redis.call('XRANGE', KEYS[2], '-', ARGV[1] .. '-0')
        redis.call('DEL', KEYS[2])
        for _, entry in ipairs(kept) do
          redis.call('XADD', KEYS[2], entry[1], 'e', entry[2][2])
        end
        local seq = ARGV[1]
        for i = 2, #ARGV, 2 do
          seq = ARGV[i]
          redis.call('XADD', KEYS[2], seq .. '-0', 'e', ARGV[i + 1])
        end
        redis.call('HSET', KEYS[1], 'seq', seq)
        if #ARGV > 1 then
          redis.call('PUBLISH', KEYS[3], ARGV[3])
        end
        "#,
    );
    let mut call = script.prepare_invoke();
    call.key(format!("crier:{{{topic}}}:meta"))
        .key(format!("crier:{{{topic}}}:log"))
        .key(format!("crier:{{{topic}}}:ev"))
        .arg(keep);
    for (seq, data) in then {
        call.arg(seq).arg(format!("crier1 {epoch}-{seq} t {topic}\n{data}"));
    }
    let () = call.invoke_async(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_forgetting_delivered_events_gives_a_gap_not_a_silent_swap() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis, &[]).await, node(&redis, &[]).await);
    for topic in ["reused", "overtaken"] {
        let mut on_a = SseClient::connect(a.addr, &format!("/sse?topic={topic}"), &[]).await;
        let mut on_b = SseClient::connect(b.addr, &format!("/sse?topic={topic}"), &[]).await;
        let mut ids = Vec::new();
        for n in 1..=5 {
            ids.push(a.publish(topic, &format!("old {n}")).await);
        }
        for client in [&mut on_a, &mut on_b] {
            assert_eq!(client.events(5).await.len(), 5);
        }
        if topic == "reused" {
            // Redis lost events 4 and 5; the next publish is given id 4 again.
            forget_events(&redis, topic, 3, &[]).await;
            assert_eq!(a.publish(topic, "new 4").await, ids[3], "Redis issued the id again");
        } else {
            // Redis lost 4 and 5 and has already issued 4, 5 and 6 again by the time a node
            // catches up: it is not behind the node, but its event 5 is not the node's.
            forget_events(&redis, topic, 3, &[(4, "new 4"), (5, "new 5"), (6, "new 6")]).await;
        }
        for client in [&mut on_a, &mut on_b] {
            let notice = client.next_event().await;
            assert_eq!(notice.kind, "crier.gap", "{topic}: {notice:?}");
            let gap: Value = serde_json::from_str(&notice.data).unwrap();
            assert_eq!(gap["gaps"][0]["reason"], "epoch", "{topic}: {gap}");
            assert_eq!(gap["gaps"][0]["last_event_id"], ids[4].as_str(), "{topic}: {gap}");
        }
        let after = b.publish(topic, "after").await;
        assert_ne!(after.split('-').next(), ids[0].split('-').next(), "a new epoch");
        for client in [&mut on_a, &mut on_b] {
            let event = client.next_event().await;
            assert_eq!((event.last_event_id, event.data), (after.clone(), "after".to_owned()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_jump_is_filled_from_the_stream_or_reported_as_a_gap() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &["--history", "64"]).await;
    let mut sse = SseClient::connect(a.addr, "/sse?topic=t", &[]).await;
    let first = a.publish("t", "first").await;
    assert_eq!(sse.next_event().await.last_event_id, first);
    let epoch = first.split('-').next().unwrap().to_owned();
    let mut conn = redis.connection().await;

    // Events that reached Redis but not this node over Pub/Sub (written behind crier's back
    // here) are read from the stream when the next one arrives.
    for seq in 2..=4 {
        let envelope = format!("crier1 {epoch}-{seq} t t\nbehind {seq}");
        let _: () = redis::cmd("XADD")
            .arg("crier:{t}:log")
            .arg(format!("{seq}-0"))
            .arg("e")
            .arg(&envelope)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg("crier:{t}:meta")
            .arg("seq")
            .arg(seq)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let fifth = a.publish("t", "fifth").await;
    let events = sse.events(4).await;
    assert_eq!(
        events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["behind 2", "behind 3", "behind 4", "fifth"]
    );
    assert_eq!(events[3].last_event_id, fifth);
    assert!(metric(&a.metrics().await, "crier_relay_backfilled_total") >= Some(3.0));

    // Events the stream no longer has: a notice saying how many were lost.
    let _: () = redis::cmd("HSET")
        .arg("crier:{t}:meta")
        .arg("seq")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL").arg("crier:{t}:log").query_async(&mut conn).await.unwrap();
    let after = a.publish("t", "after the hole").await;
    assert_eq!(after, format!("{epoch}-101"));
    let notice = sse.next_event().await;
    assert_eq!(notice.kind, "crier.gap");
    let gap: Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(gap["gaps"][0]["reason"], "expired");
    assert_eq!(gap["gaps"][0]["missed"], 95, "{gap}");
    assert_eq!(notice.last_event_id, format!("{epoch}-100"));
    let event = sse.next_event().await;
    assert_eq!((event.last_event_id, event.data), (after, "after the hole".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_is_counted_and_skipped() {
    let redis = RedisServer::start().await;
    let a = node(&redis, &[]).await;
    let mut sse = SseClient::connect(a.addr, "/sse?topic=t", &[]).await;
    let mut conn = redis.connection().await;
    for garbage in ["crier9 x", "crier1 not-an-id t t\nx", "no newline at all"] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("crier:{t}:ev")
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let id = a.publish("t", "fine").await;
    assert_eq!(sse.next_event().await.last_event_id, id);
    let metrics = a.metrics().await;
    assert_eq!(metric(&metrics, "crier_relay_errors_total{kind=\"envelope\"}"), Some(3.0));
    assert!(ready(&a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_cluster_node_refuses_work_instead_of_losing_it() {
    let url = support::redis::unreachable_url();
    let a = TestServer::start(&["--redis-url", &url]).await;
    let ready = request(a.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["error"], "unavailable");
    let published = publish(a.addr, "t", None, b"x", None).await;
    assert_eq!(published.status, 503);
    assert_eq!(published.header("retry-after").as_deref(), Some("1"));
    let sse = request(a.addr, "GET", "/sse?topic=t", &[], b"").await;
    assert_eq!((sse.status, sse.json()["error"].as_str()), (503, Some("unavailable")));
    let mut ws = ws::connect(a.addr, "/ws").await;
    let reply =
        ws::command(&mut ws, json!({"op": "publish", "topic": "t", "data": "x", "ref": 7})).await;
    assert_eq!(
        (reply["op"].as_str(), reply["error"].as_str(), reply["ref"].as_i64()),
        (Some("error"), Some("unavailable"), Some(7))
    );
    let reply = ws::command(&mut ws, json!({"op": "subscribe", "topic": "t"})).await;
    assert_eq!(reply["error"], "unavailable");
    let reply = ws::command(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(reply["op"], "ok", "the connection is still served");
    assert_eq!(metric(&a.metrics().await, "crier_relay_connected"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_commands_publish_and_subscribe_through_redis_in_order() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis, &[]).await, node(&redis, &[]).await);
    let mut sse_b = SseClient::connect(b.addr, "/sse?topic=w", &[]).await;
    let mut ws_a = ws::connect(a.addr, "/ws").await;
    // Several commands in one burst: replies come back in order, each after Redis answered.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let burst = [
        json!({"op": "publish", "topic": "w", "data": "one", "ref": 1}),
        json!({"op": "subscribe", "topic": "w2", "ref": 2}),
        json!({"op": "publish", "topic": "w", "data": "two", "ref": 3}),
        json!({"op": "ping", "ref": 4}),
    ];
    for command in &burst {
        ws_a.feed(Message::text(command.to_string())).await.unwrap();
    }
    ws_a.flush().await.unwrap();
    let replies: Vec<Value> = [
        ws::next_json(&mut ws_a).await,
        ws::next_json(&mut ws_a).await,
        ws::next_json(&mut ws_a).await,
        ws::next_json(&mut ws_a).await,
    ]
    .into();
    assert_eq!(
        replies.iter().map(|r| r["ref"].as_i64().unwrap()).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(replies.iter().all(|r| r["op"] == "ok"), "{replies:?}");
    let events = sse_b.events(2).await;
    assert_eq!(events[0].last_event_id, replies[0]["id"].as_str().unwrap());
    assert_eq!(events[1].last_event_id, replies[2]["id"].as_str().unwrap());
    let id = b.publish("w2", "to the new topic").await;
    assert_eq!(ws_events(&mut ws_a, 1).await, [(id, "to the new topic".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_of_three_masters_joins_the_nodes() {
    let redis = support::redis::RedisCluster::start().await;
    // B knows a single master: the others are found from it.
    let (a, b) = (cluster_node(&redis.urls()).await, cluster_node(&redis.masters[1].url()).await);
    let topics: Vec<String> = (0..6).map(|i| format!("topic-{i}")).collect();
    let mut ws_b = ws::connect(
        b.addr,
        &format!(
            "/ws?{}",
            topics.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&")
        ),
    )
    .await;
    let mut sse_a = Vec::new();
    for topic in &topics {
        sse_a.push(SseClient::connect(a.addr, &format!("/sse?topic={topic}"), &[]).await);
    }
    let mut published: Vec<Vec<(String, String)>> = vec![Vec::new(); topics.len()];
    for round in 0..10 {
        for (i, topic) in topics.iter().enumerate() {
            let data = format!("{topic} {round}");
            published[i].push((a.publish(topic, &data).await, data));
        }
    }
    for (i, client) in sse_a.iter_mut().enumerate() {
        assert_eq!(ids_and_data(&client.events(10).await), published[i]);
    }
    let mut on_b: Vec<Vec<(String, String)>> = vec![Vec::new(); topics.len()];
    for _ in 0..topics.len() * 10 {
        let frame = ws::next_json(&mut ws_b).await;
        let i = topics.iter().position(|t| frame["topic"] == t.as_str()).unwrap();
        on_b[i].push((
            frame["id"].as_str().unwrap().to_owned(),
            frame["data"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(on_b, published);
    // The topics' keys are spread over the shards, and each topic's keys sit in one slot.
    let mut holding = 0;
    for master in &redis.masters {
        let mut conn = master.connection().await;
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(keys % 2, 0, "a topic's meta and log live together");
        holding += usize::from(keys > 0);
    }
    assert!(holding >= 2, "6 topics over 3 masters use more than one");
    // Resume on the other node.
    let last = &published[3][4].0;
    let mut resumed =
        SseClient::connect(b.addr, "/sse?topic=topic-3", &[("Last-Event-ID", last)]).await;
    assert_eq!(ids_and_data(&resumed.events(5).await), published[3][5..]);
}

/// A ready node of a Redis Cluster whose masters (some of them) are `urls`.
async fn cluster_node(urls: &str) -> TestServer {
    let server = TestServer::start(&["--redis-cluster", "--redis-url", urls]).await;
    wait_ready(&server).await;
    server
}

/// Publishes a probe to `topic-0`, `topic-1`… until one topic lives on `master` and one on
/// another master; returns them (whose slot a topic gets is Redis's choice).
async fn topics_on_and_off(node: &TestServer, master: &RedisServer) -> (String, String) {
    let mut conn = master.connection().await;
    let (mut on, mut off) = (None, None);
    for i in 0..200 {
        let topic = format!("topic-{i}");
        node.publish(&topic, "probe").await;
        let here: Vec<String> =
            redis::cmd("KEYS").arg("crier:*:meta").query_async(&mut conn).await.unwrap();
        if here.contains(&format!("crier:{{{topic}}}:meta")) {
            on.get_or_insert(topic);
        } else {
            off.get_or_insert(topic);
        }
        if let (Some(on), Some(off)) = (&on, &off) {
            return (on.clone(), off.clone());
        }
    }
    panic!("200 topics and not one on each side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cluster_master_refuses_only_its_topics_and_the_rest_stay_live() {
    let mut redis = support::redis::RedisCluster::start().await;
    // The node's Pub/Sub link goes to the first master, the one that is lost.
    let node = cluster_node(&redis.urls()).await;
    let (lost, kept) = topics_on_and_off(&node, &redis.masters[0]).await;
    let mut on_lost = SseClient::connect(node.addr, &format!("/sse?topic={lost}"), &[]).await;
    let mut on_kept = SseClient::connect(node.addr, &format!("/sse?topic={kept}"), &[]).await;

    redis.masters[0].kill().await;
    // Once the cluster has declared it failed (the other masters keep their slots):
    let (failed, observer) = (&redis.masters[0], &redis.masters[1]);
    wait_until("the cluster to declare the master failed", || async {
        support::redis::sees_failed(observer, failed).await
    })
    .await;
    // The link moves to another master and comes back up; the lost master's topics are stale.
    wait_until("the link to come back without the lost master", || async {
        let metrics = node.metrics().await;
        metric(&metrics, "crier_relay_connected") == Some(1.0)
            && metric(&metrics, "crier_relay_stale_topics") >= Some(1.0)
    })
    .await;
    assert_eq!(request(node.addr, "GET", "/readyz", &[], b"").await.status, 200);
    // Publishes to its topics are refused in bounded time (the cluster client would otherwise
    // retry for minutes); the other masters' topics still take events and deliver them live.
    let asked = std::time::Instant::now();
    let refused = publish(node.addr, &lost, None, b"during", None).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    assert!(asked.elapsed() < Duration::from_secs(5), "refused after {:?}", asked.elapsed());
    for n in 0..5 {
        let data = format!("during {n}");
        let id = node.publish(&kept, &data).await;
        assert_eq!(ids_and_data(&on_kept.events(1).await), [(id, data)]);
    }

    // The master comes back empty: its topics' subscribers get a gap notice, then new events.
    redis.masters[0].restart().await;
    wait_until("the stale topics to be caught up", || async {
        metric(&node.metrics().await, "crier_relay_stale_topics") == Some(0.0)
    })
    .await;
    let notice = on_lost.next_event().await;
    assert_eq!(notice.kind, "crier.gap", "{notice:?}");
    let after = node.publish(&lost, "after").await;
    let event = on_lost.next_event().await;
    assert_eq!((event.last_event_id, event.data), (after, "after".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_a_lost_master_continues_its_topics() {
    let mut redis = support::redis::RedisCluster::start_with_replicas().await;
    let node = cluster_node(&redis.urls()).await;
    let (topic, _) = topics_on_and_off(&node, &redis.masters[0]).await;
    let mut client = SseClient::connect(node.addr, &format!("/sse?topic={topic}"), &[]).await;
    let mut published = Vec::new();
    for n in 0..5 {
        let data = format!("before {n}");
        published.push((node.publish(&topic, &data).await, data));
    }
    assert_eq!(ids_and_data(&client.events(5).await), published);
    // The replica has everything before its master goes (replication is asynchronous).
    let replica = &redis.replicas[0];
    wait_until("the replica to catch up", || async {
        let mut conn = replica.connection().await;
        let _: () = redis::cmd("READONLY").query_async(&mut conn).await.unwrap();
        let len: u64 = redis::cmd("XLEN")
            .arg(format!("crier:{{{topic}}}:log"))
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        len == 6
    })
    .await;

    redis.masters[0].kill().await;
    // Publishes are refused until the replica has taken over, then go on in the same epoch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let response = publish(node.addr, &topic, None, b"after", None).await;
        if response.status == 200 {
            break response.json()["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(response.status, 503, "{}", response.text());
        assert!(tokio::time::Instant::now() < deadline, "no failover in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (epoch, last) = published[4].0.rsplit_once('-').unwrap();
    let seq: u64 = last.parse().unwrap();
    assert_eq!(after, format!("{epoch}-{}", seq + 1), "the ids go on");
    let event = client.next_event().await;
    assert_eq!((event.last_event_id, event.data), (after, "after".to_owned()), "no gap");
    wait_ready(&node).await;
    assert_eq!(metric(&node.metrics().await, "crier_relay_gaps_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_topics_keys_expire_and_it_comes_back_with_a_new_epoch() {
    let redis = RedisServer::start().await;
    let (a, b) = (
        node(&redis, &["--topic-idle-ttl", "1s"]).await,
        node(&redis, &["--topic-idle-ttl", "1s"]).await,
    );
    let mut conn = redis.connection().await;
    let old = a.publish("quiet", "before").await;
    let ttl: i64 =
        redis::cmd("PTTL").arg("crier:{quiet}:meta").query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "the keys expire after the idle time: PTTL {ttl}");
    let log_ttl: i64 =
        redis::cmd("PTTL").arg("crier:{quiet}:log").query_async(&mut conn).await.unwrap();
    assert!(log_ttl > 0 && log_ttl <= 1000, "PTTL {log_ttl}");
    // Each publish sets the time again.
    a.publish("quiet", "again").await;
    wait_until("the keys to expire", || {
        let mut conn = conn.clone();
        async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg("crier:{quiet}:meta")
                .arg("crier:{quiet}:log")
                .query_async(&mut conn)
                .await
                .unwrap();
            exists == 0
        }
    })
    .await;
    // Neither node has a reader for it, so neither holds (or hears) it.
    for node in [&a, &b] {
        let metrics = node.metrics().await;
        assert_eq!(metric(&metrics, "crier_topics"), Some(0.0));
        assert_eq!(metric(&metrics, "crier_relay_topics_heard"), Some(0.0));
    }
    // Back with a new epoch, on every node; a stale id gets a gap.
    let new = b.publish("quiet", "after").await;
    assert_ne!(old.split_once('-').unwrap().0, new.split_once('-').unwrap().0);
    let mut stream =
        SseClient::connect(a.addr, "/sse?topic=quiet", &[("Last-Event-ID", &old)]).await;
    let gap = stream.next_event().await;
    assert_eq!(gap.kind, "crier.gap");
    assert!(gap.data.contains(r#""reason":"epoch""#), "{}", gap.data);
    assert_eq!(stream.next_event().await.data, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_topics_keys_live_while_it_is_quiet() {
    let redis = RedisServer::start().await;
    let node = node(&redis, &["--topic-idle-ttl", "1s"]).await;
    let mut stream = SseClient::connect(node.addr, "/sse?topic=held", &[]).await;
    node.wait_subscriptions(1).await;
    let first = node.publish("held", "one").await;
    assert_eq!(stream.next_event().await.data, "one");
    // Quiet for more than the keys' time-to-live; the node sets it again while it has a
    // subscriber, so the topic goes on in its epoch and the subscriber sees no gap.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut conn = redis.connection().await;
    let ttl: i64 =
        redis::cmd("PTTL").arg("crier:{held}:meta").query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "the keys are still there: PTTL {ttl}");
    let second = node.publish("held", "two").await;
    assert_eq!(first.split_once('-').unwrap().0, second.split_once('-').unwrap().0, "same epoch");
    let event = stream.next_event().await;
    assert_eq!((event.kind.as_str(), event.data.as_str()), ("message", "two"));
    assert_eq!(event.last_event_id, second);
}

//! Resume over real sockets: by `Last-Event-ID` header and by `last_event_id` query, on single-
//! and multi-topic streams, with no duplicate and no gap, and the `crier.gap` notice when the
//! position is no longer retained, from another epoch, or unknown.

mod support;

use support::{SseClient, TestServer, publish_ok, request, urlencode, whatwg};

fn datas(events: &[whatwg::Event]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_header_and_by_query_replays_exactly_what_was_missed() {
    let server = TestServer::start(&[]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(server.publish("t", &format!("e{i}")).await);
    }
    let mut by_header =
        SseClient::connect(server.addr, "/sse?topic=t", &[("Last-Event-ID", &ids[3])]).await;
    let mut by_query = SseClient::connect(
        server.addr,
        &format!("/sse?topic=t&last_event_id={}", urlencode(&ids[3])),
        &[],
    )
    .await;
    for client in [&mut by_header, &mut by_query] {
        let replay = client.events(6).await;
        assert_eq!(datas(&replay), ["e4", "e5", "e6", "e7", "e8", "e9"]);
        assert_eq!(
            replay.iter().map(|e| e.last_event_id.clone()).collect::<Vec<_>>(),
            ids[4..].to_vec()
        );
    }
    let live = server.publish("t", "live").await;
    for client in [&mut by_header, &mut by_query] {
        let event = client.next_event().await;
        assert_eq!((event.data.as_str(), event.last_event_id.as_str()), ("live", live.as_str()));
        assert!(!String::from_utf8_lossy(&client.body).contains("crier.gap"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_wins_over_the_query() {
    // A reconnecting EventSource keeps its original URL but sends the newer id as a header.
    let server = TestServer::start(&[]).await;
    let ids: Vec<_> = futures_join(&server, 5).await;
    let target = format!("/sse?topic=t&last_event_id={}", urlencode(&ids[0]));
    let mut c = SseClient::connect(server.addr, &target, &[("Last-Event-ID", &ids[3])]).await;
    assert_eq!(datas(&c.events(1).await), ["e4"]);
}

async fn futures_join(server: &TestServer, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(server.publish("t", &format!("e{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_topic_cursor_resumes_every_topic_exactly() {
    let server = TestServer::start(&[]).await;
    let mut c = SseClient::connect(server.addr, "/sse?topic=a&topic=b", &[]).await;
    server.publish("a", "a1").await;
    server.publish("b", "b1").await;
    let seen = c.events(2).await;
    let cursor = seen[1].last_event_id.clone();
    drop(c);
    // Missed while disconnected, interleaved across topics.
    server.publish("b", "b2").await;
    server.publish("a", "a2").await;
    server.publish("b", "b3").await;
    let mut c =
        SseClient::connect(server.addr, "/sse?topic=a&topic=b", &[("Last-Event-ID", &cursor)])
            .await;
    let replay = c.events(3).await;
    let mut got = datas(&replay);
    got.sort_unstable();
    assert_eq!(got, ["a2", "b2", "b3"], "each missed event exactly once");
    // Per topic, order holds.
    let b_order: Vec<_> =
        replay.iter().filter(|e| e.data.starts_with('b')).map(|e| e.data.clone()).collect();
    assert_eq!(b_order, ["b2", "b3"]);
    server.publish("a", "a3").await;
    assert_eq!(c.next_event().await.data, "a3");
    // Resuming from the last cursor replays nothing.
    let last = c.body.clone();
    let last_cursor = whatwg::parse(&last).last().unwrap().last_event_id.clone();
    let mut again = SseClient::connect(
        server.addr,
        &format!("/sse?topic=b&topic=a&last_event_id={}", urlencode(&last_cursor)),
        &[],
    )
    .await;
    server.publish("b", "b4").await;
    assert_eq!(again.next_event().await.data, "b4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_while_events_flow_loses_and_repeats_nothing() {
    for topics in [&["t"][..], &["t", "u"]] {
        let server = TestServer::start(&[]).await;
        let addr = server.addr;
        let total = 600;
        let query: String =
            topics.iter().map(|t| format!("topic={t}")).collect::<Vec<_>>().join("&");
        // Subscribed before the first publish, so every event must arrive exactly once.
        let mut client = Some(SseClient::connect(addr, &format!("/sse?{query}"), &[]).await);
        let publisher = {
            let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
            tokio::spawn(async move {
                for i in 0..total {
                    let topic = &topics[i % topics.len()];
                    publish_ok(addr, topic, None, format!("{topic}:{i}").as_bytes(), None).await;
                }
            })
        };
        let mut received: Vec<String> = Vec::new();
        let mut last_id: Option<String> = None;
        let mut reconnects = 0;
        while received.len() < total {
            let mut c = match client.take() {
                Some(c) => c,
                None => {
                    let id = last_id.as_deref().expect("an event before the first reconnect");
                    SseClient::connect(addr, &format!("/sse?{query}"), &[("Last-Event-ID", id)])
                        .await
                }
            };
            // Read a few events, then drop the connection mid-stream.
            let want = (received.len() + 37).min(total);
            while received.len() < want {
                let event = c.next_event().await;
                assert_ne!(event.kind, "crier.gap", "history covers the whole run");
                received.push(event.data);
                last_id = Some(event.last_event_id);
            }
            reconnects += 1;
        }
        publisher.await.unwrap();
        assert!(reconnects > 10);
        for topic in topics {
            let got: Vec<usize> = received
                .iter()
                .filter_map(|d| d.strip_prefix(&format!("{topic}:")))
                .map(|n| n.parse().unwrap())
                .collect();
            let expected: Vec<usize> =
                (0..total).filter(|i| topics[i % topics.len()] == *topic).collect();
            assert_eq!(got, expected, "topic {topic}: duplicate or gap");
        }
    }
}

async fn gap_notice(client: &mut SseClient) -> (whatwg::Event, serde_json::Value) {
    let event = client.next_event().await;
    assert_eq!(event.kind, "crier.gap", "first event must be the gap notice");
    let json: serde_json::Value = serde_json::from_str(&event.data).expect("gap data is JSON");
    (event, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_is_announced_with_crier_gap() {
    let server = TestServer::start(&["--history", "5"]).await;
    let ids = futures_join(&server, 12).await;
    let mut c =
        SseClient::connect(server.addr, "/sse?topic=t", &[("Last-Event-ID", &ids[2])]).await;
    let (gap, json) = gap_notice(&mut c).await;
    assert_eq!(
        json,
        serde_json::json!({"gaps": [{
            "topic": "t", "reason": "expired", "last_event_id": ids[2],
            "resumed_after": ids[6], "missed": 4
        }]})
    );
    // The gap's id is the position the replay starts after, so resuming from it is exact.
    assert_eq!(gap.last_event_id, ids[6]);
    assert_eq!(datas(&c.events(5).await), ["e7", "e8", "e9", "e10", "e11"]);
    let wire = String::from_utf8_lossy(&c.body).into_owned();
    assert!(
        wire.starts_with(&format!(
            "retry: 2000\n: crier\n\nid: {}\nevent: crier.gap\ndata: {{\"gaps\":",
            ids[6]
        )),
        "{wire}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_another_epoch_is_a_gap_never_a_silent_resume() {
    let old = TestServer::start(&[]).await;
    let old_ids = futures_join(&old, 3).await;
    // A restarted server: same topic, new epoch, its own events with small sequence numbers.
    let new = TestServer::start(&[]).await;
    let new_ids = futures_join(&new, 4).await;
    assert_ne!(old_ids[1].split('-').next(), new_ids[1].split('-').next());
    let mut c =
        SseClient::connect(new.addr, "/sse?topic=t", &[("Last-Event-ID", &old_ids[1])]).await;
    let (_, json) = gap_notice(&mut c).await;
    let gap = &json["gaps"][0];
    assert_eq!(gap["reason"], "epoch");
    assert_eq!(gap["last_event_id"], old_ids[1].as_str());
    assert_eq!(gap["missed"], serde_json::Value::Null);
    // Everything retained in the new epoch follows.
    assert_eq!(datas(&c.events(4).await), ["e0", "e1", "e2", "e3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_a_gap_and_the_stream_goes_live() {
    let server = TestServer::start(&[]).await;
    let ids = futures_join(&server, 2).await;
    let epoch = ids[0].split('-').next().unwrap();
    let future = format!("{epoch}-99");
    let mut c =
        SseClient::connect(server.addr, "/sse?topic=t", &[("Last-Event-ID", &future)]).await;
    let (gap, json) = gap_notice(&mut c).await;
    assert_eq!(json["gaps"][0]["reason"], "unknown");
    assert_eq!(gap.last_event_id, ids[1]);
    let live = server.publish("t", "live").await;
    let event = c.next_event().await;
    assert_eq!((event.data.as_str(), event.last_event_id.as_str()), ("live", live.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_topic_gap_names_only_the_topics_that_lost_events() {
    let server = TestServer::start(&["--history", "2"]).await;
    let mut c = SseClient::connect(server.addr, "/sse?topic=a&topic=b", &[]).await;
    server.publish("a", "a1").await;
    server.publish("b", "b1").await;
    let cursor = c.events(2).await[1].last_event_id.clone();
    drop(c);
    for i in 2..6 {
        server.publish("a", &format!("a{i}")).await;
    }
    server.publish("b", "b2").await;
    let mut c =
        SseClient::connect(server.addr, "/sse?topic=a&topic=b", &[("Last-Event-ID", &cursor)])
            .await;
    let (gap, json) = gap_notice(&mut c).await;
    assert_eq!(json["gaps"].as_array().unwrap().len(), 1);
    assert_eq!(json["gaps"][0]["topic"], "a");
    assert_eq!(json["gaps"][0]["missed"], 2);
    let mut got = datas(&c.events(3).await).into_iter().map(str::to_owned).collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, ["a4", "a5", "b2"]);
    // Resuming from the gap's cursor replays the same three, without a new gap.
    let mut again = SseClient::connect(
        server.addr,
        "/sse?topic=a&topic=b",
        &[("Last-Event-ID", &gap.last_event_id)],
    )
    .await;
    let mut replay =
        datas(&again.events(3).await).into_iter().map(str::to_owned).collect::<Vec<_>>();
    replay.sort();
    assert_eq!(replay, ["a4", "a5", "b2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_refused_with_400() {
    let server = TestServer::start(&[]).await;
    for (target, header) in [
        ("/sse?topic=t&last_event_id=nonsense", None),
        ("/sse?topic=t", Some("12")),
        ("/sse?topic=a&topic=b", Some("abc-1")),
        ("/sse?topic=a", Some("abc-1,abc-2")),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("Last-Event-ID", h)).into_iter().collect();
        let response = request(server.addr, "GET", target, &headers, b"").await;
        assert_eq!(response.status, 400, "{target} {header:?}");
        assert_eq!(response.json()["error"], "bad_last_event_id");
    }
}

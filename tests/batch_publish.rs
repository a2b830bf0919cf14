//! Batch publishes: `POST /publish` with NDJSON and the WebSocket `publish` command with an
//! array. Each event is checked on its own: a bad one is refused with its index and code, the
//! others are published, in order, and the answer lists each id or error.

mod support;

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::ws::{command, next_json};
use support::{SseClient, TestServer, metric, request, wait_until};

const NDJSON: (&str, &str) = ("Content-Type", "application/x-ndjson");

async fn post_batch(server: &TestServer, lines: &[String]) -> support::HttpResponse {
    request(server.addr, "POST", "/publish", &[NDJSON], lines.join("\n").as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_is_refused_alone_and_the_rest_are_published_in_order() {
    let server = TestServer::start(&["--max-event-bytes", "64"]).await;
    let mut reader = SseClient::connect(server.addr, "/sse?topic=a", &[]).await;
    let mut binary = support::RawWs::connect(server.addr, "/ws?topic=b&format=raw").await;
    server.wait_subscriptions(2).await;
    let lines = [
        json!({"topic": "a", "data": "one"}).to_string(),
        json!({"topic": "bad topic!", "data": "x"}).to_string(),
        "not json".to_owned(),
        json!({"topic": "a", "event": "named", "data": "two", "id": "key-1"}).to_string(),
        String::new(),
        json!({"topic": "a", "data": "x".repeat(65)}).to_string(),
        json!({"topic": "b", "data": "AAEC/w==", "encoding": "base64"}).to_string(),
        json!({"topic": "a", "data": "two again", "id": "key-1"}).to_string(),
        json!({"topic": "a", "data": "three", "unknown": 1}).to_string(),
        json!({"topic": "a", "data": "four"}).to_string(),
    ];
    let answer = post_batch(&server, &lines).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!((answer["published"].as_u64(), answer["refused"].as_u64()), (Some(5), Some(4)));
    let results = answer["results"].as_array().expect("results").clone();
    let codes: Vec<Value> = results.iter().map(|r| r["error"].clone()).collect();
    assert_eq!(
        codes,
        [
            Value::Null,
            json!("bad_topic"),
            json!("bad_body"),
            Value::Null,
            json!("too_large"),
            Value::Null,
            Value::Null,
            json!("bad_body"),
            Value::Null
        ],
        "one result per non-blank line, in order: {answer}"
    );
    for (index, result) in results.iter().enumerate() {
        if result["error"].is_string() {
            assert_eq!(result["index"], index, "{result}");
            assert!(result["detail"].as_str().is_some_and(|m| !m.is_empty()), "{result}");
        }
    }
    // The retry with the same key got the first id and published nothing.
    assert_eq!(results[6]["id"], results[3]["id"]);
    assert_eq!(results[6]["replayed"], true);

    let events = reader.events(3).await;
    let got: Vec<(&str, &str)> =
        events.iter().map(|e| (e.kind.as_str(), e.data.as_str())).collect();
    assert_eq!(got, [("message", "one"), ("named", "two"), ("message", "four")]);
    let ids: Vec<&str> = events.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(
        ids,
        [&results[0]["id"], &results[3]["id"], &results[8]["id"]].map(|v| v.as_str().unwrap())
    );
    let frame = binary.read().await.expect("the binary event");
    assert_eq!(frame.payload, [0, 1, 2, 255]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_held_to_the_batch_size_and_each_event_to_the_publish_rate() {
    let server =
        TestServer::start(&["--max-batch-bytes", "1KiB", "--publishes-per-sec", "3"]).await;
    let line = |i: usize| json!({"topic": "t", "data": format!("event {i}")}).to_string();
    let too_big: Vec<String> = (0..40).map(line).collect();
    let answer = post_batch(&server, &too_big).await;
    assert_eq!((answer.status, answer.json()["error"].as_str()), (413, Some("too_large")));
    assert_eq!(metric(&server.metrics().await, "crier_events_published_total"), Some(0.0));

    let answer = post_batch(&server, &(0..5).map(line).collect::<Vec<_>>()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    let codes: Vec<Option<&str>> =
        answer["results"].as_array().unwrap().iter().map(|r| r["error"].as_str()).collect();
    assert_eq!(codes, [None, None, None, Some("rate_limited"), Some("rate_limited")]);
    assert_eq!(metric(&server.metrics().await, "crier_events_published_total"), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_publish_takes_an_array_of_events() {
    let server = TestServer::start(&[]).await;
    let mut ws = support::ws::connect(server.addr, "/ws?topic=t").await;
    server.wait_subscriptions(1).await;
    let events = json!([
        {"topic": "t", "data": "first"},
        {"topic": "", "data": "no topic"},
        {"topic": "t", "event": "second", "data": "2"},
    ]);
    let reply = command(&mut ws, json!({"op": "publish", "events": events, "ref": 7})).await;
    assert_eq!((reply["op"].as_str(), reply["ref"].as_u64()), (Some("ok"), Some(7)), "{reply}");
    assert_eq!((reply["published"].as_u64(), reply["refused"].as_u64()), (Some(2), Some(1)));
    assert_eq!(reply["results"][1]["error"], "bad_topic", "{reply}");
    assert_eq!(reply["results"][1]["index"], 1);
    let first = next_json(&mut ws).await;
    let second = next_json(&mut ws).await;
    assert_eq!(
        (first["data"].as_str(), first["id"].clone()),
        (Some("first"), reply["results"][0]["id"].clone())
    );
    assert_eq!((second["event"].as_str(), second["data"].as_str()), (Some("second"), Some("2")));
    let bad = command(&mut ws, json!({"op": "publish", "events": "not a list"})).await;
    assert_eq!(bad["error"], "bad_command", "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_published_in_its_order() {
    let server = TestServer::start(&[]).await;
    let mut reader = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;
    let lines: Vec<String> =
        (0..500).map(|i| json!({"topic": "t", "data": i.to_string()}).to_string()).collect();
    let answer = post_batch(&server, &lines).await.json();
    let ids: Vec<&str> =
        answer["results"].as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
    let events = reader.events(500).await;
    let got: Vec<(&str, String)> =
        events.iter().map(|e| (e.last_event_id.as_str(), e.data.clone())).collect();
    let expected: Vec<(&str, String)> =
        ids.iter().enumerate().map(|(i, id)| (*id, i.to_string())).collect();
    assert_eq!(got, expected, "published in the batch's order, with the answer's ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_a_batch_reaches_every_node_in_order_with_redis_ids() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let node = |_| async {
        let server = TestServer::start(&["--redis-url", url.as_str()]).await;
        wait_until("the node to be ready", || async {
            request(server.addr, "GET", "/readyz", &[], b"").await.status == 200
        })
        .await;
        server
    };
    let (a, b) = (node(0).await, node(1).await);
    let mut reader = SseClient::connect(b.addr, "/sse?topic=t", &[]).await;
    b.wait_subscriptions(1).await;
    // More events than one pipeline of the publish script carries, a bad one among them.
    let mut lines: Vec<String> =
        (0..300).map(|i| json!({"topic": "t", "data": format!("event {i}")}).to_string()).collect();
    lines[150] = json!({"topic": "t", "data": "x", "encoding": "hex"}).to_string();
    lines.push(json!({"topic": "t", "data": "keyed", "id": "batch-key"}).to_string());
    let answer = post_batch(&a, &lines).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!((answer["published"].as_u64(), answer["refused"].as_u64()), (Some(300), Some(1)));
    let results = answer["results"].as_array().unwrap();
    assert_eq!(
        (results[150]["index"].as_u64(), results[150]["error"].as_str()),
        (Some(150), Some("bad_data"))
    );
    let ids: Vec<&str> = results.iter().filter_map(|r| r["id"].as_str()).collect();
    let events = reader.events(300).await;
    let got: Vec<&str> = events.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(got, ids, "node B got every event, in the batch's order, with Redis's ids");
    assert_eq!(events[150].data, "event 151");
    // The key is Redis's to remember: the same batch line on the other node publishes nothing.
    let again = post_batch(&b, &[lines[300].clone()]).await.json();
    assert_eq!(again["results"][0]["id"], results[300]["id"], "{again}");
    assert_eq!(again["results"][0]["replayed"], true, "{again}");
}

//! `format=json` on `/sse`: each event's data is the JSON envelope a WebSocket JSON frame carries
//! (`{"topic","id","event","data"}`), so a client of several topics reads each event's topic; the
//! `id:` (a cursor on several topics), `event:`, resume and crier's own notices are as without
//! it. On the wire, and in the clients that read it: npm's `eventsource` and Chromium's.

mod support;

use serde_json::{Value, json};
use support::browser::{Browser, serve_page};
use support::{SseClient, TestServer, publish_ok, request};

fn envelope(event: &support::whatwg::Event) -> Value {
    serde_json::from_str(&event.data).expect("the data is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_of_several_topics_names_its_topic_and_resumes_as_without_json() {
    let server = TestServer::start(&["--history", "3"]).await;
    let target = "/sse?topic=news&topic=prices/eu&format=json";
    let mut stream = SseClient::connect(server.addr, target, &[]).await;
    assert_eq!(stream.status, 200);
    let p1 = server.publish("news", "p1").await;
    let tick = publish_ok(server.addr, "prices/eu", Some("tick"), b"two\nlines", None).await;
    let binary =
        publish_ok(server.addr, "news", None, &[0, 255], Some("application/octet-stream")).await;
    let events = stream.events(3).await;
    assert_eq!(
        events.iter().map(envelope).collect::<Vec<_>>(),
        [
            json!({"topic": "news", "id": p1, "event": null, "data": "p1"}),
            json!({"topic": "prices/eu", "id": tick, "event": "tick", "data": "two\nlines"}),
            json!({"topic": "news", "id": binary, "event": null, "data": "AP8=", "encoding": "base64"}),
        ]
    );
    // The event name is the SSE event's too, and the id the cursor, as without json.
    assert_eq!(events[1].kind, "tick");
    assert!(events[2].last_event_id.contains(','), "a cursor: {}", events[2].last_event_id);

    // A resume from the cursor is exact, in json too.
    let after = server.publish("prices/eu", "after").await;
    let resume = [("Last-Event-ID", events[1].last_event_id.as_str())];
    let mut resumed = SseClient::connect(server.addr, target, &resume).await;
    let replayed: Vec<Value> = resumed.events(2).await.iter().map(envelope).collect();
    assert_eq!(
        (replayed[0]["id"].as_str(), replayed[1]["id"].as_str()),
        (Some(binary.as_str()), Some(after.as_str()))
    );

    // crier's own notices keep their data: a resume from an id no longer held.
    for n in 0..4 {
        server.publish("news", &format!("n{n}")).await;
    }
    let expired = format!("/sse?topic=news&format=json&last_event_id={p1}");
    let mut gapped = SseClient::connect(server.addr, &expired, &[]).await;
    let notice = gapped.next_event().await;
    assert_eq!(notice.kind, "crier.gap");
    let gap: Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(
        (gap["gaps"][0]["topic"].as_str(), gap["gaps"][0]["reason"].as_str()),
        (Some("news"), Some("expired")),
        "{gap}"
    );
    assert_eq!(envelope(&gapped.next_event().await)["topic"], "news");

    let refused = request(server.addr, "GET", "/sse?topic=news&format=xml", &[], b"").await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (400, Some("bad_format")));
}

/// Opens an `EventSource` on the stream of `?crier=`, and keeps each event's topic.
const PAGE: &str = r#"<!doctype html><script>
const crier = new URLSearchParams(location.search).get("crier");
window.topics = [];
const source = new EventSource(`http://${crier}/sse?topic=news&topic=prices/eu&format=json`);
source.onmessage = (e) => { topics.push(JSON.parse(e.data).topic); };
source.addEventListener("tick", (e) => { topics.push(JSON.parse(e.data).topic + " tick"); });
</script>"#;

/// Prints the topic of each of the first three events, one JSON line.
const NODE_SCRIPT: &str = r#"
import { EventSource } from "eventsource";
const source = new EventSource(process.argv[2]);
const topics = [];
const keep = (suffix) => (e) => {
  topics.push(JSON.parse(e.data).topic + suffix);
  if (topics.length === 3) { console.log(JSON.stringify(topics)); process.exit(0); }
};
source.onmessage = keep("");
source.addEventListener("tick", keep(" tick"));
setTimeout(() => { console.log(JSON.stringify(topics)); process.exit(1); }, 20000);
"#;

async fn publish_three(server: &TestServer) {
    server.publish("news", "a").await;
    publish_ok(server.addr, "prices/eu", Some("tick"), b"b", None).await;
    server.publish("prices/eu", "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_npm_eventsource_read_each_events_topic() {
    let page_addr = serve_page(PAGE.to_owned()).await;
    let origin = format!("http://{page_addr}");
    let server = TestServer::start(&["--cors-origins", &origin]).await;

    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{page_addr}/?crier={}", server.addr)).await;
    server.wait_subscriptions(2).await;
    publish_three(&server).await;
    let seen = browser.wait_for(&page, "topics.length === 3 ? topics : null").await;
    assert_each_events_topic(&seen);

    let url = format!("http://{}/sse?topic=news&topic=prices/eu&format=json", server.addr);
    let client = support::npm::NodeScript::start("eventsource@4.1.1", NODE_SCRIPT, &url);
    server.wait_subscriptions(4).await;
    publish_three(&server).await;
    assert_each_events_topic(&client.json_output().await);
}

/// The topics of the three events [`publish_three`] publishes, as a client read them: each
/// topic's events in order (the streams of two topics may interleave them either way).
fn assert_each_events_topic(seen: &serde_json::Value) {
    let seen: Vec<&str> =
        seen.as_array().expect("a list").iter().filter_map(|t| t.as_str()).collect();
    let prices: Vec<&str> = seen.iter().copied().filter(|t| *t != "news").collect();
    assert_eq!(prices, ["prices/eu tick", "prices/eu"], "{seen:?}");
    assert_eq!(seen.iter().filter(|t| **t == "news").count(), 1, "{seen:?}");
}

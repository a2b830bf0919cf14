//! The Mercure hub's history, on real sockets: subscription events kept apart from updates
//! (a crowd coming and going never pushes an update out), `--mercure-history`, a stream of
//! both logs that resumes from either without a miss, and the node's budget of compiled
//! templates.

mod support;

use serde_json::Value;
use support::mercure::{bearer, hub, publish, subscribe, subscriber};
use support::{metric, wait_until};

/// Flags that let one test address open streams as fast as it likes.
const UNTHROTTLED: [&str; 4] = ["--new-streams-per-sec", "1000000", "--resumes-per-sec", "1000000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_events_never_push_an_update_out_of_the_history() {
    let mut args = vec!["--mercure-anonymous", "--mercure-subscriptions"];
    args.extend(UNTHROTTLED);
    let server = hub(&args).await;
    let kept =
        publish(server.addr, &[("topic", "https://example.com/kept"), ("data", "kept")]).await;
    // 1,500 subscribers come and go: 3,000 subscription events, three times what `--history`
    // (1,000) keeps of them.
    const CYCLES: usize = 1500;
    for _ in 0..CYCLES / 100 {
        let batch = (0..100).map(|n| {
            let topic = format!("https://example.com/visitor/{n}");
            async move { subscribe(server.addr, &[&topic], &[]).await }
        });
        let streams = futures_util::future::join_all(batch).await;
        assert!(streams.iter().all(|s| s.status == 200));
    }
    // Every arrival and departure is announced (the update, then 2 per cycle).
    wait_until("every departure announced", || async {
        metric(&server.metrics().await, "crier_events_published_total")
            == Some((1 + 2 * CYCLES) as f64)
    })
    .await;
    // The update is still replayed from `earliest`, first.
    let mut replay =
        subscribe(server.addr, &["https://example.com/{x}"], &[("Last-Event-ID", "earliest")])
            .await;
    let first = replay.next_event().await;
    assert_eq!((first.last_event_id.as_str(), first.data.as_str()), (kept.as_str(), "kept"));
    // The subscription events keep their own bound: the last 1,000 of them.
    let watcher = bearer(&subscriber(&["*"]));
    let api = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";
    let mut events = subscribe(
        server.addr,
        &[api],
        &[("Last-Event-ID", "earliest"), ("Authorization", &watcher)],
    )
    .await;
    let held: Vec<Value> = events
        .events(1000)
        .await
        .iter()
        .map(|event| serde_json::from_str(&event.data).expect("JSON-LD"))
        .collect();
    let said = |n: usize| (held[n]["active"].as_bool(), held[n]["topic"].as_str());
    assert!(held.iter().all(|event| event["type"] == "Subscription"));
    // The last departure, then the two readers' own arrivals, published before they read.
    assert_eq!(said(997).0, Some(false), "{}", held[997]);
    assert_eq!(said(998), (Some(true), Some("https://example.com/{x}")));
    assert_eq!(said(999), (Some(true), Some(api)));
    // And nothing more was held: the next event is the next arrival.
    let _late = subscribe(server.addr, &["https://example.com/late"], &[]).await;
    let next: Value = serde_json::from_str(&events.next_event().await.data).expect("JSON-LD");
    assert_eq!(next["topic"], "https://example.com/late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mercure_history_bounds_the_updates_a_resume_replays() {
    let server = hub(&["--mercure-anonymous", "--mercure-history", "100"]).await;
    for n in 0..130 {
        publish(server.addr, &[("topic", "https://example.com/t"), ("data", &n.to_string())]).await;
    }
    let mut replay = subscribe(server.addr, &["*"], &[("Last-Event-ID", "earliest")]).await;
    let held: Vec<String> = replay.events(100).await.into_iter().map(|e| e.data).collect();
    let expected: Vec<String> = (30..130).map(|n| n.to_string()).collect();
    assert_eq!(held, expected);
    publish(server.addr, &[("topic", "https://example.com/t"), ("data", "live")]).await;
    assert_eq!(replay.next_event().await.data, "live", "nothing more was held");
}

/// What a stream that follows both logs was sent: each event's id, and whether it is a
/// subscription event (else its data).
fn seen(event: &support::whatwg::Event) -> (String, String) {
    let label = match serde_json::from_str::<Value>(&event.data) {
        Ok(body) if body["type"] == "Subscription" => format!("active={}", body["active"]),
        _ => event.data.clone(),
    };
    (event.last_event_id.clone(), label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_updates_and_subscription_events_resumes_from_either_without_a_miss() {
    let mut args = vec!["--mercure-subscriptions"];
    args.extend(UNTHROTTLED);
    let server = hub(&args).await;
    let everything = bearer(&subscriber(&["*"]));
    let auth = [("Authorization", everything.as_str())];
    let mut watcher = subscribe(server.addr, &["*"], &auth).await;
    let update = |data: &'static str| async move {
        publish(server.addr, &[("topic", "https://example.com/t"), ("data", data)]).await
    };
    // Updates and subscription events, interleaved: each follows the one before it.
    update("u1").await;
    let visitor = subscribe(server.addr, &["https://example.com/v"], &auth).await;
    update("u2").await;
    drop(visitor);
    wait_until("the departure announced", || async {
        metric(&server.metrics().await, "crier_events_published_total") == Some(5.0)
    })
    .await;
    update("u3").await;
    let sent: Vec<(String, String)> = watcher.events(5).await.iter().map(seen).collect();
    let labels: Vec<&str> = sent.iter().map(|(_, label)| label.as_str()).collect();
    assert_eq!(labels, ["u1", "active=true", "u2", "active=false", "u3"]);
    // From each event sent, a resume gets everything after it, in the same order.
    for (at, (id, _)) in sent.iter().enumerate() {
        let resume = [("Last-Event-ID", id.as_str()), auth[0]];
        let mut resumed = subscribe(server.addr, &["*"], &resume).await;
        assert_eq!(resumed.header("last-event-id").as_deref(), Some(id.as_str()));
        let rest = &sent[at + 1..];
        let got: Vec<(String, String)> =
            resumed.events(rest.len() + 1).await.iter().map(seen).collect();
        assert_eq!(&got[..rest.len()], rest, "resumed after event {at}");
        // Then its own arrival, announced before it read the logs.
        assert_eq!(got[rest.len()].1, "active=true");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_templates_are_held_within_the_nodes_budget() {
    let mut args = vec!["--mercure-anonymous", "--mercure-max-templates", "150"];
    args.extend(UNTHROTTLED);
    let server = hub(&args).await;
    // Subscribers of a hundred templates each (a thousand would pass the request head's limit).
    let templates = |from: usize| -> Vec<String> {
        (from..from + 100).map(|n| format!("https://example.com/{n}/{{id}}")).collect()
    };
    let first = templates(0);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut held = subscribe(server.addr, &first, &[]).await;
    assert_eq!(held.status, 200);
    // A hundred more would pass the budget: refused as a browser retries, or 503.
    let second = templates(1000);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let second_target = support::mercure::target(&second, &[]);
    let refused = support::request(server.addr, "GET", &second_target, &[], b"").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    let accept = [("Accept", "text/event-stream")];
    let soft = support::request(server.addr, "GET", &second_target, &accept, b"").await;
    assert_eq!(soft.status, 200);
    let events = support::whatwg::Parser::new().feed(&soft.body);
    assert_eq!(events[0].kind, "crier.refused", "{}", soft.text());
    assert!(events[0].data.contains("--mercure-max-templates"), "{}", events[0].data);
    let rejections =
        metric(&server.metrics().await, r#"crier_rejections_total{reason="mercure_templates"}"#);
    assert_eq!(rejections, Some(2.0));
    // Templates already compiled cost nothing more, and the first subscriber is served on.
    let again = subscribe(server.addr, &first, &[]).await;
    assert_eq!(again.status, 200);
    publish(server.addr, &[("topic", "https://example.com/7/x"), ("data", "to the first")]).await;
    assert_eq!(held.next_event().await.data, "to the first");
    // Once the first subscribers leave, their templates are released.
    drop((held, again));
    wait_until("the templates released", || async {
        let stream = subscribe(server.addr, &second, &[]).await;
        stream.status == 200 && stream.header("content-length").is_none()
    })
    .await;
}

//! The Mercure hub on one node, on real sockets: subscribe with selectors and URI templates,
//! publish with the reference hub's form fields and answers, authorization by Mercure's
//! claims, keys and token sources, resume by Mercure id, token expiry, active subscriptions,
//! CORS, and crier's own API beside it.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::mercure::{
    self, KEY, bearer, hub, post, publish, publisher, subscribe, subscriber, target,
};
use support::{CrierProcess, SseClient, TestServer, request, tokens, wait_until};

#[tokio::test]
async fn a_uri_template_subscriber_gets_matching_updates_framed_as_the_reference_hub_frames_them() {
    let server = hub(&["--mercure-anonymous"]).await;
    let mut sub = subscribe(
        server.addr,
        &["https://example.com/books/{id}", "https://example.com/exact"],
        &[],
    )
    .await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(
        sub.header("cache-control").as_deref(),
        Some("private, no-cache, no-store, must-revalidate, max-age=0")
    );
    // Registered before the head was sent: a publish right after it arrives.
    let id = publish(
        server.addr,
        &[
            ("topic", "https://example.com/books/1"),
            ("data", "first line\n\nthird line"),
            ("type", "book.updated"),
            ("retry", "2500"),
        ],
    )
    .await;
    assert!(id.starts_with("urn:uuid:"), "{id}");
    let uuid = id.trim_start_matches("urn:uuid:");
    assert_eq!(uuid.as_bytes()[14], b'7', "a UUIDv7: {uuid}");
    // `{id}` never matches `/`, and a private update never reaches an anonymous subscriber.
    publish(server.addr, &[("topic", "https://example.com/books/1/reviews"), ("data", "no")]).await;
    mercure::publish_private(server.addr, "https://example.com/books/2", "private").await;
    // An alternate topic matches too; the publisher's id is used verbatim.
    let custom = publish(
        server.addr,
        &[
            ("topic", "https://example.com/other"),
            ("topic", "https://example.com/exact"),
            ("data", "alternate"),
            ("id", "custom-1"),
        ],
    )
    .await;
    assert_eq!(custom, "custom-1");
    let events = sub.events(2).await;
    assert_eq!(
        (events[0].kind.as_str(), events[0].data.as_str(), events[0].last_event_id.as_str()),
        ("book.updated", "first line\n\nthird line", id.as_str())
    );
    assert_eq!(
        (events[1].kind.as_str(), events[1].data.as_str(), events[1].last_event_id.as_str()),
        ("message", "alternate", "custom-1")
    );
    let wire = String::from_utf8_lossy(&sub.body).into_owned();
    assert!(
        wire.starts_with(":\n")
            && wire.contains(&format!(
                "event: book.updated\nretry: 2500\nid: {id}\ndata: first line\ndata: \ndata: third line\n\n"
            )),
        "{wire:?}"
    );
    assert!(!wire.contains("private") && !wire.contains("data: no"), "{wire:?}");
}

#[tokio::test]
async fn private_updates_reach_subscribers_whose_claim_matches_one_of_their_topics() {
    let server = hub(&[]).await;
    let allowed = bearer(&subscriber(&["https://example.com/users/{user}"]));
    let other = bearer(&subscriber(&["https://example.com/users/2"]));
    let mut mine = subscribe(server.addr, &["*"], &[("Authorization", &allowed)]).await;
    let mut theirs = subscribe(server.addr, &["*"], &[("Authorization", &other)]).await;
    let fields = [("topic", "https://example.com/users/1"), ("data", "secret"), ("private", "1")];
    publish(server.addr, &fields).await;
    publish(server.addr, &[("topic", "https://example.com/public"), ("data", "hello")]).await;
    let got: Vec<String> = mine.events(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["secret", "hello"]);
    assert_eq!(theirs.next_event().await.data, "hello", "the private update is skipped");
    // The token may also come from the `authorization` query parameter or the cookie.
    let query = target(&["*"], &[("authorization", &subscriber(&["*"]))]);
    let mut by_query = SseClient::connect(server.addr, &query, &[]).await;
    let cookie = format!("mercureAuthorization={}", subscriber(&["*"]));
    let mut by_cookie = subscribe(server.addr, &["*"], &[("Cookie", &cookie)]).await;
    publish(server.addr, &fields).await;
    assert_eq!(by_query.next_event().await.data, "secret");
    assert_eq!(by_cookie.next_event().await.data, "secret");
}

#[tokio::test]
async fn tokens_are_refused_as_the_reference_hub_refuses_them() {
    let server = hub(&[]).await;
    let expect_401 = |response: support::HttpResponse| {
        assert_eq!(response.status, 401, "{}", response.text());
        assert_eq!(response.text(), "Unauthorized\n");
    };
    // No token, without anonymous mode.
    expect_401(request(server.addr, "GET", &target(&["*"], &[]), &[], b"").await);
    // A wrong algorithm: HS512 where the hub takes HS256.
    let hs512 = tokens::sign(
        Algorithm::HS512,
        None,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()).unwrap(),
        &json!({"mercure": {"subscribe": ["*"], "publish": ["*"]}}),
    );
    let wrong_alg = [("Authorization", bearer(&hs512))];
    let wrong_alg: Vec<(&str, &str)> = wrong_alg.iter().map(|(k, v)| (*k, v.as_str())).collect();
    expect_401(request(server.addr, "GET", &target(&["*"], &[]), &wrong_alg, b"").await);
    expect_401(post(server.addr, &wrong_alg, &[("topic", "a"), ("data", "x")]).await);
    // An expired token.
    let expired =
        mercure::token(&json!({"exp": tokens::now() - 10, "mercure": {"publish": ["*"]}}));
    expect_401(post(server.addr, &[("Authorization", &bearer(&expired))], &[("topic", "a")]).await);
    // A token without `mercure.publish`, or one that does not cover every topic.
    let no_claim = bearer(&subscriber(&["*"]));
    expect_401(post(server.addr, &[("Authorization", &no_claim)], &[("topic", "a")]).await);
    let narrow = bearer(&mercure::token(&json!({"mercure": {"publish": ["https://a/{x}"]}})));
    let fields = [("topic", "https://a/1"), ("topic", "https://b/1")];
    expect_401(post(server.addr, &[("Authorization", &narrow)], &fields).await);
    let ok = post(server.addr, &[("Authorization", &narrow)], &[("topic", "https://a/1")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Not a Bearer header.
    expect_401(
        request(server.addr, "GET", &target(&["*"], &[]), &[("Authorization", "Basic eA==")], b"")
            .await,
    );

    // In anonymous mode no token is fine, but a bad one is still refused.
    let anonymous = hub(&["--mercure-anonymous"]).await;
    let open = SseClient::connect(anonymous.addr, &target(&["*"], &[]), &[]).await;
    assert_eq!(open.status, 200);
    let bad = [("Authorization", "Bearer not.a.token")];
    expect_401(request(anonymous.addr, "GET", &target(&["*"], &[]), &bad, b"").await);
    let expired_sub =
        mercure::token(&json!({"exp": tokens::now() - 10, "mercure": {"subscribe": ["*"]}}));
    let expired_sub = [("Authorization", bearer(&expired_sub))];
    let expired_sub: Vec<(&str, &str)> =
        expired_sub.iter().map(|(k, v)| (*k, v.as_str())).collect();
    expect_401(request(anonymous.addr, "GET", &target(&["*"], &[]), &expired_sub, b"").await);
    assert!(server.metrics().await.contains("crier_auth_failures_total{reason=\"algorithm\"} 2"));
}

#[tokio::test]
async fn public_keys_verify_tokens_of_their_algorithm_only() {
    let claims = json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}});
    for (key, algorithm, name, other) in [
        ("rsa", Algorithm::RS256, "RS256", Some(Algorithm::PS256)),
        ("ec", Algorithm::ES256, "ES256", None),
        ("ed", Algorithm::EdDSA, "EdDSA", None),
    ] {
        let pem = std::fs::read_to_string(tokens::key_path(&format!("{key}.pub"))).unwrap();
        let server = TestServer::start(&[
            "--mercure-publisher-jwt-key",
            &pem,
            "--mercure-publisher-jwt-alg",
            name,
            "--mercure-subscriber-jwt-key",
            &pem,
            "--mercure-subscriber-jwt-alg",
            name,
        ])
        .await;
        let signed = bearer(&tokens::signed_with(key, algorithm, None, &claims));
        let ok = post(server.addr, &[("Authorization", &signed)], &[("topic", "t"), ("data", "x")])
            .await;
        assert_eq!(ok.status, 200, "{name}: {}", ok.text());
        let sub = subscribe(server.addr, &["t"], &[("Authorization", &signed)]).await;
        assert_eq!(sub.status, 200, "{name}");
        // Signed with the right key but another algorithm than the configured one.
        if let Some(other) = other {
            let wrong = bearer(&tokens::signed_with(key, other, None, &claims));
            let refused = post(server.addr, &[("Authorization", &wrong)], &[("topic", "t")]).await;
            assert_eq!(refused.status, 401, "{name}");
        }
        // An HS256 token made with the public key's text as secret (the classic confusion).
        let confused = bearer(&tokens::sign(
            Algorithm::HS256,
            None,
            &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()).unwrap(),
            &claims,
        ));
        let refused = post(server.addr, &[("Authorization", &confused)], &[("topic", "t")]).await;
        assert_eq!(refused.status, 401, "{name}");
    }
    // A key that is not one for its algorithm stops the server at start, with a message.
    let pem = std::fs::read_to_string(tokens::key_path("ec.pub")).unwrap();
    let argv =
        ["crier", "--mercure-publisher-jwt-key", &pem, "--mercure-publisher-jwt-alg", "RS256"];
    let config = <crier::Config as clap::Parser>::try_parse_from(argv).unwrap();
    let refused = crier::ServerHandle::start(config).await.err().expect("refused");
    assert!(refused.to_string().contains("not a key for RS256"), "{refused}");
}

#[tokio::test]
async fn quiet_streams_get_the_reference_hubs_comment_heartbeats() {
    let server = hub(&["--mercure-anonymous", "--heartbeat", "200ms"]).await;
    let mut sub = subscribe(server.addr, &["t"], &[]).await;
    let body = sub.read_body_until(|body| body.starts_with(b":\n:\n:\n")).await;
    assert_eq!(body, b":\n:\n:\n", "the opening comment, then one per quiet interval");
}

#[tokio::test]
async fn publish_errors_use_the_reference_hubs_statuses_and_texts() {
    let server = hub(&[]).await;
    let auth = bearer(&publisher());
    let auth = [("Authorization", auth.as_str())];
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case<'_>; 6] = [
        (&[("data", "x")], 400, "Missing \"topic\" parameter\n"),
        (&[("topic", "a"), ("retry", "soon")], 400, "Invalid \"retry\" parameter\n"),
        (
            &[("topic", "https://h/.well-known/mercure/subscriptions/x/y")],
            403,
            "\"https://h/.well-known/mercure/subscriptions/x/y\": topic value references the reserved \"/.well-known/mercure\" namespace\n",
        ),
        (
            &[("topic", "a"), ("id", "x\nevent: evil")],
            400,
            "\"id\" field contains a forbidden control character\n",
        ),
        (
            &[("topic", "a"), ("type", "x\r")],
            400,
            "\"type\" field contains a forbidden control character\n",
        ),
        (
            &[("topic", "a"), ("id", "x\0")],
            400,
            "\"id\" field contains a forbidden control character\n",
        ),
    ];
    for (fields, status, body) in cases {
        let response = post(server.addr, &auth, fields).await;
        assert_eq!((response.status, response.text().as_str()), (status, body), "{fields:?}");
    }
    let missing = request(
        server.addr,
        "GET",
        "/.well-known/mercure",
        &[("Authorization", &bearer(&subscriber(&["*"])))],
        b"",
    )
    .await;
    assert_eq!((missing.status, missing.text().as_str()), (400, "Missing \"topic\" parameter.\n"));
    let too_many: Vec<(&str, &str)> = (0..1001).map(|_| ("topic", "t")).collect();
    let too_many: Vec<String> = too_many.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let target = format!("/.well-known/mercure?{}", too_many.join("&"));
    let sub = bearer(&subscriber(&["*"]));
    assert_eq!(mercure::get(server.addr, &target, &sub).await.status, 400);
    // The server goes on serving.
    publish(server.addr, &[("topic", "a"), ("data", "still here")]).await;
}

#[tokio::test]
async fn a_subscriber_resumes_after_a_mercure_id_or_from_the_earliest_update_held() {
    let server = hub(&["--mercure-anonymous"]).await;
    for (i, id) in ["a", "b", "repeated", "c", "repeated", "d"].iter().enumerate() {
        publish(server.addr, &[("topic", "https://x/t"), ("data", &i.to_string()), ("id", id)])
            .await;
    }
    let data = |events: Vec<support::whatwg::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.data).collect()
    };
    // The header.
    let mut resumed = subscribe(server.addr, &["https://x/{p}"], &[("Last-Event-ID", "b")]).await;
    assert_eq!(resumed.header("last-event-id").as_deref(), Some("b"));
    assert_eq!(data(resumed.events(4).await), ["2", "3", "4", "5"]);
    // The query parameter; an id published twice resumes after its oldest occurrence held.
    let query = target(&["*"], &[("lastEventID", "repeated")]);
    let mut again = SseClient::connect(server.addr, &query, &[]).await;
    assert_eq!(again.header("last-event-id").as_deref(), Some("repeated"));
    assert_eq!(data(again.events(3).await), ["3", "4", "5"]);
    // `earliest` replays everything held.
    let mut all = subscribe(server.addr, &["*"], &[("Last-Event-ID", "earliest")]).await;
    assert_eq!(all.header("last-event-id").as_deref(), Some("earliest"));
    assert_eq!(data(all.events(6).await), ["0", "1", "2", "3", "4", "5"]);
    // An unknown id replays nothing; the header names where the stream resumed.
    let mut unknown = subscribe(server.addr, &["*"], &[("Last-Event-ID", "never")]).await;
    assert_eq!(unknown.header("last-event-id").as_deref(), Some("d"));
    publish(server.addr, &[("topic", "https://x/t"), ("data", "live"), ("id", "e")]).await;
    assert_eq!(unknown.next_event().await.data, "live");
    for sub in [&mut resumed, &mut again, &mut all] {
        assert_eq!(sub.next_event().await.last_event_id, "e", "no duplicate, no gap");
    }
    // Without a resume request the header is absent.
    let plain = subscribe(server.addr, &["*"], &[]).await;
    assert_eq!(plain.header("last-event-id"), None);
}

#[tokio::test]
async fn a_stream_ends_before_its_token_expires() {
    let server = hub(&[]).await;
    let exp = tokens::now() + 2;
    let token = mercure::token(&json!({"exp": exp, "mercure": {"subscribe": ["*"]}}));
    let mut sub = subscribe(server.addr, &["*"], &[("Authorization", &bearer(&token))]).await;
    assert_eq!(sub.status, 200);
    assert!(sub.read_to_end().await, "the stream ends cleanly");
    let ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(ended.as_secs_f64() < exp as f64, "ended at {ended:?}, exp {exp}");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_evicted() {
    let server = hub(&["--mercure-anonymous", "--max-lag-bytes", "64KiB"]).await;
    let stalled = support::stalled_connection(
        server.addr,
        &format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", target(&["*"], &[])),
    )
    .await;
    let mut healthy = subscribe(server.addr, &["*"], &[]).await;
    let data = "x".repeat(16 << 10);
    wait_until("the stalled subscriber to be evicted", || async {
        publish(server.addr, &[("topic", "t"), ("data", &data)]).await;
        support::metric(
            &server.metrics().await,
            "crier_evictions_total{transport=\"sse\",reason=\"slow_consumer\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(healthy.next_event().await.data.len(), data.len(), "the others go on");
    drop(stalled);
}

#[tokio::test]
async fn cookie_publishes_must_come_from_a_publish_origin() {
    let server = hub(&["--mercure-publish-origins", "https://app.example"]).await;
    let cookie = format!("mercureAuthorization={}", publisher());
    let fields = [("topic", "t"), ("data", "x")];
    let from =
        |origin: &'static str| vec![("Cookie", cookie.clone()), ("Origin", origin.to_owned())];
    let headers = |h: &[(&'static str, String)]| -> Vec<(&'static str, String)> { h.to_vec() };
    for (headers, status) in [
        (headers(&from("https://app.example")), 200),
        // A page of another origin may not publish, whatever it carries (the reference hub
        // answers a cookie from it 401).
        (headers(&from("https://evil.example")), 403),
        (vec![("Cookie", cookie.clone())], 401),
        (vec![("Cookie", cookie.clone()), ("Referer", "https://app.example/page".to_owned())], 200),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(post(server.addr, &headers, &fields).await.status, status, "{headers:?}");
    }
}

#[tokio::test]
async fn cross_origin_pages_may_subscribe_and_publish_with_credentials() {
    let server = hub(&["--cors-origins", "https://app.example"]).await;
    let preflight = request(
        server.addr,
        "OPTIONS",
        "/.well-known/mercure",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, last-event-id"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(preflight.header("access-control-allow-credentials").as_deref(), Some("true"));
    let allowed = preflight.header("access-control-allow-headers").unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"), "{allowed}");
    let auth = bearer(&subscriber(&["*"]));
    let sub = subscribe(
        server.addr,
        &["*"],
        &[("Origin", "https://app.example"), ("Authorization", &auth)],
    )
    .await;
    assert_eq!(sub.header("access-control-allow-origin").as_deref(), Some("https://app.example"));
    // The subscriptions API is the hub's too (a 404 here: not --mercure-subscriptions).
    let listing = request(
        server.addr,
        "GET",
        "/.well-known/mercure/subscriptions",
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(
        listing.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn active_subscriptions_are_announced_and_listed() {
    let server = hub(&["--mercure-subscriptions"]).await;
    let watcher = bearer(&subscriber(&["/.well-known/mercure/subscriptions{/topic}{/subscriber}"]));
    let mut watch = subscribe(
        server.addr,
        &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"],
        &[("Authorization", &watcher)],
    )
    .await;
    let payload_token =
        mercure::token(&json!({"mercure": {"subscribe": ["*"], "payload": {"user": "alice"}}}));
    let alice = subscribe(
        server.addr,
        &["https://example.com/books/{id}"],
        &[("Authorization", &bearer(&payload_token))],
    )
    .await;
    let arrived: Value = serde_json::from_str(&watch.next_event().await.data).unwrap();
    let subscriber_id = arrived["subscriber"].as_str().unwrap().to_owned();
    let expected_id = format!(
        "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D/{}",
        subscriber_id.replace(':', "%3A")
    );
    assert_eq!(
        arrived,
        json!({
            "@context": "https://mercure.rocks/",
            "id": expected_id,
            "type": "Subscription",
            "subscriber": subscriber_id,
            "topic": "https://example.com/books/{id}",
            "active": true,
            "payload": {"user": "alice"},
        })
    );
    // The API, with the watcher's token (its claim covers the API's URLs).
    let list = mercure::get(server.addr, "/.well-known/mercure/subscriptions", &watcher).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.header("content-type").as_deref(), Some("application/ld+json"));
    let body = list.json();
    assert_eq!(body["type"], "Subscriptions");
    let listed: Vec<&str> = body["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"https://example.com/books/{id}"), "{body}");
    let etag = list.header("etag").expect("an ETag");
    assert_eq!(etag.trim_matches('"'), body["lastEventID"].as_str().unwrap());
    let same = request(
        server.addr,
        "GET",
        "/.well-known/mercure/subscriptions",
        &[("Authorization", &watcher), ("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(same.status, 304);
    let one = mercure::get(server.addr, &expected_id, &watcher).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["subscriber"], subscriber_id.as_str());
    let by_topic = format!(
        "/.well-known/mercure/subscriptions/{}",
        support::urlencode("https://example.com/books/{id}")
    );
    let by_topic = mercure::get(server.addr, &by_topic, &watcher).await;
    assert_eq!(by_topic.json()["subscriptions"].as_array().unwrap().len(), 1);
    // A token that does not cover the API is refused.
    let other = bearer(&subscriber(&["https://example.com/{x}"]));
    let refused = mercure::get(server.addr, "/.well-known/mercure/subscriptions", &other).await;
    assert_eq!(refused.status, 401);
    // Leaving is announced too.
    drop(alice);
    let left: Value = serde_json::from_str(&watch.next_event().await.data).unwrap();
    assert_eq!(
        (left["active"].as_bool(), left["subscriber"].as_str()),
        (Some(false), Some(subscriber_id.as_str()))
    );
    wait_until("the subscription to leave the list", || async {
        let list = mercure::get(server.addr, "/.well-known/mercure/subscriptions", &watcher).await;
        list.json()["subscriptions"].as_array().unwrap().len() == 1
    })
    .await;
}

#[tokio::test]
async fn the_hub_is_on_only_when_configured_and_crier_cannot_read_its_log() {
    let plain = TestServer::start(&[]).await;
    assert_eq!(request(plain.addr, "GET", &target(&["*"], &[]), &[], b"").await.status, 404);
    let server = hub(&["--mercure-anonymous"]).await;
    // The log is not a crier topic, and crier's own API is unchanged beside the hub.
    assert_eq!(request(server.addr, "GET", "/sse?topic=~mercure", &[], b"").await.status, 400);
    let mut sse = SseClient::connect(server.addr, "/sse?topic=news", &[]).await;
    let mut mercure_sub = subscribe(server.addr, &["news"], &[]).await;
    let id = server.publish("news", "crier event").await;
    assert_eq!(sse.next_event().await.last_event_id, id);
    publish(server.addr, &[("topic", "news"), ("data", "mercure update")]).await;
    assert_eq!(
        mercure_sub.next_event().await.data,
        "mercure update",
        "crier's event is not an update"
    );
}

#[tokio::test]
async fn keys_carry_over_from_the_reference_hubs_environment_variables() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_crier"));
    command.env("MERCURE_PUBLISHER_JWT_KEY", KEY).env("MERCURE_PUBLISHER_JWT_ALG", "HS256");
    let node = CrierProcess::spawn_command(command, &["--mercure-anonymous"]).await;
    let mut sub = subscribe(node.addr, &["*"], &[]).await;
    let id = publish(node.addr, &[("topic", "t"), ("data", "from env")]).await;
    let event = sub.next_event().await;
    assert_eq!((event.data.as_str(), event.last_event_id), ("from env", id));
    let wrong = tokens::sign(
        Algorithm::HS256,
        None,
        &jsonwebtoken::EncodingKey::from_secret(b"another key of the same good length!").unwrap(),
        &json!({"mercure": {"publish": ["*"]}}),
    );
    assert_eq!(
        post(node.addr, &[("Authorization", &bearer(&wrong))], &[("topic", "t")]).await.status,
        401
    );
}

/// The page: its `EventSource` subscribes to the hub (address in the page's query) with a URI
/// template, anonymously, and keeps every message.
const BROWSER_PAGE: &str = r#"<!doctype html><title>mercure</title><script>
const hub = new URL("http://" + new URLSearchParams(location.search).get("hub") + "/.well-known/mercure");
hub.searchParams.append("topic", "https://example.com/books/{id}");
window.messages = [];
const source = new EventSource(hub);
source.onopen = () => { window.opened = true; };
source.onmessage = (e) => { window.messages.push({ data: e.data, lastEventId: e.lastEventId }); };
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_eventsource_receives_template_matched_updates_and_no_private_one() {
    use support::browser::{Browser, serve_page};
    let page_addr = serve_page(BROWSER_PAGE.to_owned()).await;
    let origin = format!("http://{page_addr}");
    let server = hub(&["--mercure-anonymous", "--cors-origins", &origin]).await;
    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("http://{page_addr}/?hub={}", server.addr)).await;
    assert_eq!(browser.wait_for(&page, "window.opened").await, true);
    mercure::publish_private(server.addr, "https://example.com/books/1", "secret").await;
    let id = publish(
        server.addr,
        &[("topic", "https://example.com/books/2"), ("data", "a\n\nblank line above")],
    )
    .await;
    let got = browser.wait_for(&page, "window.messages.length ? window.messages : null").await;
    assert_eq!(got, json!([{"data": "a\n\nblank line above", "lastEventId": id}]));
}

/// Runs `tests/php/publish.php` (Symfony's Mercure component) against `hub` with `jwt`.
async fn symfony_publish(hub: std::net::SocketAddr, jwt: &str) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php/publish.php");
    let url = format!("http://{hub}/.well-known/mercure");
    let output = tokio::process::Command::new("php")
        .args([script, &url, jwt])
        .output()
        .await
        .expect("php runs (.ci/run installs php-cli and php-symfony-mercure)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symfonys_mercure_component_publishes_unmodified() {
    let server = hub(&[]).await;
    let auth = bearer(&subscriber(&["https://example.com/books/{id}"]));
    let mut sub =
        subscribe(server.addr, &["https://example.com/books/{id}"], &[("Authorization", &auth)])
            .await;
    let ids = symfony_publish(server.addr, &publisher()).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids[0].starts_with("urn:uuid:"), "{ids:?}");
    assert_eq!(ids[1], "symfony-2");
    let events = sub.events(2).await;
    assert_eq!(
        (events[0].kind.as_str(), events[0].last_event_id.as_str()),
        ("book.updated", ids[0].as_str())
    );
    let book: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(book["title"], "A book\n\nwith a blank line");
    assert_eq!(
        (events[1].data.as_str(), events[1].last_event_id.as_str()),
        ("public", "symfony-2")
    );
    assert!(String::from_utf8_lossy(&sub.body).contains("retry: 5000\n"));
    // A token that may not publish: the component reports the refusal.
    let refused = symfony_publish(server.addr, &subscriber(&["*"])).await;
    assert!(refused.iter().all(|line| line.starts_with("refused:")), "{refused:?}");
}

#[tokio::test]
async fn a_stream_through_hyper_is_the_same_as_one_on_its_own_connection() {
    let server = hub(&["--mercure-anonymous"]).await;
    let target = target(&["https://example.com/{x}"], &[]);
    let mut own = SseClient::connect(server.addr, &target, &[]).await;
    let mut shared = SseClient::connect_after_request(server.addr, &target, &[]).await;
    assert_eq!(own.status, 200);
    assert_eq!(shared.status, 200);
    for name in ["content-type", "cache-control", "x-accel-buffering"] {
        assert_eq!(own.header(name), shared.header(name), "{name}");
    }
    let id = publish(server.addr, &[("topic", "https://example.com/1"), ("data", "x\ny")]).await;
    for sub in [&mut own, &mut shared] {
        let event = sub.next_event().await;
        assert_eq!((event.data.as_str(), event.last_event_id.as_str()), ("x\ny", id.as_str()));
    }
    assert_eq!(own.body, shared.body, "the same bytes");
    // A refused request on its own connection is answered as through hyper.
    let refused = request(server.addr, "GET", "/.well-known/mercure", &[], b"").await;
    assert_eq!((refused.status, refused.text().as_str()), (400, "Missing \"topic\" parameter.\n"));
}

#[tokio::test]
async fn head_answers_the_streams_headers_and_topics_are_form_decoded() {
    let server = hub(&["--mercure-anonymous"]).await;
    let head = request(server.addr, "HEAD", "/.well-known/mercure?topic=a", &[], b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type").as_deref(), Some("text/event-stream"));
    assert!(head.body.is_empty());
    server.wait_subscriptions(0).await;
    // `+` is a space in a topic selector, as in any form-encoded query.
    let mut sub = SseClient::connect(server.addr, "/.well-known/mercure?topic=a+b", &[]).await;
    publish(server.addr, &[("topic", "a+b"), ("data", "plus")]).await;
    publish(server.addr, &[("topic", "a b"), ("data", "space")]).await;
    assert_eq!(sub.next_event().await.data, "space");
}

#[tokio::test]
async fn publishes_are_held_to_the_publish_rate_of_their_address() {
    let server = hub(&["--publishes-per-sec", "2"]).await;
    let auth = bearer(&publisher());
    let fields = [("topic", "https://example.com/t"), ("data", "x")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = post(server.addr, &[("Authorization", &auth)], &fields).await;
        statuses.push(response.status);
        if response.status == 429 {
            assert!(response.header("content-type").unwrap().starts_with("text/plain"));
            assert_eq!(response.text(), "more than 2 publishes per second\n");
            assert!(response.header("retry-after").is_some());
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The address's bucket is the same for crier's own publishes.
    let crier = support::publish(server.addr, "t", None, b"x", None).await;
    assert_eq!(crier.status, 429, "{}", crier.text());
    let metrics = server.metrics().await;
    assert_eq!(
        support::metric(&metrics, r#"crier_rejections_total{reason="publish_rate"}"#),
        Some(2.0)
    );
}

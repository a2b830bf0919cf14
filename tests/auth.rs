//! Credentials over real sockets: tokens minted here (HS256, RS256, ES256, EdDSA) from every
//! place a client may put them, every kind of refused token, what tokens allow (publishing,
//! private topics, on /sse and /ws), expiry on open streams, trusted proxies, and a key
//! rotation by SIGHUP on the real binary.

mod support;

use std::net::SocketAddr;

use futures_util::SinkExt as _;
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::{self, SECRET, grant, hs256, key_path, now, signed_with, with};
use support::ws::{self as wsc, command};
use support::{
    CrierProcess, HttpResponse, SseClient, TestServer, WAIT, metric, request, request_from,
    wait_until,
};
use tokio_tungstenite::tungstenite::Message;

fn assert_error(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    let json = response.json();
    assert_eq!(json["error"], code, "{json}");
    assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{json}");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A server with the test secret, whose `private/` and `team:` topics are private.
async fn server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--jwt-key", SECRET, "--private-topics", "private/*,team:*"];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

async fn publish_with(
    addr: SocketAddr,
    topic: &str,
    token: Option<&str>,
    data: &str,
) -> HttpResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, "POST", &format!("/publish?topic={topic}"), &headers, data.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_token_that_covers_the_topic() {
    let server = server(&[]).await;
    let addr = server.addr;
    // Even from loopback: with a key configured, loopback is no credential.
    assert_error(&publish_with(addr, "news/eu", None, "x").await, 401, "unauthorized");
    let refused = publish_with(addr, "news/eu", None, "x").await;
    assert_eq!(refused.header("www-authenticate").as_deref(), Some("Bearer"));
    let reader = hs256(&grant(&[], &["*"]));
    assert_error(&publish_with(addr, "news/eu", Some(&reader), "x").await, 403, "forbidden");
    let news = hs256(&grant(&["news/*"], &[]));
    assert_eq!(publish_with(addr, "news/eu", Some(&news), "x").await.status, 200);
    assert_error(&publish_with(addr, "sports", Some(&news), "x").await, 403, "forbidden");
    assert_error(&publish_with(addr, "news", Some(&news), "x").await, 403, "forbidden");
    let exact = hs256(&grant(&["sports"], &[]));
    assert_eq!(publish_with(addr, "sports", Some(&exact), "x").await.status, 200);
    assert_error(&publish_with(addr, "sports/x", Some(&exact), "x").await, 403, "forbidden");
    let all = hs256(&grant(&["*"], &[]));
    assert_eq!(publish_with(addr, "private/anything", Some(&all), "x").await.status, 200);
    // The token may also come in the query or the cookie.
    let target = format!("/publish?topic=news/x&token={news}");
    assert_eq!(request(addr, "POST", &target, &[], b"q").await.status, 200);
    let cookie = format!("crier_token={news}");
    let response =
        request(addr, "POST", "/publish?topic=news/x", &[("Cookie", &cookie)], b"c").await;
    assert_eq!(response.status, 200);
    let published = metric(&server.metrics().await, "crier_events_published_total");
    assert_eq!(published, Some(5.0), "refused publishes published nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_topics_need_a_token_from_any_source_on_both_paths() {
    let server = server(&[]).await;
    let addr = server.addr;
    let alice = hs256(&grant(&["private/*"], &["private/alice", "team:*"]));
    // Refused: no token (401), a token that does not cover the topic (403), on the fast path
    // and through hyper alike.
    assert_error(
        &request(addr, "GET", "/sse?topic=private/alice", &[], b"").await,
        401,
        "unauthorized",
    );
    let target = format!("/sse?topic=private/bob&token={alice}");
    assert_error(&request(addr, "GET", &target, &[], b"").await, 403, "forbidden");
    let after = SseClient::connect_after_request(
        addr,
        "/sse?topic=private/bob",
        &[("Authorization", &bearer(&alice))],
    )
    .await;
    assert_eq!(after.status, 403);
    // Public topics need nothing.
    let public = SseClient::connect(addr, "/sse?topic=news", &[]).await;
    assert_eq!(public.status, 200);
    // Allowed, from each source.
    let header = bearer(&alice);
    let cookie = format!("a=b; crier_token={alice}");
    let query = format!("/sse?topic=private/alice&token={alice}");
    let mut streams = vec![
        SseClient::connect(addr, "/sse?topic=private/alice", &[("Authorization", &header)]).await,
        SseClient::connect(addr, &query, &[]).await,
        SseClient::connect(addr, "/sse?topic=private/alice", &[("Cookie", &cookie)]).await,
        SseClient::connect_after_request(addr, "/sse?topic=team:red", &[("Cookie", &cookie)]).await,
    ];
    for stream in &streams {
        assert_eq!(stream.status, 200, "{}", stream.head);
    }
    server.wait_subscriptions(5).await;
    let publisher = hs256(&grant(&["*"], &[]));
    assert_eq!(publish_with(addr, "private/alice", Some(&publisher), "secret").await.status, 200);
    assert_eq!(publish_with(addr, "team:red", Some(&publisher), "team").await.status, 200);
    for stream in &mut streams[..3] {
        assert_eq!(stream.next_event().await.data, "secret");
    }
    assert_eq!(streams[3].next_event().await.data, "team");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_topic_stream_is_refused_whole_if_one_topic_is_not_allowed() {
    let server = server(&[]).await;
    let token = hs256(&grant(&[], &["private/alice"]));
    let target = format!("/sse?topic=news&topic=private/alice&topic=private/bob&token={token}");
    let refused = request(server.addr, "GET", &target, &[], b"").await;
    assert_error(&refused, 403, "forbidden");
    assert!(refused.json()["detail"].as_str().unwrap().contains("private/bob"));
    assert_eq!(metric(&server.metrics().await, "crier_subscriptions"), Some(0.0));
    let mut ws = wsc::connect(server.addr, &format!("/ws?topic=news&token={token}")).await;
    let reply = command(&mut ws, json!({"op":"subscribe","topic":"private/bob","ref":1})).await;
    assert_eq!((reply["op"].as_str(), reply["error"].as_str()), (Some("error"), Some("forbidden")));
    let ok = command(&mut ws, json!({"op":"subscribe","topic":"private/alice","ref":2})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    // A WebSocket URL with a topic the token does not cover is refused before the upgrade.
    let target = format!("/ws?topic=private/bob&token={token}");
    let handshake = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_error(&request(server.addr, "GET", &target, &handshake, b"").await, 403, "forbidden");
    let target = "/ws?topic=private/bob";
    assert_error(&request(server.addr, "GET", target, &handshake, b"").await, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reveals_no_private_history_to_who_may_not_see_it() {
    let server = server(&[]).await;
    let publisher = hs256(&grant(&["*"], &[]));
    let first =
        publish_with(server.addr, "private/alice", Some(&publisher), "one").await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
    publish_with(server.addr, "private/alice", Some(&publisher), "two-secret").await;
    let bob = hs256(&grant(&[], &["private/bob"]));
    for (headers, status) in [
        (vec![("Last-Event-ID", first.clone())], 401),
        (vec![("Last-Event-ID", first.clone()), ("Authorization", bearer(&bob))], 403),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = request(server.addr, "GET", "/sse?topic=private/alice", &headers, b"").await;
        assert_eq!(response.status, status);
        assert!(!response.text().contains("two-secret"));
    }
    let alice = hs256(&grant(&[], &["private/*"]));
    let mut resumed = SseClient::connect(
        server.addr,
        "/sse?topic=private/alice",
        &[("Last-Event-ID", &first), ("Authorization", &bearer(&alice))],
    )
    .await;
    assert_eq!(resumed.next_event().await.data, "two-secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_refused_token_is_401_invalid_token_and_counted() {
    let rsa = key_path("rsa.pub");
    let rsa_file = format!("rsa:{}", rsa.display());
    let server = TestServer::start(&[
        "--jwt-key",
        SECRET,
        "--jwt-public-key-file",
        &rsa_file,
        "--jwt-issuer",
        "https://issuer.example",
        "--jwt-audience",
        "crier",
    ])
    .await;
    let good =
        with(grant(&["*"], &["*"]), json!({"iss": "https://issuer.example", "aud": "crier"}));
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let public_pem = std::fs::read(&rsa).unwrap();
    let confused = tokens::sign(
        Algorithm::HS256,
        None,
        &jsonwebtoken::EncodingKey::from_secret(&public_pem).unwrap(),
        &good,
    );
    let other_secret = tokens::sign(
        Algorithm::HS256,
        None,
        &jsonwebtoken::EncodingKey::from_secret(b"another secret of thirty-two bytes").unwrap(),
        &good,
    );
    // One character in the middle of the signature changed: still base64, no longer it.
    let mut tampered = hs256(&good).into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("algorithm", format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), b64(good.clone()))),
        ("algorithm", signed_with("ec", Algorithm::ES256, None, &good)),
        // With an HMAC key configured too, the public key as a secret is just a wrong secret
        // (with only public keys, HS256 is no algorithm the server takes: see the unit tests).
        ("signature", confused),
        ("signature", other_secret),
        ("signature", tampered),
        ("unknown_key", signed_with("rsa", Algorithm::RS256, Some("old"), &good)),
        ("expired", hs256(&with(good.clone(), json!({"exp": now() - 5})))),
        ("not_yet_valid", hs256(&with(good.clone(), json!({"nbf": now() + 300})))),
        ("issuer", hs256(&with(good.clone(), json!({"iss": "https://evil.example"})))),
        ("audience", hs256(&with(good.clone(), json!({"aud": "other"})))),
        ("claims", hs256(&with(good.clone(), json!({"exp": null})))),
        ("malformed", "not.a.jwt".to_owned()),
        ("malformed", "garbage".to_owned()),
        ("too_large", hs256(&with(good.clone(), json!({"pad": "x".repeat(9000)})))),
    ];
    for (reason, token) in &cases {
        for target in
            [format!("/sse?topic=a&token={token}"), format!("/publish?topic=a&token={token}")]
        {
            let method = if target.starts_with("/sse") { "GET" } else { "POST" };
            let response = request(server.addr, method, &target, &[], b"x").await;
            assert_error(&response, 401, "invalid_token");
            assert_eq!(
                response.header("www-authenticate").as_deref(),
                Some("Bearer error=\"invalid_token\""),
                "{reason}"
            );
        }
    }
    // The same tokens, but valid, pass: the refusals are the tokens' faults.
    assert_eq!(publish_with(server.addr, "a", Some(&hs256(&good)), "x").await.status, 200);
    let rs = signed_with("rsa", Algorithm::RS256, Some("rsa"), &good);
    assert_eq!(publish_with(server.addr, "a", Some(&rs), "x").await.status, 200);
    let metrics = server.metrics().await;
    for reason in [
        "algorithm",
        "signature",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "claims",
        "malformed",
        "too_large",
    ] {
        let expected = cases.iter().filter(|(r, _)| *r == reason).count() * 2;
        let series = format!("crier_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&metrics, &series), Some(expected as f64), "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_rs256_es256_and_eddsa_tokens_all_verify_selected_by_kid() {
    let files = format!(
        "rsa:{},ec:{},{}",
        key_path("rsa.pub").display(),
        key_path("ec.pub").display(),
        key_path("ed.pub").display()
    );
    let secret = format!("hmac:{SECRET}");
    let server = TestServer::start(&["--jwt-key", &secret, "--jwt-public-key-file", &files]).await;
    let claims = grant(&["t"], &[]);
    for token in [
        hs256(&claims),
        tokens::sign(
            Algorithm::HS256,
            Some("hmac"),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            &claims,
        ),
        signed_with("rsa", Algorithm::RS256, Some("rsa"), &claims),
        signed_with("rsa", Algorithm::RS256, None, &claims),
        signed_with("ec", Algorithm::ES256, Some("ec"), &claims),
        signed_with("ed", Algorithm::EdDSA, None, &claims),
    ] {
        let response = publish_with(server.addr, "t", Some(&token), "x").await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // A kid names one key: the RSA token under the EC key's id does not verify.
    let misnamed = signed_with("rsa", Algorithm::RS256, Some("ec"), &claims);
    assert_eq!(publish_with(server.addr, "t", Some(&misnamed), "x").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_ends_cleanly_with_crier_expired_when_its_token_does() {
    let server = server(&[]).await;
    let token = hs256(&with(grant(&[], &["private/*"]), json!({"exp": now() + 2})));
    let mut stream = SseClient::connect(
        server.addr,
        "/sse?topic=private/a",
        &[("Authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(stream.status, 200);
    server.wait_subscriptions(1).await;
    let publisher = hs256(&grant(&["*"], &[]));
    publish_with(server.addr, "private/a", Some(&publisher), "before").await;
    assert_eq!(stream.next_event().await.data, "before");
    let expired = stream.next_event().await;
    assert_eq!(expired.kind, "crier.expired");
    assert_eq!(expired.data, r#"{"reason":"token_expired"}"#);
    assert!(stream.read_to_end().await, "a clean end (an eviction cuts the connection)");
    server.wait_subscriptions(0).await;
    // Reconnecting with the expired token is refused, so the client knows to get a new one.
    let again = request(
        server.addr,
        "GET",
        "/sse?topic=private/a",
        &[("Authorization", &bearer(&token))],
        b"",
    )
    .await;
    assert_error(&again, 401, "invalid_token");
}

/// Sends a command and returns its reply, skipping the events that arrive meanwhile.
async fn reply(ws: &mut wsc::Ws, command: serde_json::Value) -> serde_json::Value {
    ws.send(Message::text(command.to_string())).await.unwrap();
    loop {
        let message = wsc::next_json(ws).await;
        if message.get("op").is_some() {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_4001_at_expiry_unless_a_fresh_token_comes_first() {
    let server = server(&[]).await;
    let short = hs256(&with(grant(&[], &["private/*"]), json!({"exp": now() + 2})));
    let mut refreshed =
        wsc::connect(server.addr, &format!("/ws?topic=private/a&token={short}")).await;
    let mut lapsing =
        wsc::connect(server.addr, &format!("/ws?topic=private/a&token={short}")).await;
    // A refused token is an error reply; the connection and its old token stay.
    let bad = reply(&mut refreshed, json!({"op":"auth","token":"nonsense","ref":"r"})).await;
    assert_eq!((bad["error"].as_str(), bad["ref"].as_str()), (Some("invalid_token"), Some("r")));
    let fresh = hs256(&grant(&["private/*"], &["private/*"]));
    let ok = reply(&mut refreshed, json!({"op":"auth","token":fresh})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    // The fresh token's grants apply: this connection may now publish.
    let published =
        reply(&mut refreshed, json!({"op":"publish","topic":"private/a","data":"hi"})).await;
    assert_eq!(published["op"], "ok", "{published}");
    // The lapsing one may not publish, and is closed at its token's exp.
    let refused =
        reply(&mut lapsing, json!({"op":"publish","topic":"private/a","data":"no"})).await;
    assert_eq!(refused["error"], "forbidden", "{refused}");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match wsc::next(&mut lapsing).await {
                Message::Close(frame) => return frame,
                _ => continue,
            }
        }
    })
    .await
    .expect("closed in time");
    let frame = close.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001);
    // Past the first token's exp (the other connection's close says it passed), the refreshed
    // connection still answers.
    let pong = reply(&mut refreshed, json!({"op":"ping","ref":2})).await;
    assert_eq!(pong["op"], "ok");
    wait_until("the 4001 close to be counted", || async {
        metric(&server.metrics().await, "crier_ws_closes_total{code=\"4001\"}") == Some(1.0)
    })
    .await;
    let _ = refreshed.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_websocket_auth_command_says_so() {
    let server = TestServer::start(&[]).await;
    let mut ws = wsc::connect(server.addr, "/ws").await;
    let reply = command(&mut ws, json!({"op":"auth","token":hs256(&grant(&[], &[]))})).await;
    assert_eq!(reply["error"], "bad_command", "{reply}");
    // Development mode: loopback publishes.
    let ok = command(&mut ws, json!({"op":"publish","topic":"t","data":"x"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    ws.send(Message::Close(None)).await.unwrap();
}

/// Sends `POST /publish` from `source` with `X-Forwarded-For: forwarded`.
async fn publish_from(server: SocketAddr, source: &str, forwarded: &str) -> u16 {
    let headers = [("X-Forwarded-For", forwarded)];
    request_from(Some(source), server, "POST", "/publish?topic=t", &headers, b"x").await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_read_only_from_trusted_proxies() {
    let server = TestServer::start(&["--trusted-proxies", "127.0.0.1"]).await;
    // From the trusted proxy, the forwarded client is remote: development mode refuses it.
    assert_eq!(publish_from(server.addr, "127.0.0.1", "203.0.113.5").await, 403);
    // From an untrusted peer the same claim is ignored: the peer itself is the client.
    assert_eq!(publish_from(server.addr, "127.0.0.2", "203.0.113.5").await, 200);
    assert_eq!(publish_from(server.addr, "127.0.0.3", "198.51.100.1, 203.0.113.5").await, 200);
    let nobody = TestServer::start(&["--trusted-proxies", "none"]).await;
    assert_eq!(publish_from(nobody.addr, "127.0.0.1", "203.0.113.5").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_key_files_without_dropping_a_stream() {
    let dir = std::env::temp_dir().join(format!("crier-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("signing.pem");
    std::fs::copy(key_path("ec.pub"), &file).unwrap();
    let node = CrierProcess::spawn(&[
        "--jwt-public-key-file",
        file.to_str().unwrap(),
        "--private-topics",
        "*",
    ])
    .await;
    let claims = grant(&["*"], &["*"]);
    let old = signed_with("ec", Algorithm::ES256, None, &claims);
    let new = signed_with("ec2", Algorithm::ES256, None, &claims);
    let mut stream =
        SseClient::connect(node.addr, "/sse?topic=rotating", &[("Authorization", &bearer(&old))])
            .await;
    assert_eq!(stream.status, 200);
    assert_eq!(publish_with(node.addr, "rotating", Some(&new), "x").await.status, 401);
    std::fs::copy(key_path("ec2.pub"), &file).unwrap();
    node.signal("HUP");
    wait_until("the new key to be taken", || async {
        publish_with(node.addr, "rotating", Some(&new), "after").await.status == 200
    })
    .await;
    assert_eq!(publish_with(node.addr, "rotating", Some(&old), "x").await.status, 401);
    // The stream opened with the old key is still up and gets what the new key published.
    assert_eq!(stream.next_event().await.data, "after");
    // A broken file on the next SIGHUP leaves the keys in use alone.
    std::fs::write(&file, "not a key").unwrap();
    node.signal("HUP");
    let failed = "crier_credential_reloads_total{outcome=\"error\"}";
    wait_until("the failed reload", || async {
        let response = request(node.addr, "GET", "/metrics", &[], b"").await;
        metric(&response.text(), failed) == Some(1.0)
    })
    .await;
    let response = request(node.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(
        metric(&response.text(), "crier_credential_reloads_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(publish_with(node.addr, "rotating", Some(&new), "still").await.status, 200);
    assert_eq!(stream.next_event().await.data, "still");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_with_reason_and_address_never_the_token() {
    let node = CrierProcess::spawn_logging("debug", &["--jwt-key", SECRET]).await;
    let expired = hs256(&with(grant(&["*"], &["*"]), json!({"exp": now() - 5})));
    let cookie = format!("crier_token={expired}");
    let target = format!("/sse?topic=t&token={expired}");
    assert_eq!(request(node.addr, "GET", &target, &[], b"").await.status, 401);
    assert_eq!(publish_with(node.addr, "t", Some(&expired), "x").await.status, 401);
    let with_cookie = request(node.addr, "GET", "/sse?topic=t", &[("Cookie", &cookie)], b"").await;
    assert_eq!(with_cookie.status, 401);
    wait_until("the refusals to be logged", || async {
        node.log.lock().unwrap().iter().filter(|l| l.contains("token refused")).count() >= 3
    })
    .await;
    let log = node.log.lock().unwrap().clone();
    let refusal = log.iter().find(|l| l.contains("token refused")).unwrap();
    assert!(refusal.contains("expired") && refusal.contains("127.0.0.1"), "{refusal}");
    let signature = expired.rsplit('.').next().unwrap();
    for line in &log {
        assert!(!line.contains(signature), "a token in the log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hmac_secret_read_from_a_file_rotates_on_sighup() {
    let dir = std::env::temp_dir().join(format!("crier-secret-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    // As `echo` writes it: the final newline is not part of the secret.
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let path = file.to_str().unwrap();
    let node = CrierProcess::spawn(&["--jwt-key-file", path]).await;
    let claims = grant(&["*"], &[]);
    let old = hs256(&claims);
    let next_secret = "the-next-secret-of-32-bytes-or-more";
    let next = tokens::sign(
        Algorithm::HS256,
        None,
        &jsonwebtoken::EncodingKey::from_secret(next_secret.as_bytes()).unwrap(),
        &claims,
    );
    assert_eq!(publish_with(node.addr, "t", Some(&old), "x").await.status, 200);
    assert_eq!(publish_with(node.addr, "t", None, "x").await.status, 401, "a key is configured");
    assert_eq!(publish_with(node.addr, "t", Some(&next), "x").await.status, 401);
    std::fs::write(&file, next_secret).unwrap();
    node.signal("HUP");
    wait_until("the new secret to be taken", || async {
        publish_with(node.addr, "t", Some(&next), "x").await.status == 200
    })
    .await;
    assert_eq!(publish_with(node.addr, "t", Some(&old), "x").await.status, 401);
    // The secret is in neither the arguments nor the environment.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(next_secret));
    // A short secret does not start.
    std::fs::write(&file, "short\n").unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_crier"))
        .args(["--listen", "127.0.0.1:0", "--jwt-key-file", path])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(71));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least 32 bytes"));
    std::fs::remove_dir_all(&dir).unwrap();
}

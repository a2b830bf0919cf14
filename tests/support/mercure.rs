//! Mercure clients for the tests: tokens signed with the hub's test key, form publishes, and
//! subscriptions read with the raw SSE client.

use std::net::SocketAddr;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::{HttpResponse, SseClient, TestServer, request, tokens, urlencode};

/// The HMAC key of the test hubs (the reference hub's documented default).
pub const KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";

/// The flags of a hub with `KEY` for publishers and subscribers.
pub const HUB: [&str; 4] =
    ["--mercure-publisher-jwt-key", KEY, "--mercure-subscriber-jwt-key", KEY];

/// A hub in this process with [`HUB`]'s keys and `extra` flags.
pub async fn hub(extra: &[&str]) -> TestServer {
    let mut args = HUB.to_vec();
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

/// The `Authorization` header value carrying `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// An HS256 token with `claims` signed with [`KEY`].
pub fn token(claims: &Value) -> String {
    tokens::sign(Algorithm::HS256, None, &EncodingKey::from_secret(KEY.as_bytes()).unwrap(), claims)
}

/// A publisher's token for every topic.
pub fn publisher() -> String {
    token(&json!({"mercure": {"publish": ["*"]}}))
}

/// A subscriber's token whose `mercure.subscribe` is `selectors`.
pub fn subscriber(selectors: &[&str]) -> String {
    token(&json!({"mercure": {"subscribe": selectors}}))
}

/// `POST /.well-known/mercure` with form `fields` and `headers`.
pub async fn post(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    fields: &[(&str, &str)],
) -> HttpResponse {
    let body: Vec<String> =
        fields.iter().map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v))).collect();
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    request(addr, "POST", "/.well-known/mercure", &headers, body.join("&").as_bytes()).await
}

/// Publishes with a publisher's token and asserts 200; returns the id.
pub async fn publish(addr: SocketAddr, fields: &[(&str, &str)]) -> String {
    let bearer = format!("Bearer {}", publisher());
    let response = post(addr, &[("Authorization", &bearer)], fields).await;
    assert_eq!(response.status, 200, "publish failed: {}", response.text());
    assert!(response.header("content-type").unwrap().starts_with("text/plain"));
    response.text()
}

/// The target of a subscription to `topics`, with `extra` query parameters.
pub fn target(topics: &[&str], extra: &[(&str, &str)]) -> String {
    let params: Vec<String> = topics
        .iter()
        .map(|t| ("topic", *t))
        .chain(extra.iter().copied())
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    format!("/.well-known/mercure?{}", params.join("&"))
}

/// Subscribes to `topics` with `headers`.
pub async fn subscribe(addr: SocketAddr, topics: &[&str], headers: &[(&str, &str)]) -> SseClient {
    SseClient::connect(addr, &target(topics, &[]), headers).await
}

/// `GET path` with `Authorization: Bearer token` (the subscriptions API).
pub async fn get(addr: SocketAddr, path: &str, token_header: &str) -> HttpResponse {
    request(addr, "GET", path, &[("Authorization", token_header)], b"").await
}

/// Publishes a private update of `data` to `topic`; returns its id.
pub async fn publish_private(addr: SocketAddr, topic: &str, data: &str) -> String {
    publish(addr, &[("topic", topic), ("data", data), ("private", "on")]).await
}

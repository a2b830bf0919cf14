//! One admission for every door: a stream request refused on the fast path (the first request
//! of a plain connection) gets the very answer the same request gets through hyper (a later
//! request of a keep-alive connection), because both call the same admission and render the
//! refusal the same way; and each refusal is decided once, so one request never spends a
//! second token of its address's rate.

mod support;

use std::collections::BTreeSet;

use support::{HttpResponse, TestServer, connect_from, parse_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "admission-test-secret-of-32-bytes!";

/// Sends a request on `stream` and reads one `Content-Length` response, leaving the
/// connection open.
async fn exchange(stream: &mut TcpStream, target: &str) -> HttpResponse {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: crier\r\nOrigin: https://app.example\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .expect("a refusal has a Content-Length");
            if raw.len() >= end + 4 + length {
                return parse_response(&raw[..end + 4 + length]);
            }
        }
        let read = tokio::time::timeout(support::WAIT, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(read > 0, "closed before answering: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..read]);
    }
}

/// The status, the body and the headers (but the date) of an answer.
fn answer(response: &HttpResponse) -> (u16, String, BTreeSet<String>) {
    let headers = response
        .head
        .lines()
        .skip(1)
        .map(str::to_ascii_lowercase)
        .filter(|line| !line.starts_with("date:"))
        .collect();
    (response.status, response.text(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_and_hyper_refuse_a_stream_with_the_same_answer() {
    let server = TestServer::start(&[
        "--new-streams-per-sec",
        "1",
        "--cors-origins",
        "https://app.example",
        "--jwt-key",
        KEY,
    ])
    .await;
    // In order, from one address: a topic name that is refused (the stream's one token of
    // this second is taken, and the answer is still the 400, not a 429), a token that is
    // refused (checked before the rate), and a stream over the rate.
    let targets = ["/sse?topic=a%20b", "/sse?topic=a&token=not-a-token", "/sse?topic=a"];

    // Each request the first of its own connection: the fast path answers.
    let mut fast = Vec::new();
    for target in targets {
        let mut stream = connect_from("127.0.0.2", server.addr).await;
        fast.push(answer(&exchange(&mut stream, target).await));
        // The connection goes on with hyper for what follows.
        let next = exchange(&mut stream, "/healthz").await;
        assert_eq!(next.status, 200, "{}", next.text());
    }
    // The same requests after another on one connection: hyper answers.
    let mut through_hyper = Vec::new();
    let mut stream = connect_from("127.0.0.3", server.addr).await;
    assert_eq!(exchange(&mut stream, "/healthz").await.status, 200);
    for target in targets {
        through_hyper.push(answer(&exchange(&mut stream, target).await));
    }

    assert_eq!(fast, through_hyper);
    let statuses: Vec<u16> = fast.iter().map(|(status, ..)| *status).collect();
    assert_eq!(statuses, [400, 401, 429], "{fast:#?}");
    let [bad_topic, bad_token, over_rate] = &fast[..] else { unreachable!() };
    assert!(bad_topic.1.contains("\"bad_topic\""), "{bad_topic:?}");
    assert!(
        bad_token.2.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{bad_token:?}"
    );
    assert!(over_rate.2.contains("retry-after: 1"), "{over_rate:?}");
    for (_, _, headers) in &fast {
        assert!(
            headers.contains("access-control-allow-origin: https://app.example"),
            "{headers:?}"
        );
    }
    let metrics = server.metrics().await;
    let counted =
        support::metric(&metrics, r#"crier_http_requests_total{route="sse",status="429"}"#);
    assert_eq!(counted, Some(2.0), "each refusal is counted once:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_path_stream_carries_its_cors_headers() {
    let server = TestServer::start(&["--cors-origins", "https://app.example"]).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let request = "GET /sse?topic=a HTTP/1.1\r\nHost: crier\r\nOrigin: https://app.example\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(support::WAIT, stream.read(&mut chunk))
            .await
            .expect("a head in time")
            .expect("read");
        assert!(read > 0, "closed");
        raw.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "access-control-allow-origin: https://app.example",
        "vary: origin",
    ] {
        assert!(head.contains(&format!("{line}\r\n")), "{line} missing from {head}");
    }
}

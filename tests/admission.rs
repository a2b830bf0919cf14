//! One admission for every door: a stream request refused on the fast path (the first request
//! of a plain connection) gets the very answer the same request gets through hyper (a later
//! request of a keep-alive connection), because both call the same admission and render the
//! refusal the same way; and each refusal is decided once, so one request never spends a
//! second token of its address's rate.

mod support;

use std::collections::BTreeSet;

use support::{HttpResponse, SseClient, TestServer, connect_from, parse_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "admission-test-secret-of-32-bytes!";

/// Sends a request on `stream` and reads one `Content-Length` response, leaving the
/// connection open.
async fn exchange(stream: &mut TcpStream, target: &str) -> HttpResponse {
    exchange_accepting(stream, target, "text/event-stream").await
}

async fn exchange_accepting(stream: &mut TcpStream, target: &str, accept: &str) -> HttpResponse {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: crier\r\nOrigin: https://app.example\r\nAccept: {accept}\r\n\r\n"
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
        "2",
        "--cors-origins",
        "https://app.example",
        "--jwt-key",
        KEY,
    ])
    .await;
    // In order, from one address whose first of two streams this second is open already: a
    // resume id that is refused once admitted (the second stream's token is taken, and the
    // answer is still the 400, not a 429), a topic name that is refused (before the rate), a
    // token that is refused, and a stream over the rate.
    let targets = [
        "/sse?topic=a&last_event_id=not-an-id",
        "/sse?topic=a%20b",
        "/sse?topic=a&token=not-a-token",
        "/sse?topic=a",
    ];
    let mut answers = Vec::new();
    for (source, fast) in [("127.0.0.2", true), ("127.0.0.3", false)] {
        let stream = connect_from(source, server.addr).await;
        let open = SseClient::on_stream(stream, server.addr, "/sse?topic=a", &[]).await;
        assert_eq!(open.status, 200, "{}", open.head);
        let mut answered = Vec::new();
        if fast {
            // Each request the first of its own connection: the fast path answers, and the
            // connection goes on with hyper for what follows.
            for target in targets {
                let mut stream = connect_from(source, server.addr).await;
                answered.push(answer(&exchange(&mut stream, target).await));
                let next = exchange(&mut stream, "/healthz").await;
                assert_eq!(next.status, 200, "{}", next.text());
            }
        } else {
            // The same requests after another on one connection: hyper answers.
            let mut stream = connect_from(source, server.addr).await;
            assert_eq!(exchange(&mut stream, "/healthz").await.status, 200);
            for target in targets {
                answered.push(answer(&exchange(&mut stream, target).await));
            }
        }
        answers.push(answered);
    }

    // The retry a soft refusal names is jittered: compare the answers without its figures.
    let unjittered = |answers: &[(u16, String, std::collections::BTreeSet<String>)]| {
        let digits = |text: &str| {
            let mut out = text.replace(|c: char| c.is_ascii_digit(), "#");
            while out.contains("##") {
                out = out.replace("##", "#");
            }
            out
        };
        answers
            .iter()
            .map(|(status, body, headers)| {
                (*status, digits(body), headers.iter().map(|h| digits(h)).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
    };
    let (fast, through_hyper) = (&answers[0], &answers[1]);
    assert_eq!(unjittered(fast), unjittered(through_hyper));
    let statuses: Vec<u16> = fast.iter().map(|(status, ..)| *status).collect();
    // A browser's stream over the rate is refused so that it retries: a 200 stream that names
    // the refusal and when to come back, and ends.
    assert_eq!(statuses, [400, 400, 401, 200], "{fast:#?}");
    let [bad_id, bad_topic, bad_token, over_rate] = &fast[..] else { unreachable!() };
    assert!(bad_id.1.contains("\"bad_last_event_id\""), "{bad_id:?}");
    assert!(bad_topic.1.contains("\"bad_topic\""), "{bad_topic:?}");
    assert!(
        bad_token.2.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{bad_token:?}"
    );
    assert!(over_rate.2.contains("content-type: text/event-stream"), "{over_rate:?}");
    let retry: u64 = over_rate
        .1
        .strip_prefix("retry: ")
        .and_then(|rest| rest.split('\n').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("a retry: {over_rate:?}"));
    assert!((1..=2000).contains(&retry), "the wait, with up to a second of jitter: {retry}");
    let event = over_rate.1.lines().skip(1).collect::<Vec<_>>();
    assert_eq!(event[0], "event: crier.refused", "{over_rate:?}");
    let refusal: serde_json::Value =
        serde_json::from_str(event[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(refusal["error"], "rate_limited");
    assert_eq!(refusal["retry_after_ms"], retry);
    for (_, _, headers) in fast {
        assert!(
            headers.contains("access-control-allow-origin: https://app.example"),
            "{headers:?}"
        );
    }
    // Any other client keeps the 429 and its Retry-After, on either path.
    let mut hard = Vec::new();
    for fast in [true, false] {
        let mut stream = connect_from("127.0.0.2", server.addr).await;
        if !fast {
            assert_eq!(exchange(&mut stream, "/healthz").await.status, 200);
        }
        hard.push(answer(&exchange_accepting(&mut stream, "/sse?topic=a", "*/*").await));
    }
    for (status, _, headers) in &hard {
        assert_eq!(*status, 429, "{hard:?}");
        assert!(headers.contains("retry-after: 1"), "{hard:?}");
    }
    let metrics = server.metrics().await;
    let counted = support::metric(&metrics, r#"crier_rejections_total{reason="stream_rate"}"#);
    assert_eq!(counted, Some(4.0), "each refusal is counted once, soft or not:\n{metrics}");
    let soft = support::metric(&metrics, r#"crier_soft_refusals_total{transport="sse"}"#);
    assert_eq!(soft, Some(2.0), "{metrics}");
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

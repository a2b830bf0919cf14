//! The publish fast path: a plain HTTP/1.1 connection of publishes is served without hyper,
//! pipelined requests answered in order; its answers, refusals, timeouts and the connection's
//! life are those of hyper's path, and the first request that is not a publish hands the
//! connection to hyper with nothing lost.

mod support;

use std::time::Duration;

use support::{HttpResponse, SseClient, TestServer, metric, parse_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn publish_request(target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {target} HTTP/1.1\r\nHost: x\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads `n` whole responses (each with `Content-Length`) from `stream`, in order.
async fn read_responses(stream: &mut TcpStream, n: usize) -> Vec<HttpResponse> {
    let mut raw = Vec::new();
    let mut responses = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while responses.len() < n {
        if let Some(len) = whole_response_len(&raw) {
            responses.push(parse_response(&raw[..len]));
            raw.drain(..len);
            continue;
        }
        let read = timeout(support::WAIT, stream.read(&mut chunk)).await.expect("answers in time");
        let read = read.expect("read");
        assert!(read > 0, "closed after {} answers of {n}", responses.len());
        raw.extend_from_slice(&chunk[..read]);
    }
    assert!(raw.is_empty(), "more than {n} answers");
    responses
}

fn whole_response_len(raw: &[u8]) -> Option<usize> {
    let head = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let parsed = parse_response(&raw[..head]);
    let body: usize = parsed.header("content-length").expect("a length").parse().unwrap();
    (raw.len() >= head + body).then_some(head + body)
}

async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = timeout(support::WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

fn published_count(metrics: &str, status: u16) -> f64 {
    let series = format!(r#"crier_http_requests_total{{route="publish",status="{status}"}}"#);
    metric(metrics, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_answered_in_order_and_delivered_in_order() {
    let server = TestServer::start(&["--history", "1000"]).await;
    let mut subscriber = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;

    const COUNT: usize = 300;
    let mut pipelined = Vec::new();
    for i in 0..COUNT {
        pipelined.extend(publish_request("/publish?topic=t", &[], i.to_string().as_bytes()));
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // In pieces cut anywhere: heads and bodies split across reads.
    for piece in pipelined.chunks(1000) {
        stream.write_all(piece).await.unwrap();
    }
    let answers = read_responses(&mut stream, COUNT).await;
    let mut ids = Vec::new();
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("content-type").as_deref(), Some("application/json"));
        assert!(answer.header("date").is_some_and(|date| date.ends_with(" GMT")));
        assert_eq!(answer.json()["topic"], "t");
        ids.push(answer.json()["id"].as_str().unwrap().to_owned());
    }
    let events = subscriber.events(COUNT).await;
    let delivered: Vec<_> =
        events.iter().map(|e| (e.last_event_id.clone(), e.data.clone())).collect();
    let expected: Vec<_> = ids.into_iter().zip((0..COUNT).map(|i| i.to_string())).collect();
    assert_eq!(delivered, expected, "each publish's id and data, in the order sent");
    assert_eq!(published_count(&server.metrics().await, 200), COUNT as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_hyper_at_the_first_request_that_is_not_a_publish() {
    let server = TestServer::start(&[]).await;
    let mut subscriber = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;

    let mut pipelined = publish_request("/publish?topic=t", &[], b"fast");
    pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    pipelined.extend(publish_request("/publish?topic=t", &[], b"through hyper"));
    pipelined.extend_from_slice(
        b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          7\r\nchunked\r\n0\r\n\r\n",
    );
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let answers = read_responses(&mut stream, 4).await;
    let statuses: Vec<_> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(answers[1].json()["status"], "ok");
    let data: Vec<_> = subscriber.events(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(data, ["fast", "through hyper", "chunked"]);

    // A first request with a chunked body, and one with a body larger than the fast path
    // holds, are hyper's from the start.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nfirst\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(read_responses(&mut stream, 1).await[0].status, 200);
    let large = "y".repeat(20 << 10);
    let batch = format!("{{\"topic\":\"t\",\"data\":\"{large}\"}}\n").repeat(5);
    let request =
        publish_request("/publish", &[("Content-Type", "application/x-ndjson")], batch.as_bytes());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = &read_responses(&mut stream, 1).await[0];
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["published"], 5, "{}", answer.text());
    let events = subscriber.events(6).await;
    assert_eq!(events[0].data, "first");
    assert!(events[1..].iter().all(|event| event.data == large));
    assert_eq!(published_count(&server.metrics().await, 200), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_answered_and_leave_the_connection_serving() {
    let server = TestServer::start(&["--max-event-bytes", "100"]).await;
    let mut subscriber = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.wait_subscriptions(1).await;

    let mut pipelined = Vec::new();
    // Refused by admission: the body is skipped.
    pipelined.extend(publish_request("/publish?topic=%20bad", &[], b"refused"));
    // Refused by the publish handler.
    pipelined.extend(publish_request("/publish", &[], b"no topic"));
    pipelined.extend(publish_request("/publish?topic=t", &[], &[b'z'; 101]));
    pipelined.extend(publish_request("/publish?topic=t", &[], &[0xff, 0xfe]));
    pipelined.extend(publish_request("/publish?topic=t", &[], b"accepted"));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let answers = read_responses(&mut stream, 5).await;
    let refused: Vec<_> = answers[..4]
        .iter()
        .map(|a| {
            assert_eq!(a.header("content-type").as_deref(), Some("application/json"));
            (a.status, a.json()["error"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        refused,
        [
            (400, "bad_topic".to_owned()),
            (400, "bad_topic".to_owned()),
            (413, "too_large".to_owned()),
            (400, "bad_data".to_owned()),
        ]
    );
    assert_eq!(answers[4].status, 200, "{}", answers[4].text());
    assert_eq!(subscriber.next_event().await.data, "accepted", "only the accepted publish");
    let metrics = server.metrics().await;
    assert_eq!(published_count(&metrics, 400), 3.0);
    assert_eq!(published_count(&metrics, 413), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_bodies_and_heads_are_answered_408_and_closed_and_close_is_honoured() {
    let server = TestServer::start(&[
        "--body-read-timeout",
        "300ms",
        "--header-read-timeout",
        "300ms",
        "--idle-timeout",
        "60s",
    ])
    .await;
    let mut request = publish_request("/publish?topic=t", &[], b"0123456789");
    request.truncate(request.len() - 5);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = &read_responses(&mut stream, 1).await[0];
    assert_eq!((answer.status, answer.json()["error"].as_str()), (408, Some("request_timeout")));
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed(&mut stream).await;

    // A second head that stops half way.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = publish_request("/publish?topic=t", &[], b"whole");
    request.extend_from_slice(b"POST /publish?topic=t HTTP/1.1\r\nHo");
    stream.write_all(&request).await.unwrap();
    let answers = read_responses(&mut stream, 2).await;
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[1].status, 408, "{}", answers[1].text());
    assert_closed(&mut stream).await;

    // The client's `Connection: close`.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = publish_request("/publish?topic=t", &[("Connection", "close")], b"last");
    stream.write_all(&request).await.unwrap();
    let answer = &read_responses(&mut stream, 1).await[0];
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert_closed(&mut stream).await;

    // An idle connection between publishes stays open (`--idle-timeout` is a minute).
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&publish_request("/publish?topic=t", &[], b"one")).await.unwrap();
    assert_eq!(read_responses(&mut stream, 1).await[0].status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(&publish_request("/publish?topic=t", &[], b"two")).await.unwrap();
    assert_eq!(read_responses(&mut stream, 1).await[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_hypers_header_for_header() {
    let server = TestServer::start(&["--cors-origins", "https://app.example"]).await;
    let with_key = |key| [("Origin", "https://app.example"), ("Idempotency-Key", key)];
    let fast = |key| async move {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&publish_request("/publish?topic=t", &with_key(key), b"x")).await.unwrap();
        read_responses(&mut stream, 1).await.remove(0)
    };
    let through_hyper = |key| async move {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        pipelined.extend(publish_request("/publish?topic=t", &with_key(key), b"x"));
        stream.write_all(&pipelined).await.unwrap();
        read_responses(&mut stream, 2).await.remove(1)
    };
    let names = |answer: &HttpResponse| {
        let mut names: Vec<_> = answer
            .head
            .lines()
            .skip(1)
            .filter_map(|line| Some(line.split_once(':')?.0.to_ascii_lowercase()))
            .collect();
        names.sort();
        names
    };
    let (first_fast, first_hyper) = (fast("k1").await, through_hyper("k2").await);
    assert_eq!(names(&first_fast), names(&first_hyper));
    assert_eq!(first_fast.head.lines().next(), first_hyper.head.lines().next());
    assert_eq!(
        first_fast.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    // Each path replays the other's key.
    let (again_fast, again_hyper) = (fast("k2").await, through_hyper("k1").await);
    assert_eq!(names(&again_fast), names(&again_hyper));
    assert_eq!(again_fast.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again_fast.json()["id"], first_hyper.json()["id"]);
    assert_eq!(again_hyper.json()["id"], first_fast.json()["id"]);
}

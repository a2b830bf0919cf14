//! The SSE edge over real sockets: headers, wire-exact frames for every field case, line
//! endings, binary data, several topics on one stream, heartbeats.

mod support;

use support::{SseClient, TestServer, publish_ok, whatwg};

async fn subscribe(server: &TestServer, query: &str) -> SseClient {
    let mut client = SseClient::connect(server.addr, &format!("/sse?{query}"), &[]).await;
    assert_eq!(client.status, 200, "{}", client.head);
    client.read_body_len(PREFACE.len()).await;
    client
}

/// The same stream served by hyper: the connection carried another request first.
async fn subscribe_via_hyper(server: &TestServer, query: &str) -> SseClient {
    let mut client =
        SseClient::connect_after_request(server.addr, &format!("/sse?{query}"), &[]).await;
    assert_eq!(client.status, 200, "{}", client.head);
    client.read_body_len(PREFACE.len()).await;
    client
}

const PREFACE: &[u8] = b"retry: 2000\n: crier\n\n";

/// Publishes, then reads exactly the expected frame (with the id the publish returned).
async fn assert_frame(
    server: &TestServer,
    client: &mut SseClient,
    event: Option<&str>,
    data: &[u8],
    content_type: Option<&str>,
    expected_after_id: &str,
) {
    let before = client.body.len();
    let id = publish_ok(server.addr, "t", event, data, content_type).await;
    let expected = format!("id: {id}\n{expected_after_id}");
    let body = client.read_body_len(before + expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&body[before..]), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_and_preface_are_exact() {
    let server = TestServer::start(&[]).await;
    for client in
        [subscribe(&server, "topic=t").await, subscribe_via_hyper(&server, "topic=t").await]
    {
        assert!(client.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", client.head);
        assert_eq!(client.header("content-type").as_deref(), Some("text/event-stream"));
        assert_eq!(client.header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(client.header("x-accel-buffering").as_deref(), Some("no"));
        assert_eq!(client.header("transfer-encoding").as_deref(), Some("chunked"));
        assert!(client.header("date").is_some());
        assert_eq!(client.body, PREFACE);
    }
}

/// Event name, data, content type, and the expected frame after its `id:` line.
type FieldCase = (Option<&'static str>, &'static [u8], Option<&'static str>, &'static str);

const FIELD_CASES: &[FieldCase] = &[
    (None, b"hello", None, "data: hello\n\n"),
    (Some("tick"), b"hello", None, "event: tick\ndata: hello\n\n"),
    (None, b"", None, "data: \n\n"),
    (None, b" leading space", None, "data:  leading space\n\n"),
    (None, b"trailing newline\n", None, "data: trailing newline\ndata: \n\n"),
    (None, b"data: looks like a field", None, "data: data: looks like a field\n\n"),
    (None, b":colon first", None, "data: :colon first\n\n"),
    (None, "ünïcödé ✓".as_bytes(), None, "data: ünïcödé ✓\n\n"),
    (
        Some("bin"),
        &[0, 1, 2, 253, 254, 255],
        Some("application/octet-stream"),
        "event: bin\ndata: AAEC/f7/\n\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_case_is_wire_exact() {
    let server = TestServer::start(&[]).await;
    let mut fast = subscribe(&server, "topic=t").await;
    let mut via_hyper = subscribe_via_hyper(&server, "topic=t").await;
    for &(event, data, content_type, expected) in FIELD_CASES {
        let fast_before = fast.body.len();
        let before = via_hyper.body.len();
        let id = publish_ok(server.addr, "t", event, data, content_type).await;
        let expected = format!("id: {id}\n{expected}");
        for (client, before) in [(&mut fast, fast_before), (&mut via_hyper, before)] {
            let body = client.read_body_len(before + expected.len()).await;
            assert_eq!(String::from_utf8_lossy(&body[before..]), expected);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_data_in_all_three_line_ending_forms() {
    let server = TestServer::start(&[]).await;
    let mut c = subscribe(&server, "topic=t").await;
    for data in ["one\ntwo\nthree", "one\r\ntwo\r\nthree", "one\rtwo\rthree", "one\r\ntwo\nthree"] {
        assert_frame(
            &server,
            &mut c,
            None,
            data.as_bytes(),
            None,
            "data: one\ndata: two\ndata: three\n\n",
        )
        .await;
    }
    // A CR right before a CRLF is two breaks, and blank lines survive.
    assert_frame(
        &server,
        &mut c,
        None,
        b"a\r\r\nb\n\nc",
        None,
        "data: a\ndata: \ndata: b\ndata: \ndata: c\n\n",
    )
    .await;
    let events = whatwg::parse(&c.body);
    assert_eq!(events[0].data, "one\ntwo\nthree");
    assert!(events.iter().take(4).all(|e| e.data == "one\ntwo\nthree"));
    assert_eq!(events[4].data, "a\n\nb\n\nc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_topic_ids_are_the_publish_ids_and_increase() {
    let server = TestServer::start(&[]).await;
    let mut c = subscribe(&server, "topic=t").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(server.publish("t", &i.to_string()).await);
    }
    let events = c.events(20).await;
    for (i, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(event.data, i.to_string());
        assert_eq!(&event.last_event_id, id);
        assert_eq!(event.kind, "message");
    }
    let seqs: Vec<u64> =
        ids.iter().map(|id| id.rsplit('-').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let epochs: std::collections::HashSet<_> =
        ids.iter().map(|id| id.split('-').next().unwrap()).collect();
    assert_eq!(epochs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_share_one_stream_with_a_cursor() {
    let server = TestServer::start(&[]).await;
    let a0 = server.publish("a", "before").await;
    let mut c = subscribe(&server, "topic=b&topic=a").await;
    let a1 = server.publish("a", "a1").await;
    let b1 = server.publish("b", "b1").await;
    server.publish("other", "not subscribed").await;
    let a2 = server.publish("a", "a2").await;
    let events = c.events(3).await;
    assert_eq!(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["a1", "b1", "a2"]);
    // Cursor positions follow the canonical (sorted) topic order: a, then b. Each topic has
    // its own epoch: b's position before its first event is 0 in b's epoch.
    assert!(a0.ends_with("-1"));
    let b0 = format!("{}-0", b1.split('-').next().unwrap());
    assert_eq!(events[0].last_event_id, format!("{a1},{b0}"));
    assert_eq!(events[1].last_event_id, format!("{a1},{b1}"));
    assert_eq!(events[2].last_event_id, format!("{a2},{b1}"));
    // The frame body after the cursor line is the event's own.
    let text = String::from_utf8_lossy(&c.body).into_owned();
    assert!(text.ends_with(&format!("id: {a2},{b1}\ndata: a2\n\n")), "{text}");
    assert!(!text.contains("not subscribed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_comments_fill_quiet_periods_only() {
    let server = TestServer::start(&["--heartbeat", "200ms"]).await;
    let mut c = subscribe(&server, "topic=t").await;
    let opened = c.chunk_ends.last().map(|&(_, at)| at).unwrap();
    c.read_body_until(|b| b.ends_with(b": heartbeat\n\n")).await;
    assert_eq!(String::from_utf8_lossy(&c.body), "retry: 2000\n: crier\n\n: heartbeat\n\n");
    let first_heartbeat = c.chunk_ends.last().map(|&(_, at)| at).unwrap();
    assert!(first_heartbeat - opened >= std::time::Duration::from_millis(150), "too early");
    // Events 50 ms apart keep the stream busy; then it goes quiet again. The stream is read
    // concurrently so each chunk's arrival time is close to when it was written.
    let reader = tokio::spawn(async move {
        c.events(10).await;
        let events_end = c.body.len();
        c.read_body_until(|b| b.len() > events_end && b.ends_with(b": heartbeat\n\n")).await;
        c
    });
    for i in 0..10 {
        server.publish("t", &i.to_string()).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let c = reader.await.unwrap();
    // Every heartbeat follows a quiet interval: whatever the publisher's pace was, nothing was
    // written in the ~200 ms before it.
    let heartbeat = b": heartbeat\n\n";
    for pair in c.chunk_ends.windows(2) {
        let ((prev_end, prev_at), (end, at)) = (pair[0], pair[1]);
        if &c.body[prev_end..end] == heartbeat {
            assert!(
                at - prev_at >= std::time::Duration::from_millis(150),
                "heartbeat after {:?}",
                at - prev_at
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_streams_too() {
    use http_body_util::BodyExt;
    let server = TestServer::start(&[]).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/sse?topic=h2", server.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.expect("h2 response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut received = Vec::new();
    let id = server.publish("h2", "over h2").await;
    let expected = format!("retry: 2000\n: crier\n\nid: {id}\ndata: over h2\n\n");
    tokio::time::timeout(support::WAIT, async {
        while received.len() < expected.len() {
            let frame = body.frame().await.expect("stream open").expect("frame");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("h2 data in time");
    assert_eq!(String::from_utf8_lossy(&received), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_delay_gathers_a_busy_streams_events_into_one_write() {
    let server = TestServer::start(&["--write-delay", "400ms", "--writes-per-sec", "0"]).await;
    let mut c = subscribe(&server, "topic=t").await;
    // The stream was idle for longer than the delay: the first event goes out at once.
    server.publish("t", "first").await;
    c.next_event().await;
    let (first_end, first_at) = *c.chunk_ends.last().unwrap();
    // These follow within the delay: they wait for it, then leave in one write.
    server.publish("t", "second").await;
    server.publish("t", "third").await;
    let events = c.events(2).await;
    assert_eq!(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["second", "third"]);
    let later: Vec<_> = c.chunk_ends.iter().filter(|(end, _)| *end > first_end).collect();
    assert_eq!(later.len(), 1, "second and third share one chunk: {:?}", c.chunk_ends);
    let waited = later[0].1 - first_at;
    assert!(
        waited >= std::time::Duration::from_millis(350),
        "written after {waited:?}, before the delay"
    );
}

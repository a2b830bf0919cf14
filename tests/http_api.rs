//! The HTTP API over real sockets: publish answers, every 4xx with its JSON error body,
//! health, readiness and metrics exposition.

mod support;

use support::{SseClient, TestServer, metric, publish, request, wait_until};

fn assert_error(response: &support::HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    assert!(response.text().ends_with("}\n"), "a JSON answer ends its line");
    let json = response.json();
    assert_eq!(json["error"], code, "{json}");
    assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_topic_and_id_in_order() {
    let server = TestServer::start(&[]).await;
    let response = publish(server.addr, "news/eu:1", Some("breaking"), b"hi", None).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    let text = response.text();
    let id = response.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(text, format!("{{\"topic\":\"news/eu:1\",\"id\":\"{id}\"}}\n"));
    let next = publish(server.addr, "news/eu:1", None, b"again", None).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.rsplit_once('-').unwrap().1, "1");
    assert_eq!(next.rsplit_once('-').unwrap().1, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topics_and_event_names_are_400() {
    let server = TestServer::start(&[]).await;
    let long = "x".repeat(201);
    for target in [
        "/publish",
        "/publish?topic=",
        "/publish?topic=a%20b",
        "/publish?topic=caf%C3%A9",
        &format!("/publish?topic={long}"),
        "/publish?topic=a&topic=b",
    ] {
        assert_error(&request(server.addr, "POST", target, &[], b"x").await, 400, "bad_topic");
    }
    for target in [
        "/publish?topic=a&event=",
        "/publish?topic=a&event=has%20space",
        "/publish?topic=a&event=crier.gap",
        "/publish?topic=a&event=line%0Abreak",
    ] {
        assert_error(&request(server.addr, "POST", target, &[], b"x").await, 400, "bad_event_name");
    }
    for target in ["/sse", "/sse?topic=a%20b", "/sse?topic=ok&topic=bad!"] {
        assert_error(&request(server.addr, "GET", target, &[], b"").await, 400, "bad_topic");
    }
    let too_many: String = (0..65).map(|i| format!("topic=t{i}&")).collect();
    assert_error(
        &request(server.addr, "GET", &format!("/sse?{too_many}"), &[], b"").await,
        400,
        "too_many_topics",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_is_400_but_binary_is_accepted() {
    let server = TestServer::start(&[]).await;
    assert_error(&publish(server.addr, "t", None, &[0xff, 0xfe], None).await, 400, "bad_data");
    assert_eq!(
        publish(server.addr, "t", None, &[0xff, 0xfe], Some("application/octet-stream"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_413_declared_or_streamed() {
    let server = TestServer::start(&["--max-event-bytes", "1KiB"]).await;
    assert_eq!(publish(server.addr, "t", None, &[b'x'; 1024], None).await.status, 200);
    assert_error(&publish(server.addr, "t", None, &[b'x'; 1025], None).await, 413, "too_large");

    // Without Content-Length: the body is cut off at the limit while streaming.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    // One write: the server may answer (and close) once the limit is passed, and a client still
    // writing then would get a broken pipe instead of the answer.
    let mut request = head.as_bytes().to_vec();
    for _ in 0..3 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(support::WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    assert_error(&support::parse_response(&raw), 413, "too_large");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "crier_events_published_total"),
        Some(1.0),
        "refused events are not published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_405_with_allow_and_unknown_paths_404() {
    let server = TestServer::start(&[]).await;
    let response = request(server.addr, "GET", "/publish?topic=t", &[], b"").await;
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.header("allow").as_deref(), Some("POST"));
    for path in ["/sse?topic=t", "/healthz", "/readyz", "/metrics", "/"] {
        let response = request(server.addr, "POST", path, &[], b"").await;
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.header("allow").as_deref(), Some("GET, HEAD"));
    }
    for path in ["/nope", "/sse/extra", "/publishx"] {
        assert_error(&request(server.addr, "GET", path, &[], b"").await, 404, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = TestServer::start(&[]).await;
    let health = request(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((health.status, health.text().as_str()), (200, "{\"status\":\"ok\"}\n"));
    let ready = request(server.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!((ready.status, ready.text().as_str()), (200, "{\"status\":\"ready\"}\n"));

    let mut sub = support::SseClient::connect(server.addr, "/sse?topic=a&topic=b", &[]).await;
    server.publish("a", "hello").await;
    sub.next_event().await;
    request(server.addr, "GET", "/nowhere", &[], b"").await;
    let response = request(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.text();
    for line in [
        r#"crier_connections{transport="sse"} 1"#,
        r#"crier_connections_accepted_total{transport="sse"} 1"#,
        "crier_subscriptions 2",
        "crier_topics 2",
        "crier_events_published_total 1",
        r#"crier_deliveries_total{transport="sse"} 1"#,
        r#"crier_evictions_total{transport="sse",reason="slow_consumer"} 0"#,
        r#"crier_http_requests_total{route="publish",status="200"} 1"#,
        r#"crier_http_requests_total{route="sse",status="200"} 1"#,
        r#"crier_http_requests_total{route="healthz",status="200"} 1"#,
        r#"crier_http_requests_total{route="not_found",status="404"} 1"#,
        "# TYPE crier_publish_duration_seconds histogram",
        "crier_publish_duration_seconds_count 1",
        r#"crier_publish_duration_seconds_bucket{le="+Inf"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    // Counted once hyper has written them; the client may read them a moment earlier.
    let received = sub.body.len() as f64;
    support::wait_until("sent bytes to match what the client read", || async {
        metric(&server.metrics().await, r#"crier_sent_bytes_total{transport="sse"}"#)
            == Some(received)
    })
    .await;

    // Readiness follows draining.
    server.handle.hub().shutdown();
    let ready = request(server.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["error"], "draining");
    let refused = request(server.addr, "GET", "/sse?topic=a", &[], b"").await;
    assert_eq!(refused.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_remote_client_may_not_publish_without_credentials() {
    let server = TestServer::start(&[]).await;
    // Hops are read from the right: the client is the first that is not a trusted proxy
    // (loopback, by default); the hops left of it are that client's claims.
    for (forwarded, status) in [
        ("203.0.113.5", 403),
        ("127.0.0.1, 203.0.113.5", 403),
        ("2001:db8::5", 403),
        ("unknown", 403),
        ("203.0.113.5, 127.0.0.1", 403),
        ("::1", 200),
        ("127.0.0.1, ::1", 200),
    ] {
        let response = request(
            server.addr,
            "POST",
            "/publish?topic=t",
            &[("X-Forwarded-For", forwarded)],
            b"x",
        )
        .await;
        if status == 403 {
            assert_error(&response, 403, "forbidden");
        } else {
            assert_eq!(response.status, 200, "{forwarded}: {}", response.text());
        }
    }
    let published = metric(&server.metrics().await, "crier_events_published_total");
    assert_eq!(published, Some(2.0), "refused publishes published nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_process_the_build_and_tcp_connections_apart_from_streams() {
    let server = TestServer::start(&[]).await;
    let _stream = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Three TCP connections (the stream, the idle one, the scrape's), one of them a stream.
    wait_until("the connections to be counted", || async {
        metric(&server.metrics().await, "crier_tcp_connections") == Some(3.0)
    })
    .await;
    let text = server.metrics().await;
    assert_eq!(metric(&text, r#"crier_connections{transport="sse"}"#), Some(1.0));
    let version = format!(r#"crier_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(metric(&text, &version), Some(1.0));
    for series in
        ["process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_threads"]
    {
        assert!(metric(&text, series).is_some_and(|v| v > 0.0), "{series} in {text}");
    }
    assert!(metric(&text, "process_cpu_seconds_total").is_some());
    drop(idle);
    wait_until("the idle connection to go", || async {
        metric(&server.metrics().await, "crier_tcp_connections") == Some(2.0)
    })
    .await;
}

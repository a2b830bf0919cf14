//! The WebSocket edge over real sockets: the handshake (raw bytes in and out, every refusal),
//! delivery in both formats, commands and their errors, resume, heartbeats and the silent-peer
//! timeout, every close code, slow consumers, and SSE and WebSocket subscribers side by side.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::ws::{command, connect, next, next_json};
use support::{SseClient, TestServer, metric, publish_ok, request, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_delivery_and_commands() {
    let server = TestServer::start(&[]).await;
    let mut ws = connect(server.addr, "/ws?topic=a").await;
    let id = server.publish("a", "hello").await;
    assert_eq!(next_json(&mut ws).await, json!({"topic":"a","id":id,"event":null,"data":"hello"}));
    let reply = command(&mut ws, json!({"op":"subscribe","topic":"b","ref":1})).await;
    assert_eq!(reply["op"], "ok");
    assert_eq!(reply["ref"], 1);
    let reply =
        command(&mut ws, json!({"op":"publish","topic":"b","event":"tick","data":"x","ref":"p"}))
            .await;
    assert_eq!((reply["op"].as_str(), reply["ref"].as_str()), (Some("ok"), Some("p")));
    let published = reply["id"].as_str().unwrap().to_owned();
    let event = next_json(&mut ws).await;
    assert_eq!(event, json!({"topic":"b","id":published,"event":"tick","data":"x"}));
    let reply = command(&mut ws, json!({"op":"ping","ref":[1,2]})).await;
    assert_eq!(reply, json!({"op":"ok","ref":[1,2]}));
}

const SAMPLE_KEY_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Sends a raw handshake and returns the raw response head (and body).
async fn raw_handshake(server: &TestServer, target: &str, headers: &[&str]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(support::WAIT, stream.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: keep-alive, Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_accepts_the_rfc_example_byte_for_byte() {
    let server = TestServer::start(&[]).await;
    let response =
        raw_handshake(&server, "/ws?topic=t", &[UPGRADE, CONNECTION, VERSION, KEY]).await;
    let head = response.split("\r\n\r\n").next().unwrap();
    let mut lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines.remove(0), "HTTP/1.1 101 Switching Protocols");
    lines.sort_unstable();
    let lines: Vec<String> =
        lines.iter().map(|l| l.to_ascii_lowercase()).filter(|l| !l.starts_with("date:")).collect();
    assert_eq!(
        lines,
        [
            "connection: upgrade".to_owned(),
            format!("sec-websocket-accept: {}", SAMPLE_KEY_ACCEPT.to_ascii_lowercase()),
            "upgrade: websocket".to_owned(),
        ]
    );
    // Without --cors-origins, a page of the server's own origin is accepted, another refused.
    // (`raw_handshake` names the host `x`.)
    let own = "Origin: http://x";
    let response = raw_handshake(&server, "/ws", &[UPGRADE, CONNECTION, VERSION, KEY, own]).await;
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let foreign = "Origin: https://any.example";
    let response =
        raw_handshake(&server, "/ws", &[UPGRADE, CONNECTION, VERSION, KEY, foreign]).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    // The subprotocol is confirmed when offered.
    let response = raw_handshake(
        &server,
        "/ws/echo",
        &[UPGRADE, CONNECTION, VERSION, KEY, "Sec-WebSocket-Protocol: x, crier.v1"],
    )
    .await;
    assert!(
        response.to_ascii_lowercase().contains("sec-websocket-protocol: crier.v1\r\n"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals() {
    let server = TestServer::start(&["--allowed-origins", "https://app.example"]).await;
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("/ws", &[CONNECTION, VERSION, KEY], "400", "bad_handshake"),
        ("/ws", &[UPGRADE, "Connection: keep-alive", VERSION, KEY], "400", "bad_handshake"),
        ("/ws", &[UPGRADE, CONNECTION, VERSION], "400", "bad_handshake"),
        (
            "/ws",
            &[UPGRADE, CONNECTION, VERSION, "Sec-WebSocket-Key: c2hvcnQ="],
            "400",
            "bad_handshake",
        ),
        (
            "/ws",
            &[UPGRADE, CONNECTION, "Sec-WebSocket-Version: 8", KEY],
            "426",
            "unsupported_version",
        ),
        ("/ws", &[UPGRADE, CONNECTION, KEY], "426", "unsupported_version"),
        (
            "/ws",
            &[UPGRADE, CONNECTION, VERSION, KEY, "Origin: https://evil.example"],
            "403",
            "origin_not_allowed",
        ),
        ("/ws?topic=bad%20topic", &[UPGRADE, CONNECTION, VERSION, KEY], "400", "bad_topic"),
        ("/ws?topic=t&format=xml", &[UPGRADE, CONNECTION, VERSION, KEY], "400", "bad_format"),
        (
            "/ws?topic=t&last_event_id=nope",
            &[UPGRADE, CONNECTION, VERSION, KEY],
            "400",
            "bad_last_event_id",
        ),
        ("/ws/echo", &[], "400", "bad_handshake"),
    ];
    for (target, headers, status, code) in cases {
        let response = raw_handshake(&server, target, headers).await;
        let parsed = support::parse_response(response.as_bytes());
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{target} {headers:?}: {response}"
        );
        assert_eq!(parsed.json()["error"], *code, "{target} {headers:?}");
        if *status == "426" {
            assert_eq!(parsed.header("sec-websocket-version").as_deref(), Some("13"));
        }
    }
    // A POST is not a handshake; an allowed origin, or none, is accepted.
    let post = request(server.addr, "POST", "/ws", &[], b"").await;
    assert_eq!(post.status, 400);
    let allowed = raw_handshake(
        &server,
        "/ws",
        &[UPGRADE, CONNECTION, VERSION, KEY, "Origin: https://app.example"],
    )
    .await;
    assert!(allowed.starts_with("HTTP/1.1 101"), "{allowed}");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, r#"crier_http_requests_total{route="ws",status="426"}"#),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_carry_text_and_binary_events() {
    let server = TestServer::start(&[]).await;
    let mut json_ws = connect(server.addr, "/ws?topic=t&format=json").await;
    let mut raw_ws = connect(server.addr, "/ws?topic=t&format=raw").await;
    let text_id = publish_ok(server.addr, "t", Some("greet"), "hé\nllo".as_bytes(), None).await;
    let bin_id =
        publish_ok(server.addr, "t", None, &[0, 1, 255], Some("application/octet-stream")).await;
    assert_eq!(
        next_json(&mut json_ws).await,
        json!({"topic":"t","id":text_id,"event":"greet","data":"hé\nllo"})
    );
    assert_eq!(
        next_json(&mut json_ws).await,
        json!({"topic":"t","id":bin_id,"event":null,"data":"AAH/","encoding":"base64"})
    );
    assert_eq!(next(&mut raw_ws).await, Message::text("hé\nllo"));
    assert_eq!(next(&mut raw_ws).await, Message::binary(vec![0u8, 1, 255]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_errors_are_replies_not_disconnects() {
    let server = TestServer::start(&["--max-event-bytes", "8"]).await;
    let mut ws = connect(server.addr, "/ws").await;
    for (sent, code) in [
        (Message::text("not json"), "bad_command"),
        (Message::text("[1,2]"), "bad_command"),
        (Message::text(r#"{"op":"dance","ref":3}"#), "unknown_op"),
        (Message::text(r#"{"op":"subscribe"}"#), "bad_command"),
        (Message::text(r#"{"op":"subscribe","topic":"a b"}"#), "bad_topic"),
        (
            Message::text(r#"{"op":"subscribe","topic":"t","last_event_id":"zz"}"#),
            "bad_last_event_id",
        ),
        (Message::text(r#"{"op":"unsubscribe","topic":"never"}"#), "not_subscribed"),
        (
            Message::text(r#"{"op":"publish","topic":"t","event":"crier.x","data":"x"}"#),
            "bad_event_name",
        ),
        (
            Message::text(r#"{"op":"publish","topic":"t","data":"%%%","encoding":"base64"}"#),
            "bad_data",
        ),
        (Message::text(r#"{"op":"publish","topic":"t","data":"123456789"}"#), "too_large"),
        (Message::binary(b"{\"op\":\"ping\"}".to_vec()), "bad_command"),
    ] {
        ws.send(sent.clone()).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["op"], "error", "{sent:?}: {reply}");
        assert_eq!(reply["error"], code, "{sent:?}: {reply}");
        assert!(reply["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(command(&mut ws, json!({"op":"dance","ref":"keep"})).await["ref"], "keep");
    assert_eq!(command(&mut ws, json!({"op":"subscribe","topic":"t"})).await["op"], "ok");
    let again = command(&mut ws, json!({"op":"subscribe","topic":"t"})).await;
    assert_eq!(again["error"], "already_subscribed");
    let bye = command(&mut ws, json!({"op":"unsubscribe","topic":"t","ref":9})).await;
    assert_eq!(bye, json!({"op":"ok","ref":9,"topic":"t"}));
    // Still connected and serving.
    assert_eq!(command(&mut ws, json!({"op":"ping"})).await, json!({"op":"ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_query_and_by_command_without_gap_or_duplicate() {
    let server = TestServer::start(&["--history", "4"]).await;
    let ids: Vec<String> = futures_ids(&server, "t", 6).await;
    // By query: everything after ids[2].
    let mut ws = connect(server.addr, &format!("/ws?topic=t&last_event_id={}", ids[2])).await;
    for id in &ids[3..] {
        assert_eq!(next_json(&mut ws).await["id"], id.as_str());
    }
    let live = server.publish("t", "live").await;
    assert_eq!(next_json(&mut ws).await["id"], live.as_str());
    // By command, from an id the history no longer holds: a crier.gap first.
    let mut ws = connect(server.addr, "/ws").await;
    let reply =
        command(&mut ws, json!({"op":"subscribe","topic":"t","last_event_id":ids[0],"ref":1}))
            .await;
    assert_eq!(reply["op"], "ok");
    let position = reply["position"].as_str().unwrap().to_owned();
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["event"], "crier.gap");
    assert_eq!(gap["id"], position.as_str());
    let notice: Value = serde_json::from_str(gap["data"].as_str().unwrap()).unwrap();
    assert_eq!(notice["gaps"][0]["reason"], "expired");
    assert_eq!(notice["gaps"][0]["missed"], 2);
    let replayed: Vec<Value> = [next_json(&mut ws).await, next_json(&mut ws).await].into();
    assert_eq!(replayed[0]["id"], ids[3].as_str());
    assert_eq!(replayed[1]["id"], ids[4].as_str());
}

async fn futures_ids(server: &TestServer, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(server.publish(topic, &format!("e{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_pongs_and_the_silent_peer_timeout() {
    let server = TestServer::start(&["--heartbeat", "200ms"]).await;
    let mut raw = support::RawWs::connect(server.addr, "/ws").await;
    // A client ping is answered with the same payload.
    raw.send(0x89, b"are you there", true).await;
    let pong = raw.read().await.unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"are you there"[..]));
    // The server pings every heartbeat; a peer that answers nothing for two is closed (4000).
    let started = tokio::time::Instant::now();
    let frames = raw.read_until_closed().await;
    let pings = frames.iter().filter(|f| f.opcode == 0x9).count();
    assert!(pings >= 1, "{frames:?}");
    assert_eq!(frames.last().and_then(|f| f.close_code()), Some(4000), "{frames:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed after {:?}",
        started.elapsed()
    );
    // A peer that answers pings (the client answers while it reads) stays.
    let mut ws = connect(server.addr, "/ws?topic=t").await;
    let reader = tokio::spawn(async move { next_json(&mut ws).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let id = server.publish("t", "still here").await;
    assert_eq!(reader.await.unwrap()["id"], id.as_str());
}

/// Sends `frames` on a fresh `/ws` connection and returns the server's close code.
async fn close_code_after(
    server: &TestServer,
    path: &str,
    frames: &[(u8, Vec<u8>, bool)],
) -> Option<u16> {
    let mut raw = support::RawWs::connect(server.addr, path).await;
    for (first, payload, masked) in frames {
        raw.send(*first, payload, *masked).await;
    }
    let frames = raw.read_until_closed().await;
    frames.iter().rev().find_map(support::RawFrame::close_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_code() {
    let server =
        TestServer::start(&["--max-message-bytes", "1KiB", "--ws-commands-per-sec", "2"]).await;
    // 1000: the client closes; the server answers with the same code.
    assert_eq!(
        close_code_after(&server, "/ws", &[(0x88, vec![0x03, 0xe8], true)]).await,
        Some(1000)
    );
    // 1002: an unmasked frame, a reserved opcode, a continuation without a start.
    assert_eq!(
        close_code_after(&server, "/ws", &[(0x81, b"hi".to_vec(), false)]).await,
        Some(1002)
    );
    assert_eq!(close_code_after(&server, "/ws", &[(0x83, vec![], true)]).await, Some(1002));
    assert_eq!(close_code_after(&server, "/ws", &[(0x80, b"x".to_vec(), true)]).await, Some(1002));
    // 1007: text that is not UTF-8.
    assert_eq!(
        close_code_after(&server, "/ws", &[(0x81, vec![0xff, 0xfe], true)]).await,
        Some(1007)
    );
    // 1009: a message over --max-message-bytes, whole or in fragments.
    assert_eq!(close_code_after(&server, "/ws", &[(0x82, vec![0; 2048], true)]).await, Some(1009));
    let fragments = [(0x02, vec![0; 800], true), (0x80, vec![0; 800], true)];
    assert_eq!(close_code_after(&server, "/ws", &fragments).await, Some(1009));
    // 1008: commands far over the rate limit.
    let flood: Vec<_> = (0..80).map(|_| (0x81, br#"{"op":"ping"}"#.to_vec(), true)).collect();
    assert_eq!(close_code_after(&server, "/ws", &flood).await, Some(1008));
    let metrics = server.metrics().await;
    for (code, count) in [("1000", 1.0), ("1002", 3.0), ("1007", 1.0), ("1009", 2.0), ("1008", 1.0)]
    {
        let series = format!("crier_ws_closes_total{{code=\"{code}\"}}");
        assert_eq!(metric(&metrics, &series), Some(count), "{series} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_commands_get_an_error_first() {
    let server = TestServer::start(&["--ws-commands-per-sec", "3"]).await;
    let mut ws = connect(server.addr, "/ws").await;
    for _ in 0..5 {
        ws.send(Message::text(r#"{"op":"ping"}"#)).await.unwrap();
    }
    let mut ops = Vec::new();
    for _ in 0..5 {
        let reply = next_json(&mut ws).await;
        ops.push(reply["error"].as_str().unwrap_or(reply["op"].as_str().unwrap()).to_owned());
    }
    assert_eq!(ops, ["ok", "ok", "ok", "rate_limited", "rate_limited"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001_after_published_events() {
    let server = TestServer::start(&[]).await;
    let mut subscribed = support::RawWs::connect(server.addr, "/ws?topic=t").await;
    let mut idle = support::RawWs::connect(server.addr, "/ws").await;
    let mut echo = support::RawWs::connect(server.addr, "/ws/echo").await;
    wait_until("sessions to start", || async {
        metric(&server.metrics().await, r#"crier_connections{transport="ws"}"#) == Some(3.0)
    })
    .await;
    let id = server.publish("t", "before shutdown").await;
    let shutdown = tokio::spawn(server.handle.shutdown());
    let frames = subscribed.read_until_closed().await;
    let data: Value = serde_json::from_slice(&frames[0].payload).unwrap();
    assert_eq!(data["id"], id.as_str(), "published events come before the close");
    assert_eq!(frames.last().and_then(support::RawFrame::close_code), Some(1001));
    for raw in [&mut idle, &mut echo] {
        let frames = raw.read_until_closed().await;
        assert_eq!(frames.last().and_then(support::RawFrame::close_code), Some(1001), "{frames:?}");
    }
    tokio::time::timeout(support::WAIT, shutdown).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_websocket_is_evicted_with_4008_while_a_healthy_one_gets_everything() {
    let server = TestServer::start(&["--max-lag-bytes", "256KiB"]).await;
    let handshake = format!(
        "GET /ws?topic=t&format=raw HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n{CONNECTION}\r\n{VERSION}\r\n{KEY}\r\n\r\n"
    );
    let mut stalled = support::stalled_connection(server.addr, &handshake).await;
    let mut healthy = connect(server.addr, "/ws?topic=t&format=raw").await;
    server.wait_subscriptions(2).await;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            match next(&mut healthy).await {
                Message::Text(text) if text.as_str() == "end" => break,
                Message::Text(text) => {
                    seen.push(text.split(':').next().unwrap().parse::<usize>().unwrap())
                }
                other => panic!("{other:?}"),
            }
        }
        (seen, healthy)
    });
    let total = support::publish_until_evicted(&server, "t", "ws", 4000).await;
    let (seen, _healthy) = reader.await.unwrap();
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    // Its connection goes away after the close grace.
    support::assert_closed_by_server(&mut stalled).await;
    // Counted by the connection's task as it ends, which may be just after the socket closes.
    server.wait_metric(r#"crier_ws_closes_total{code="4008"}"#, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_subscribers_see_the_same_events_in_the_same_order() {
    let server = TestServer::start(&[]).await;
    let mut sse = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let mut ws = connect(server.addr, "/ws?topic=t").await;
    let addr = server.addr;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(async move {
                for i in 0..50 {
                    publish_ok(addr, "t", None, format!("{p}-{i}").as_bytes(), None).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let sse_events = sse.events(200).await;
    let mut ws_events = Vec::new();
    for _ in 0..200 {
        let event = next_json(&mut ws).await;
        ws_events.push((
            event["id"].as_str().unwrap().to_owned(),
            event["data"].as_str().unwrap().to_owned(),
        ));
    }
    let sse_events: Vec<(String, String)> =
        sse_events.into_iter().map(|e| (e.last_event_id, e.data)).collect();
    assert_eq!(sse_events, ws_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_every_message_unchanged() {
    let server = TestServer::start(&[]).await;
    let mut ws = connect(server.addr, "/ws/echo").await;
    let big = vec![7u8; 200_000];
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2]),
        Message::binary(big.clone()),
        Message::text(""),
    ] {
        ws.send(message.clone()).await.unwrap();
        assert_eq!(next(&mut ws).await, message);
    }
    // Fragmented on the wire, whole on the way back.
    let mut raw = support::RawWs::connect(server.addr, "/ws/echo").await;
    raw.send(0x01, b"frag", true).await;
    raw.send(0x89, b"p", true).await;
    raw.send(0x80, "ment€".as_bytes(), true).await;
    let pong = raw.read().await.unwrap();
    assert_eq!(pong.opcode, 0xA);
    let echoed = raw.read().await.unwrap();
    assert_eq!(
        (echoed.fin, echoed.opcode, echoed.payload),
        (true, 0x1, "fragment€".as_bytes().to_vec())
    );
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_delay_gathers_a_busy_connections_events() {
    let server = TestServer::start(&["--write-delay", "400ms", "--writes-per-sec", "0"]).await;
    let mut raw = support::RawWs::connect(server.addr, "/ws?topic=t&format=raw").await;
    server.wait_subscriptions(1).await;
    // Idle for longer than the delay: the first event goes at once.
    let sent = tokio::time::Instant::now();
    server.publish("t", "first").await;
    assert_eq!(raw.read().await.unwrap().payload, b"first");
    let first_at = tokio::time::Instant::now();
    assert!(first_at - sent < Duration::from_millis(300), "first event took {:?}", first_at - sent);
    // The next ones wait for the delay.
    server.publish("t", "second").await;
    server.publish("t", "third").await;
    assert_eq!(raw.read().await.unwrap().payload, b"second");
    let waited = tokio::time::Instant::now() - first_at;
    assert_eq!(raw.read().await.unwrap().payload, b"third");
    assert!(
        waited >= Duration::from_millis(350),
        "second event after {waited:?}, before the delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_remote_client_may_subscribe_but_not_publish() {
    let server = TestServer::start(&[]).await;
    let remote = [("X-Forwarded-For", "203.0.113.5")];
    let mut ws = support::ws::connect_with(server.addr, "/ws?topic=t", &remote).await;
    let reply = command(&mut ws, json!({"op":"publish","topic":"t","data":"x","ref":1})).await;
    assert_eq!((reply["op"].as_str(), reply["error"].as_str()), (Some("error"), Some("forbidden")));
    // Still subscribed and served: what a local publisher sends arrives.
    let id = server.publish("t", "from the publisher").await;
    let event = next_json(&mut ws).await;
    assert_eq!(
        (event["id"].as_str(), event["data"].as_str()),
        (Some(id.as_str()), Some("from the publisher"))
    );
    // A local client of a proxy on this host (loopback proxies are trusted by default).
    let proxied_local = [("X-Forwarded-For", "127.0.0.1")];
    let mut local = support::ws::connect_with(server.addr, "/ws", &proxied_local).await;
    let reply = command(&mut local, json!({"op":"publish","topic":"t","data":"y","ref":2})).await;
    assert_eq!(reply["op"], "ok", "{reply}");
}

/// The close frame the server ends `ws` with: its code and reason.
async fn next_close(ws: &mut support::ws::Ws) -> (u16, String) {
    match next(ws).await {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_json_streams_a_reply_has_op_and_an_event_never_does() {
    let server = TestServer::start(&[]).await;
    let mut ws = connect(server.addr, "/ws?topic=t").await;
    // Data shaped like a reply is still an event: its frame has `topic` and `id`, no `op`.
    let lookalike = r#"{"op":"ok","ref":1}"#;
    let id = server.publish("t", lookalike).await;
    let event = next_json(&mut ws).await;
    assert_eq!(event, json!({"topic":"t","id":id,"event":null,"data":lookalike}));
    assert!(event.get("op").is_none());
    let reply = command(&mut ws, json!({"op":"subscribe","topic":"u","ref":1})).await;
    assert!(reply.get("op").is_some() && reply.get("id").is_none(), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_stream_carries_only_events_and_runs_commands_without_replies() {
    let server = TestServer::start(&[]).await;
    let mut raw = connect(server.addr, "/ws?format=raw").await;
    let send = |command: Value| Message::text(command.to_string());
    raw.send(send(json!({"op":"subscribe","topic":"t","ref":1}))).await.unwrap();
    raw.send(send(json!({"op":"ping","ref":2}))).await.unwrap();
    raw.send(send(json!({"op":"publish","topic":"t","data":"from the socket","ref":3})))
        .await
        .unwrap();
    // Had any command been answered, its reply would come before the event.
    assert_eq!(next(&mut raw).await, Message::text("from the socket"));
    // Data shaped like a reply arrives as data, and nothing else does.
    let lookalike = r#"{"op":"ok","ref":1,"topic":"t"}"#;
    server.publish("t", lookalike).await;
    assert_eq!(next(&mut raw).await, Message::text(lookalike));
    // A socket's commands run in order, so each publish here follows the command before it.
    raw.send(send(json!({"op":"unsubscribe","topic":"t"}))).await.unwrap();
    raw.send(send(json!({"op":"publish","topic":"t","data":"unsubscribed"}))).await.unwrap();
    raw.send(send(json!({"op":"subscribe","topic":"u"}))).await.unwrap();
    raw.send(send(json!({"op":"publish","topic":"u","data":"subscribed"}))).await.unwrap();
    assert_eq!(next(&mut raw).await, Message::text("subscribed"));
    // A refused command ends the stream: 1008, the error reply as the reason.
    raw.send(send(json!({"op":"subscribe","topic":"a b","ref":7}))).await.unwrap();
    let (code, reason) = next_close(&mut raw).await;
    assert_eq!(code, 1008);
    let reason: Value = serde_json::from_str(&reason).expect("the reason is JSON");
    assert_eq!(
        (reason["op"].as_str(), reason["error"].as_str()),
        (Some("error"), Some("bad_topic"))
    );
    assert_eq!(reason["ref"], 7);
    // So does a binary message, which is no command.
    let mut raw = connect(server.addr, "/ws?topic=t&format=raw").await;
    raw.send(Message::binary(vec![1u8, 2])).await.unwrap();
    let (code, reason) = next_close(&mut raw).await;
    assert_eq!(
        (code, reason.as_str()),
        (
            1008,
            r#"{"op":"error","error":"bad_command","detail":"commands are JSON text messages"}"#
        )
    );
    // The other streams are served on.
    let mut json = connect(server.addr, "/ws?topic=t").await;
    let id = server.publish("t", "after").await;
    assert_eq!(next_json(&mut json).await["id"], id.as_str());
    server.wait_metric(r#"crier_ws_closes_total{code="1008"}"#, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_command_the_server_cannot_carry_out_now_closes_with_1013() {
    let server = TestServer::start(&["--max-topics", "1"]).await;
    server.publish("held", "x").await;
    let mut raw = connect(server.addr, "/ws?format=raw").await;
    let subscribe = json!({"op":"subscribe","topic":"one-too-many","ref":"s"});
    raw.send(Message::text(subscribe.to_string())).await.unwrap();
    let (code, reason) = next_close(&mut raw).await;
    assert_eq!(code, 1013);
    let reason: Value = serde_json::from_str(&reason).expect("the reason is JSON");
    assert_eq!(
        (reason["error"].as_str(), reason["ref"].as_str()),
        (Some("topic_limit"), Some("s"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_stream_closes_with_4010_at_a_gap_and_resumes_exactly_from_its_reason() {
    let server = TestServer::start(&["--history", "4"]).await;
    let ids: Vec<String> = futures_ids(&server, "t", 6).await;
    // An exact resume replays as on JSON streams.
    let mut raw =
        connect(server.addr, &format!("/ws?topic=t&format=raw&last_event_id={}", ids[3])).await;
    assert_eq!(next(&mut raw).await, Message::text("e4"));
    assert_eq!(next(&mut raw).await, Message::text("e5"));
    // From an id the history no longer holds: closed before any event, the gap as the reason.
    let path = format!("/ws?topic=t&format=raw&last_event_id={}", ids[0]);
    let mut raw = connect(server.addr, &path).await;
    let (code, reason) = next_close(&mut raw).await;
    assert_eq!(code, 4010);
    let gap: Value = serde_json::from_str(&reason).expect("the reason is JSON");
    assert_eq!(gap["topic"], "t");
    assert_eq!(gap["reason"], "expired");
    assert_eq!(gap["last_event_id"], ids[0].as_str());
    assert_eq!(gap["missed"], 1);
    // Resuming after the position it names gives what the topic holds, exactly.
    let resumed_after = gap["resumed_after"].as_str().unwrap();
    assert_eq!(resumed_after, ids[1].as_str());
    let path = format!("/ws?topic=t&format=raw&last_event_id={resumed_after}");
    let mut raw = connect(server.addr, &path).await;
    for i in 2..6 {
        assert_eq!(next(&mut raw).await, Message::text(format!("e{i}")));
    }
    // The same by command.
    let mut raw = connect(server.addr, "/ws?format=raw").await;
    let subscribe = json!({"op":"subscribe","topic":"t","last_event_id":ids[0]});
    raw.send(Message::text(subscribe.to_string())).await.unwrap();
    let (code, reason) = next_close(&mut raw).await;
    assert_eq!(code, 4010);
    assert_eq!(serde_json::from_str::<Value>(&reason).unwrap()["resumed_after"], ids[1].as_str());
    server.wait_metric(r#"crier_ws_closes_total{code="4010"}"#, 2.0).await;
}

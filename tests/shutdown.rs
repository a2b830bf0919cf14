//! Graceful shutdown of the real binary on SIGTERM and SIGINT: stop accepting, end every SSE
//! stream after its queued events, and exit within `--shutdown-timeout` even when a client
//! never reads.

mod support;

use std::time::Duration;

use support::{CrierProcess, SseClient, publish_ok, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_then_exits_zero() {
    for signal in ["TERM", "INT"] {
        let mut server = CrierProcess::spawn(&["--shutdown-timeout", "5s"]).await;
        let mut client = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(publish_ok(server.addr, "t", None, format!("e{i}").as_bytes(), None).await);
        }
        // Every accepted event is on its way before the signal; the client has read none yet.
        server.signal(signal);
        let started = Instant::now();
        let clean = client.read_to_end().await;
        assert!(clean, "SIG{signal}: the stream must end with the terminating chunk, not a reset");
        let events = support::whatwg::parse(&client.body);
        assert_eq!(
            events.len(),
            50,
            "SIG{signal}: queued events are written before the stream ends"
        );
        assert_eq!(events.iter().map(|e| e.last_event_id.clone()).collect::<Vec<_>>(), ids);
        let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "SIG{signal}: exit status {status}");
        assert!(started.elapsed() < Duration::from_secs(3), "a drained server exits promptly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_bounds_the_drain_by_the_timeout() {
    let mut server =
        CrierProcess::spawn(&["--shutdown-timeout", "2s", "--max-lag-bytes", "64MiB"]).await;
    // A subscriber that never reads keeps its stream from ever draining.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.addr).await.unwrap();
    stalled.write_all(b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let payload = vec![b'x'; 32 << 10];
    wait_until("the stalled subscriber to be registered", || async {
        let text = support::request(server.addr, "GET", "/metrics", &[], b"").await.text();
        support::metric(&text, "crier_subscriptions") == Some(1.0)
    })
    .await;
    // More than the kernel's socket buffers (up to 4 MiB on loopback) and hyper's can hold.
    for _ in 0..512 {
        publish_ok(server.addr, "t", None, &payload, None).await;
    }
    server.signal("TERM");
    let started = Instant::now();
    wait_until("the listener to close", || async {
        tokio::net::TcpStream::connect(server.addr).await.is_err()
    })
    .await;
    assert!(server.child.try_wait().unwrap().is_none(), "still draining the stalled stream");
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exits")
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_millis(1500), "exited after {took:?}, before the drain timeout");
    assert!(took < Duration::from_secs(4), "exited after {took:?}, well past the 2s drain timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_hold_up_shutdown() {
    let mut server =
        CrierProcess::spawn(&["--shutdown-timeout", "20s", "--header-read-timeout", "30s"]).await;
    // One connection that never sends a request, idle keep-alive connections after a request
    // (through hyper, and on the publish fast path).
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut keep_alive = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut response = [0u8; 256];
    let n = tokio::io::AsyncReadExt::read(&mut keep_alive, &mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    let mut publisher = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let publish = b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
    publisher.write_all(publish).await.unwrap();
    let n = tokio::io::AsyncReadExt::read(&mut publisher, &mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    wait_until("both connections to be accepted", || async {
        // The connections are accepted by the time a third is answered.
        support::request(server.addr, "GET", "/healthz", &[], b"").await.status == 200
    })
    .await;
    let started = Instant::now();
    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_draining_for_the_drain_delay_while_the_server_serves_on() {
    let mut server = CrierProcess::spawn(&["--drain-delay", "1500ms"]).await;
    let mut client = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    let readyz = || support::request(server.addr, "GET", "/readyz", &[], b"");
    assert_eq!(readyz().await.status, 200);
    server.signal("TERM");
    let started = Instant::now();
    wait_until("/readyz to answer draining", || async {
        let answer = readyz().await;
        answer.status == 503 && answer.json()["error"] == "draining"
    })
    .await;
    // Still serving: open streams get events, new connections and streams are taken.
    let id = publish_ok(server.addr, "t", None, b"during the delay", None).await;
    assert_eq!(client.next_event().await.last_event_id, id);
    assert_eq!(support::request(server.addr, "GET", "/healthz", &[], b"").await.status, 200);
    let mut late = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    assert_eq!(late.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1500), "all of it within the delay");
    // Then it stops accepting and drains as without a delay.
    wait_until("the listener to close", || async {
        tokio::net::TcpStream::connect(server.addr).await.is_err()
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(client.read_to_end().await && late.read_to_end().await, "streams end cleanly");
    let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_stream_open_the_drain_delay_is_skipped() {
    let mut server = CrierProcess::spawn(&["--drain-delay", "10s"]).await;
    // A request came and went: no stream is open.
    publish_ok(server.addr, "t", None, b"x", None).await;
    server.signal("INT");
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .expect("exits without waiting out the delay")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    let mut server = CrierProcess::spawn(&["--drain-delay", "10s"]).await;
    let _stream = SseClient::connect(server.addr, "/sse?topic=t", &[]).await;
    server.signal("INT");
    wait_until("/readyz to answer draining", || async {
        support::request(server.addr, "GET", "/readyz", &[], b"").await.status == 503
    })
    .await;
    server.signal("INT");
    let status = tokio::time::timeout(Duration::from_secs(2), server.child.wait())
        .await
        .expect("the second signal stops it")
        .unwrap();
    assert_eq!(status.code(), Some(130), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_a_stop_binds_the_same_port() {
    let mut server = CrierProcess::spawn(&[]).await;
    let addr = server.addr;
    // Streams the server ends itself: their sockets linger in TIME_WAIT on its port.
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(SseClient::connect(addr, "/sse?topic=t", &[]).await);
    }
    server.signal("TERM");
    for stream in &mut streams {
        assert!(stream.read_to_end().await, "the server ends the stream");
    }
    let status = server.child.wait().await.unwrap();
    assert!(status.success());
    let listen = addr.to_string();
    let again = CrierProcess::spawn(&["--listen", &listen]).await;
    assert_eq!(again.addr, addr);
    assert_eq!(support::request(addr, "GET", "/healthz", &[], b"").await.status, 200);
}

//! What an idle stream costs the server while it lives: every heap allocation is counted (as
//! the chunk glibc's malloc hands out for it) by size, before and after 2,000 SSE streams and
//! 2,000 WebSockets are opened and left idle; the allocations they hold are listed by size, and
//! their total per stream is held to a bound.
//!
//! The clients are blocking sockets of the standard library, which allocate nothing, so what is
//! counted is the server's.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};

use support::TestServer;

/// Counts live allocations by chunk size: the request plus an 8-byte header, rounded up to 16,
/// at least 32.
struct Counting;

const CLASSES: usize = 4096;
static LIVE: [AtomicIsize; CLASSES + 1] = [const { AtomicIsize::new(0) }; CLASSES + 1];

fn class(size: usize) -> usize {
    (((size + 8).div_ceil(16) * 16).max(32) / 16).min(CLASSES)
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE[class(layout.size())].fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        LIVE[class(new_size)].fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn snapshot() -> Vec<isize> {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
    LIVE.iter().map(|count| count.load(Ordering::Relaxed)).collect()
}

const STREAMS: usize = 2_000;

/// Opens `STREAMS` connections sending `request` and reads each answer's head; returns them.
fn open(addr: std::net::SocketAddr, request: &str) -> Vec<std::net::TcpStream> {
    (0..STREAMS)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
            tcp.write_all(request.as_bytes()).expect("request");
            let mut head = [0u8; 512];
            let n = tcp.read(&mut head).expect("answer");
            assert!(head[..n].starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&head));
            tcp
        })
        .collect()
}

/// The heap the streams hold, per stream: the total, and the chunks by size.
fn per_stream(before: &[isize], after: &[isize]) -> (f64, Vec<(usize, f64)>) {
    let mut total = 0.0;
    let mut by_size = Vec::new();
    for (class, (b, a)) in before.iter().zip(after).enumerate() {
        let count = (a - b) as f64 / STREAMS as f64;
        if count.abs() >= 0.05 {
            by_size.push((class * 16, count));
            total += count * (class * 16) as f64;
        }
    }
    (total, by_size)
}

async fn measure(server: &TestServer, what: &str, request: &str, bound: f64) {
    let before = snapshot();
    let addr = server.addr;
    let request = request.to_owned();
    let streams = tokio::task::spawn_blocking(move || open(addr, &request)).await.unwrap();
    server.wait_subscriptions(STREAMS).await;
    let (total, by_size) = per_stream(&before, &snapshot());
    eprintln!("an idle {what}: {total:.0} bytes of heap, as chunks of (bytes, per stream):");
    for (size, count) in &by_size {
        eprintln!("  {size:>6} × {count:.2}");
    }
    assert!(total <= bound, "an idle {what} holds {total:.0} bytes of heap (bound {bound})");
    drop(streams);
    server.wait_subscriptions(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_holds_little_heap() {
    let server = TestServer::start(&[
        "--max-connections-per-ip",
        "100000",
        "--max-streams-per-ip",
        "100000",
        "--new-streams-per-sec",
        "100000",
    ])
    .await;
    // Warm up: the tables every stream shares grow past their first steps.
    measure(
        &server,
        "SSE stream (warm-up)",
        "GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r\n",
        f64::MAX,
    )
    .await;
    measure(&server, "SSE stream", "GET /sse?topic=t HTTP/1.1\r\nHost: x\r\n\r\n", 1536.0).await;
    let upgrade = "GET /ws?topic=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    measure(&server, "WebSocket", upgrade, 1728.0).await;
}

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::ws::handler::Echo;

const HEARTBEAT: Duration = Duration::from_secs(1);

fn echo(io: DuplexStream) -> Connection<DuplexStream> {
    let handler = Box::new(Echo::new(1 << 20));
    Connection::new(io, handler, HEARTBEAT, Arc::new(Metrics::new()))
}

/// A masked client frame: `first` is the FIN bit and opcode.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    crate::ws::frame::masked(first, payload, [1, 2, 3, 4])
}

/// Polls `connection` while `client` does its part, until `client` finishes; fails the test if
/// that takes over a minute (of the test's clock).
async fn drive<F: Future>(connection: &mut Connection<DuplexStream>, client: F) -> F::Output {
    tokio::pin!(client);
    let mut finished = false;
    let both = std::future::poll_fn(|cx| {
        if !finished {
            finished = Pin::new(&mut *connection).poll(cx).is_ready();
        }
        client.as_mut().poll(cx)
    });
    tokio::time::timeout(Duration::from_secs(60), both).await.expect("the client finishes")
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    let len = match head[1] {
        126 => usize::from(client.read_u16().await.unwrap()),
        127 => client.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    client.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0F, payload)
}

#[tokio::test]
async fn a_large_message_buffer_is_released_once_echoed() {
    let (server, mut client) = tokio::io::duplex(64 << 10);
    let mut connection = echo(server);
    let payload: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
    let frame = masked(0x82, &payload);
    let echoed = drive(&mut connection, async {
        client.write_all(&frame).await.unwrap();
        read_frame(&mut client).await
    })
    .await;
    assert_eq!(echoed.0, 0x2);
    assert!(echoed.1 == payload, "echo differs");
    // Nothing stays allocated for reading once the message is through.
    assert_eq!(connection.partial.capacity(), 0);
    assert_eq!(connection.decoder.buffered(), 0);
    assert!(connection.outbox.bytes() == 0 && connection.out.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_client_busy_sending_a_large_message_is_alive() {
    let (server, mut client) = tokio::io::duplex(64 << 10);
    let mut connection = echo(server);
    let payload = vec![7u8; 200 << 10];
    let frame = masked(0x82, &payload);
    // 200 KiB in 8 KiB pieces, one every 300 ms: eight heartbeat intervals without a whole
    // frame, or a pong (the pings wait unread).
    let (opcode, echoed) = drive(&mut connection, async {
        for piece in frame.chunks(8 << 10) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        loop {
            let (opcode, payload) = read_frame(&mut client).await;
            if opcode != 0x9 {
                break (opcode, payload);
            }
        }
    })
    .await;
    assert_eq!(opcode, 0x2, "the echo, not a close");
    assert_eq!(echoed.len(), payload.len());
}

#[tokio::test(start_paused = true)]
async fn a_ping_counts_from_when_it_is_written() {
    let (server, mut client) = tokio::io::duplex(16 << 10);
    let mut connection = echo(server);
    let payload = vec![1u8; 512 << 10];
    let frame = masked(0x82, &payload);
    let answered = drive(&mut connection, async {
        client.write_all(&frame).await.unwrap();
        // Take the echo slowly: 16 KiB every 200 ms, about six seconds. The ping queued
        // meanwhile goes out after it.
        let mut head = [0u8; 10];
        client.read_exact(&mut head).await.unwrap();
        let mut buf = vec![0u8; 16 << 10];
        for _ in 0..payload.len() / buf.len() {
            client.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (opcode, _) = read_frame(&mut client).await;
        assert_eq!(opcode, 0x9, "a ping after the echo");
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(&masked(0x8A, b"")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(&masked(0x81, b"still here")).await.unwrap();
        loop {
            let (opcode, payload) = read_frame(&mut client).await;
            if opcode != 0x9 {
                break (opcode, payload);
            }
        }
    })
    .await;
    assert_eq!(answered, (0x1, b"still here".to_vec()), "open after a late ping was answered");
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_two_intervals() {
    let (server, mut client) = tokio::io::duplex(16 << 10);
    let mut connection = echo(server);
    let started = Instant::now();
    let close = drive(&mut connection, async {
        loop {
            let (opcode, payload) = read_frame(&mut client).await;
            if opcode == 0x8 {
                break payload;
            }
        }
    })
    .await;
    assert_eq!(close[..2], 4000u16.to_be_bytes());
    assert_eq!(started.elapsed(), 2 * HEARTBEAT);
}

//! The SSE fast path: a connection whose first request is `GET /sse` over HTTP/1.1 is served
//! by this future instead of hyper, for as long as the stream lasts.
//!
//! A stream only ever writes, so it needs none of hyper's per-connection state (two 8 KiB
//! buffers among it): this future holds the socket, the subscription's writer and the chunk in
//! flight, and writes each chunk of events with one vectored write, framed as one HTTP/1.1
//! chunk. Reading is limited to noticing that the client went away.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::writer::SseWriter;
use crate::chunk::{Chunk, poll_write_buf};

/// Bytes a client may send after its request before it is disconnected: nothing is expected.
const MAX_UNEXPECTED_INPUT: usize = 16 << 10;

/// Serves one event stream on a socket the server took over from the HTTP layer.
pub(crate) struct SseStream {
    io: TcpStream,
    writer: SseWriter,
    /// What is being written.
    out: Option<Outgoing>,
    /// The terminating chunk is queued: close once it is out.
    finishing: bool,
    unexpected_input: usize,
}

impl SseStream {
    /// A stream that first writes `head` (the response status line and headers), then the
    /// writer's chunks.
    pub(crate) fn new(io: TcpStream, head: Bytes, writer: SseWriter) -> Self {
        let out = Outgoing { head, size_line: SizeLine::default(), body: None, tail: b"" };
        SseStream { io, writer, out: Some(out), finishing: false, unexpected_input: 0 }
    }

    /// Whether the client closed its side (or misbehaved); clears read readiness otherwise.
    fn peer_gone(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self.io.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {}
            }
            let mut sink = [0u8; 512];
            match self.io.try_read(&mut sink) {
                Ok(0) => return true,
                Ok(n) => {
                    self.unexpected_input += n;
                    if self.unexpected_input > MAX_UNEXPECTED_INPUT {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
    }

    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(out) = &mut self.out {
            ready!(poll_write_buf(&mut self.io, cx, out))?;
            self.out = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl Future for SseStream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.peer_gone(cx) {
                return Poll::Ready(());
            }
            if ready!(this.poll_flush_out(cx)).is_err() {
                return Poll::Ready(());
            }
            if this.finishing {
                let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
                return Poll::Ready(());
            }
            match ready!(this.writer.poll_chunk(cx)) {
                Some(Ok(chunk)) => this.out = Some(Outgoing::chunk(chunk)),
                // Evicted: drop the connection without a clean end, so the client reconnects.
                Some(Err(_)) => return Poll::Ready(()),
                None => {
                    this.out = Some(Outgoing::last_chunk());
                    this.finishing = true;
                }
            }
        }
    }
}

/// One HTTP/1.1 chunk (optionally preceded by the response head): size line, data, CRLF.
struct Outgoing {
    head: Bytes,
    size_line: SizeLine,
    /// Boxed: an idle stream (most of them) holds no chunk, only room for one.
    body: Option<Box<Chunk>>,
    tail: &'static [u8],
}

impl Outgoing {
    fn chunk(body: Chunk) -> Self {
        let size_line = SizeLine::new(body.remaining());
        Outgoing { head: Bytes::new(), size_line, body: Some(Box::new(body)), tail: b"\r\n" }
    }

    fn last_chunk() -> Self {
        let head = Bytes::from_static(b"0\r\n\r\n");
        Outgoing { head, size_line: SizeLine::default(), body: None, tail: b"" }
    }
}

impl Buf for Outgoing {
    fn remaining(&self) -> usize {
        self.head.len()
            + self.size_line.remaining()
            + self.body.as_ref().map_or(0, Buf::remaining)
            + self.tail.len()
    }

    fn chunk(&self) -> &[u8] {
        if !self.head.is_empty() {
            &self.head
        } else if self.size_line.has_remaining() {
            self.size_line.chunk()
        } else if let Some(body) = self.body.as_ref().filter(|b| b.has_remaining()) {
            body.chunk()
        } else {
            self.tail
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        let from_head = cnt.min(self.head.len());
        self.head.advance(from_head);
        cnt -= from_head;
        let from_size = cnt.min(self.size_line.remaining());
        self.size_line.advance(from_size);
        cnt -= from_size;
        if let Some(body) = &mut self.body {
            let from_body = cnt.min(body.remaining());
            body.advance(from_body);
            cnt -= from_body;
        }
        self.tail = &self.tail[cnt.min(self.tail.len())..];
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for piece in [&self.head[..], self.size_line.chunk()] {
            if !piece.is_empty() && n < dst.len() {
                dst[n] = IoSlice::new(piece);
                n += 1;
            }
        }
        if let Some(body) = &self.body {
            // A chunk fills every slice it is given while it has parts left, so room left
            // over means the whole body is in and the tail may follow.
            n += body.chunks_vectored(&mut dst[n..]);
        }
        if !self.tail.is_empty() && n < dst.len() {
            dst[n] = IoSlice::new(self.tail);
            n += 1;
        }
        n
    }
}

/// A chunk-size line, `<hex length>\r\n`, without allocating.
#[derive(Default)]
struct SizeLine {
    buf: [u8; 18],
    start: u8,
    end: u8,
}

impl SizeLine {
    fn new(len: usize) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut line = SizeLine::default();
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            line.buf[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
        }
        line.buf[digits..digits + 2].copy_from_slice(b"\r\n");
        line.end = (digits + 2) as u8;
        line
    }
}

impl Buf for SizeLine {
    fn remaining(&self) -> usize {
        usize::from(self.end - self.start)
    }

    fn chunk(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..usize::from(self.end)]
    }

    fn advance(&mut self, cnt: usize) {
        self.start += cnt.min(self.remaining()) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(out: &mut Outgoing, max_slices: usize, max_write: usize) -> Vec<u8> {
        let mut written = Vec::new();
        while out.has_remaining() {
            let mut slices = vec![IoSlice::new(&[]); max_slices];
            let n = out.chunks_vectored(&mut slices);
            let mut take = max_write;
            let mut got = 0;
            for s in &slices[..n] {
                let part = &s[..s.len().min(take)];
                written.extend_from_slice(part);
                take -= part.len();
                got += part.len();
            }
            out.advance(got);
        }
        written
    }

    #[test]
    fn chunks_frame_their_body_through_partial_writes() {
        for (slices, write) in [(1024, usize::MAX), (2, 3), (1, 1), (3, 7)] {
            let body = Chunk::from_bytes(Bytes::from_static(b"id: 1\ndata: x\n\n"));
            let mut out = Outgoing::chunk(body);
            assert_eq!(collect(&mut out, slices, write), b"f\r\nid: 1\ndata: x\n\n\r\n");
        }
        for (len, line) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (16, "10\r\n"),
            (0xabcdef, "abcdef\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            assert_eq!(SizeLine::new(len).chunk(), line.as_bytes());
        }
        let mut last = Outgoing::last_chunk();
        assert_eq!(collect(&mut last, 4, 2), b"0\r\n\r\n");
        let mut head = Outgoing {
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
            size_line: SizeLine::default(),
            body: None,
            tail: b"",
        };
        assert_eq!(collect(&mut head, 4, 5), b"HTTP/1.1 200 OK\r\n\r\n");
    }
}

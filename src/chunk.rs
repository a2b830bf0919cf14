//! Writing shared by both edges: a [`Chunk`] is one wakeup's worth of a stream, small frames
//! copied into one contiguous buffer and large frames shared, and [`poll_write_buf`] hands a
//! buffer like it to the socket in vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

use crate::metrics::{Metrics, Transport};

/// Frames up to this size are copied into the chunk's own buffer; larger ones are written from
/// the shared frame. Measured with `benches/fanout.rs`: handing the kernel one contiguous buffer
/// instead of a hundred 130-byte slices more than pays for the copy of small frames.
const COPY_AT_MOST: usize = 1024;

/// Most bytes of events a writer takes from the topic logs per wakeup, so one write stays a
/// bounded size and one busy stream cannot hold a worker thread for long.
pub(crate) const MAX_CHUNK_BYTES: usize = 256 << 10;

/// Most slices handed to one vectored write: Linux's `IOV_MAX`, the most `writev` takes. A chunk
/// of events has at most `MAX_CHUNK_BYTES / COPY_AT_MOST` shared frames with a copy buffer
/// between each two, about 512 slices, so one call can take all of it.
const MAX_IOVECS: usize = 1024;

/// Slices a write of a typical chunk needs at most.
const FEW_IOVECS: usize = 16;

/// Writes `buf` to `io` with vectored writes until it is empty. `Pending` when the socket is
/// full (whatever was written is consumed from `buf`); an error when the connection is broken.
pub(crate) fn poll_write_buf<W: AsyncWrite + Unpin, B: Buf>(
    io: &mut W,
    cx: &mut Context<'_>,
    buf: &mut B,
) -> Poll<io::Result<()>> {
    while buf.has_remaining() {
        let written = {
            // Most writes have a few slices: fill a small array first, and set up the large
            // one (16 KiB to initialise) only for a buffer that fills the small one.
            let mut few = [IoSlice::new(&[]); FEW_IOVECS];
            let n = buf.chunks_vectored(&mut few);
            if n < FEW_IOVECS {
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &few[..n]))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let n = buf.chunks_vectored(&mut slices);
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
            }
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        buf.advance(written);
    }
    Poll::Ready(Ok(()))
}

/// First allocation of a chunk's copy buffer.
const INITIAL_BUFFER: usize = 16 << 10;

/// One write's worth of a stream, as a `Buf` for a vectored write: small frames copied into one
/// buffer, large frames shared.
///
/// When dropped (fully written, or the connection closed) it counts what was sent.
pub(crate) struct Chunk {
    parts: VecDeque<Bytes>,
    /// Bytes of the front part already written.
    offset: usize,
    remaining: usize,
    /// Events in this chunk.
    events: usize,
    bytes_written: usize,
    /// Where to count deliveries and bytes sent, for stream chunks.
    metrics: Option<(Arc<Metrics>, Transport)>,
}

impl Chunk {
    /// A chunk of fixed bytes outside any stream's accounting (a whole response body).
    pub(crate) fn from_bytes(bytes: Bytes) -> Self {
        let mut builder = ChunkBuilder::with_capacity(0);
        builder.push_shared(bytes);
        builder.finish(None)
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a chunk");
        self.remaining -= cnt;
        self.bytes_written += cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front() else { break };
            let left = front.len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                break;
            }
            cnt -= left;
            self.offset = 0;
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (i, part) in self.parts.iter().enumerate() {
            if filled == dst.len() {
                break;
            }
            let bytes = if i == 0 { &part[self.offset..] } else { &part[..] };
            if !bytes.is_empty() {
                dst[filled] = IoSlice::new(bytes);
                filled += 1;
            }
        }
        filled
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let Some((metrics, transport)) = &self.metrics else { return };
        if self.events > 0 && self.bytes_written > 0 {
            metrics.stream_write(*transport);
        }
        let transport = metrics.transport(*transport);
        if self.remaining == 0 {
            transport.deliveries.increment(self.events as u64);
        }
        transport.sent_bytes.increment(self.bytes_written as u64);
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("remaining", &self.remaining()).finish_non_exhaustive()
    }
}

/// Assembles a chunk: consecutive small pieces go into one buffer, large frames are shared.
pub(crate) struct ChunkBuilder {
    parts: VecDeque<Bytes>,
    buf: Vec<u8>,
    pub(crate) events: usize,
}

impl ChunkBuilder {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        ChunkBuilder { parts: VecDeque::new(), buf: Vec::with_capacity(bytes), events: 0 }
    }

    /// The copy buffer, allocated on first use.
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            // Below the allocator's mmap threshold, and enough for a typical wakeup's events.
            self.buf.reserve(INITIAL_BUFFER);
        }
        &mut self.buf
    }

    /// Whether nothing was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.buf.is_empty()
    }

    pub(crate) fn push_copy(&mut self, bytes: &[u8]) {
        self.buf_mut().extend_from_slice(bytes);
    }

    pub(crate) fn push_shared(&mut self, bytes: Bytes) {
        self.flush();
        self.parts.push_back(bytes);
    }

    /// An event's frame from byte `from` on (all of it, or the part after the `id:` line),
    /// copied or shared by size.
    pub(crate) fn push_frame(&mut self, frame: &Bytes, from: usize) {
        if frame.len() - from <= COPY_AT_MOST {
            self.push_copy(&frame[from..]);
        } else {
            self.push_shared(frame.slice(from..));
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.parts.push_back(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }

    /// The chunk; `metrics` (and its transport) count what is sent.
    pub(crate) fn finish(mut self, metrics: Option<(Arc<Metrics>, Transport)>) -> Chunk {
        self.flush();
        let remaining = self.parts.iter().map(Bytes::len).sum();
        Chunk {
            parts: self.parts,
            offset: 0,
            remaining,
            events: self.events,
            bytes_written: 0,
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes and `slices` slices per call.
    struct Trickle {
        written: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let mut taken = 0;
            for slice in bufs {
                let n = slice.len().min(self.max - taken);
                self.written.extend_from_slice(&slice[..n]);
                taken += n;
            }
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn small_frames_are_copied_large_ones_shared_and_all_written_in_order() {
        let mut builder = ChunkBuilder::with_capacity(0);
        let mut expected = Vec::new();
        for i in 0..600usize {
            let frame = Bytes::from(vec![i as u8; if i % 3 == 0 { 2000 } else { 10 }]);
            expected.extend_from_slice(&frame);
            builder.push_frame(&frame, 0);
        }
        let mut chunk = builder.finish(None);
        // 200 shared frames, each after a copy buffer of the small ones before it.
        assert_eq!(chunk.parts.len(), 400);
        let mut io = Trickle { written: Vec::new(), max: usize::MAX, calls: 0 };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(poll_write_buf(&mut io, &mut cx, &mut chunk).is_ready());
        assert_eq!((io.written == expected, io.calls), (true, 1), "one writev for the chunk");
        let mut small = Chunk::from_bytes(Bytes::from(expected.clone()));
        let mut io = Trickle { written: Vec::new(), max: 7, calls: 0 };
        assert!(poll_write_buf(&mut io, &mut cx, &mut small).is_ready());
        assert!(io.written == expected, "partial writes resume where they stopped");
    }
}

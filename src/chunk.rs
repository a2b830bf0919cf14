//! Write buffers shared by both edges: a [`Chunk`] is one wakeup's worth of a stream, small
//! frames copied into one contiguous buffer and large frames shared, handed to a vectored write.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::metrics::{Metrics, Transport};

/// Frames up to this size are copied into the chunk's own buffer; larger ones are written from
/// the shared frame. Measured with `benches/fanout.rs`: handing the kernel one contiguous buffer
/// instead of a hundred 130-byte slices more than pays for the copy of small frames.
const COPY_AT_MOST: usize = 1024;

/// First allocation of a chunk's copy buffer.
const INITIAL_BUFFER: usize = 16 << 10;

/// One write's worth of a stream, as a `Buf` for a vectored write: small frames copied into one
/// buffer, large frames shared.
///
/// When dropped (fully written, or the connection closed) it counts what was sent.
pub struct Chunk {
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
    pub fn from_bytes(bytes: Bytes) -> Self {
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

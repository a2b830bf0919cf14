//! The SSE connection writer, whichever way the stream reaches the socket: it turns what the
//! client's subscription reads from its topics' logs into [`Chunk`]s — everything published
//! since the last wakeup as one chunk, written with one vectored write — opens with the preface
//! and gap notice, heartbeats when quiet, and ends (shutdown) or aborts (eviction) when the
//! client is closed.
//!
//! Through hyper, the response body hands chunks to hyper; the [`stream`](super::stream) fast
//! path writes them to the socket itself.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::time::{Instant, Sleep};

use crate::event::{Cursor, Event, EventId};
use crate::hub::Polled;
use crate::hub::Subscription;
use crate::metrics::{Metrics, Transport};
use crate::registry::Closed;
use crate::sse::encode;

/// The stream was cut by the server.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The client fell too far behind and was disconnected.
    #[error(
        "subscriber evicted: it fell further behind than its byte budget or the topic log allow"
    )]
    Evicted,
}

/// Frames up to this size are copied into the chunk's own buffer; larger ones are written from
/// the shared frame. Measured with `benches/fanout.rs`: handing the kernel one contiguous buffer
/// instead of a hundred 130-byte slices more than pays for the copy of small frames.
const COPY_AT_MOST: usize = 1024;

/// Most stream bytes taken from the logs per wakeup, so one write stays a bounded size.
const MAX_CHUNK_BYTES: usize = 256 << 10;

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
    metrics: Option<Arc<Metrics>>,
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
        let Some(metrics) = &self.metrics else { return };
        let transport = metrics.transport(Transport::Sse);
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
struct ChunkBuilder {
    parts: VecDeque<Bytes>,
    buf: Vec<u8>,
    events: usize,
}

impl ChunkBuilder {
    fn with_capacity(bytes: usize) -> Self {
        ChunkBuilder { parts: VecDeque::new(), buf: Vec::with_capacity(bytes), events: 0 }
    }

    /// The copy buffer, allocated on first use.
    fn buf_mut(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            // Below the allocator's mmap threshold, and enough for a typical wakeup's events.
            self.buf.reserve(INITIAL_BUFFER);
        }
        &mut self.buf
    }

    fn push_copy(&mut self, bytes: &[u8]) {
        self.buf_mut().extend_from_slice(bytes);
    }

    fn push_shared(&mut self, bytes: Bytes) {
        self.flush();
        self.parts.push_back(bytes);
    }

    /// An event's frame from byte `from` on (all of it, or the part after the `id:` line),
    /// copied or shared by size.
    fn push_frame(&mut self, frame: &Bytes, from: usize) {
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

    fn finish(mut self, metrics: Option<Arc<Metrics>>) -> Chunk {
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

/// The timing knobs of a stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamTiming {
    /// The reconnection delay sent in the `retry:` field.
    pub retry: Duration,
    /// Quiet time after which a heartbeat comment is written.
    pub heartbeat: Duration,
    /// Least time between two writes of a busy stream (0: write as soon as events arrive).
    pub write_delay: Duration,
}

/// The writer of one SSE stream: yields what to send next.
pub struct SseWriter {
    subscription: Subscription,
    metrics: Arc<Metrics>,
    /// Written before anything else: preface and gap notice.
    opening: Option<Chunk>,
    /// Current position on each topic, for streams of several topics (which send a cursor as
    /// their `id:`); `None` for a single topic, whose frames carry the event id.
    cursor: Option<Vec<EventId>>,
    heartbeat_every: Duration,
    /// Least time between two writes of a busy stream (`--write-delay`).
    write_delay: Duration,
    last_write: Instant,
    /// Fires for the next heartbeat, or when a delayed write is due.
    heartbeat: Pin<Box<Sleep>>,
    ended: bool,
}

impl SseWriter {
    /// The writer for `subscription`: opens with `retry:` and a comment, then a `crier.gap`
    /// notice if the resume was not exact, then every event after the start positions. Counts
    /// the stream as an open SSE connection until dropped.
    pub fn new(subscription: Subscription, timing: StreamTiming, metrics: Arc<Metrics>) -> Self {
        let StreamTiming { retry, heartbeat: heartbeat_every, write_delay } = timing;
        let transport = metrics.transport(Transport::Sse);
        transport.accepted.increment(1);
        transport.connections.increment(1);

        let multi = subscription.topics().len() > 1;
        let cursor = multi.then(|| subscription.start_positions());
        let mut opening = ChunkBuilder::with_capacity(256);
        opening.push_copy(&encode::preface(retry.as_millis() as u64));
        if !subscription.gaps().is_empty() {
            let start = subscription.start_positions();
            let id_line = match &cursor {
                Some(_) => encode::cursor_line(&start).to_vec(),
                None => encode::id_line(start[0]),
            };
            opening.push_copy(&encode::gap_event(&id_line, &subscription.gap_notice()));
        }
        let opening = opening.finish(Some(metrics.clone()));
        let now = Instant::now();
        SseWriter {
            subscription,
            metrics,
            opening: Some(opening),
            cursor,
            heartbeat_every,
            write_delay,
            last_write: now,
            heartbeat: Box::pin(tokio::time::sleep_until(now + heartbeat_every)),
            ended: false,
        }
    }

    /// The next chunk to write: the opening, everything published since the last chunk, or a
    /// heartbeat after a quiet interval. `None` once the stream has ended cleanly (shutdown);
    /// an error if the client was evicted. Registers for a wakeup when there is nothing to
    /// write.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(opening) = self.opening.take() {
            self.last_write = Instant::now();
            return Poll::Ready(Some(Ok(opening)));
        }
        // A stream written to less than `write_delay` ago gathers events until then, so a busy
        // stream costs one write per interval rather than one per wakeup; an idle one writes
        // at once.
        if !self.write_delay.is_zero() {
            let earliest = self.last_write + self.write_delay;
            if Instant::now() < earliest {
                self.heartbeat.as_mut().reset(earliest);
                if self.heartbeat.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        let mut chunk = ChunkBuilder::with_capacity(0);
        let cursor = &mut self.cursor;
        let polled = self.subscription.poll_events(cx, MAX_CHUNK_BYTES, |topic_index, event| {
            push_event(&mut chunk, cursor, topic_index, event)
        });
        match polled {
            Poll::Ready(Polled::Events) => {
                self.last_write = Instant::now();
                return Poll::Ready(Some(Ok(chunk.finish(Some(self.metrics.clone())))));
            }
            Poll::Ready(Polled::Closed(Closed::Shutdown)) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Polled::Closed(Closed::Evicted)) => {
                self.ended = true;
                return Poll::Ready(Some(Err(StreamError::Evicted)));
            }
            Poll::Pending => {}
        }
        loop {
            ready!(self.heartbeat.as_mut().poll(cx));
            let due = self.last_write + self.heartbeat_every;
            let now = Instant::now();
            if now >= due {
                self.last_write = now;
                self.heartbeat.as_mut().reset(now + self.heartbeat_every);
                let heartbeat = Chunk::from_bytes(Bytes::from_static(encode::HEARTBEAT));
                return Poll::Ready(Some(Ok(heartbeat)));
            }
            // Written since the timer was set: push it back rather than resetting on every write.
            self.heartbeat.as_mut().reset(due);
        }
    }

    /// Whether the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended
    }
}

impl Drop for SseWriter {
    fn drop(&mut self) {
        self.metrics.transport(Transport::Sse).connections.decrement(1);
    }
}

/// Adds an event to a chunk: its frame as encoded, or for a stream of several topics the
/// stream's updated cursor line followed by the frame without its own id line.
fn push_event(
    chunk: &mut ChunkBuilder,
    cursor: &mut Option<Vec<EventId>>,
    topic_index: u16,
    event: &Event,
) {
    let sse = &event.sse;
    chunk.events += 1;
    match cursor {
        None => chunk.push_frame(&sse.frame, 0),
        Some(positions) => {
            positions[usize::from(topic_index)] = event.id;
            let buf = chunk.buf_mut();
            buf.extend_from_slice(b"id: ");
            Cursor::write_positions(positions, buf);
            buf.push(b'\n');
            chunk.push_frame(&sse.frame, sse.body_offset);
        }
    }
}

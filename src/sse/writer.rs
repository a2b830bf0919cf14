//! The SSE connection writer, whichever way the stream reaches the socket: it turns what the
//! client's subscription yields into [`Chunk`]s — everything queued since the last wakeup as
//! one chunk, written with one vectored write — opens with the preface, gap notice and replay,
//! heartbeats when quiet, and ends (shutdown) or aborts (eviction) when the queue closes.
//!
//! [`SseBody`](super::body::SseBody) hands chunks to hyper; the
//! [`stream`](super::stream) fast path writes them to the socket itself.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::time::{Instant, Sleep};

use crate::event::EventId;
use crate::hub::Subscription;
use crate::metrics::{Metrics, Transport};
use crate::registry::{ClientQueue, Closed, Delivery, Drained};
use crate::sse::encode;

/// The stream was cut by the server.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The client fell too far behind and was disconnected.
    #[error("subscriber evicted: its queue exceeded the configured byte budget")]
    Evicted,
}

/// Something hyper can write as one piece of a response body.
trait Part {
    fn bytes(&self) -> &[u8];
}

impl Part for Bytes {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Part for Delivery {
    fn bytes(&self) -> &[u8] {
        &self.event.sse.frame
    }
}

/// A queue of parts written front to back, with vectored access for `writev`.
struct Parts<P> {
    parts: VecDeque<P>,
    /// Bytes of the front part already written.
    offset: usize,
    remaining: usize,
}

impl<P: Part> Parts<P> {
    fn new(parts: VecDeque<P>) -> Self {
        let remaining = parts.iter().map(|p| p.bytes().len()).sum();
        Parts { parts, offset: 0, remaining }
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p.bytes()[self.offset..])
    }

    fn advance(&mut self, mut n: usize) -> usize {
        let mut finished = 0;
        self.remaining -= n;
        while n > 0 {
            let Some(front) = self.parts.front() else {
                break;
            };
            let left = front.bytes().len() - self.offset;
            if n < left {
                self.offset += n;
                break;
            }
            n -= left;
            self.offset = 0;
            self.parts.pop_front();
            finished += 1;
        }
        finished
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (i, part) in self.parts.iter().enumerate() {
            if filled == dst.len() {
                break;
            }
            let bytes = if i == 0 { &part.bytes()[self.offset..] } else { part.bytes() };
            if !bytes.is_empty() {
                dst[filled] = IoSlice::new(bytes);
                filled += 1;
            }
        }
        filled
    }
}

enum Content {
    /// Events of a single-topic stream: each frame is written as encoded at publish.
    Events(Parts<Delivery>),
    /// Anything else: preface, gap notice, replay, cursor lines, heartbeats.
    Frames(Parts<Bytes>),
}

/// One write's worth of a stream: a `Buf` over shared frames, never a copy of them.
///
/// When dropped (fully written, or the connection closed) it returns its queue bytes to the
/// client's budget, hands its deque back for reuse, and counts what was sent.
pub struct Chunk {
    content: Content,
    /// Queue budget this chunk holds, released on drop.
    queued_bytes: usize,
    /// Events in this chunk.
    events: usize,
    events_written: usize,
    bytes_written: usize,
    owner: Option<(Arc<ClientQueue>, Arc<Metrics>)>,
}

impl Chunk {
    /// A chunk of fixed bytes outside any stream's accounting (a whole response body).
    pub fn from_bytes(bytes: Bytes) -> Self {
        let mut parts = VecDeque::with_capacity(1);
        parts.push_back(bytes);
        Chunk::frames(parts, 0, 0, None)
    }

    fn frames(
        parts: VecDeque<Bytes>,
        queued_bytes: usize,
        events: usize,
        owner: Option<(Arc<ClientQueue>, Arc<Metrics>)>,
    ) -> Self {
        Chunk {
            content: Content::Frames(Parts::new(parts)),
            queued_bytes,
            events,
            events_written: 0,
            bytes_written: 0,
            owner,
        }
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match &self.content {
            Content::Events(p) => p.remaining,
            Content::Frames(p) => p.remaining,
        }
    }

    fn chunk(&self) -> &[u8] {
        match &self.content {
            Content::Events(p) => p.chunk(),
            Content::Frames(p) => p.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining(), "advance past the end of a chunk");
        self.bytes_written += cnt;
        match &mut self.content {
            Content::Events(p) => self.events_written += p.advance(cnt),
            Content::Frames(p) => {
                p.advance(cnt);
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match &self.content {
            Content::Events(p) => p.chunks_vectored(dst),
            Content::Frames(p) => p.chunks_vectored(dst),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let Some((queue, metrics)) = &self.owner else {
            return;
        };
        queue.release(self.queued_bytes);
        let transport = metrics.transport(Transport::Sse);
        let delivered = match &mut self.content {
            Content::Events(p) => {
                let deque = std::mem::take(&mut p.parts);
                queue.recycle(deque, self.events);
                self.events_written
            }
            // Frames mix events with other lines; count them once everything is out.
            Content::Frames(p) if p.remaining == 0 => self.events,
            Content::Frames(_) => 0,
        };
        transport.deliveries.increment(delivered as u64);
        transport.sent_bytes.increment(self.bytes_written as u64);
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("remaining", &self.remaining()).finish_non_exhaustive()
    }
}

/// The writer of one SSE stream: yields what to send next.
pub struct SseWriter {
    subscription: Subscription,
    metrics: Arc<Metrics>,
    /// Written before anything queued: preface, gap notice, replay.
    opening: Option<Chunk>,
    /// Current position on each topic, for streams of several topics (which send a cursor as
    /// their `id:`); `None` for a single topic, whose frames carry the event id.
    cursor: Option<Vec<EventId>>,
    /// Deque swapped with the queue's on each drain.
    drained: VecDeque<Delivery>,
    heartbeat_every: Duration,
    last_write: Instant,
    heartbeat: Pin<Box<Sleep>>,
    ended: bool,
}

impl SseWriter {
    /// The writer for `subscription`: opens with `retry:` and a comment, then a `crier.gap`
    /// notice if the resume was not exact, then the replay, then live events. Counts the
    /// stream as an open SSE connection until dropped.
    pub fn new(
        mut subscription: Subscription,
        retry: Duration,
        heartbeat_every: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let transport = metrics.transport(Transport::Sse);
        transport.accepted.increment(1);
        transport.connections.increment(1);

        let multi = subscription.topics().len() > 1;
        let mut cursor = multi.then(|| subscription.start_positions());
        let mut parts = VecDeque::new();
        parts.push_back(encode::preface(retry.as_millis() as u64));
        if !subscription.gaps().is_empty() {
            let start = subscription.start_positions();
            let id_line = match &cursor {
                Some(_) => encode::cursor_line(&start).to_vec(),
                None => encode::id_line(start[0]),
            };
            parts.push_back(encode::gap_event(&id_line, &subscription.gap_notice()));
        }
        let replay = subscription.take_replay();
        let replayed = replay.len();
        for delivery in replay {
            parts.extend(frame_parts(&mut cursor, &delivery));
        }
        let owner = Some((subscription.queue().clone(), metrics.clone()));
        let opening = Chunk::frames(parts, 0, replayed, owner);
        let now = Instant::now();
        SseWriter {
            subscription,
            metrics,
            opening: Some(opening),
            cursor,
            drained: VecDeque::new(),
            heartbeat_every,
            last_write: now,
            heartbeat: Box::pin(tokio::time::sleep_until(now + heartbeat_every)),
            ended: false,
        }
    }

    /// The next chunk to write: the opening, everything queued, or a heartbeat after a quiet
    /// interval. `None` once the stream has ended cleanly (shutdown); an error if the client
    /// was evicted. Registers for a wakeup when there is nothing to write.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(opening) = self.opening.take() {
            self.last_write = Instant::now();
            return Poll::Ready(Some(Ok(opening)));
        }
        match self.subscription.poll_drain(cx, &mut self.drained) {
            Poll::Ready(Drained::Events) => {
                self.last_write = Instant::now();
                return Poll::Ready(Some(Ok(self.live_chunk())));
            }
            Poll::Ready(Drained::Closed(Closed::Shutdown)) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Drained::Closed(Closed::Evicted)) => {
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

    fn live_chunk(&mut self) -> Chunk {
        let events = std::mem::take(&mut self.drained);
        let owner = Some((self.subscription.queue().clone(), self.metrics.clone()));
        let queued_bytes = events.iter().map(|d| d.event.sse.frame.len()).sum();
        let count = events.len();
        match &mut self.cursor {
            None => Chunk {
                content: Content::Events(Parts::new(events)),
                queued_bytes,
                events: count,
                events_written: 0,
                bytes_written: 0,
                owner,
            },
            cursor @ Some(_) => {
                let mut parts = VecDeque::with_capacity(count * 2);
                for delivery in &events {
                    parts.extend(frame_parts(cursor, delivery));
                }
                self.subscription.queue().recycle(events, count);
                Chunk::frames(parts, queued_bytes, count, owner)
            }
        }
    }
}

impl Drop for SseWriter {
    fn drop(&mut self) {
        self.metrics.transport(Transport::Sse).connections.decrement(1);
    }
}

/// The parts that send `delivery`: its frame as encoded, or for a stream of several topics the
/// stream's updated cursor line followed by the frame without its own id line.
fn frame_parts(
    cursor: &mut Option<Vec<EventId>>,
    delivery: &Delivery,
) -> impl Iterator<Item = Bytes> {
    let sse = &delivery.event.sse;
    let (first, second) = match cursor {
        None => (sse.frame.clone(), None),
        Some(positions) => {
            positions[delivery.topic_index as usize] = delivery.event.id;
            (encode::cursor_line(positions), Some(sse.body()))
        }
    };
    std::iter::once(first).chain(second)
}

//! The SSE connection writer, whichever way the stream reaches the socket: it turns what the
//! subscription reads from its topics' logs into [`Chunk`]s — everything published since the
//! last wakeup as one chunk, written with one vectored write — opens with the preface and gap
//! notice, heartbeats when quiet, and ends (shutdown) or aborts (eviction) when the subscriber
//! is closed.
//!
//! Two dialects: crier's own (`retry:` preface, `crier.gap` and `crier.expired` notices), and
//! plain SSE as a standard hub writes it, for a stream that filters a log by a rule of its own
//! (the Mercure hub's subscribers are the first).
//!
//! Through hyper, the response body hands chunks to hyper; the [`stream`](super::stream) fast
//! path writes them to the socket itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::chunk::{Chunk, ChunkBuilder, MAX_CHUNK_BYTES};
use crate::codec::{gap, sse};
use crate::event::{Event, EventId};
use crate::http::{ChunkStream, StreamError, StreamSlot};
use crate::hub::{Closed, Polled, Subscription};
use crate::metrics::{ConnectionGuard, Metrics, Transport};

/// The timing knobs of a stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamTiming {
    /// The reconnection delay sent in the `retry:` field.
    pub(crate) retry: Duration,
    /// Quiet time after which a heartbeat comment is written.
    pub(crate) heartbeat: Duration,
}

/// Which of a topic's events a stream delivers, decided per event by the stream's own rule
/// (a Mercure subscriber's selectors): the frame is shared, only the decision is per stream.
pub(crate) trait EventFilter: Send {
    /// Whether the stream delivers `event`.
    fn admits(&mut self, event: &Event) -> bool;
}

/// A stream in plain SSE, as a standard hub writes it: no `retry:` preface, a bare `:` comment
/// to open and as the heartbeat, no notice of crier's (a resume that was not exact is for the
/// caller to tell some other way), a plain end when the token expires; and only the events its
/// filter admits.
struct Plain {
    filter: Box<dyn EventFilter>,
}

/// The opening and heartbeat comment of a plain stream.
const PLAIN_COMMENT: &[u8] = b":\n";

/// What every writer is made of, whatever its dialect.
struct Parts<'a> {
    subscription: Subscription,
    timing: StreamTiming,
    metrics: &'a Arc<Metrics>,
    expires_in: Option<Duration>,
}

/// The writer of one SSE stream: yields what to send next.
pub(crate) struct SseWriter {
    subscription: Subscription,
    metrics: Arc<Metrics>,
    /// Counts the stream as an open SSE connection while the writer lives.
    _open: ConnectionGuard,
    /// Its place among its address's open streams.
    stream_slot: Option<StreamSlot>,
    /// Written before anything else: preface and gap notice.
    /// Boxed: sent first, then gone, so it should not take room all the stream's life.
    opening: Option<Box<Chunk>>,
    /// Current position on each topic, for streams of several topics (which send a cursor as
    /// their `id:`); `None` for a single topic, whose frames carry the event id.
    cursor: Option<Vec<EventId>>,
    heartbeat_every: Duration,
    last_write: Instant,
    /// Fires for the next heartbeat, or when a gathered write is due.
    heartbeat: Pin<Box<Sleep>>,
    /// Fires when the token the stream was opened with expires.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Set for a stream in plain SSE; crier's dialect otherwise.
    plain: Option<Box<Plain>>,
    /// `format=json`: each event's data is its JSON envelope, which names its topic.
    json: bool,
    ended: bool,
}

impl SseWriter {
    /// Holds the stream's place among its address's open streams while the stream lives.
    pub(crate) fn hold(&mut self, slot: Option<StreamSlot>) {
        self.stream_slot = slot;
    }

    /// The writer for `subscription`: opens with `retry:` and a comment, then a `crier.gap`
    /// notice naming every topic whose resume was not exact, then every event after the start
    /// positions. Counts the stream as an open SSE connection until dropped. With
    /// `expires_in`, the stream ends with a `crier.expired` event that long from now.
    pub(crate) fn new(
        subscription: Subscription,
        timing: StreamTiming,
        metrics: &Arc<Metrics>,
        expires_in: Option<Duration>,
    ) -> Self {
        let start = subscription.start_positions();
        let mut cursor = (start.len() > 1).then(|| start.clone());
        let mut opening = ChunkBuilder::with_capacity(256);
        opening.push_copy(&sse::preface(timing.retry.as_millis() as u64));
        let gaps = subscription.gaps();
        if !gaps.is_empty() {
            // One notice for all topics, whose id is where the stream starts: the start
            // positions, which a stream of several topics sends as its cursor.
            let notice = gap::notice(&gaps, start[0]);
            push_frame(&mut opening, cursor.as_mut().map(|c| (c, None)), &notice, false);
        }
        drop(gaps);
        let opening = opening.finish(Some((metrics.clone(), Transport::Sse)));
        let parts = Parts { subscription, timing, metrics, expires_in };
        SseWriter::build(parts, opening, cursor, None)
    }

    /// The writer of a stream in plain SSE that delivers the events `filter` admits (see
    /// [`Plain`]); with `expires_in`, it ends that long from now.
    pub(crate) fn plain(
        subscription: Subscription,
        timing: StreamTiming,
        metrics: &Arc<Metrics>,
        expires_in: Option<Duration>,
        filter: Box<dyn EventFilter>,
    ) -> Self {
        let opening = Chunk::from_bytes(Bytes::from_static(PLAIN_COMMENT));
        let parts = Parts { subscription, timing, metrics, expires_in };
        SseWriter::build(parts, opening, None, Some(Box::new(Plain { filter })))
    }

    fn build(
        parts: Parts<'_>,
        opening: Chunk,
        cursor: Option<Vec<EventId>>,
        plain: Option<Box<Plain>>,
    ) -> Self {
        let Parts { subscription, timing, metrics, expires_in } = parts;
        let StreamTiming { heartbeat: heartbeat_every, .. } = timing;
        let now = Instant::now();
        SseWriter {
            subscription,
            metrics: metrics.clone(),
            _open: metrics.open_connection(Transport::Sse),
            stream_slot: None,
            opening: Some(Box::new(opening)),
            cursor,
            heartbeat_every,
            last_write: now,
            heartbeat: Box::pin(tokio::time::sleep_until(now + heartbeat_every)),
            expiry: expires_in.map(|left| Box::pin(tokio::time::sleep_until(now + left))),
            plain,
            json: false,
            ended: false,
        }
    }

    /// Sends each event's JSON envelope as its data (`format=json`): on a stream of several
    /// topics, a client reads each event's topic from it rather than from the cursor.
    pub(crate) fn with_json_envelopes(mut self) -> Self {
        self.json = true;
        self
    }

    /// The next chunk to write: the opening, everything published since the last chunk, or a
    /// heartbeat after a quiet interval, or the `crier.expired` event when the token runs out.
    /// `None` once the stream has ended cleanly (shutdown, expiry);
    /// an error if the client was evicted. Registers for a wakeup when there is nothing to
    /// write.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Chunk, StreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(opening) = self.opening.take() {
            self.last_write = Instant::now();
            return Poll::Ready(Some(Ok(*opening)));
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.ended = true;
            if self.plain.is_some() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Ok(Chunk::from_bytes(Bytes::from_static(sse::EXPIRED)))));
        }
        // A busy stream gathers events for the write delay, so it costs one write per delay
        // rather than one per wakeup; a quiet one writes at once.
        if let Some(due) = self.subscription.gather(cx, Instant::now()) {
            self.heartbeat.as_mut().reset(due);
            if self.heartbeat.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Reads whose every event was filtered out before the task yields to others.
        let mut filtered_reads = 0;
        loop {
            let mut chunk = ChunkBuilder::with_capacity(0);
            let cursor = &mut self.cursor;
            let json = self.json;
            let mut filter = self.plain.as_mut().map(|plain| &mut plain.filter);
            let polled =
                self.subscription.poll_events(cx, MAX_CHUNK_BYTES, |topic_index, event| {
                    if let Some(filter) = filter.as_mut()
                        && !filter.admits(event)
                    {
                        return;
                    }
                    chunk.events += 1;
                    let cursor = cursor.as_mut().map(|c| (c, Some(topic_index)));
                    push_frame(&mut chunk, cursor, event, json);
                });
            match polled {
                // Everything read was filtered out: read on (an empty chunk would end the body).
                Poll::Ready(Polled::Events) if chunk.is_empty() => {
                    filtered_reads += 1;
                    if filtered_reads == 16 {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Polled::Events) => {
                    self.last_write = Instant::now();
                    let chunk = chunk.finish(Some((self.metrics.clone(), Transport::Sse)));
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(Polled::Closed(Closed::Shutdown)) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Polled::Closed(Closed::Evicted)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(StreamError::Evicted)));
                }
                Poll::Pending => break,
            }
        }
        loop {
            ready!(self.heartbeat.as_mut().poll(cx));
            let due = self.last_write + self.heartbeat_every;
            let now = Instant::now();
            if now >= due {
                self.last_write = now;
                self.heartbeat.as_mut().reset(now + self.heartbeat_every);
                let comment = if self.plain.is_some() { PLAIN_COMMENT } else { sse::HEARTBEAT };
                let heartbeat = Chunk::from_bytes(Bytes::from_static(comment));
                return Poll::Ready(Some(Ok(heartbeat)));
            }
            // Written since the timer was set: push it back rather than resetting on every write.
            self.heartbeat.as_mut().reset(due);
        }
    }

    /// Whether the stream has ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }
}

impl ChunkStream for SseWriter {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, StreamError>>> {
        SseWriter::poll_chunk(self, cx)
    }

    fn is_ended(&self) -> bool {
        SseWriter::is_ended(self)
    }
}

/// Adds an event's frame to a chunk: as encoded; or, on a stream of several topics (`cursor`
/// with the event's topic index, if it moves the cursor), the stream's cursor line followed by
/// the frame without its own id line. With `json`, an event of a topic (not one of crier's own
/// notices) has its JSON envelope as its data, shared with WebSocket readers.
fn push_frame(
    chunk: &mut ChunkBuilder,
    cursor: Option<(&mut Vec<EventId>, Option<u16>)>,
    event: &Event,
    json: bool,
) {
    let frame = event.frames.sse();
    let body_from = frame.len() - event.frames.sse_body().len();
    let envelope =
        json && !event.name.as_ref().is_some_and(|name| name.as_str().starts_with("crier."));
    match cursor {
        None if !envelope => return chunk.push_frame(frame, 0),
        None => chunk.push_copy(&frame[..body_from]),
        Some((positions, topic_index)) => {
            if let Some(index) = topic_index {
                positions[usize::from(index)] = event.id;
            }
            sse::put_cursor_line(positions, chunk.buf_mut());
            if !envelope {
                return chunk.push_frame(frame, body_from);
            }
        }
    }
    if let Some(name) = &event.name {
        chunk.push_copy(b"event: ");
        chunk.push_copy(name.as_str().as_bytes());
        chunk.push_copy(b"\n");
    }
    chunk.push_copy(b"data: ");
    let (envelope, from) = crate::codec::ws::json_envelope(event);
    chunk.push_frame(envelope, from);
    chunk.push_copy(b"\n\n");
}

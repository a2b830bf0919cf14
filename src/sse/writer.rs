//! The SSE connection writer, whichever way the stream reaches the socket: it turns what the
//! client's subscription reads from its topics' logs into [`Chunk`]s — everything published
//! since the last wakeup as one chunk, written with one vectored write — opens with the preface
//! and gap notice, heartbeats when quiet, and ends (shutdown) or aborts (eviction) when the
//! client is closed.
//!
//! Through hyper, the response body hands chunks to hyper; the [`stream`](super::stream) fast
//! path writes them to the socket itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::chunk::{Chunk, ChunkBuilder};
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

/// Most stream bytes taken from the logs per wakeup, so one write stays a bounded size.
const MAX_CHUNK_BYTES: usize = 256 << 10;

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
        let opening = opening.finish(Some((metrics.clone(), Transport::Sse)));
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

//! What a WebSocket connection is for, behind one trait: the connection does the protocol (IO,
//! framing, heartbeats, closing) and asks its [`Handler`] what to do with each message and what
//! to send. Two handlers: [`Echo`] (`/ws/echo`) here, and the session (`/ws`) in
//! [`super::session`].

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use super::frame::Violation;
use super::message::Message;
use crate::chunk::ChunkBuilder;
use crate::codec::ws::{self, OP_BINARY, OP_TEXT};
use crate::hub::Polled;

/// Frames a handler gives the connection to send, before any event.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbox {
    /// Queues a frame.
    pub(super) fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Bytes of frames waiting.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves every frame waiting into `chunk`; whether there were any.
    pub(super) fn drain_into(&mut self, chunk: &mut ChunkBuilder) -> bool {
        let any = !self.frames.is_empty();
        for frame in self.frames.drain(..) {
            chunk.push_frame(&frame, 0);
        }
        self.bytes = 0;
        any
    }
}

/// The part of a connection that is not the WebSocket protocol.
pub(super) trait Handler: Send {
    /// Largest message the connection accepts (larger: close 1009).
    fn max_message(&self) -> usize;

    /// Frames to send first, when the connection starts; an error if the connection must
    /// close before anything else is sent.
    fn open(&mut self, out: &mut Outbox) -> Result<(), Violation> {
        let _ = out;
        Ok(())
    }

    /// A complete message from the client; an error if the connection must close (the client
    /// broke a rule, or its command failed where no reply can say so).
    fn on_message(&mut self, message: Message, out: &mut Outbox) -> Result<(), Violation>;

    /// Whether the handler waits on something (a command waiting for Redis): the connection
    /// reads nothing more meanwhile, so replies keep the commands' order.
    fn is_busy(&self) -> bool {
        false
    }

    /// Drives what the handler waits on: ready when it finished (its reply is in `out`), with
    /// an error if the connection must close.
    fn poll_busy(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<Result<(), Violation>> {
        let _ = (cx, out);
        Poll::Pending
    }

    /// Adds the events due (about `budget` bytes) to `chunk`, or registers for a wakeup; an
    /// error if the connection must close after what `chunk` holds.
    fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
        budget: usize,
        chunk: &mut ChunkBuilder,
    ) -> Poll<Result<Polled, Violation>> {
        let _ = (cx, budget, chunk);
        Poll::Pending
    }

    /// Whether to gather more events before the next [`Handler::poll_events`]: until the
    /// deadline returned, or a wakeup (see [`crate::hub::Subscription::gather`]).
    fn gather(&mut self, cx: &mut Context<'_>, now: Instant) -> Option<Instant> {
        let _ = (cx, now);
        None
    }

    /// Starts a shutdown; whether the handler first hands over what it holds (then reports
    /// `Closed(Shutdown)` from [`Handler::poll_events`]). If not, the connection closes at once.
    fn drain(&mut self) -> bool {
        false
    }

    /// When the client's credentials run out: the connection closes then (4001) unless the
    /// handler moves it.
    fn expiry(&self) -> Option<Instant> {
        None
    }

    /// Whether the server dropped the client while writes are stuck: close at once.
    fn is_evicted(&self) -> bool {
        false
    }
}

/// `/ws/echo`: every message comes back unchanged, text or binary, as one frame.
#[derive(Debug)]
pub(super) struct Echo {
    max_message: usize,
}

impl Echo {
    /// The conformance target takes at least the 16 MiB messages of Autobahn's limits cases.
    pub(super) fn new(max_message: usize) -> Self {
        Echo { max_message: max_message.max(16 << 20) }
    }
}

impl Handler for Echo {
    fn max_message(&self) -> usize {
        self.max_message
    }

    fn on_message(&mut self, message: Message, out: &mut Outbox) -> Result<(), Violation> {
        let (opcode, payload) = match message {
            Message::Text(p) => (OP_TEXT, p),
            Message::Binary(p) => (OP_BINARY, p),
        };
        // Header and payload go out as two pieces: a large payload is written from the
        // message's own buffer rather than copied.
        let (head, len) = ws::header(opcode, payload.len());
        out.push(Bytes::copy_from_slice(&head[..len]));
        out.push(payload);
        Ok(())
    }
}

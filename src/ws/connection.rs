//! One WebSocket connection after the handshake: a single future that reads the client's
//! frames and hands messages to its [`Handler`], writes everything due in one vectored write
//! per wakeup (the handler's frames and control frames first, then its events), keeps the
//! heartbeat ([`super::liveness`]) and runs the close handshake ([`super::closing`]).
//!
//! Memory: an idle connection holds no buffer. Bytes are read into a stack buffer; only a frame
//! cut by a read is kept, in a buffer sized to that frame and released once it is consumed.
//! Reading pauses while more than [`MAX_PENDING`] bytes wait to be written, so a client that
//! sends faster than it reads cannot grow the server's memory.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::close::CloseCode;
use super::closing::Closing;
use super::frame::Violation;
use super::handler::{Handler, Outbox};
use super::inbound::{Decoder, Inbound};
use super::liveness::{Due, Liveness};
use crate::chunk::{Chunk, ChunkBuilder, MAX_CHUNK_BYTES, poll_write_buf};
use crate::codec::ws::{self, OP_PING, OP_PONG};
use crate::hub::Closed;
use crate::hub::Polled;
use crate::metrics::{ConnectionGuard, Metrics, Transport};

/// Bytes waiting to be written beyond which the connection stops reading.
pub(crate) const MAX_PENDING: usize = 1 << 20;

/// Size of the stack buffer reads go to.
const READ_CHUNK: usize = 8 << 10;

/// A WebSocket connection.
pub(crate) struct Connection<IO> {
    io: IO,
    handler: Box<dyn Handler>,
    metrics: Arc<Metrics>,
    /// Counts the connection as an open WebSocket while it lives.
    _open: ConnectionGuard,
    /// A frame cut by a read, waiting for the rest; or frames that arrived behind a busy
    /// handler.
    partial: BytesMut,
    /// `partial` may hold complete frames to handle before reading more.
    partial_ready: bool,
    decoder: Decoder,
    /// What is being written.
    /// Boxed: an idle connection (most of them) holds no chunk, only room for one.
    out: Option<Box<Chunk>>,
    /// Frames waiting to be written, before any event.
    outbox: Outbox,
    closing: Closing,
    liveness: Liveness,
    /// Events are gathered until then (the write delay).
    events_due: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    /// A connection on an upgraded socket, pinging every `heartbeat`.
    pub(super) fn new(
        io: IO,
        mut handler: Box<dyn Handler>,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let open = metrics.open_connection(Transport::Ws);
        let decoder = Decoder::new(handler.max_message());
        let mut outbox = Outbox::default();
        let mut closing = Closing::Open;
        if let Err(ending) = handler.open(&mut outbox) {
            closing.begin(ending.code, ending.reason, false);
        }
        let liveness = Liveness::new(heartbeat, now);
        let timer_at = liveness.next_wakeup();
        Connection {
            io,
            handler,
            metrics,
            _open: open,
            partial: BytesMut::new(),
            partial_ready: false,
            decoder,
            out: None,
            outbox,
            closing,
            liveness,
            events_due: None,
            timer: Box::pin(tokio::time::sleep_until(timer_at)),
            timer_at,
        }
    }

    /// Starts a close for shutdown (1001), after the events already published.
    pub(crate) fn start_shutdown(&mut self) {
        if !self.handler.drain() {
            self.closing.begin(CloseCode::GOING_AWAY, "server shutting down", false);
        }
    }

    /// Reads and handles whatever the client sent; returns whether anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closing.reads() {
            return false;
        }
        // Backpressure: stop reading while output piles up unwritten, or while the handler
        // waits on a command.
        if self.outbox.bytes() > MAX_PENDING
            || self.out.as_ref().is_some_and(|o| o.remaining() > MAX_PENDING)
            || self.handler.is_busy()
        {
            return false;
        }
        if std::mem::take(&mut self.partial_ready) {
            self.handle_partial(cx);
            return true;
        }
        if self.partial.is_empty() {
            // Not zeroed: most polls read nothing, and 8 KiB of zeroes per poll shows up.
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            let Some(n) = self.read_into(cx, &mut buf) else { return false };
            if n > 0 {
                let read = buf.filled_mut();
                let consumed = self.handle_bytes(cx, read);
                if consumed < n {
                    self.partial.reserve(self.decoder.needs().max(n - consumed));
                    self.partial.extend_from_slice(&read[consumed..]);
                }
            }
            return true;
        }
        // Finish the cut frame: read straight into its buffer.
        self.partial
            .reserve(self.decoder.needs().saturating_sub(self.partial.len()).max(READ_CHUNK));
        let mut partial = std::mem::take(&mut self.partial);
        let filled = {
            let mut buf = ReadBuf::uninit(partial.spare_capacity_mut());
            self.read_into(cx, &mut buf)
        };
        let Some(filled) = filled else {
            self.partial = partial;
            return false;
        };
        // SAFETY: `poll_read` initialized `filled` bytes of the spare capacity.
        unsafe { partial.set_len(partial.len() + filled) };
        self.partial = partial;
        if filled > 0 {
            self.handle_partial(cx);
        }
        true
    }

    /// Reads into `buf`: `None` if nothing is there yet, `Some(0)` when the client is gone (the
    /// connection is finished), else how many bytes arrived.
    fn read_into(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Option<usize> {
        let n = match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => return None,
            Poll::Ready(Ok(())) => buf.filled().len(),
            Poll::Ready(Err(_)) => 0,
        };
        if n == 0 {
            self.closing.finish();
        } else {
            self.liveness.heard(Instant::now());
        }
        Some(n)
    }

    /// Handles the complete frames held in `partial`, keeping what is left.
    fn handle_partial(&mut self, cx: &mut Context<'_>) {
        let mut partial = std::mem::take(&mut self.partial);
        let consumed = self.handle_bytes(cx, &mut partial);
        partial.advance(consumed);
        // Release a large frame's buffer now rather than when the connection ends.
        self.partial = if partial.is_empty() { BytesMut::new() } else { partial };
    }

    /// Handles the complete frames at the start of `buf`; returns how many bytes they took.
    /// Stops early while the handler is busy: the rest waits in `partial`.
    fn handle_bytes(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        while self.closing.reads() && !self.handler.is_busy() {
            let Some(item) = self.decoder.next(buf, &mut pos) else { break };
            self.handle_inbound(item);
            // A command answered at once (a single node) leaves nothing waiting.
            if self.handler.is_busy() {
                self.poll_busy(cx);
            }
        }
        if self.closing.reads() { pos } else { buf.len() }
    }

    fn handle_inbound(&mut self, item: Inbound<'_>) {
        match item {
            Inbound::Ping(payload) => {
                if self.closing.is_open() {
                    self.outbox.push(ws::encode(OP_PONG, payload));
                }
            }
            Inbound::Pong | Inbound::Fragment => {}
            Inbound::Violation(violation) => self.fail(violation),
            Inbound::Close(code) => self.closing.peer_closed(code),
            // Once a close has begun, messages are read and dropped.
            Inbound::Message(_) if !self.closing.is_open() => {}
            Inbound::Message(message) => {
                if let Err(ending) = self.handler.on_message(message, &mut self.outbox) {
                    self.end(ending);
                }
            }
        }
    }

    /// Drives the command the handler waits on; returns whether it finished.
    fn poll_busy(&mut self, cx: &mut Context<'_>) -> bool {
        match self.handler.poll_busy(cx, &mut self.outbox) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(ending)) => {
                self.end(ending);
                true
            }
        }
    }

    /// The handler ends the connection: close after what is queued.
    fn end(&mut self, ending: Violation) {
        tracing::debug!(code = %ending.code, reason = %ending.reason, "closing a WebSocket");
        self.closing.begin(ending.code, ending.reason, false);
    }

    /// A client broke the protocol: close with the violation's code and read nothing more.
    fn fail(&mut self, violation: Violation) {
        tracing::debug!(code = %violation.code, reason = %violation.reason, "closing a WebSocket");
        self.closing.begin(violation.code, violation.reason, true);
    }

    /// Writes what is due; returns whether anything was written. Ends the connection when the
    /// socket is broken.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if let Some(out) = &mut self.out {
                let before = out.remaining();
                let written = poll_write_buf(&mut self.io, cx, out);
                let wrote = out.remaining() < before;
                progress |= wrote;
                match written {
                    Poll::Pending => {
                        self.liveness.wrote(Instant::now(), wrote, true);
                        return progress;
                    }
                    Poll::Ready(Err(_)) => {
                        self.closing.finish();
                        return progress;
                    }
                    Poll::Ready(Ok(())) => {}
                }
                self.out = None;
                let now = Instant::now();
                self.liveness.wrote(now, true, false);
                self.liveness.chunk_written(now);
                self.closing.frame_written();
            }
            if !self.closing.writes() {
                return progress;
            }
            match self.next_chunk(cx) {
                Some(chunk) => self.out = Some(Box::new(chunk)),
                None => return progress,
            }
        }
    }

    /// Everything due in one chunk: the frames waiting, then the events published since the
    /// last chunk, then the close frame if a close has begun.
    fn next_chunk(&mut self, cx: &mut Context<'_>) -> Option<Chunk> {
        let mut chunk = ChunkBuilder::with_capacity(0);
        if self.outbox.drain_into(&mut chunk) {
            self.liveness.chunk_built();
        }
        // A busy connection gathers events for the write delay; a quiet one writes at once.
        self.events_due =
            if self.closing.is_open() { self.handler.gather(cx, Instant::now()) } else { None };
        if self.closing.is_open() && self.events_due.is_none() {
            match self.handler.poll_events(cx, MAX_CHUNK_BYTES, &mut chunk) {
                Poll::Ready(Err(ending)) => self.end(ending),
                Poll::Ready(Ok(Polled::Closed(Closed::Evicted))) => {
                    self.closing.begin(CloseCode::SLOW_CONSUMER, "slow consumer", false);
                }
                Poll::Ready(Ok(Polled::Closed(Closed::Shutdown))) => {
                    self.closing.begin(CloseCode::GOING_AWAY, "server shutting down", false);
                }
                Poll::Ready(Ok(Polled::Events)) | Poll::Pending => {}
            }
        }
        if let Some(close) = self.closing.take_frame() {
            chunk.push_frame(&close, 0);
        }
        if chunk.is_empty() {
            return None;
        }
        Some(chunk.finish(Some((self.metrics.clone(), Transport::Ws))))
    }

    /// Heartbeats and deadlines; returns whether the timer fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let next = if self.closing.is_finished() {
            return false;
        } else if !self.closing.is_open() {
            match self.closing.check_deadline(now) {
                Some(deadline) => deadline,
                None => return true,
            }
        } else {
            match self.liveness.poll(now) {
                Due::Dead => {
                    self.closing.begin(CloseCode::HEARTBEAT_TIMEOUT, "no answer to pings", false);
                    return true;
                }
                Due::Ping => {
                    self.outbox.push(ws::encode(OP_PING, b""));
                    return true;
                }
                Due::Nothing => {}
            }
            let mut next = self.liveness.next_wakeup();
            if let Some(expiry) = self.handler.expiry() {
                if now >= expiry {
                    self.closing.begin(CloseCode::TOKEN_EXPIRED, "token expired", false);
                    return true;
                }
                next = next.min(expiry);
            }
            match self.events_due {
                Some(due) if now >= due => {
                    self.events_due = None;
                    return true;
                }
                Some(due) => next.min(due),
                None => next,
            }
        };
        // Moved only to an earlier deadline, or once it has fired: a deadline that moved later
        // (the client keeps taking what is written, so the stall deadline moves with every
        // write) is found when the timer fires, and a busy connection does not touch the timer
        // wheel on every write.
        if next < self.timer_at || now >= self.timer_at {
            self.timer_at = next;
            self.timer.as_mut().reset(next);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Connection<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // An eviction (by the sweeper) while writes are stuck: start the close now; the
            // grace deadline drops the connection if the close cannot be written.
            if this.handler.is_evicted() {
                this.closing.begin(CloseCode::SLOW_CONSUMER, "slow consumer", false);
            }
            let answered = this.handler.is_busy() && this.poll_busy(cx);
            if answered {
                // Frames that arrived behind the command are handled before anything new.
                this.partial_ready = !this.partial.is_empty();
            }
            let read = this.poll_read(cx);
            let wrote = this.poll_write(cx);
            if this.closing.is_finished() {
                // The server closes the TCP connection first (RFC 6455 §7.1.1).
                ready!(Pin::new(&mut this.io).poll_shutdown(cx).map(|_: io::Result<()>| ()));
                return Poll::Ready(());
            }
            let fired = this.poll_timer(cx);
            if !answered && !read && !wrote && !fired {
                return Poll::Pending;
            }
        }
    }
}

impl<IO> Drop for Connection<IO> {
    fn drop(&mut self) {
        self.metrics.ws_closed(self.closing.sent().map_or(1006, CloseCode::as_u16));
    }
}

#[cfg(test)]
mod tests;

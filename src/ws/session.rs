//! One WebSocket connection after the handshake: a single future that reads the client's
//! frames (commands, pings, close), writes everything due in one vectored write per wakeup
//! (replies and control frames first, then events read from the subscription's topic logs),
//! pings on a heartbeat, and runs the close handshake.
//!
//! Memory: an idle session holds no buffer. Bytes are read into a stack buffer; only a frame
//! cut by a read is kept, in a buffer sized to that frame and released once it is consumed.
//! Reading pauses while more than [`MAX_PENDING`] bytes of replies wait to be written, so a
//! client that sends faster than it reads cannot grow the server's memory.
//!
//! Closing: a close frame from the client is answered with the same code, then the connection
//! is closed. A close the server starts (protocol error, policy, shutdown, eviction, silence) is
//! sent after whatever frame is being written, and the connection is dropped once the client
//! answers or [`CLOSE_GRACE`] has passed.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::close::CloseCode;
use super::command::{self, Command, Refused, Reply};
use super::frame::{self, OP_BINARY, OP_PING, OP_PONG, OP_TEXT, Violation};
use super::inbound::{Decoder, Inbound};
use super::message::Message;
use super::{Format, event_frame, gap_frame};
use crate::chunk::{Chunk, ChunkBuilder};
use crate::event::{EventData, EventId, EventName, TopicName};
use crate::hub::{AddError, Hub, Polled, PublishError, SubscribeError, Subscription};
use crate::metrics::{Metrics, Transport};
use crate::registry::Closed;

/// Replies waiting to be written beyond which the session stops reading.
pub const MAX_PENDING: usize = 1 << 20;

/// How long a close the server started may take before the connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Most stream bytes taken from the topic logs per wakeup.
const MAX_CHUNK_BYTES: usize = 256 << 10;

/// Size of the stack buffer reads go to.
const READ_CHUNK: usize = 8 << 10;

/// Payloads up to this size are copied into the write buffer; larger ones are shared.
const COPY_AT_MOST: usize = 1024;

/// Rejected commands in a row after which the client is disconnected (1008).
const MAX_STRIKES: u32 = 50;

/// Knobs of a session.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message accepted.
    pub max_message: usize,
    /// Ping interval; a client silent for twice this is closed.
    pub heartbeat: Duration,
    /// Commands admitted per second (and burst).
    pub commands_per_sec: u32,
    /// Largest event data a `publish` command may carry.
    pub max_event_bytes: usize,
    /// Least time between two writes of events to a busy connection (`--write-delay`).
    pub write_delay: Duration,
}

/// What the connection is for.
pub enum Role {
    /// `/ws/echo`: every message comes back unchanged.
    Echo,
    /// `/ws`: a subscription driven by commands.
    Hub(Box<HubRole>),
}

/// State of a `/ws` connection.
pub struct HubRole {
    /// The hub commands act on.
    pub hub: Arc<Hub>,
    /// The topics followed.
    pub subscription: Subscription,
    /// How events are framed.
    pub format: Format,
    /// Gap notices to send before the first events (from the handshake's resume).
    pub opening: Vec<Bytes>,
    /// Whether the peer may publish (loopback, with no credentials configured).
    pub may_publish: bool,
    bucket: TokenBucket,
    strikes: u32,
    /// A command waiting for Redis (cluster mode); later commands wait behind it, so replies
    /// keep the commands' order.
    in_flight: Option<InFlight>,
}

/// A command waiting for Redis.
struct InFlight {
    reference: Option<serde_json::Value>,
    wait: Wait,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a command waits for.
enum Wait {
    /// Redis taking a published event.
    Publish { topic: String, published: Boxed<Result<EventId, PublishError>> },
    /// The node reading a topic from Redis before subscribing to it.
    Subscribe {
        topic: String,
        last_event_id: Option<String>,
        prepared: Boxed<Result<(), SubscribeError>>,
    },
}

/// A command's outcome.
enum Outcome {
    Done(Done),
    Wait(Wait),
}

impl HubRole {
    /// The state of a new `/ws` connection.
    pub fn new(
        hub: Arc<Hub>,
        subscription: Subscription,
        format: Format,
        opening: Vec<Bytes>,
        may_publish: bool,
        commands_per_sec: u32,
    ) -> Self {
        HubRole {
            hub,
            subscription,
            format,
            opening,
            may_publish,
            bucket: TokenBucket::new(commands_per_sec),
            strikes: 0,
            in_flight: None,
        }
    }
}

/// Admits `rate` commands per second, with a burst of `rate`.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket { tokens: rate, rate, refilled: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum Closing {
    Open,
    /// A close frame with `code` is queued or sent; the connection is dropped once it is out
    /// and the peer answered, or at `deadline`.
    Started {
        code: CloseCode,
        deadline: Instant,
        written: bool,
    },
    Finished,
}

/// A WebSocket connection.
pub struct Session<IO> {
    io: IO,
    role: Role,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// A frame cut by a read, waiting for the rest; or frames that arrived behind a command
    /// waiting for Redis.
    partial: BytesMut,
    /// `partial` may hold complete frames to handle before reading more.
    partial_ready: bool,
    decoder: Decoder,
    /// The client sent a close frame or closed its side.
    peer_closed: bool,
    /// What is being written.
    out: Option<Chunk>,
    /// The chunk in `out` carries the close frame.
    out_has_close: bool,
    /// Frames waiting to be written, before any event.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// The close frame, once a close has begun: written after everything before it.
    close_frame: Option<Bytes>,
    closing: Closing,
    /// The code of the close frame sent, for metrics; `None` if the connection just dropped.
    close_sent: Option<CloseCode>,
    heard: Instant,
    pinged: Instant,
    /// When events were last taken for writing.
    events_taken: Instant,
    /// Events wait until then, under `--write-delay`.
    events_due: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Session<IO> {
    /// A session on an upgraded connection.
    pub fn new(io: IO, mut role: Role, limits: Limits, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let timer_at = now + limits.heartbeat;
        let transport = metrics.transport(Transport::Ws);
        transport.accepted.increment(1);
        transport.connections.increment(1);
        let decoder = Decoder::new(max_message(&role, &limits));
        // As if events were last written a delay ago: the first ones go out at once.
        let events_taken = now.checked_sub(limits.write_delay).unwrap_or(now);
        let mut pending = VecDeque::new();
        let mut pending_bytes = 0;
        if let Role::Hub(hub) = &mut role {
            for frame in std::mem::take(&mut hub.opening) {
                pending_bytes += frame.len();
                pending.push_back(frame);
            }
        }
        Session {
            io,
            role,
            limits,
            metrics,
            partial: BytesMut::new(),
            partial_ready: false,
            decoder,
            peer_closed: false,
            out: None,
            out_has_close: false,
            pending,
            pending_bytes,
            close_frame: None,
            closing: Closing::Open,
            close_sent: None,
            heard: now,
            pinged: now,
            events_taken,
            events_due: None,
            timer: Box::pin(tokio::time::sleep_until(timer_at)),
            timer_at,
        }
    }

    /// Starts a close for shutdown (1001), after the events already published.
    pub fn start_shutdown(&mut self) {
        match &self.role {
            // The subscription hands over what is published, then reports the shutdown.
            Role::Hub(hub) => {
                hub.subscription.client().close(Closed::Shutdown);
            }
            Role::Echo => self.begin_close(CloseCode::GOING_AWAY, "server shutting down"),
        }
    }

    fn queue(&mut self, frame: Bytes) {
        self.pending_bytes += frame.len();
        self.pending.push_back(frame);
    }

    /// Queues a close frame (unless one is already on its way) and gives the peer until
    /// `CLOSE_GRACE` to answer.
    fn begin_close(&mut self, code: CloseCode, reason: &str) {
        if !matches!(self.closing, Closing::Open) {
            return;
        }
        self.close_frame = Some(frame::close(code, reason));
        self.closing =
            Closing::Started { code, deadline: Instant::now() + CLOSE_GRACE, written: false };
    }

    fn closing_started(&self) -> bool {
        !matches!(self.closing, Closing::Open)
    }

    /// Reads and handles whatever the client sent; returns whether anything was read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.peer_closed || matches!(self.closing, Closing::Finished) {
            return false;
        }
        // Backpressure: stop reading while replies pile up unwritten, or while a command
        // waits for Redis.
        if self.pending_bytes > MAX_PENDING
            || self.out.as_ref().is_some_and(|o| o.remaining() > MAX_PENDING)
            || self.waiting()
        {
            return false;
        }
        if std::mem::take(&mut self.partial_ready) {
            let mut partial = std::mem::take(&mut self.partial);
            let consumed = self.handle_bytes(&mut partial);
            partial.advance(consumed);
            self.partial = if partial.is_empty() { BytesMut::new() } else { partial };
            return true;
        }
        if self.partial.is_empty() {
            let mut stack = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut stack);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => {
                    self.peer_gone();
                    return true;
                }
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len();
            if n == 0 {
                self.peer_gone();
                return true;
            }
            let consumed = self.handle_bytes(&mut stack[..n]);
            if consumed < n {
                self.partial.reserve(self.decoder.needs().max(n - consumed));
                self.partial.extend_from_slice(&stack[consumed..n]);
            }
            return true;
        }
        // Finish the cut frame: read straight into its buffer.
        self.partial
            .reserve(self.decoder.needs().saturating_sub(self.partial.len()).max(READ_CHUNK));
        let filled = {
            let spare = self.partial.spare_capacity_mut();
            let mut buf = ReadBuf::uninit(spare);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => {
                    self.peer_gone();
                    return true;
                }
                Poll::Ready(Ok(())) => buf.filled().len(),
            }
        };
        if filled == 0 {
            self.peer_gone();
            return true;
        }
        // SAFETY: `poll_read` initialized `filled` bytes of the spare capacity.
        unsafe { self.partial.set_len(self.partial.len() + filled) };
        let mut partial = std::mem::take(&mut self.partial);
        let consumed = self.handle_bytes(&mut partial);
        partial.advance(consumed);
        if partial.is_empty() {
            // Release a large frame's buffer now rather than when the connection ends.
            self.partial = BytesMut::new();
        } else {
            self.partial = partial;
        }
        true
    }

    /// Whether a command is waiting for Redis.
    fn waiting(&self) -> bool {
        matches!(&self.role, Role::Hub(role) if role.in_flight.is_some())
    }

    /// Polls the command waiting for Redis; returns whether it finished.
    fn poll_in_flight(&mut self, cx: &mut Context<'_>) -> bool {
        let Role::Hub(role) = &mut self.role else { return false };
        let Some(in_flight) = &mut role.in_flight else { return false };
        let finished = match &mut in_flight.wait {
            Wait::Publish { topic, published } => match published.as_mut().poll(cx) {
                Poll::Pending => return false,
                Poll::Ready(Ok(id)) => Ok(Done {
                    reply: OkReply::Published { topic: std::mem::take(topic), id: id.to_string() },
                    then: None,
                }),
                Poll::Ready(Err(e)) => Err(publish_refused(e)),
            },
            Wait::Subscribe { topic, last_event_id, prepared } => {
                match prepared.as_mut().poll(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(())) => {
                        let (topic, last_event_id) = (std::mem::take(topic), last_event_id.take());
                        role.subscribe(topic, last_event_id.as_deref())
                    }
                    Poll::Ready(Err(e)) => {
                        Err(Refused::new(super::subscribe_error_code(&e), e.to_string()))
                    }
                }
            }
        };
        let reference = role.in_flight.take().and_then(|in_flight| in_flight.reference);
        if !self.closing_started() {
            match finished {
                Ok(Done { reply, then }) => {
                    self.queue(reply.to_frame(reference.as_ref()));
                    if let Some(frame) = then {
                        self.queue(frame);
                    }
                }
                Err(refused) => self.queue(Reply::error(reference.as_ref(), &refused).frame()),
            }
        }
        // Frames that arrived behind the command are handled before anything new is read.
        self.partial_ready = !self.partial.is_empty();
        true
    }

    fn peer_gone(&mut self) {
        self.peer_closed = true;
        self.closing = Closing::Finished;
    }

    /// Handles the complete frames at the start of `buf`; returns how many bytes they took.
    fn handle_bytes(&mut self, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        while !self.peer_closed && !self.waiting() {
            let Some(item) = self.decoder.next(buf, &mut pos) else { break };
            self.handle_inbound(item);
        }
        if self.peer_closed { buf.len() } else { pos }
    }

    /// A client broke the protocol: close with the violation's code and read nothing more.
    fn fail(&mut self, violation: Violation) {
        tracing::debug!(code = %violation.code, reason = violation.reason, "closing a WebSocket");
        self.begin_close(violation.code, violation.reason);
        self.peer_closed = true;
    }

    fn handle_inbound(&mut self, item: Inbound<'_>) {
        self.heard = Instant::now();
        match item {
            Inbound::Ping(payload) => {
                if !self.closing_started() {
                    self.queue(frame::encode(OP_PONG, payload));
                }
            }
            Inbound::Pong | Inbound::Fragment => {}
            Inbound::Violation(violation) => self.fail(violation),
            Inbound::Close(code) => {
                self.peer_closed = true;
                match &mut self.closing {
                    // Answer with the same code, then close the connection.
                    Closing::Open => {
                        let reply = match code {
                            Some(code) => frame::close(code, ""),
                            None => frame::encode(frame::OP_CLOSE, &[]),
                        };
                        self.close_frame = Some(reply);
                        let code = code.unwrap_or(CloseCode::NORMAL);
                        let deadline = Instant::now() + CLOSE_GRACE;
                        self.closing = Closing::Started { code, deadline, written: false };
                    }
                    // The answer to our close: the handshake is complete once ours is out.
                    Closing::Started { written: true, .. } => self.closing = Closing::Finished,
                    Closing::Started { .. } | Closing::Finished => {}
                }
            }
            // Once a close has begun, messages are read and dropped.
            Inbound::Message(_) if self.closing_started() => {}
            Inbound::Message(message) => self.handle_message(message),
        }
    }

    fn handle_message(&mut self, message: Message) {
        if matches!(self.role, Role::Echo) {
            let (opcode, payload) = match message {
                Message::Text(p) => (OP_TEXT, p),
                Message::Binary(p) => (OP_BINARY, p),
            };
            if payload.len() <= COPY_AT_MOST {
                self.queue(frame::encode(opcode, &payload));
            } else {
                let (head, len) = frame::header(opcode, payload.len());
                self.queue(Bytes::copy_from_slice(&head[..len]));
                self.queue(payload);
            }
            return;
        }
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let refused = Refused::new("bad_command", "commands are JSON text messages");
                self.queue(Reply::error(None, &refused).frame());
                return;
            }
        };
        self.handle_command(&text);
    }

    fn handle_command(&mut self, text: &[u8]) {
        let (reference, command) = command::parse(text);
        let (commands_per_sec, max_event_bytes) =
            (self.limits.commands_per_sec, self.limits.max_event_bytes);
        let Role::Hub(role) = &mut self.role else { return };
        if !role.bucket.take(Instant::now()) {
            role.strikes += 1;
            if role.strikes > MAX_STRIKES {
                self.begin_close(CloseCode::POLICY, "command rate limit exceeded");
                return;
            }
            let detail = format!("at most {commands_per_sec} commands per second");
            let refused = Refused::new("rate_limited", detail);
            self.queue(Reply::error(reference.as_ref(), &refused).frame());
            return;
        }
        role.strikes = 0;
        let (reply, then) = match command.and_then(|command| role.execute(command, max_event_bytes))
        {
            Ok(Outcome::Done(Done { reply, then })) => (reply.to_frame(reference.as_ref()), then),
            Ok(Outcome::Wait(wait)) => {
                role.in_flight = Some(InFlight { reference, wait });
                return;
            }
            Err(refused) => (Reply::error(reference.as_ref(), &refused).frame(), None),
        };
        self.queue(reply);
        if let Some(frame) = then {
            self.queue(frame);
        }
    }

    /// Writes what is due; returns whether anything was written. `Err` when the connection is
    /// broken.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            if let Some(out) = &mut self.out {
                while out.has_remaining() {
                    let written = {
                        let mut slices = [IoSlice::new(&[]); 256];
                        let n = out.chunks_vectored(&mut slices);
                        match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                            Poll::Pending => return Ok(progress),
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                            Poll::Ready(Ok(written)) => written,
                        }
                    };
                    out.advance(written);
                    progress = true;
                }
                self.out = None;
                if std::mem::take(&mut self.out_has_close) {
                    if let Closing::Started { written, .. } = &mut self.closing {
                        *written = true;
                    }
                    if self.peer_closed {
                        self.closing = Closing::Finished;
                    }
                }
            }
            if matches!(self.closing, Closing::Started { written: true, .. } | Closing::Finished) {
                return Ok(progress);
            }
            match self.next_chunk(cx) {
                Some(chunk) => self.out = Some(chunk),
                None => return Ok(progress),
            }
        }
    }

    /// Everything due in one chunk: queued frames, then the events published since the last
    /// chunk, then the close frame if a close has begun.
    fn next_chunk(&mut self, cx: &mut Context<'_>) -> Option<Chunk> {
        let mut chunk = ChunkBuilder::with_capacity(0);
        while let Some(frame) = self.pending.pop_front() {
            self.pending_bytes -= frame.len();
            chunk.push_frame(&frame, 0);
        }
        // A connection given events less than `write_delay` ago gathers more until then.
        let now = Instant::now();
        let due = self.events_taken + self.limits.write_delay;
        self.events_due = (now < due).then_some(due);
        if let (Closing::Open, Role::Hub(role), None) =
            (&self.closing, &mut self.role, self.events_due)
        {
            let format = role.format;
            let polled = role.subscription.poll_events(cx, MAX_CHUNK_BYTES, |_, event| {
                chunk.events += 1;
                chunk.push_frame(event_frame(event, format), 0);
            });
            match polled {
                Poll::Ready(Polled::Closed(Closed::Evicted)) => {
                    self.begin_close(CloseCode::SLOW_CONSUMER, "slow consumer");
                }
                Poll::Ready(Polled::Closed(Closed::Shutdown)) => {
                    self.begin_close(CloseCode::GOING_AWAY, "server shutting down");
                }
                Poll::Ready(Polled::Events) => self.events_taken = now,
                Poll::Pending => {}
            }
        }
        if let Some(close) = self.close_frame.take() {
            chunk.push_frame(&close, 0);
            self.out_has_close = true;
            if let Closing::Started { code, .. } = self.closing {
                self.close_sent = Some(code);
            }
        }
        if chunk.is_empty() {
            return None;
        }
        Some(chunk.finish(Some((self.metrics.clone(), Transport::Ws))))
    }

    /// Heartbeats and deadlines; returns whether the timer fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let heartbeat = self.limits.heartbeat;
        let next = match self.closing {
            Closing::Finished => return false,
            Closing::Started { deadline, .. } => {
                if now >= deadline {
                    self.closing = Closing::Finished;
                    return true;
                }
                deadline
            }
            Closing::Open => {
                if now >= self.heard + 2 * heartbeat {
                    self.begin_close(CloseCode::HEARTBEAT_TIMEOUT, "no answer to pings");
                    return true;
                }
                if now >= self.pinged + heartbeat {
                    self.pinged = now;
                    self.queue(frame::encode(OP_PING, b""));
                    return true;
                }
                let next = (self.pinged + heartbeat).min(self.heard + 2 * heartbeat);
                match self.events_due {
                    Some(due) if now >= due => {
                        self.events_due = None;
                        return true;
                    }
                    Some(due) => next.min(due),
                    None => next,
                }
            }
        };
        if next != self.timer_at {
            self.timer_at = next;
            self.timer.as_mut().reset(next);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn check_signals(&mut self) {
        if let Role::Hub(role) = &self.role {
            // An eviction (by the sweeper) while writes are stuck: start the close now; the
            // grace deadline drops the connection if the close cannot be written.
            if role.subscription.client().closed() == Some(Closed::Evicted) {
                self.begin_close(CloseCode::SLOW_CONSUMER, "slow consumer");
            }
        }
    }
}

/// Largest message a connection in `role` accepts.
fn max_message(role: &Role, limits: &Limits) -> usize {
    match role {
        // The conformance target takes the 16 MiB messages of Autobahn's limits cases.
        Role::Echo => limits.max_message.max(16 << 20),
        Role::Hub(_) => limits.max_message,
    }
}

/// A command's outcome: the `ok` reply, and frames to send after it.
struct Done {
    reply: OkReply,
    then: Option<Bytes>,
}

enum OkReply {
    Plain,
    Topic(String),
    Subscribed { topic: String, position: String },
    Published { topic: String, id: String },
}

impl OkReply {
    fn to_frame(&self, reference: Option<&serde_json::Value>) -> Bytes {
        let reply = Reply::ok(reference);
        match self {
            OkReply::Plain => reply.frame(),
            OkReply::Topic(topic) => reply.topic(topic).frame(),
            OkReply::Subscribed { topic, position } => {
                reply.topic(topic).position(position.clone()).frame()
            }
            OkReply::Published { topic, id } => reply.topic(topic).id(id.clone()).frame(),
        }
    }
}

fn topic_name(topic: &str) -> Result<TopicName, Refused> {
    TopicName::new(topic).map_err(|e| Refused::new("bad_topic", format!("topic {topic:?} {e}")))
}

fn publish_refused(e: PublishError) -> Refused {
    match e {
        PublishError::TooLarge { .. } => Refused::new("too_large", e.to_string()),
        PublishError::Unavailable(_) => Refused::new("unavailable", e.to_string()),
    }
}

impl HubRole {
    fn execute(&mut self, command: Command, max_event_bytes: usize) -> Result<Outcome, Refused> {
        match command {
            Command::Ping => Ok(Outcome::Done(Done { reply: OkReply::Plain, then: None })),
            Command::Subscribe { topic, last_event_id } => {
                let name = topic_name(&topic)?;
                if self.hub.relay().is_none() {
                    return self.subscribe(topic, last_event_id.as_deref()).map(Outcome::Done);
                }
                let hub = self.hub.clone();
                let resume = last_event_id.clone();
                let prepared =
                    Box::pin(async move { hub.prepare(&[name], resume.as_deref()).await });
                Ok(Outcome::Wait(Wait::Subscribe { topic, last_event_id, prepared }))
            }
            Command::Unsubscribe { topic } => {
                if !self.subscription.remove_topic(&topic) {
                    return Err(Refused::new(
                        "not_subscribed",
                        format!("not subscribed to {topic:?}"),
                    ));
                }
                Ok(Outcome::Done(Done { reply: OkReply::Topic(topic), then: None }))
            }
            Command::Publish { topic, event, data, binary } => {
                if !self.may_publish {
                    return Err(Refused::new(
                        "forbidden",
                        "publishing is accepted only from loopback peers when no credentials are configured",
                    ));
                }
                let name = topic_name(&topic)?;
                let event = event
                    .map(|e| {
                        EventName::new(&e).map_err(|err| {
                            Refused::new("bad_event_name", format!("event name {e:?} {err}"))
                        })
                    })
                    .transpose()?;
                let data = if binary {
                    let bytes =
                        base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).map_err(
                            |e| Refused::new("bad_data", format!("data is not base64: {e}")),
                        )?;
                    EventData::Binary(bytes.into())
                } else {
                    EventData::Text(data.into())
                };
                if data.len() > max_event_bytes {
                    return Err(Refused::new(
                        "too_large",
                        format!(
                            "event data is {} bytes, the limit is {max_event_bytes}",
                            data.len()
                        ),
                    ));
                }
                if self.hub.relay().is_some() {
                    let hub = self.hub.clone();
                    let published = Box::pin(async move { hub.publish(&name, event, data).await });
                    return Ok(Outcome::Wait(Wait::Publish { topic, published }));
                }
                let published =
                    self.hub.publish_now(&name, event, data).map_err(publish_refused)?;
                Ok(Outcome::Done(Done {
                    reply: OkReply::Published { topic, id: published.id.to_string() },
                    then: None,
                }))
            }
        }
    }

    /// Adds `topic` to the subscription, resuming after `last_event_id` if given.
    fn subscribe(&mut self, topic: String, last_event_id: Option<&str>) -> Result<Done, Refused> {
        let name = topic_name(&topic)?;
        let added =
            self.subscription.add_topic(&self.hub, name, last_event_id).map_err(|e| match e {
                AddError::AlreadySubscribed => Refused::new("already_subscribed", e.to_string()),
                AddError::Refused(e) => {
                    Refused::new(super::subscribe_error_code(&e), e.to_string())
                }
            })?;
        let then =
            added.gap_notice.map(|notice| gap_frame(&topic, added.position, &notice, self.format));
        let position = added.position.to_string();
        Ok(Done { reply: OkReply::Subscribed { topic, position }, then })
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Session<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            this.check_signals();
            let answered = this.poll_in_flight(cx);
            let read = this.poll_read(cx);
            let wrote = match this.poll_write(cx) {
                Ok(wrote) => wrote,
                Err(()) => {
                    this.closing = Closing::Finished;
                    false
                }
            };
            if matches!(this.closing, Closing::Finished) {
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

impl<IO> Drop for Session<IO> {
    fn drop(&mut self) {
        let transport = self.metrics.transport(Transport::Ws);
        transport.connections.decrement(1);
        self.metrics.ws_closed(self.close_sent.map_or(1006, CloseCode::as_u16));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn limits() -> Limits {
        Limits {
            max_message: 1 << 20,
            heartbeat: Duration::from_secs(60),
            commands_per_sec: 10,
            max_event_bytes: 1 << 16,
            write_delay: Duration::ZERO,
        }
    }

    fn masked_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        frame
    }

    /// Polls `session` while `client` does its part, until `client` finishes.
    async fn drive<F: Future>(session: &mut Session<DuplexStream>, client: F) -> F::Output {
        tokio::pin!(client);
        std::future::poll_fn(|cx| {
            let _ = Pin::new(&mut *session).poll(cx);
            client.as_mut().poll(cx)
        })
        .await
    }

    #[tokio::test]
    async fn a_large_message_buffer_is_released_once_echoed() {
        let (server, mut client) = tokio::io::duplex(64 << 10);
        let mut session = Session::new(server, Role::Echo, limits(), Arc::new(Metrics::new()));
        let payload: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let frame = masked_frame(&payload);
        let echoed = drive(&mut session, async {
            client.write_all(&frame).await.unwrap();
            let mut head = [0u8; 10];
            client.read_exact(&mut head).await.unwrap();
            let mut body = vec![0u8; payload.len()];
            client.read_exact(&mut body).await.unwrap();
            (head, body)
        })
        .await;
        assert_eq!(echoed.0[..2], [0x82, 127]);
        assert!(echoed.1 == payload, "echo differs");
        // Nothing stays allocated for reading once the message is through.
        assert_eq!(session.partial.capacity(), 0);
        assert_eq!(session.decoder.buffered(), 0);
        assert!(session.pending.is_empty() && session.out.is_none());
    }
}

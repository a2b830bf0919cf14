//! `/ws`: a subscription driven by commands. Events of the topics followed go out framed once
//! per format; each command is rate-limited, carried out, and answered in order (a command
//! waiting for Redis holds back the ones after it).
//!
//! A `format=raw` stream carries nothing but event data: any frame of its own could be taken
//! for an event. Its commands are carried out without a reply; a refused command, or a gap,
//! closes it with a code and the JSON a reply or notice would have held as the reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use serde_json::Value;
use tokio::time::Instant;

use super::close::CloseCode;
use super::command::{self, Command, Reply};
use super::frame::Violation;
use super::handler::{Handler, Outbox};
use super::message::Message;
use crate::auth::Access;
use crate::chunk::ChunkBuilder;
use crate::codec::ws::MAX_CLOSE_REASON;
use crate::codec::{gap, ws};
use crate::event::{Event, EventData, EventId, EventName, IdempotencyKey, TopicName, Wire};
use crate::http::{
    Admission, ApiError, BatchOutcome, ErrorCode, Peer, PublishPolicy, StreamSlot, answer_json,
    publish_batch,
};
use crate::hub::{Closed, Hub, Polled, Published, SubscribeError, Subscription};
use crate::limits::TokenBucket;

/// Rejected commands in a row after which the client is disconnected (1008).
const MAX_STRIKES: u32 = 50;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the handler of a `/ws` connection needs to know.
pub(super) struct SessionSetup {
    /// The hub commands act on.
    pub(super) hub: Arc<Hub>,
    /// The topics followed from the start.
    pub(super) subscription: Subscription,
    /// How events are framed: [`Wire::WsJson`] or [`Wire::WsRaw`].
    pub(super) wire: Wire,
    /// Verifies the tokens of `auth` commands and counts the topics `subscribe` creates.
    pub(super) admission: Arc<Admission>,
    /// What every `publish` goes through.
    pub(super) publishing: Arc<PublishPolicy>,
    /// Who the client is, for its rates and the log of a refused token.
    pub(super) peer: Peer,
    /// What the client may do: publish, follow private topics; replaced by each `auth`.
    pub(super) access: Access,
    /// Commands admitted per second (and burst).
    pub(super) commands_per_sec: u32,
    /// Largest message accepted.
    pub(super) max_message: usize,
    /// Its place among its address's open streams, held while the session lives.
    pub(super) _stream_slot: Option<StreamSlot>,
}

/// A `/ws` connection's session: its commands, carried out over its subscription.
pub(super) struct Session {
    setup: SessionSetup,
    /// When the client's token runs out.
    expiry: Option<Instant>,
    bucket: TokenBucket,
    strikes: u32,
    /// A command waiting (for Redis, in cluster mode); later ones wait behind it.
    /// Boxed: an idle session (most of them) waits on nothing.
    in_flight: Option<Box<PendingCommand>>,
}

/// A command waiting, with the `ref` to echo in its reply.
struct PendingCommand {
    reference: Option<Value>,
    wait: Wait,
}

/// What a command waits for.
enum Wait {
    /// The publish policy answering a publish (within `--publish-timeout`).
    Publish { topic: String, published: Boxed<Result<Published, ApiError>> },
    /// The publish policy answering a batch of publishes, each on its own.
    PublishBatch { outcomes: Boxed<Result<Vec<BatchOutcome>, ApiError>> },
    /// The node making sure it can serve the topic, before subscribing to it.
    Subscribe {
        name: TopicName,
        resume: Option<EventId>,
        prepared: Boxed<Result<(), SubscribeError>>,
    },
}

impl Session {
    pub(super) fn new(setup: SessionSetup) -> Self {
        let bucket = TokenBucket::per_second(setup.commands_per_sec);
        let expiry = setup.access.expires_in().map(|left| Instant::now() + left);
        Session { setup, expiry, bucket, strikes: 0, in_flight: None }
    }

    fn on_command(&mut self, text: &[u8], out: &mut Outbox) -> Result<(), Violation> {
        let (reference, command) = command::parse(text);
        if !self.bucket.take(Instant::now()) {
            self.strikes += 1;
            if self.strikes > MAX_STRIKES {
                let reason = "command rate limit exceeded";
                return Err(Violation::new(CloseCode::POLICY, reason));
            }
            let detail = format!("at most {} commands per second", self.setup.commands_per_sec);
            let refused = ApiError::new(ErrorCode::RateLimited, detail);
            return self.refuse(reference.as_ref(), &refused, out);
        }
        self.strikes = 0;
        match command.map_err(Refusal::from).and_then(|c| self.execute(c, reference.as_ref(), out))
        {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                self.in_flight = Some(Box::new(PendingCommand { reference, wait }));
                Ok(())
            }
            Err(Refusal::Command(refused)) => self.refuse(reference.as_ref(), &refused, out),
            Err(Refusal::Gap(ending)) => Err(ending),
        }
    }

    /// Sends `reply`, where replies are sent (not on a `format=raw` stream).
    fn reply(&self, reply: Reply<'_>, out: &mut Outbox) {
        if self.setup.wire != Wire::WsRaw {
            out.push(reply.frame());
        }
    }

    /// Answers a refused command with an error reply; a `format=raw` stream closes instead,
    /// 1008 (or 1013 for a refusal of the server's making), with the reply as the reason.
    fn refuse(
        &self,
        reference: Option<&Value>,
        refused: &ApiError,
        out: &mut Outbox,
    ) -> Result<(), Violation> {
        let reply = Reply::error(reference, refused);
        if self.setup.wire != Wire::WsRaw {
            out.push(reply.frame());
            return Ok(());
        }
        let code = if refused.code.status().is_server_error() {
            CloseCode::TRY_AGAIN_LATER
        } else {
            CloseCode::POLICY
        };
        Err(Violation::new(code, reply.close_reason(MAX_CLOSE_REASON)))
    }

    /// Carries out a command: answered into `out` at once, or waiting.
    fn execute(
        &mut self,
        command: Command,
        reference: Option<&Value>,
        out: &mut Outbox,
    ) -> Result<Option<Wait>, Refusal> {
        match command {
            Command::Ping => self.reply(Reply::ok(reference), out),
            Command::Unsubscribe { topic } => {
                if !self.setup.subscription.remove_topic(&topic) {
                    let detail = format!("not subscribed to {topic:?}");
                    return Err(ApiError::new(ErrorCode::NotSubscribed, detail).into());
                }
                self.reply(Reply::ok(reference).topic(&topic), out);
            }
            Command::Auth { token } => {
                if !self.setup.admission.has_keys() {
                    let detail = "the server checks no tokens: no key is configured";
                    return Err(ApiError::new(ErrorCode::BadCommand, detail).into());
                }
                let grant = self.setup.admission.verify(self.setup.peer.ip, &token)?;
                self.setup.access = self.setup.access.renewed(grant);
                self.expiry = self.setup.access.expires_in().map(|left| Instant::now() + left);
                self.reply(Reply::ok(reference), out);
            }
            Command::Subscribe { topic, last_event_id } => {
                let name = TopicName::new(&topic).map_err(|e| ApiError::bad_topic(&topic, e))?;
                self.setup.access.check_subscribe(name.as_str())?;
                self.setup.admission.admit_topics(self.setup.peer.ip, [name.as_str()])?;
                let resume = last_event_id
                    .map(|id| id.parse::<EventId>().map_err(SubscribeError::from))
                    .transpose()?;
                let prepared = Box::pin(self.setup.hub.prepare_topic(name.clone(), resume));
                return Ok(Some(Wait::Subscribe { name, resume, prepared }));
            }
            Command::PublishBatch(events) => {
                let publishing = self.setup.publishing.clone();
                let (peer, access) = (self.setup.peer, self.setup.access.clone());
                let max_event_bytes = self.setup.hub.config().max_event_bytes;
                let outcomes = Box::pin(async move {
                    publish_batch(events, &publishing, peer, &access, max_event_bytes).await
                });
                return Ok(Some(Wait::PublishBatch { outcomes }));
            }
            Command::Publish { topic, event, data, binary, idempotency_key } => {
                let name = TopicName::new(&topic).map_err(|e| ApiError::bad_topic(&topic, e))?;
                self.setup.access.check_publish(name.as_str())?;
                let event = event
                    .map(|e| EventName::new(&e).map_err(|err| ApiError::bad_event_name(&e, err)))
                    .transpose()?;
                let data = if binary {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data.as_bytes())
                        .map_err(|e| {
                        ApiError::new(ErrorCode::BadData, format!("data is not base64: {e}"))
                    })?;
                    EventData::Binary(bytes.into())
                } else {
                    EventData::from(data)
                };
                let idempotency_key = idempotency_key
                    .map(|key| {
                        IdempotencyKey::new(&key)
                            .map_err(|e| ApiError::new(ErrorCode::BadIdempotencyKey, e.to_string()))
                    })
                    .transpose()?;
                let subject = self.setup.access.subject();
                let permit = self.setup.publishing.admit(self.setup.peer, subject, &name)?;
                let published =
                    Box::pin(
                        async move { permit.publish(name, event, data, idempotency_key).await },
                    );
                return Ok(Some(Wait::Publish { topic, published }));
            }
        }
        Ok(None)
    }

    /// Adds the prepared topic to the subscription; the reply, then the gap notice if the
    /// resume was not exact.
    fn subscribe(
        &mut self,
        name: TopicName,
        resume: Option<EventId>,
        reference: Option<&Value>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        let added = self.setup.subscription.add_topic(&self.setup.hub, name.clone(), resume)?;
        let position = added.position.to_string();
        self.reply(Reply::ok(reference).topic(name.as_str()).position(position), out);
        if let Some(lost) = added.gap {
            let part = gap::TopicGap { topic: &name, gap: &lost, resumed_after: added.position };
            self.notify_gap(&gap::notice(&[part], added.position), out).map_err(Refusal::Gap)?;
        }
        Ok(())
    }

    /// Sends a `crier.gap` notice; a `format=raw` stream closes instead (4010), the notice's
    /// gap as the reason.
    fn notify_gap(&self, notice: &Event, out: &mut Outbox) -> Result<(), Violation> {
        if self.setup.wire == Wire::WsRaw {
            return Err(raw_gap(notice));
        }
        out.push(ws::event_frame(notice, self.setup.wire).clone());
        Ok(())
    }
}

/// How a command ends other than well: refused, or carried out on a stream that must then close.
enum Refusal {
    /// The command was refused: an error reply.
    Command(ApiError),
    /// The command was carried out, but the stream must close (a gap on a `format=raw`
    /// stream).
    Gap(Violation),
}

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(refused: E) -> Self {
        Refusal::Command(refused.into())
    }
}

/// How a `format=raw` stream ends in place of the `crier.gap` notice.
fn raw_gap(notice: &Event) -> Violation {
    Violation::new(CloseCode::GAP, gap::close_reason(notice, MAX_CLOSE_REASON))
}

impl Handler for Session {
    fn max_message(&self) -> usize {
        self.setup.max_message
    }

    /// One `crier.gap` frame per topic whose resume (in the URL) was not exact.
    fn open(&mut self, out: &mut Outbox) -> Result<(), Violation> {
        for part in self.setup.subscription.gaps() {
            self.notify_gap(&gap::notice(&[part], part.resumed_after), out)?;
        }
        Ok(())
    }

    fn on_message(&mut self, message: Message, out: &mut Outbox) -> Result<(), Violation> {
        match message {
            Message::Text(text) => self.on_command(&text, out),
            Message::Binary(_) => {
                let refused =
                    ApiError::new(ErrorCode::BadCommand, "commands are JSON text messages");
                self.refuse(None, &refused, out)
            }
        }
    }

    fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    fn poll_busy(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<Result<(), Violation>> {
        let Some(mut in_flight) = self.in_flight.take() else { return Poll::Ready(Ok(())) };
        let reference = in_flight.reference.as_ref();
        let result = match &mut in_flight.wait {
            Wait::Publish { topic, published } => match published.as_mut().poll(cx) {
                Poll::Pending => None,
                Poll::Ready(Ok(done)) => {
                    let reply = Reply::ok(reference).topic(topic).id(done.id.to_string());
                    self.reply(reply.replayed(done.replayed), out);
                    Some(Ok(()))
                }
                Poll::Ready(Err(e)) => Some(Err(e.into())),
            },
            Wait::PublishBatch { outcomes } => match outcomes.as_mut().poll(cx) {
                Poll::Pending => None,
                Poll::Ready(Ok(outcomes)) => {
                    if self.setup.wire != Wire::WsRaw {
                        let lead = match reference {
                            Some(reference) => format!(r#""op":"ok","ref":{reference},"#),
                            None => r#""op":"ok","#.to_owned(),
                        };
                        let answer = answer_json(&outcomes, &lead);
                        out.push(ws::encode(ws::OP_TEXT, answer.as_bytes()));
                    }
                    Some(Ok(()))
                }
                Poll::Ready(Err(e)) => Some(Err(e.into())),
            },
            Wait::Subscribe { name, resume, prepared } => match prepared.as_mut().poll(cx) {
                Poll::Pending => None,
                Poll::Ready(Ok(())) => Some(self.subscribe(name.clone(), *resume, reference, out)),
                Poll::Ready(Err(e)) => Some(Err(e.into())),
            },
        };
        match result {
            None => {
                self.in_flight = Some(in_flight);
                Poll::Pending
            }
            Some(Ok(())) => Poll::Ready(Ok(())),
            Some(Err(Refusal::Command(refused))) => {
                Poll::Ready(self.refuse(reference, &refused, out))
            }
            Some(Err(Refusal::Gap(ending))) => Poll::Ready(Err(ending)),
        }
    }

    fn poll_events(
        &mut self,
        cx: &mut Context<'_>,
        budget: usize,
        chunk: &mut ChunkBuilder,
    ) -> Poll<Result<Polled, Violation>> {
        let wire = self.setup.wire;
        // A raw stream ends at a gap: the events before it go out, then the close.
        let mut gap = None;
        let polled = self.setup.subscription.poll_events(cx, budget, |_, event| {
            if wire == Wire::WsRaw && event.name.as_ref().is_some_and(EventName::is_gap) {
                gap.get_or_insert_with(|| raw_gap(event));
                return;
            }
            if gap.is_none() {
                chunk.events += 1;
                chunk.push_frame(ws::event_frame(event, wire), 0);
            }
        });
        match gap {
            Some(ending) => Poll::Ready(Err(ending)),
            None => polled.map(Ok),
        }
    }

    fn gather(&mut self, cx: &mut Context<'_>, now: Instant) -> Option<Instant> {
        self.setup.subscription.gather(cx, now)
    }

    /// The subscription hands over what is published, then reports the shutdown.
    fn drain(&mut self) -> bool {
        self.setup.subscription.close(Closed::Shutdown);
        true
    }

    fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    fn is_evicted(&self) -> bool {
        self.setup.subscription.closed() == Some(Closed::Evicted)
    }
}

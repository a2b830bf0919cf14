//! The Mercure hub: `/.well-known/mercure` speaks the Mercure protocol as the open-source hub
//! v0.24 does, next to crier's own API, over one ordered log of Mercure updates (the topic
//! [`crate::codec::mercure::log`]) that is stored and relayed like any topic, so a cluster of
//! nodes is one hub.
//!
//! - **Publish** (`POST`, form-encoded): the update (its topics, data, id, type, retry, and
//!   whether it is private) becomes one event of the log, as a JSON record
//!   ([`crate::codec::mercure`]); its SSE frame is encoded once, when it is appended.
//! - **Subscribe** (`GET`): the subscriber reads the whole log and its writer keeps the updates
//!   one of whose topics matches one of its selectors, and, if private, one of its token's
//!   `mercure.subscribe` selectors ([`selector`]). Resume is by Mercure id, looked up in the
//!   history the node holds ([`resume`]).
//! - **Subscriptions** ([`presence`]): who is subscribed, on every node of the cluster. Their
//!   events go to a log of their own, which a subscriber follows too if its selectors could
//!   match them.
//!
//! Errors are plain text with the reference hub's statuses, not crier's JSON.

mod authorization;
mod presence;
mod resume;
pub(crate) mod selector;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::auth::{MercureAuthority, MercureKey, MercureKeyError};
use crate::codec::mercure::{MercureUpdate, Record};
use crate::event::Event;
use crate::http::{
    Admitted, ApiError, ErrorCode, MERCURE_HUB_PATH, PublishPolicy, ResponseBody, read_body,
};
use crate::hub::{ConnectionCloser, Hub, SubscribeError};
use crate::metrics::Metrics;
use crate::sse::{EventFilter, SseWriter, StreamTiming};
use authorization::Unauthorized;
pub(crate) use presence::Presence;
use resume::{EARLIEST, MercureLogs};
use selector::{MercureSelector, SelectorStore, any_matches_update};

/// A topic holding this is the hub's own (subscription events): publishers may not use it.
const RESERVED_TOPIC_PART: &str = MERCURE_HUB_PATH;

/// Most topics in one subscribe or publish, and most selectors in a claim.
const MAX_TOPICS: usize = 1000;

/// The Mercure part of the configuration.
#[derive(Clone, Debug)]
pub(crate) struct MercureConfig {
    /// The key publishers' tokens are signed with.
    pub(crate) publisher_key: Option<MercureKey>,
    /// The key subscribers' tokens are signed with.
    pub(crate) subscriber_key: Option<MercureKey>,
    /// Subscribers without a token get public updates.
    pub(crate) anonymous: bool,
    /// Origins a publish carrying its token in a cookie may come from (`*`: any).
    pub(crate) publish_origins: Vec<String>,
    /// Publish subscription events and serve the subscriptions API.
    pub(crate) subscriptions: bool,
    /// Most URI templates the node holds compiled for subscribers.
    pub(crate) max_templates: usize,
}

/// The hub's logs that keep a history of their own: the updates, `mercure_history` of them
/// (`--mercure-history`); subscription events keep `--history`.
pub(crate) fn log_histories(mercure_history: usize) -> Vec<(crate::event::TopicName, usize)> {
    vec![(crate::codec::mercure::log(), mercure_history)]
}

impl Default for MercureConfig {
    fn default() -> Self {
        MercureConfig {
            publisher_key: None,
            subscriber_key: None,
            anonymous: false,
            publish_origins: Vec::new(),
            subscriptions: false,
            max_templates: selector::DEFAULT_MAX_TEMPLATES,
        }
    }
}

impl MercureConfig {
    /// Whether the hub is on: a key or anonymous mode is configured.
    pub(crate) fn is_enabled(&self) -> bool {
        self.publisher_key.is_some() || self.subscriber_key.is_some() || self.anonymous
    }
}

/// What the Mercure endpoints need.
pub(crate) struct MercureEdge {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    timing: StreamTiming,
    authority: MercureAuthority,
    config: MercureConfig,
    selectors: SelectorStore,
    presence: Option<Arc<Presence>>,
    /// What every publish goes through.
    publishing: Arc<PublishPolicy>,
    logs: MercureLogs,
    max_event_bytes: usize,
    body_timeout: Duration,
}

impl MercureEdge {
    /// The hub's endpoints, on `hub`'s Mercure log.
    pub(crate) fn new(
        config: MercureConfig,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        publishing: Arc<PublishPolicy>,
        timing: StreamTiming,
        body_timeout: Duration,
    ) -> Result<Arc<Self>, MercureKeyError> {
        let authority =
            MercureAuthority::new(config.publisher_key.as_ref(), config.subscriber_key.as_ref())?;
        let max_event_bytes = hub.config().max_event_bytes;
        // The logs are the hub's history, whoever follows them.
        let updates = crate::codec::mercure::log();
        hub.pin(updates.clone());
        let subscriptions = config.subscriptions.then(crate::codec::mercure::subscriptions_log);
        if let Some(log) = &subscriptions {
            hub.pin(log.clone());
        }
        let presence = config.subscriptions.then(|| Presence::start(hub.clone()));
        let selectors = SelectorStore::new(config.max_templates);
        Ok(Arc::new(MercureEdge {
            hub,
            metrics,
            timing,
            authority,
            config,
            selectors,
            presence,
            publishing,
            logs: MercureLogs { updates, subscriptions },
            max_event_bytes,
            body_timeout,
        }))
    }

    /// Announces the departure of the subscribers whose streams have ended (at shutdown,
    /// once they all have).
    pub(crate) async fn flush_departures(&self) {
        if let Some(presence) = &self.presence {
            presence.flush().await;
        }
    }

    /// Answers an admitted request to the hub: a subscribe (`GET`, `HEAD`) or a publish
    /// (`POST`).
    pub(crate) async fn respond(
        &self,
        req: Request<Incoming>,
        closer: Arc<dyn ConnectionCloser>,
        admitted: &Admitted,
    ) -> Result<Response<ResponseBody>, MercureRefused> {
        match *req.method() {
            Method::GET | Method::HEAD => self.subscribe(&req, closer, admitted).await,
            Method::POST => Ok(self.publish(req, admitted).await),
            _ => {
                let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                answer
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                Ok(answer)
            }
        }
    }

    /// Answers a request to the subscriptions API (a 404 unless `--mercure-subscriptions`).
    pub(crate) async fn respond_subscriptions(
        &self,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        match &self.presence {
            Some(_) => self.subscriptions(&req).await,
            None => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// `GET /.well-known/mercure?topic=…`: the subscriber is registered before the headers
    /// are sent, so an update published once they arrive is delivered.
    async fn subscribe(
        &self,
        req: &Request<Incoming>,
        closer: Arc<dyn ConnectionCloser>,
        admitted: &Admitted,
    ) -> Result<Response<ResponseBody>, MercureRefused> {
        let (headers, mut writer) = self.open(req, closer).await?;
        writer.hold(admitted.take_stream_slot());
        let mut response = Response::new(ResponseBody::stream(writer));
        response.headers_mut().extend(headers);
        Ok(response)
    }

    /// Subscribes the client of an admitted `GET` and makes its stream, whichever way it is
    /// served: the response headers and the writer, or the refusal.
    pub(crate) async fn open<B>(
        &self,
        req: &Request<B>,
        closer: Arc<dyn ConnectionCloser>,
    ) -> Result<(HeaderMap, SseWriter), MercureRefused> {
        let grant = self.authorize_subscriber(req).map_err(Unauthorized::response)?;
        let query = req.uri().query().unwrap_or("");
        let mut topics = Vec::new();
        let mut query_last_event_id = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => topics.push(value.into_owned()),
                "lastEventID" => query_last_event_id = Some(value.into_owned()),
                _ => {}
            }
        }
        if topics.is_empty() {
            return Err(text(StatusCode::BAD_REQUEST, "Missing \"topic\" parameter.").into());
        }
        if topics.len() > MAX_TOPICS {
            return Err(text(StatusCode::BAD_REQUEST, "too many topics").into());
        }
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .or(query_last_event_id.filter(|id| !id.is_empty()));
        let selectors = self.selectors.hold_all(&topics).map_err(|e| self.templates_full(&e))?;
        let private = match grant.subscribe.as_deref() {
            Some(claim) => self
                .selectors
                .hold_all(&claim[..claim.len().min(MAX_TOPICS)])
                .map_err(|e| self.templates_full(&e))?,
            None => Vec::new(),
        };
        let logs = self.logs.followed_by(&selectors);
        // In cluster mode the node's copy of a log must be current before it is read.
        for log in &logs {
            if let Err(e) = self.hub.prepare_topic(log.clone(), None).await {
                return Err(unavailable(&e));
            }
        }
        // Announced before the subscriber reads the logs, and not to itself: a subscriber that
        // does not resume starts after its own arrival (in cluster mode its node may not hold
        // it yet, and then reads it from Redis first).
        let (departure, arrival) = match &self.presence {
            Some(presence) => {
                let (departure, arrival) =
                    presence.arrive(&self.hub, &topics, grant.payload.clone()).await;
                (Some(departure), arrival)
            }
            None => (None, None),
        };
        let start = self.logs.start(&self.hub, logs, last_event_id.as_deref(), arrival);
        let resumed_from = start.resumed_from.clone();
        let request = start.request().closed_by(closer);
        let subscription = self.hub.subscribe(request).await.map_err(|e| unavailable(&e))?;

        let filter = Box::new(SubscriberFilter { selectors, private, _departure: departure });
        let expires_in = grant.expires_in().map(before_expiry);
        let writer = SseWriter::plain(subscription, self.timing, &self.metrics, expires_in, filter);
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        headers.insert(header::EXPIRES, HeaderValue::from_static("0"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        if let Some(value) = resumed_from.and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert("last-event-id", value);
        }
        Ok((headers, writer))
    }

    /// `POST /.well-known/mercure`: publishes an update and answers its id. Held to the
    /// publish policy by address (Mercure tokens name no publisher).
    async fn publish(&self, req: Request<Incoming>, admitted: &Admitted) -> Response<ResponseBody> {
        let grant = match self.authorize_publisher(&req, admitted.peer.local) {
            Ok(grant) => grant,
            Err(refused) => return refused.response(),
        };
        let permit = match self.publishing.admit(admitted.peer, None, &self.logs.updates) {
            Ok(permit) => permit,
            Err(refused) => return refusal(&refused),
        };
        let (parts, body) = req.into_parts();
        let max = self.max_event_bytes;
        let body =
            match read_body(&parts.headers, body, max, self.body_timeout, &self.metrics).await {
                Ok(body) => body,
                Err(e) => return refusal(&e),
            };
        let form = match Form::parse(&body) {
            Ok(form) => form,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        if let Some(claim) = &grant.publish {
            let selectors = self.selectors.get_all(&claim[..claim.len().min(MAX_TOPICS)]);
            let covered = |topic: &String| selectors.iter().any(|s| s.matches(topic));
            let wildcard = claim.iter().any(|s| s == "*");
            if !wildcard && !form.topics.iter().all(covered) {
                return Unauthorized.response();
            }
        }
        if let Err((status, message)) = form.validate() {
            return text(status, &message);
        }
        let id = form.id.unwrap_or_else(|| format!("urn:uuid:{}", uuid::Uuid::now_v7()));
        let record = Record {
            id: id.as_str().into(),
            topics: form.topics.iter().map(|t| t.as_str().into()).collect(),
            private: form.private,
            kind: form.kind.as_deref().map(Into::into),
            retry: form.retry,
            data: form.data.as_str().into(),
            after: self.logs.subscriptions.as_ref().and_then(|log| resume::reached(&self.hub, log)),
        };
        let log = self.logs.updates.clone();
        match permit.publish(log, None, record.to_event_data(), None).await {
            Ok(_) => {
                let mut response = Response::new(ResponseBody::full(Bytes::from(id)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            Err(refused) if refused.code == ErrorCode::TooLarge => {
                text(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large")
            }
            Err(refused) => {
                tracing::warn!(error = %refused.detail, "a Mercure update was not published");
                let mut answer = text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
                answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                answer
            }
        }
    }
}

/// Ends a stream a little before its token expires, so nothing is delivered after `exp`.
fn before_expiry(left: Duration) -> Duration {
    left.saturating_sub(Duration::from_millis(200).min(left / 10))
}

/// A Mercure subscriber's rule: the updates one of whose topics one of its selectors matches,
/// and, for a private update, one of its token's `mercure.subscribe` selectors too.
struct SubscriberFilter {
    selectors: Vec<Arc<MercureSelector>>,
    private: Vec<Arc<MercureSelector>>,
    /// Announces that the subscriber left when the stream ends.
    _departure: Option<presence::Departure>,
}

impl EventFilter for SubscriberFilter {
    fn admits(&mut self, event: &Event) -> bool {
        let Some(update) = event.frames.attachment::<MercureUpdate>() else { return false };
        any_matches_update(&self.selectors, update)
            && (!update.private || any_matches_update(&self.private, update))
    }
}

/// A publish's form fields.
#[derive(Debug, Default)]
struct Form {
    topics: Vec<String>,
    data: String,
    private: bool,
    id: Option<String>,
    kind: Option<String>,
    retry: Option<u64>,
}

impl Form {
    fn parse(body: &[u8]) -> Result<Self, &'static str> {
        let mut form = Form::default();
        for (key, value) in form_urlencoded::parse(body) {
            match &*key {
                "topic" => form.topics.push(value.into_owned()),
                "data" if form.data.is_empty() => form.data = value.into_owned(),
                "private" => form.private = true,
                "id" if form.id.is_none() => form.id = Some(value.into_owned()),
                "type" if form.kind.is_none() => form.kind = Some(value.into_owned()),
                "retry" if form.retry.is_none() && !value.is_empty() => {
                    form.retry = Some(value.parse().map_err(|_| "Invalid \"retry\" parameter")?);
                }
                _ => {}
            }
        }
        if form.topics.is_empty() {
            return Err("Missing \"topic\" parameter");
        }
        if form.topics.len() > MAX_TOPICS {
            return Err("too many topics in update");
        }
        // An empty `id` or `type` is no `id` or `type`, as in the reference hub.
        form.id = form.id.filter(|id| !id.is_empty());
        form.kind = form.kind.filter(|kind| !kind.is_empty());
        Ok(form)
    }

    /// The reference hub's checks: the hub's own namespace, and what would inject SSE fields.
    fn validate(&self) -> Result<(), (StatusCode, String)> {
        for topic in &self.topics {
            if topic.contains(RESERVED_TOPIC_PART) {
                let message = format!(
                    "{topic:?}: topic value references the reserved \"/.well-known/mercure\" namespace"
                );
                return Err((StatusCode::FORBIDDEN, message));
            }
            if topic.chars().any(char::is_control) {
                let message = format!(
                    "{topic:?}: topic contains a forbidden control character or invalid UTF-8"
                );
                return Err((StatusCode::BAD_REQUEST, message));
            }
        }
        let forbidden =
            |text: &Option<String>| text.as_deref().is_some_and(|t| t.contains(['\0', '\r', '\n']));
        if forbidden(&self.id) {
            let message = "\"id\" field contains a forbidden control character";
            return Err((StatusCode::BAD_REQUEST, message.to_owned()));
        }
        if forbidden(&self.kind) {
            let message = "\"type\" field contains a forbidden control character";
            return Err((StatusCode::BAD_REQUEST, message.to_owned()));
        }
        Ok(())
    }
}

/// A plain-text answer, as Go's `http.Error` writes it.
fn text(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// A refusal of crier's own (admission's, the publish policy's, a body too large or late) as
/// plain text, as the hub answers everything.
pub(crate) fn refusal(error: &ApiError) -> Response<ResponseBody> {
    let mut answer = text(error.code.status(), &error.detail);
    if let Some(wait) = error.retry_after_secs()
        && let Ok(value) = HeaderValue::from_str(&wait.to_string())
    {
        answer.headers_mut().insert(header::RETRY_AFTER, value);
    }
    answer
}

impl MercureEdge {
    /// A subscribe whose templates the node has no room for: refused for now, as the
    /// reference hub refuses what it cannot serve.
    fn templates_full(&self, error: &selector::TemplatesFull) -> MercureRefused {
        self.metrics.rejected(crate::metrics::Rejection::MercureTemplates);
        let mut answer = text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let retry_later = ApiError::new(ErrorCode::Unavailable, error.to_string());
        MercureRefused { answer, retry_later: Some(retry_later) }
    }
}

/// A subscription the node could not start (Redis down, shutting down, the topic limit).
fn unavailable(error: &SubscribeError) -> MercureRefused {
    tracing::debug!(%error, "a Mercure subscription could not start");
    let code = match error {
        SubscribeError::ShuttingDown => ErrorCode::ShuttingDown,
        _ => ErrorCode::Unavailable,
    };
    let mut answer = text(code.status(), "Service Unavailable");
    answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let detail = format!("the hub cannot open the stream now: {error}");
    MercureRefused { answer, retry_later: Some(ApiError::new(code, detail)) }
}

/// A subscribe the hub refused: its answer, as the reference hub gives it, and for a refusal
/// that retrying can cure, why (so that a browser's `EventSource` can be answered with a
/// stream it retries instead).
pub(crate) struct MercureRefused {
    pub(crate) answer: Response<ResponseBody>,
    pub(crate) retry_later: Option<ApiError>,
}

impl From<Response<ResponseBody>> for MercureRefused {
    fn from(answer: Response<ResponseBody>) -> Self {
        MercureRefused { answer, retry_later: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms_read_like_the_reference_hub() {
        let form =
            Form::parse(b"topic=a&topic=b+c&data=x%0Ay&private=on&id=i&type=t&retry=5").unwrap();
        assert_eq!(form.topics, ["a", "b c"]);
        assert_eq!((form.data.as_str(), form.private), ("x\ny", true));
        assert_eq!(
            (form.id.as_deref(), form.kind.as_deref(), form.retry),
            (Some("i"), Some("t"), Some(5))
        );
        assert_eq!(Form::parse(b"data=x").unwrap_err(), "Missing \"topic\" parameter");
        assert_eq!(Form::parse(b"topic=a&retry=x").unwrap_err(), "Invalid \"retry\" parameter");
        let reserved = Form::parse(b"topic=https://h/.well-known/mercure/subscriptions/x").unwrap();
        assert_eq!(reserved.validate().unwrap_err().0, StatusCode::FORBIDDEN);
        let injected = Form::parse(b"topic=a&id=x%0Aevent:%20evil").unwrap();
        assert_eq!(injected.validate().unwrap_err().0, StatusCode::BAD_REQUEST);
        let injected = Form::parse(b"topic=a&type=x%0D").unwrap();
        assert_eq!(injected.validate().unwrap_err().0, StatusCode::BAD_REQUEST);
        assert!(Form::parse(b"topic=a&id=&type=").unwrap().validate().is_ok());
    }

    #[test]
    fn a_stream_ends_before_its_token_expires() {
        assert!(before_expiry(Duration::from_secs(60)) < Duration::from_secs(60));
        assert_eq!(before_expiry(Duration::ZERO), Duration::ZERO);
        assert!(before_expiry(Duration::from_millis(100)) >= Duration::from_millis(90));
    }
}

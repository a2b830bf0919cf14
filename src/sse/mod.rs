//! The SSE edge: `GET /sse?topic=…` turns a request into a subscription and streams it.

pub mod body;
pub mod encode;

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::error::ApiError;
use crate::event::TopicName;
use crate::hub::SubscribeError;
use crate::metrics::Transport;
use crate::registry::ConnectionCloser;
use crate::server::App;
use crate::server::body::ResponseBody;

/// `Last-Event-ID`.
const LAST_EVENT_ID: &str = "last-event-id";

/// Subscribes to the requested topics and answers with the event stream.
pub(crate) fn handle<B>(
    app: &App,
    closer: Arc<dyn ConnectionCloser>,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, ApiError> {
    let mut topics = Vec::new();
    let mut last_event_id = None;
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "topic" => {
                topics.push(TopicName::new(&value).map_err(|e| {
                    ApiError::bad_request("bad_topic", format!("topic {value:?} {e}"))
                })?)
            }
            "last_event_id" if !value.is_empty() => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    // A reconnecting EventSource sends the header; it is newer than the id in its URL.
    if let Some(header) = req.headers().get(LAST_EVENT_ID) {
        let value = header.to_str().map_err(|_| {
            ApiError::bad_request("bad_last_event_id", "Last-Event-ID is not valid text")
        })?;
        if !value.is_empty() {
            last_event_id = Some(value.to_owned());
        }
    }
    let subscription = app
        .hub
        .subscribe(
            topics,
            last_event_id.as_deref(),
            Transport::Sse,
            Some(closer),
        )
        .map_err(|e| match e {
            SubscribeError::NoTopics => ApiError::bad_request(
                "bad_topic",
                "at least one topic query parameter is required",
            ),
            SubscribeError::TooManyTopics { .. } => {
                ApiError::bad_request("too_many_topics", e.to_string())
            }
            SubscribeError::BadId(e) => ApiError::bad_request("bad_last_event_id", e.to_string()),
            SubscribeError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
        })?;
    let body = body::SseBody::new(
        subscription,
        app.config.sse_retry,
        app.config.heartbeat,
        app.metrics.clone(),
    );
    let mut response = Response::new(ResponseBody::sse(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

//! The SSE edge: `GET /sse?topic=…` turns an admitted request into a subscription and streams
//! it, either through hyper (as a response body) or, for a dedicated HTTP/1.1 connection, on
//! the socket itself ([`stream`], under the head the server's fast path writes).
//!
//! It takes what it needs and nothing more: the hub, the metrics, the stream timing, and from
//! the server a way to close the connection (for eviction) and what the client may do (its
//! [`Access`]: every topic must be one it may follow, and a stream opened with a token ends
//! when the token expires).

mod stream;
mod writer;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, header};

use crate::event::Wire;
use crate::http::{Admitted, ApiError, ErrorCode, ResponseBody};
use crate::hub::{ConnectionCloser, Hub, SubscribeError, SubscriptionRequest};
use crate::metrics::Metrics;
pub(crate) use stream::SseStream;
pub(crate) use writer::SseWriter;
pub(crate) use writer::{EventFilter, StreamTiming};

/// `Last-Event-ID`.
const LAST_EVENT_ID: &str = "last-event-id";

/// What the SSE endpoint needs.
pub(crate) struct SseEdge {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    timing: StreamTiming,
}

impl SseEdge {
    pub(crate) fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, timing: StreamTiming) -> Self {
        SseEdge { hub, metrics, timing }
    }

    /// The headers of a stream's answer, whichever way it is served.
    pub(crate) fn response_headers() -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers
    }

    /// Subscribes to the requested topics and answers with the event stream (through hyper).
    pub(crate) async fn respond<B>(
        &self,
        closer: Arc<dyn ConnectionCloser>,
        req: &Request<B>,
        admitted: &Admitted,
    ) -> Result<Response<ResponseBody>, ApiError> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "GET, HEAD"));
        }
        let header = req.headers().get(LAST_EVENT_ID).map(HeaderValue::as_bytes);
        let writer = self.open(closer, admitted, header).await?;
        let mut response = Response::new(ResponseBody::stream(writer));
        *response.headers_mut() = Self::response_headers();
        Ok(response)
    }

    /// Subscribes an admitted `GET` to its topics, resuming after its `Last-Event-ID` header
    /// (else its query's `last_event_id`), if the client may follow every topic (a private
    /// topic's history is never read for a client that may not see it): the stream's writer,
    /// whichever way it is served. A stream opened with a token ends when the token expires.
    pub(crate) async fn open(
        &self,
        closer: Arc<dyn ConnectionCloser>,
        admitted: &Admitted,
        last_event_id_header: Option<&[u8]>,
    ) -> Result<SseWriter, ApiError> {
        let Admitted { access, query, .. } = admitted;
        let json = match query.format.as_deref() {
            None => false,
            Some("json") => true,
            Some(other) => {
                let detail = format!("format {other:?} is not json (or absent, for plain data)");
                return Err(ApiError::new(ErrorCode::BadFormat, detail));
            }
        };
        let resume = query.resume_after(last_event_id_header)?;
        // A WebSocket may start with no topic and subscribe by command; a stream may not.
        if query.topics.is_empty() {
            return Err(SubscribeError::NoTopics.into());
        }
        for topic in &query.topics {
            access.check_subscribe(topic.as_str())?;
        }
        let request = SubscriptionRequest::new(query.topics.clone(), resume, Wire::Sse);
        let subscription = self.hub.subscribe(request.closed_by(closer)).await?;
        let mut writer =
            SseWriter::new(subscription, self.timing, &self.metrics, access.expires_in());
        if json {
            writer = writer.with_json_envelopes();
        }
        writer.hold(admitted.take_stream_slot());
        Ok(writer)
    }
}

//! The SSE edge: `GET /sse?topic=…` turns a request into a subscription and streams it, either
//! through hyper (as a response body) or, for a dedicated HTTP/1.1 connection, on the socket
//! itself ([`stream`]).
//!
//! It takes what it needs and nothing more: the hub, the metrics, the stream timing, and from
//! the server a way to close the connection (for eviction) and what the client may do (its
//! [`Access`]: every topic must be one it may follow, and a stream opened with a token ends
//! when the token expires).

mod stream;
mod writer;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};

use crate::auth::Access;
use crate::event::Wire;
use crate::http::{ApiError, ResponseBody, StreamQuery};
use crate::hub::{Hub, ReaderRequest, SubscribeError, Subscription};
use crate::metrics::Metrics;
use crate::registry::ConnectionCloser;
pub(crate) use stream::SseStream;
pub(crate) use writer::SseWriter;
pub(crate) use writer::{EventFilter, MercureDialect, StreamTiming};

/// `Last-Event-ID`.
const LAST_EVENT_ID: &str = "last-event-id";

/// A stream request on the fast path, as the server read it.
pub(crate) struct FastRequest<'a> {
    /// The query string.
    pub(crate) query: Option<&'a str>,
    /// The `Last-Event-ID` header.
    pub(crate) last_event_id: Option<&'a [u8]>,
    /// What the client may do.
    pub(crate) access: &'a Access,
    /// Header lines to add to the response head (CORS), each ending in CRLF.
    pub(crate) extra_head: &'a str,
}

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

    /// Subscribes to the requested topics and answers with the event stream (through hyper).
    pub(crate) async fn respond<B>(
        &self,
        closer: Arc<dyn ConnectionCloser>,
        req: &Request<B>,
        access: &Access,
    ) -> Result<Response<ResponseBody>, ApiError> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "GET, HEAD"));
        }
        let header = req.headers().get(LAST_EVENT_ID).map(HeaderValue::as_bytes);
        let subscription = self.subscribe(closer, req.uri().query(), header, access).await?;
        let writer = self.writer(subscription, access);
        let mut response = Response::new(ResponseBody::stream(writer));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// The stream for the first request of a dedicated HTTP/1.1 connection; if the request is
    /// refused, the socket comes back so hyper can answer it with the error.
    pub(crate) async fn fast_path(
        &self,
        closer: Arc<dyn ConnectionCloser>,
        request: FastRequest<'_>,
        io: tokio::net::TcpStream,
    ) -> Result<SseStream, tokio::net::TcpStream> {
        let FastRequest { query, last_event_id, access, extra_head } = request;
        match self.subscribe(closer, query, last_event_id, access).await {
            Ok(subscription) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                     x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n{extra_head}date: {}\r\n\r\n",
                    httpdate::fmt_http_date(std::time::SystemTime::now())
                );
                Ok(SseStream::new(io, Bytes::from(head), self.writer(subscription, access)))
            }
            Err(_) => Err(io),
        }
    }

    /// The stream's writer; a stream opened with a token ends when the token expires.
    fn writer(&self, subscription: Subscription, access: &Access) -> SseWriter {
        SseWriter::new(subscription, self.timing, &self.metrics, access.expires_in())
    }

    /// Reads the topics and resume position from a request and subscribes, if the client
    /// may follow every topic: a private topic's history is never read for a client that may
    /// not see it.
    async fn subscribe(
        &self,
        closer: Arc<dyn ConnectionCloser>,
        query: Option<&str>,
        last_event_id_header: Option<&[u8]>,
        access: &Access,
    ) -> Result<Subscription, ApiError> {
        let query = StreamQuery::parse(query, last_event_id_header)?;
        // A WebSocket may start with no topic and subscribe by command; a stream may not.
        if query.topics.is_empty() {
            return Err(SubscribeError::NoTopics.into());
        }
        for topic in &query.topics {
            access.check_subscribe(topic.as_str())?;
        }
        let request = ReaderRequest::new(query.topics, query.last_event_id, Wire::Sse);
        let request = request.closed_by(closer);
        Ok(self.hub.subscribe(request).await?)
    }
}

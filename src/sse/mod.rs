//! The SSE edge: `GET /sse?topic=…` turns a request into a subscription and streams it, either
//! through hyper (as a response body) or, for a dedicated HTTP/1.1 connection, on the socket
//! itself ([`stream`]).

pub mod encode;
pub mod stream;
pub mod writer;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};

use crate::error::ApiError;
use crate::hub::Subscription;
use crate::metrics::Transport;
use crate::registry::ConnectionCloser;
use crate::server::App;
use crate::server::body::ResponseBody;
use crate::server::stream_query::{StreamQuery, subscribe_error};
use writer::{SseWriter, StreamTiming};

/// `Last-Event-ID`.
const LAST_EVENT_ID: &str = "last-event-id";

/// Subscribes to the requested topics and answers with the event stream (through hyper).
pub(crate) async fn handle<B>(
    app: &App,
    closer: Arc<dyn ConnectionCloser>,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, ApiError> {
    let header = req.headers().get(LAST_EVENT_ID).map(HeaderValue::as_bytes);
    let subscription = subscribe(app, closer, req.uri().query(), header).await?;
    let mut response = Response::new(ResponseBody::sse(writer(app, subscription)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The stream for the first request of a dedicated HTTP/1.1 connection; if the request is
/// refused, the socket comes back so hyper can answer it with the error.
pub(crate) async fn fast_path(
    app: &App,
    closer: Arc<dyn ConnectionCloser>,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
    io: tokio::net::TcpStream,
) -> Result<stream::SseStream, tokio::net::TcpStream> {
    match subscribe(app, closer, query, last_event_id).await {
        Ok(subscription) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                 x-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate: {}\r\n\r\n",
                httpdate::fmt_http_date(std::time::SystemTime::now())
            );
            Ok(stream::SseStream::new(io, Bytes::from(head), writer(app, subscription)))
        }
        Err(_) => Err(io),
    }
}

fn writer(app: &App, subscription: Subscription) -> SseWriter {
    let timing = StreamTiming {
        retry: app.config.sse_retry,
        heartbeat: app.config.heartbeat,
        write_delay: app.config.write_delay,
    };
    SseWriter::new(subscription, timing, app.metrics.clone())
}

/// Reads the topics and resume position from a request and subscribes (in cluster mode, after
/// reading from Redis what the node does not have yet).
async fn subscribe(
    app: &App,
    closer: Arc<dyn ConnectionCloser>,
    query: Option<&str>,
    last_event_id_header: Option<&[u8]>,
) -> Result<Subscription, ApiError> {
    let request = StreamQuery::parse(query, last_event_id_header)?;
    app.hub
        .prepare(&request.topics, request.last_event_id.as_deref())
        .await
        .map_err(subscribe_error)?;
    app.hub
        .subscribe(request.topics, request.last_event_id.as_deref(), Transport::Sse, Some(closer))
        .map_err(subscribe_error)
}

//! The fast path: a plain connection whose first request is an HTTP/1.1 `GET /sse` or `GET` of
//! the Mercure hub ([`first_request`](super::first_request)) is answered here, without hyper.
//! The request passes the same [`Admission::admit`](crate::http::Admission::admit) as hyper's
//! requests, its refusal is the same answer ([`refusal`]), and this module's one head writer
//! ([`response_head`]) writes the heads of SSE streams, Mercure streams and refusals alike.
//!
//! An admitted stream is then served by the SSE writer on the socket itself (two of hyper's
//! 8 KiB buffers per connection saved, and one vectored write per wakeup); a connection whose
//! first request was answered otherwise goes on with hyper for what it sends next.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::app::App;
use super::caps;
use super::conn::ConnControl;
use super::first_request::{self, FirstRequest, StreamRoute};
use super::rewind::Rewind;
use super::router::{mercure_refusal, refusal};
use crate::http::{
    AdmissionRequest, Admitted, ApiError, Asker, ErrorCode, GatedRoute, MERCURE_HUB_PATH, Refused,
    ResponseBody, Route,
};
use crate::mercure::{MercureEdge, MercureRefused};
use crate::metrics::{Metrics, Rejection};
use crate::sse::{SseEdge, SseStream, SseWriter};

/// What a connection's first request opened.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and taken apart at once; the stream is meant to live in its task"
)]
pub(super) enum Opened {
    /// A stream on the fast path.
    Stream(SseStream),
    /// Anything else, for hyper (with the bytes read so far, or left over from the publish
    /// fast path).
    Hyper(Rewind<TcpStream>),
    /// Nothing: the connection is closed, or answered and closing.
    Done,
}

/// Reads the first request and opens a stream on the fast path if that is what it asks for and
/// it is admitted; answers it here if it is refused; hands anything else to hyper.
pub(super) async fn open(
    mut stream: TcpStream,
    remote: SocketAddr,
    app: &Arc<App>,
    control: &Arc<ConnControl>,
) -> Opened {
    let mut first = Vec::new();
    let read_first = tokio::time::timeout(
        app.config.header_read_timeout,
        first_request::read(&mut stream, &mut first, app.config.max_request_head_bytes),
    );
    // A connection that has not sent a request yet has nothing to finish: shutdown closes it.
    let first_request = control.unless_stopped(read_first).await;
    let Some(first_request) = first_request else { return Opened::Done };
    match first_request {
        Ok(Ok(FirstRequest::EventStream { route, query, headers })) => {
            let edge = match (route, &app.mercure) {
                (StreamRoute::Sse, _) => StreamEdge::Sse,
                (StreamRoute::Mercure, Some(mercure)) => StreamEdge::Mercure(mercure),
                // No hub: hyper answers 404 as for any other path.
                (StreamRoute::Mercure, None) => return Opened::Hyper(Rewind::new(first, stream)),
            };
            let gated = route.gated();
            let asked = StreamRequest { gated, edge, query: query.as_deref(), headers: &headers };
            open_stream(stream, remote, app, control, asked).await
        }
        Ok(Ok(FirstRequest::Publish)) => {
            super::publish_path::serve(stream, first, remote, app, control).await
        }
        Ok(Ok(FirstRequest::Other)) => Opened::Hyper(Rewind::new(first, stream)),
        Ok(Ok(FirstRequest::Closed)) => Opened::Done,
        Ok(Ok(FirstRequest::TooLarge)) => {
            app.metrics.rejected(Rejection::HeadTooLarge);
            let max = app.config.max_request_head_bytes;
            let detail = format!("the request head is larger than {max} bytes");
            caps::refuse(stream, ApiError::new(ErrorCode::HeadTooLarge, detail));
            Opened::Done
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "reading the first request failed");
            Opened::Done
        }
        Err(_) => {
            tracing::debug!(%remote, "no request head within the header read timeout");
            // A connection that sent nothing (a browser's preconnect) is just closed; one that
            // started a request is told.
            if !first.is_empty() {
                app.metrics.rejected(Rejection::HeadTimeout);
                let detail = "the request head did not arrive within --header-read-timeout";
                caps::refuse(stream, ApiError::new(ErrorCode::RequestTimeout, detail));
            }
            Opened::Done
        }
    }
}

/// A stream request as the first request read it.
struct StreamRequest<'a> {
    gated: GatedRoute,
    edge: StreamEdge<'a>,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

/// The edge a stream request is for.
#[derive(Clone, Copy)]
enum StreamEdge<'a> {
    Sse,
    Mercure(&'a MercureEdge),
}

/// Admits the stream request and opens its stream; answers the refusal otherwise.
async fn open_stream(
    stream: TcpStream,
    remote: SocketAddr,
    app: &Arc<App>,
    control: &Arc<ConnControl>,
    request: StreamRequest<'_>,
) -> Opened {
    let StreamRequest { gated, edge, query, headers } = request;
    let asked = AdmissionRequest {
        route: gated,
        remote: remote.ip(),
        method: &Method::GET,
        headers,
        query,
        // Streams are reads: no origin is checked for them here.
        host: None,
    };
    let keep_alive = !has_token(headers.get(header::CONNECTION), "close");
    let asker = Asker::of(gated, &Method::GET, headers);
    let admitted = match app.admission.admit(&asked) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let form = app.admission.refusal_form(refused.peer, &refused.error, asker);
            return answer(stream, app, gated, refusal(gated, refused, form), keep_alive).await;
        }
    };
    let opened = match edge {
        StreamEdge::Sse => open_sse(app, control, headers, &admitted).await.map_err(|error| {
            let form = app.admission.refusal_form(admitted.peer.ip, &error, asker);
            refusal(gated, Refused::after_admission(error, admitted.peer.ip), form)
        }),
        StreamEdge::Mercure(mercure) => {
            match open_mercure(mercure, control, query, headers).await {
                Ok((headers, mut writer)) => {
                    writer.hold(admitted.take_stream_slot());
                    Ok((headers, writer))
                }
                Err(refused) => {
                    Err(mercure_refusal(&app.admission, refused, asker, admitted.peer.ip))
                }
            }
        }
    };
    match opened {
        Ok((mut headers, writer)) => {
            admitted.cors.apply(&mut headers);
            let head = response_head(StatusCode::OK, &headers, Framing::Chunked);
            app.metrics.http_request(Route::Gated(gated).as_str(), 200);
            Opened::Stream(SseStream::new(stream, Bytes::from(head), writer))
        }
        Err(mut refused) => {
            admitted.cors.apply(refused.headers_mut());
            answer(stream, app, gated, refused, keep_alive).await
        }
    }
}

/// An admitted `GET /sse`: the stream's headers and writer, or the refusal.
async fn open_sse(
    app: &Arc<App>,
    control: &Arc<ConnControl>,
    headers: &HeaderMap,
    admitted: &Admitted,
) -> Result<(HeaderMap, SseWriter), ApiError> {
    let last_event_id = headers.get("last-event-id").map(HeaderValue::as_bytes);
    let writer = app.sse.open(control.clone(), admitted, last_event_id).await?;
    Ok((SseEdge::response_headers(), writer))
}

/// An admitted `GET` of the Mercure hub: the stream's headers and writer, or the refusal.
async fn open_mercure(
    mercure: &MercureEdge,
    control: &Arc<ConnControl>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(HeaderMap, SseWriter), MercureRefused> {
    let target = match query {
        Some(query) => format!("{MERCURE_HUB_PATH}?{query}"),
        None => MERCURE_HUB_PATH.to_owned(),
    };
    let mut request = Request::get(target).body(()).map_err(|_| {
        let refused = ApiError::new(ErrorCode::BadTopic, "the request target is not a valid URI");
        MercureRefused::from(refused.into_response())
    })?;
    *request.headers_mut() = headers.clone();
    mercure.open(&request, control.clone()).await
}

/// Writes a whole answer to the first request and counts it; the connection goes on with hyper
/// for what it sends next, unless the client or the answer closes it.
async fn answer(
    mut stream: TcpStream,
    app: &Arc<App>,
    route: GatedRoute,
    response: Response<ResponseBody>,
    keep_alive: bool,
) -> Opened {
    let mut out = Vec::new();
    let keep_alive = encode_answer(&mut out, &app.metrics, route, response, keep_alive);
    let written = tokio::time::timeout(app.config.header_read_timeout, stream.write_all(&out));
    if !matches!(written.await, Ok(Ok(()))) {
        return Opened::Done;
    }
    if !keep_alive {
        let _ = stream.shutdown().await;
        return Opened::Done;
    }
    Opened::Hyper(Rewind::new(Vec::new(), stream))
}

/// Appends a whole answer to a request to `route` to `out`, and counts it; whether the
/// connection stays open after it (`keep_alive`, unless the answer closes it).
pub(super) fn encode_answer(
    out: &mut Vec<u8>,
    metrics: &Metrics,
    route: GatedRoute,
    response: Response<ResponseBody>,
    keep_alive: bool,
) -> bool {
    let (mut parts, body) = response.into_parts();
    let keep_alive = keep_alive && !has_token(parts.headers.get(header::CONNECTION), "close");
    if !keep_alive {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    metrics.http_request(Route::Gated(route).as_str(), parts.status.as_u16());
    let body = body.into_full().unwrap_or_default();
    write_head(out, parts.status, &parts.headers, Framing::Length(body.len()));
    out.extend_from_slice(&body);
    keep_alive
}

/// Whether a `Connection` header lists `token`.
pub(super) fn has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// How a response's body is framed on HTTP/1.1.
#[derive(Clone, Copy, Debug)]
pub(super) enum Framing {
    /// A stream of chunks.
    Chunked,
    /// A body of this many bytes.
    Length(usize),
    /// No body: the connection switches protocols (a `101`).
    Upgrade,
}

/// The head of an HTTP/1.1 response: the status line, `headers`, the body's framing and the
/// date. The one head writer of the fast path, for streams and refusals alike (also of the
/// refusals of connections over a cap).
pub(super) fn response_head(status: StatusCode, headers: &HeaderMap, framing: Framing) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    write_head(&mut head, status, headers, framing);
    head
}

/// Appends the head of an HTTP/1.1 response to `out` (see [`response_head`]).
fn write_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, framing: Framing) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // A header value holds no CR or LF: `HeaderValue` refuses them.
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Upgrade => {}
    }
    out.extend_from_slice(b"date: ");
    http_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\n\r\n");
}

/// Calls `with` on the `Date` of now, formatted once a second per thread (as hyper does): a
/// publish's answer is on the hot path.
fn http_date(with: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    CACHED.with_borrow_mut(|(cached_second, date)| {
        if *cached_second != second {
            *cached_second = second;
            *date = httpdate::fmt_http_date(now);
        }
        with(date.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_the_status_the_headers_and_the_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let head = response_head(StatusCode::TOO_MANY_REQUESTS, &headers, Framing::Length(12));
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/event-stream\r\n\
             retry-after: 1\r\ncontent-length: 12\r\ndate: "
        ));
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        let head = response_head(StatusCode::OK, &HeaderMap::new(), Framing::Chunked);
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: "));
    }
}

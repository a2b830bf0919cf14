//! The publish fast path: a plain HTTP/1.1 connection whose first request is `POST /publish`
//! is served here without hyper, request after request (pipelined too), for as long as each
//! request is a publish with a body of known length of at most [`MAX_HELD_BODY`]. The first
//! request that is anything else goes to hyper with the bytes read so far, and the rest of the
//! connection with it.
//!
//! A publish here passes the same admission ([`Admission::admit`](crate::http::Admission)) and
//! the same handler ([`publish::respond_to`]) as through hyper, and its answer is the same;
//! what is saved is hyper's machinery per request (its dispatcher, the request and response
//! types, a write per answer), which is most of what a small publish costs. Answers to
//! pipelined requests are written together, once no whole request is left to read.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::app::App;
use super::conn::ConnControl;
use super::fast_path::{Opened, encode_answer, has_token};
use super::publish::{self, PublishBody, PublishRequest};
use super::rewind::Rewind;
use super::router::refusal;
use crate::http::{
    AdmissionRequest, ApiError, Asker, ErrorCode, GatedRoute, ResponseBody, body_late, too_large,
};
use crate::metrics::{Metrics, Rejection};

/// The largest body the fast path reads into its buffer: the buffer of a connection stays
/// small; a larger body (a large batch) goes to hyper.
pub(crate) const MAX_HELD_BODY: usize = 64 << 10;

/// Headers parsed at most; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;

/// Room made in the read buffer before a read.
const READ_CHUNK: usize = 8 << 10;

/// Answers to pipelined requests gathered at most before they are written.
const MAX_UNSENT: usize = 64 << 10;

/// Serves a connection whose first request (in `read`) is a publish: here while its requests
/// are publishes, then through hyper.
pub(super) async fn serve(
    stream: TcpStream,
    read: Vec<u8>,
    remote: SocketAddr,
    app: &Arc<App>,
    control: &Arc<ConnControl>,
) -> Opened {
    let buf = BytesMut::from(&read[..]);
    let io = ConnectionIo { stream, buf, control: control.clone(), body: BodyState::Consumed };
    let mut conn = PublishConnection { io, out: Vec::new(), remote, app };
    match conn.run().await {
        Handover::Hyper => Opened::Hyper(Rewind::new(conn.io.buf.to_vec(), conn.io.stream)),
        Handover::Done => {
            // Best effort: the peer may be gone already.
            let _ = conn.io.stream.shutdown().await;
            Opened::Done
        }
    }
}

/// Where a connection goes when the fast path is done with it.
enum Handover {
    /// To hyper, with what is left in the buffer.
    Hyper,
    /// Nowhere: it closes.
    Done,
}

/// A connection on the publish fast path.
struct PublishConnection<'a> {
    io: ConnectionIo,
    /// Answers not yet written.
    out: Vec<u8>,
    remote: SocketAddr,
    app: &'a Arc<App>,
}

/// The socket of a connection on the publish fast path, and what was read from it.
pub(crate) struct ConnectionIo {
    stream: TcpStream,
    /// Bytes read and not yet taken as a request.
    buf: BytesMut,
    control: Arc<ConnControl>,
    /// Whether the body of the publish being served was taken.
    body: BodyState,
}

/// What became of a publish's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// Read and taken out of the buffer with its head.
    Consumed,
    /// Not read: the publish was refused first.
    Unread,
    /// Late, or the connection ended while it was read.
    Broken,
}

/// The body of a publish on the fast path, which its handler reads once the publish is
/// allowed, as it reads hyper's.
pub(crate) struct HeldBody<'c> {
    io: &'c mut ConnectionIo,
    head_len: usize,
    body_len: usize,
}

impl HeldBody<'_> {
    /// All of the body once it is in, if it is at most `max` bytes and arrives within
    /// `timeout`; refused as hyper's body is refused.
    pub(crate) async fn read(
        self,
        max: usize,
        timeout: std::time::Duration,
        metrics: &Metrics,
    ) -> Result<Bytes, ApiError> {
        let HeldBody { io, head_len, body_len } = self;
        if body_len > max {
            return Err(too_large(body_len as u64, max));
        }
        let deadline = Instant::now() + timeout;
        let whole = head_len + body_len;
        while io.buf.len() < whole {
            match io.read_more(deadline, false).await {
                Read::Data => {}
                Read::Ended => {
                    io.body = BodyState::Broken;
                    let detail = "could not read the request body: the connection ended";
                    return Err(ApiError::new(ErrorCode::BadBody, detail));
                }
                Read::Late => {
                    io.body = BodyState::Broken;
                    return Err(body_late(timeout, metrics));
                }
            }
        }
        // Copied out: an event held in the topic's log must not keep the read buffer alive.
        let body = Bytes::copy_from_slice(&io.buf[head_len..whole]);
        io.buf.advance(whole);
        io.body = BodyState::Consumed;
        Ok(body)
    }
}

/// What the next request is.
enum Next {
    Publish(PublishHead),
    /// Not a publish the fast path serves: hyper's.
    Other,
    /// The connection ends here (closed, idle, asked to stop).
    End,
    /// Answered with this error, then closed.
    Refuse(ApiError),
}

impl PublishConnection<'_> {
    /// Serves publishes until the connection ends, or a request is for hyper.
    async fn run(&mut self) -> Handover {
        loop {
            let head = match self.next_head().await {
                Next::Publish(head) => head,
                Next::Other => {
                    return match self.flush().await {
                        true => Handover::Hyper,
                        false => Handover::Done,
                    };
                }
                Next::End => {
                    self.flush().await;
                    return Handover::Done;
                }
                Next::Refuse(error) => {
                    self.answer(error.into_response(), false);
                    self.flush().await;
                    return Handover::Done;
                }
            };
            let control = self.io.control.clone();
            let Some(response) = control.unless_killed(self.publish(&head)).await else {
                return Handover::Done;
            };
            let whole = head.head_len + head.body_len;
            let body_done = match self.io.body {
                BodyState::Consumed => true,
                // Refused before its body was read: skipped if it is all in, else the
                // connection closes after the answer rather than wait for it.
                BodyState::Unread if self.io.buf.len() >= whole => {
                    self.io.buf.advance(whole);
                    true
                }
                BodyState::Unread | BodyState::Broken => false,
            };
            let keep_alive = body_done && !head.close && !control.is_stopped();
            if !self.answer(response, keep_alive) {
                self.flush().await;
                return Handover::Done;
            }
            if self.out.len() >= MAX_UNSENT && !self.flush().await {
                return Handover::Done;
            }
        }
    }

    /// The next request's head: a publish, or what ends the fast path. Writes the answers
    /// gathered before it waits for the peer.
    async fn next_head(&mut self) -> Next {
        let config = &self.app.config;
        let mut head_deadline = None;
        loop {
            if !self.io.buf.is_empty() {
                match parse(&self.io.buf, config.max_request_head_bytes) {
                    Parse::Publish(head) => return Next::Publish(head),
                    Parse::Other => return Next::Other,
                    Parse::TooLarge => {
                        self.app.metrics.rejected(Rejection::HeadTooLarge);
                        let max = config.max_request_head_bytes;
                        let detail = format!("the request head is larger than {max} bytes");
                        return Next::Refuse(ApiError::new(ErrorCode::HeadTooLarge, detail));
                    }
                    Parse::Partial => {}
                }
            }
            if !self.flush().await {
                return Next::End;
            }
            let idle = self.io.buf.is_empty();
            let deadline = match idle {
                // Between requests the connection may idle (a keep-alive pool's), as long
                // as `--idle-timeout`; once a head has begun, it has the head's deadline.
                true => Instant::now() + config.idle_timeout,
                false => *head_deadline.get_or_insert(Instant::now() + config.header_read_timeout),
            };
            match self.io.read_more(deadline, idle).await {
                Read::Data => {}
                Read::Ended => return Next::End,
                Read::Late if idle => return Next::End,
                Read::Late => {
                    self.app.metrics.rejected(Rejection::HeadTimeout);
                    let detail = "the request head did not arrive within --header-read-timeout";
                    return Next::Refuse(ApiError::new(ErrorCode::RequestTimeout, detail));
                }
            }
        }
    }

    /// Admits the publish and publishes it, as hyper's stack would: its answer.
    async fn publish(&mut self, head: &PublishHead) -> Response<ResponseBody> {
        let app = self.app;
        let headers = &head.headers;
        let asked = AdmissionRequest {
            route: GatedRoute::Publish,
            remote: self.remote.ip(),
            method: &Method::POST,
            headers,
            query: head.query.as_deref(),
            host: headers.get(header::HOST).and_then(|host| host.to_str().ok()),
        };
        self.io.body = BodyState::Unread;
        match app.admission.admit(&asked) {
            Ok(admitted) => {
                let (head_len, body_len) = (head.head_len, head.body_len);
                let body = HeldBody { io: &mut self.io, head_len, body_len };
                let request = PublishRequest {
                    method: &Method::POST,
                    path: "/publish",
                    headers,
                    body: PublishBody::Held(body),
                };
                let publishing = &app.publishing;
                let mut response =
                    publish::respond_to(request, &admitted, publishing, app.publish_body).await;
                admitted.cors.apply(response.headers_mut());
                response
            }
            Err(refused) => {
                let asker = Asker::of(GatedRoute::Publish, &Method::POST, headers);
                let form = app.admission.refusal_form(refused.peer, &refused.error, asker);
                refusal(GatedRoute::Publish, refused, form)
            }
        }
    }

    /// Gathers `response` to be written; whether the connection stays open after it.
    fn answer(&mut self, response: Response<ResponseBody>, keep_alive: bool) -> bool {
        encode_answer(&mut self.out, &self.app.metrics, GatedRoute::Publish, response, keep_alive)
    }

    /// Writes the answers gathered; whether that worked.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let timeout = self.app.config.header_read_timeout;
        let written = tokio::time::timeout(timeout, self.io.stream.write_all(&self.out));
        let written = self.io.control.unless_killed(written).await;
        self.out.clear();
        if self.out.capacity() > MAX_UNSENT {
            self.out = Vec::new();
        }
        matches!(written, Some(Ok(Ok(()))))
    }
}

impl ConnectionIo {
    /// Reads more of the request into the buffer, by `deadline`; an `idle` connection (no
    /// request begun) also stops when asked to drain.
    async fn read_more(&mut self, deadline: Instant, idle: bool) -> Read {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf));
        let read = match idle {
            true => self.control.unless_stopped(read).await,
            false => self.control.unless_killed(read).await,
        };
        match read {
            Some(Ok(Ok(0) | Err(_))) | None => Read::Ended,
            Some(Ok(Ok(_))) => Read::Data,
            Some(Err(_)) => Read::Late,
        }
    }
}

/// How a read went.
enum Read {
    Data,
    /// The peer closed, the socket failed, or the server closes the connection.
    Ended,
    /// Nothing came by the deadline.
    Late,
}

/// A publish's head, parsed.
#[derive(Debug)]
struct PublishHead {
    /// The head's length in the buffer; the body follows it.
    head_len: usize,
    body_len: usize,
    query: Option<String>,
    headers: HeaderMap,
    /// The client closes the connection after this request (`Connection: close`).
    close: bool,
}

/// What the buffer starts with.
#[derive(Debug)]
enum Parse {
    Publish(PublishHead),
    /// Anything else (another endpoint, a body of unknown length or over [`MAX_HELD_BODY`],
    /// `Expect`, an upgrade, HTTP/1.0, a malformed head): hyper's to answer.
    Other,
    /// A head not complete within the head limit.
    TooLarge,
    /// Not a whole head yet.
    Partial,
}

fn parse(buf: &[u8], max_head: usize) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Complete(_)) => return Parse::TooLarge,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parse::Partial,
        Ok(httparse::Status::Partial) => return Parse::TooLarge,
        Err(_) => return Parse::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Parse::Other;
    }
    let Some(target) = request.path else { return Parse::Other };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != "/publish" {
        return Parse::Other;
    }
    let mut map = HeaderMap::with_capacity(request.headers.len());
    let (mut body_len, mut close) = (None, false);
    for field in request.headers.iter() {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
        else {
            return Parse::Other;
        };
        if name == header::CONTENT_LENGTH {
            match (body_len, content_length(field.value)) {
                (None, Some(len)) => body_len = Some(len),
                // Two lengths, or one that is not a number: hyper refuses it.
                _ => return Parse::Other,
            }
        } else if [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE].contains(&name) {
            return Parse::Other;
        } else if name == header::CONNECTION {
            close |= has_token(Some(&value), "close");
        }
        map.append(name, value);
    }
    // A request with neither length nor chunks has no body (RFC 9112, 6.3).
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_HELD_BODY {
        return Parse::Other;
    }
    let query = query.map(str::to_owned);
    Parse::Publish(PublishHead { head_len, body_len, query, headers: map, close })
}

/// The lengths of the head and of the body of the publish `buf` starts with, if the fast path
/// takes it (for the fuzz target of first requests).
#[cfg(any(fuzzing, test))]
pub(crate) fn publish_lengths(buf: &[u8], max_head: usize) -> Option<(usize, usize)> {
    match parse(buf, max_head) {
        Parse::Publish(head) => Some((head.head_len, head.body_len)),
        Parse::Other | Parse::TooLarge | Parse::Partial => None,
    }
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 16 << 10;

    fn publish(buf: &[u8]) -> PublishHead {
        match parse(buf, MAX_HEAD) {
            Parse::Publish(head) => head,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn publishes_with_a_known_length_are_taken() {
        let head =
            publish(b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello");
        assert_eq!((head.head_len, head.body_len, head.close), (61, 5, false));
        assert_eq!(head.query.as_deref(), Some("topic=a"));
        assert_eq!(head.headers["x-a"], "1");
        let head = publish(b"POST /publish HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert_eq!((head.body_len, head.close, head.query), (0, true, None));
        let head = publish(b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab");
        assert_eq!(head.body_len, 3, "the body may still be on its way");
    }

    #[test]
    fn anything_else_is_hypers() {
        let huge =
            format!("POST /publish HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_HELD_BODY + 1);
        for other in [
            &b"GET /publish?topic=a HTTP/1.1\r\n\r\n"[..],
            b"POST /publish?topic=a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
            b"POST /publishx HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"POST /sse HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST /publish HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST /publish HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST /publish HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 1\r\n\r\nx",
            huge.as_bytes(),
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other, MAX_HEAD), Parse::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn heads_wait_for_more_up_to_the_limit() {
        assert!(matches!(parse(b"POST /publish HTTP/1.1\r\nHost", MAX_HEAD), Parse::Partial));
        let mut huge = b"POST /publish HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(parse(&huge, MAX_HEAD), Parse::TooLarge));
    }
}

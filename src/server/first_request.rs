//! Reads the first request head of a connection to decide who serves it: an HTTP/1.1
//! `GET /sse` or `GET` of the Mercure hub goes to the fast path, with its route, and a
//! `POST /publish` to the publish fast path; everything else (HTTP/2 prior knowledge included) to hyper, which is handed the bytes read so far as if
//! nothing had been consumed.

use std::io;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::{GatedRoute, MERCURE_HUB_PATH};

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers parsed at most; a request with more is left to hyper.
const MAX_HEADERS: usize = 64;

/// What the first request is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstRequest {
    /// `GET /sse` or `GET /.well-known/mercure` over HTTP/1.1, without a body, and nothing
    /// after it.
    EventStream {
        /// Which endpoint.
        route: StreamRoute,
        /// The query string, if any.
        query: Option<String>,
        /// The headers a stream reads: `Last-Event-ID`, where a token may come from
        /// (`Authorization`, `Cookie`), who the client is (`X-Forwarded-For`), the page's
        /// origin (`Origin`, for CORS) and whether the client keeps the connection
        /// (`Connection`, for a refusal) and whether it is a browser's (`Accept`).
        headers: HeaderMap,
    },
    /// `POST /publish` over HTTP/1.1: the publish fast path reads it, and what follows.
    Publish,
    /// Anything else: hyper serves it, starting with the bytes read so far.
    Other,
    /// A request head larger than `--max-request-head-bytes`, still incomplete.
    TooLarge,
    /// The peer closed the connection before sending a request.
    Closed,
}

/// The endpoints a dedicated stream connection may be for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamRoute {
    /// crier's `/sse`.
    Sse,
    /// The Mercure hub's subscribe.
    Mercure,
}

impl StreamRoute {
    /// The gated endpoint it is.
    pub(crate) fn gated(self) -> GatedRoute {
        match self {
            StreamRoute::Sse => GatedRoute::Sse,
            StreamRoute::Mercure => GatedRoute::Mercure,
        }
    }
}

/// Reads from `io` into `buf` until the first request head is complete or clearly not an SSE
/// request.
pub(crate) async fn read(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    max_head: usize,
) -> io::Result<FirstRequest> {
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(if buf.is_empty() { 1024 } else { buf.len() });
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(if buf.is_empty() { FirstRequest::Closed } else { FirstRequest::Other });
        }
        if let Some(decision) = classify(buf, max_head) {
            return Ok(decision);
        }
    }
}

/// Decides on the bytes read so far, or `None` if more are needed; a head not complete within
/// `max_head` bytes is [`FirstRequest::TooLarge`].
pub(crate) fn classify(buf: &[u8], max_head: usize) -> Option<FirstRequest> {
    let preface = buf.len().min(H2_PREFACE.len());
    if buf[..preface] == H2_PREFACE[..preface] {
        return (buf.len() >= H2_PREFACE.len()).then_some(FirstRequest::Other);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return None,
        Ok(httparse::Status::Partial) => return Some(FirstRequest::TooLarge),
        // Malformed, or more headers than parsed here: hyper answers it.
        Err(_) => return Some(FirstRequest::Other),
    };
    if len > max_head {
        return Some(FirstRequest::TooLarge);
    }
    let Some(target) = request.path else {
        return Some(FirstRequest::Other);
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let has_body = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    });
    if path == "/publish" && request.method == Some("POST") && request.version == Some(1) {
        return Some(FirstRequest::Publish);
    }
    let route = match path {
        "/sse" => StreamRoute::Sse,
        MERCURE_HUB_PATH => StreamRoute::Mercure,
        _ => return Some(FirstRequest::Other),
    };
    if request.method != Some("GET") || request.version != Some(1) || has_body || len != buf.len() {
        return Some(FirstRequest::Other);
    }
    let mut headers = HeaderMap::new();
    for header in request.headers.iter() {
        let Some(&name) = STREAM_HEADERS.iter().find(|n| header.name.eq_ignore_ascii_case(n))
        else {
            continue;
        };
        match HeaderValue::from_bytes(header.value) {
            Ok(value) => {
                headers.append(HeaderName::from_static(name), value);
            }
            // Let hyper refuse what it refuses.
            Err(_) => return Some(FirstRequest::Other),
        }
    }
    Some(FirstRequest::EventStream { route, query: query.map(str::to_owned), headers })
}

/// The headers a stream reads, lowercase (`connection`: whether a refusal closes it;
/// `accept`: whether a refusal is one a browser retries).
const STREAM_HEADERS: [&str; 7] = [
    "last-event-id",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "origin",
    "connection",
    "accept",
];

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 16 << 10;

    fn classify_(buf: &[u8]) -> Option<FirstRequest> {
        classify(buf, MAX_HEAD)
    }

    fn sse(query: Option<&str>, id: Option<&'static str>) -> Option<FirstRequest> {
        let mut headers = HeaderMap::new();
        if let Some(id) = id {
            headers.insert("last-event-id", HeaderValue::from_static(id));
        }
        let route = StreamRoute::Sse;
        Some(FirstRequest::EventStream { route, query: query.map(str::to_owned), headers })
    }

    #[test]
    fn only_a_plain_http11_sse_get_takes_the_fast_path() {
        assert_eq!(
            classify_(b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n"),
            sse(Some("topic=a"), None)
        );
        assert_eq!(
            classify_(b"GET /sse?topic=a HTTP/1.1\r\nlast-event-ID: k-1\r\n\r\n"),
            sse(Some("topic=a"), Some("k-1"))
        );
        let Some(FirstRequest::EventStream { headers, .. }) = classify_(
            b"GET /sse?topic=a HTTP/1.1\r\nAuthorization: Bearer t\r\nCookie: a=1\r\n\
              Cookie: crier_token=c\r\nX-Forwarded-For: 192.0.2.1\r\nUser-Agent: x\r\n\r\n",
        ) else {
            panic!("a stream request");
        };
        assert_eq!(headers["authorization"], "Bearer t");
        assert_eq!(headers.get_all("cookie").iter().count(), 2);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        assert!(headers.get("user-agent").is_none(), "only what a stream reads is kept");
        assert_eq!(classify_(b"GET /sse HTTP/1.1\r\n\r\n"), sse(None, None));
        let Some(FirstRequest::EventStream { route, .. }) =
            classify_(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\n\r\n")
        else {
            panic!("a Mercure stream request");
        };
        assert_eq!(route, StreamRoute::Mercure);
        for other in [
            &b"GET /sse?topic=a HTTP/1.0\r\n\r\n"[..],
            b"HEAD /sse?topic=a HTTP/1.1\r\n\r\n",
            b"POST /sse?topic=a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"POST /publish?topic=a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
            b"PUT /publish?topic=a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"GET /sse?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /ssex HTTP/1.1\r\n\r\n",
            b"POST /.well-known/mercure HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            b"GET /.well-known/mercure/subscriptions HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /sse?topic=a HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
            H2_PREFACE,
        ] {
            assert_eq!(
                classify_(other),
                Some(FirstRequest::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_publish_goes_to_the_publish_fast_path() {
        let publish = b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(classify_(publish), Some(FirstRequest::Publish));
        let chunked = b"POST /publish?topic=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(classify_(chunked), Some(FirstRequest::Publish), "decided request by request");
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(classify_(b"GET /sse?topic=a HTTP/1.1\r\nHost"), None);
        assert_eq!(classify_(b"PRI * HTTP/2.0\r\n"), None, "could still be the h2 preface");
        assert_eq!(classify_(b"P"), None);
        let mut huge = b"GET /sse HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        assert_eq!(classify_(&huge), Some(FirstRequest::TooLarge));
    }
}

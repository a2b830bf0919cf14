//! The built-in page at `GET /`: one self-contained HTML file embedded in the binary (no CDN,
//! nothing fetched but this server's own endpoints) to subscribe over SSE or WebSocket, watch
//! events arrive (a `crier.gap` shown as such), publish, and follow the server's streams,
//! deliveries per second and evictions from `/metrics`.

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::http::ResponseBody;

/// The page.
const PAGE: &str = include_str!("page.html");

/// The page as a response.
pub(super) fn response() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

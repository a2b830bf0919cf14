//! The body of every response crier sends through hyper: a fixed buffer, or a live stream of
//! chunks (an SSE stream on HTTP/2, or on an HTTP/1.1 connection that carried other requests
//! first).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::error::{ApiError, ErrorCode};
use crate::chunk::Chunk;
use crate::metrics::{Metrics, Rejection};

/// The stream was cut by the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The client fell too far behind and was disconnected.
    #[error(
        "subscriber evicted: it fell further behind than its byte budget or the topic log allow"
    )]
    Evicted,
}

/// A source of body chunks that hyper polls as the response body.
pub(crate) trait ChunkStream: Send {
    /// The next chunk to write; `None` once the stream has ended cleanly, an error if the
    /// server cut it. Registers for a wakeup when there is nothing to write.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, StreamError>>>;

    /// Whether the stream has ended.
    fn is_ended(&self) -> bool;
}

/// Reads a request's body of at most `max` bytes, arriving within `timeout`: 413 past the
/// limit (at once if `Content-Length` says so), 408 when it is late (counted), 400 when the
/// connection breaks.
pub(crate) async fn read_body<B>(
    headers: &http::HeaderMap,
    body: B,
    max: usize,
    timeout: std::time::Duration,
    metrics: &Metrics,
) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&size| size > max as u64) {
        return Err(too_large(size, max));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, max).collect());
    let Ok(collected) = collected.await else { return Err(body_late(timeout, metrics)) };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            let detail = format!("event data exceeds the limit of {max} bytes");
            Err(ApiError::new(ErrorCode::TooLarge, detail))
        }
        Err(e) => {
            let detail = format!("could not read the request body: {e}");
            Err(ApiError::new(ErrorCode::BadBody, detail))
        }
    }
}

/// The refusal of a body of `size` bytes, over `max`: 413.
pub(crate) fn too_large(size: u64, max: usize) -> ApiError {
    ApiError::new(ErrorCode::TooLarge, format!("event data is {size} bytes, the limit is {max}"))
}

/// The refusal of a body that did not arrive within `timeout`: 408, counted.
pub(crate) fn body_late(timeout: std::time::Duration, metrics: &Metrics) -> ApiError {
    metrics.rejected(Rejection::BodyTimeout);
    let detail = format!("the body did not arrive within {timeout:?}");
    ApiError::new(ErrorCode::RequestTimeout, detail)
}

/// A response body.
pub(crate) struct ResponseBody {
    content: Content,
    /// Kept until the body is dropped (written out, or its connection gone): the server's
    /// count of requests in flight on the connection.
    held: Option<Box<dyn Send + Sync>>,
}

enum Content {
    /// A complete body known up front (sent with `Content-Length`).
    Full { chunk: Option<Chunk> },
    /// A stream polled chunk by chunk.
    Stream(Box<dyn ChunkStream>),
}

impl ResponseBody {
    /// A complete body.
    pub(crate) fn full(bytes: Bytes) -> Self {
        let chunk = (!bytes.is_empty()).then(|| Chunk::from_bytes(bytes));
        ResponseBody { content: Content::Full { chunk }, held: None }
    }

    /// An empty body.
    pub(crate) fn empty() -> Self {
        ResponseBody { content: Content::Full { chunk: None }, held: None }
    }

    /// A stream.
    pub(crate) fn stream(stream: impl ChunkStream + 'static) -> Self {
        ResponseBody { content: Content::Stream(Box::new(stream)), held: None }
    }

    /// The whole body, if it is a complete one (not a stream).
    pub(crate) fn into_full(self) -> Option<Bytes> {
        match self.content {
            Content::Full { chunk } => Some(
                chunk.map_or_else(Bytes::new, |mut chunk| chunk.copy_to_bytes(chunk.remaining())),
            ),
            Content::Stream(_) => None,
        }
    }

    /// The same body, keeping `guard` until it is dropped.
    pub(crate) fn holding(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.held = Some(Box::new(guard));
        self
    }
}

impl Body for ResponseBody {
    type Data = Chunk;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, StreamError>>> {
        match &mut self.get_mut().content {
            Content::Full { chunk } => Poll::Ready(chunk.take().map(|c| Ok(Frame::data(c)))),
            Content::Stream(stream) => stream.poll_chunk(cx).map(|c| c.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Full { chunk } => chunk.is_none(),
            Content::Stream(stream) => stream.is_ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full { chunk } => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.remaining() as u64))
            }
            Content::Stream(_) => SizeHint::default(),
        }
    }
}

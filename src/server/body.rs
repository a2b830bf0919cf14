//! The body of every response crier sends: a fixed buffer, or a live SSE stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::chunk::Chunk;
use crate::sse::writer::{SseWriter, StreamError};

pin_project! {
    /// A response body.
    pub struct ResponseBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        // A complete body known up front (sent with `Content-Length`).
        Full { chunk: Option<Chunk> },
        // An event stream served through hyper (HTTP/2, and HTTP/1.1 connections that carried
        // other requests first): hyper polls the stream's writer for its next chunk.
        Sse { writer: SseWriter },
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        let chunk = (!bytes.is_empty()).then(|| Chunk::from_bytes(bytes));
        ResponseBody { kind: Kind::Full { chunk } }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody { kind: Kind::Full { chunk: None } }
    }

    /// An event stream.
    pub fn sse(writer: SseWriter) -> Self {
        ResponseBody { kind: Kind::Sse { writer } }
    }
}

impl Body for ResponseBody {
    type Data = Chunk;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, StreamError>>> {
        match self.project().kind.project() {
            KindProj::Full { chunk } => Poll::Ready(chunk.take().map(|c| Ok(Frame::data(c)))),
            KindProj::Sse { writer } => {
                writer.poll_chunk(cx).map(|c| c.map(|c| c.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { chunk } => chunk.is_none(),
            Kind::Sse { writer } => writer.is_ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { chunk } => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |c| c.remaining() as u64))
            }
            Kind::Sse { .. } => SizeHint::default(),
        }
    }
}

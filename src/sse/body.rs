//! The SSE response body for streams served through hyper (HTTP/2, and HTTP/1.1 connections
//! that carried other requests first): hyper polls it for the writer's next chunk.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use super::writer::{Chunk, SseWriter, StreamError};

/// The body of an SSE response.
pub struct SseBody {
    writer: SseWriter,
}

impl SseBody {
    /// A body that streams `writer`'s output.
    pub fn new(writer: SseWriter) -> Self {
        SseBody { writer }
    }
}

impl Body for SseBody {
    type Data = Chunk;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, StreamError>>> {
        self.get_mut().writer.poll_chunk(cx).map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.writer.is_ended()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

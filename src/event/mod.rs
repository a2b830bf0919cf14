//! Events, the bottom layer: names, ids and data checked once when made, and the [`Event`] a
//! publish produces and every subscriber reads, holding its frames in each wire format and its
//! place in the topic's byte streams. This module imports nothing else of the crate.

mod id;
mod idempotency;
mod name;

use std::any::Any;
use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;

pub use id::{Cursor, Epoch, EventId, IdError};
pub(crate) use id::{Gap, GapReason, MAX_EVENT_ID_LEN};
pub use idempotency::IdempotencyKey;
pub use name::{EventName, NameError, TopicName};

/// UTF-8 text in shared bytes, checked once when made.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Text(Bytes);

impl Text {
    /// `bytes` as text; an error if they are not UTF-8.
    pub fn new(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Text(bytes))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked (or was handed a `String`, which is) UTF-8, and the
        // bytes never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(Bytes::from(text))
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Text(Bytes::from_static(text.as_bytes()))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The payload of an event.
#[derive(Clone, PartialEq, Eq)]
pub enum EventData {
    /// UTF-8 text, sent as is.
    Text(Text),
    /// Arbitrary bytes: base64-encoded on SSE and in WebSocket JSON frames.
    Binary(Bytes),
}

impl EventData {
    /// Text data; an error if `bytes` is not UTF-8.
    pub fn text(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        Text::new(bytes).map(EventData::Text)
    }

    /// The raw bytes, text or binary.
    pub fn bytes(&self) -> &Bytes {
        match self {
            EventData::Text(text) => text.as_bytes(),
            EventData::Binary(bytes) => bytes,
        }
    }

    /// Whether the data is binary.
    pub fn is_binary(&self) -> bool {
        matches!(self, EventData::Binary(_))
    }

    /// Length of the raw bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}

impl From<String> for EventData {
    fn from(text: String) -> Self {
        EventData::Text(Text::from(text))
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventData::Text(text) => write!(f, "Text({text:?})"),
            EventData::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

/// A wire format a subscriber reads events in. Each has its own frame per event and its own
/// byte count, so a subscriber's lag is measured in the bytes it is actually sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    /// A Server-Sent Events frame.
    Sse = 0,
    /// A WebSocket text frame holding the event as JSON (`format=json`).
    WsJson = 1,
    /// A WebSocket frame holding the bare data (`format=raw`).
    WsRaw = 2,
}

impl Wire {
    /// How many wire formats there are.
    pub const COUNT: usize = 3;

    /// Every wire format, in index order.
    pub const ALL: [Wire; Wire::COUNT] = [Wire::Sse, Wire::WsJson, Wire::WsRaw];

    /// Its index in per-format arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The frames of one event, one per wire format. The SSE frame is built when the event is
/// published; each WebSocket frame by the first writer that needs it, then shared by every
/// other. Every frame's length is known from the start.
pub struct Frames {
    /// The complete SSE frame, `id:` line first.
    sse: Bytes,
    /// Length of the SSE frame's `id:` line, which a stream of several topics replaces with its
    /// cursor.
    sse_id_line: usize,
    /// The WebSocket frames, JSON then raw, once encoded.
    ws: [OnceLock<Bytes>; 2],
    /// The WebSocket frames' lengths, JSON then raw.
    ws_lens: [usize; 2],
    /// For an event of a log with a framing of its own, what that framing read from the data
    /// for the log's readers to decide by: read once, when the event is appended.
    attachment: Option<Attachment>,
}

/// What a log's own framing attaches to an event.
pub(crate) type Attachment = Box<dyn Any + Send + Sync>;

impl Frames {
    /// Frames whose SSE frame is `sse` (its `id:` line `sse_id_line` bytes long) and whose
    /// WebSocket frames, when encoded, will be `ws_json_len` and `ws_raw_len` bytes long.
    pub fn new(sse: Bytes, sse_id_line: usize, ws_json_len: usize, ws_raw_len: usize) -> Self {
        let ws_lens = [ws_json_len, ws_raw_len];
        Frames { sse, sse_id_line, ws: Default::default(), ws_lens, attachment: None }
    }

    /// The frames of an event of a log with a framing of its own, read only as SSE: `sse` is
    /// the whole frame (its id is the log's framing's, not crier's), and `attachment` what the
    /// log's readers decide by.
    pub(crate) fn sse_only(sse: Bytes, attachment: Option<Attachment>) -> Self {
        Frames { sse, sse_id_line: 0, ws: Default::default(), ws_lens: [0, 0], attachment }
    }

    /// What the log's framing attached to the event, if it is a `T`.
    pub(crate) fn attachment<T: Any>(&self) -> Option<&T> {
        self.attachment.as_deref().and_then(|attached| attached.downcast_ref())
    }

    /// The complete SSE frame, `id:` line first.
    pub fn sse(&self) -> &Bytes {
        &self.sse
    }

    /// The SSE frame after its `id:` line.
    pub fn sse_body(&self) -> &[u8] {
        &self.sse[self.sse_id_line..]
    }

    /// The frame for `wire`, encoded by `encode` if no writer needed it yet (the SSE frame
    /// always is).
    pub fn get_or_encode(&self, wire: Wire, encode: impl FnOnce() -> Bytes) -> &Bytes {
        let slot = match wire {
            Wire::Sse => return &self.sse,
            Wire::WsJson => 0,
            Wire::WsRaw => 1,
        };
        self.ws[slot].get_or_init(|| {
            let frame = encode();
            debug_assert_eq!(frame.len(), self.ws_lens[slot], "{wire:?} frame length");
            frame
        })
    }

    /// The length of the frame for `wire`.
    pub fn len(&self, wire: Wire) -> usize {
        match wire {
            Wire::Sse => self.sse.len(),
            Wire::WsJson => self.ws_lens[0],
            Wire::WsRaw => self.ws_lens[1],
        }
    }
}

impl fmt::Debug for Frames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frames")
            .field("sse", &self.sse)
            .field("ws_lens", &self.ws_lens)
            .field("attachment", &self.attachment.is_some())
            .finish_non_exhaustive()
    }
}

/// A published event with its frames, encoded once and shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    /// The topic it was published to.
    pub topic: TopicName,
    /// Its id, assigned at publish.
    pub id: EventId,
    /// The optional event name.
    pub name: Option<EventName>,
    /// The payload.
    pub data: EventData,
    /// Its frames.
    pub frames: Frames,
    /// For each wire format, the topic's stream length (bytes of frames published so far)
    /// including this event: subtracting two of these gives how far a reader lags, in bytes.
    stream_end: [u64; Wire::COUNT],
}

impl Event {
    /// An event at stream lengths `stream_end` (by [`Wire::index`]); zeros for an event that
    /// is not part of a topic's stream (a notice).
    pub fn new(
        topic: TopicName,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        frames: Frames,
        stream_end: [u64; Wire::COUNT],
    ) -> Self {
        Event { topic, id, name, data, frames, stream_end }
    }

    /// The topic's stream length in `wire` bytes, this event included.
    #[inline]
    pub fn stream_end(&self, wire: Wire) -> u64 {
        self.stream_end[wire.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_checked_once_when_made() {
        assert!(EventData::text(Bytes::from_static(b"caf\xc3\xa9")).is_ok());
        assert!(EventData::text(Bytes::from_static(b"caf\xc3")).is_err());
        assert!(Text::new(Bytes::from_static(b"\xff")).is_err());
        let text = Text::from(String::from("é"));
        assert_eq!(text.as_str(), "é");
        assert_eq!(EventData::from(String::from("x")).bytes(), &Bytes::from_static(b"x"));
    }
}

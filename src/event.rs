//! Events and the names and ids that travel with them: validated topic and event names,
//! epoch-carrying event ids and stream cursors, and the `Event` a publish produces, holding its
//! once-encoded SSE frame.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Longest topic or event name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Event names starting with this prefix are reserved for events crier emits itself
/// (`crier.gap`), so a subscriber can trust them.
pub const RESERVED_EVENT_PREFIX: &str = "crier.";

/// Why a topic or event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a byte outside `A-Z a-z 0-9 _ - . : /`.
    #[error("contains {byte:?} at byte {index}; allowed are A-Z a-z 0-9 _ - . : /")]
    BadByte {
        /// The first offending character (lossy for non-ASCII).
        byte: char,
        /// Its byte offset.
        index: usize,
    },
    /// The event name uses the `crier.` prefix, which is reserved for server events.
    #[error("the prefix \"crier.\" is reserved for events crier emits")]
    Reserved,
}

fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/');
    match name.bytes().position(|b| !allowed(b)) {
        None => Ok(()),
        Some(index) => Err(NameError::BadByte {
            byte: name[index..].chars().next().unwrap_or('\u{fffd}'),
            index,
        }),
    }
}

/// A topic name: 1–200 bytes of `A-Z a-z 0-9 _ - . : /`.
///
/// Cheap to clone (a shared string); ordered so a stream's topics have one canonical order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `name` as a topic name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(TopicName(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An event name (the SSE `event:` field): same alphabet and length as a topic name, and not
/// starting with the reserved `crier.` prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// Validates `name` as the name of a published event.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        if name.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(NameError::Reserved);
        }
        Ok(EventName(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `crier.gap`, the name of the notice a stream gets when it could not resume exactly.
    pub(crate) fn gap() -> Self {
        EventName(Arc::from("crier.gap"))
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The payload of an event.
#[derive(Clone, PartialEq, Eq)]
pub enum EventData {
    /// UTF-8 text, sent as is.
    Text(Bytes),
    /// Arbitrary bytes: base64-encoded on SSE and in WebSocket JSON frames.
    Binary(Bytes),
}

impl EventData {
    /// Text data; `None` if `bytes` is not valid UTF-8.
    pub fn text(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).ok()?;
        Some(EventData::Text(bytes))
    }

    /// The raw bytes, text or binary.
    pub fn bytes(&self) -> &Bytes {
        match self {
            EventData::Text(b) | EventData::Binary(b) => b,
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

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventData::Text(b) => write!(f, "Text({:?})", String::from_utf8_lossy(b)),
            EventData::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

/// Identifies one incarnation of a topic's history. A single node draws a fresh epoch at start,
/// so ids issued before a restart (whose history is gone) are never taken for new ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Epoch(u64);

/// Epochs are at most 40 bits so an id stays short (8 base-36 digits).
const EPOCH_BITS: u32 = 40;

impl Epoch {
    /// A random epoch.
    pub fn random() -> Self {
        // Zero is excluded so a missing epoch can never match.
        Epoch(fastrand::u64(1..1 << EPOCH_BITS))
    }

    /// The epoch with this numeric value, if it is in range.
    pub fn from_u64(value: u64) -> Option<Self> {
        (value != 0 && value < 1 << EPOCH_BITS).then_some(Epoch(value))
    }

    /// The numeric value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 13];
        f.write_str(encode_base36(self.0, &mut digits))
    }
}

fn encode_base36(mut value: u64, buf: &mut [u8; 13]) -> &str {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = DIGITS[(value % 36) as usize];
        value /= 36;
        if value == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[start..]).unwrap_or_default()
}

/// An event id: the topic's epoch and the event's sequence number within it, written
/// `<epoch>-<seq>` (for example `k2j8f0qz-42`). Clients treat it as opaque.
///
/// Sequence numbers start at 1; a position with sequence 0 means "before the first event".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EventId {
    /// The topic incarnation.
    pub epoch: Epoch,
    /// Position within the epoch.
    pub seq: u64,
}

/// Longest rendering of an [`EventId`]: 8 epoch digits, `-`, 20 sequence digits.
pub const MAX_EVENT_ID_LEN: usize = 8 + 1 + 20;

impl EventId {
    /// Writes the id into `buf` and returns the written part.
    pub fn encode<'a>(&self, buf: &'a mut [u8; MAX_EVENT_ID_LEN]) -> &'a [u8] {
        let mut epoch = [0u8; 13];
        let epoch = encode_base36(self.epoch.0, &mut epoch).as_bytes();
        let mut seq = itoa::Buffer::new();
        let seq = seq.format(self.seq).as_bytes();
        let len = epoch.len() + 1 + seq.len();
        buf[..epoch.len()].copy_from_slice(epoch);
        buf[epoch.len()] = b'-';
        buf[epoch.len() + 1..len].copy_from_slice(seq);
        &buf[..len]
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Why an event id or cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not of the form `<epoch>-<seq>`.
    #[error("{0:?} is not an event id issued by crier")]
    Malformed(String),
    /// A cursor whose number of positions differs from the stream's topics.
    #[error(
        "the id holds {found} positions but the stream has {expected} topics; resume with the topics it was issued for"
    )]
    TopicCount {
        /// Positions in the cursor.
        found: usize,
        /// Topics in the stream.
        expected: usize,
    },
}

impl FromStr for EventId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let malformed = || IdError::Malformed(s.chars().take(64).collect());
        let (epoch, seq) = s.split_once('-').ok_or_else(malformed)?;
        // Only the exact text crier writes is accepted, so one id has one spelling: lowercase
        // base 36 and decimal digits, no sign, no leading zeros.
        let canonical = |digits: &str, max_len: usize, allowed: fn(u8) -> bool| {
            (1..=max_len).contains(&digits.len())
                && digits.bytes().all(allowed)
                && (digits == "0" || !digits.starts_with('0'))
        };
        let base36 = |b: u8| b.is_ascii_digit() || b.is_ascii_lowercase();
        if !canonical(epoch, 8, base36) || !canonical(seq, 20, |b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let epoch = u64::from_str_radix(epoch, 36).ok().and_then(Epoch::from_u64);
        match (epoch, seq.parse()) {
            (Some(epoch), Ok(seq)) => Ok(EventId { epoch, seq }),
            _ => Err(malformed()),
        }
    }
}

/// A resume position for a stream of several topics: one [`EventId`] per topic, in the
/// stream's canonical (sorted) topic order, joined by `,`.
///
/// A stream of one topic uses the plain event id, which is a cursor of one position.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cursor(pub Vec<EventId>);

impl Cursor {
    /// Parses a cursor for a stream of `topics` topics.
    pub fn parse(s: &str, topics: usize) -> Result<Self, IdError> {
        let ids = s.split(',').map(str::parse).collect::<Result<Vec<EventId>, _>>()?;
        if ids.len() != topics {
            return Err(IdError::TopicCount { found: ids.len(), expected: topics });
        }
        Ok(Cursor(ids))
    }

    /// Appends the cursor's text to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        Cursor::write_positions(&self.0, out);
    }

    /// Appends the text of a cursor holding `positions` to `out`.
    pub fn write_positions(positions: &[EventId], out: &mut Vec<u8>) {
        let mut buf = [0u8; MAX_EVENT_ID_LEN];
        for (i, id) in positions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(id.encode(&mut buf));
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
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
    /// The complete SSE frame, `id:` line first.
    pub(crate) sse: SseFrame,
    /// The topic's stream length (bytes of SSE frames published so far) including this event:
    /// subtracting two of these gives how far a subscriber lags, in bytes.
    pub(crate) stream_end: u64,
    /// The WebSocket frames of the event, one per format, encoded by the first writer that
    /// needs each and shared by every other.
    pub(crate) ws_frames: [OnceLock<Bytes>; 2],
}

impl Event {
    /// An event with its SSE frame; WebSocket frames are encoded when first needed.
    pub(crate) fn new(
        topic: TopicName,
        id: EventId,
        name: Option<EventName>,
        data: EventData,
        sse: SseFrame,
        stream_end: u64,
    ) -> Self {
        Event { topic, id, name, data, sse, stream_end, ws_frames: Default::default() }
    }

    /// The complete SSE frame of this event (`id:`, optional `event:`, `data:` lines, blank line).
    pub fn sse_frame(&self) -> &Bytes {
        &self.sse.frame
    }
}

/// An encoded SSE frame and where its `id:` line ends, so a stream of several topics can send
/// its own cursor and share the rest of the frame.
#[derive(Debug)]
pub(crate) struct SseFrame {
    pub(crate) frame: Bytes,
    pub(crate) body_offset: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_contract() {
        assert!(TopicName::new("a").is_ok());
        assert!(TopicName::new("news/sport:eu-1_2.x").is_ok());
        assert!(TopicName::new(&"x".repeat(200)).is_ok());
        assert_eq!(TopicName::new(""), Err(NameError::Empty));
        assert_eq!(
            TopicName::new(&"x".repeat(201)),
            Err(NameError::TooLong { len: 201, max: 200 })
        );
        assert_eq!(TopicName::new("a b"), Err(NameError::BadByte { byte: ' ', index: 1 }));
        assert_eq!(TopicName::new("añ"), Err(NameError::BadByte { byte: 'ñ', index: 1 }));
        assert!(TopicName::new("a\nb").is_err());
    }

    #[test]
    fn event_names_reserve_the_crier_prefix() {
        assert!(EventName::new("price.update").is_ok());
        assert_eq!(EventName::new("crier.gap"), Err(NameError::Reserved));
        assert!(EventName::new("crier").is_ok());
    }

    #[test]
    fn ids_round_trip_and_reject_foreign_text() {
        let id = EventId { epoch: Epoch::from_u64(123_456_789).unwrap(), seq: 42 };
        let text = id.to_string();
        assert_eq!(text, "21i3v9-42");
        assert_eq!(text.parse::<EventId>(), Ok(id));
        let max = EventId { epoch: Epoch::from_u64((1 << 40) - 1).unwrap(), seq: u64::MAX };
        assert_eq!(max.to_string().len(), MAX_EVENT_ID_LEN);
        assert_eq!(max.to_string().parse::<EventId>(), Ok(max));
        for bad in [
            "",
            "-",
            "abc",
            "abc-",
            "-5",
            "0-5",
            "ab-+5",
            "AB-5",
            "ab-5-6",
            "ab-x",
            "zzzzzzzzz-1",
            "+g-5151",
            "0g-1",
            "g-007",
            "g-+7",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn cursors_hold_one_position_per_topic() {
        let c = Cursor::parse("a-1,b-0", 2).unwrap();
        assert_eq!(c.to_string(), "a-1,b-0");
        assert_eq!(Cursor::parse("a-1", 2), Err(IdError::TopicCount { found: 1, expected: 2 }));
        assert!(Cursor::parse("a-1,", 2).is_err());
    }
}

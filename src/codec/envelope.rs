//! The relay envelope: how an event travels through Redis, on the Pub/Sub channel and in the
//! topic's stream (the same bytes in both, so live delivery and backfill decode alike).
//!
//! Version 1 is one header line, a newline, then the event data as is:
//!
//! ```text
//! crier1 <id> <kind> <topic>[ <event name>]\n<data>
//! ```
//!
//! `<id>` is the event id (`<epoch>-<seq>`), `<kind>` is `t` for UTF-8 text or `b` for binary
//! data. Topic and event names cannot hold spaces or newlines, so the header needs no escaping
//! and the data needs no encoding. The Lua publish script writes the `crier1 <id> ` part (it
//! assigns the id); the node publishing writes the rest (`header_tail`). A future version
//! changes the first word; a node skips (and counts) envelopes it cannot read.

use bytes::Bytes;

use crate::event::{EventData, EventId, EventName, TopicName};

/// The first word of a version 1 envelope.
pub(crate) const VERSION: &str = "crier1";

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The topic.
    pub topic: TopicName,
    /// The id Redis assigned.
    pub id: EventId,
    /// The event name.
    pub name: Option<EventName>,
    /// The payload.
    pub data: EventData,
}

/// Why an envelope could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a version this node reads.
    #[error("unknown envelope version")]
    Version,
    /// The header line is missing or malformed.
    #[error("malformed envelope header: {0}")]
    Header(&'static str),
    /// The data of a text event is not UTF-8.
    #[error("text event data is not UTF-8")]
    Utf8,
}

/// What the publishing node writes after the id: `<kind> <topic>[ <event name>]`.
pub(crate) fn header_tail(
    topic: &TopicName,
    name: Option<&EventName>,
    data: &EventData,
) -> Vec<u8> {
    let kind = if data.is_binary() { "b" } else { "t" };
    let name_len = name.map_or(0, |n| n.as_str().len() + 1);
    let mut out = Vec::with_capacity(2 + topic.as_str().len() + name_len);
    out.extend_from_slice(kind.as_bytes());
    out.push(b' ');
    out.extend_from_slice(topic.as_str().as_bytes());
    if let Some(name) = name {
        out.push(b' ');
        out.extend_from_slice(name.as_str().as_bytes());
    }
    out
}

/// A whole envelope, byte for byte as the publish script builds it.
pub fn encode(
    topic: &TopicName,
    id: EventId,
    name: Option<&EventName>,
    data: &EventData,
) -> Vec<u8> {
    let mut out = format!("{VERSION} {id} ").into_bytes();
    out.extend_from_slice(&header_tail(topic, name, data));
    out.push(b'\n');
    out.extend_from_slice(data.bytes());
    out
}

/// Reads an envelope; `bytes` is shared by the data (no copy).
pub fn decode(bytes: &Bytes) -> Result<Envelope, EnvelopeError> {
    let newline = memchr::memchr(b'\n', bytes).ok_or(EnvelopeError::Header("no newline"))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| EnvelopeError::Header("header is not UTF-8"))?;
    let mut words = header.split(' ');
    if words.next() != Some(VERSION) {
        return Err(EnvelopeError::Version);
    }
    let id = words
        .next()
        .and_then(|id| id.parse::<EventId>().ok())
        .ok_or(EnvelopeError::Header("bad event id"))?;
    if id.seq == 0 {
        return Err(EnvelopeError::Header("bad event id"));
    }
    let binary = match words.next() {
        Some("t") => false,
        Some("b") => true,
        _ => return Err(EnvelopeError::Header("bad data kind")),
    };
    let topic = words
        .next()
        .and_then(|topic| TopicName::stored(topic).ok())
        .ok_or(EnvelopeError::Header("bad topic"))?;
    let name = match words.next() {
        None => None,
        Some(name) => Some(EventName::new(name).map_err(|_| EnvelopeError::Header("bad name"))?),
    };
    if words.next().is_some() {
        return Err(EnvelopeError::Header("trailing words"));
    }
    let payload = bytes.slice(newline + 1..);
    let data = if binary {
        EventData::Binary(payload)
    } else {
        EventData::text(payload).map_err(|_| EnvelopeError::Utf8)?
    };
    Ok(Envelope { topic, id, name, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;

    fn id(seq: u64) -> EventId {
        EventId { epoch: Epoch::from_u64(123_456).unwrap(), seq }
    }

    #[test]
    fn round_trips_text_binary_named_and_unnamed() {
        let topic = TopicName::new("news/eu:1").unwrap();
        let name = EventName::new("tick").unwrap();
        let cases = [
            (None, EventData::from("a\nb\r\n c".to_owned())),
            (Some(name), EventData::Binary(Bytes::from_static(&[0, 10, 13, 255]))),
            (None, EventData::from(String::new())),
        ];
        for (name, data) in cases {
            let bytes = Bytes::from(encode(&topic, id(7), name.as_ref(), &data));
            let envelope = decode(&bytes).unwrap();
            assert_eq!(envelope, Envelope { topic: topic.clone(), id: id(7), name, data });
        }
    }

    #[test]
    fn the_wire_form_is_stable() {
        let topic = TopicName::new("t").unwrap();
        let name = EventName::new("n").unwrap();
        let data = EventData::from("x y\n".to_owned());
        assert_eq!(encode(&topic, id(3), Some(&name), &data), b"crier1 2n9c-3 t t n\nx y\n");
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        let bad: &[(&[u8], EnvelopeError)] = &[
            (b"crier1 2n9c-3 t t", EnvelopeError::Header("no newline")),
            (b"crier2 2n9c-3 t t\nx", EnvelopeError::Version),
            (b"crier1 2n9c-0 t t\nx", EnvelopeError::Header("bad event id")),
            (b"crier1 2n9c-03 t t\nx", EnvelopeError::Header("bad event id")),
            (b"crier1 2n9c-3 x t\nx", EnvelopeError::Header("bad data kind")),
            (b"crier1 2n9c-3 t a b!\nx", EnvelopeError::Header("bad name")),
            (b"crier1 2n9c-3 t t crier.gap\nx", EnvelopeError::Header("bad name")),
            (b"crier1 2n9c-3 t t n extra\nx", EnvelopeError::Header("trailing words")),
            (b"crier1 2n9c-3 t a%b\nx", EnvelopeError::Header("bad topic")),
            (b"crier1 2n9c-3 t t\n\xff", EnvelopeError::Utf8),
        ];
        for (bytes, error) in bad {
            assert_eq!(decode(&Bytes::from_static(bytes)).as_ref(), Err(error), "{bytes:?}");
        }
        assert!(decode(&Bytes::from_static(b"crier1 2n9c-3 b t\n\xff")).is_ok());
    }
}

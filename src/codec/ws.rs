//! Outbound WebSocket frames (RFC 6455 §5): unmasked, so one encoding serves every subscriber;
//! an event's frame in each format; and each frame's length, known before it is encoded.
//!
//! Formats: `json`, one text frame per event, `{"topic":"T","id":"…","event":"NAME"|null,
//! "data":"…"}` with `"encoding":"base64"` added for binary data; `raw`, the bare data, as a
//! text frame (text) or a binary frame (binary).

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use super::sse::base64_len;
use crate::event::{Event, EventData, EventId, EventName, TopicName, Wire};

/// Text frame opcode.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub(crate) const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason: a close frame's payload less its code.
pub(crate) const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Length of the header of an unmasked frame carrying `payload_len` bytes.
pub(crate) fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// The header of an unmasked, final frame: `(bytes, length)`.
pub(crate) fn header(opcode: u8, payload_len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode;
    let len = header_len(payload_len);
    match len {
        2 => head[1] = payload_len as u8,
        4 => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    (head, len)
}

/// A complete unmasked, final frame carrying `payload`.
pub(crate) fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let (head, head_len) = header(opcode, payload.len());
    let mut frame = BytesMut::with_capacity(head_len + payload.len());
    frame.put_slice(&head[..head_len]);
    frame.put_slice(payload);
    frame.freeze()
}

/// A close frame with `code` and as much of `reason` as fits, cut at a character boundary so
/// the reason stays UTF-8.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_to_char_boundary(reason, MAX_CLOSE_REASON);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &payload)
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn truncate_to_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).expect("0 is a boundary");
    &text[..end]
}

/// The frame that carries `event` to a WebSocket reading `wire` (`WsJson` or `WsRaw`): encoded
/// by the first writer that needs it and shared by every other.
pub(crate) fn event_frame(event: &Event, wire: Wire) -> &Bytes {
    event.frames.get_or_encode(wire, || match wire {
        Wire::WsRaw => match &event.data {
            EventData::Text(text) => encode(OP_TEXT, text.as_bytes()),
            EventData::Binary(bytes) => encode(OP_BINARY, bytes),
        },
        Wire::WsJson | Wire::Sse => {
            let payload = json_event(&event.topic, event.id, event.name.as_ref(), &event.data);
            encode(OP_TEXT, &payload)
        }
    })
}

/// The JSON envelope of `event` (`{"topic","id","event","data"}`, as a WebSocket JSON frame
/// carries it): that frame, encoded once and shared, and where its payload starts.
pub(crate) fn json_envelope(event: &Event) -> (&Bytes, usize) {
    let frame = event_frame(event, Wire::WsJson);
    // A server's frame is unmasked: 2 header bytes, then 2 or 8 of extended length.
    let header = match frame.get(1).map(|len| len & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (frame, header)
}

fn json_event(
    topic: &TopicName,
    id: EventId,
    name: Option<&EventName>,
    data: &EventData,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct JsonEvent<'a> {
        topic: &'a str,
        id: String,
        event: Option<&'a str>,
        data: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<&'static str>,
    }
    let encoded;
    let (data, encoding) = match data {
        EventData::Text(text) => (text.as_str(), None),
        EventData::Binary(bytes) => {
            encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            (encoded.as_str(), Some("base64"))
        }
    };
    let event = JsonEvent {
        topic: topic.as_str(),
        id: id.to_string(),
        event: name.map(EventName::as_str),
        data,
        encoding,
    };
    serde_json::to_vec(&event).expect("strings and an option serialize to JSON")
}

/// The lengths of an event's WebSocket frames, known before its id is: each is completed by
/// [`FrameLens::with_id`] once the id is assigned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameLens {
    /// The JSON payload without the id's text.
    json_payload: usize,
    /// The raw frame (header and data).
    raw_frame: usize,
}

impl FrameLens {
    /// The frame lengths of an event on `topic` named `name` carrying `data`.
    pub(crate) fn of(topic: &TopicName, name: Option<&EventName>, data: &EventData) -> Self {
        let (data_len, encoding) = match data {
            EventData::Text(text) => (json_string_len(text.as_bytes()), 0),
            EventData::Binary(bytes) => (base64_len(bytes.len()), r#","encoding":"base64""#.len()),
        };
        let name_len = name.map_or("null".len(), |name| name.as_str().len() + 2);
        // Names hold no byte JSON escapes.
        let json_payload = r#"{"topic":""#.len()
            + topic.as_str().len()
            + r#"","id":""#.len()
            + r#"","event":"#.len()
            + name_len
            + r#","data":""#.len()
            + data_len
            + r#"""#.len()
            + encoding
            + "}".len();
        let raw = data.len();
        FrameLens { json_payload, raw_frame: header_len(raw) + raw }
    }

    /// The lengths of the JSON and raw frames of the event with id text `id_len` bytes long.
    pub(crate) fn with_id(self, id_len: usize) -> (usize, usize) {
        let json = self.json_payload + id_len;
        (header_len(json) + json, self.raw_frame)
    }
}

/// Length of `text` as the body of a JSON string, escaped as serde_json escapes it: `"` and `\`
/// with a backslash, `\b \t \n \f \r` as such, other control characters as `\u00XX`.
///
/// Written to vectorize: one pass finds whether any byte needs escaping (most text has none),
/// and only then a second adds up every byte's extra length (0, 1 or 5), without branches and
/// in bytes over blocks short enough not to overflow.
fn json_string_len(text: &[u8]) -> usize {
    fn escaped(b: u8) -> bool {
        (b < 0x20) | (b == b'"') | (b == b'\\')
    }
    fn extra(b: u8) -> u8 {
        let control = u8::from(b < 0x20);
        let quoted = u8::from((b == b'"') | (b == b'\\'));
        // \b \t \n \f \r: two bytes, not six.
        let short = u8::from((b.wrapping_sub(0x08) < 6) & (b != 0x0B));
        quoted + control * 5 - short * 4
    }
    if !text.iter().fold(false, |any, &b| any | escaped(b)) {
        return text.len();
    }
    // Blocks of 48 bytes (three 16-byte vectors), whose extra (at most 5 each) fits a byte.
    let mut blocks = text.chunks_exact(48);
    let mut total = text.len();
    for block in &mut blocks {
        total += usize::from(block.iter().fold(0u8, |sum, &b| sum.wrapping_add(extra(b))));
    }
    total + blocks.remainder().iter().map(|&b| usize::from(extra(b))).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Epoch, Frames};

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&encode(OP_TEXT, b"hi")[..], b"\x81\x02hi");
        assert_eq!(&encode(OP_BINARY, &[0; 126])[..4], b"\x82\x7e\x00\x7e");
        assert_eq!(
            &encode(OP_BINARY, &vec![0; 65536])[..10],
            b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
        );
        assert_eq!(&close(1000, "bye")[..], b"\x88\x05\x03\xe8bye");
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let frame = close(1001, &reason);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        let cut = std::str::from_utf8(&frame[4..]).expect("the reason stays UTF-8");
        assert_eq!(cut, "é".repeat(61));
    }

    fn event(topic: &str, name: Option<&str>, data: EventData, seq: u64) -> Event {
        let topic = TopicName::new(topic).unwrap();
        let name = name.map(|n| EventName::new(n).unwrap());
        let id = EventId { epoch: Epoch::from_u64(77).unwrap(), seq };
        let (json, raw) = FrameLens::of(&topic, name.as_ref(), &data).with_id(id.to_string().len());
        let frames = Frames::new(Bytes::new(), 0, json, raw);
        Event::new(topic, id, name, data, frames, [0; Wire::COUNT])
    }

    /// The payload of an unmasked frame.
    fn payload(frame: &[u8]) -> &[u8] {
        match frame[1] {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    #[test]
    fn json_and_raw_frames_have_their_predicted_lengths() {
        let texts = [
            String::new(),
            "hello".to_owned(),
            "quote \" backslash \\ slash / é ☃ \u{2028}".to_owned(),
            (0u8..0x20).map(char::from).collect(),
            "x".repeat(125),
            "y".repeat(70_000),
            "\n".repeat(40_000),
        ];
        for (i, text) in texts.into_iter().enumerate() {
            for name in [None, Some("tick")] {
                let e = event("a/b", name, EventData::from(text.clone()), 10u64.pow(i as u32));
                for wire in [Wire::WsJson, Wire::WsRaw] {
                    let frame = event_frame(&e, wire);
                    assert_eq!(frame.len(), e.frames.len(wire), "{wire:?} {i} {name:?}");
                }
                let value: serde_json::Value =
                    serde_json::from_slice(payload(event_frame(&e, Wire::WsJson))).unwrap();
                assert_eq!(value["data"], text.as_str());
            }
        }
        let binary = event("t", None, EventData::Binary(Bytes::from_static(&[0, 1, 255])), 3);
        assert_eq!(event_frame(&binary, Wire::WsJson).len(), binary.frames.len(Wire::WsJson));
        assert_eq!(&event_frame(&binary, Wire::WsRaw)[..], b"\x82\x03\x00\x01\xff");
        assert_eq!(
            payload(event_frame(&binary, Wire::WsJson)),
            br#"{"topic":"t","id":"25-3","event":null,"data":"AAH/","encoding":"base64"}"#
        );
    }
}

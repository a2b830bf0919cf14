//! The SSE frame encoder: turns an event into the bytes of one `text/event-stream` frame, once,
//! and writes the stream's fixed pieces (preface, heartbeat, gap notice, cursor line).
//!
//! Data is split into one `data:` line per line of the payload, breaking on CRLF, LF and CR
//! alike, so a WHATWG parser gives the payload back with every line break as LF. Binary data is
//! one `data:` line of standard base64 (with padding).

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Cursor, EventData, EventId, EventName, MAX_EVENT_ID_LEN, SseFrame};

/// Room left in front of an encoded body for its `id:` line, which is only known once the
/// publisher holds the topic's order (see [`finish`]).
pub(crate) const ID_HEADROOM: usize = b"id: ".len() + MAX_EVENT_ID_LEN + 1;

/// An event body (everything after the `id:` line) with room in front for the id line.
#[derive(Debug)]
pub struct EncodedBody {
    buf: BytesMut,
}

/// Encodes the `event:` and `data:` lines of an event and its terminating blank line.
///
/// This is the expensive part of encoding and needs no id, so publishers run it before they
/// take a topic's order.
pub fn encode_body(name: Option<&EventName>, data: &EventData) -> EncodedBody {
    let payload = data.bytes();
    let data_len = match data {
        EventData::Text(_) => {
            let breaks = memchr::memchr2_iter(b'\r', b'\n', payload).count();
            payload.len() + (breaks + 1) * b"data: \n".len()
        }
        EventData::Binary(_) => base64::encoded_len(payload.len(), true).unwrap_or(0) + 7,
    };
    let name_len = name.map_or(0, |n| b"event: \n".len() + n.as_str().len());
    let mut buf = BytesMut::with_capacity(ID_HEADROOM + name_len + data_len + 1);
    buf.put_bytes(0, ID_HEADROOM);
    if let Some(name) = name {
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_str().as_bytes());
        buf.put_u8(b'\n');
    }
    match data {
        EventData::Text(text) => put_data_lines(&mut buf, text),
        EventData::Binary(bytes) => {
            buf.put_slice(b"data: ");
            let start = buf.len();
            let encoded_len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
            buf.resize(start + encoded_len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(bytes, &mut buf[start..])
                .unwrap_or(0);
            buf.truncate(start + written);
            buf.put_u8(b'\n');
        }
    }
    buf.put_u8(b'\n');
    EncodedBody { buf }
}

/// One `data:` line per line of `text`; CRLF, LF and CR each end a line.
fn put_data_lines(buf: &mut BytesMut, text: &[u8]) {
    let mut rest = text;
    loop {
        buf.put_slice(b"data: ");
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                buf.put_slice(rest);
                buf.put_u8(b'\n');
                return;
            }
            Some(at) => {
                buf.put_slice(&rest[..at]);
                buf.put_u8(b'\n');
                let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
                rest = &rest[at + if crlf { 2 } else { 1 }..];
            }
        }
    }
}

/// Writes the `id:` line in front of an encoded body and freezes the frame.
pub(crate) fn finish(body: EncodedBody, id: EventId) -> SseFrame {
    let mut buf = body.buf;
    let mut id_buf = [0u8; MAX_EVENT_ID_LEN];
    let id = id.encode(&mut id_buf);
    let id_line_len = b"id: ".len() + id.len() + 1;
    let start = ID_HEADROOM - id_line_len;
    buf[start..start + 4].copy_from_slice(b"id: ");
    buf[start + 4..start + 4 + id.len()].copy_from_slice(id);
    buf[ID_HEADROOM - 1] = b'\n';
    SseFrame { frame: buf.freeze().slice(start..), body_offset: id_line_len }
}

/// Encodes a complete frame for an event; for benchmarks, tests and fuzzing.
pub fn encode_event(id: EventId, name: Option<&EventName>, data: &EventData) -> Bytes {
    finish(encode_body(name, data), id).frame
}

/// The first bytes of every stream: the reconnection delay and a comment, so the response
/// headers flush and proxies see traffic at once.
pub fn preface(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: crier\n\n"))
}

/// The comment written when a stream has been quiet for a heartbeat interval.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The `id:` line a stream of several topics sends in place of an event's own id.
pub(crate) fn cursor_line(positions: &[EventId]) -> Bytes {
    let mut out = Vec::with_capacity(4 + positions.len() * (MAX_EVENT_ID_LEN + 1) + 1);
    out.extend_from_slice(b"id: ");
    Cursor::write_positions(positions, &mut out);
    out.push(b'\n');
    Bytes::from(out)
}

/// The `crier.gap` event: sent first on a resumed stream when part of the requested history is
/// gone. `id` is the position the replay starts after, so resuming from it is exact.
pub(crate) fn gap_event(id_line: &[u8], json: &str) -> Bytes {
    let mut out = Vec::with_capacity(id_line.len() + 24 + json.len());
    out.extend_from_slice(id_line);
    out.extend_from_slice(b"event: crier.gap\ndata: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The `id:` line of a single event id.
pub(crate) fn id_line(id: EventId) -> Vec<u8> {
    let mut buf = [0u8; MAX_EVENT_ID_LEN];
    let mut out = Vec::with_capacity(4 + MAX_EVENT_ID_LEN + 1);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.encode(&mut buf));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;

    fn id(seq: u64) -> EventId {
        EventId { epoch: Epoch::from_u64(36 * 36).unwrap(), seq }
    }

    fn text(s: &str) -> EventData {
        EventData::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn unnamed_single_line() {
        assert_eq!(encode_event(id(7), None, &text("hello")), &b"id: 100-7\ndata: hello\n\n"[..]);
    }

    #[test]
    fn named_event_and_every_line_ending() {
        let name = EventName::new("tick").unwrap();
        assert_eq!(
            encode_event(id(1), Some(&name), &text("a\r\nb\nc\rd")),
            &b"id: 100-1\nevent: tick\ndata: a\ndata: b\ndata: c\ndata: d\n\n"[..]
        );
    }

    #[test]
    fn edge_lines_are_kept() {
        assert_eq!(encode_event(id(1), None, &text("")), &b"id: 100-1\ndata: \n\n"[..]);
        assert_eq!(encode_event(id(1), None, &text("\n")), &b"id: 100-1\ndata: \ndata: \n\n"[..]);
        assert_eq!(
            encode_event(id(1), None, &text(" x\r")),
            &b"id: 100-1\ndata:  x\ndata: \n\n"[..]
        );
        assert_eq!(
            encode_event(id(1), None, &text("\r\r\n")),
            &b"id: 100-1\ndata: \ndata: \ndata: \n\n"[..]
        );
    }

    #[test]
    fn binary_is_base64() {
        let data = EventData::Binary(Bytes::from_static(&[0, 255, 10, 13]));
        assert_eq!(encode_event(id(2), None, &data), &b"id: 100-2\ndata: AP8KDQ==\n\n"[..]);
    }

    #[test]
    fn body_offset_skips_the_id_line() {
        let frame = finish(encode_body(None, &text("x")), id(12345));
        assert_eq!(&frame.frame[..frame.body_offset], b"id: 100-12345\n");
        assert_eq!(&frame.frame[frame.body_offset..], &b"data: x\n\n"[..]);
    }
}

//! SSE frames: turns an event into the bytes of one `text/event-stream` frame, once, and writes
//! the stream's fixed pieces (preface, heartbeat, cursor line).
//!
//! Data is split into one `data:` line per line of the payload, breaking on CRLF, LF and CR
//! alike, so a WHATWG parser gives the payload back with every line break as LF. Binary data is
//! one `data:` line of standard base64 (with padding).

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Cursor, EventData, EventId, EventName, MAX_EVENT_ID_LEN};

/// An `id:` line's bytes around the id itself: `id: ` and the line feed.
pub(crate) const ID_LINE_OVERHEAD: usize = b"id: \n".len();

/// Room left in front of an encoded body for its `id:` line, which is only known once the
/// publisher holds the topic's order (see [`SseBody::finish`]).
const ID_HEADROOM: usize = ID_LINE_OVERHEAD + MAX_EVENT_ID_LEN;

/// An event body (everything after the `id:` line) with room in front for the id line.
#[derive(Debug)]
pub(crate) struct SseBody {
    buf: BytesMut,
}

/// Encodes the `event:` and `data:` lines of an event and its terminating blank line.
///
/// This is the expensive part of encoding and needs no id, so publishers run it before they
/// take a topic's order.
pub(crate) fn encode_body(name: Option<&EventName>, data: &EventData) -> SseBody {
    let payload = data.bytes();
    let data_len = match data {
        EventData::Text(_) => {
            let breaks = memchr::memchr2_iter(b'\r', b'\n', payload).count();
            payload.len() + (breaks + 1) * b"data: \n".len()
        }
        EventData::Binary(_) => base64_len(payload.len()) + b"data: \n".len(),
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
        EventData::Text(text) => put_data_lines(&mut buf, text.as_bytes()),
        EventData::Binary(bytes) => {
            buf.put_slice(b"data: ");
            let start = buf.len();
            buf.resize(start + base64_len(bytes.len()), 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(bytes, &mut buf[start..])
                .expect("the buffer was sized for the base64 text");
            buf.truncate(start + written);
            buf.put_u8(b'\n');
        }
    }
    buf.put_u8(b'\n');
    SseBody { buf }
}

/// Length of the padded base64 text of `len` bytes.
pub(crate) fn base64_len(len: usize) -> usize {
    base64::encoded_len(len, true).expect("an event's data is far below usize::MAX / 4 * 3")
}

/// One `data:` line per line of `text`; CRLF, LF and CR each end a line.
pub(crate) fn put_data_lines(buf: &mut BytesMut, text: &[u8]) {
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

impl SseBody {
    /// Writes the `id:` line in front of the body and freezes the frame; returns it with the
    /// length of its `id:` line.
    pub(crate) fn finish(self, id: EventId) -> (Bytes, usize) {
        let mut buf = self.buf;
        let mut id_buf = [0u8; MAX_EVENT_ID_LEN];
        let id = id.encode(&mut id_buf);
        let id_line_len = ID_LINE_OVERHEAD + id.len();
        let start = ID_HEADROOM - id_line_len;
        buf[start..start + 4].copy_from_slice(b"id: ");
        buf[start + 4..start + 4 + id.len()].copy_from_slice(id);
        buf[ID_HEADROOM - 1] = b'\n';
        (buf.freeze().slice(start..), id_line_len)
    }
}

/// Encodes a complete frame for an event; for benchmarks, tests and fuzzing.
pub fn encode_event(id: EventId, name: Option<&EventName>, data: &EventData) -> Bytes {
    encode_body(name, data).finish(id).0
}

/// The first bytes of every stream: the reconnection delay and a comment, so the response
/// headers flush and proxies see traffic at once.
pub(crate) fn preface(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: crier\n\n"))
}

/// The comment written when a stream has been quiet for a heartbeat interval.
pub(crate) const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The last event of a stream whose token expired, before the stream ends cleanly. It has no
/// `id:`, so the client's last event id stays the last event it got. (An evicted stream is
/// cut without an end.)
pub(crate) const EXPIRED: &[u8] = b"event: crier.expired\ndata: {\"reason\":\"token_expired\"}\n\n";

/// Appends the `id:` line a stream of several topics sends in place of an event's own id.
pub(crate) fn put_cursor_line(positions: &[EventId], out: &mut Vec<u8>) {
    out.extend_from_slice(b"id: ");
    Cursor::write_positions(positions, out);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;

    fn id(seq: u64) -> EventId {
        EventId { epoch: Epoch::from_u64(36 * 36).unwrap(), seq }
    }

    fn text(s: &str) -> EventData {
        EventData::from(s.to_owned())
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
        assert_eq!(base64_len(4), 8);
        assert_eq!(encode_event(id(2), None, &data), &b"id: 100-2\ndata: AP8KDQ==\n\n"[..]);
    }

    #[test]
    fn the_id_line_length_is_reported_for_cursor_streams() {
        let (frame, id_line) = encode_body(None, &text("x")).finish(id(12345));
        assert_eq!(&frame[..id_line], b"id: 100-12345\n");
        assert_eq!(&frame[id_line..], &b"data: x\n\n"[..]);
        let mut line = Vec::new();
        put_cursor_line(&[id(1), id(22)], &mut line);
        assert_eq!(line, b"id: 100-1,100-22\n");
    }
}

//! Inbound WebSocket frames (RFC 6455 §5): headers parsed with tungstenite's `FrameHeader`,
//! payloads unmasked here, with every check a server must make on what a client sends.
//! Outbound frames are in [`crate::codec::ws`].

use std::borrow::Cow;
use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::close::CloseCode;
use crate::codec::ws::MAX_CONTROL_PAYLOAD;

/// What kind of frame arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// First frame of a text message.
    Text,
    /// First frame of a binary message.
    Binary,
    /// A later fragment of the message in progress.
    Continuation,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

/// A frame's header, as far as the session needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// Final fragment of its message.
    pub(crate) fin: bool,
    /// Frame kind.
    pub(crate) kind: Kind,
    /// Length of the header in bytes.
    pub(crate) header_len: usize,
    /// Length of the payload in bytes.
    pub(crate) payload_len: usize,
    mask: [u8; 4],
}

/// Why the server ends a connection: a rule the client broke, or something a `format=raw`
/// stream has no frame to say (a refused command, a gap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    /// The close code to send.
    pub(crate) code: CloseCode,
    /// The reason, for the close frame and logs (cut to fit a close frame).
    pub(crate) reason: Cow<'static, str>,
}

impl Violation {
    pub(crate) fn new(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Violation { code, reason: reason.into() }
    }

    fn protocol(reason: &'static str) -> Self {
        Violation::new(CloseCode::PROTOCOL_ERROR, reason)
    }
}

/// Whether the client frames in `buf` include a close frame (whole frames only, masked or
/// not): for a connection closed before it became a session, which reads nothing else.
pub(crate) fn contains_close(mut buf: &[u8]) -> bool {
    while buf.len() >= 2 {
        let opcode = buf[0] & 0x0f;
        let masked = buf[1] & 0x80 != 0;
        let (len, mut at): (usize, usize) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let len = u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0xff; 8]));
                (usize::try_from(len).unwrap_or(usize::MAX), 10)
            }
            126 | 127 => return false,
            len => (usize::from(len), 2),
        };
        if opcode == 0x8 {
            return true;
        }
        at += if masked { 4 } else { 0 };
        match at.checked_add(len) {
            Some(end) if end <= buf.len() => buf = &buf[end..],
            _ => return false,
        }
    }
    false
}

/// Parses the header of the client frame at the start of `buf`. `Ok(None)` means more bytes
/// are needed. `max_payload` bounds data frames (a larger one is refused before its payload is
/// read).
pub(crate) fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, Violation> {
    let mut cursor = Cursor::new(buf);
    let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(Violation::protocol("reserved opcode")),
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(Violation::protocol("reserved bits set without a negotiated extension"));
    }
    let Some(mask) = header.mask else {
        return Err(Violation::protocol("client frames must be masked"));
    };
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Data(Data::Continue) => Kind::Continuation,
        OpCode::Control(Control::Close) => Kind::Close,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(Violation::protocol("reserved opcode"));
        }
    };
    let control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if control && !header.is_final {
        return Err(Violation::protocol("fragmented control frame"));
    }
    if control && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(Violation::protocol("control frame payload over 125 bytes"));
    }
    if !control && payload_len > max_payload as u64 {
        return Err(Violation::new(CloseCode::MESSAGE_TOO_BIG, "message too big"));
    }
    Ok(Some(Head {
        fin: header.is_final,
        kind,
        header_len: cursor.position() as usize,
        payload_len: payload_len as usize,
        mask,
    }))
}

impl Head {
    /// Total bytes of the frame.
    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Unmasks the payload in place (`payload` is this frame's payload bytes).
    pub(crate) fn unmask(&self, payload: &mut [u8]) {
        unmask(payload, self.mask);
    }
}

/// XORs `data` with the four-byte `mask`, eight bytes at a time.
pub(crate) fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let value = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]) ^ wide;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Checks a close frame's payload: empty, or a valid code and a UTF-8 reason.
pub(crate) fn parse_close(payload: &[u8]) -> Result<Option<CloseCode>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = CloseCode::from_u16(u16::from_be_bytes([*high, *low]))
                .filter(|code| code.may_be_sent_by_peer())
                .ok_or(Violation::protocol("invalid close code"))?;
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::new(
                    CloseCode::INVALID_PAYLOAD,
                    "close reason is not UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

/// A client frame for tests: `first` is the FIN bit and opcode, the payload is masked.
#[cfg(test)]
pub(super) fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    let mut body = payload.to_vec();
    unmask(&mut body, mask);
    frame.extend_from_slice(&body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_frame_is_found_after_whole_frames_only() {
        let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
        let text = [0x81, 0x83, 0, 0, 0, 0, b'a', b'b', b'c'];
        assert!(contains_close(&close));
        assert!(contains_close(&[&text[..], &close[..]].concat()));
        assert!(!contains_close(&text));
        assert!(!contains_close(&text[..5]), "half a frame");
        assert!(!contains_close(&[0x81, 0xfe, 0xff]), "a length not read yet");
        assert!(!contains_close(&[
            0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x88
        ]));
    }

    #[test]
    fn masked_frames_parse_and_unmask() {
        for len in [0, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frame = masked(0x82, &payload, [1, 2, 3, 4]);
            let head = parse_head(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!((head.fin, head.kind, head.payload_len), (true, Kind::Binary, len));
            assert_eq!(head.frame_len(), frame.len());
            let body = &mut frame[head.header_len..];
            head.unmask(body);
            assert_eq!(body, &payload[..]);
            assert_eq!(parse_head(&frame[..head.header_len - 1], 1 << 20), Ok(None));
        }
    }

    #[test]
    fn protocol_violations_are_refused_with_the_right_code() {
        let code = |bytes: &[u8]| parse_head(bytes, 1000).unwrap_err().code;
        assert_eq!(code(&masked(0xC1, b"x", [0; 4])), CloseCode::PROTOCOL_ERROR, "rsv1");
        assert_eq!(code(&masked(0x83, b"x", [0; 4])), CloseCode::PROTOCOL_ERROR, "opcode 3");
        assert_eq!(code(&masked(0x8B, b"x", [0; 4])), CloseCode::PROTOCOL_ERROR, "opcode 0xB");
        assert_eq!(code(&masked(0x09, b"x", [0; 4])), CloseCode::PROTOCOL_ERROR, "fragmented ping");
        assert_eq!(code(&masked(0x89, &[0; 126], [0; 4])), CloseCode::PROTOCOL_ERROR, "big ping");
        assert_eq!(code(b"\x81\x01x"), CloseCode::PROTOCOL_ERROR, "unmasked");
        assert_eq!(code(&masked(0x82, &[0; 1001], [0; 4])), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(b"\x03\xe8ok"), Ok(Some(CloseCode::NORMAL)));
        assert_eq!(parse_close(b"\x03").unwrap_err().code, CloseCode::PROTOCOL_ERROR);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(
                parse_close(&bad.to_be_bytes()).unwrap_err().code,
                CloseCode::PROTOCOL_ERROR,
                "{bad}"
            );
        }
        assert_eq!(parse_close(b"\x0f\xa0\xff").unwrap_err().code, CloseCode::INVALID_PAYLOAD);
        assert!(parse_close(&3000u16.to_be_bytes()).is_ok());
        assert!(parse_close(&4999u16.to_be_bytes()).is_ok());
    }
}

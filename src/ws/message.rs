//! Reassembles client messages from frames (RFC 6455 §5.4): fragments in order, at most one
//! message in progress, a size limit on the whole message, and UTF-8 checked as text arrives so
//! an invalid text message fails at its first bad byte rather than at its end.

use bytes::{Bytes, BytesMut};

use super::close::CloseCode;
use super::frame::{Kind, Violation};

/// A complete message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// The message being assembled across frames.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    /// `Some` while a fragmented message is in progress.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    text: bool,
    buf: BytesMut,
    /// Length of the prefix of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

fn invalid_utf8() -> Violation {
    Violation::new(CloseCode::INVALID_PAYLOAD, "text message is not UTF-8")
}

/// Checks the UTF-8 of `buf[*checked..]`, allowing a sequence cut at the end unless `fin`.
fn check_utf8(buf: &[u8], checked: &mut usize, fin: bool) -> Result<(), Violation> {
    match std::str::from_utf8(&buf[*checked..]) {
        Ok(_) => {
            *checked = buf.len();
            Ok(())
        }
        // A sequence cut by the end of a fragment: fine, unless this is the last fragment.
        Err(e) if e.error_len().is_none() && !fin => {
            *checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(invalid_utf8()),
    }
}

impl Assembler {
    /// Bytes of the message in progress held so far.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buf.len())
    }

    /// Takes one data frame's (unmasked) payload; returns the message it completes, if any.
    /// `max` bounds the whole message.
    pub(crate) fn push(
        &mut self,
        kind: Kind,
        fin: bool,
        payload: &[u8],
        max: usize,
    ) -> Result<Option<Message>, Violation> {
        match (kind, self.partial.as_mut()) {
            (Kind::Text | Kind::Binary, Some(_)) => Err(Violation::new(
                CloseCode::PROTOCOL_ERROR,
                "new message before the previous one ended",
            )),
            (Kind::Continuation, None) => Err(Violation::new(
                CloseCode::PROTOCOL_ERROR,
                "continuation frame without a message to continue",
            )),
            (Kind::Text | Kind::Binary, None) => {
                let text = kind == Kind::Text;
                if fin {
                    if text && std::str::from_utf8(payload).is_err() {
                        return Err(invalid_utf8());
                    }
                    let bytes = Bytes::copy_from_slice(payload);
                    return Ok(Some(if text {
                        Message::Text(bytes)
                    } else {
                        Message::Binary(bytes)
                    }));
                }
                let mut partial = Partial { text, buf: BytesMut::from(payload), checked: 0 };
                if text {
                    check_utf8(&partial.buf, &mut partial.checked, false)?;
                }
                self.partial = Some(partial);
                Ok(None)
            }
            (Kind::Continuation, Some(partial)) => {
                if partial.buf.len() + payload.len() > max {
                    return Err(Violation::new(CloseCode::MESSAGE_TOO_BIG, "message too big"));
                }
                partial.buf.extend_from_slice(payload);
                if partial.text {
                    check_utf8(&partial.buf, &mut partial.checked, fin)?;
                }
                if !fin {
                    return Ok(None);
                }
                let Some(Partial { text, buf, .. }) = self.partial.take() else { return Ok(None) };
                let bytes = buf.freeze();
                Ok(Some(if text { Message::Text(bytes) } else { Message::Binary(bytes) }))
            }
            (Kind::Close | Kind::Ping | Kind::Pong, _) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_in_order() {
        let mut a = Assembler::default();
        assert_eq!(a.push(Kind::Text, false, b"hel", 100), Ok(None));
        assert_eq!(a.buffered(), 3);
        assert_eq!(a.push(Kind::Continuation, false, b"lo ", 100), Ok(None));
        assert_eq!(
            a.push(Kind::Continuation, true, b"there", 100),
            Ok(Some(Message::Text("hello there".into())))
        );
        assert_eq!(a.buffered(), 0);
        assert_eq!(
            a.push(Kind::Binary, true, &[0, 255], 100),
            Ok(Some(Message::Binary(vec![0, 255].into())))
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails_early() {
        let euro = "€".as_bytes();
        let mut a = Assembler::default();
        assert_eq!(a.push(Kind::Text, false, &euro[..1], 100), Ok(None));
        assert_eq!(a.push(Kind::Continuation, false, &euro[1..2], 100), Ok(None));
        assert_eq!(
            a.push(Kind::Continuation, true, &euro[2..], 100),
            Ok(Some(Message::Text("€".into())))
        );

        let mut a = Assembler::default();
        let err = a.push(Kind::Text, false, b"ok\xff", 100).unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD, "fails at the first bad byte");
        let mut a = Assembler::default();
        a.push(Kind::Text, false, &euro[..2], 100).unwrap();
        assert_eq!(
            a.push(Kind::Continuation, true, b"", 100).unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
        assert_eq!(
            Assembler::default().push(Kind::Text, true, b"\xc3", 100).unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn protocol_and_size_violations() {
        let mut a = Assembler::default();
        assert_eq!(
            a.push(Kind::Continuation, true, b"x", 100).unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        a.push(Kind::Binary, false, b"x", 100).unwrap();
        assert_eq!(
            a.push(Kind::Text, true, b"x", 100).unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        let mut a = Assembler::default();
        a.push(Kind::Binary, false, &[0; 60], 100).unwrap();
        assert_eq!(
            a.push(Kind::Continuation, true, &[0; 41], 100).unwrap_err().code,
            CloseCode::MESSAGE_TOO_BIG
        );
    }
}

//! Decodes what a client sends: frames parsed and unmasked in place, data frames assembled
//! into messages, and every RFC 6455 violation reported with its close code.

use super::close::CloseCode;
use super::frame::{self, Kind, Violation};
use super::message::{Assembler, Message};

/// One thing a client said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound<'a> {
    /// A ping, with its payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with its code if it had one.
    Close(Option<CloseCode>),
    /// A complete message.
    Message(Message),
    /// A fragment of a message, held until the message is complete.
    Fragment,
    /// The client broke the protocol: the connection must close with this code.
    Violation(Violation),
}

/// The decoding state of one connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    assembler: Assembler,
    max_message: usize,
    /// Total bytes of the frame cut by the end of the buffer, when its header is known.
    needs: usize,
    failed: bool,
}

impl Decoder {
    /// A decoder taking messages of at most `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder { assembler: Assembler::default(), max_message, needs: 0, failed: false }
    }

    /// Size of the frame cut by the end of the last buffer, if its header was read: how much
    /// to buffer before decoding again.
    pub(crate) fn needs(&self) -> usize {
        self.needs
    }

    /// Bytes of a fragmented message held so far (at most `max_message`).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn buffered(&self) -> usize {
        self.assembler.buffered()
    }

    /// Decodes the frame at `buf[*pos..]`, unmasking it in place and advancing `pos` past it.
    /// `None` when the frame is not complete yet, and after a violation.
    pub(crate) fn next<'b>(&mut self, buf: &'b mut [u8], pos: &mut usize) -> Option<Inbound<'b>> {
        self.needs = 0;
        if self.failed || *pos >= buf.len() {
            return None;
        }
        let head = match frame::parse_head(&buf[*pos..], self.max_message) {
            Ok(Some(head)) => head,
            Ok(None) => return None,
            Err(violation) => return Some(self.fail(violation)),
        };
        if buf.len() - *pos < head.frame_len() {
            self.needs = head.frame_len();
            return None;
        }
        let payload = &mut buf[*pos + head.header_len..*pos + head.frame_len()];
        *pos += head.frame_len();
        head.unmask(payload);
        Some(match head.kind {
            Kind::Ping => Inbound::Ping(payload),
            Kind::Pong => Inbound::Pong,
            Kind::Close => match frame::parse_close(payload) {
                Ok(code) => Inbound::Close(code),
                Err(violation) => self.fail(violation),
            },
            Kind::Text | Kind::Binary | Kind::Continuation => {
                match self.assembler.push(head.kind, head.fin, payload, self.max_message) {
                    Ok(Some(message)) => Inbound::Message(message),
                    Ok(None) => Inbound::Fragment,
                    Err(violation) => self.fail(violation),
                }
            }
        })
    }

    fn fail(&mut self, violation: Violation) -> Inbound<'static> {
        self.failed = true;
        Inbound::Violation(violation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        frame::masked(first, payload, [9, 8, 7, 6])
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> (Vec<String>, usize) {
        let mut buf = bytes.to_vec();
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Some(item) = decoder.next(&mut buf, &mut pos) {
            if item != Inbound::Fragment {
                seen.push(format!("{item:?}"));
            }
        }
        (seen, pos)
    }

    #[test]
    fn control_frames_interleave_with_fragments() {
        let mut bytes = masked(0x01, b"ab");
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x80, b"cd"));
        bytes.extend(masked(0x88, &[0x03, 0xe8]));
        let (seen, used) = decode_all(&mut Decoder::new(100), &bytes);
        assert_eq!(used, bytes.len());
        assert_eq!(
            seen,
            ["Ping([112])", "Message(Text(b\"abcd\"))", "Close(Some(CloseCode(1000)))"]
        );
    }

    #[test]
    fn a_cut_frame_waits_and_says_how_much_it_needs() {
        let bytes = masked(0x82, &[1; 100]);
        let mut decoder = Decoder::new(1000);
        let (seen, used) = decode_all(&mut decoder, &bytes[..50]);
        assert_eq!((seen.len(), used, decoder.needs()), (0, 0, bytes.len()));
        let (seen, used) = decode_all(&mut decoder, &bytes);
        assert_eq!((seen.len(), used), (1, bytes.len()));
    }

    #[test]
    fn nothing_is_decoded_after_a_violation() {
        let mut bytes = masked(0xC1, b"x");
        bytes.extend(masked(0x81, b"ok"));
        let (seen, _) = decode_all(&mut Decoder::new(100), &bytes);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("Violation"));
    }
}

//! The close handshake (RFC 6455 §5.5.1, §7) of one connection, as one state machine.
//!
//! A close frame from the client is answered with the same code, then the connection is
//! closed. A close the server starts (protocol error, policy, shutdown, eviction, silence) is
//! sent after whatever is being written, and the connection is dropped once the client answers
//! or [`CLOSE_GRACE`] has passed. Either way the server closes the TCP connection first
//! (§7.1.1).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::close::CloseCode;
use crate::codec::ws::{self, OP_CLOSE};

/// How long a close may take before the connection is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where a connection is in closing.
#[derive(Debug)]
pub(super) enum Closing {
    /// Open both ways.
    Open,
    /// Our close frame waits behind what is being written.
    Queued {
        /// The code to send, or `None` for an empty close frame (the answer to one).
        frame_code: Option<CloseCode>,
        reason: Cow<'static, str>,
        code: CloseCode,
        deadline: Instant,
        /// The client closed too (or broke the protocol): read nothing more.
        peer_done: bool,
    },
    /// Our close frame is in the chunk being written.
    Writing { code: CloseCode, deadline: Instant, peer_done: bool },
    /// Our close frame is out; waiting for the client's.
    Sent { code: CloseCode, deadline: Instant },
    /// Done: the connection is to be shut down. `sent` is the code of the close frame we got
    /// out (at least in part), for metrics.
    Finished { sent: Option<CloseCode> },
}

impl Closing {
    /// Starts a close with `code`, unless one has started. `peer_done`: read nothing more (the
    /// client broke the protocol), whichever close goes out.
    pub(super) fn begin(
        &mut self,
        code: CloseCode,
        reason: impl Into<Cow<'static, str>>,
        peer_done: bool,
    ) {
        match self {
            Closing::Open => {
                let deadline = Instant::now() + CLOSE_GRACE;
                let frame_code = Some(code);
                let reason = reason.into();
                *self = Closing::Queued { frame_code, reason, code, deadline, peer_done };
            }
            Closing::Queued { peer_done: done, .. } | Closing::Writing { peer_done: done, .. } => {
                *done |= peer_done;
            }
            Closing::Sent { .. } if peer_done => self.finish(),
            Closing::Sent { .. } | Closing::Finished { .. } => {}
        }
    }

    /// The client sent a close frame, with `code` if it had one.
    pub(super) fn peer_closed(&mut self, code: Option<CloseCode>) {
        match self {
            // Answered with the same code, then the connection closes.
            Closing::Open => {
                let deadline = Instant::now() + CLOSE_GRACE;
                *self = Closing::Queued {
                    frame_code: code,
                    reason: Cow::Borrowed(""),
                    code: code.unwrap_or(CloseCode::NORMAL),
                    deadline,
                    peer_done: true,
                };
            }
            Closing::Queued { peer_done, .. } | Closing::Writing { peer_done, .. } => {
                *peer_done = true;
            }
            // The answer to our close: the handshake is complete.
            Closing::Sent { code, .. } => *self = Closing::Finished { sent: Some(*code) },
            Closing::Finished { .. } => {}
        }
    }

    /// The connection is gone (the client hung up, or a read or write failed), or the server
    /// drops it.
    pub(super) fn finish(&mut self) {
        let sent = self.sent();
        *self = Closing::Finished { sent };
    }

    /// Our close frame, to go into the next chunk, if it is due.
    pub(super) fn take_frame(&mut self) -> Option<Bytes> {
        match std::mem::replace(self, Closing::Open) {
            Closing::Queued { frame_code, reason, code, deadline, peer_done } => {
                *self = Closing::Writing { code, deadline, peer_done };
                Some(match frame_code {
                    Some(code) => ws::close(code.as_u16(), &reason),
                    None => ws::encode(OP_CLOSE, &[]),
                })
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// The chunk carrying our close frame is written.
    pub(super) fn frame_written(&mut self) {
        if let Closing::Writing { code, deadline, peer_done } = *self {
            *self = if peer_done {
                Closing::Finished { sent: Some(code) }
            } else {
                Closing::Sent { code, deadline }
            };
        }
    }

    /// Ends the close if its deadline has passed; returns the deadline still ahead, if any.
    pub(super) fn check_deadline(&mut self, now: Instant) -> Option<Instant> {
        let deadline = match self {
            Closing::Queued { deadline, .. }
            | Closing::Writing { deadline, .. }
            | Closing::Sent { deadline, .. } => *deadline,
            Closing::Open | Closing::Finished { .. } => return None,
        };
        if now >= deadline {
            self.finish();
            return None;
        }
        Some(deadline)
    }

    /// Whether the connection is open both ways: messages are handled and events sent.
    pub(super) fn is_open(&self) -> bool {
        matches!(self, Closing::Open)
    }

    /// Whether what the client sends is still read (and, once closing, dropped but for its
    /// close frame).
    pub(super) fn reads(&self) -> bool {
        match self {
            Closing::Open | Closing::Sent { .. } => true,
            Closing::Queued { peer_done, .. } | Closing::Writing { peer_done, .. } => !peer_done,
            Closing::Finished { .. } => false,
        }
    }

    /// Whether more may be written: not after our close frame.
    pub(super) fn writes(&self) -> bool {
        matches!(self, Closing::Open | Closing::Queued { .. })
    }

    /// Whether the connection is to be shut down.
    pub(super) fn is_finished(&self) -> bool {
        matches!(self, Closing::Finished { .. })
    }

    /// The code of the close frame we sent (or started sending).
    pub(super) fn sent(&self) -> Option<CloseCode> {
        match self {
            Closing::Writing { code, .. } | Closing::Sent { code, .. } => Some(*code),
            Closing::Finished { sent } => *sent,
            Closing::Open | Closing::Queued { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_close_is_answered_with_its_code_then_the_connection_ends() {
        let mut closing = Closing::Open;
        closing.peer_closed(Some(CloseCode::GOING_AWAY));
        assert!(!closing.reads() && closing.writes());
        assert_eq!(&closing.take_frame().unwrap()[..], b"\x88\x02\x03\xe9");
        assert_eq!(closing.sent(), Some(CloseCode::GOING_AWAY));
        closing.frame_written();
        assert!(closing.is_finished());
        assert_eq!(closing.sent(), Some(CloseCode::GOING_AWAY));
    }

    #[test]
    fn a_server_close_waits_for_the_answer_or_the_deadline() {
        let mut closing = Closing::Open;
        closing.begin(CloseCode::SLOW_CONSUMER, "slow consumer", false);
        closing.begin(CloseCode::POLICY, "later closes do not replace the first", false);
        assert!(!closing.is_open() && closing.reads());
        let frame = closing.take_frame().unwrap();
        assert_eq!(&frame[2..4], &4008u16.to_be_bytes());
        assert!(closing.take_frame().is_none(), "one close frame");
        closing.frame_written();
        assert!(closing.reads() && !closing.writes() && !closing.is_finished());
        closing.peer_closed(Some(CloseCode::NORMAL));
        assert!(closing.is_finished());
        assert_eq!(closing.sent(), Some(CloseCode::SLOW_CONSUMER));

        let mut silent = Closing::Open;
        silent.begin(CloseCode::HEARTBEAT_TIMEOUT, "no answer", false);
        let now = Instant::now();
        assert!(silent.check_deadline(now).is_some());
        assert!(silent.check_deadline(now + CLOSE_GRACE).is_none());
        assert!(silent.is_finished());
        assert_eq!(silent.sent(), None, "the close frame never left");
    }

    #[test]
    fn after_a_protocol_violation_nothing_more_is_read() {
        let mut closing = Closing::Open;
        closing.begin(CloseCode::PROTOCOL_ERROR, "bad frame", true);
        assert!(!closing.reads());
        closing.take_frame();
        closing.frame_written();
        assert!(closing.is_finished(), "the client is not waited for");
    }
}

//! WebSocket close codes: the ones crier sends, what each means, and which a peer may send.

use std::fmt;

/// A close code (RFC 6455 §7.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CloseCode(u16);

impl CloseCode {
    /// 1000: the client or the server finished normally.
    pub(crate) const NORMAL: Self = CloseCode(1000);
    /// 1001: the server is shutting down.
    pub(crate) const GOING_AWAY: Self = CloseCode(1001);
    /// 1002: the peer broke the protocol (bad framing, unmasked frame, reserved bits…).
    pub(crate) const PROTOCOL_ERROR: Self = CloseCode(1002);
    /// 1007: a text message or close reason was not UTF-8.
    pub(crate) const INVALID_PAYLOAD: Self = CloseCode(1007);
    /// 1008: policy: the client kept sending commands over its rate limit, or (on a
    /// `format=raw` stream, which has no replies) a command was refused.
    pub(crate) const POLICY: Self = CloseCode(1008);
    /// 1009: a message over `--max-message-bytes`.
    pub(crate) const MESSAGE_TOO_BIG: Self = CloseCode(1009);
    /// 1013: try again later: a command on a `format=raw` stream that the server could not
    /// carry out for now (Redis unreachable, the node's topic limit).
    pub(crate) const TRY_AGAIN_LATER: Self = CloseCode(1013);
    /// 4000: the peer answered nothing (not even a pong) for two heartbeat intervals.
    pub(crate) const HEARTBEAT_TIMEOUT: Self = CloseCode(4000);
    /// 4001: the token the connection was opened or last authenticated with expired, and no
    /// `auth` command brought a fresh one in time. Reconnect with a fresh token.
    pub(crate) const TOKEN_EXPIRED: Self = CloseCode(4001);
    /// 4008: slow consumer: the client fell further behind than `--max-lag-bytes` or the
    /// topic's log allow, and was evicted. It may reconnect and resume.
    pub(crate) const SLOW_CONSUMER: Self = CloseCode(4008);
    /// 4010: a gap on a `format=raw` stream, which has no frame for the `crier.gap` notice:
    /// the reason is the gap as JSON, with the position to resume after.
    pub(crate) const GAP: Self = CloseCode(4010);

    /// The code with this number, if it is in the range codes are drawn from (1000–4999).
    pub(crate) fn from_u16(code: u16) -> Option<Self> {
        (1000..=4999).contains(&code).then_some(CloseCode(code))
    }

    /// The number.
    pub(crate) fn as_u16(self) -> u16 {
        self.0
    }

    /// Whether a peer may put this code in a close frame: the defined codes except those
    /// reserved for reporting (1005, 1006, 1015) and the unassigned 1004, 1016–2999.
    pub(crate) fn may_be_sent_by_peer(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

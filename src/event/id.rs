//! Event ids and resume positions: epoch-carrying ids (`<epoch>-<seq>`), the cursor a stream of
//! several topics sends, and what a resume lost when it could not start exactly.

use std::fmt;
use std::str::FromStr;

/// Identifies one incarnation of a topic's history. A single node draws a fresh epoch at start,
/// so ids issued before a restart (whose history is gone) are never taken for new ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Epoch(u64);

/// Epochs are at most 40 bits so an id stays short (8 base-36 digits).
const EPOCH_BITS: u32 = 40;

/// Most base-36 digits of a `u64`.
const MAX_BASE36_DIGITS: usize = 13;

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
        let mut digits = [0u8; MAX_BASE36_DIGITS];
        f.write_str(encode_base36(self.0, &mut digits))
    }
}

const BASE36_DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Every pair of base-36 digits, `00` to `zz`: an id is written two digits per division.
const BASE36_PAIRS: [[u8; 2]; 36 * 36] = {
    let mut pairs = [[0; 2]; 36 * 36];
    let mut i = 0;
    while i < pairs.len() {
        pairs[i] = [BASE36_DIGITS[i / 36], BASE36_DIGITS[i % 36]];
        i += 1;
    }
    pairs
};

/// Writes `value` in lowercase base 36 at the end of `buf`; returns the digits.
fn base36(mut value: u64, buf: &mut [u8; MAX_BASE36_DIGITS]) -> &[u8] {
    let mut start = buf.len();
    while value >= 36 {
        start -= 2;
        buf[start..start + 2].copy_from_slice(&BASE36_PAIRS[(value % (36 * 36)) as usize]);
        value /= 36 * 36;
    }
    if value > 0 || start == buf.len() {
        start -= 1;
        buf[start] = BASE36_DIGITS[value as usize];
    }
    &buf[start..]
}

fn encode_base36(value: u64, buf: &mut [u8; MAX_BASE36_DIGITS]) -> &str {
    std::str::from_utf8(base36(value, buf)).expect("base-36 digits are ASCII")
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
pub(crate) const MAX_EVENT_ID_LEN: usize = 8 + 1 + 20;

impl EventId {
    /// Writes the id into `buf` and returns the written part.
    pub fn encode<'a>(&self, buf: &'a mut [u8; MAX_EVENT_ID_LEN]) -> &'a [u8] {
        let mut epoch = [0u8; MAX_BASE36_DIGITS];
        let epoch = base36(self.epoch.0, &mut epoch);
        let mut seq = itoa::Buffer::new();
        let seq = seq.format(self.seq).as_bytes();
        let len = epoch.len() + 1 + seq.len();
        buf[..epoch.len()].copy_from_slice(epoch);
        buf[epoch.len()] = b'-';
        buf[epoch.len() + 1..len].copy_from_slice(seq);
        &buf[..len]
    }

    /// Appends the id to `out`, as [`encode`](Self::encode) writes it.
    pub(crate) fn push_to(&self, out: &mut String) {
        let mut buf = [0u8; MAX_EVENT_ID_LEN];
        // Base 36 digits, a dash and decimal digits: ASCII.
        out.push_str(std::str::from_utf8(self.encode(&mut buf)).unwrap_or_default());
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
    /// Parses a cursor for a stream of `topics` topics: a plain event id for one topic.
    pub fn parse(s: &str, topics: usize) -> Result<Self, IdError> {
        let ids = s.split(',').map(str::parse).collect::<Result<Vec<EventId>, _>>()?;
        if ids.len() != topics {
            return Err(IdError::TopicCount { found: ids.len(), expected: topics });
        }
        Ok(Cursor(ids))
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
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// Why a resume is not exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapReason {
    /// The events after the requested id are no longer retained.
    Expired,
    /// The id is from another epoch: the server restarted or the topic's history was lost.
    Epoch,
    /// The id is newer than anything this topic has issued.
    Unknown,
}

impl GapReason {
    /// The name used in `crier.gap` events.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::Epoch => "epoch",
            GapReason::Unknown => "unknown",
        }
    }
}

/// What a reader lost on one topic: it asked to continue after `requested`, and continues after
/// `resumed_after` instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// Why.
    pub(crate) reason: GapReason,
    /// The id the reader asked to continue after.
    pub(crate) requested: EventId,
    /// How many events were lost, when known.
    pub(crate) missed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_foreign_text() {
        let id = EventId { epoch: Epoch::from_u64(123_456_789).unwrap(), seq: 42 };
        let text = id.to_string();
        assert_eq!(text, "21i3v9-42");
        assert_eq!(text.parse::<EventId>(), Ok(id));
        let max = EventId { epoch: Epoch::from_u64((1 << 40) - 1).unwrap(), seq: u64::MAX };
        assert_eq!(max.to_string().len(), MAX_EVENT_ID_LEN);
        assert_eq!(max.to_string().parse::<EventId>(), Ok(max));
        let mut buf = [0u8; MAX_EVENT_ID_LEN];
        assert_eq!(max.encode(&mut buf), max.to_string().as_bytes());
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
    fn base36_matches_a_digit_by_digit_encoder() {
        let naive = |mut value: u64| {
            let mut digits = Vec::new();
            loop {
                digits.push(BASE36_DIGITS[(value % 36) as usize]);
                value /= 36;
                if value == 0 {
                    return String::from_utf8(digits.into_iter().rev().collect()).unwrap();
                }
            }
        };
        let mut rng = fastrand::Rng::with_seed(36);
        let edges = [0, 1, 35, 36, 1295, 1296, 46_655, 46_656, (1 << 40) - 1, u64::MAX];
        for value in edges.into_iter().chain((0..10_000).map(|_| rng.u64(..) >> rng.u32(0..64))) {
            let mut buf = [0u8; MAX_BASE36_DIGITS];
            assert_eq!(encode_base36(value, &mut buf), naive(value), "{value}");
        }
    }

    #[test]
    fn cursors_hold_one_position_per_topic() {
        let c = Cursor::parse("a-1,b-0", 2).unwrap();
        assert_eq!(c.to_string(), "a-1,b-0");
        let mut out = Vec::new();
        Cursor::write_positions(&c.0, &mut out);
        assert_eq!(out, b"a-1,b-0");
        assert_eq!(Cursor::parse("a-1", 2), Err(IdError::TopicCount { found: 1, expected: 2 }));
        assert!(Cursor::parse("a-1,", 2).is_err());
    }
}

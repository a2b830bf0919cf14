//! Topic and event names: 1–200 bytes of `A-Z a-z 0-9 _ - . : /`, checked once when a name is
//! made, so every later use (keys in Redis, `event:` lines, JSON) needs no escaping.

use std::fmt;
use std::sync::Arc;

/// Longest topic or event name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 200;

/// Event names starting with this prefix are reserved for events crier emits itself
/// (`crier.gap`), so a subscriber can trust them.
pub(crate) const RESERVED_EVENT_PREFIX: &str = "crier.";

/// The name of the notice a stream gets when it could not resume exactly.
const GAP_EVENT: &str = "crier.gap";

/// What the names of the server's own logs start with: `~` is outside the alphabet of topic
/// names, so no client can name one (an edge's log may hold what only that edge may show).
const INTERNAL_PREFIX: char = '~';

/// Why a topic or event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than 200 bytes (`MAX_NAME_LEN`).
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a byte outside `A-Z a-z 0-9 _ - . : /`.
    #[error("contains {byte:?} at byte {index}; allowed are A-Z a-z 0-9 _ - . : /")]
    BadByte {
        /// The first offending character.
        byte: char,
        /// Its byte offset.
        index: usize,
    },
    /// The event name uses the `crier.` prefix, which is reserved for server events.
    #[error("the prefix \"crier.\" is reserved for events crier emits")]
    Reserved,
}

fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/');
    match name.bytes().position(|b| !allowed(b)) {
        None => Ok(()),
        Some(index) => {
            // `index` is the first byte outside an ASCII alphabet, so it starts a character.
            let byte =
                name[index..].chars().next().expect("a character starts at a non-ASCII byte");
            Err(NameError::BadByte { byte, index })
        }
    }
}

/// A topic name: 1–200 bytes of `A-Z a-z 0-9 _ - . : /`.
///
/// Cheap to clone (a shared string); ordered so a stream's topics have one canonical order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `name` as a topic name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(TopicName(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of one of the server's own logs: `~` then `name` (itself a valid topic name),
    /// which no client can give. Such a log is stored and relayed like any topic.
    pub(crate) fn internal(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(TopicName(Arc::from(format!("{INTERNAL_PREFIX}{name}"))))
    }

    /// A topic name read back from the node's own storage (Redis): a client's topic name, or
    /// an internal log's.
    pub(crate) fn stored(name: &str) -> Result<Self, NameError> {
        match name.strip_prefix(INTERNAL_PREFIX) {
            Some(internal) => Self::internal(internal),
            None => Self::new(name),
        }
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An event name (the SSE `event:` field): same alphabet and length as a topic name, and not
/// starting with the reserved `crier.` prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// Validates `name` as the name of a published event.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        if name.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(NameError::Reserved);
        }
        Ok(EventName(Arc::from(name)))
    }

    /// `crier.gap`, the name of the notice a stream gets when it could not resume exactly.
    pub(crate) fn gap() -> Self {
        EventName(Arc::from(GAP_EVENT))
    }

    /// Whether this is the name of the `crier.gap` notice (no publisher may use it).
    pub(crate) fn is_gap(&self) -> bool {
        &*self.0 == GAP_EVENT
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_contract() {
        assert!(TopicName::new("a").is_ok());
        assert!(TopicName::new("news/sport:eu-1_2.x").is_ok());
        assert!(TopicName::new(&"x".repeat(200)).is_ok());
        assert_eq!(TopicName::new(""), Err(NameError::Empty));
        assert_eq!(
            TopicName::new(&"x".repeat(201)),
            Err(NameError::TooLong { len: 201, max: 200 })
        );
        assert_eq!(TopicName::new("a b"), Err(NameError::BadByte { byte: ' ', index: 1 }));
        assert_eq!(TopicName::new("añ"), Err(NameError::BadByte { byte: 'ñ', index: 1 }));
        assert!(TopicName::new("a\nb").is_err());
        let log = TopicName::internal("log").unwrap();
        assert_eq!(log.as_str(), "~log");
        assert!(TopicName::new(log.as_str()).is_err(), "no client may name an internal log");
        assert_eq!(TopicName::stored("~log"), Ok(log));
        assert!(TopicName::stored("~a b").is_err());
        assert_eq!(TopicName::stored("a").unwrap().as_str(), "a");
    }

    #[test]
    fn event_names_reserve_the_crier_prefix() {
        assert!(EventName::new("price.update").is_ok());
        assert_eq!(EventName::new("crier.gap"), Err(NameError::Reserved));
        assert!(EventName::new("crier").is_ok());
        assert_eq!(EventName::gap().as_str(), "crier.gap");
        assert!(EventName::gap().is_gap());
        assert!(!EventName::new("crier-gap").unwrap().is_gap());
    }
}

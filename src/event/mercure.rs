//! A Mercure update as a subscriber's writer sees it: what decides who receives it (its
//! topics, whether it is private) and the id a Mercure client resumes by. Read once, when the
//! update is appended to the Mercure log, and shared by every reader.

use std::sync::atomic::{AtomicU64, Ordering};

/// The routing part of a Mercure update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MercureUpdate {
    /// Unique in the process, never reused: what a selector remembers its last answer by.
    pub serial: u64,
    /// The update's id: the publisher's, or the one the hub drew.
    pub id: Box<str>,
    /// Its topics, canonical first.
    pub topics: Box<[Box<str>]>,
    /// Only subscribers whose `mercure.subscribe` claim matches one of its topics receive it.
    pub private: bool,
}

/// The next update's serial.
static SERIALS: AtomicU64 = AtomicU64::new(1);

impl MercureUpdate {
    /// A serial no other update of this process has.
    pub fn next_serial() -> u64 {
        SERIALS.fetch_add(1, Ordering::Relaxed)
    }
}

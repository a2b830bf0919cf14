//! Event ids and cursors from clients (Last-Event-ID): parsing never panics, and whatever
//! parses prints back as the same text, so a resume position is never misread.

#![no_main]

use crier::internals::{Cursor, EventId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u8)| {
    let (text, topics) = input;
    if let Ok(id) = text.parse::<EventId>() {
        assert_eq!(id.to_string(), text);
    }
    if let Ok(cursor) = Cursor::parse(text, usize::from(topics % 8) + 1) {
        assert_eq!(cursor.to_string(), text);
        assert_eq!(cursor.0.len(), usize::from(topics % 8) + 1);
    }
});

//! Any event crier can publish, SSE-encoded and read back by an independent WHATWG parser, is
//! the same event: name, id, and data (text with line breaks as LF; binary via base64); and each
//! of its WebSocket frames is as long as was known before it was encoded.

#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use crier::internals::{Epoch, EventData, EventId, EventName};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/whatwg.rs"]
mod whatwg;

#[derive(Arbitrary, Debug)]
struct Input {
    name: Option<String>,
    binary: bool,
    data: Vec<u8>,
    epoch: u64,
    seq: u64,
    /// Where the stream is split between two reads.
    split: usize,
}

fuzz_target!(|input: Input| {
    let name = input.name.as_deref().and_then(|n| EventName::new(n).ok());
    let data = if input.binary {
        EventData::Binary(input.data.clone().into())
    } else {
        match EventData::text(input.data.clone().into()) {
            Ok(text) => text,
            Err(_) => return,
        }
    };
    let epoch = Epoch::from_u64(input.epoch % ((1 << 40) - 1) + 1).expect("in range");
    let id = EventId { epoch, seq: input.seq };
    let frame = crier::internals::encode_event(id, name.as_ref(), &data);
    // The same event in every wire format: each frame as long as was known before encoding it.
    crier::internals::fuzzing::check_event_frames(
        "t",
        name.as_ref().map(|n| n.as_str()),
        data.clone(),
        input.seq,
    );

    let mut parser = whatwg::Parser::new();
    let split = input.split % (frame.len() + 1);
    let mut events = parser.feed(&frame[..split]);
    events.extend(parser.feed(&frame[split..]));
    assert_eq!(events.len(), 1, "one frame, one event: {:?}", String::from_utf8_lossy(&frame));
    let event = &events[0];
    assert_eq!(event.kind, name.as_ref().map_or("message", |n| n.as_str()));
    assert_eq!(event.last_event_id, id.to_string());
    if input.binary {
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(&event.data).expect("base64");
        assert_eq!(decoded, input.data);
    } else {
        let text = std::str::from_utf8(&input.data).expect("checked above");
        assert_eq!(event.data, whatwg::normalize_line_breaks(text));
    }
});

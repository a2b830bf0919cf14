//! Arbitrary bytes from a WebSocket client, arriving in arbitrary reads: decoding never panics,
//! never holds more than one frame or a message over the limit, and yields only valid text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u16>, u16, &[u8])| {
    let (cuts, max, bytes) = input;
    crier::internals::fuzzing::check_ws_decoder(bytes, &cuts, usize::from(max) + 1);
});

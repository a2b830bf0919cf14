//! Mercure topic selectors (URI templates) from subscribers and log records from Redis:
//! compiling, matching and decoding never panic, and the answers follow the selectors' rules.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &[u8])| {
    let (selector, topic, record) = input;
    crier::internals::fuzzing::check_mercure(selector, topic, record);
});

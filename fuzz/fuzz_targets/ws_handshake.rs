//! Arbitrary handshake requests (method, version, header set, allowed origins): validation
//! never panics, and accepts only a complete RFC 6455 handshake with a 16-byte key.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, bool, Vec<(String, Vec<u8>)>, Vec<String>)| {
    let (post, http10, headers, origins) = input;
    crier::internals::fuzzing::check_ws_handshake(post, http10, &headers, &origins);
});

//! The first bytes of a connection, as any client may send them: classifying them never
//! panics, only a complete HTTP/1.1 `GET /sse` without a body takes the SSE fast path, and only
//! an HTTP/1.1 `POST /publish` with a body of known length the publish fast path.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    crier::internals::fuzzing::check_first_request(bytes);
});

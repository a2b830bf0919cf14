//! Property tests: any event crier encodes, read back by an independent WHATWG-conformant
//! parser, is exactly the published event (text line breaks arrive as LF, as the SSE format
//! defines; binary data arrives base64-encoded).

mod support;

use base64::Engine as _;
use bytes::Bytes;
use crier::internals::{Epoch, EventData, EventId, EventName, encode_event};
use proptest::prelude::*;
use support::whatwg;

fn name_strategy() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(
        "[A-Za-z0-9_.:/-]{1,40}".prop_filter("reserved prefix", |n| !n.starts_with("crier.")),
    )
}

/// Text with line breaks of every kind sprinkled in, plus arbitrary Unicode.
fn text_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => "[^\r\n]{0,12}",
            1 => Just("\n".to_owned()),
            1 => Just("\r".to_owned()),
            1 => Just("\r\n".to_owned()),
            1 => Just(" ".to_owned()),
            1 => Just(":".to_owned()),
            1 => Just("data: ".to_owned()),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

#[derive(Debug, Clone)]
enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

fn payload_strategy() -> impl Strategy<Value = Payload> {
    prop_oneof![
        3 => text_strategy().prop_map(Payload::Text),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Payload::Binary),
    ]
}

fn check(parsed: &whatwg::Event, name: Option<&str>, payload: &Payload, id: &str) {
    assert_eq!(parsed.kind, name.unwrap_or("message"));
    assert_eq!(parsed.last_event_id, id);
    match payload {
        Payload::Text(text) => assert_eq!(parsed.data, whatwg::normalize_line_breaks(text)),
        Payload::Binary(bytes) => {
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(&parsed.data).expect("base64");
            assert_eq!(&decoded, bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encoder_output_parses_back_to_the_event(name in name_strategy(), payload in payload_strategy(), seq in any::<u64>(), epoch in 1u64..(1 << 40)) {
        let id = EventId { epoch: Epoch::from_u64(epoch).unwrap(), seq };
        let event_name = name.as_deref().map(|n| EventName::new(n).unwrap());
        let data = match &payload {
            Payload::Text(t) => EventData::from(t.clone()),
            Payload::Binary(b) => EventData::Binary(Bytes::from(b.clone())),
        };
        let frame = encode_event(id, event_name.as_ref(), &data);
        // Fed in two arbitrary pieces, as a socket might deliver it.
        let mut parser = whatwg::Parser::new();
        let split = frame.len() / 3;
        let mut events = parser.feed(&frame[..split]);
        events.extend(parser.feed(&frame[split..]));
        prop_assert_eq!(events.len(), 1, "frame {:?}", String::from_utf8_lossy(&frame));
        check(&events[0], name.as_deref(), &payload, &id.to_string());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn events_over_a_real_socket_arrive_exactly(events in proptest::collection::vec((name_strategy(), payload_strategy()), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let server = support::TestServer::start(&[]).await;
            let mut client = support::SseClient::connect(server.addr, "/sse?topic=prop", &[]).await;
            let mut ids = Vec::new();
            for (name, payload) in &events {
                let (body, content_type) = match payload {
                    Payload::Text(t) => (t.as_bytes().to_vec(), None),
                    Payload::Binary(b) => (b.clone(), Some("application/octet-stream")),
                };
                ids.push(support::publish_ok(server.addr, "prop", name.as_deref(), &body, content_type).await);
            }
            let received = client.events(events.len()).await;
            for ((parsed, (name, payload)), id) in received.iter().zip(&events).zip(&ids) {
                check(parsed, name.as_deref(), payload, id);
            }
        });
    }
}

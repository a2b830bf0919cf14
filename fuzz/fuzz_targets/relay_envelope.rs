//! Relay envelopes from Redis: arbitrary bytes never panic the decoder, whatever decodes
//! encodes back to the same bytes (one envelope, one reading), and every event survives the
//! trip through the envelope unchanged.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use crier::internals::{Epoch, EventData, EventId, EventName, TopicName};
use crier::internals::envelope;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    topic: &'a str,
    name: Option<&'a str>,
    data: &'a [u8],
    binary: bool,
    epoch: u64,
    seq: u64,
}

fuzz_target!(|input: Input<'_>| {
    let raw = Bytes::copy_from_slice(input.raw);
    if let Ok(decoded) = envelope::decode(&raw) {
        let again =
            envelope::encode(&decoded.topic, decoded.id, decoded.name.as_ref(), &decoded.data);
        assert_eq!(again, input.raw);
    }

    let (Ok(topic), Some(epoch)) = (TopicName::new(input.topic), Epoch::from_u64(input.epoch))
    else {
        return;
    };
    let Ok(name) = input.name.map(EventName::new).transpose() else { return };
    let data = Bytes::copy_from_slice(input.data);
    let data = if input.binary {
        EventData::Binary(data)
    } else {
        match EventData::text(data) {
            Ok(text) => text,
            Err(_) => return,
        }
    };
    let id = EventId { epoch, seq: input.seq.max(1) };
    let bytes = Bytes::from(envelope::encode(&topic, id, name.as_ref(), &data));
    let decoded = envelope::decode(&bytes).expect("an encoded envelope decodes");
    assert_eq!(decoded, envelope::Envelope { topic, id, name, data });
});

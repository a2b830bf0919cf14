//! Event encoding, the once-per-event cost of a publish: the SSE frame alone, and what a publish
//! does (the SSE frame and the length of each WebSocket frame, so lag is counted per format).

use bytes::Bytes;
use crier::internals::{
    Epoch, EventData, EventId, EventName, TopicName, encode_event, encode_frames,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn payloads() -> Vec<(&'static str, EventData)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut text = |len: usize, line: usize| {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push(if s.len() % line == line - 1 { '\n' } else { rng.alphanumeric() });
        }
        EventData::from(s)
    };
    vec![
        ("text_100B_one_line", text(100, usize::MAX)),
        ("text_1KiB_lines_of_64", text(1024, 64)),
        ("text_64KiB_one_line", text(64 << 10, usize::MAX)),
        ("text_64KiB_lines_of_80", text(64 << 10, 80)),
        (
            "binary_1KiB",
            EventData::Binary(Bytes::from((0..1024).map(|i| i as u8).collect::<Vec<_>>())),
        ),
    ]
}

fn sse_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_frame");
    let id = EventId { epoch: Epoch::from_u64(0xab_cdef_1234).expect("epoch"), seq: 123_456 };
    let name = EventName::new("price.update").expect("name");
    for (label, data) in payloads() {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &data, |b, data| {
            b.iter(|| encode_event(id, Some(&name), std::hint::black_box(data)))
        });
    }
    group.finish();
}

fn publish_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_frames");
    let id = EventId { epoch: Epoch::from_u64(0xab_cdef_1234).expect("epoch"), seq: 123_456 };
    let name = EventName::new("price.update").expect("name");
    let topic = TopicName::new("prices/eu").expect("topic");
    for (label, data) in payloads() {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &data, |b, data| {
            b.iter(|| encode_frames(&topic, id, Some(&name), std::hint::black_box(data)))
        });
    }
    group.finish();
}

criterion_group!(benches, sse_frame, publish_frames);
criterion_main!(benches);

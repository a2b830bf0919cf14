//! Registry benchmarks: the publish path (id, frame, history, fan-out into every subscriber's
//! queue) with 1k and 10k in-process subscribers, and publish throughput while other threads
//! subscribe and unsubscribe 10k times per second on the same topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crier::event::{EventData, TopicName};
use crier::hub::{Hub, HubConfig, Subscription};
use crier::metrics::{Metrics, Transport};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn hub() -> Hub {
    let config = HubConfig { client_queue_bytes: 1 << 30, history: 1000, ..HubConfig::default() };
    Hub::new(config, Arc::new(Metrics::new()))
}

fn data() -> EventData {
    EventData::Text(Bytes::from(vec![b'x'; 100]))
}

/// Empties every subscriber's queue, as their writers would.
fn drain(subscriptions: &mut [Subscription]) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut drained = std::collections::VecDeque::new();
    for s in subscriptions.iter_mut() {
        if s.poll_drain(&mut cx, &mut drained).is_ready() {
            let bytes = drained.iter().map(|d| d.event.sse_frame().len()).sum();
            let used = drained.len();
            s.queue().recycle(std::mem::take(&mut drained), used);
            s.queue().release(bytes);
        }
    }
}

fn publish_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_fan_out");
    group.measurement_time(Duration::from_secs(5));
    for subscribers in [1_000usize, 10_000] {
        let hub = hub();
        let topic = TopicName::new("bench").unwrap();
        let mut subscriptions: Vec<_> = (0..subscribers)
            .map(|_| hub.subscribe(vec![topic.clone()], None, Transport::Sse, None).unwrap())
            .collect();
        // Throughput in deliveries: one event reaching every subscriber's queue.
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(BenchmarkId::from_parameter(subscribers), &subscribers, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    // Publish in runs of 16 (writers drain between runs, outside the timing).
                    let run = (iters - done).min(16);
                    let started = Instant::now();
                    for _ in 0..run {
                        hub.publish_now(&topic, None, data()).unwrap();
                    }
                    total += started.elapsed();
                    done += run;
                    drain(&mut subscriptions);
                }
                total
            })
        });
    }
    group.finish();
}

fn publish_under_churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_under_churn");
    group.measurement_time(Duration::from_secs(5));
    let subscribers = 1_000;
    group.throughput(Throughput::Elements(subscribers as u64));
    for churn in [false, true] {
        let hub = Arc::new(hub());
        let topic = TopicName::new("bench").unwrap();
        let mut subscriptions: Vec<_> = (0..subscribers)
            .map(|_| hub.subscribe(vec![topic.clone()], None, Transport::Sse, None).unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let churned = Arc::new(AtomicU64::new(0));
        // 10k subscribe + unsubscribe pairs per second on the published topic.
        let churner = churn.then(|| {
            let (hub, topic, stop, churned) =
                (hub.clone(), topic.clone(), stop.clone(), churned.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let due = Duration::from_micros(100) * churned.load(Ordering::Relaxed) as u32;
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let s = hub.subscribe(vec![topic.clone()], None, Transport::Sse, None).unwrap();
                    drop(s);
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let name = if churn { "10k_subscribes_per_s" } else { "no_churn" };
        group.bench_function(BenchmarkId::new(name, subscribers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let run = (iters - done).min(16);
                    let started = Instant::now();
                    for _ in 0..run {
                        hub.publish_now(&topic, None, data()).unwrap();
                    }
                    total += started.elapsed();
                    done += run;
                    drain(&mut subscriptions);
                }
                total
            })
        });
        stop.store(true, Ordering::Relaxed);
        if let Some(churner) = churner {
            churner.join().unwrap();
            let _ = churned.load(Ordering::Relaxed);
        }
    }
    group.finish();
}

criterion_group!(benches, publish_fan_out, publish_under_churn);
criterion_main!(benches);

//! Registry benchmarks with 1k and 10k in-process subscribers: the whole fan-out (publish, then
//! every subscriber's writer taking the event into its write buffer, as the SSE writer does),
//! the publish call alone, and publish throughput while another thread subscribes and
//! unsubscribes 10k times per second on the same topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use crier::internals::{
    EventData, Hub, HubConfig, Metrics, Subscription, SubscriptionRequest, TopicName, Wire,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt as _;

fn hub() -> Hub {
    let config = HubConfig { max_lag_bytes: 1 << 30, history: 1000, ..HubConfig::default() };
    Hub::local(config, Arc::new(Metrics::new()))
}

fn data() -> EventData {
    EventData::from("x".repeat(100))
}

/// Publishes on a single node, where a publish completes at once.
fn publish(hub: &Hub, topic: &TopicName) {
    let published = hub.publish(topic, None, data()).now_or_never();
    published.expect("a local publish is immediate").expect("within limits");
}

/// Subscribes on a single node, where it completes at once.
fn subscribe(hub: &Hub, topic: &TopicName) -> Subscription {
    let request = SubscriptionRequest::new(vec![topic.clone()], None, Wire::Sse);
    let subscription = hub.subscribe(request).now_or_never();
    subscription.expect("a local subscribe is immediate").expect("subscribed")
}

/// Lets every subscriber's writer take what was published, copying frames into a buffer as
/// the SSE writer does for small events.
fn drain(subscriptions: &mut [Subscription], buf: &mut Vec<u8>) {
    let mut cx = Context::from_waker(Waker::noop());
    for s in subscriptions.iter_mut() {
        let _ = s
            .poll_events(&mut cx, usize::MAX, |_, event| buf.extend_from_slice(event.frames.sse()));
        buf.clear();
    }
}

/// Times `iters` publish calls alone, in runs of `run` between which (untimed) every
/// subscriber's writer takes what was published.
fn time_publishes(
    hub: &Hub,
    topic: &TopicName,
    subscriptions: &mut [Subscription],
    iters: u64,
    run: u64,
) -> Duration {
    let mut buf = Vec::with_capacity(64 << 10);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let this_run = (iters - done).min(run);
        let started = Instant::now();
        for _ in 0..this_run {
            publish(hub, topic);
        }
        total += started.elapsed();
        done += this_run;
        drain(subscriptions, &mut buf);
    }
    total
}

fn publish_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    group.measurement_time(Duration::from_secs(5));
    let mut buf = Vec::with_capacity(64 << 10);
    for subscribers in [1_000usize, 10_000] {
        let hub = hub();
        let topic = TopicName::new("bench").unwrap();
        let mut subscriptions: Vec<_> = (0..subscribers).map(|_| subscribe(&hub, &topic)).collect();
        // Throughput in deliveries: one event reaching every subscriber's write buffer.
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("publish_and_take", subscribers),
            &subscribers,
            |b, _| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    let mut done = 0;
                    while done < iters {
                        // Writers wake for runs of 16 events, as under load.
                        let run = (iters - done).min(16);
                        for _ in 0..run {
                            publish(&hub, &topic);
                        }
                        drain(&mut subscriptions, &mut buf);
                        done += run;
                    }
                    started.elapsed()
                })
            },
        );
        // The publish call alone, with every writer busy (none parked).
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("publish_only", subscribers),
            &subscribers,
            |b, _| {
                b.iter_custom(|iters| time_publishes(&hub, &topic, &mut subscriptions, iters, 256))
            },
        );
    }
    group.finish();
}

fn publish_under_churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_under_churn");
    group.measurement_time(Duration::from_secs(5));
    let subscribers = 1_000;
    for churn in [false, true] {
        let hub = Arc::new(hub());
        let topic = TopicName::new("bench").unwrap();
        let mut subscriptions: Vec<_> = (0..subscribers).map(|_| subscribe(&hub, &topic)).collect();
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
                    let s = subscribe(&hub, &topic);
                    drop(s);
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        let name = if churn { "10k_subscribes_per_s" } else { "no_churn" };
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new(name, subscribers), |b| {
            b.iter_custom(|iters| time_publishes(&hub, &topic, &mut subscriptions, iters, 16))
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

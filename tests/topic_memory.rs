//! What an idle empty topic costs while it lives: every heap allocation is counted (rounded up
//! to the chunk glibc's malloc hands out for it), before and after 100,000 topics are
//! subscribed to once and left.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use crier::internals::{Hub, HubConfig, Metrics, SubscriptionRequest, TopicName, Wire};
use futures_util::FutureExt as _;

/// Counts the bytes of live allocations, as malloc chunks: the request plus an 8-byte header,
/// rounded up to 16, at least 32.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(chunk(new_size) - chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes once memory freed by epochs (subscriber entries, arrays) is reclaimed.
fn live() -> isize {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
    LIVE.load(Ordering::Relaxed)
}

fn touch(hub: &Hub, name: &str) {
    let topics = vec![TopicName::new(name).expect("a valid name")];
    let subscription = hub
        .subscribe(SubscriptionRequest::new(topics, None, Wire::Sse))
        .now_or_never()
        .expect("a single node subscribes at once")
        .expect("subscribed");
    drop(subscription);
}

#[test]
fn an_idle_empty_topic_costs_at_most_256_bytes_besides_its_name() {
    let config = HubConfig { topic_idle_ttl: Duration::from_secs(3600), ..HubConfig::default() };
    let hub = Hub::local(config, Arc::new(Metrics::new()));
    // Warm up the tables and lists past their first growth steps.
    for i in 0..1000 {
        touch(&hub, &format!("warm-{i:010}"));
    }
    hub.sweep();
    const TOPICS: usize = 100_000;
    let before = live();
    for i in 0..TOPICS {
        touch(&hub, &format!("topic-{i:010}"));
    }
    // The sweep settles topics that lost their subscribers into the idle queue.
    hub.sweep();
    let per_topic = (live() - before) as f64 / TOPICS as f64;
    // The name: a shared string of 16 bytes behind a 16-byte header.
    let name = chunk(16 + 16) as f64;
    eprintln!("an idle empty topic: {per_topic:.0} bytes, of which {name} for its name");
    assert!(per_topic - name <= 256.0, "{per_topic:.0} bytes per idle topic");
    assert_eq!(hub.head("topic-0000000000").map(|id| id.seq), Some(0), "still held");
}

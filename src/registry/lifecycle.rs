//! How long topics live. A topic is *active* while it has subscribers, and the sweeper visits
//! only active topics (their subscribers can lag), so its cost follows subscriptions, not the
//! number of topics. A topic without subscribers waits in the *idle* queue, ordered by when it
//! may be dropped: once it has had no subscriber and no event for the idle time-to-live, it is
//! removed from the registry with its log (and a later topic of the same name starts a new
//! epoch).
//!
//! Each topic is in the active set or in the idle queue (at most once: its flags say where),
//! or about to move: a topic gaining its first subscriber adds itself to the active set; the
//! sweeper moves topics that lost their last one to the idle queue, and drops those whose time
//! has come. Every move re-checks what it decided on after publishing its flag, so a racing
//! subscribe or publish is never lost (see [`super::Topic::reap_if_idle`]).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::topic::Topic;

/// The registry's clock and its two lists of topics.
pub(crate) struct Lifecycle {
    started: Instant,
    /// Milliseconds since `started`, as of the last sweep: what publishes and unsubscribes
    /// stamp a topic with, without reading the clock themselves.
    now_ms: AtomicU64,
    idle_ttl_ms: u64,
    lists: Mutex<Lists>,
}

#[derive(Default)]
struct Lists {
    /// Topics with subscribers, by address.
    active: HashMap<usize, Arc<Topic>>,
    /// Topics without, soonest deadline first.
    idle: BinaryHeap<Idle>,
}

/// A topic in the idle queue, and when it may be dropped.
struct Idle {
    deadline_ms: u64,
    topic: Arc<Topic>,
}

impl Lifecycle {
    /// Topics idle for `idle_ttl` are dropped.
    pub(crate) fn new(idle_ttl: Duration) -> Self {
        Lifecycle {
            started: Instant::now(),
            now_ms: AtomicU64::new(0),
            idle_ttl_ms: u64::try_from(idle_ttl.as_millis()).unwrap_or(u64::MAX),
            lists: Mutex::new(Lists::default()),
        }
    }

    /// The time as of the last [`Lifecycle::tick`], in milliseconds.
    pub(crate) fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// Reads the clock.
    pub(crate) fn tick(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.store(now, Ordering::Relaxed);
        now
    }

    /// How long a topic may stay idle, in milliseconds.
    pub(crate) fn idle_ttl_ms(&self) -> u64 {
        self.idle_ttl_ms
    }

    /// Adds a topic that gained its first subscriber to the active set.
    pub(crate) fn activate(&self, topic: &Arc<Topic>) {
        let key = Arc::as_ptr(topic) as usize;
        self.lists.lock().active.insert(key, topic.clone());
    }

    /// Removes a topic that lost its subscribers from the active set.
    pub(crate) fn deactivate(&self, topic: &Arc<Topic>) {
        self.lists.lock().active.remove(&(Arc::as_ptr(topic) as usize));
    }

    /// Queues a topic without subscribers, to be looked at again at `deadline_ms`.
    pub(crate) fn queue_idle(&self, topic: Arc<Topic>, deadline_ms: u64) {
        self.lists.lock().idle.push(Idle { deadline_ms, topic });
    }

    /// The active topics, at some moment during the call.
    pub(crate) fn active(&self) -> Vec<Arc<Topic>> {
        self.lists.lock().active.values().cloned().collect()
    }

    /// Takes the idle topics whose deadline has come.
    pub(crate) fn take_due(&self, now_ms: u64) -> Vec<Arc<Topic>> {
        let mut lists = self.lists.lock();
        let mut due = Vec::new();
        while lists.idle.peek().is_some_and(|idle| idle.deadline_ms <= now_ms) {
            if let Some(idle) = lists.idle.pop() {
                due.push(idle.topic);
            }
        }
        due
    }

    /// Gives back the room the lists grew to when they hold much less now.
    pub(crate) fn shrink(&self) {
        let mut lists = self.lists.lock();
        if lists.idle.capacity() > 64 && lists.idle.len() < lists.idle.capacity() / 4 {
            let len = lists.idle.len();
            lists.idle.shrink_to(len * 2);
        }
        if lists.active.capacity() > 64 && lists.active.len() < lists.active.capacity() / 4 {
            let len = lists.active.len();
            lists.active.shrink_to(len * 2);
        }
    }

    /// How many topics are active and idle.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let lists = self.lists.lock();
        (lists.active.len(), lists.idle.len())
    }
}

// The heap is a max-heap: the soonest deadline compares greatest.
impl Ord for Idle {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.deadline_ms.cmp(&self.deadline_ms)
    }
}

impl PartialOrd for Idle {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Idle {
    fn eq(&self, other: &Self) -> bool {
        self.deadline_ms == other.deadline_ms
    }
}

impl Eq for Idle {}

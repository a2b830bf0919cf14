//! The per-client queue: events waiting for one subscriber's connection writer, bounded in bytes.
//!
//! Publishers push without ever waiting for the writer: a push that would take the client past
//! its byte budget evicts the client instead (the queue closes, the connection is told to close,
//! and every later push is refused at once). The budget covers everything crier holds for the
//! client: bytes stay counted from the push until the writer reports them written.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::event::Event;
use crate::metrics::Transport;

/// One event queued for a subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event, shared with every other subscriber and the topic's history.
    pub event: Arc<Event>,
    /// Which of the subscriber's topics it belongs to (index into its topic list).
    pub topic_index: u16,
}

/// What happened to a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued for the writer.
    Queued,
    /// Refused because it did not fit: the client was evicted by this push.
    Evicted,
    /// Refused because the client is already closed or evicted.
    Closed,
}

/// Why a queue stopped taking events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The server is shutting down: the writer sends what is queued, then ends the stream.
    Shutdown,
    /// The client fell too far behind and was evicted: nothing more is sent.
    Evicted,
}

/// What a writer finds when it drains the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Events were moved to the writer.
    Events,
    /// The queue is empty and closed.
    Closed(Closed),
}

/// Closes the connection that serves a queue, so an evicted client is dropped even while its
/// socket is too full for the writer to run.
pub trait ConnectionCloser: Send + Sync {
    /// Closes the connection as soon as possible, without flushing.
    fn close_connection(&self);
}

/// Deques up to this many entries keep their capacity between uses.
const SHRINK_ABOVE: usize = 256;

const OPEN: u8 = 0;
const SHUTDOWN: u8 = 1;
const EVICTED: u8 = 2;

/// A bounded, multi-producer, single-consumer queue of events for one client.
pub struct ClientQueue {
    /// Limit on `queued_bytes`.
    limit: usize,
    /// `OPEN`, `SHUTDOWN` or `EVICTED`; only ever moves away from `OPEN`.
    state: AtomicU8,
    /// The transport of the connection, for metrics.
    transport: Transport,
    /// Called once when the client is evicted.
    closer: Option<Arc<dyn ConnectionCloser>>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Bytes pushed and not yet reported written (or dropped) by the writer.
    queued_bytes: usize,
    items: VecDeque<Delivery>,
    /// An emptied deque handed back by the writer, so pushes reuse its capacity.
    spare: Option<VecDeque<Delivery>>,
    /// The writer's waker, registered each time it drains.
    waker: Option<Waker>,
    /// Whether the writer has been woken since it last drained, so a burst of pushes costs
    /// one wakeup.
    notified: bool,
}

impl ClientQueue {
    /// A queue holding at most `limit` bytes of frames.
    pub fn new(
        limit: usize,
        transport: Transport,
        closer: Option<Arc<dyn ConnectionCloser>>,
    ) -> Self {
        ClientQueue {
            limit,
            state: AtomicU8::new(OPEN),
            transport,
            closer,
            inner: Mutex::new(Inner {
                queued_bytes: 0,
                items: VecDeque::new(),
                spare: None,
                waker: None,
                notified: false,
            }),
        }
    }

    /// The transport of the connection this queue feeds.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Queues `delivery`, counting `bytes` against the budget. Never waits for the writer.
    pub fn push(&self, delivery: Delivery, bytes: usize) -> Push {
        if self.state.load(Ordering::Acquire) != OPEN {
            return Push::Closed;
        }
        let waker = {
            let mut inner = self.inner.lock();
            if inner.queued_bytes + bytes > self.limit {
                drop(inner);
                return if self.close(Closed::Evicted) { Push::Evicted } else { Push::Closed };
            }
            inner.queued_bytes += bytes;
            inner.items.push_back(delivery);
            if inner.notified {
                None
            } else {
                inner.notified = true;
                inner.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Push::Queued
    }

    /// Queues `events` of one topic, `bytes` in all: one queue operation and at most one
    /// wakeup for the whole batch. Never waits for the writer.
    pub fn push_batch(&self, events: &[Arc<Event>], topic_index: u16, bytes: usize) -> Push {
        if self.state.load(Ordering::Acquire) != OPEN {
            return Push::Closed;
        }
        let waker = {
            let mut inner = self.inner.lock();
            if inner.queued_bytes + bytes > self.limit {
                drop(inner);
                return if self.close(Closed::Evicted) { Push::Evicted } else { Push::Closed };
            }
            inner.queued_bytes += bytes;
            let deliveries =
                events.iter().map(|event| Delivery { event: event.clone(), topic_index });
            inner.items.extend(deliveries);
            if inner.notified {
                None
            } else {
                inner.notified = true;
                inner.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Push::Queued
    }

    /// Stops the queue taking events; returns whether this call closed it. Eviction also closes
    /// the connection.
    pub fn close(&self, why: Closed) -> bool {
        let to = match why {
            Closed::Shutdown => SHUTDOWN,
            Closed::Evicted => EVICTED,
        };
        if self.state.compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let waker = self.inner.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
        if let (Closed::Evicted, Some(closer)) = (why, &self.closer) {
            closer.close_connection();
        }
        true
    }

    /// Whether the queue was closed, and why.
    pub fn closed(&self) -> Option<Closed> {
        match self.state.load(Ordering::Acquire) {
            OPEN => None,
            SHUTDOWN => Some(Closed::Shutdown),
            _ => Some(Closed::Evicted),
        }
    }

    /// Moves every queued event into `into` (which must be empty), or registers the writer to
    /// be woken by the next push or close.
    ///
    /// An evicted queue reports `Closed(Evicted)` at once, dropping what is queued; a queue
    /// closed for shutdown hands over what is queued first.
    pub fn poll_drain(&self, cx: &mut Context<'_>, into: &mut VecDeque<Delivery>) -> Poll<Drained> {
        debug_assert!(into.is_empty());
        let mut inner = self.inner.lock();
        match &mut inner.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        let state = self.state.load(Ordering::Acquire);
        if state == EVICTED {
            inner.items.clear();
            return Poll::Ready(Drained::Closed(Closed::Evicted));
        }
        if !inner.items.is_empty() {
            inner.notified = false;
            let replacement = inner.spare.take().unwrap_or_default();
            *into = std::mem::replace(&mut inner.items, replacement);
            return Poll::Ready(Drained::Events);
        }
        if state == SHUTDOWN {
            return Poll::Ready(Drained::Closed(Closed::Shutdown));
        }
        inner.notified = false;
        Poll::Pending
    }

    /// Hands an emptied deque back so later pushes reuse its allocation. Oversized deques (left
    /// by a burst) are shrunk so an idle client does not keep a burst's memory.
    pub fn recycle(&self, mut deque: VecDeque<Delivery>, used: usize) {
        deque.clear();
        // Only a deque far larger than its use is shrunk, so steady traffic never reallocates.
        if deque.capacity() > SHRINK_ABOVE && deque.capacity() > 8 * used {
            deque.shrink_to(used.max(SHRINK_ABOVE / 8));
        }
        let mut inner = self.inner.lock();
        if inner.spare.is_none() {
            inner.spare = Some(deque);
        }
    }

    /// Reports `bytes` of queued frames as written (or dropped), freeing budget.
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            let mut inner = self.inner.lock();
            inner.queued_bytes = inner.queued_bytes.saturating_sub(bytes);
        }
    }

    /// Bytes pushed and not yet released.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().queued_bytes
    }
}

impl std::fmt::Debug for ClientQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientQueue")
            .field("queued_bytes", &self.queued_bytes())
            .field("limit", &self.limit)
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Epoch, EventData, EventId, TopicName};
    use crate::sse::encode;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    fn event(seq: u64) -> Arc<Event> {
        let id = EventId { epoch: Epoch::from_u64(1).unwrap(), seq };
        let data = EventData::Text(bytes::Bytes::from_static(b"x"));
        Arc::new(Event {
            topic: TopicName::new("t").unwrap(),
            id,
            name: None,
            sse: encode::finish(encode::encode_body(None, &data), id),
            data,
        })
    }

    fn delivery(seq: u64) -> Delivery {
        Delivery { event: event(seq), topic_index: 0 }
    }

    #[derive(Default)]
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    impl ConnectionCloser for Flag {
        fn close_connection(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn overflow_evicts_and_closes_the_connection() {
        let closed = Arc::new(Flag::default());
        let queue = ClientQueue::new(100, Transport::Sse, Some(closed.clone()));
        assert_eq!(queue.push(delivery(1), 60), Push::Queued);
        assert_eq!(queue.push(delivery(2), 40), Push::Queued);
        assert!(!closed.0.load(Ordering::SeqCst));
        assert_eq!(queue.push(delivery(3), 1), Push::Evicted);
        assert!(closed.0.load(Ordering::SeqCst));
        assert_eq!(queue.push(delivery(4), 1), Push::Closed);
        assert_eq!(queue.closed(), Some(Closed::Evicted));
        assert_eq!(queue.queued_bytes(), 100);
    }

    #[test]
    fn drain_wakes_once_per_burst_and_release_frees_budget() {
        let queue = ClientQueue::new(100, Transport::Sse, None);
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut out = VecDeque::new();
        assert_eq!(queue.poll_drain(&mut cx, &mut out), Poll::Pending);
        queue.push(delivery(1), 50);
        assert!(woken.0.swap(false, Ordering::SeqCst));
        queue.push(delivery(2), 50);
        assert!(!woken.0.load(Ordering::SeqCst), "a second push must not wake again");
        assert_eq!(queue.poll_drain(&mut cx, &mut out), Poll::Ready(Drained::Events));
        assert_eq!(out.iter().map(|d| d.event.id.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(queue.push(delivery(3), 1), Push::Evicted, "unreleased bytes still count");

        let queue = ClientQueue::new(100, Transport::Sse, None);
        queue.push(delivery(1), 100);
        queue.release(100);
        assert_eq!(queue.push(delivery(2), 100), Push::Queued);
    }

    #[test]
    fn shutdown_hands_over_queued_events_first() {
        let queue = ClientQueue::new(100, Transport::Sse, None);
        let waker = Waker::from(Arc::new(Flag::default()));
        let mut cx = Context::from_waker(&waker);
        queue.push(delivery(1), 10);
        assert!(queue.close(Closed::Shutdown));
        assert!(!queue.close(Closed::Evicted), "the first close wins");
        let mut out = VecDeque::new();
        assert_eq!(queue.poll_drain(&mut cx, &mut out), Poll::Ready(Drained::Events));
        out.clear();
        assert_eq!(
            queue.poll_drain(&mut cx, &mut out),
            Poll::Ready(Drained::Closed(Closed::Shutdown))
        );
    }

    #[test]
    fn recycled_deques_are_reused_and_shrunk() {
        let queue = ClientQueue::new(usize::MAX, Transport::Sse, None);
        let waker = Waker::from(Arc::new(Flag::default()));
        let mut cx = Context::from_waker(&waker);
        let mut big = VecDeque::with_capacity(1000);
        big.push_back(delivery(1));
        queue.recycle(big, 1);
        queue.push(delivery(2), 1);
        let mut out = VecDeque::new();
        let _ = queue.poll_drain(&mut cx, &mut out);
        queue.push(delivery(3), 1);
        let inner = queue.inner.lock();
        assert!(inner.items.capacity() >= 1 && inner.items.capacity() < 100);
    }
}

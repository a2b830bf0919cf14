//! A subscriber as the registry sees it: one stream's shared state, the part publishers,
//! the sweeper and shutdown touch. Its position on each topic lives in its [`Reader`]
//! entries; its writer owns everything else.
//!
//! [`Reader`]: super::Reader

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Waker;

use atomic_waker::AtomicWaker;

use crate::event::Wire;

/// Why a subscriber stopped receiving events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The server is shutting down: the writer sends what is already published, then ends.
    Shutdown,
    /// The subscriber fell too far behind and was evicted: nothing more is sent.
    Evicted,
}

/// Closes the connection that serves a subscriber, so an evicted one is dropped even while its
/// socket is too full for its writer to run.
pub(crate) trait ConnectionCloser: Send + Sync {
    /// Closes the connection as soon as possible, without flushing.
    fn close_connection(&self);
}

const OPEN: u8 = 0;
const SHUTDOWN: u8 = 1;
const EVICTED: u8 = 2;

/// One subscriber connection, as seen by publishers, the sweeper and shutdown.
pub(crate) struct Subscriber {
    /// `OPEN`, `SHUTDOWN` or `EVICTED`; only ever moves away from `OPEN`.
    state: AtomicU8,
    /// The writer's task, woken when a topic it waits on gets an event, or on close.
    waker: AtomicWaker,
    /// The wire format the connection reads events in: its lag is counted in those bytes.
    wire: Wire,
    /// Most bytes of `wire` the subscriber may lag behind a topic before it is evicted.
    lag_limit: usize,
    /// Called once when the subscriber is evicted.
    closer: Option<Arc<dyn ConnectionCloser>>,
}

impl Subscriber {
    /// A subscriber reading `wire` that may lag `lag_limit` bytes of it behind a topic.
    pub(crate) fn new(
        lag_limit: usize,
        wire: Wire,
        closer: Option<Arc<dyn ConnectionCloser>>,
    ) -> Self {
        Subscriber {
            state: AtomicU8::new(OPEN),
            waker: AtomicWaker::new(),
            wire,
            lag_limit,
            closer,
        }
    }

    /// The wire format the connection reads events in.
    pub(crate) fn wire(&self) -> Wire {
        self.wire
    }

    /// Most bytes of its own wire format the subscriber may lag behind a topic.
    pub(crate) fn lag_limit(&self) -> usize {
        self.lag_limit
    }

    /// Stops delivery; returns whether this call closed it. Eviction also closes the
    /// connection.
    pub(crate) fn close(&self, why: Closed) -> bool {
        let to = match why {
            Closed::Shutdown => SHUTDOWN,
            Closed::Evicted => EVICTED,
        };
        if self.state.compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.waker.wake();
        if let (Closed::Evicted, Some(closer)) = (why, &self.closer) {
            closer.close_connection();
        }
        true
    }

    /// Whether the subscriber was closed, and why.
    pub(crate) fn closed(&self) -> Option<Closed> {
        match self.state.load(Ordering::Acquire) {
            OPEN => None,
            SHUTDOWN => Some(Closed::Shutdown),
            _ => Some(Closed::Evicted),
        }
    }

    /// Registers the writer's task for [`Subscriber::wake`].
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Wakes the writer.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("wire", &self.wire)
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

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
    fn the_first_close_wins_and_eviction_closes_the_connection() {
        let connection = Arc::new(Flag::default());
        let woken = Arc::new(Flag::default());
        let subscriber = Subscriber::new(100, Wire::Sse, Some(connection.clone()));
        subscriber.register(&Waker::from(woken.clone()));
        assert!(subscriber.close(Closed::Evicted));
        assert!(woken.0.load(Ordering::SeqCst), "closing wakes the writer");
        assert!(connection.0.load(Ordering::SeqCst), "eviction closes the connection");
        assert!(!subscriber.close(Closed::Shutdown));
        assert_eq!(subscriber.closed(), Some(Closed::Evicted));

        let connection = Arc::new(Flag::default());
        let subscriber = Subscriber::new(100, Wire::Sse, Some(connection.clone()));
        assert!(subscriber.close(Closed::Shutdown));
        assert!(!connection.0.load(Ordering::SeqCst), "shutdown lets the stream drain");
    }
}

//! One accepted connection: the task that drives hyper on it, and the control that lets the
//! server drain it (graceful shutdown) or drop it at once (eviction, shutdown timeout).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use slab::Slab;
use tokio::sync::Notify;

use crate::registry::ConnectionCloser;

/// Requests in flight on one hyper connection, and since when there are none: what its idle
/// timeout (`--idle-timeout`) goes by.
pub(crate) struct Activity {
    started: std::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` when the last request finished.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

/// One request in flight, until its response body is dropped.
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: std::time::Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long the connection has had no request in flight, or `None` while it has one.
    pub(crate) fn idle_for(&self) -> Option<std::time::Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = std::time::Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.started.elapsed().saturating_sub(since))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const KILL: u8 = 2;

/// Tells a connection's task to drain or to close.
pub(crate) struct ConnControl {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Default for ConnControl {
    fn default() -> Self {
        ConnControl { state: AtomicU8::new(RUNNING), waker: AtomicWaker::new() }
    }
}

impl ConnControl {
    fn signal(&self, to: u8) {
        if self.state.fetch_max(to, Ordering::AcqRel) < to {
            self.waker.wake();
        }
    }

    /// Finish the requests in flight (streams end once their queues close), then close.
    pub(crate) fn drain(&self) {
        self.signal(DRAIN);
    }

    /// Close now, dropping whatever is unsent.
    pub(crate) fn kill(&self) {
        self.signal(KILL);
    }

    /// Ready once the connection was asked to drain or close, for work that has nothing in
    /// flight to finish (waiting for a first request).
    pub(crate) fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            RUNNING => Poll::Pending,
            _ => Poll::Ready(()),
        }
    }
}

impl ConnectionCloser for ConnControl {
    fn close_connection(&self) {
        self.kill();
    }
}

pin_project! {
    /// Drives a connection until it ends, or is killed; tells it when to drain.
    pub(crate) struct ControlledConnection<C> {
        #[pin]
        conn: C,
        control: Arc<ConnControl>,
        drain: fn(Pin<&mut C>),
        draining: bool,
    }
}

impl<C> ControlledConnection<C> {
    /// Wraps `conn`, obeying `control`; `drain` starts a graceful close.
    pub(crate) fn new(conn: C, control: Arc<ConnControl>, drain: fn(Pin<&mut C>)) -> Self {
        ControlledConnection { conn, control, drain, draining: false }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum ConnectionEnd<T> {
    /// It finished by itself (the peer closed, or it drained).
    Finished(T),
    /// The server closed it.
    Killed,
}

impl<C: Future> Future for ControlledConnection<C> {
    type Output = ConnectionEnd<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        this.control.waker.register(cx.waker());
        match this.control.state.load(Ordering::Acquire) {
            KILL => return Poll::Ready(ConnectionEnd::Killed),
            DRAIN if !*this.draining => {
                *this.draining = true;
                (this.drain)(this.conn.as_mut());
            }
            _ => {}
        }
        this.conn.poll(cx).map(ConnectionEnd::Finished)
    }
}

/// Every open connection, so shutdown can drain them and wait for them.
#[derive(Default)]
pub(crate) struct Tracker {
    conns: Mutex<Slab<Arc<ConnControl>>>,
    empty: Notify,
}

impl Tracker {
    /// Registers a new connection; returns its control and its key.
    pub(crate) fn add(&self) -> (Arc<ConnControl>, usize) {
        let control = Arc::new(ConnControl::default());
        let key = self.conns.lock().insert(control.clone());
        (control, key)
    }

    /// Forgets a finished connection.
    pub(crate) fn remove(&self, key: usize) {
        let mut conns = self.conns.lock();
        conns.try_remove(key);
        if conns.is_empty() {
            self.empty.notify_waiters();
        }
    }

    /// Number of open connections.
    pub(crate) fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Whether no connection is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every connection to drain.
    pub(crate) fn drain_all(&self) {
        for (_, control) in self.conns.lock().iter() {
            control.drain();
        }
    }

    /// Closes every connection now.
    pub(crate) fn kill_all(&self) {
        for (_, control) in self.conns.lock().iter() {
            control.kill();
        }
    }

    /// Resolves once no connection is open.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

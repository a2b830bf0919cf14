//! One accepted connection: what the server keeps of it, the requests in flight on it, and the
//! control that lets the server drain it (graceful shutdown) or drop it at once (eviction,
//! shutdown timeout), tracked for shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use slab::Slab;
use tokio::sync::Notify;

use crate::hub::ConnectionCloser;
use crate::limits::ConnectionSlot;

/// An accepted connection, beside its socket: who is at the other end, and what the server
/// keeps of it.
pub(crate) struct Accepted {
    /// The address of the other end.
    pub(crate) remote: SocketAddr,
    /// Drains or closes the connection.
    pub(crate) control: Arc<ConnControl>,
    /// Its place under `--max-connections-per-ip`.
    pub(crate) slot: Option<ConnectionSlot>,
}

/// Requests in flight on one hyper connection, and how many have finished: what its idle
/// timeout (`--idle-timeout`) goes by, without reading the clock per request.
#[derive(Default)]
pub(crate) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    finished: std::sync::atomic::AtomicU64,
}

/// One request in flight, until its response body is dropped.
pub(crate) struct InFlight(Arc<Activity>);

/// Where a connection's requests stood at one look, to compare with the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    in_flight: usize,
    finished: u64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity::default())
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Where the requests stand now.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            in_flight: self.in_flight.load(Ordering::Acquire),
            finished: self.finished.load(Ordering::Acquire),
        }
    }

    /// Whether nothing was in flight, and nothing finished, since `earlier`: the connection
    /// has been idle all the time in between.
    pub(crate) fn idle_since(&self, earlier: Mark) -> bool {
        let now = self.mark();
        now.in_flight == 0 && earlier.in_flight == 0 && now.finished == earlier.finished
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
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

    /// Whether the connection was asked to drain or close.
    pub(crate) fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// Ready once the connection was asked to close now, for work that finishes what is in
    /// flight when only asked to drain.
    pub(crate) fn poll_killed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            KILL => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }

    /// `work`'s output, or `None` if the connection is asked to drain or close first.
    pub(crate) async fn unless_stopped<F: Future>(&self, work: F) -> Option<F::Output> {
        self.unless(work, Self::poll_stopped).await
    }

    /// `work`'s output, or `None` if the connection is asked to close first.
    pub(crate) async fn unless_killed<F: Future>(&self, work: F) -> Option<F::Output> {
        self.unless(work, Self::poll_killed).await
    }

    async fn unless<F: Future>(
        &self,
        work: F,
        stop: fn(&Self, &mut Context<'_>) -> Poll<()>,
    ) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if stop(self, cx).is_ready() {
                return Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        })
        .await
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

/// A connection's place in the tracker, given back when dropped.
pub(crate) struct TrackerEntry {
    tracker: Arc<Tracker>,
    key: usize,
}

impl TrackerEntry {
    /// The entry `key` of `tracker` (from [`Tracker::add`]).
    pub(crate) fn new(tracker: Arc<Tracker>, key: usize) -> Self {
        TrackerEntry { tracker, key }
    }
}

impl Drop for TrackerEntry {
    fn drop(&mut self) {
        self.tracker.remove(self.key);
    }
}

pin_project! {
    /// A long-lived connection (a stream, a WebSocket) as a task of its own, sized to it, and
    /// what it holds while it lives (its client's slot, its place in the tracker). Spawned by
    /// the task that set the connection up, whose state (a handshake, hyper's) it never holds.
    pub(crate) struct ConnectionTask<C, H> {
        #[pin]
        conn: ControlledConnection<C>,
        held: H,
    }
}

impl<C, H> ConnectionTask<C, H> {
    pub(crate) fn new(conn: ControlledConnection<C>, held: H) -> Self {
        ConnectionTask { conn, held }
    }
}

impl<C: Future, H> Future for ConnectionTask<C, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let ConnectionEnd::Killed = ready!(self.project().conn.poll(cx)) {
            tracing::debug!("connection closed by the server");
        }
        Poll::Ready(())
    }
}

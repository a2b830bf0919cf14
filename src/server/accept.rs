//! Taking connections in and letting them go: the accept loop, the caps on open connections
//! (in all, and per address for remote ends that are not trusted proxies), the canned refusal
//! a connection over a cap gets, riding out a failing `accept` (out of file descriptors)
//! without spinning or flooding the log, each connection's task (TLS, the fast path or hyper),
//! and the shutdown.
//!
//! Shutdown, in order: `/readyz` answers 503 for `--drain-delay` while the server serves on;
//! then it stops accepting; every subscriber is closed for shutdown, so each stream writes
//! what was already published and ends; every connection is asked to finish what is in flight
//! and close; whatever is still open after `--shutdown-timeout` is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::app::App;
use super::conn::{ConnControl, ConnectionEnd, ControlledConnection};
use super::fast_path::{self, Opened};
use super::hyper_conn;
use crate::http::{ApiError, ErrorCode};
use crate::limits::{ClientKey, ConnectionCounts, ConnectionSlot};
use crate::metrics::{Metrics, Rejection};

/// How often recorded histogram samples are folded into buckets, and idle rate buckets
/// forgotten.
const UPKEEP: Duration = Duration::from_secs(5);

/// How often subscribers whose writers stopped reading are looked for and evicted.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Longest shutdown waits for the Mercure departures to be announced (Redis may be away).
const DEPARTURES_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause after a failed accept; it doubles up to [`MAX_PAUSE`] while accepts fail.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A failing accept is logged at most this often (with the count of failures since).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Longest a refused connection is read from (so the refusal is not lost to a reset) before
/// it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What a failing accept loop does.
#[derive(Debug, Default)]
pub(super) struct AcceptFailures {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    /// An accept succeeded: the next failure starts over.
    pub(super) fn succeeded(&mut self) {
        self.pause = None;
    }

    /// An accept failed with `error`: counts and (at most every [`LOG_EVERY`]) logs it, and
    /// says how long to pause before accepting again.
    pub(super) fn failed(&mut self, error: &io::Error, metrics: &Metrics) -> Duration {
        metrics.accept_errors.increment(1);
        self.unlogged += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            tracing::warn!(%error, failures = self.unlogged, "accept failed; pausing accepts");
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        let pause = self.pause.map_or(FIRST_PAUSE, |pause| (pause * 2).min(MAX_PAUSE));
        self.pause = Some(pause);
        pause
    }
}

/// The caps on open connections.
pub(super) struct ConnectionCaps {
    max_connections: usize,
    per_client: Arc<ConnectionCounts>,
    metrics: Arc<Metrics>,
}

impl ConnectionCaps {
    pub(super) fn new(max_connections: u32, max_per_client: u32, metrics: Arc<Metrics>) -> Self {
        ConnectionCaps {
            max_connections: max_connections as usize,
            per_client: ConnectionCounts::new(max_per_client),
            metrics,
        }
    }

    /// Admits a connection from `peer` while `open` are open; `counted`: count it against its
    /// address (not for trusted proxies, whose connections carry many clients). On a refusal
    /// the connection is answered and closed in the background.
    pub(super) fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        open: usize,
        counted: bool,
    ) -> Option<(TcpStream, Option<ConnectionSlot>)> {
        if open >= self.max_connections {
            self.metrics.rejected(Rejection::Connections);
            tracing::debug!(%peer, open, "refused: at --max-connections");
            let detail =
                format!("the server holds its limit of {} connections", self.max_connections);
            refuse(stream, ApiError::new(ErrorCode::AtCapacity, detail));
            return None;
        }
        if !counted {
            return Some((stream, None));
        }
        match self.per_client.open(ClientKey::of(peer.ip())) {
            Some(slot) => Some((stream, Some(slot))),
            None => {
                self.metrics.rejected(Rejection::ConnectionsPerIp);
                tracing::debug!(%peer, "refused: at --max-connections-per-ip");
                let detail = "too many connections from this address";
                refuse(stream, ApiError::new(ErrorCode::TooManyConnections, detail));
                None
            }
        }
    }
}

/// Answers a connection with `refusal` (HTTP/1.1, whatever it was about to send) and closes
/// it, reading what it sends meanwhile so the answer is not lost to a reset.
pub(super) fn refuse(mut stream: TcpStream, refusal: ApiError) {
    tokio::spawn(async move {
        let answer = refusal.to_http1();
        let linger = async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
    });
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    let max_head = app.config.max_request_head_bytes;
    // The first request's head is capped as it is read (`first_request`); hyper's own read
    // buffer limit stays at its default, which also sizes its write buffer.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(app.config.header_read_timeout);
    builder.http2().max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let tracker = &app.tracker;
    let upkeep = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(UPKEEP);
            loop {
                tick.tick().await;
                app.metrics.run_upkeep();
                app.admission.prune();
                app.publishing.prune();
            }
        }
    });

    let sweeper = tokio::spawn(app.hub.clone().run_sweeper(SWEEP_INTERVAL));

    tokio::pin!(shutdown);
    let mut failures = AcceptFailures::default();
    // Set once the signal came, while `/readyz` says "draining" and the server still serves.
    let mut leave_at: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown, if leave_at.is_none() => {
                let delay = app.config.drain_delay;
                if delay.is_zero() {
                    break;
                }
                tracing::info!(?delay, "shutting down: /readyz answers 503 while the server serves on");
                app.leaving.store(true, Ordering::SeqCst);
                leave_at = Some(Box::pin(tokio::time::sleep(delay)));
                continue;
            }
            () = leave(&mut leave_at) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                failures.succeeded();
                spawn_connection(stream, remote, &app, &builder);
            }
            Err(e) => {
                // Out of descriptors or memory: pause instead of spinning on accept, and serve
                // again once descriptors free up.
                let pause = failures.failed(&e, &app.metrics);
                tokio::select! {
                    () = &mut shutdown, if leave_at.is_none() => break,
                    () = leave(&mut leave_at) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    drop(listener);
    tracing::info!(connections = tracker.len(), "shutting down: draining");
    app.hub.shutdown();
    tracker.drain_all();
    if tokio::time::timeout(app.config.shutdown_timeout, tracker.wait_empty()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "shutdown timeout: closing remaining connections"
        );
        tracker.kill_all();
        tracker.wait_empty().await;
    }
    if let Some(mercure) = &app.mercure {
        // The streams have ended: their subscribers' departure is announced by this node now,
        // not by a survivor once this node is taken for dead.
        let flushed = tokio::time::timeout(DEPARTURES_TIMEOUT, mercure.flush_departures()).await;
        if flushed.is_err() {
            tracing::warn!("shutdown: Mercure departures not all announced in time");
        }
    }
    upkeep.abort();
    sweeper.abort();
    tracing::info!("shut down");
    Ok(())
}

/// Resolves when the drain delay is over (never before the shutdown signal).
async fn leave(leave_at: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match leave_at {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

fn spawn_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: &Arc<App>,
    builder: &Arc<Builder<TokioExecutor>>,
) {
    let counted = !app.admission.is_proxy(remote.ip());
    let Some((stream, slot)) = app.caps.admit(stream, remote, app.tracker.len(), counted) else {
        return;
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let (control, key) = app.tracker.add();
    let (app, builder) = (app.clone(), builder.clone());
    tokio::spawn(async move {
        serve_connection(stream, Accepted { remote, control, slot }, &app, &builder).await;
        app.tracker.remove(key);
    });
}

/// An accepted connection, beside its socket: who is at the other end, and what the server
/// keeps of it.
pub(super) struct Accepted {
    /// The address of the other end.
    pub(super) remote: SocketAddr,
    /// Drains or closes the connection.
    pub(super) control: Arc<ConnControl>,
    /// Its place under `--max-connections-per-ip`.
    pub(super) slot: Option<ConnectionSlot>,
}

/// Serves one connection: a stream on the fast path if that is what its first request asks
/// for, hyper otherwise.
async fn serve_connection(
    stream: TcpStream,
    accepted: Accepted,
    app: &Arc<App>,
    builder: &Builder<TokioExecutor>,
) {
    if let Some(tls) = &app.tls {
        // Over TLS, hyper serves everything (HTTP/2 by ALPN, or HTTP/1.1).
        let Some(io) = tls.accept(stream, app.config.header_read_timeout).await else { return };
        return Box::pin(hyper_conn::serve(io, accepted, app, builder)).await;
    }
    let remote = accepted.remote;
    // Boxed, both: what it takes to read the first request and open a stream (buffers, headers,
    // the subscribe) and hyper's connection state are large, and the task serving a stream on
    // the fast path (most of them) would otherwise hold room for them all its life.
    match Box::pin(fast_path::open(stream, remote, app, &accepted.control)).await {
        Opened::Stream(stream) => {
            let stream = ControlledConnection::new(stream, accepted.control, |_| {});
            if let ConnectionEnd::Killed = stream.await {
                tracing::debug!(%remote, "stream closed by the server");
            }
        }
        Opened::Hyper(io) => Box::pin(hyper_conn::serve(io, accepted, app, builder)).await,
        Opened::Done => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_accept_backs_off_and_logs_rarely() {
        let metrics = Metrics::new();
        let mut failures = AcceptFailures::default();
        let error = io::Error::from_raw_os_error(24);
        let pauses: Vec<Duration> = (0..10).map(|_| failures.failed(&error, &metrics)).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 2);
        assert_eq!(*pauses.last().unwrap(), MAX_PAUSE);
        assert_eq!(failures.unlogged, 9, "only the first of a burst is logged");
        failures.succeeded();
        assert_eq!(failures.failed(&error, &metrics), FIRST_PAUSE);
    }
}

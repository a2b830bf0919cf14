//! Taking connections in and letting them go: the accept loop (through the connection caps),
//! each connection's task (TLS, the fast path or hyper), and the shutdown.
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
use tokio::net::{TcpListener, TcpStream};

use super::app::App;
use super::caps::AcceptFailures;
use super::conn::{Accepted, ConnectionTask, ControlledConnection, TrackerEntry};
use super::fast_path::{self, Opened};
use super::first_request;
use super::hyper_conn::{self, Protocol};
use crate::sse::SseStream;

/// How often recorded histogram samples are folded into buckets, and idle rate buckets
/// forgotten.
const UPKEEP: Duration = Duration::from_secs(5);

/// Streams an HTTP/2 connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
pub(crate) const H2_MAX_STREAMS: u32 = 100;

/// How often subscribers whose writers stopped reading are looked for and evicted.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Longest shutdown waits for the Mercure departures to be announced (Redis may be away).
const DEPARTURES_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the kernel queues before they are accepted: a crowd reconnecting at once
/// (Linux caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` to listen on, with `SO_REUSEADDR`: a server restarted at once binds its port
/// again though the connections it closed still linger in `TIME_WAIT`.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let builders = Arc::new(Builders::new(&app));
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
                // The delay lets load balancers move streams elsewhere; with none open (a
                // developer's Ctrl-C), there is nothing to wait for.
                if !app.hub.has_readers() {
                    tracing::info!("shutting down: no stream open, no drain delay");
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
                spawn_connection(stream, remote, &app, &builders);
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

/// How hyper serves connections.
pub(super) struct Builders {
    /// HTTP/2 by ALPN or prior knowledge, or HTTP/1.1: TLS connections, and h2c.
    auto: Builder<TokioExecutor>,
    /// Plain connections whose first request is HTTP/1.x.
    http1: hyper::server::conn::http1::Builder,
}

impl Builders {
    fn new(app: &App) -> Self {
        let mut auto = Builder::new(TokioExecutor::new());
        let max_head = app.config.max_request_head_bytes;
        // The first request's head is capped as it is read (`first_request`); hyper's own read
        // buffer limit stays at its default, which also sizes its write buffer.
        auto.http1().timer(TokioTimer::new()).header_read_timeout(app.config.header_read_timeout);
        // Streams one HTTP/2 connection may hold open: 100, the most a browser uses (RFC 9113
        // asks for no fewer), rather than hyper's 200, so that one connection is bounded like
        // 100 HTTP/1.1 ones; an address's streams in all are `--max-streams-per-ip`.
        auto.http2()
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_concurrent_streams(H2_MAX_STREAMS);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(app.config.header_read_timeout);
        Builders { auto, http1 }
    }
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
    builders: &Arc<Builders>,
) {
    let counted = !app.admission.is_proxy(remote.ip());
    let slot = match app.caps.admit(remote, app.tracker.len(), counted) {
        Ok(slot) => slot,
        Err(refusal) => return super::caps::refuse_over_cap(&app.caps, stream, remote, refusal),
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let (control, key) = app.tracker.add();
    let (app, builders) = (app.clone(), builders.clone());
    tokio::spawn(async move {
        let entry = TrackerEntry::new(app.tracker.clone(), key);
        let accepted = Accepted { remote, control, slot };
        if let Some((stream, accepted)) = serve_connection(stream, accepted, &app, &builders).await
        {
            // A task of its own, sized to the stream: this one holds room for every way a
            // connection may begin, and most connections are streams that live long.
            let stream = ControlledConnection::new(stream, accepted.control, |_| {});
            tokio::spawn(ConnectionTask::new(stream, (accepted.slot, entry)));
        }
    });
}

/// Serves one connection: hyper, or what opens a stream on the fast path if that is what its
/// first request asks for; then the stream, for its own task.
async fn serve_connection(
    stream: TcpStream,
    accepted: Accepted,
    app: &Arc<App>,
    builders: &Builders,
) -> Option<(SseStream, Accepted)> {
    // Every future awaited here is boxed: the task holds room for the largest of them while it
    // lives, and a TLS handshake (rustls's connection state), reading the first request and
    // opening a stream (buffers, headers, the subscribe) and hyper's connection state are each
    // larger than a stream needs.
    if let Some(tls) = &app.tls {
        // Over TLS, hyper serves everything (HTTP/2 by ALPN, or HTTP/1.1).
        let accepting = Box::pin(tls.accept(stream, app.config.header_read_timeout));
        let io = accepting.await?;
        Box::pin(hyper_conn::serve(io, accepted, app, Protocol::Auto(&builders.auto))).await;
        return None;
    }
    match Box::pin(fast_path::open(stream, accepted.remote, app, &accepted.control)).await {
        Opened::Stream(stream) => Some((stream, accepted)),
        Opened::Hyper(io) => {
            // An HTTP/1.1 connection is served by hyper's HTTP/1 server itself, so that a
            // WebSocket upgraded on it gets the plain socket back (`upgraded`).
            let protocol = match io.starts_with(first_request::H2_PREFACE) {
                true => Protocol::Auto(&builders.auto),
                false => Protocol::Http1(&builders.http1),
            };
            Box::pin(hyper_conn::serve(io, accepted, app, protocol)).await;
            None
        }
        Opened::Done => None,
    }
}

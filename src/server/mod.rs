//! The server, the top of the crate: the only module that knows both edges. It accepts TCP
//! connections, routes each to the SSE fast path (a dedicated HTTP/1.1 stream) or to hyper
//! (HTTP/1.1 and h2c, everything else) serving the tower stack, spawns and tracks WebSocket
//! sessions, runs the eviction sweeper, and drains everything on shutdown.
//!
//! The stack every hyper request goes through:
//!
//! ```text
//! RequestMetrics ─▶ Cors ─▶ Authenticate ─▶ Router ─┬─ /publish ─▶ Shed ─▶ PublishEndpoint ─▶ Timeout ─▶ HubPublisher
//!                                           ├─ /sse ─▶ the SSE edge (a streaming body)
//!                                           ├─ /ws, /ws/echo ─▶ the WebSocket edge (101, then a tracked session)
//!                                           └─ /healthz, /readyz, /metrics, 404
//! ```
//!
//! Shutdown, in order: stop accepting; `/readyz` answers 503; every subscriber is closed for
//! shutdown, so each stream writes what was already published and ends; every connection is
//! asked to finish what is in flight and close; whatever is still open after
//! `--shutdown-timeout` is closed.

mod accept;
mod conn;
pub(crate) mod first_request;
mod handle;
mod layers;
mod page;
mod publish;
mod rewind;
mod router;
mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

use crate::auth::Authority;
use crate::config::Config;
use crate::http::{ApiError, ErrorCode};
use crate::http::{CorsPolicy, Gate, Rates};
use crate::hub::Hub;
use crate::limits::ConnectionSlot;
use crate::mercure::MercureEdge;
use crate::metrics::Metrics;
use crate::metrics::Rejection;
use crate::sse::{SseEdge, SseStream, StreamTiming};
use crate::ws::{WsEdge, WsLimits};
use conn::{Activity, ConnControl, ConnectionEnd, ControlledConnection, Tracker};
use first_request::{FirstRequest, StreamEndpoint};
pub use handle::ServerHandle;
use layers::{AuthenticateLayer, CorsLayer, RequestMetricsLayer, ShedLayer, TimeoutLayer};
use publish::{HubPublisher, PublishEndpoint};
use rewind::Rewind;
use router::{Route, Router};

/// The connection a request came on, for the endpoints that need it.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    peer: SocketAddr,
    /// Drains or closes the connection (an evicted SSE stream is closed through it).
    control: Arc<ConnControl>,
    /// The connection's place under `--max-connections-per-ip`, kept by a WebSocket session
    /// the connection turns into.
    slot: Option<Arc<ConnectionSlot>>,
}

/// The tower stack every request through hyper is served by.
type Stack = layers::RequestMetrics<layers::Cors<layers::Authenticate<Router<PublishStack>>>>;

/// The publish endpoint with its limits.
type PublishStack = layers::Shed<PublishEndpoint<layers::Timeout<HubPublisher>>>;

/// A running node: what every connection shares.
pub struct App {
    hub: Arc<Hub>,
    /// Cross-origin access, for streams on the fast path (hyper's go through the tower layer).
    cors: Option<CorsPolicy>,
    admission: accept::Admission,
    authority: Arc<Authority>,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    config: Config,
    sse: Arc<SseEdge>,
    /// The shutdown signal came: `/readyz` answers 503 for `--drain-delay` before the server
    /// stops accepting.
    leaving: Arc<AtomicBool>,
    /// TLS, when configured: every connection is served by hyper after the handshake.
    tls: Option<tls::Tls>,
    /// The Mercure hub, when it is on, for streams on the fast path.
    mercure: Option<Arc<MercureEdge>>,
    /// Every open connection and WebSocket session, for shutdown.
    tracker: Arc<Tracker>,
    stack: Stack,
}

impl App {
    /// A fresh node for `config`; in cluster mode its relay starts connecting to Redis (on
    /// the current runtime).
    pub fn new(config: Config) -> io::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        let authority = Arc::new(Authority::new(config.auth()).map_err(io::Error::other)?);
        let hub = match config.relay() {
            None => Hub::local(config.hub(), metrics.clone()),
            Some(relay) => {
                Hub::cluster(config.hub(), metrics.clone(), &relay).map_err(io::Error::other)?
            }
        };
        let hub = Arc::new(hub);
        let rates = Rates {
            new_streams_per_sec: config.new_streams_per_sec,
            publishes_per_sec: config.publishes_per_sec,
            new_topics_per_sec: config.new_topics_per_sec,
        };
        let proxies = config.trusted_proxies();
        let cors = CorsPolicy::new(&config.cors_origins);
        let gate =
            Arc::new(Gate::new(authority.clone(), proxies, metrics.clone(), rates, hub.clone()));
        let timing = StreamTiming {
            retry: config.sse_retry,
            heartbeat: config.heartbeat,
            write_delay: config.write_delay,
        };
        let sse = Arc::new(SseEdge::new(hub.clone(), metrics.clone(), timing));
        let limits = WsLimits {
            max_message: config.max_message_bytes,
            heartbeat: config.heartbeat,
            commands_per_sec: config.ws_commands_per_sec,
            write_delay: config.write_delay,
        };
        let allowed_origins = config.allowed_origins.clone();
        let ws = Arc::new(WsEdge::new(
            hub.clone(),
            metrics.clone(),
            gate.clone(),
            limits,
            allowed_origins,
        ));
        let tracker = Arc::new(Tracker::default());
        let publish = ServiceBuilder::new()
            .layer(ShedLayer::new(
                config.max_concurrent_publishes as usize,
                metrics.shed_requests(Route::Publish.as_str()),
            ))
            .layer_fn(|inner| {
                PublishEndpoint::new(
                    inner,
                    config.max_event_bytes,
                    config.body_read_timeout,
                    config.relay().is_some(),
                    metrics.clone(),
                )
            })
            .layer(TimeoutLayer::new(config.publish_timeout))
            .service(HubPublisher::new(hub.clone()));
        let leaving = Arc::new(AtomicBool::new(false));
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::Tls::load(cert, key)?),
            _ => None,
        };
        let mercure_config = config.mercure();
        let mercure = if mercure_config.is_enabled() {
            let edge = MercureEdge::new(
                mercure_config,
                hub.clone(),
                metrics.clone(),
                gate.clone(),
                timing,
                config.body_read_timeout,
            );
            Some(edge.map_err(io::Error::other)?)
        } else {
            None
        };
        let router = Router {
            hub: hub.clone(),
            metrics: metrics.clone(),
            sse: sse.clone(),
            ws,
            tracker: tracker.clone(),
            publish,
            mercure: mercure.clone(),
            leaving: leaving.clone(),
        };
        let stack = ServiceBuilder::new()
            .layer(RequestMetricsLayer::new(metrics.clone()))
            .layer(CorsLayer::new(cors.clone()))
            .layer(AuthenticateLayer::new(gate.clone()))
            .service(router);
        let admission = accept::Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            metrics.clone(),
        );
        Ok(Arc::new(App {
            hub,
            cors,
            admission,
            authority,
            gate,
            metrics,
            config,
            sse,
            leaving,
            tls,
            mercure,
            tracker,
            stack,
        }))
    }

    /// Reads the token key files and the TLS certificate again (SIGHUP). Open connections keep
    /// what their tokens granted and the certificate they were opened with; on an error what
    /// is in use stays.
    pub fn reload_credentials(&self) -> io::Result<()> {
        let reloaded = self.authority.reload().map_err(io::Error::other);
        let reloaded = reloaded.and_then(|()| self.tls.as_ref().map_or(Ok(()), tls::Tls::reload));
        self.metrics.credentials_reloaded(reloaded.is_ok());
        reloaded
    }
}

/// How often recorded histogram samples are folded into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How often subscribers whose writers stopped reading are looked for and evicted.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Longest shutdown waits for the Mercure departures to be announced (Redis may be away).
const DEPARTURES_TIMEOUT: Duration = Duration::from_secs(5);

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
        let (metrics, gate) = (app.metrics.clone(), app.gate.clone());
        async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                metrics.run_upkeep();
                gate.prune();
            }
        }
    });

    let sweeper = tokio::spawn(app.hub.clone().run_sweeper(SWEEP_INTERVAL));

    tokio::pin!(shutdown);
    let mut failures = accept::AcceptFailures::default();
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
            Ok((stream, peer)) => {
                failures.succeeded();
                spawn_connection(stream, peer, &app, &builder);
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
    peer: SocketAddr,
    app: &Arc<App>,
    builder: &Arc<Builder<TokioExecutor>>,
) {
    let counted = !app.gate.is_proxy(peer.ip());
    let Some((stream, slot)) = app.admission.admit(stream, peer, app.tracker.len(), counted) else {
        return;
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    let (control, key) = app.tracker.add();
    let (app, builder) = (app.clone(), builder.clone());
    tokio::spawn(async move {
        serve_connection(stream, peer, &app, &builder, control, slot).await;
        app.tracker.remove(key);
    });
}

/// Serves one connection: an SSE stream on the fast path if that is what its first request
/// asks for, hyper otherwise.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: &Arc<App>,
    builder: &Builder<TokioExecutor>,
    control: Arc<ConnControl>,
    slot: Option<ConnectionSlot>,
) {
    if let Some(tls) = &app.tls {
        // Over TLS, hyper serves everything (HTTP/2 by ALPN, or HTTP/1.1).
        let Some(io) = tls.accept(stream, app.config.header_read_timeout).await else { return };
        return Box::pin(serve_hyper(io, peer, app, builder, control, slot)).await;
    }
    // Boxed, both: what it takes to read the first request and open a stream (buffers, headers,
    // the subscribe) and hyper's connection state are large, and the task serving an SSE stream
    // on the fast path (most of them) would otherwise hold room for them all its life.
    match Box::pin(open(stream, peer, app, &control)).await {
        Opened::Stream(sse) => {
            app.metrics.http_request(Route::Sse.as_str(), 200);
            if let ConnectionEnd::Killed = ControlledConnection::new(sse, control, |_| {}).await {
                tracing::debug!(%peer, "stream closed by the server");
            }
        }
        Opened::Hyper(io) => Box::pin(serve_hyper(io, peer, app, builder, control, slot)).await,
        Opened::Done => {}
    }
}

/// What a connection's first request opened.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and taken apart at once; the stream is meant to live in its task"
)]
enum Opened {
    /// An SSE stream on the fast path.
    Stream(SseStream),
    /// Anything else, for hyper (with the bytes read so far).
    Hyper(Rewind<TcpStream>),
    /// Nothing: the connection is closed, or answered and closing.
    Done,
}

/// Reads the first request and opens an SSE stream on the fast path if that is what it asks
/// for and it is admitted; otherwise hands the connection to hyper, which answers the request
/// (refusals included) as for any other.
async fn open(
    mut stream: TcpStream,
    peer: SocketAddr,
    app: &Arc<App>,
    control: &Arc<ConnControl>,
) -> Opened {
    let mut first = Vec::new();
    let first_request = {
        let read_first = tokio::time::timeout(
            app.config.header_read_timeout,
            first_request::read(&mut stream, &mut first, app.config.max_request_head_bytes),
        );
        tokio::pin!(read_first);
        // A connection that has not sent a request yet has nothing to finish: shutdown closes it.
        std::future::poll_fn(|cx| {
            if control.poll_stopped(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            read_first.as_mut().poll(cx).map(Some)
        })
        .await
    };
    let Some(first_request) = first_request else { return Opened::Done };
    match first_request {
        Ok(Ok(FirstRequest::EventStream { endpoint: StreamEndpoint::Mercure, query, headers })) => {
            let Some(mercure) = &app.mercure else {
                return Opened::Hyper(Rewind::new(first, stream));
            };
            let client = app.gate.client(peer.ip(), &headers);
            // A refusal is left to hyper, which answers (and counts) it.
            if app.gate.admit_stream(client, true).is_err() {
                return Opened::Hyper(Rewind::new(first, stream));
            }
            let cors_lines = cors_lines(&app.cors, &headers);
            let query = query.as_deref();
            match mercure.fast_path(control.clone(), query, headers, &cors_lines, stream).await {
                Ok(sse) => Opened::Stream(sse),
                Err(stream) => Opened::Hyper(Rewind::new(first, stream)),
            }
        }
        Ok(Ok(FirstRequest::EventStream { endpoint: StreamEndpoint::Sse, query, headers })) => {
            let client = app.gate.client(peer.ip(), &headers);
            // A refusal is left to hyper, which answers (and counts) it.
            let admitted = app.gate.try_admit(client, &headers, query.as_deref());
            let admitted = admitted.filter(|_| {
                let topics = Gate::query_topics(query.as_deref());
                app.gate.admit_stream(client, true).is_ok()
                    && app.gate.admit_topics(client.ip, topics.iter().map(|t| &**t), true).is_ok()
            });
            let Some(access) = admitted else {
                return Opened::Hyper(Rewind::new(first, stream));
            };
            let last_event_id = headers.get("last-event-id").map(http::HeaderValue::as_bytes);
            let cors_lines = cors_lines(&app.cors, &headers);
            let request = crate::sse::FastRequest {
                query: query.as_deref(),
                last_event_id,
                access: &access,
                extra_head: &cors_lines,
            };
            match app.sse.fast_path(control.clone(), request, stream).await {
                Ok(sse) => Opened::Stream(sse),
                // Refused: hyper answers the same request with the error.
                Err(stream) => Opened::Hyper(Rewind::new(first, stream)),
            }
        }
        Ok(Ok(FirstRequest::Other)) => Opened::Hyper(Rewind::new(first, stream)),
        Ok(Ok(FirstRequest::Closed)) => Opened::Done,
        Ok(Ok(FirstRequest::TooLarge)) => {
            app.metrics.rejected(Rejection::HeadTooLarge);
            let max = app.config.max_request_head_bytes;
            let detail = format!("the request head is larger than {max} bytes");
            accept::refuse(stream, ApiError::new(ErrorCode::HeadTooLarge, detail));
            Opened::Done
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "reading the first request failed");
            Opened::Done
        }
        Err(_) => {
            tracing::debug!(%peer, "no request head within the header read timeout");
            // A connection that sent nothing (a browser's preconnect) is just closed; one that
            // started a request is told.
            if !first.is_empty() {
                app.metrics.rejected(Rejection::HeadTimeout);
                let detail = "the request head did not arrive within --header-read-timeout";
                accept::refuse(stream, ApiError::new(ErrorCode::RequestTimeout, detail));
            }
            Opened::Done
        }
    }
}

/// The CORS header lines (each ending in CRLF) of a stream's response head.
fn cors_lines(cors: &Option<CorsPolicy>, headers: &http::HeaderMap) -> String {
    let mut lines = String::new();
    for (name, value) in cors.iter().flat_map(|c| c.headers(headers.get("origin"))) {
        let value = String::from_utf8_lossy(value.as_bytes());
        lines.push_str(&format!("{name}: {value}\r\n"));
    }
    lines
}

/// Serves a connection through hyper and the tower stack, starting with the bytes read so far.
async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    app: &Arc<App>,
    builder: &Builder<TokioExecutor>,
    control: Arc<ConnControl>,
    slot: Option<ConnectionSlot>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let info = ConnInfo { peer, control: control.clone(), slot: slot.map(Arc::new) };
    // Set by the first request: until then the connection is on the head deadline (an h2c
    // client that sends the preface, or SETTINGS, or half a HEADERS frame, and stops).
    let requested = Arc::new(AtomicBool::new(false));
    let activity = Activity::new();
    let service = ServiceBuilder::new()
        .map_request({
            let requested = requested.clone();
            move |mut req: Request<Incoming>| {
                requested.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(info.clone());
                req
            }
        })
        .service(layers::CountInFlight::new(app.stack.clone(), activity.clone()));
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let drain = |conn: std::pin::Pin<&mut _>| {
        hyper_util::server::graceful::GracefulConnection::graceful_shutdown(conn)
    };
    let connection = ControlledConnection::new(conn, control.clone(), drain);
    let head_deadline = tokio::time::sleep(app.config.header_read_timeout);
    let idle_timeout = app.config.idle_timeout;
    let idle_check = tokio::time::sleep(idle_timeout);
    let mut last_mark = activity.mark();
    tokio::pin!(connection, head_deadline, idle_check);
    let end = std::future::poll_fn(|cx| {
        if !requested.load(Ordering::Relaxed) && head_deadline.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(None);
        }
        // No request in flight for a whole idle timeout (HTTP/1 keep-alive, HTTP/2): finish
        // and close (an HTTP/2 client gets GOAWAY). Looked at once per timeout, so a connection
        // goes after one to two timeouts idle.
        while idle_check.as_mut().poll(cx).is_ready() {
            if activity.idle_since(last_mark) {
                control.drain();
            }
            last_mark = activity.mark();
            idle_check.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
        }
        connection.as_mut().poll(cx).map(Some)
    })
    .await;
    match end {
        Some(ConnectionEnd::Finished(Err(e))) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error")
        }
        Some(ConnectionEnd::Finished(Ok(()))) => {}
        Some(ConnectionEnd::Killed) => tracing::debug!(%peer, "connection closed by the server"),
        None => {
            app.metrics.rejected(Rejection::HeadTimeout);
            tracing::debug!(%peer, "no request within the header read timeout: closed");
        }
    }
}

//! Serving a connection through hyper (HTTP/1.1 and h2c; everything over TLS): each request
//! is routed once, as it enters the tower stack, and carries its route and its connection from
//! then on; the connection closes when no request came within the head deadline, or none was
//! in flight for a whole idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

use super::ConnInfo;
use super::app::App;
use super::conn::{Accepted, Activity, ConnControl, ConnectionEnd, ControlledConnection};
use super::layers;
use super::router::Routed;
use crate::metrics::Rejection;

/// How hyper serves a connection.
pub(super) enum Protocol<'a> {
    /// HTTP/2 or HTTP/1.1, whichever the client speaks.
    Auto(&'a Builder<TokioExecutor>),
    /// HTTP/1.x only (the client spoke it already): its upgraded socket can be taken back.
    Http1(&'a http1::Builder),
}

/// Serves a connection through hyper and the tower stack, starting with the bytes read so far.
pub(super) async fn serve<I>(io: I, accepted: Accepted, app: &Arc<App>, protocol: Protocol<'_>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { remote, control, slot } = accepted;
    let conn = ConnInfo { remote, control: control.clone(), slot: slot.map(Arc::new) };
    // Set by the first request: until then the connection is on the head deadline (an h2c
    // client that sends the preface, or SETTINGS, or half a HEADERS frame, and stops).
    let requested = Arc::new(AtomicBool::new(false));
    let activity = Activity::new();
    let routes = app.routes;
    let service = ServiceBuilder::new()
        .map_request({
            let requested = requested.clone();
            move |request: Request<Incoming>| {
                requested.store(true, Ordering::Relaxed);
                let route = routes.of(request.uri().path());
                Routed { route, conn: conn.clone(), request }
            }
        })
        .service(layers::CountInFlight::new(app.stack.clone(), activity.clone()));
    let service = TowerToHyperService::new(service);
    let watch = Watch { control, requested, activity, remote };
    let io = TokioIo::new(io);
    match protocol {
        Protocol::Auto(builder) => {
            let connection = builder.serve_connection_with_upgrades(io, service);
            watch.drive(connection, |connection| connection.graceful_shutdown(), app).await;
        }
        Protocol::Http1(builder) => {
            let connection = builder.serve_connection(io, service).with_upgrades();
            watch.drive(connection, |connection| connection.graceful_shutdown(), app).await;
        }
    }
}

/// What a hyper connection is watched by while it is served.
struct Watch {
    control: Arc<ConnControl>,
    /// A request came.
    requested: Arc<AtomicBool>,
    activity: Arc<Activity>,
    remote: SocketAddr,
}

impl Watch {
    /// Drives `connection` to its end, closing it if no request came within the head deadline
    /// and draining it (`drain`) once it was idle for a whole idle timeout.
    async fn drive<C, E>(self, connection: C, drain: fn(std::pin::Pin<&mut C>), app: &App)
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Watch { control, requested, activity, remote } = self;
        let connection = ControlledConnection::new(connection, control.clone(), drain);
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
            // and close (an HTTP/2 client gets GOAWAY). Looked at once per timeout, so a
            // connection goes after one to two timeouts idle.
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
                tracing::debug!(%remote, error = %e, "connection ended with an error")
            }
            Some(ConnectionEnd::Finished(Ok(()))) => {}
            Some(ConnectionEnd::Killed) => {
                tracing::debug!(%remote, "connection closed by the server")
            }
            None => {
                app.metrics.rejected(Rejection::HeadTimeout);
                tracing::debug!(%remote, "no request within the header read timeout: closed");
            }
        }
    }
}

//! The WebSocket edge: `GET /ws` (events of the topics followed, JSON commands) and
//! `GET /ws/echo` (echoes every message: the conformance target).
//!
//! The handshake is validated and answered by the HTTP service ([`handshake`]); after the
//! `101`, a [`Connection`] owns the socket and runs the protocol: reading and decoding
//! ([`inbound`], [`message`]), writing, the heartbeat ([`liveness`]) and the close handshake
//! ([`closing`]). What the connection is for is its handler ([`handler`]): the echo, or a
//! session ([`session`]): a subscription driven by [`command`]s. Events are framed once per format
//! ([`crate::codec::ws`]) and every subscriber writes the same bytes: server frames are
//! unmasked.
//!
//! The edge takes what it needs and nothing more: the hub, the metrics, its limits, the
//! admission (for its commands' tokens and new topics) and the publish policy. The server
//! spawns and tracks the connections it hands back.

mod close;
mod closing;
mod command;
mod connection;
mod frame;
mod handler;
pub(crate) mod handshake;
pub(crate) mod inbound;
mod liveness;
pub(crate) mod message;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use http::Request;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::codec::ws::MAX_CLOSE_REASON;
use crate::event::Wire;
use crate::http::{
    Admission, Admitted, ApiError, ErrorCode, OriginPolicy, PublishPolicy, ResponseBody,
    close_reason,
};
use crate::hub::{Hub, SubscriptionRequest};
use crate::metrics::Metrics;
use handler::{Echo, Handler};
use session::{Session, SessionSetup};

use close::CloseCode;
pub(crate) use connection::Connection;

/// The knobs of WebSocket connections.
#[derive(Clone, Debug)]
pub(crate) struct WsLimits {
    /// Largest message a client may send to `/ws` (`/ws/echo` takes at least 16 MiB).
    pub(crate) max_message: usize,
    /// Ping interval; a client silent for twice this is closed.
    pub(crate) heartbeat: Duration,
    /// Commands admitted per second (and burst).
    pub(crate) commands_per_sec: u32,
}

/// What the WebSocket endpoints need.
pub(crate) struct WsEdge {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Verifies the tokens of `auth` commands and counts the topics they create.
    admission: Arc<Admission>,
    /// What every publish command goes through.
    publishing: Arc<PublishPolicy>,
    limits: WsLimits,
    /// Pages of other origins allowed to open WebSockets (`--cors-origins`).
    origins: OriginPolicy,
}

/// A handshake answered with `101`: the connection to run once hyper hands the socket over.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    handler: Box<dyn Handler>,
    limits: WsLimits,
    metrics: Arc<Metrics>,
}

impl Upgrade {
    /// Waits for the upgraded socket and sets the connection up on the I/O `io_of` makes of
    /// it; `None` if the upgrade failed (the client went away).
    pub(crate) async fn connect<IO>(
        self,
        io_of: impl FnOnce(Upgraded) -> IO,
    ) -> Option<Connection<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let upgraded = match self.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return None;
            }
        };
        Some(Connection::new(io_of(upgraded), self.handler, self.limits.heartbeat, self.metrics))
    }
}

/// A handshake answered with `101` only to be closed: the close frame to send once hyper hands
/// the socket over.
pub(crate) struct RefusedUpgrade {
    on_upgrade: OnUpgrade,
    close: bytes::Bytes,
    metrics: Arc<Metrics>,
}

impl RefusedUpgrade {
    /// Sends the close frame, waits (at most [`closing::CLOSE_GRACE`]) for the client's own
    /// close or its end, and closes the connection. Never a connection or a session: nothing
    /// is counted but the close.
    pub(crate) async fn run(self) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(upgraded) = self.on_upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        self.metrics.ws_closed(CloseCode::TRY_AGAIN_LATER.as_u16());
        let closing = async {
            io.write_all(&self.close).await?;
            io.flush().await?;
            // The client answers with its close frame (perhaps after frames it had sent
            // already), then waits for the server to close the connection.
            let mut read = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                let n = io.read(&mut chunk).await?;
                if n == 0 || read.len() > MAX_CLOSE_REASON * 64 {
                    break;
                }
                read.extend_from_slice(&chunk[..n]);
                if frame::contains_close(&read) {
                    break;
                }
            }
            io.shutdown().await
        };
        let _ = tokio::time::timeout(closing::CLOSE_GRACE, closing).await;
    }
}

/// The close frame of a refused WebSocket: 1013, with the refusal and when to retry as JSON.
fn try_again_later(refused: &ApiError, retry: Duration) -> bytes::Bytes {
    let reason = close_reason(refused, retry, MAX_CLOSE_REASON);
    crate::codec::ws::close(CloseCode::TRY_AGAIN_LATER.as_u16(), &reason)
}

impl WsEdge {
    pub(crate) fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        publishing: Arc<PublishPolicy>,
        limits: WsLimits,
        origins: OriginPolicy,
    ) -> Self {
        WsEdge { hub, metrics, admission, publishing, limits, origins }
    }

    /// Answers an admitted WebSocket handshake on `/ws`: the `101`, and the connection to run
    /// once the socket is handed over. Every topic of the URL must be one the peer may follow.
    pub(crate) async fn accept<B>(
        &self,
        req: &mut Request<B>,
        admitted: Admitted,
    ) -> Result<(http::Response<ResponseBody>, Upgrade), ApiError> {
        let stream_slot = admitted.take_stream_slot();
        let Admitted { peer, access, query, .. } = admitted;
        let accept = self.validate(req)?;
        let wire = match query.format.as_deref() {
            None | Some("json") => Wire::WsJson,
            Some("raw") => Wire::WsRaw,
            Some(other) => {
                let detail = format!("format {other:?} is not json or raw");
                return Err(ApiError::new(ErrorCode::BadFormat, detail));
            }
        };
        for topic in &query.topics {
            access.check_subscribe(topic.as_str())?;
        }
        let resume = query.resume_after(None)?;
        let request = SubscriptionRequest::new(query.topics, resume, wire);
        let subscription = self.hub.subscribe(request).await?;
        let handler = Box::new(Session::new(SessionSetup {
            hub: self.hub.clone(),
            subscription,
            wire,
            admission: self.admission.clone(),
            publishing: self.publishing.clone(),
            peer,
            access,
            commands_per_sec: self.limits.commands_per_sec,
            max_message: self.limits.max_message,
            _stream_slot: stream_slot,
        }));
        Ok((handshake::switching_protocols(accept), self.upgrade(req, handler)))
    }

    /// Answers a WebSocket handshake on `/ws/echo`.
    pub(crate) fn accept_echo<B>(
        &self,
        req: &mut Request<B>,
    ) -> Result<(http::Response<ResponseBody>, Upgrade), ApiError> {
        let accept = self.validate(req)?;
        let handler = Box::new(Echo::new(self.limits.max_message));
        Ok((handshake::switching_protocols(accept), self.upgrade(req, handler)))
    }

    /// Completes a valid handshake (`accept`) on `/ws` only to close the connection at once
    /// with 1013 (Try Again Later) and `refused` as JSON, with when to retry: a page sees why,
    /// where a refused handshake shows it only close code 1006.
    pub(crate) fn refuse<B>(
        &self,
        req: &mut Request<B>,
        accept: handshake::Accept,
        refused: &ApiError,
        retry: Duration,
    ) -> (http::Response<ResponseBody>, RefusedUpgrade) {
        let refusal = RefusedUpgrade {
            on_upgrade: hyper::upgrade::on(req),
            close: try_again_later(refused, retry),
            metrics: self.metrics.clone(),
        };
        (handshake::switching_protocols(accept), refusal)
    }

    /// Validates a handshake.
    pub(crate) fn validate<B>(&self, req: &Request<B>) -> Result<handshake::Accept, ApiError> {
        let host = crate::http::request_host(req.uri(), req.headers());
        handshake::validate(req.method(), req.version(), req.headers(), &self.origins, host)
    }

    /// The close frame that refuses a WebSocket whose `101` was written without hyper:
    /// the one [`WsEdge::refuse`] sends, counted as sent.
    pub(crate) fn refusal_frame(&self, refused: &ApiError, retry: Duration) -> bytes::Bytes {
        self.metrics.ws_closed(CloseCode::TRY_AGAIN_LATER.as_u16());
        try_again_later(refused, retry)
    }

    /// Validates a handshake read without hyper (`minor`: the HTTP/1 minor version).
    pub(crate) fn validate_parts(
        &self,
        method: &http::Method,
        minor: Option<u8>,
        headers: &http::HeaderMap,
    ) -> Result<handshake::Accept, ApiError> {
        let version =
            if minor == Some(1) { http::Version::HTTP_11 } else { http::Version::HTTP_10 };
        let host = headers.get(http::header::HOST).and_then(|host| host.to_str().ok());
        handshake::validate(method, version, headers, &self.origins, host)
    }

    fn upgrade<B>(&self, req: &mut Request<B>, handler: Box<dyn Handler>) -> Upgrade {
        Upgrade {
            on_upgrade: hyper::upgrade::on(req),
            handler,
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

//! Letting connections in: the caps on open connections (in all, and per address for remote
//! ends that are not trusted proxies), the refusal a connection over a cap gets (the canned
//! status, or for a browser's stream or WebSocket the soft refusal it retries), the canned one
//! for a head too large or too slow, and riding out a failing `accept` (out of file
//! descriptors) without spinning or flooding the log.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::fast_path::{Framing, response_head};

use crate::http::{
    Admission, ApiError, Asker, ErrorCode, RefusalForm, Route, Routes, event_stream_response,
};
use crate::limits::{ClientKey, ConnectionCounts, ConnectionSlot};
use crate::metrics::{Metrics, Rejection};
use crate::ws::{WsEdge, handshake};

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

/// The caps on open connections, and what their refusals need: who a request comes from and
/// how a refusal is answered (the admission), which endpoint a path names, and whether a
/// WebSocket handshake is valid.
pub(super) struct ConnectionCaps {
    max_connections: usize,
    per_client: Arc<ConnectionCounts>,
    metrics: Arc<Metrics>,
    refusals: Arc<Refusals>,
}

/// What answering a refused connection takes.
pub(super) struct Refusals {
    pub(super) admission: Arc<Admission>,
    pub(super) ws: Arc<WsEdge>,
    pub(super) routes: Routes,
    pub(super) max_head: usize,
}

impl ConnectionCaps {
    pub(super) fn new(
        max_connections: u32,
        max_per_client: u32,
        metrics: Arc<Metrics>,
        refusals: Refusals,
    ) -> Self {
        ConnectionCaps {
            max_connections: max_connections as usize,
            per_client: ConnectionCounts::new(max_per_client),
            metrics,
            refusals: Arc::new(refusals),
        }
    }

    /// Admits a connection from `peer` while `open` are open; `counted`: count it against its
    /// address (not for trusted proxies, whose connections carry many clients). A refusal says
    /// why, for [`refuse_over_cap`].
    pub(super) fn admit(
        &self,
        peer: SocketAddr,
        open: usize,
        counted: bool,
    ) -> Result<Option<ConnectionSlot>, ApiError> {
        if open >= self.max_connections {
            self.metrics.rejected(Rejection::Connections);
            tracing::debug!(%peer, open, "refused: at --max-connections");
            let detail =
                format!("the server holds its limit of {} connections", self.max_connections);
            return Err(ApiError::new(ErrorCode::AtCapacity, detail));
        }
        if !counted {
            return Ok(None);
        }
        match self.per_client.open(ClientKey::of(peer.ip())) {
            Some(slot) => Ok(Some(slot)),
            None => {
                self.metrics.rejected(Rejection::ConnectionsPerIp);
                tracing::debug!(%peer, "refused: at --max-connections-per-ip");
                let detail = "too many connections from this address";
                Err(ApiError::new(ErrorCode::TooManyConnections, detail))
            }
        }
    }
}

/// Answers a connection over a cap in the background, and closes it. Its first request head is
/// read first (for as long as a refusal lingers), so that a browser's `EventSource` or
/// WebSocket is refused the way it retries ([`crate::http::RefusalForm`]); anything else, or
/// a head that does not come, gets the status.
pub(super) fn refuse_over_cap(
    caps: &ConnectionCaps,
    mut stream: TcpStream,
    remote: SocketAddr,
    refusal: ApiError,
) {
    let refusals = caps.refusals.clone();
    tokio::spawn(async move {
        let mut head = Vec::with_capacity(1024);
        let max_head = refusals.max_head;
        let read = tokio::time::timeout(REFUSAL_LINGER, async {
            loop {
                if stream.read_buf(&mut head).await? == 0 {
                    return io::Result::Ok(Answer::Status);
                }
                match answer_to(&head, remote, &refusal, &refusals) {
                    Answer::Incomplete if head.len() < max_head => {}
                    Answer::Incomplete => return Ok(Answer::Status),
                    answer => return Ok(answer),
                }
            }
        });
        let answer = match read.await {
            Ok(Ok(Answer::Soft(answer))) => answer,
            Ok(Ok(_)) | Err(_) => refusal.to_http1(),
            Ok(Err(_)) => return,
        };
        answer_and_close(stream, &answer).await;
    });
}

/// How a refused connection is answered, once its first request head is read.
enum Answer {
    /// The head is not complete yet.
    Incomplete,
    /// The refusal's status.
    Status,
    /// A soft refusal, whole.
    Soft(Vec<u8>),
}

/// The answer to a refused connection whose first request head is (so far) `head`.
fn answer_to(head: &[u8], remote: SocketAddr, refusal: &ApiError, with: &Refusals) -> Answer {
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut parsed);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Answer::Incomplete,
        Err(_) => return Answer::Status,
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Answer::Status;
    };
    let Route::Gated(route) = with.routes.of(target.split('?').next().unwrap_or(target)) else {
        return Answer::Status;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Answer::Status };
    let mut headers = HeaderMap::new();
    for header in request.headers.iter() {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(header.name.as_bytes()), HeaderValue::from_bytes(header.value))
        else {
            return Answer::Status;
        };
        headers.append(name, value);
    }
    let peer = with.admission.peer(remote.ip(), &headers);
    let asker = Asker::of(route, &method, &headers);
    let handshake = match asker {
        Asker::WebSocket => match with.ws.validate_parts(&method, request.version, &headers) {
            Ok(accept) => Some(accept),
            Err(_) => return Answer::Status,
        },
        _ => None,
    };
    match (with.admission.refusal_form(peer.ip, refusal, asker), handshake) {
        (RefusalForm::EventStream(retry), _) => {
            let (mut parts, body) = event_stream_response(refusal, retry).into_parts();
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            let body = body.into_full().unwrap_or_default();
            let mut answer =
                response_head(parts.status, &parts.headers, Framing::Length(body.len()));
            answer.extend_from_slice(&body);
            Answer::Soft(answer)
        }
        (RefusalForm::WsClose(retry), Some(accept)) => {
            let (parts, _) = handshake::switching_protocols(accept).into_parts();
            let mut answer = response_head(parts.status, &parts.headers, Framing::Upgrade);
            answer.extend_from_slice(&with.ws.refusal_frame(refusal, retry));
            Answer::Soft(answer)
        }
        _ => Answer::Status,
    }
}

/// Answers a connection with `refusal` (HTTP/1.1, whatever it was about to send) and closes
/// it.
pub(super) fn refuse(stream: TcpStream, refusal: ApiError) {
    tokio::spawn(async move { answer_and_close(stream, &refusal.to_http1()).await });
}

/// Writes `answer` and closes, reading what the peer sends meanwhile (for as long as a
/// refusal lingers) so the answer is not lost to a reset.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) {
    let linger = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
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

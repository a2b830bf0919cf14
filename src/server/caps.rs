//! Letting connections in: the caps on open connections (in all, and per address for remote
//! ends that are not trusted proxies), the canned refusal a connection over a cap (or with a
//! head too large or too slow) gets, and riding out a failing `accept` (out of file
//! descriptors) without spinning or flooding the log.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::{ApiError, ErrorCode};
use crate::limits::{ClientKey, ConnectionCounts, ConnectionSlot};
use crate::metrics::{Metrics, Rejection};

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

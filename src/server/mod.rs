//! The server, the top of the crate: the only module that knows every edge. By job:
//!
//! - [`app`]: building a node — the hub, the one admission and the one publish policy every
//!   edge shares, the edges, the tower stack.
//! - [`accept`]: the accept loop, each connection's task, and the shutdown; [`caps`]: the
//!   caps on open connections, and the canned refusal of a connection.
//! - [`fast_path`]: a plain connection whose first request opens a stream (`GET /sse`, or of
//!   the Mercure hub) is answered without hyper, under the same admission, by the one head
//!   writer streams and refusals share; [`publish_path`]: a plain connection of publishes
//!   (`POST /publish`, one after another) is served without hyper, under the same admission
//!   and by the same publish handler.
//! - [`hyper_conn`]: every other connection, served by hyper through the tower stack:
//!
//! ```text
//! Routed ─▶ RequestMetrics ─▶ Admit ─▶ Router ─┬─ /publish ─▶ the publish policy ─▶ the hub
//!  (route computed once)     (Admission::admit)├─ /sse ─▶ the SSE edge (a streaming body)
//!                                              ├─ /ws, /ws/echo ─▶ the WebSocket edge (101, then a tracked session)
//!                                              ├─ /.well-known/mercure… ─▶ the Mercure hub
//!                                              └─ /healthz, /readyz, /metrics, /, 404
//! ```
//!
//! Beside them: [`router`] (the requests the stack carries, and the dispatch), [`publish`]
//! (the HTTP publish endpoint), [`layers`] (the tower middleware), [`conn`] (draining and
//! closing connections, tracked for shutdown), [`first_request`], [`rewind`], [`upgraded`]
//! (the socket a WebSocket session runs on), [`tls`],
//! [`page`] and [`handle`].

mod accept;
mod app;
mod caps;
mod conn;
mod fast_path;
pub(crate) mod first_request;
mod handle;
mod hyper_conn;
mod layers;
mod page;
mod publish;
pub(crate) mod publish_path;
mod rewind;
mod router;
mod tls;
mod upgraded;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::limits::ConnectionSlot;
pub use accept::{bind, serve};
pub use app::App;
use conn::ConnControl;
pub use handle::ServerHandle;

/// The connection a request came on, for the endpoints that need it.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    /// The address of the connection's other end (a proxy's, behind one).
    remote: SocketAddr,
    /// Drains or closes the connection (an evicted SSE stream is closed through it).
    control: Arc<ConnControl>,
    /// The connection's place under `--max-connections-per-ip`, kept by a WebSocket session
    /// the connection turns into.
    slot: Option<Arc<ConnectionSlot>>,
}

#[cfg(test)]
impl ConnInfo {
    /// A loopback connection.
    fn test() -> Self {
        ConnInfo {
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            control: Arc::new(ConnControl::default()),
            slot: None,
        }
    }
}

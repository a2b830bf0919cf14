//! crier: a real-time event broadcasting edge server.
//!
//! Publishers send events over HTTP (`POST /publish`); crier pushes each event to every
//! subscriber of its topic over Server-Sent Events (`GET /sse`). Each event is encoded once and
//! appended once to its topic's log; every subscriber's writer reads the log from its own
//! cursor, so publishing costs the same for one subscriber or a hundred thousand. A subscriber
//! that falls too far behind is evicted instead of slowing anyone else, and resumes from the
//! log with no gap and no duplicate.
//!
//! The data flow, module by module:
//!
//! ```text
//! server (accept; hyper, or the SSE fast path) ─▶ server::publish ─▶ hub::Hub::publish
//!                                                                       │ sse::encode, once
//!                                                                       ▼
//!                          registry::Topic: id, append to the log (history), wake parked writers
//!                                                                       │
//!              hub::Subscription (cursor per topic) ◀── reads the log ──┘
//!                                    │
//!                                    ▼
//!     sse::writer (one chunk per wakeup) ─▶ sse::stream, or hyper ─▶ one writev ─▶ socket
//! ```
//!
//! In cluster mode (`--redis-url`), `Hub::publish` goes through `relay` (a Lua script in
//! Redis assigns the id and publishes the envelope), and the relay's Pub/Sub link appends what
//! arrives to the topic's log on every node, the publishing one included.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub)]

pub mod chunk;
pub mod config;
pub mod error;
pub mod event;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod server;
pub mod sse;
pub mod ws;

pub use config::Config;
pub use hub::{Hub, HubConfig, Subscription};
pub use server::{App, ServerHandle, serve};

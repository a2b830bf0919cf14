//! crier: a real-time event broadcasting edge server.
//!
//! Publishers send events over HTTP (`POST /publish`) or a WebSocket command; crier pushes each
//! event to every subscriber of its topic over Server-Sent Events (`GET /sse`) or WebSocket
//! (`GET /ws`), on one node or on many joined through Redis. Each event is encoded once per
//! wire format and appended once to its topic's log; every subscriber's writer reads the log
//! from its own cursor, so publishing costs the same for one subscriber or a hundred thousand.
//! A subscriber that falls too far behind is evicted instead of slowing anyone else, and
//! resumes from the log with no gap and no duplicate. Beside its own API, crier is a Mercure
//! hub (`/.well-known/mercure`) over one log of Mercure updates relayed like any topic.
//!
//! The layers, from the bottom up; each imports only from layers below it:
//!
//! ```text
//! event                names, ids, data, the Event with its frames (imports nothing of the crate)
//! codec                SSE frames, WebSocket frames, the crier.gap notice, the relay envelope,
//!                      the Mercure record and frame
//! registry             sharded topics, each a log that writers follow, subscribers, eviction
//! metrics, chunk,      metric handles and guards; write buffers and the vectored-write loop;
//! limits, auth         token buckets; keys, tokens, what a token allows (no HTTP)
//! relay                cluster mode: Redis assigns ids, a link appends to the registry
//! hub                  publish / subscribe over one sequencer seam (local, or the relay)
//! http                 response body, error codes, query parsing, who a request is from and
//!                      where its token comes from
//! sse, ws              the edges: a request in, a stream or a connection out
//! mercure              the Mercure hub: selectors, its authorization, resume by Mercure id,
//!                      active subscriptions (over the sse writer)
//! config, server       flags; accept, route, tower layers, sessions, shutdown (knows every edge)
//! ```
//!
//! A publish, on a single node: `server` (tower stack) ─▶ `hub::Hub::publish` ─▶ the local
//! sequencer: `codec` encodes, the `registry` topic assigns the id and appends, parked writers
//! wake ─▶ each `sse`/`ws` writer takes what follows its cursor into a `chunk` ─▶ one vectored
//! write. In cluster mode the sequencer is the `relay`: a Lua script in Redis assigns the id and
//! publishes the envelope, and the relay's Pub/Sub link appends what arrives to the topic's log
//! on every node, the publishing one included.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub)]

mod auth;
mod chunk;
mod codec;
mod config;
mod event;
mod http;
mod hub;
mod limits;
mod mercure;
mod metrics;
mod registry;
mod relay;
mod server;
mod sse;
mod ws;

pub use auth::{KeySpec, PublicKeySpec, SecretSpec, Selector, SelectorError};
pub use config::{Config, LogFormat};
pub use server::{App, ServerHandle, serve};

#[doc(hidden)]
pub mod internals;

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
//! # Words
//!
//! One word, one thing, across the crate:
//!
//! - **topic**: a named, ordered log of events ([`TopicName`](event::TopicName), the
//!   registry's `Topic`); an **internal log** is one with a name no client can give (`~…`),
//!   kept by an edge (the Mercure hub's), and a **pinned** topic is never dropped for being
//!   idle.
//! - **event**: one publish, with its id and its **frames**, the bytes it is sent as in each
//!   wire format, encoded once.
//! - **subscriber**: one open stream (SSE or WebSocket) as publishers, the sweeper and shutdown
//!   see it: its wire format, how far it may lag (`--max-lag-bytes`), whether it was closed.
//! - **reader**: a subscriber's place in one topic, its **cursor** there; the composite id a
//!   stream of several topics sends is a cursor too.
//! - **subscription**: a subscriber's readers of all its topics, owned by its **writer** (the
//!   code that turns them into frames on the socket), asked for by a `SubscriptionRequest`.
//! - **session**: a `/ws` connection's command loop over its subscription.
//! - **peer**: who a request comes from: an address (read through `--trusted-proxies`) and
//!   whether it is local. The **remote** address is the connection's other end (a proxy,
//!   behind one).
//! - **admission**: what every request to a gated endpoint passes, on every door (the fast
//!   path, hyper); its output, `Admitted`, is the peer, what its token allows (`Access`), what
//!   its query asks for (its topics, read once) and its CORS headers.
//! - **publish policy**: what every publish passes, whichever edge it comes from: rates, the
//!   publishes in flight, the timeout; its `PublishPermit` is the way into the hub.
//! - **route**: the endpoint a path names, computed once per request.
//! - **heard**: in cluster mode, a topic whose Redis channel the node is subscribed to; a node
//!   hears exactly the topics it holds (with readers, or within `--interest-grace` of the last).
//! - **lane**: one of the relay's tasks, each hearing its share of the topics (by slot) on its
//!   own Pub/Sub connections and appending to them.
//!
//! # Layers
//!
//! From the bottom up; each imports only from layers below it, the edges reach the core
//! through the hub, and the core (event, registry, hub) names no edge:
//!
//! ```text
//! event                names, ids, data, the Event with its frames (imports nothing of the crate)
//! codec                SSE frames, WebSocket frames, the crier.gap notice, the relay envelope,
//!                      the Mercure log's record and frame
//! registry             sharded topics, each a log that readers follow, subscribers, eviction
//! metrics, chunk,      metric handles and guards; write buffers and the vectored-write loop;
//! limits, auth         token buckets; keys, tokens, what a token allows (no HTTP)
//! relay                cluster mode: Redis assigns ids, a link appends to the registry
//! hub                  publish / subscribe over one sequencer seam (local, or the relay)
//! http                 routes, the one admission, the one publish policy, response body, error
//!                      codes, query parsing, who a request is from, where its token comes from
//! sse, ws              the edges: an admitted request in, a stream or a connection out
//! mercure              the Mercure hub: selectors, its authorization, resume by Mercure id,
//!                      active subscriptions (over the sse writer's plain dialect)
//! config, server       flags; building the app, accepting, the fast path, hyper and the tower
//!                      stack, shutdown (knows every edge)
//! ```
//!
//! A publish, on a single node: an edge (`POST /publish`, a WebSocket command, a Mercure
//! update) ─▶ the publish policy ─▶ `hub::Hub::publish_with` ─▶ the local sequencer: `codec`
//! encodes, the `registry` topic assigns the id and appends, parked writers wake ─▶ each
//! `sse`/`ws` writer takes what follows its cursor into a `chunk` ─▶ one vectored write. In
//! cluster mode the sequencer is the `relay`: a Lua script in Redis assigns the id and
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

pub use auth::{KeySpec, PublicKeySpec, SecretFileSpec, SecretSpec, Selector, SelectorError};
pub use config::{Config, LogFormat, token_command};
pub use hub::set_free_memory_release;
pub use server::{App, ServerHandle, bind, serve};

#[doc(hidden)]
pub mod internals;

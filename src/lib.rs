//! crier: a real-time event broadcasting edge server.
//!
//! Publishers send events over HTTP (`POST /publish`); crier pushes each event to every
//! subscriber of its topic over Server-Sent Events (`GET /sse`). Each event is encoded once and
//! shared by reference with every subscriber's bounded queue; a subscriber that falls behind is
//! evicted instead of slowing anyone else, and resumes from the topic's history with no gap and
//! no duplicate.
//!
//! The data flow, module by module:
//!
//! ```text
//! server (accept, hyper, routing) ─▶ server::publish ─▶ hub::Hub::publish
//!                                                          │ sse::encode (once per event)
//!                                                          ▼
//!                                   registry (topic ─▶ history + subscribers)
//!                                                          │ ClientQueue::push (never waits)
//!                                                          ▼
//!                           sse::body (connection writer, one vectored write per wakeup) ─▶ socket
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub)]

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
pub mod server;
pub mod sse;

pub use config::Config;
pub use hub::{Hub, HubConfig, Subscription};
pub use server::{App, ServerHandle, serve};

//! tower middleware at the HTTP boundary, each written as tower writes its own: a `Layer`
//! (configuration only), a `Service`, and a pin-projected response future.
//!
//! - [`RequestMetrics`]: counts every answered request by route and status.
//! - [`CountInFlight`]: the requests in flight on a connection, for its idle timeout.
//! - [`Admit`]: the one admission of gated endpoints (the fast path calls the same
//!   function), CORS preflights, and the CORS headers of their answers.
//!
//! A publish's limits (rate, concurrency, timeout) are not middleware: they are the publish
//! policy's, which every edge's publishes go through alike.

mod admit;
mod in_flight;
mod request_metrics;

pub(crate) use admit::{Admit, AdmitLayer};
pub(crate) use in_flight::CountInFlight;
pub(crate) use request_metrics::{RequestMetrics, RequestMetricsLayer};

#[cfg(test)]
mod tests;

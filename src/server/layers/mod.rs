//! tower middleware at the HTTP boundary, each written as tower writes its own: a `Layer`
//! (configuration only), a `Service`, a pin-projected response future, and a small typed error
//! that the boundary turns into the documented JSON answer ([`error_response`]).
//!
//! - [`RequestMetrics`]: counts every answered request by route and status.
//! - [`CountInFlight`]: the requests in flight on a connection, for its idle timeout.
//! - [`Cors`]: cross-origin access to `/sse` and `/publish`: preflights, and the headers.
//! - [`Authenticate`]: the client and what its token allows, for stream and publish requests;
//!   401 for a refused token.
//! - [`Shed`]: a concurrency limit that refuses at once (503 `overloaded`) rather than queue.
//! - [`Timeout`]: bounds how long a request may wait (a cluster publish: 503 `unavailable`).

mod authenticate;
mod cors;
mod in_flight;
mod request_metrics;
mod shed;
mod timeout;

pub(crate) use authenticate::{Authenticate, AuthenticateLayer};
pub(crate) use cors::{Cors, CorsLayer};
pub(crate) use in_flight::CountInFlight;
pub(crate) use request_metrics::{RequestMetrics, RequestMetricsLayer};
pub(crate) use shed::{Overloaded, Shed, ShedLayer};
pub(crate) use timeout::{Elapsed, Timeout, TimeoutLayer};

use crate::http::{ApiError, ErrorCode};
use crate::hub::PublishError;

/// The error type of services whose middleware adds errors of its own, as in tower.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The answer to a request a middleware, or the service behind it, refused.
pub(crate) fn error_response(error: BoxError) -> ApiError {
    let error = match error.downcast::<PublishError>() {
        Ok(error) => return ApiError::from(*error),
        Err(error) => error,
    };
    if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
        return ApiError::new(ErrorCode::Overloaded, overloaded.to_string());
    }
    if let Some(elapsed) = error.downcast_ref::<Elapsed>() {
        return ApiError::new(ErrorCode::Unavailable, elapsed.to_string());
    }
    tracing::error!(error = %error, "a request failed unexpectedly");
    ApiError::new(ErrorCode::Internal, "the server failed to answer")
}

#[cfg(test)]
mod tests;

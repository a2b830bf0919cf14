//! Bounds how long a request may take: past the deadline it fails with [`Elapsed`] (and the
//! work behind it is dropped). The timer is armed only if the answer is not ready at once, so a
//! request answered on its first poll (a publish on a single node) never touches the timer
//! wheel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::BoxError;

/// The request took longer than its timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {after:?}; retry later")]
pub(crate) struct Elapsed {
    after: Duration,
}

/// Applies [`Timeout`] to a service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Requests fail with [`Elapsed`] after `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner, timeout: self.timeout }
    }
}

// === impl Timeout ===

/// A service whose requests fail with [`Elapsed`] when the inner service takes too long.
#[derive(Clone, Debug)]
pub(crate) struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture {
            response: self.inner.call(request),
            sleep: None,
            deadline: Instant::now() + self.timeout,
            after: self.timeout,
        }
    }
}

pin_project! {
    /// The inner service's answer, or [`Elapsed`].
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        response: F,
        // Armed when the response is first found not ready.
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        after: Duration,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed { after: *this.after }.into())),
            _ => Poll::Pending,
        }
    }
}

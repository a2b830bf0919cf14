//! A concurrency limit that sheds load: while `max` requests are in flight, the next is refused
//! at once with [`Overloaded`] and counted, instead of waiting for room. A request holds its
//! place until its answer is ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::BoxError;

/// Too many requests were in flight.
#[derive(Debug, thiserror::Error)]
#[error("more than {max} of these requests are in flight; retry later")]
pub(crate) struct Overloaded {
    max: usize,
}

/// Applies [`Shed`] to a service; every service made by one layer shares its limit.
#[derive(Clone, Debug)]
pub(crate) struct ShedLayer {
    in_flight: Arc<Semaphore>,
    max: usize,
    shed: Counter,
}

impl ShedLayer {
    /// At most `max` requests in flight; refused ones are counted in `shed`.
    pub(crate) fn new(max: usize, shed: Counter) -> Self {
        ShedLayer { in_flight: Arc::new(Semaphore::new(max)), max, shed }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed { inner, in_flight: self.in_flight.clone(), max: self.max, shed: self.shed.clone() }
    }
}

// === impl Shed ===

/// A service that refuses requests beyond its limit in flight.
#[derive(Clone, Debug)]
pub(crate) struct Shed<S> {
    inner: S,
    in_flight: Arc<Semaphore>,
    max: usize,
    shed: Counter,
}

impl<S, R> Service<R> for Shed<S>
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
        match self.in_flight.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture::Admitted { response: self.inner.call(request), permit },
            Err(_) => {
                self.shed.increment(1);
                ResponseFuture::Shed { max: self.max }
            }
        }
    }
}

pin_project! {
    /// The inner service's answer, holding the request's place until then; or [`Overloaded`].
    #[project = Projection]
    pub(crate) enum ResponseFuture<F> {
        Admitted {
            #[pin]
            response: F,
            permit: OwnedSemaphorePermit,
        },
        Shed {
            max: usize,
        },
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Admitted { response, .. } => response.poll(cx).map_err(Into::into),
            Projection::Shed { max } => Poll::Ready(Err(Overloaded { max: *max }.into())),
        }
    }
}

//! Counts the requests in flight on one connection, until each response body is dropped (a
//! stream: until it ends), for the connection's idle timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower::Service;

use crate::http::ResponseBody;
use crate::server::conn::{Activity, InFlight};

/// A service whose requests count as in flight on `activity` until their bodies are dropped.
#[derive(Clone)]
pub(crate) struct CountInFlight<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> CountInFlight<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        CountInFlight { inner, activity }
    }
}

impl<S, R> Service<R> for CountInFlight<S>
where
    S: Service<R, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let in_flight = Some(self.activity.enter());
        ResponseFuture { response: self.inner.call(request), in_flight }
    }
}

pin_project! {
    /// The inner service's answer, whose body keeps the request counted.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        response: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.response.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| match in_flight {
            Some(in_flight) => body.holding(in_flight),
            None => body,
        })))
    }
}

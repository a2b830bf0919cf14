//! Counts every answered request in `crier_http_requests_total{route,status}`, by the route
//! the request carries (computed once, when it entered the stack).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::Route;
use crate::metrics::Metrics;
use crate::server::router::Routed;

/// Applies [`RequestMetrics`] to a service.
#[derive(Clone)]
pub(crate) struct RequestMetricsLayer {
    metrics: Arc<Metrics>,
}

impl RequestMetricsLayer {
    /// Counts requests in `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics { inner, metrics: self.metrics.clone() }
    }
}

// === impl RequestMetrics ===

/// A service whose answers are counted by route and status. Requests that end in an error
/// (the connection is dropped, no status is sent) are not counted.
#[derive(Clone)]
pub(crate) struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<Routed<B>> for RequestMetrics<S>
where
    S: Service<Routed<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Routed<B>) -> Self::Future {
        let route = request.route;
        ResponseFuture { response: self.inner.call(request), route, metrics: self.metrics.clone() }
    }
}

pin_project! {
    /// The inner service's answer, counted when it is ready.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        response: F,
        route: Route,
        metrics: Arc<Metrics>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.response.poll(cx));
        if let Ok(response) = &result {
            this.metrics.http_request(this.route.as_str(), response.status().as_u16());
        }
        Poll::Ready(result)
    }
}

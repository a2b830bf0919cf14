//! Cross-origin access to `/sse` and `/publish` (`--cors-origins`): preflights are answered
//! here, before credentials are looked at (a browser sends none with a preflight), and every
//! answer gets the headers that let an allowed page read it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::{CorsPolicy, ResponseBody};
use crate::server::router::Route;

/// Applies [`Cors`] to a service.
#[derive(Clone)]
pub(crate) struct CorsLayer {
    policy: Option<Arc<CorsPolicy>>,
}

impl CorsLayer {
    /// With no policy, requests pass untouched.
    pub(crate) fn new(policy: Option<CorsPolicy>) -> Self {
        CorsLayer { policy: policy.map(Arc::new) }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors { inner, policy: self.policy.clone() }
    }
}

// === impl Cors ===

/// A service whose `/sse` and `/publish` answers carry the CORS headers.
#[derive(Clone)]
pub(crate) struct Cors<S> {
    inner: S,
    policy: Option<Arc<CorsPolicy>>,
}

impl<S, B> Service<Request<B>> for Cors<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let methods = match Route::of(request.uri().path()) {
            Route::Sse => "GET, HEAD, OPTIONS",
            Route::Publish => "POST, OPTIONS",
            Route::Mercure => "GET, HEAD, POST, OPTIONS",
            _ => {
                return ResponseFuture::Plain {
                    response: self.inner.call(request),
                    add: Vec::new(),
                };
            }
        };
        let Some(policy) = &self.policy else {
            return ResponseFuture::Plain { response: self.inner.call(request), add: Vec::new() };
        };
        if CorsPolicy::is_preflight(request.method(), request.headers()) {
            let answer = policy.preflight(request.headers(), methods);
            let answer = answer.unwrap_or_else(|refused| refused.into_response());
            return ResponseFuture::Preflight { response: Some(answer) };
        }
        let add = policy.headers(request.headers().get(header::ORIGIN));
        ResponseFuture::Plain { response: self.inner.call(request), add }
    }
}

pin_project! {
    /// The inner service's answer with the CORS headers added, or a preflight's answer.
    #[project = Projection]
    pub(crate) enum ResponseFuture<F> {
        Plain {
            #[pin]
            response: F,
            add: Vec<(HeaderName, HeaderValue)>,
        },
        Preflight {
            response: Option<Response<ResponseBody>>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Plain { response, add } => {
                let mut response = ready!(response.poll(cx))?;
                for (name, value) in add.drain(..) {
                    response.headers_mut().insert(name, value);
                }
                Poll::Ready(Ok(response))
            }
            Projection::Preflight { response } => {
                Poll::Ready(Ok(response.take().expect("a preflight is polled once it is ready")))
            }
        }
    }
}

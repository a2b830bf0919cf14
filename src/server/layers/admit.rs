//! The admission of hyper's requests: a request to a gated endpoint passes
//! [`Admission::admit`] — the function the fast path calls too — and reaches the service behind
//! as a [`Dispatch`] holding what admission found, or why it refused (the router answers, as a
//! browser's refused WebSocket is upgraded and then closed); a CORS
//! preflight is answered before (a browser sends no credentials with one). Answers to gated
//! endpoints carry their CORS headers. Requests to open endpoints pass untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::{Admission, AdmissionRequest, CorsHeaders, ResponseBody, Route};
use crate::server::router::{Dispatch, Endpoint, Routed};

/// Applies [`Admit`] to a service.
#[derive(Clone)]
pub(crate) struct AdmitLayer {
    admission: Arc<Admission>,
}

impl AdmitLayer {
    pub(crate) fn new(admission: Arc<Admission>) -> Self {
        AdmitLayer { admission }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner, admission: self.admission.clone() }
    }
}

// === impl Admit ===

/// A service that takes only admitted requests to its gated endpoints.
#[derive(Clone)]
pub(crate) struct Admit<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S, B> Service<Routed<B>> for Admit<S>
where
    S: Service<Dispatch<B>, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed<B>) -> Self::Future {
        let Routed { route, conn, request } = routed;
        let gated = match route {
            Route::Open(open) => {
                let dispatch = Dispatch { endpoint: Endpoint::Open(open), conn, request };
                let response = self.inner.call(dispatch);
                return ResponseFuture::Admitted { response, cors: CorsHeaders::default() };
            }
            Route::Gated(gated) => gated,
        };
        let (method, headers) = (request.method(), request.headers());
        if let Some(answer) = self.admission.preflight(gated, method, headers) {
            return ResponseFuture::Answered { response: Some(answer) };
        }
        let asked = AdmissionRequest {
            route: gated,
            remote: conn.remote.ip(),
            method,
            headers,
            query: request.uri().query(),
            host: crate::http::request_host(request.uri(), headers),
        };
        match self.admission.admit(&asked) {
            Ok(admitted) => {
                let cors = admitted.cors.clone();
                let endpoint = Endpoint::Gated(gated, admitted);
                let response = self.inner.call(Dispatch { endpoint, conn, request });
                ResponseFuture::Admitted { response, cors }
            }
            // The router answers: a browser's WebSocket is refused after its upgrade.
            Err(refused) => {
                let cors = refused.cors.clone();
                let endpoint = Endpoint::Refused(gated, refused);
                let response = self.inner.call(Dispatch { endpoint, conn, request });
                ResponseFuture::Admitted { response, cors }
            }
        }
    }
}

pin_project! {
    /// The inner service's answer with its CORS headers, or the answer admission gave.
    #[project = Projection]
    pub(crate) enum ResponseFuture<F> {
        Admitted {
            #[pin]
            response: F,
            cors: CorsHeaders,
        },
        Answered {
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
            Projection::Admitted { response, cors } => {
                let mut response = ready!(response.poll(cx))?;
                cors.apply(response.headers_mut());
                Poll::Ready(Ok(response))
            }
            Projection::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("an answer is polled once it is ready")))
            }
        }
    }
}

//! Who a stream or publish request comes from and what it may do: for `/publish`, `/sse` and
//! `/ws`, the client (through `--trusted-proxies`) and its [`Access`] are added to the
//! request's extensions, or the request is refused before the endpoint sees it: 401 for a
//! refused token, 429 past the client's rate of new streams or its principal's rate of
//! publishes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::{Admitted, ApiError, Gate, ResponseBody};
use crate::server::ConnInfo;
use crate::server::router::Route;

/// Applies [`Authenticate`] to a service.
#[derive(Clone)]
pub(crate) struct AuthenticateLayer {
    gate: Arc<Gate>,
}

impl AuthenticateLayer {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        AuthenticateLayer { gate }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate { inner, gate: self.gate.clone() }
    }
}

// === impl Authenticate ===

/// A service whose stream and publish requests carry their client and [`Access`](crate::auth::Access).
#[derive(Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let route = Route::of(request.uri().path());
        if !matches!(route, Route::Publish | Route::Sse | Route::Ws) {
            return ResponseFuture::Inner { response: self.inner.call(request) };
        }
        let Some(peer) = request.extensions().get::<ConnInfo>().map(|conn| conn.peer) else {
            tracing::error!("a request reached the gate without its connection");
            let refused =
                ApiError::new(crate::http::ErrorCode::Internal, "the server failed to answer");
            return ResponseFuture::Refused { response: Some(refused.into_response()) };
        };
        let client = self.gate.client(peer.ip(), request.headers());
        let admitted =
            self.gate.admit(client, request.headers(), request.uri().query()).and_then(|access| {
                match route {
                    Route::Publish => self.gate.admit_publish(&access, client.ip)?,
                    _ => self.gate.admit_stream(client, false)?,
                }
                let topics = Gate::query_topics(request.uri().query());
                self.gate.admit_topics(client.ip, topics.iter().map(|t| &**t), false)?;
                Ok(access)
            });
        match admitted {
            Ok(access) => {
                request.extensions_mut().insert(Admitted { client, access });
                ResponseFuture::Inner { response: self.inner.call(request) }
            }
            Err(refused) => ResponseFuture::Refused { response: Some(refused.into_response()) },
        }
    }
}

pin_project! {
    /// The inner service's answer, or the refusal.
    #[project = Projection]
    pub(crate) enum ResponseFuture<F> {
        Inner {
            #[pin]
            response: F,
        },
        Refused {
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
            Projection::Inner { response } => response.poll(cx),
            Projection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("a refusal is polled once it is ready")))
            }
        }
    }
}

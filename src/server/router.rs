//! The routing table and the service that dispatches each request to its endpoint: the
//! streaming ones (SSE, WebSocket) to their edges, the others to their services.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tower::{Service, ServiceExt as _};

use super::ConnInfo;
use super::conn::Tracker;
use super::layers::error_response;
use crate::http::{Admitted, ApiError, ErrorCode, ResponseBody, json_response};
use crate::hub::Hub;
use crate::limits::ConnectionSlot;
use crate::mercure::MercureEdge;
use crate::metrics::Metrics;
use crate::sse::SseEdge;
use crate::ws::{Upgrade, WsEdge};

/// An endpoint, by path; its name is the `route` label of `crier_http_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Page,
    Publish,
    Sse,
    Ws,
    WsEcho,
    Healthz,
    Readyz,
    Metrics,
    Mercure,
    NotFound,
}

impl Route {
    /// The endpoint serving `path`.
    pub(crate) fn of(path: &str) -> Route {
        match path {
            "/" => Route::Page,
            "/publish" => Route::Publish,
            "/sse" => Route::Sse,
            "/ws" => Route::Ws,
            "/ws/echo" => Route::WsEcho,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            crate::mercure::HUB_PATH => Route::Mercure,
            path if path.starts_with(crate::mercure::SUBSCRIPTIONS_PATH) => Route::Mercure,
            _ => Route::NotFound,
        }
    }

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Page => "page",
            Route::Publish => "publish",
            Route::Sse => "sse",
            Route::Ws => "ws",
            Route::WsEcho => "ws_echo",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Mercure => "mercure",
            Route::NotFound => "not_found",
        }
    }
}

/// Dispatches requests; `P` serves publishes.
#[derive(Clone)]
pub(crate) struct Router<P> {
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) sse: Arc<SseEdge>,
    pub(super) ws: Arc<WsEdge>,
    pub(super) tracker: Arc<Tracker>,
    pub(super) publish: P,
    /// The Mercure hub, when it is on.
    pub(super) mercure: Option<Arc<MercureEdge>>,
    /// The shutdown signal came (`--drain-delay`): not ready, still serving.
    pub(super) leaving: Arc<std::sync::atomic::AtomicBool>,
}

impl<P> Service<Request<Incoming>> for Router<P>
where
    P: Service<Request<Incoming>, Response = Response<ResponseBody>> + Clone + Send + 'static,
    P::Error: Into<super::layers::BoxError>,
    P::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await.unwrap_or_else(ApiError::into_response)) })
    }
}

impl<P> Router<P>
where
    P: Service<Request<Incoming>, Response = Response<ResponseBody>> + Clone + Send + 'static,
    P::Error: Into<super::layers::BoxError>,
    P::Future: Send,
{
    async fn route(self, mut req: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
        let Some(conn) = req.extensions().get::<ConnInfo>().cloned() else {
            tracing::error!("a request reached the router without its connection");
            return Err(ApiError::new(ErrorCode::Internal, "the server failed to answer"));
        };
        match Route::of(req.uri().path()) {
            Route::Publish => self.publish.oneshot(req).await.map_err(|e| error_response(e.into())),
            Route::Sse => self.sse.respond(conn.control, &req, &gated(&req)?.access).await,
            Route::Ws => {
                let Admitted { access, client } = gated(&req)?.clone();
                let client = client.ip;
                let (response, upgrade) = self.ws.accept(&mut req, access, client).await?;
                self.spawn_session(upgrade, conn.slot);
                Ok(response)
            }
            Route::WsEcho => {
                let (response, upgrade) = self.ws.accept_echo(&mut req)?;
                self.spawn_session(upgrade, conn.slot);
                Ok(response)
            }
            Route::Page => only_get(&req, || Ok(super::page::response())),
            Route::Healthz => {
                only_get(&req, || Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#.into())))
            }
            Route::Readyz => only_get(&req, || self.readyz()),
            Route::Metrics => only_get(&req, || Ok(self.render_metrics())),
            Route::Mercure => match &self.mercure {
                // Boxed: the hub's future is large, and every request's future would carry it.
                Some(mercure) => Ok(Box::pin(mercure.respond(req, conn.control, conn.peer)).await),
                None => Err(ApiError::not_found(req.uri().path())),
            },
            Route::NotFound => Err(ApiError::not_found(req.uri().path())),
        }
    }

    /// Runs a WebSocket once hyper hands its socket over. The session outlives the HTTP
    /// connection's task: it is tracked on its own so shutdown reaches it.
    fn spawn_session(&self, upgrade: Upgrade, slot: Option<Arc<ConnectionSlot>>) {
        let (hub, tracker) = (self.hub.clone(), self.tracker.clone());
        tokio::spawn(async move {
            // The session counts as its client's connection for as long as it lives.
            let _slot = slot;
            let Some(mut session) = upgrade.connect().await else { return };
            let (control, key) = tracker.add();
            if hub.is_draining() {
                session.start_shutdown();
            }
            let drain = |session: Pin<&mut crate::ws::UpgradedConnection>| {
                session.get_mut().start_shutdown()
            };
            super::conn::ControlledConnection::new(session, control, drain).await;
            tracker.remove(key);
        });
    }

    fn readyz(&self) -> Result<Response<ResponseBody>, ApiError> {
        if self.hub.is_draining() || self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::new(ErrorCode::Draining, "the server is shutting down"));
        }
        if !self.hub.is_ready() {
            let detail = "the Redis link is down; the node is reconnecting";
            return Err(ApiError::new(ErrorCode::Unavailable, detail));
        }
        Ok(json_response(StatusCode::OK, r#"{"status":"ready"}"#.into()))
    }

    fn render_metrics(&self) -> Response<ResponseBody> {
        self.metrics.set_tcp_connections(self.tracker.len());
        let mut response = Response::new(ResponseBody::full(self.metrics.render().into()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// What the gate ([`super::layers::Authenticate`]) put in the request's extensions.
fn gated(req: &Request<Incoming>) -> Result<&Admitted, ApiError> {
    req.extensions().get::<Admitted>().ok_or_else(|| {
        tracing::error!("a stream request reached the router without passing the gate");
        ApiError::new(ErrorCode::Internal, "the server failed to answer")
    })
}

fn only_get<B>(
    req: &Request<B>,
    handler: impl FnOnce() -> Result<Response<ResponseBody>, ApiError>,
) -> Result<Response<ResponseBody>, ApiError> {
    match *req.method() {
        // hyper sends no body for HEAD.
        Method::GET | Method::HEAD => handler(),
        _ => Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "GET, HEAD")),
    }
}

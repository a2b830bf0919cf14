//! The HTTP service: routes each request to its endpoint and counts it by route and status.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::error::{ApiError, json_response};
use crate::server::App;
use crate::server::body::ResponseBody;
use crate::server::conn::ConnControl;

/// The service of one connection.
#[derive(Clone)]
pub(super) struct ConnService {
    app: Arc<App>,
    control: Arc<ConnControl>,
    peer: SocketAddr,
}

impl ConnService {
    /// The service for a connection from `peer`.
    pub(super) fn new(app: Arc<App>, control: Arc<ConnControl>, peer: SocketAddr) -> Self {
        ConnService { app, control, peer }
    }

    async fn route(self, mut req: Request<Incoming>) -> Response<ResponseBody> {
        let path = req.uri().path();
        let (route, result) = match path {
            "/publish" => ("publish", self.publish(req).await),
            "/sse" => ("sse", self.sse(&req).await),
            "/healthz" => (
                "healthz",
                only_get(&req, || Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()))),
            ),
            "/readyz" => ("readyz", only_get(&req, || self.readyz())),
            "/metrics" => ("metrics", only_get(&req, || Ok(self.metrics()))),
            "/ws" => ("ws", crate::ws::handle(&self.app, &mut req, self.peer, false).await),
            "/ws/echo" => {
                ("ws_echo", crate::ws::handle(&self.app, &mut req, self.peer, true).await)
            }
            _ => ("not_found", Err(ApiError::not_found(path))),
        };
        let response = result.unwrap_or_else(ApiError::into_response);
        self.app.metrics.http_request(route, response.status().as_u16());
        response
    }

    async fn sse(&self, req: &Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "GET, HEAD"));
        }
        crate::sse::handle(&self.app, self.control.clone(), req).await
    }

    async fn publish(&self, req: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "POST"));
        }
        crate::server::publish::handle(&self.app.hub, self.peer, req).await
    }

    fn readyz(&self) -> Result<Response<ResponseBody>, ApiError> {
        if self.app.hub.is_draining() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the server is shutting down",
            ));
        }
        if !self.app.hub.is_connected() {
            return Err(ApiError::unavailable("the Redis link is down; the node is reconnecting"));
        }
        Ok(json_response(StatusCode::OK, r#"{"status":"ready"}"#.into()))
    }

    fn metrics(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(self.app.metrics.render().into()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
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

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

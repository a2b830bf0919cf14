//! The requests the tower stack carries, and the service at its end that dispatches each to its
//! endpoint: the streaming ones (SSE, WebSocket, the Mercure hub) to their edges, the others to
//! their handlers.
//!
//! A request enters the stack as a [`Routed`] (its route computed once from its path, and the
//! connection it came on) and reaches the router as a [`Dispatch`]: a gated endpoint comes with
//! what admission found ([`Endpoint::Gated`]), so no endpoint can be reached without it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tower::Service;

use super::ConnInfo;
use super::conn::{ConnectionTask, ControlledConnection, Tracker, TrackerEntry};
use super::publish::{self, BodyLimits};
use super::upgraded::UpgradedIo;
use crate::http::{
    Admission, Admitted, ApiError, Asker, ErrorCode, GatedRoute, OpenRoute, PublishPolicy,
    RefusalForm, Refused, ResponseBody, Route, event_stream_response, json_response,
};
use crate::hub::Hub;
use crate::limits::ConnectionSlot;
use crate::mercure::{MercureEdge, MercureRefused};
use crate::metrics::Metrics;
use crate::sse::SseEdge;
use crate::ws::{Connection, Upgrade, WsEdge};

/// A request entering the stack: its route and the connection it came on.
pub(crate) struct Routed<B = Incoming> {
    pub(crate) route: Route,
    pub(crate) conn: ConnInfo,
    pub(crate) request: Request<B>,
}

/// A request past admission, for the router.
pub(crate) struct Dispatch<B = Incoming> {
    pub(crate) endpoint: Endpoint,
    pub(crate) conn: ConnInfo,
    pub(crate) request: Request<B>,
}

/// The endpoint a request is for, with what it takes.
pub(crate) enum Endpoint {
    /// A gated endpoint, and the request's admission.
    Gated(GatedRoute, Admitted),
    /// An open one.
    Open(OpenRoute),
    /// A gated endpoint, and why admission refused the request.
    Refused(GatedRoute, Refused),
}

/// Dispatches requests to their endpoints.
#[derive(Clone)]
pub(crate) struct Router {
    pub(super) hub: Arc<Hub>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) sse: Arc<SseEdge>,
    pub(super) ws: Arc<WsEdge>,
    pub(super) tracker: Arc<Tracker>,
    /// Says how a refusal is answered.
    pub(super) admission: Arc<Admission>,
    /// What every publish passes.
    pub(super) publishing: Arc<PublishPolicy>,
    /// The bounds of a publish's body.
    pub(super) publish_body: BodyLimits,
    /// The Mercure hub, when it is on.
    pub(super) mercure: Option<Arc<MercureEdge>>,
    /// The shutdown signal came (`--drain-delay`): not ready, still serving.
    pub(super) leaving: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<Dispatch> for Router {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dispatch: Dispatch) -> Self::Future {
        // The hot path, boxed on its own: the general future holds every endpoint's state, and
        // moving it costs more than the publish itself.
        if let Dispatch {
            endpoint: Endpoint::Gated(GatedRoute::Publish, admitted), request, ..
        } = dispatch
        {
            let (publishing, limits) = (self.publishing.clone(), self.publish_body);
            return Box::pin(async move {
                Ok(publish::respond(request, &admitted, &publishing, limits).await)
            });
        }
        let this = self.clone();
        Box::pin(async move {
            Ok(this.dispatch(dispatch).await.unwrap_or_else(ApiError::into_response))
        })
    }
}

impl Router {
    async fn dispatch(self, dispatch: Dispatch) -> Result<Response<ResponseBody>, ApiError> {
        let Dispatch { endpoint, conn, mut request } = dispatch;
        match endpoint {
            Endpoint::Gated(GatedRoute::Publish, admitted) => {
                Ok(publish::respond(request, &admitted, &self.publishing, self.publish_body).await)
            }
            Endpoint::Refused(route, refused) => {
                Ok(self.refuse(route, &conn, &mut request, refused))
            }
            Endpoint::Gated(GatedRoute::Sse, admitted) => {
                match self.sse.respond(conn.control.clone(), &request, &admitted).await {
                    Ok(response) => Ok(response),
                    Err(error) => {
                        let refused = Refused::after_admission(error, admitted.peer.ip);
                        Ok(self.refuse(GatedRoute::Sse, &conn, &mut request, refused))
                    }
                }
            }
            Endpoint::Gated(GatedRoute::Ws, admitted) => {
                let peer = admitted.peer.ip;
                match self.ws.accept(&mut request, admitted).await {
                    Ok((response, upgrade)) => {
                        self.spawn_session(upgrade, conn.slot);
                        Ok(response)
                    }
                    Err(error) => {
                        let refused = Refused::after_admission(error, peer);
                        Ok(self.refuse(GatedRoute::Ws, &conn, &mut request, refused))
                    }
                }
            }
            Endpoint::Gated(GatedRoute::Mercure, admitted) => match &self.mercure {
                Some(mercure) => {
                    let asker = Asker::of(GatedRoute::Mercure, request.method(), request.headers());
                    let peer = admitted.peer.ip;
                    // Boxed: the hub's future is large, and every request's future would carry it.
                    let responded = Box::pin(mercure.respond(request, conn.control, &admitted));
                    Ok(responded.await.unwrap_or_else(|refused| {
                        mercure_refusal(&self.admission, refused, asker, peer)
                    }))
                }
                None => Err(ApiError::not_found(request.uri().path())),
            },
            Endpoint::Open(OpenRoute::WsEcho) => {
                let (response, upgrade) = self.ws.accept_echo(&mut request)?;
                self.spawn_session(upgrade, conn.slot);
                Ok(response)
            }
            Endpoint::Gated(GatedRoute::MercureSubscriptions, _) => match &self.mercure {
                Some(mercure) => Ok(Box::pin(mercure.respond_subscriptions(request)).await),
                None => Err(ApiError::not_found(request.uri().path())),
            },
            Endpoint::Open(OpenRoute::Page) => only_get(&request, || Ok(super::page::response())),
            Endpoint::Open(OpenRoute::Healthz) => only_get(&request, || {
                Ok(json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()))
            }),
            Endpoint::Open(OpenRoute::Readyz) => only_get(&request, || self.readyz()),
            Endpoint::Open(OpenRoute::Metrics) => only_get(&request, || Ok(self.render_metrics())),
            Endpoint::Open(OpenRoute::Stats) => {
                only_get(&request, || Ok(json_response(StatusCode::OK, self.metrics.page_stats())))
            }
            Endpoint::Open(OpenRoute::NotFound) => Err(ApiError::not_found(request.uri().path())),
        }
    }

    /// Answers a refused request to `route` as a browser retries it, if it is a browser's and
    /// retrying can help (a stream with a `crier.refused` event, a WebSocket closed 1013), else
    /// as the refusal's status.
    fn refuse(
        &self,
        route: GatedRoute,
        conn: &ConnInfo,
        request: &mut Request<Incoming>,
        refused: Refused,
    ) -> Response<ResponseBody> {
        let mut asker = Asker::of(route, request.method(), request.headers());
        // Only a handshake that would have been accepted is completed to be refused.
        let handshake = match asker {
            Asker::WebSocket => self.ws.validate(request).ok(),
            _ => None,
        };
        if asker == Asker::WebSocket && handshake.is_none() {
            asker = Asker::Other;
        }
        let form = self.admission.refusal_form(refused.peer, &refused.error, asker);
        if let (RefusalForm::WsClose(retry), Some(accept)) = (form, handshake) {
            let (response, refusal) = self.ws.refuse(request, accept, &refused.error, retry);
            // Closed within a second: not a session to track.
            let slot = conn.slot.clone();
            tokio::spawn(async move {
                refusal.run().await;
                drop(slot);
            });
            return response;
        }
        refusal(route, refused, form)
    }

    /// Runs a WebSocket once hyper hands its socket over. The session outlives the HTTP
    /// connection's task: it is tracked on its own so shutdown reaches it.
    fn spawn_session(&self, upgrade: Upgrade, slot: Option<Arc<ConnectionSlot>>) {
        let (hub, tracker) = (self.hub.clone(), self.tracker.clone());
        tokio::spawn(async move {
            let Some(mut session) = Box::pin(upgrade.connect(super::upgraded::io_of)).await else {
                return;
            };
            let (control, key) = tracker.add();
            let entry = TrackerEntry::new(tracker, key);
            if hub.is_draining() {
                session.start_shutdown();
            }
            let drain =
                |session: Pin<&mut Connection<UpgradedIo>>| session.get_mut().start_shutdown();
            // A task of its own, sized to the session, which counts as its client's connection
            // for as long as it lives.
            let session = ControlledConnection::new(session, control, drain);
            tokio::spawn(ConnectionTask::new(session, (slot, entry)));
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

/// The answer to a refused request, as its endpoint answers: a stream a browser retries (the
/// `EventStream` form), or the Mercure hub in plain text, as the reference hub does, and
/// crier's own endpoints with their JSON error; with the CORS headers that let a page read it.
/// The same on the fast path and through hyper.
pub(crate) fn refusal(
    route: GatedRoute,
    refused: Refused,
    form: RefusalForm,
) -> Response<ResponseBody> {
    let Refused { error, cors, .. } = refused;
    let mut response = match (form, route) {
        (RefusalForm::EventStream(retry), _) => event_stream_response(&error, retry),
        (_, GatedRoute::Mercure | GatedRoute::MercureSubscriptions) => {
            crate::mercure::refusal(&error)
        }
        (_, GatedRoute::Publish | GatedRoute::Sse | GatedRoute::Ws) => error.into_response(),
    };
    cors.apply(response.headers_mut());
    response
}

/// The answer to a Mercure subscribe the hub refused: a stream a browser's `EventSource`
/// retries, if retrying can cure the refusal; else the hub's own answer. The same on the fast
/// path and through hyper.
pub(crate) fn mercure_refusal(
    admission: &Admission,
    refused: MercureRefused,
    asker: Asker,
    peer: std::net::IpAddr,
) -> Response<ResponseBody> {
    let Some(error) = refused.retry_later else { return refused.answer };
    match admission.refusal_form(peer, &error, asker) {
        RefusalForm::EventStream(retry) => event_stream_response(&error, retry),
        RefusalForm::WsClose(_) | RefusalForm::Hard => refused.answer,
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

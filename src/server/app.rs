//! Building a node from its configuration: the hub, the one admission and the one publish
//! policy every edge shares, the edges, and the tower stack hyper serves.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tower::ServiceBuilder;

use super::caps::{ConnectionCaps, Refusals};
use super::conn::Tracker;
use super::layers::{self, AdmitLayer, RequestMetricsLayer};
use super::router::Router;
use super::tls::Tls;
use crate::auth::Authority;
use crate::config::Config;
use crate::http::{
    Admission, CorsPolicy, OriginPolicy, PublishLimits, PublishPolicy, Routes, StreamRates,
    WriteOrigins,
};
use crate::hub::Hub;
use crate::mercure::MercureEdge;
use crate::metrics::Metrics;
use crate::sse::{SseEdge, StreamTiming};
use crate::ws::{WsEdge, WsLimits};

/// The tower stack every request through hyper is served by.
pub(super) type Stack = layers::RequestMetrics<layers::Admit<Router>>;

/// A running node: what every connection shares.
pub struct App {
    pub(super) hub: Arc<Hub>,
    /// Which endpoint a path names.
    pub(super) routes: Routes,
    /// What every request to a gated endpoint passes, on the fast path and through hyper.
    pub(super) admission: Arc<Admission>,
    /// What every publish passes, whichever edge it comes from.
    pub(super) publishing: Arc<PublishPolicy>,
    /// The caps on open connections.
    pub(super) caps: ConnectionCaps,
    authority: Arc<Authority>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) config: Config,
    pub(super) sse: Arc<SseEdge>,
    /// The shutdown signal came: `/readyz` answers 503 for `--drain-delay` before the server
    /// stops accepting.
    pub(super) leaving: Arc<AtomicBool>,
    /// TLS, when configured: every connection is served by hyper after the handshake.
    pub(super) tls: Option<Tls>,
    /// The Mercure hub, when it is on.
    pub(super) mercure: Option<Arc<MercureEdge>>,
    /// Every open connection and WebSocket session, for shutdown.
    pub(super) tracker: Arc<Tracker>,
    pub(super) stack: Stack,
    /// The bounds of a publish's body, on the publish fast path and through hyper.
    pub(super) publish_body: super::publish::BodyLimits,
}

impl App {
    /// A fresh node for `config`; in cluster mode its relay starts connecting to Redis (on
    /// the current runtime).
    pub fn new(mut config: Config) -> io::Result<Arc<Self>> {
        for deprecated in config.take_deprecated_names() {
            tracing::warn!("{deprecated}");
        }
        let metrics = Arc::new(Metrics::new());
        let authority = Arc::new(Authority::new(config.auth()).map_err(io::Error::other)?);
        let hub = match config.relay() {
            None => Hub::local(config.hub(), metrics.clone()),
            Some(relay) => {
                Hub::cluster(config.hub(), metrics.clone(), &relay).map_err(io::Error::other)?
            }
        };
        let hub = Arc::new(hub);
        let rates = StreamRates {
            new_streams_per_sec: config.new_streams_per_sec,
            resumes_per_sec: config.resumes_per_sec,
            max_streams_per_ip: config.max_streams_per_ip,
            new_topics_per_sec: config.new_topics_per_sec,
        };
        let origins = OriginPolicy::new(&config.cors_origins);
        let writers = WriteOrigins {
            api: origins.clone(),
            mercure: origins.with(&OriginPolicy::new(&config.mercure_publish_origins)),
        };
        let admission = Arc::new(Admission::new(
            authority.clone(),
            config.trusted_proxies(),
            (CorsPolicy::new(&config.cors_origins), writers),
            metrics.clone(),
            rates,
            hub.clone(),
        ));
        let limits = PublishLimits {
            per_sec: config.publishes_per_sec,
            max_in_flight: config.max_concurrent_publishes as usize,
            timeout: config.publish_timeout,
            idempotency_window: config.idempotency_window,
        };
        let publishing =
            PublishPolicy::new(hub.clone(), admission.clone(), limits, metrics.clone());
        let timing = StreamTiming { retry: config.sse_retry, heartbeat: config.heartbeat };
        let sse = Arc::new(SseEdge::new(hub.clone(), metrics.clone(), timing));
        let limits = WsLimits {
            max_message: config.max_message_bytes,
            heartbeat: config.heartbeat,
            commands_per_sec: config.ws_commands_per_sec,
        };
        let ws = Arc::new(WsEdge::new(
            hub.clone(),
            metrics.clone(),
            admission.clone(),
            publishing.clone(),
            limits,
            origins,
        ));
        let tracker = Arc::new(Tracker::default());
        let leaving = Arc::new(AtomicBool::new(false));
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        let mercure_config = config.mercure();
        let mercure = if mercure_config.is_enabled() {
            let edge = MercureEdge::new(
                mercure_config,
                hub.clone(),
                metrics.clone(),
                publishing.clone(),
                timing,
                config.body_read_timeout,
            );
            Some(edge.map_err(io::Error::other)?)
        } else {
            None
        };
        let publish_body = super::publish::BodyLimits {
            max_event_bytes: config.max_event_bytes,
            timeout: config.body_read_timeout,
            max_batch_bytes: config.max_batch_bytes,
        };
        let router = Router {
            hub: hub.clone(),
            metrics: metrics.clone(),
            sse: sse.clone(),
            ws: ws.clone(),
            tracker: tracker.clone(),
            admission: admission.clone(),
            publishing: publishing.clone(),
            publish_body,
            mercure: mercure.clone(),
            leaving: leaving.clone(),
        };
        let stack = ServiceBuilder::new()
            .layer(RequestMetricsLayer::new(metrics.clone()))
            .layer(AdmitLayer::new(admission.clone()))
            .service(router);
        let routes = Routes { mercure: mercure.is_some() };
        let refusals = Refusals {
            admission: admission.clone(),
            ws,
            routes,
            max_head: config.max_request_head_bytes,
        };
        let caps = ConnectionCaps::new(
            config.max_connections,
            config.max_connections_per_ip,
            metrics.clone(),
            refusals,
        );
        Ok(Arc::new(App {
            hub,
            routes,
            admission,
            publishing,
            caps,
            authority,
            metrics,
            config,
            sse,
            leaving,
            tls,
            mercure,
            tracker,
            stack,
            publish_body,
        }))
    }

    /// Reads the token key files and the TLS certificate again (SIGHUP). Open connections keep
    /// what their tokens granted and the certificate they were opened with; on an error what
    /// is in use stays.
    pub fn reload_credentials(&self) -> io::Result<()> {
        let reloaded = self.authority.reload().map_err(io::Error::other);
        let reloaded = reloaded.and_then(|()| self.tls.as_ref().map_or(Ok(()), Tls::reload));
        self.metrics.credentials_reloaded(reloaded.is_ok());
        reloaded
    }
}

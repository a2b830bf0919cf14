//! The one admission every request to a gated endpoint passes, whichever way it is served (the
//! fast path of a dedicated stream connection, or hyper and the tower stack): who it comes from
//! ([`Peer`], through `--trusted-proxies`), what its token allows ([`Access`]; 401 for a token
//! that is refused, never taken as no token), what its query asks for ([`CrierQuery`]: the
//! topics, read once and checked; 400 for a name that is refused), the new streams its address
//! may open (`--new-streams-per-sec`), the topics it may have the node create
//! (`--new-topics-per-sec`), both 429 with `Retry-After`, and the CORS headers its answer
//! carries (`--cors-origins`).
//!
//! Its output, [`Admitted`], is what a gated endpoint takes: no endpoint can be reached without
//! it, and a refusal ([`Refused`]) carries what the answer needs. A publish's own limits are the
//! [`PublishPolicy`](super::PublishPolicy)'s.
//!
//! Tokens are never logged: refusals are logged with their reason and the peer's address only.

use std::net::IpAddr;
use std::sync::Arc;

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use tokio::time::Instant;

use super::body::ResponseBody;
use super::cors::CorsPolicy;
use super::credentials::request_token;
use super::error::{ApiError, ErrorCode};
use super::peer::{Peer, TrustedProxies};
use super::query::CrierQuery;
use super::route::GatedRoute;
use crate::auth::{Access, Authority, Grant};
use crate::event::TopicName;
use crate::hub::Hub;
use crate::limits::{ClientKey, RateTable};
use crate::metrics::{Metrics, Rejection};

/// The rates admission holds peers to, per address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamRates {
    /// New streams per second.
    pub(crate) new_streams_per_sec: u32,
    /// Topics the node may be made to create per second.
    pub(crate) new_topics_per_sec: u32,
}

/// A request to a gated endpoint, as far as admission reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdmissionRequest<'a> {
    /// The endpoint.
    pub(crate) route: GatedRoute,
    /// The address of the connection's other end (a proxy's, behind one).
    pub(crate) remote: IpAddr,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
}

/// A request admitted: who it comes from and what it may do.
#[derive(Clone, Debug)]
pub(crate) struct Admitted {
    /// Who the request comes from.
    pub(crate) peer: Peer,
    /// What its crier token allows (on the Mercure hub, whose tokens the hub reads itself,
    /// what no token allows).
    pub(crate) access: Access,
    /// What its query asks for: its topics, checked (empty on the Mercure hub, whose query
    /// the hub reads itself).
    pub(crate) query: CrierQuery,
    /// The CORS headers its answer carries.
    pub(crate) cors: CorsHeaders,
}

/// A request refused, with the CORS headers its answer carries (so a page can read why).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) error: ApiError,
    pub(crate) cors: CorsHeaders,
}

/// The CORS headers of an answer: none where answers are not read across origins.
#[derive(Clone, Debug, Default)]
pub(crate) struct CorsHeaders(Vec<(HeaderName, HeaderValue)>);

impl CorsHeaders {
    /// Adds the headers to an answer's.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// What every request to a gated endpoint passes before the endpoint sees it.
pub(crate) struct Admission {
    authority: Arc<Authority>,
    proxies: TrustedProxies,
    cors: Option<CorsPolicy>,
    metrics: Arc<Metrics>,
    rates: StreamRates,
    new_streams: RateTable<ClientKey>,
    new_topics: RateTable<ClientKey>,
    /// Says which topics are new.
    hub: Arc<Hub>,
}

impl Admission {
    pub(crate) fn new(
        authority: Arc<Authority>,
        proxies: TrustedProxies,
        cors: Option<CorsPolicy>,
        metrics: Arc<Metrics>,
        rates: StreamRates,
        hub: Arc<Hub>,
    ) -> Self {
        Admission {
            authority,
            proxies,
            cors,
            metrics,
            rates,
            new_streams: RateTable::per_second(rates.new_streams_per_sec),
            new_topics: RateTable::per_second(rates.new_topics_per_sec),
            hub,
        }
    }

    /// Admits a request, or says why not.
    pub(crate) fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Admitted, Refused> {
        let AdmissionRequest { route, remote, method, headers, query } = *request;
        let peer = self.proxies.peer(remote, headers);
        let cors = self.cors_headers(route, headers);
        let checked = (|| {
            let (access, query) = match route {
                GatedRoute::Mercure | GatedRoute::MercureSubscriptions => {
                    (self.authority.access(None, peer.local), CrierQuery::default())
                }
                GatedRoute::Publish | GatedRoute::Sse | GatedRoute::Ws => {
                    (self.access(peer, headers, query)?, CrierQuery::parse(query)?)
                }
            };
            let opens_stream = match route {
                GatedRoute::Sse | GatedRoute::Ws => true,
                GatedRoute::Mercure => matches!(*method, Method::GET | Method::HEAD),
                GatedRoute::Publish | GatedRoute::MercureSubscriptions => false,
            };
            if opens_stream {
                self.admit_stream(peer)?;
            }
            // A publish's topic is the publish policy's to count.
            if matches!(route, GatedRoute::Sse | GatedRoute::Ws) {
                self.admit_topics(peer.ip, query.topics.iter().map(TopicName::as_str))?;
            }
            Ok((access, query))
        })();
        match checked {
            Ok((access, query)) => Ok(Admitted { peer, access, query, cors }),
            Err(error) => Err(Refused { error, cors }),
        }
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) to
    /// `route`, if the request is one: answered before admission, as a browser sends no
    /// credentials with it. `None` for any other request.
    pub(crate) fn preflight(
        &self,
        route: GatedRoute,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Response<ResponseBody>> {
        let policy = self.cors.as_ref()?;
        let methods = route.cors_methods()?;
        if !CorsPolicy::is_preflight(method, headers) {
            return None;
        }
        Some(policy.preflight(headers, methods).unwrap_or_else(ApiError::into_response))
    }

    fn cors_headers(&self, route: GatedRoute, headers: &HeaderMap) -> CorsHeaders {
        match (&self.cors, route.cors_methods()) {
            (Some(policy), Some(_)) => CorsHeaders(policy.headers(headers.get(header::ORIGIN))),
            _ => CorsHeaders::default(),
        }
    }

    /// What the peer's token allows; 401 if it presents a token that is refused.
    fn access(
        &self,
        peer: Peer,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Access, ApiError> {
        let grant = match request_token(headers, query) {
            Some(token) if self.authority.has_keys() => Some(self.verify(peer.ip, &token)?),
            // With no key there is nothing to verify a token with, and nothing it could allow.
            _ => None,
        };
        Ok(self.authority.access(grant, peer.local))
    }

    /// Admits one more stream (SSE, WebSocket or Mercure) from `peer`: 429 past
    /// `--new-streams-per-sec`.
    fn admit_stream(&self, peer: Peer) -> Result<(), ApiError> {
        self.new_streams.take(&ClientKey::of(peer.ip), Instant::now()).map_err(|wait| {
            self.metrics.rejected(Rejection::StreamRate);
            tracing::debug!(peer = %peer.ip, "new stream over the rate limit");
            let detail = format!(
                "more than {} new streams per second from this address",
                self.rates.new_streams_per_sec
            );
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
        })
    }

    /// Admits a request for `topics` from `peer`: those the node does not hold yet count
    /// against the address's `--new-topics-per-sec` (429 beyond). Also for a WebSocket's
    /// `subscribe` command and for publishes.
    pub(crate) fn admit_topics<'t>(
        &self,
        peer: IpAddr,
        topics: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), ApiError> {
        let new = topics.into_iter().filter(|topic| self.hub.head(topic).is_none()).count();
        if new == 0 {
            return Ok(());
        }
        let new = u32::try_from(new).unwrap_or(u32::MAX);
        self.new_topics.take_n(&ClientKey::of(peer), new, Instant::now()).map_err(|wait| {
            tracing::debug!(%peer, new, "new topics over the rate limit");
            self.too_many_new_topics(wait)
        })
    }

    /// Whether `peer` may start a topic now, taking nothing: for a cluster publish, which
    /// creates no state on this node and learns from Redis whether it started the topic
    /// ([`Admission::charge_new_topic`] then).
    pub(crate) fn may_start_topic(&self, peer: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        self.new_topics
            .check(&ClientKey::of(peer), now)
            .map_err(|wait| self.too_many_new_topics(wait))
    }

    /// The refusal of a topic over `--new-topics-per-sec`, counted; retry after `wait`.
    fn too_many_new_topics(&self, wait: std::time::Duration) -> ApiError {
        self.metrics.rejected(Rejection::TopicRate);
        let detail = format!(
            "more than {} new topics per second from this address",
            self.rates.new_topics_per_sec
        );
        ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
    }

    /// Counts a topic `peer` started (a cluster publish Redis gave the topic's first id).
    pub(crate) fn charge_new_topic(&self, peer: IpAddr) {
        let _ = self.new_topics.take(&ClientKey::of(peer), Instant::now());
    }

    /// Whether `remote` is a trusted proxy (its connections are not counted per address).
    pub(crate) fn is_proxy(&self, remote: IpAddr) -> bool {
        self.proxies.trusts(remote.to_canonical())
    }

    /// Forgets the addresses whose buckets are full again.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        self.new_streams.prune(now);
        self.new_topics.prune(now);
    }

    /// Verifies a token `peer` presented (also a WebSocket `auth` command's); a refusal is
    /// counted and logged.
    pub(crate) fn verify(&self, peer: IpAddr, token: &str) -> Result<Arc<Grant>, ApiError> {
        self.authority.verify(token).map_err(|refused| {
            self.metrics.auth_failed(refused);
            tracing::debug!(reason = refused.as_str(), %peer, "token refused");
            ApiError::from(refused)
        })
    }

    /// Whether tokens are checked at all.
    pub(crate) fn has_keys(&self) -> bool {
        self.authority.has_keys()
    }
}

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
use super::origins::OriginPolicy;
use super::peer::{Peer, TrustedProxies};
use super::query::CrierQuery;
use super::retry_later::{Asker, RefusalForm, SoftRefusals};
use super::route::GatedRoute;
use crate::auth::{Access, Authority, Grant};
use crate::event::EventId;
use crate::event::TopicName;
use crate::hub::Hub;
use crate::limits::{ClientKey, ConnectionCounts, ConnectionSlot, RateTable};
use crate::metrics::{Metrics, Rejection};
use parking_lot::Mutex;

/// The rates admission holds peers to, per address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamRates {
    /// New streams per second.
    pub(crate) new_streams_per_sec: u32,
    /// Resumed streams per second (streams carrying an event id).
    pub(crate) resumes_per_sec: u32,
    /// Streams open at once.
    pub(crate) max_streams_per_ip: u32,
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
    /// The authority the request reached the server as (its own pages' origin).
    pub(crate) host: Option<&'a str>,
}

/// A request admitted: who it comes from and what it may do.
#[derive(Debug)]
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
    /// For a stream, its place among its address's open streams, for the stream to take
    /// and hold as long as it lives ([`Admitted::take_stream_slot`]).
    stream_slot: Mutex<Option<StreamSlot>>,
}

/// A stream's place among its address's open streams (`--max-streams-per-ip`), held by the
/// stream for as long as it lives: inside the stream's own state, since a small allocation
/// of its own, outliving the request's, costs each idle stream a kibibyte of fragmentation.
pub(crate) type StreamSlot = ConnectionSlot;

impl Admitted {
    /// Takes the stream's place among its address's open streams, for the stream to hold.
    pub(crate) fn take_stream_slot(&self) -> Option<StreamSlot> {
        self.stream_slot.lock().take()
    }
}

/// A request refused, with the CORS headers its answer carries (so a page can read why).
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) error: ApiError,
    pub(crate) cors: CorsHeaders,
    /// Who was refused (the client behind a trusted proxy).
    pub(crate) peer: IpAddr,
}

impl Refused {
    /// A request from `peer` refused after admission let it in (its endpoint could not
    /// serve it): the admission's CORS headers go on its answer already.
    pub(crate) fn after_admission(error: ApiError, peer: IpAddr) -> Self {
        Refused { error, cors: CorsHeaders::default(), peer }
    }
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

/// Pages that may publish from another origin.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOrigins {
    /// On crier's API: `--cors-origins`.
    pub(crate) api: OriginPolicy,
    /// On the Mercure hub: those and `--mercure-publish-origins`.
    pub(crate) mercure: OriginPolicy,
}

/// What every request to a gated endpoint passes before the endpoint sees it.
pub(crate) struct Admission {
    authority: Arc<Authority>,
    proxies: TrustedProxies,
    cors: Option<CorsPolicy>,
    /// Pages that may publish from another origin, on crier's API and on the Mercure hub.
    writers: WriteOrigins,
    metrics: Arc<Metrics>,
    rates: StreamRates,
    new_streams: RateTable<ClientKey>,
    resumes: RateTable<ClientKey>,
    /// Open streams per address.
    streams: Arc<ConnectionCounts>,
    new_topics: RateTable<ClientKey>,
    /// The soft refusals each address got lately.
    soft_refusals: SoftRefusals,
    /// Says which topics are new.
    hub: Arc<Hub>,
}

impl Admission {
    pub(crate) fn new(
        authority: Arc<Authority>,
        proxies: TrustedProxies,
        (cors, writers): (Option<CorsPolicy>, WriteOrigins),
        metrics: Arc<Metrics>,
        rates: StreamRates,
        hub: Arc<Hub>,
    ) -> Self {
        Admission {
            authority,
            proxies,
            cors,
            writers,
            metrics,
            rates,
            new_streams: RateTable::per_second(rates.new_streams_per_sec),
            resumes: RateTable::per_second(rates.resumes_per_sec),
            streams: ConnectionCounts::new(rates.max_streams_per_ip),
            new_topics: RateTable::per_second(rates.new_topics_per_sec),
            soft_refusals: SoftRefusals::new(),
            hub,
        }
    }

    /// Admits a request, or says why not.
    pub(crate) fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Admitted, Refused> {
        let AdmissionRequest { route, remote, method, headers, query: raw_query, host } = *request;
        let peer = self.proxies.peer(remote, headers);
        let cors = self.cors_headers(route, headers);
        let checked = (|| {
            // Before anything could authorise it: loopback trust and cookies are a page's too.
            match route {
                GatedRoute::Publish => self.writers.api.check_write(headers, host)?,
                GatedRoute::Mercure if *method == Method::POST => {
                    self.writers.mercure.check_write(headers, host)?;
                }
                _ => {}
            }
            let (access, query) = match route {
                GatedRoute::Mercure | GatedRoute::MercureSubscriptions => {
                    (self.authority.access(None, peer.local), CrierQuery::default())
                }
                GatedRoute::Publish | GatedRoute::Sse | GatedRoute::Ws => {
                    (self.access(peer, headers, raw_query)?, CrierQuery::parse(raw_query)?)
                }
            };
            let opens_stream = match route {
                GatedRoute::Sse | GatedRoute::Ws => true,
                GatedRoute::Mercure => matches!(*method, Method::GET | Method::HEAD),
                GatedRoute::Publish | GatedRoute::MercureSubscriptions => false,
            };
            let stream_slot = match opens_stream {
                true => Some(self.admit_stream(peer, resumes(route, headers, &query, raw_query))?),
                false => None,
            };
            // A publish's topic is the publish policy's to count.
            if matches!(route, GatedRoute::Sse | GatedRoute::Ws) {
                self.admit_topics(peer.ip, query.topics.iter().map(TopicName::as_str))?;
            }
            Ok((access, query, stream_slot))
        })();
        match checked {
            Ok((access, query, stream_slot)) => {
                Ok(Admitted { peer, access, query, cors, stream_slot: Mutex::new(stream_slot) })
            }
            Err(error) => Err(Refused { error, cors, peer: peer.ip }),
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

    /// Admits one more stream (SSE, WebSocket or Mercure) from `peer`, `resumed` (carrying an
    /// event id) or new: 429 past `--max-streams-per-ip` open, and past
    /// `--resumes-per-sec` or `--new-streams-per-sec`. Its place among the address's open
    /// streams, for the stream to hold.
    fn admit_stream(&self, peer: Peer, resumed: bool) -> Result<StreamSlot, ApiError> {
        let key = ClientKey::of(peer.ip);
        let Some(slot) = self.streams.open(key) else {
            self.metrics.rejected(Rejection::StreamsPerIp);
            tracing::debug!(peer = %peer.ip, "refused: at --max-streams-per-ip");
            let detail = format!(
                "{} streams are open from this address already",
                self.rates.max_streams_per_ip
            );
            return Err(ApiError::new(ErrorCode::TooManyStreams, detail));
        };
        let (table, per_sec, what) = match resumed {
            true => (&self.resumes, self.rates.resumes_per_sec, "resumed"),
            false => (&self.new_streams, self.rates.new_streams_per_sec, "new"),
        };
        table.take(&key, Instant::now()).map_err(|wait| {
            self.metrics.rejected(match resumed {
                true => Rejection::ResumeRate,
                false => Rejection::StreamRate,
            });
            tracing::debug!(peer = %peer.ip, what, "stream over the rate limit");
            let detail = format!("more than {per_sec} {what} streams per second from this address");
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait).paced(per_sec)
        })?;
        Ok(slot)
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

    /// Who a request from `remote` with `headers` comes from.
    pub(crate) fn peer(&self, remote: IpAddr, headers: &HeaderMap) -> Peer {
        self.proxies.peer(remote, headers)
    }

    /// Whether `remote` is a trusted proxy (its connections are not counted per address).
    pub(crate) fn is_proxy(&self, remote: IpAddr) -> bool {
        self.proxies.trusts(remote.to_canonical())
    }

    /// Forgets the addresses whose buckets are full again.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        self.new_streams.prune(now);
        self.resumes.prune(now);
        self.new_topics.prune(now);
        self.soft_refusals.prune();
    }

    /// How to answer `error`, refused to `peer`, which asked as `asker`: softly (a stream a
    /// browser retries, a WebSocket closed 1013) for a browser and a temporary refusal, while
    /// the address has soft refusals left; else as the status it is. A soft one is counted.
    pub(crate) fn refusal_form(&self, peer: IpAddr, error: &ApiError, asker: Asker) -> RefusalForm {
        let form = self.soft_refusals.form(peer, error, asker, self.rates.new_streams_per_sec);
        match form {
            RefusalForm::EventStream(_) => self.metrics.soft_refused("sse"),
            RefusalForm::WsClose(_) => self.metrics.soft_refused("ws"),
            RefusalForm::Hard => {}
        }
        form
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

/// Whether a stream request resumes: it carries event ids crier issued (one per topic, for a
/// stream of several), or for the Mercure hub any last event id.
fn resumes(route: GatedRoute, headers: &HeaderMap, query: &CrierQuery, raw: Option<&str>) -> bool {
    let header = headers.get("last-event-id").map(HeaderValue::as_bytes);
    match route {
        GatedRoute::Sse | GatedRoute::Ws => query
            .resume_after(header)
            .ok()
            .flatten()
            .is_some_and(|ids| ids.split(',').all(|id| id.parse::<EventId>().is_ok())),
        GatedRoute::Mercure => {
            header.is_some_and(|id| !id.is_empty())
                || form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                    .any(|(key, value)| key == "lastEventID" && !value.is_empty())
        }
        GatedRoute::Publish | GatedRoute::MercureSubscriptions => false,
    }
}

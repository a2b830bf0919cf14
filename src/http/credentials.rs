//! Where a request's token comes from, and the gate every stream and publish request passes:
//! who the client is ([`TrustedProxies`]) and what its token allows ([`Access`]), or the 401.
//!
//! A token is read from `Authorization: Bearer`, else the `token` query parameter (an
//! `EventSource` cannot set headers), else the `crier_token` cookie. Tokens are never logged:
//! refusals are logged with their reason and the client's address only.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use ::http::{HeaderMap, header};

use tokio::time::Instant;

use super::error::{ApiError, ErrorCode};
use super::peer::{Client, TrustedProxies};
use crate::auth::{Access, Authority, Grant};
use crate::hub::Hub;
use crate::limits::{ClientKey, RateTable};
use crate::metrics::{Metrics, Rejection};

/// The cookie a browser app may carry its token in.
pub(crate) const TOKEN_COOKIE: &str = "crier_token";

/// The query parameter a token may come in.
const TOKEN_PARAM: &str = "token";

/// The token a request presents, if any.
pub(crate) fn request_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    request_token_from(headers, query, TOKEN_PARAM, TOKEN_COOKIE).map(|(token, _)| token)
}

/// Where a request's token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `Authorization: Bearer`.
    Header,
    /// A query parameter.
    Query,
    /// A cookie (which a browser sends by itself, so a state-changing request with it needs
    /// its origin checked).
    Cookie,
}

/// The token a request presents, if any, and where it was: `Authorization: Bearer`, else the
/// query parameter `param`, else the cookie `cookie_name`.
pub(crate) fn request_token_from<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    param: &str,
    cookie_name: &str,
) -> Option<(Cow<'a, str>, TokenSource)> {
    if let Some(bearer) =
        headers.get_all(header::AUTHORIZATION).iter().find_map(|value| bearer(value.as_bytes()))
    {
        return Some((Cow::Borrowed(bearer), TokenSource::Header));
    }
    // Most queries carry no token: look for its name before decoding anything.
    let query =
        query.filter(|query| memchr::memmem::find(query.as_bytes(), param.as_bytes()).is_some());
    if let Some(token) = query.and_then(|query| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == param).map(|(_, v)| v)
    }) {
        return Some((token, TokenSource::Query));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .find_map(|value| cookie(value.as_bytes(), cookie_name))
        .map(|token| (Cow::Borrowed(token), TokenSource::Cookie))
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
fn cookie<'a>(value: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(value).ok()?.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"')).filter(|v| !v.is_empty())
    })
}

/// Who a publish rate is counted for: the token's subject, else the client's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Principal {
    Subject(Box<str>),
    Client(ClientKey),
}

/// The rates the gate holds clients to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    /// New streams per client address per second.
    pub(crate) new_streams_per_sec: u32,
    /// Publishes per principal per second.
    pub(crate) publishes_per_sec: u32,
    /// Topics a client address may have the node create per second.
    pub(crate) new_topics_per_sec: u32,
}

/// A request the gate let through: who it comes from and what it may do (one request
/// extension).
#[derive(Clone, Debug)]
pub(crate) struct Admitted {
    pub(crate) client: Client,
    pub(crate) access: Access,
}

/// What every stream and publish request passes before its endpoint sees it.
pub(crate) struct Gate {
    authority: Arc<Authority>,
    proxies: TrustedProxies,
    metrics: Arc<Metrics>,
    rates: Rates,
    new_streams: RateTable<ClientKey>,
    publishes: RateTable<Principal>,
    new_topics: RateTable<ClientKey>,
    /// Says which topics are new.
    hub: Arc<Hub>,
}

impl Gate {
    pub(crate) fn new(
        authority: Arc<Authority>,
        proxies: TrustedProxies,
        metrics: Arc<Metrics>,
        rates: Rates,
        hub: Arc<Hub>,
    ) -> Self {
        Gate {
            authority,
            proxies,
            metrics,
            rates,
            new_streams: RateTable::per_second(rates.new_streams_per_sec),
            publishes: RateTable::per_second(rates.publishes_per_sec),
            new_topics: RateTable::per_second(rates.new_topics_per_sec),
            hub,
        }
    }

    /// Admits a request for `topics` from `client`: those the node does not hold yet count
    /// against the address's `--new-topics-per-sec` (429 beyond). `quiet` as for
    /// [`Gate::admit_stream`].
    pub(crate) fn admit_topics<'t>(
        &self,
        client: IpAddr,
        topics: impl IntoIterator<Item = &'t str>,
        quiet: bool,
    ) -> Result<(), ApiError> {
        let new = topics.into_iter().filter(|topic| self.hub.head(topic).is_none()).count();
        if new == 0 {
            return Ok(());
        }
        let new = u32::try_from(new).unwrap_or(u32::MAX);
        self.new_topics.take_n(&ClientKey::of(client), new, Instant::now()).map_err(|wait| {
            if !quiet {
                self.metrics.rejected(Rejection::TopicRate);
                tracing::debug!(%client, new, "new topics over the rate limit");
            }
            let detail = format!(
                "more than {} new topics per second from this address",
                self.rates.new_topics_per_sec
            );
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
        })
    }

    /// The `topic` parameters of a query.
    pub(crate) fn query_topics(query: Option<&str>) -> Vec<std::borrow::Cow<'_, str>> {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .filter(|(key, _)| key == "topic")
            .map(|(_, value)| value)
            .collect()
    }

    /// Whether `peer` is a trusted proxy (its connections are not counted per address).
    pub(crate) fn is_proxy(&self, peer: IpAddr) -> bool {
        self.proxies.trusts(peer.to_canonical())
    }

    /// Admits one more stream (SSE or WebSocket) from `client`: 429 past
    /// `--new-streams-per-sec`. `quiet`: neither counted nor logged (a first look whose
    /// refusal is answered, and counted, later).
    pub(crate) fn admit_stream(&self, client: Client, quiet: bool) -> Result<(), ApiError> {
        self.new_streams.take(&ClientKey::of(client.ip), Instant::now()).map_err(|wait| {
            if !quiet {
                self.metrics.rejected(Rejection::StreamRate);
                tracing::debug!(client = %client.ip, "new stream over the rate limit");
            }
            let detail = format!(
                "more than {} new streams per second from this address",
                self.rates.new_streams_per_sec
            );
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
        })
    }

    /// Admits one more publish by whoever `access` and `client` say: 429 past
    /// `--publishes-per-sec`.
    pub(crate) fn admit_publish(&self, access: &Access, client: IpAddr) -> Result<(), ApiError> {
        self.admit_publish_by(access.subject(), client)
    }

    /// Admits one more publish by `subject` (a token's `sub`), else by `client`: 429 past
    /// `--publishes-per-sec`.
    pub(crate) fn admit_publish_by(
        &self,
        subject: Option<&str>,
        client: IpAddr,
    ) -> Result<(), ApiError> {
        let principal = match subject {
            Some(subject) => Principal::Subject(subject.into()),
            None => Principal::Client(ClientKey::of(client)),
        };
        self.publishes.take(&principal, Instant::now()).map_err(|wait| {
            self.metrics.rejected(Rejection::PublishRate);
            tracing::debug!(%client, ?subject, "publish over the rate limit");
            let detail = format!("more than {} publishes per second", self.rates.publishes_per_sec);
            ApiError::new(ErrorCode::RateLimited, detail).retry_after(wait)
        })
    }

    /// Forgets clients whose buckets are full again.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        self.new_streams.prune(now);
        self.publishes.prune(now);
        self.new_topics.prune(now);
    }

    /// The client a request from `peer` comes from.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        self.proxies.client(peer, headers)
    }

    /// What the client of a request may do; 401 if it presents a token that is refused (a bad
    /// token is never taken as no token).
    pub(crate) fn admit(
        &self,
        client: Client,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Access, ApiError> {
        self.admit_with(client, headers, query, |token| self.verify(client.ip, token))
    }

    /// [`Gate::admit`] without counting or logging a refusal: for a first look that hands a
    /// refused request on to be answered (and counted) once.
    pub(crate) fn try_admit(
        &self,
        client: Client,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<Access> {
        self.admit_with(client, headers, query, |token| self.authority.verify(token)).ok()
    }

    fn admit_with<E>(
        &self,
        client: Client,
        headers: &HeaderMap,
        query: Option<&str>,
        verify: impl FnOnce(&str) -> Result<Arc<Grant>, E>,
    ) -> Result<Access, E> {
        let grant = match request_token(headers, query) {
            Some(token) if self.authority.has_keys() => Some(verify(&token)?),
            // With no key there is nothing to verify a token with, and nothing it could allow.
            _ => None,
        };
        Ok(self.authority.access(grant, client.local))
    }

    /// Verifies a token a client presented (also a WebSocket `auth` command's).
    pub(crate) fn verify(&self, client: IpAddr, token: &str) -> Result<Arc<Grant>, ApiError> {
        self.authority.verify(token).map_err(|refused| {
            self.metrics.auth_failed(refused);
            tracing::debug!(reason = refused.as_str(), %client, "token refused");
            ApiError::from(refused)
        })
    }

    /// Whether tokens are checked at all.
    pub(crate) fn has_keys(&self) -> bool {
        self.authority.has_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn the_header_wins_over_the_query_over_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; crier_token=from-cookie"));
        assert_eq!(request_token(&headers, None).as_deref(), Some("from-cookie"));
        assert_eq!(
            request_token(&headers, Some("topic=a&token=from%2Bquery")).as_deref(),
            Some("from+query")
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  from-header "));
        assert_eq!(request_token(&headers, Some("token=q")).as_deref(), Some("from-header"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(request_token(&headers, None).as_deref(), Some("from-cookie"));
        assert_eq!(request_token(&HeaderMap::new(), Some("topic=a")), None);
        assert_eq!(cookie(b"crier_token=\"q\"", TOKEN_COOKIE), Some("q"));
        assert_eq!(cookie(b"xcrier_token=1; crier_token=", TOKEN_COOKIE), None);
    }
}

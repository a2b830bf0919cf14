//! Who may publish and subscribe to the Mercure hub, as the reference hub decides: the token
//! comes from `Authorization: Bearer`, else the `authorization` query parameter, else the
//! `mercureAuthorization` cookie; a publish carrying it in a cookie must come from one of
//! `--mercure-publish-origins` (a page elsewhere cannot publish with the user's cookie). An
//! invalid token is refused even where no token would be accepted.

use http::{HeaderMap, Request, Response, StatusCode, header};

use super::{MercureEdge, text};
use crate::auth::MercureGrant;
use crate::http::{ResponseBody, TokenSource, request_token_from};

/// The query parameter a token may come in.
const TOKEN_PARAM: &str = "authorization";

/// The cookie a token may come in.
const TOKEN_COOKIE: &str = "mercureAuthorization";

/// A refused request: no token where one is needed, or a token that does not verify or allow
/// the request (the reference hub answers them all alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unauthorized;

impl Unauthorized {
    /// The answer: `401 Unauthorized`.
    pub(super) fn response(self) -> Response<ResponseBody> {
        text(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
}

/// What a request's token grants, if it was verified.
pub(super) type Authorized = Result<MercureGrant, Unauthorized>;

impl MercureEdge {
    /// A subscriber's grant: its token's, or none (public updates only) without a subscriber
    /// key or, in anonymous mode, without a token. A refused token is counted and logged.
    pub(super) fn authorize_subscriber<B>(&self, req: &Request<B>) -> Authorized {
        if !self.authority.has_subscriber_key() {
            return Ok(MercureGrant::default());
        }
        match self.token(req)? {
            None if self.config.anonymous => Ok(MercureGrant::default()),
            None => Err(Unauthorized),
            Some((token, _)) => self.authority.verify_subscriber(&token).map_err(|reason| {
                self.metrics.auth_failed(reason);
                let reason = reason.as_str();
                tracing::debug!(reason, "a Mercure subscriber's token was refused");
                Unauthorized
            }),
        }
    }

    /// A publisher's grant: its token must verify and carry `mercure.publish`. Without a
    /// publisher key, only a client on this host may publish (crier's development mode), to
    /// every topic.
    pub(super) fn authorize_publisher<B>(&self, req: &Request<B>, local: bool) -> Authorized {
        if !self.authority.has_publisher_key() {
            if !local {
                return Err(Unauthorized);
            }
            return Ok(MercureGrant {
                publish: Some(vec!["*".to_owned()]),
                ..MercureGrant::default()
            });
        }
        let Some((token, source)) = self.token(req)? else { return Err(Unauthorized) };
        if source == TokenSource::Cookie && !self.origin_may_publish(req.headers()) {
            tracing::debug!("a Mercure publish with a cookie came from an origin not allowed");
            return Err(Unauthorized);
        }
        let grant = self.authority.verify_publisher(&token).map_err(|reason| {
            self.metrics.auth_failed(reason);
            tracing::debug!(reason = reason.as_str(), "a Mercure publisher's token was refused");
            Unauthorized
        })?;
        if grant.publish.is_none() {
            return Err(Unauthorized);
        }
        Ok(grant)
    }

    /// The request's token and where it was; a malformed `Authorization` header is refused.
    fn token<'a, B>(
        &self,
        req: &'a Request<B>,
    ) -> Result<Option<(std::borrow::Cow<'a, str>, TokenSource)>, Unauthorized> {
        let headers = req.headers();
        let found = request_token_from(headers, req.uri().query(), TOKEN_PARAM, TOKEN_COOKIE);
        if headers.contains_key(header::AUTHORIZATION)
            && found.as_ref().is_none_or(|(_, source)| *source != TokenSource::Header)
        {
            return Err(Unauthorized);
        }
        Ok(found)
    }

    /// Whether the `Origin` (else the origin of the `Referer`) is one of
    /// `--mercure-publish-origins`.
    fn origin_may_publish(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = crate::http::page_origin(headers) else { return false };
        let origin = origin.trim_end_matches('/');
        self.config
            .publish_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.trim_end_matches('/') == origin)
    }
}

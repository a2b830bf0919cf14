//! Which web pages may act on the server from another origin: one list (`--cors-origins`) for
//! reading answers, opening WebSockets and writing. A page of the server's own origin always
//! may, and so may any client that is not a page (it sends no `Origin`).
//!
//! A write from a page of another origin is refused whatever authorised it (loopback trust in
//! development, a cookie): a simple cross-origin `POST` needs no preflight, so without this any
//! site the developer visits could publish to their local server.

use ::http::{HeaderMap, header};

use super::error::{ApiError, ErrorCode};

/// Origins allowed to act across origins.
#[derive(Clone, Debug, Default)]
pub(crate) struct OriginPolicy {
    /// `*`: any origin.
    any: bool,
    /// `scheme://host[:port]`, without a trailing `/`.
    origins: Vec<String>,
}

impl OriginPolicy {
    /// The policy for `origins` (`*` for any; empty: the server's own origin only).
    pub(crate) fn new<S: AsRef<str>>(origins: &[S]) -> Self {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.as_ref().trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        OriginPolicy { any: origins.iter().any(|o| o == "*"), origins }
    }

    /// This policy's origins and `more`'s.
    pub(crate) fn with(&self, more: &OriginPolicy) -> Self {
        let mut origins = self.origins.clone();
        origins.extend(more.origins.iter().cloned());
        OriginPolicy { any: self.any || more.any, origins }
    }

    /// Whether a page of `origin` may act on the server reached as `host` (the request's
    /// authority).
    pub(crate) fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        self.any
            || is_same_origin(origin, host)
            || self.origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Refuses a write (a publish) sent by a page of an origin this policy does not allow:
    /// 403 `cross_origin`.
    pub(crate) fn check_write(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<(), ApiError> {
        match page_origin(headers) {
            Some(origin) if !self.allows(&origin, host) => Err(ApiError::new(
                ErrorCode::CrossOrigin,
                format!(
                    "a page of {origin:?} may not publish here: list its origin in --cors-origins"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The origin of the page that sent a request: its `Origin`, else the origin of its `Referer`;
/// `None` for a request no page sent.
pub(crate) fn page_origin(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        // An origin that is not ASCII matches none: it is kept as best it can be shown.
        return Some(String::from_utf8_lossy(origin.as_bytes()).into_owned());
    }
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    referer_origin(referer)
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn referer_origin(url: &str) -> Option<String> {
    // A URI's fragment is not a request target's: drop it before parsing.
    let uri: ::http::Uri = url.split('#').next()?.parse().ok()?;
    Some(format!("{}://{}", uri.scheme()?, uri.authority()?))
}

/// The authority a request reached the server as: the URI's (HTTP/2, absolute form), else its
/// `Host`.
pub(crate) fn request_host<'a>(uri: &'a ::http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|authority| authority.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|host| host.to_str().ok()))
}

/// Whether `origin` names the server reached as `host` (any scheme: behind a proxy that ends
/// TLS, the page is `https` and the request is not).
fn is_same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((_, authority)) = origin.split_once("://") else { return false };
    authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(origin: Option<&'static str>, referer: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        if let Some(referer) = referer {
            headers.insert(header::REFERER, referer.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_write_from_another_origins_page_is_refused_unless_listed() {
        let none = OriginPolicy::new::<&str>(&[]);
        let host = Some("127.0.0.1:8080");
        let refused = |policy: &OriginPolicy, headers: &HeaderMap| {
            policy.check_write(headers, host).err().map(|e| e.code)
        };
        // Not a page, the server's own page, another page.
        assert_eq!(refused(&none, &page(None, None)), None);
        assert_eq!(refused(&none, &page(Some("http://127.0.0.1:8080"), None)), None);
        let evil = page(Some("http://127.0.0.1:9999"), None);
        assert_eq!(refused(&none, &evil), Some(ErrorCode::CrossOrigin));
        // Without `Origin`, the `Referer` says.
        let by_referer = page(None, Some("https://evil.example/x?y#z"));
        assert_eq!(refused(&none, &by_referer), Some(ErrorCode::CrossOrigin));
        assert_eq!(refused(&none, &page(Some("null"), None)), Some(ErrorCode::CrossOrigin));
        let listed = OriginPolicy::new(&["http://127.0.0.1:9999/"]);
        assert_eq!(refused(&listed, &evil), None);
        assert_eq!(refused(&OriginPolicy::new(&["*"]), &by_referer), None);
        assert_eq!(refused(&none.with(&listed), &evil), None);
    }

    #[test]
    fn a_referers_origin_is_its_scheme_and_authority() {
        assert_eq!(
            referer_origin("https://a.example:8443/p?q#f").as_deref(),
            Some("https://a.example:8443")
        );
        assert_eq!(referer_origin("http://a.example").as_deref(), Some("http://a.example"));
        assert_eq!(referer_origin("not a url"), None);
    }
}

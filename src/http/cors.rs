//! Cross-origin requests from browsers (`--cors-origins`) to `/sse` and `/publish`: the headers
//! that let a page on another origin read the answer, and the answer to a preflight. Listed
//! origins may send credentials (the `crier_token` cookie); `*` lets any origin in, without.

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use super::body::ResponseBody;
use super::error::{ApiError, ErrorCode};

/// Request headers a cross-origin page may send.
const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, Last-Event-ID, Idempotency-Key, Cache-Control";

/// Response headers a cross-origin page may read.
const EXPOSE_HEADERS: &str = "Retry-After, Idempotent-Replayed, WWW-Authenticate";

/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// The origins allowed to read answers across origins.
#[derive(Clone, Debug)]
pub(crate) struct CorsPolicy {
    any: bool,
    origins: Vec<String>,
}

impl CorsPolicy {
    /// The policy for `--cors-origins`, or `None` if the list is empty (no cross-origin access).
    pub(crate) fn new(origins: &[String]) -> Option<Self> {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            return None;
        }
        let any = origins.iter().any(|o| o == "*");
        Some(CorsPolicy { any, origins })
    }

    /// The headers to add to an answer to a request from `origin`: none if it is not allowed
    /// (the browser then keeps the answer from the page). `Vary: Origin` always, so caches keep
    /// answers for different origins apart.
    pub(crate) fn headers(&self, origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(header::VARY, HeaderValue::from_static("Origin"))];
        let Some(origin) = origin else { return headers };
        let listed = origin.to_str().is_ok_and(|o| self.origins.iter().any(|allowed| allowed == o));
        if listed {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            let yes = HeaderValue::from_static("true");
            headers.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, yes));
        } else if self.any {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")));
        } else {
            return headers;
        }
        let expose = HeaderValue::from_static(EXPOSE_HEADERS);
        headers.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose));
        headers
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`) for an
    /// endpoint that takes `methods`: 204 with what the page may send, or 403 for an origin
    /// that is not allowed.
    pub(crate) fn preflight(
        &self,
        request: &HeaderMap,
        methods: &'static str,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let headers = self.headers(request.get(header::ORIGIN));
        if !headers.iter().any(|(name, _)| name == header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            let detail = "this origin may not make cross-origin requests (--cors-origins)";
            return Err(ApiError::new(ErrorCode::OriginNotAllowed, detail));
        }
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        for (name, value) in headers {
            out.insert(name, value);
        }
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        Ok(response)
    }

    /// Whether `method` and `headers` make a preflight.
    pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(value: &'static str) -> HeaderValue {
        HeaderValue::from_static(value)
    }

    fn allow_origin(headers: &[(HeaderName, HeaderValue)]) -> Option<&str> {
        headers
            .iter()
            .find(|(name, _)| name == header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|(_, value)| value.to_str().ok())
    }

    #[test]
    fn listed_origins_get_credentials_and_others_nothing() {
        let policy = CorsPolicy::new(&["https://app.example/".into()]).unwrap();
        let listed = policy.headers(Some(&origin("https://app.example")));
        assert_eq!(allow_origin(&listed), Some("https://app.example"));
        assert!(
            listed
                .iter()
                .any(|(n, v)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS && v == "true")
        );
        let other = policy.headers(Some(&origin("https://evil.example")));
        assert_eq!(allow_origin(&other), None);
        assert!(other.iter().any(|(n, v)| n == header::VARY && v == "Origin"));
        assert!(CorsPolicy::new(&[]).is_none());
        let any = CorsPolicy::new(&["*".into()]).unwrap();
        let headers = any.headers(Some(&origin("https://evil.example")));
        assert_eq!(allow_origin(&headers), Some("*"));
        assert!(!headers.iter().any(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn a_preflight_says_what_a_page_may_send() {
        let policy = CorsPolicy::new(&["https://app.example".into()]).unwrap();
        let mut request = HeaderMap::new();
        request.insert(header::ORIGIN, origin("https://app.example"));
        request.insert(header::ACCESS_CONTROL_REQUEST_METHOD, origin("POST"));
        assert!(CorsPolicy::is_preflight(&Method::OPTIONS, &request));
        let answer = policy.preflight(&request, "POST, OPTIONS").unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(answer.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "POST, OPTIONS");
        assert!(
            answer.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
        request.insert(header::ORIGIN, origin("https://evil.example"));
        assert_eq!(
            policy.preflight(&request, "POST").err().map(|e| e.code),
            Some(ErrorCode::OriginNotAllowed)
        );
    }
}

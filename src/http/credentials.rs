//! Where a request's token comes from: `Authorization: Bearer`, else the `token` query
//! parameter (an `EventSource` cannot set headers), else the `crier_token` cookie (the
//! Mercure hub reads its own, by the same rule).

use std::borrow::Cow;

use ::http::{HeaderMap, header};

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

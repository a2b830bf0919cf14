//! The opening handshake (RFC 6455 §4.2), done in the HTTP service: validate the client's
//! request and build the `101 Switching Protocols` answer.
//!
//! Refusals: `400` (`bad_handshake`) for anything that is not a WebSocket handshake, `426` with
//! `Sec-WebSocket-Version: 13` for another protocol version, `403` (`origin_not_allowed`) for an
//! `Origin` outside `--allowed-origins` (requests without `Origin`, which browsers always send,
//! are not checked). Subprotocol: a client offering `crier.v1` in `Sec-WebSocket-Protocol` gets
//! it back; any other offer is answered without a subprotocol, as RFC 6455 allows.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version, header};

use crate::http::{ApiError, ErrorCode, OriginPolicy, ResponseBody};

/// The subprotocol crier speaks, when a client asks for one.
pub(crate) const SUBPROTOCOL: &str = "crier.v1";

/// A valid handshake, ready to be answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Accept {
    /// The `Sec-WebSocket-Accept` value: 28 characters of base64.
    pub(crate) accept: HeaderValue,
    /// The subprotocol to confirm.
    pub(crate) protocol: Option<&'static str>,
}

/// Whether the comma-separated token list in any `name` header contains `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn bad(detail: &str) -> ApiError {
    ApiError::new(ErrorCode::BadHandshake, detail)
}

/// Validates a handshake request.
pub(crate) fn validate(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    origins: &OriginPolicy,
    host: Option<&str>,
) -> Result<Accept, ApiError> {
    if method != Method::GET {
        return Err(bad("a WebSocket handshake is a GET request"));
    }
    if version != Version::HTTP_11 {
        return Err(bad("a WebSocket handshake needs HTTP/1.1"));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad("missing Upgrade: websocket"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad("missing Connection: Upgrade"));
    }
    let version_ok = headers
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_ok {
        let detail = "only WebSocket version 13 is supported";
        return Err(ApiError::new(ErrorCode::UnsupportedVersion, detail));
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        _ => return Err(bad("exactly one Sec-WebSocket-Key is required")),
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes().trim_ascii());
    if decoded.map_or(true, |k| k.len() != 16) {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    // A page sends `Origin` with every handshake; other clients need not.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !origins.allows(&origin, host) {
            return Err(ApiError::new(
                ErrorCode::OriginNotAllowed,
                format!("origin {origin:?} is not in --cors-origins"),
            ));
        }
    }
    let protocol =
        has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL).then_some(SUBPROTOCOL);
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes().trim_ascii());
    let accept = HeaderValue::try_from(accept).expect("base64 is a valid header value");
    Ok(Accept { accept, protocol })
}

/// The `101 Switching Protocols` response.
pub(crate) fn switching_protocols(accept: Accept) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.accept);
    if let Some(protocol) = accept.protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    const HOST: Option<&str> = Some("crier.example");

    fn check(pairs: &[(&'static str, &'static str)]) -> Result<Accept, ApiError> {
        let listed = OriginPolicy::new(&["https://app.example"]);
        validate(&Method::GET, Version::HTTP_11, &headers(pairs), &listed, HOST)
    }

    fn without_list(pairs: &[(&'static str, &'static str)]) -> Result<Accept, ApiError> {
        let own_only = OriginPolicy::default();
        validate(&Method::GET, Version::HTTP_11, &headers(pairs), &own_only, HOST)
    }

    #[test]
    fn the_rfc_sample_key_is_accepted() {
        let accept = check(GOOD).unwrap();
        assert_eq!(accept.protocol, None);
        assert_eq!(accept.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = switching_protocols(accept);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut offered = GOOD.to_vec();
        offered.push(("sec-websocket-protocol", "other, crier.v1"));
        assert_eq!(check(&offered).unwrap().protocol, Some(SUBPROTOCOL));
        offered.push(("origin", "https://app.example"));
        assert!(check(&offered).is_ok());
        assert!(without_list(&offered).is_err(), "an empty list allows the server's own pages");
        let mut own = GOOD.to_vec();
        own.push(("origin", "https://crier.example"));
        assert!(without_list(&own).is_ok());
        assert!(without_list(GOOD).is_ok(), "a client that is no page sends no origin");
    }

    #[test]
    fn every_missing_or_wrong_part_is_refused() {
        let without =
            |name: &str| GOOD.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>();
        for name in ["upgrade", "connection", "sec-websocket-key"] {
            assert_eq!(
                check(&without(name)).unwrap_err().code.status(),
                StatusCode::BAD_REQUEST,
                "{name}"
            );
        }
        let version = check(&without("sec-websocket-version")).unwrap_err();
        assert_eq!(version.code.status(), StatusCode::UPGRADE_REQUIRED);
        let mut old = without("sec-websocket-version");
        old.push(("sec-websocket-version", "8"));
        assert_eq!(check(&old).unwrap_err().code.status(), StatusCode::UPGRADE_REQUIRED);
        let mut short = without("sec-websocket-key");
        short.push(("sec-websocket-key", "c2hvcnQ="));
        assert_eq!(check(&short).unwrap_err().code.status(), StatusCode::BAD_REQUEST);
        let mut foreign = GOOD.to_vec();
        foreign.push(("origin", "https://evil.example"));
        assert_eq!(check(&foreign).unwrap_err().code.status(), StatusCode::FORBIDDEN);
        let none = OriginPolicy::default();
        let post = validate(&Method::POST, Version::HTTP_11, &headers(GOOD), &none, HOST);
        assert_eq!(post.unwrap_err().code.status(), StatusCode::BAD_REQUEST);
        let http10 = validate(&Method::GET, Version::HTTP_10, &headers(GOOD), &none, HOST);
        assert_eq!(http10.unwrap_err().code.status(), StatusCode::BAD_REQUEST);
    }
}

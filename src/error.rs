//! Errors answered to HTTP clients: a status and the JSON body shape used everywhere,
//! `{"error": "<code>", "detail": "<sentence>"}`.

use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::server::body::ResponseBody;

/// A request refused with a JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, such as `bad_topic`.
    pub code: &'static str,
    /// What was wrong, for a human.
    pub detail: String,
    /// A header the answer must carry (`Allow` on a 405, `Sec-WebSocket-Version` on a 426,
    /// `Retry-After` on a 503 from the relay).
    pub extra_header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, code, detail: detail.into(), extra_header: None }
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 405 Method Not Allowed, listing what is allowed.
    pub fn method_not_allowed(method: &http::Method, path: &str, allow: &'static str) -> Self {
        ApiError {
            extra_header: Some((header::ALLOW, HeaderValue::from_static(allow))),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} accepts {allow}, not {method}"),
            )
        }
    }

    /// 503 Service Unavailable: Redis could not serve the request; worth retrying after
    /// `Retry-After`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError {
            extra_header: Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    /// 404 Not Found.
    pub fn not_found(path: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {path}"))
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            detail: &'a str,
        }
        serde_json::to_string(&Body { error: self.code, detail: &self.detail }).unwrap_or_default()
    }

    /// The response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let mut response = json_response(self.status, self.body());
        if let Some((name, value)) = self.extra_header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

//! Errors answered to clients: one table of stable codes, each with its HTTP status, shared by
//! HTTP error bodies `{"error": "<code>", "detail": "<sentence>"}` and WebSocket command
//! replies `{"op":"error","error":"<code>","detail":…}`, and the conversions from the domain
//! errors, so each refusal is worded in one place.

use ::http::{HeaderValue, Method, Response, StatusCode, header};

use super::body::ResponseBody;
use crate::auth::{Denied, TokenError};
use crate::event::NameError;
use crate::hub::{PublishError, SubscribeError};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $code:ident = ($status:ident, $name:literal),)*) => {
        /// A stable, machine-readable error code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum ErrorCode {
            $($(#[$doc])* $code,)*
        }

        impl ErrorCode {
            /// The code as clients see it.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => $name,)*
                }
            }

            /// The HTTP status that goes with it.
            pub(crate) fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$code => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    /// No topic, several where one is expected, or an invalid name.
    BadTopic = (BAD_REQUEST, "bad_topic"),
    /// An invalid event name, or one with the reserved `crier.` prefix.
    BadEventName = (BAD_REQUEST, "bad_event_name"),
    /// Text data that is not UTF-8, or WebSocket data that is not base64.
    BadData = (BAD_REQUEST, "bad_data"),
    /// A request body that could not be read.
    BadBody = (BAD_REQUEST, "bad_body"),
    /// A `format` other than `json` or `raw`.
    BadFormat = (BAD_REQUEST, "bad_format"),
    /// An id crier did not issue, or a cursor for another set of topics.
    BadLastEventId = (BAD_REQUEST, "bad_last_event_id"),
    /// More topics than `--max-topics-per-stream`.
    TooManyTopics = (BAD_REQUEST, "too_many_topics"),
    /// Not a valid WebSocket handshake.
    BadHandshake = (BAD_REQUEST, "bad_handshake"),
    /// A WebSocket command that is not JSON, or misses or mistypes a field.
    BadCommand = (BAD_REQUEST, "bad_command"),
    /// A WebSocket command with an unknown `op`.
    UnknownOp = (BAD_REQUEST, "unknown_op"),
    /// A WebSocket `subscribe` to a topic already followed.
    AlreadySubscribed = (CONFLICT, "already_subscribed"),
    /// A WebSocket `unsubscribe` from a topic not followed.
    NotSubscribed = (CONFLICT, "not_subscribed"),
    /// A token is needed and none was given (the answer carries `WWW-Authenticate: Bearer`).
    Unauthorized = (UNAUTHORIZED, "unauthorized"),
    /// A token was refused: malformed, expired, badly signed… (the answer carries
    /// `WWW-Authenticate: Bearer error="invalid_token"`).
    InvalidToken = (UNAUTHORIZED, "invalid_token"),
    /// The client may not do this (its token does not cover the topic).
    Forbidden = (FORBIDDEN, "forbidden"),
    /// A browser's `Origin` outside `--cors-origins` (a WebSocket, a preflight).
    OriginNotAllowed = (FORBIDDEN, "origin_not_allowed"),
    /// A publish sent by a page of an origin outside `--cors-origins`.
    CrossOrigin = (FORBIDDEN, "cross_origin"),
    /// No such endpoint.
    NotFound = (NOT_FOUND, "not_found"),
    /// The endpoint does not take this method (the answer carries `Allow`).
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "method_not_allowed"),
    /// Event data over `--max-event-bytes`.
    TooLarge = (PAYLOAD_TOO_LARGE, "too_large"),
    /// A WebSocket version other than 13 (the answer carries `Sec-WebSocket-Version: 13`).
    UnsupportedVersion = (UPGRADE_REQUIRED, "unsupported_version"),
    /// Over a rate limit (the answer carries `Retry-After`).
    RateLimited = (TOO_MANY_REQUESTS, "rate_limited"),
    /// More connections from this client than `--max-connections-per-ip`.
    TooManyConnections = (TOO_MANY_REQUESTS, "too_many_connections"),
    /// More open streams from this client than `--max-streams-per-ip`.
    TooManyStreams = (TOO_MANY_REQUESTS, "too_many_streams"),
    /// A request head over `--max-request-head-bytes`.
    HeadTooLarge = (REQUEST_HEADER_FIELDS_TOO_LARGE, "head_too_large"),
    /// A request body slower than `--body-read-timeout` (the connection is closed).
    RequestTimeout = (REQUEST_TIMEOUT, "request_timeout"),
    /// More connections than `--max-connections`; retry after `Retry-After`.
    AtCapacity = (SERVICE_UNAVAILABLE, "at_capacity"),
    /// Redis could not serve the request (nothing was published); retry after `Retry-After`.
    Unavailable = (SERVICE_UNAVAILABLE, "unavailable"),
    /// A cluster publish was sent to Redis and no answer came in time: it may or may not have
    /// been published. Retry with the same `Idempotency-Key` after `Retry-After`.
    OutcomeUnknown = (SERVICE_UNAVAILABLE, "outcome_unknown"),
    /// An `Idempotency-Key` that is not 1–255 visible ASCII characters.
    BadIdempotencyKey = (BAD_REQUEST, "bad_idempotency_key"),
    /// Too many requests of this kind in flight; retry after `Retry-After`.
    Overloaded = (SERVICE_UNAVAILABLE, "overloaded"),
    /// A new topic while the node holds `--max-topics`; retry after `Retry-After` (idle
    /// topics are dropped after `--topic-idle-ttl`).
    TopicLimit = (SERVICE_UNAVAILABLE, "topic_limit"),
    /// The server is draining and takes no new streams.
    ShuttingDown = (SERVICE_UNAVAILABLE, "shutting_down"),
    /// `/readyz` while the server is draining.
    Draining = (SERVICE_UNAVAILABLE, "draining"),
}

/// A request or command refused, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The code, which decides the status.
    pub(crate) code: ErrorCode,
    /// What was wrong, for a human.
    pub(crate) detail: String,
    /// The methods the endpoint takes, for `Allow` on a 405.
    allow: Option<&'static str>,
    /// Seconds to wait before retrying, for `Retry-After` (refusals that have one default to 1).
    retry_after: Option<std::time::Duration>,
    /// The rate the refused budget admits at, per second: refused browsers are told to come
    /// back spread over as long as admitting them takes.
    pace: Option<u32>,
}

impl ApiError {
    /// An error with `code` and `detail`.
    pub(crate) fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError { code, detail: detail.into(), allow: None, retry_after: None, pace: None }
    }

    /// Seconds to wait before retrying, if the refusal says.
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|wait| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }

    /// How long to wait before retrying, as precisely as the refusal knows (1 s if it does
    /// not say).
    pub(crate) fn retry_wait(&self) -> std::time::Duration {
        self.retry_after.unwrap_or(std::time::Duration::from_secs(1))
    }

    /// The same refusal, of a budget admitting `per_sec` a second.
    pub(crate) fn paced(mut self, per_sec: u32) -> Self {
        self.pace = Some(per_sec);
        self
    }

    /// The rate the refused budget admits at, if the refusal says.
    pub(crate) fn pace(&self) -> Option<u32> {
        self.pace
    }

    /// 405: `path` takes only `allow`.
    pub(crate) fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Self {
        let detail = format!("{path} accepts {allow}, not {method}");
        ApiError { allow: Some(allow), ..ApiError::new(ErrorCode::MethodNotAllowed, detail) }
    }

    /// The same refusal, retriable after `wait` (rounded up to whole seconds, at least 1).
    pub(crate) fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// 404 for `path`.
    pub(crate) fn not_found(path: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("no such endpoint: {path}"))
    }

    /// A topic name that was refused.
    pub(crate) fn bad_topic(value: &str, error: NameError) -> Self {
        ApiError::new(ErrorCode::BadTopic, format!("topic {value:?} {error}"))
    }

    /// An event name that was refused.
    pub(crate) fn bad_event_name(value: &str, error: NameError) -> Self {
        ApiError::new(ErrorCode::BadEventName, format!("event name {value:?} {error}"))
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
            detail: &'a str,
        }
        let body = ErrorBody { error: self.code.as_str(), detail: &self.detail };
        serde_json::to_string(&body).expect("two strings serialize to JSON")
    }

    /// `Retry-After`, for the refusals a client may retry.
    fn retry_after_seconds(&self) -> Option<u64> {
        match self.code {
            ErrorCode::Unavailable
            | ErrorCode::OutcomeUnknown
            | ErrorCode::Overloaded
            | ErrorCode::TopicLimit
            | ErrorCode::RateLimited
            | ErrorCode::TooManyConnections
            | ErrorCode::TooManyStreams
            | ErrorCode::AtCapacity => Some(self.retry_after_secs().unwrap_or(1)),
            _ => None,
        }
    }

    /// The whole HTTP/1.1 answer, closing the connection: for refusals made before any request
    /// was read (connection limits, an oversized head).
    pub(crate) fn to_http1(&self) -> Vec<u8> {
        let mut body = self.body();
        body.push('\n');
        let status = self.code.status();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(seconds) = self.retry_after_seconds() {
            head.push_str(&format!("retry-after: {seconds}\r\n"));
        }
        head.push_str("\r\n");
        let mut answer = head.into_bytes();
        answer.extend_from_slice(body.as_bytes());
        answer
    }

    /// The response.
    pub(crate) fn into_response(self) -> Response<ResponseBody> {
        let mut response = json_response(self.code.status(), self.body());
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_seconds() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        match self.code {
            ErrorCode::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ErrorCode::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorCode::InvalidToken => {
                let challenge = HeaderValue::from_static("Bearer error=\"invalid_token\"");
                headers.insert(header::WWW_AUTHENTICATE, challenge);
            }
            ErrorCode::UnsupportedVersion => {
                headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            _ => {}
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<SubscribeError> for ApiError {
    fn from(error: SubscribeError) -> Self {
        let code = match error {
            SubscribeError::NoTopics => ErrorCode::BadTopic,
            SubscribeError::TooManyTopics { .. } => ErrorCode::TooManyTopics,
            SubscribeError::BadId(_) => ErrorCode::BadLastEventId,
            SubscribeError::AlreadySubscribed => ErrorCode::AlreadySubscribed,
            SubscribeError::ShuttingDown => ErrorCode::ShuttingDown,
            SubscribeError::Unavailable(_) => ErrorCode::Unavailable,
            SubscribeError::TopicLimit(_) => ErrorCode::TopicLimit,
        };
        ApiError::new(code, error.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        let code = match error {
            PublishError::TooLarge { .. } => ErrorCode::TooLarge,
            PublishError::Unavailable(_) if error.outcome_unknown() => ErrorCode::OutcomeUnknown,
            PublishError::Unavailable(_) => ErrorCode::Unavailable,
            PublishError::TopicLimit(_) => ErrorCode::TopicLimit,
        };
        ApiError::new(code, error.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(refused: TokenError) -> Self {
        ApiError::new(ErrorCode::InvalidToken, refused.detail())
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        let code = match denied {
            Denied::NoToken { .. } => ErrorCode::Unauthorized,
            Denied::NotCovered { .. } | Denied::FlatClaims { .. } | Denied::NotLocal => {
                ErrorCode::Forbidden
            }
        };
        ApiError::new(code, denied.to_string())
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, mut body: String) -> Response<ResponseBody> {
    // Ends its line, so a shell prompt after `curl` starts on its own.
    body.push('\n');
    let mut response = Response::new(ResponseBody::full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_their_status_and_headers() {
        let unavailable = ApiError::new(ErrorCode::Unavailable, "Redis is away").into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "1");
        let version = ApiError::new(ErrorCode::UnsupportedVersion, "13 only").into_response();
        assert_eq!(version.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(version.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        let method = ApiError::method_not_allowed(&Method::PUT, "/publish", "POST");
        assert_eq!(method.detail, "/publish accepts POST, not PUT");
        let method = method.into_response();
        assert_eq!(
            (method.status().as_u16(), method.headers()[header::ALLOW].as_bytes()),
            (405, &b"POST"[..])
        );
        let refused = ApiError::from(TokenError::Expired).into_response();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer error=\"invalid_token\"");
        let missing = ApiError::new(ErrorCode::Unauthorized, "token please").into_response();
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let draining = ApiError::new(ErrorCode::Draining, "bye").into_response();
        assert!(draining.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_body_is_the_documented_json() {
        let error = ApiError::bad_topic("a b", NameError::BadByte { byte: ' ', index: 1 });
        let body: serde_json::Value = serde_json::from_str(&error.body()).unwrap();
        assert_eq!(body["error"], "bad_topic");
        assert_eq!(
            body["detail"],
            "topic \"a b\" contains ' ' at byte 1; allowed are A-Z a-z 0-9 _ - . : /"
        );
        let too_large = ApiError::from(PublishError::TooLarge { size: 9, max: 4 });
        assert_eq!(too_large.code.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_large.detail, "event data is 9 bytes, the limit is 4");
    }
}

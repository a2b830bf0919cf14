//! What a stream request (`/sse`, `/ws`) asks for: its topics, where to resume, its format;
//! and how a refused subscription is answered.

use http::StatusCode;

use crate::error::ApiError;
use crate::event::TopicName;
use crate::hub::SubscribeError;

/// The query of a stream request.
#[derive(Debug, Default)]
pub(crate) struct StreamQuery {
    /// The `topic` parameters, validated.
    pub(crate) topics: Vec<TopicName>,
    /// The resume position: the `Last-Event-ID` header if present, else `last_event_id`.
    pub(crate) last_event_id: Option<String>,
    /// The `format` parameter (WebSocket).
    pub(crate) format: Option<String>,
}

impl StreamQuery {
    /// Reads a query string and an optional `Last-Event-ID` header.
    pub(crate) fn parse(
        query: Option<&str>,
        last_event_id_header: Option<&[u8]>,
    ) -> Result<Self, ApiError> {
        let mut request = StreamQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "topic" => request.topics.push(TopicName::new(&value).map_err(|e| {
                    ApiError::bad_request("bad_topic", format!("topic {value:?} {e}"))
                })?),
                "last_event_id" if !value.is_empty() => {
                    request.last_event_id = Some(value.into_owned());
                }
                "format" => request.format = Some(value.into_owned()),
                _ => {}
            }
        }
        // A reconnecting EventSource sends the header; it is newer than the id in its URL.
        if let Some(header) = last_event_id_header {
            let value = std::str::from_utf8(header).map_err(|_| {
                ApiError::bad_request("bad_last_event_id", "Last-Event-ID is not valid text")
            })?;
            if !value.is_empty() {
                request.last_event_id = Some(value.to_owned());
            }
        }
        Ok(request)
    }
}

/// The stable error code of a refused subscription.
pub(crate) fn subscribe_error_code(error: &SubscribeError) -> &'static str {
    match error {
        SubscribeError::NoTopics => "bad_topic",
        SubscribeError::TooManyTopics { .. } => "too_many_topics",
        SubscribeError::BadId(_) => "bad_last_event_id",
        SubscribeError::ShuttingDown => "shutting_down",
        SubscribeError::Unavailable(_) => "unavailable",
    }
}

/// The HTTP answer to a refused subscription.
pub(crate) fn subscribe_error(error: SubscribeError) -> ApiError {
    let code = subscribe_error_code(&error);
    match error {
        SubscribeError::NoTopics => {
            ApiError::bad_request(code, "at least one topic query parameter is required")
        }
        SubscribeError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string())
        }
        SubscribeError::Unavailable(e) => ApiError::unavailable(e.to_string()),
        SubscribeError::TooManyTopics { .. } | SubscribeError::BadId(_) => {
            ApiError::bad_request(code, error.to_string())
        }
    }
}

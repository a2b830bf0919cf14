//! What a request's query asks for: a stream's topics, where to resume and its format
//! (`/sse`, `/ws`); a publish's topic and event name (`/publish`).

use super::error::{ApiError, ErrorCode};
use crate::event::{EventName, TopicName};

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
                "topic" => request
                    .topics
                    .push(TopicName::new(&value).map_err(|e| ApiError::bad_topic(&value, e))?),
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
                ApiError::new(ErrorCode::BadLastEventId, "Last-Event-ID is not valid text")
            })?;
            if !value.is_empty() {
                request.last_event_id = Some(value.to_owned());
            }
        }
        Ok(request)
    }
}

/// The query of `POST /publish`: exactly one topic, and an optional event name.
#[derive(Debug)]
pub(crate) struct PublishQuery {
    /// The topic.
    pub(crate) topic: TopicName,
    /// The event name.
    pub(crate) name: Option<EventName>,
}

impl PublishQuery {
    /// Reads a publish's query string.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut topic = None;
        let mut name = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "topic" if topic.is_some() => {
                    return Err(ApiError::new(
                        ErrorCode::BadTopic,
                        "give exactly one topic to publish to",
                    ));
                }
                "topic" => {
                    topic =
                        Some(TopicName::new(&value).map_err(|e| ApiError::bad_topic(&value, e))?);
                }
                "event" => {
                    name = Some(
                        EventName::new(&value).map_err(|e| ApiError::bad_event_name(&value, e))?,
                    );
                }
                _ => {}
            }
        }
        let topic = topic.ok_or_else(|| {
            ApiError::new(ErrorCode::BadTopic, "the topic query parameter is required")
        })?;
        Ok(PublishQuery { topic, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_names_exactly_one_valid_topic() {
        let ok = PublishQuery::parse(Some("topic=a&event=x")).unwrap();
        assert_eq!((ok.topic.as_str(), ok.name.map(|n| n.to_string())), ("a", Some("x".into())));
        let code = |query| PublishQuery::parse(query).unwrap_err().code;
        assert_eq!(code(None), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a&topic=b")), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a%20b")), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a&event=crier.gap")), ErrorCode::BadEventName);
        assert_eq!(code(Some("topic=a&event=")), ErrorCode::BadEventName);
    }

    #[test]
    fn the_last_event_id_header_wins_over_the_query() {
        let query =
            StreamQuery::parse(Some("topic=b&topic=a&last_event_id=x-1&format=raw"), None).unwrap();
        assert_eq!(query.topics.len(), 2);
        assert_eq!(query.last_event_id.as_deref(), Some("x-1"));
        assert_eq!(query.format.as_deref(), Some("raw"));
        let header = StreamQuery::parse(Some("topic=a&last_event_id=x-1"), Some(b"y-2")).unwrap();
        assert_eq!(header.last_event_id.as_deref(), Some("y-2"));
        let bad = StreamQuery::parse(Some("topic=a"), Some(b"\xff")).unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadLastEventId);
    }
}

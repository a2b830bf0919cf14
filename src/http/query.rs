//! What the query of a request to crier's own API asks for, read once, by admission: its
//! topics (`/sse`, `/ws`: those to follow; `/publish`: the one to publish to), an event name
//! (`/publish`), where to resume (`/sse`, `/ws`) and a format (`/ws`). Topics are checked as
//! they are read; the rest by the endpoint that reads it (a stream ignores an `event`).

use super::error::{ApiError, ErrorCode};
use crate::event::{EventName, TopicName};

/// The query of a request to `/publish`, `/sse` or `/ws`.
#[derive(Debug, Default, Clone)]
pub(crate) struct CrierQuery {
    /// The `topic` parameters, in order, validated.
    pub(crate) topics: Vec<TopicName>,
    /// The `event` parameter.
    event: Option<String>,
    /// The `last_event_id` parameter, unless empty.
    pub(crate) last_event_id: Option<String>,
    /// The `format` parameter.
    pub(crate) format: Option<String>,
}

impl CrierQuery {
    /// Reads a query string: 400 for a topic name that is refused.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut read = CrierQuery::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "topic" => read
                    .topics
                    .push(TopicName::new(&value).map_err(|e| ApiError::bad_topic(&value, e))?),
                "event" => read.event = Some(value.into_owned()),
                "last_event_id" if !value.is_empty() => {
                    read.last_event_id = Some(value.into_owned());
                }
                "format" => read.format = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(read)
    }

    /// The one topic a publish names: 400 for none or several.
    pub(crate) fn publish_topic(&self) -> Result<&TopicName, ApiError> {
        match &self.topics[..] {
            [topic] => Ok(topic),
            [] => Err(ApiError::new(ErrorCode::BadTopic, "the topic query parameter is required")),
            _ => Err(ApiError::new(ErrorCode::BadTopic, "give exactly one topic to publish to")),
        }
    }

    /// The event name a publish gives: 400 for one that is refused.
    pub(crate) fn event_name(&self) -> Result<Option<EventName>, ApiError> {
        let Some(value) = &self.event else { return Ok(None) };
        EventName::new(value).map(Some).map_err(|e| ApiError::bad_event_name(value, e))
    }

    /// Where a stream resumes: the `Last-Event-ID` header if present (a reconnecting
    /// `EventSource` sends it, and it is newer than the id in its URL), else `last_event_id`.
    pub(crate) fn resume_after(&self, header: Option<&[u8]>) -> Result<Option<String>, ApiError> {
        if let Some(header) = header {
            let value = std::str::from_utf8(header).map_err(|_| {
                ApiError::new(ErrorCode::BadLastEventId, "Last-Event-ID is not valid text")
            })?;
            if !value.is_empty() {
                return Ok(Some(value.to_owned()));
            }
        }
        Ok(self.last_event_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_names_exactly_one_valid_topic() {
        let ok = CrierQuery::parse(Some("topic=a&event=x")).unwrap();
        assert_eq!(ok.publish_topic().unwrap().as_str(), "a");
        assert_eq!(ok.event_name().unwrap().map(|n| n.to_string()), Some("x".into()));
        let code = |query| {
            match CrierQuery::parse(query) {
                Ok(read) => read.publish_topic().and(read.event_name().map(|_| ())).map(|_| ()),
                Err(refused) => Err(refused),
            }
            .unwrap_err()
            .code
        };
        assert_eq!(code(None), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a&topic=b")), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a%20b")), ErrorCode::BadTopic);
        assert_eq!(code(Some("topic=a&event=crier.gap")), ErrorCode::BadEventName);
        assert_eq!(code(Some("topic=a&event=")), ErrorCode::BadEventName);
    }

    #[test]
    fn the_last_event_id_header_wins_over_the_query() {
        let query =
            CrierQuery::parse(Some("topic=b&topic=a&last_event_id=x-1&format=raw")).unwrap();
        assert_eq!(query.topics.len(), 2);
        assert_eq!(query.resume_after(None).unwrap().as_deref(), Some("x-1"));
        assert_eq!(query.format.as_deref(), Some("raw"));
        assert_eq!(query.resume_after(Some(b"y-2")).unwrap().as_deref(), Some("y-2"));
        assert_eq!(query.resume_after(Some(b"")).unwrap().as_deref(), Some("x-1"));
        let bad = query.resume_after(Some(b"\xff")).unwrap_err();
        assert_eq!(bad.code, ErrorCode::BadLastEventId);
    }
}

//! Batch publishes: many events in one request (`POST /publish` with
//! `Content-Type: application/x-ndjson`, one JSON object per line, or a WebSocket `publish`
//! command whose `events` is an array), under one place among the publishes in flight. Each
//! event is checked and admitted on its own (its topic, what the token allows, its size, the
//! publisher's rate, the topics it may create), so a bad one is refused alone and the others
//! are published, in the batch's order; the answer lists each event's id or error, in order. In
//! cluster mode the events go to Redis together, as one pipeline of the publish script.

use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};
use super::peer::Peer;
use super::publish_policy::{PublishPermit, PublishPolicy};
use crate::auth::Access;
use crate::event::{EventData, EventName, IdempotencyKey, TopicName};
use crate::hub::Published;

/// One event of a batch as the client wrote it.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchEvent {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    data: String,
    /// `"base64"`: `data` is base64 of binary data.
    #[serde(default)]
    encoding: Option<String>,
    /// An idempotency key: a retry with the same key publishes nothing and answers the
    /// first id.
    #[serde(default, alias = "idempotency_key")]
    id: Option<String>,
}

/// What became of one event of a batch.
#[derive(Debug)]
pub(crate) enum BatchOutcome {
    /// Published to `topic` (or an earlier publish's id, same idempotency key).
    Published { topic: TopicName, published: Published },
    /// Refused, alone.
    Refused(ApiError),
}

/// The events of one batch, each read or refused.
pub(crate) type BatchEvents = Vec<Result<BatchEvent, ApiError>>;

/// Reads an NDJSON body: one event per non-blank line, a line that is not one refused alone.
pub(crate) fn parse_ndjson(body: &[u8]) -> BatchEvents {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| {
            serde_json::from_slice(line)
                .map_err(|e| ApiError::new(ErrorCode::BadBody, format!("not an event object: {e}")))
        })
        .collect()
}

/// Checks, admits and publishes every event of a batch by `peer` with `access`; the outcome
/// of each, in order. `Err` only when the batch as a whole cannot be taken (no place in
/// flight).
pub(crate) async fn publish_batch(
    events: BatchEvents,
    publishing: &Arc<PublishPolicy>,
    peer: Peer,
    access: &Access,
    max_event_bytes: usize,
) -> Result<Vec<BatchOutcome>, ApiError> {
    let permit = publishing.admit_batch(peer, access.subject())?;
    let mut outcomes: Vec<Option<BatchOutcome>> = Vec::with_capacity(events.len());
    let mut admitted: Vec<(usize, Ready)> = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let previous = admitted.last().map(|(_, (topic, ..))| topic);
        match event.and_then(|event| admit(event, &permit, access, max_event_bytes, previous)) {
            Ok(ready) => {
                admitted.push((index, ready));
                outcomes.push(None);
            }
            Err(error) => outcomes.push(Some(BatchOutcome::Refused(error))),
        }
    }
    // In their order: a single node publishes each at once; in cluster mode they go to Redis
    // together, in one pipeline, which gives them their ids in that order.
    let (indexes, events): (Vec<usize>, Vec<Ready>) = admitted.into_iter().unzip();
    let published = permit.publish_group(events).await;
    for (index, (topic, answer)) in indexes.into_iter().zip(published) {
        outcomes[index] = Some(match answer {
            Ok(published) => BatchOutcome::Published { topic, published },
            Err(error) => BatchOutcome::Refused(error),
        });
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// An event checked and admitted, ready to publish: topic, name, data, idempotency key.
type Ready = (TopicName, Option<EventName>, EventData, Option<IdempotencyKey>);

/// Checks and admits one event; `previous` is the topic of the event admitted before it.
fn admit(
    event: BatchEvent,
    permit: &PublishPermit,
    access: &Access,
    max_event_bytes: usize,
    previous: Option<&TopicName>,
) -> Result<Ready, ApiError> {
    let BatchEvent { topic, event, data, encoding, id } = event;
    let topic = TopicName::new(&topic).map_err(|e| ApiError::bad_topic(&topic, e))?;
    access.check_publish(topic.as_str())?;
    let name = event
        .map(|e| EventName::new(&e).map_err(|err| ApiError::bad_event_name(&e, err)))
        .transpose()?;
    let data = match encoding.as_deref() {
        None => EventData::from(data),
        Some("base64") => {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(data.as_bytes()).map_err(|e| {
                    ApiError::new(ErrorCode::BadData, format!("data is not base64: {e}"))
                })?;
            EventData::Binary(bytes.into())
        }
        Some(other) => {
            let detail = format!("unknown encoding {other:?}; only \"base64\" is supported");
            return Err(ApiError::new(ErrorCode::BadData, detail));
        }
    };
    if data.len() > max_event_bytes {
        let detail = format!("event data is {} bytes, the limit is {max_event_bytes}", data.len());
        return Err(ApiError::new(ErrorCode::TooLarge, detail));
    }
    let key = id
        .map(|key| {
            IdempotencyKey::new(&key)
                .map_err(|e| ApiError::new(ErrorCode::BadIdempotencyKey, e.to_string()))
        })
        .transpose()?;
    permit.admit_event(&topic, previous == Some(&topic))?;
    Ok((topic, name, data, key))
}

/// The answer's JSON: `{"published":N,"refused":M,"results":[…]}`, each result
/// `{"topic":"T","id":"…"}` (with `"replayed":true` for an earlier publish's id) or
/// `{"index":I,"error":"code","detail":"…"}`, in the batch's order; `lead` is members the
/// object starts with (each followed by a comma). Written directly: the results of a large
/// batch are most of its answer, and topic names, ids and error codes hold no character
/// JSON escapes (their alphabets say so).
pub(crate) fn answer_json(outcomes: &[BatchOutcome], lead: &str) -> String {
    use std::fmt::Write as _;
    let published =
        outcomes.iter().filter(|outcome| matches!(outcome, BatchOutcome::Published { .. })).count();
    let refused = outcomes.len() - published;
    let mut out = String::with_capacity(64 + lead.len() + outcomes.len() * 64);
    out.push('{');
    out.push_str(lead);
    let _ = write!(out, r#""published":{published},"refused":{refused},"results":["#);
    for (index, outcome) in outcomes.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        match outcome {
            BatchOutcome::Published { topic, published } => {
                out.push_str(r#"{"topic":""#);
                out.push_str(topic.as_str());
                out.push_str(r#"","id":""#);
                published.id.push_to(&mut out);
                out.push_str(if published.replayed { r#"","replayed":true}"# } else { r#""}"# });
            }
            BatchOutcome::Refused(error) => {
                let code = error.code.as_str();
                let _ = write!(out, r#"{{"index":{index},"error":"{code}","detail":"#);
                out.push_str(&serde_json::Value::from(error.detail.as_str()).to_string());
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_json_with_each_outcome_in_order() {
        use crate::event::EventId;
        let epoch = crate::event::Epoch::from_u64(42).expect("an epoch");
        let id = |seq| EventId { epoch, seq };
        let topic = TopicName::new("a/b").expect("a topic");
        let outcomes = [
            BatchOutcome::Published {
                topic: topic.clone(),
                published: Published { id: id(7), replayed: false },
            },
            BatchOutcome::Refused(ApiError::new(ErrorCode::BadData, "a \"quoted\"\nline")),
            BatchOutcome::Published { topic, published: Published { id: id(9), replayed: true } },
        ];
        let answer = answer_json(&outcomes, r#""op":"ok","#);
        let parsed: serde_json::Value = serde_json::from_str(&answer).expect(&answer);
        assert_eq!(
            parsed,
            serde_json::json!({
                "op": "ok", "published": 2, "refused": 1,
                "results": [
                    {"topic": "a/b", "id": id(7).to_string()},
                    {"index": 1, "error": "bad_data", "detail": "a \"quoted\"\nline"},
                    {"topic": "a/b", "id": id(9).to_string(), "replayed": true},
                ]
            })
        );
        assert_eq!(answer_json(&[], ""), r#"{"published":0,"refused":0,"results":[]}"#);
    }

    #[test]
    fn each_line_is_an_event_or_refused_alone() {
        let body = b"{\"topic\":\"a\",\"data\":\"x\"}\n\nnot json\n{\"topic\":\"b\",\"data\":\"y\",\"id\":\"k\"}\n  \n{\"topic\":\"c\",\"data\":\"z\",\"extra\":1}";
        let events = parse_ndjson(body);
        assert_eq!(events.len(), 4, "blank lines are no events");
        assert!(events[0].as_ref().is_ok_and(|e| e.topic == "a" && e.data == "x"));
        assert!(events[1].is_err());
        assert!(events[2].as_ref().is_ok_and(|e| e.id.as_deref() == Some("k")));
        assert!(events[3].is_err(), "an unknown field is refused");
    }
}

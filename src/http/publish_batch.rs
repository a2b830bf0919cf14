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
    let mut admitted = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        match event.and_then(|event| admit(event, &permit, access, max_event_bytes)) {
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

fn admit(
    event: BatchEvent,
    permit: &PublishPermit,
    access: &Access,
    max_event_bytes: usize,
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
    permit.admit_event(&topic)?;
    Ok((topic, name, data, key))
}

/// The answer's JSON: `{"published":N,"refused":M,"results":[…]}`, each result
/// `{"topic":"T","id":"…"}` (with `"replayed":true` for an earlier publish's id) or
/// `{"index":I,"error":"code","detail":"…"}`, in the batch's order.
pub(crate) fn answer_json(outcomes: &[BatchOutcome]) -> serde_json::Value {
    use serde_json::json;
    let mut published = 0;
    let results: Vec<serde_json::Value> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            BatchOutcome::Published { topic, published: done } => {
                published += 1;
                let mut result = json!({"topic": topic.as_str(), "id": done.id.to_string()});
                if done.replayed {
                    result["replayed"] = json!(true);
                }
                result
            }
            BatchOutcome::Refused(error) => {
                json!({"index": index, "error": error.code.as_str(), "detail": error.detail})
            }
        })
        .collect();
    json!({"published": published, "refused": outcomes.len() - published, "results": results})
}

#[cfg(test)]
mod tests {
    use super::*;

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

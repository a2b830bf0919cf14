//! The JSON commands a client sends on `/ws`, and crier's replies.
//!
//! ```text
//! {"op":"subscribe","topic":"T","last_event_id":"…"?,"ref":…?}
//! {"op":"unsubscribe","topic":"T","ref":…?}
//! {"op":"publish","topic":"T","event":"NAME"?,"data":"…","encoding":"base64"?,"idempotency_key":"…"?,"ref":…?}
//! {"op":"publish","events":[{"topic":"T","event":"NAME"?,"data":"…","encoding":"base64"?,"id":"…"?},…],"ref":…?}
//! {"op":"ping","ref":…?}
//! {"op":"auth","token":"…","ref":…?}
//! ```
//!
//! Each is answered by `{"op":"ok","ref":…,…}` or `{"op":"error","ref":…,"error":"<code>",
//! "detail":"…"}`; `ref` is echoed when given, whatever JSON value it is.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec::ws::{OP_TEXT, encode};
use crate::http::{ApiError, BatchEvent, BatchEvents, ErrorCode};

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Follow a topic, optionally resuming after an id.
    Subscribe {
        /// The topic.
        topic: String,
        /// Resume after this id.
        last_event_id: Option<String>,
    },
    /// Stop following a topic.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// Publish an event.
    Publish {
        /// The topic.
        topic: String,
        /// The event name.
        event: Option<String>,
        /// The data (base64 text when `binary`).
        data: String,
        /// The data is base64 of binary data.
        binary: bool,
        /// A retry with the same key publishes nothing and answers the first id.
        idempotency_key: Option<String>,
    },
    /// Publish a batch of events, each checked on its own (a bad one is refused alone).
    PublishBatch(BatchEvents),
    /// Answered with `ok`: lets a client check the connection end to end.
    Ping,
    /// Present a token: what it grants replaces what the connection had, and its `exp` is
    /// when the connection closes unless another `auth` comes first.
    Auth {
        /// The token.
        token: String,
    },
}

fn bad_command(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadCommand, detail)
}

/// Parses a text message as a command; the `ref` is returned whether or not the rest is valid.
pub(crate) fn parse(text: &[u8]) -> (Option<Value>, Result<Command, ApiError>) {
    let value: Value = match serde_json::from_slice(text) {
        Ok(value) => value,
        Err(e) => return (None, Err(bad_command(format!("not JSON: {e}")))),
    };
    let Value::Object(mut fields) = value else {
        return (None, Err(bad_command("a command is a JSON object")));
    };
    let reference = fields.remove("ref");
    (reference, command(&fields))
}

fn command(fields: &serde_json::Map<String, Value>) -> Result<Command, ApiError> {
    let string = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad_command(format!("\"{name}\" must be a string"))),
    };
    let required =
        |name: &str| string(name)?.ok_or_else(|| bad_command(format!("\"{name}\" is required")));
    match fields.get("op") {
        Some(Value::String(op)) => match op.as_str() {
            "subscribe" => Ok(Command::Subscribe {
                topic: required("topic")?,
                last_event_id: string("last_event_id")?,
            }),
            "unsubscribe" => Ok(Command::Unsubscribe { topic: required("topic")? }),
            "publish" if fields.contains_key("events") => {
                let Some(Value::Array(events)) = fields.get("events") else {
                    return Err(bad_command("\"events\" must be an array of events"));
                };
                let events = events
                    .iter()
                    .map(|event| {
                        BatchEvent::deserialize(event)
                            .map_err(|e| bad_command(format!("not an event object: {e}")))
                    })
                    .collect();
                Ok(Command::PublishBatch(events))
            }
            "publish" => {
                let binary = match string("encoding")?.as_deref() {
                    None => false,
                    Some("base64") => true,
                    Some(other) => {
                        return Err(bad_command(format!(
                            "unknown encoding {other:?}; only \"base64\" is supported"
                        )));
                    }
                };
                Ok(Command::Publish {
                    topic: required("topic")?,
                    event: string("event")?,
                    data: required("data")?,
                    binary,
                    idempotency_key: string("idempotency_key")?,
                })
            }
            "ping" => Ok(Command::Ping),
            "auth" => Ok(Command::Auth { token: required("token")? }),
            other => Err(ApiError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}; expected subscribe, unsubscribe, publish, ping or auth"
                ),
            )),
        },
        Some(_) => Err(bad_command("\"op\" must be a string")),
        None => Err(bad_command("\"op\" is required")),
    }
}

/// A reply, serialized with `op` first and absent fields left out.
#[derive(Serialize, Default)]
pub(crate) struct Reply<'a> {
    op: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl<'a> Reply<'a> {
    /// An `ok` reply.
    pub(crate) fn ok(reference: Option<&'a Value>) -> Self {
        Reply { op: "ok", reference, ..Reply::default() }
    }

    /// An `error` reply.
    pub(crate) fn error(reference: Option<&'a Value>, refused: &'a ApiError) -> Self {
        Reply {
            op: "error",
            reference,
            error: Some(refused.code.as_str()),
            detail: Some(&refused.detail),
            ..Reply::default()
        }
    }

    /// Adds the topic.
    pub(crate) fn topic(mut self, topic: &'a str) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Adds the id of a published event.
    pub(crate) fn id(mut self, id: String) -> Self {
        self.id = Some(id);
        self
    }

    /// Marks the id as an earlier publish's (same idempotency key).
    pub(crate) fn replayed(mut self, replayed: bool) -> Self {
        self.replayed = replayed;
        self
    }

    /// Adds the position a subscription starts after.
    pub(crate) fn position(mut self, position: String) -> Self {
        self.position = Some(position);
        self
    }

    /// The reply as a text frame.
    pub(crate) fn frame(&self) -> Bytes {
        encode(OP_TEXT, self.json().as_bytes())
    }

    /// The reply as the reason of a close frame, at most `max` bytes of JSON: the detail is
    /// left out if it does not fit, then the `ref`.
    pub(crate) fn close_reason(mut self, max: usize) -> String {
        let mut reason = self.json();
        if reason.len() > max {
            self.detail = None;
            reason = self.json();
        }
        if reason.len() > max {
            self.reference = None;
            reason = self.json();
        }
        reason
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("strings and JSON values serialize to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_ref() {
        let (reference, command) =
            parse(br#"{"op":"subscribe","topic":"a","last_event_id":"x-1","ref":7}"#);
        assert_eq!(reference, Some(Value::from(7)));
        assert_eq!(
            command,
            Ok(Command::Subscribe { topic: "a".into(), last_event_id: Some("x-1".into()) })
        );
        let (_, command) =
            parse(br#"{"op":"publish","topic":"a","data":"AAE=","encoding":"base64"}"#);
        assert_eq!(
            command,
            Ok(Command::Publish {
                topic: "a".into(),
                event: None,
                data: "AAE=".into(),
                binary: true,
                idempotency_key: None,
            })
        );
        assert_eq!(parse(br#"{"op":"ping","ref":{"k":[1]}}"#).1, Ok(Command::Ping));
        assert_eq!(
            parse(br#"{"op":"auth","token":"a.b.c"}"#).1,
            Ok(Command::Auth { token: "a.b.c".into() })
        );
    }

    #[test]
    fn malformed_commands_are_refused_but_keep_their_ref() {
        let code = |text: &[u8]| parse(text).1.unwrap_err().code.as_str();
        assert_eq!(code(b"not json"), "bad_command");
        assert_eq!(code(b"[1]"), "bad_command");
        assert_eq!(code(br#"{"topic":"a"}"#), "bad_command");
        assert_eq!(code(br#"{"op":5}"#), "bad_command");
        assert_eq!(code(br#"{"op":"dance"}"#), "unknown_op");
        assert_eq!(code(br#"{"op":"subscribe"}"#), "bad_command");
        assert_eq!(code(br#"{"op":"subscribe","topic":3}"#), "bad_command");
        assert_eq!(code(br#"{"op":"auth"}"#), "bad_command");
        assert_eq!(
            code(br#"{"op":"publish","topic":"a","data":"x","encoding":"hex"}"#),
            "bad_command"
        );
        assert_eq!(parse(br#"{"op":"dance","ref":"r1"}"#).0, Some(Value::from("r1")));
    }

    #[test]
    fn replies_put_op_first_and_skip_absent_fields() {
        let reference = Value::from("r");
        let ok = Reply::ok(Some(&reference)).topic("a").id("e-1".into()).frame();
        assert_eq!(&ok[2..], br#"{"op":"ok","ref":"r","topic":"a","id":"e-1"}"#);
        let refused = ApiError::new(ErrorCode::BadTopic, "nope");
        let error = Reply::error(None, &refused).frame();
        assert_eq!(&error[2..], br#"{"op":"error","error":"bad_topic","detail":"nope"}"#);
    }

    #[test]
    fn a_close_reason_leaves_out_the_detail_then_the_ref_to_fit() {
        let reference = Value::from("r");
        let short = ApiError::new(ErrorCode::BadTopic, "nope");
        assert_eq!(
            Reply::error(Some(&reference), &short).close_reason(123),
            r#"{"op":"error","ref":"r","error":"bad_topic","detail":"nope"}"#
        );
        let long = ApiError::new(ErrorCode::BadTopic, "x".repeat(100));
        assert_eq!(
            Reply::error(Some(&reference), &long).close_reason(123),
            r#"{"op":"error","ref":"r","error":"bad_topic"}"#
        );
        let long_ref = Value::from("r".repeat(100));
        assert_eq!(
            Reply::error(Some(&long_ref), &long).close_reason(123),
            r#"{"op":"error","error":"bad_topic"}"#
        );
    }
}

//! `POST /publish?topic=T[&event=NAME]`: the HTTP side of a publish. It checks the request
//! (method, query, `Idempotency-Key`, what the token allows), takes the publish policy's permit
//! before reading the body (so bodies in memory are bounded by the publishes in flight), and
//! answers with the event's id or the error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::event::{EventData, IdempotencyKey, MAX_EVENT_ID_LEN, TopicName};
use crate::http::{
    Admitted, ApiError, ErrorCode, PublishPolicy, ResponseBody, json_response, read_body,
};
use crate::hub::Published;

use super::publish_path::HeldBody;

/// Named once: a header looked up by its text is parsed and checked on every request.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The bounds of a publish's body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimits {
    /// `--max-event-bytes`.
    pub(crate) max_event_bytes: usize,
    /// Longest the body may take to arrive (`--body-read-timeout`).
    pub(crate) timeout: Duration,
    /// `--max-batch-bytes`: the largest body of a batch of events.
    pub(crate) max_batch_bytes: usize,
}

/// A publish request as its handler reads it, from hyper or from the fast path.
pub(crate) struct PublishRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: PublishBody<'a>,
}

/// A publish's body, read once the publish is allowed (so that bodies in memory are bounded
/// by the publishes in flight): hyper's, or one on the publish fast path's connection.
pub(crate) enum PublishBody<'c> {
    Incoming(Incoming),
    Held(HeldBody<'c>),
}

impl PublishBody<'_> {
    async fn read(
        self,
        headers: &HeaderMap,
        max: usize,
        limits: BodyLimits,
        publishing: &PublishPolicy,
    ) -> Result<Bytes, ApiError> {
        match self {
            PublishBody::Incoming(body) => {
                read_body(headers, body, max, limits.timeout, publishing.metrics()).await
            }
            PublishBody::Held(body) => body.read(max, limits.timeout, publishing.metrics()).await,
        }
    }
}

/// Answers an admitted publish request through hyper.
pub(crate) async fn respond(
    req: Request<Incoming>,
    admitted: &Admitted,
    publishing: &Arc<PublishPolicy>,
    limits: BodyLimits,
) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let request = PublishRequest {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        body: PublishBody::Incoming(body),
    };
    respond_to(request, admitted, publishing, limits).await
}

/// Answers an admitted publish request.
pub(crate) async fn respond_to(
    request: PublishRequest<'_>,
    admitted: &Admitted,
    publishing: &Arc<PublishPolicy>,
    limits: BodyLimits,
) -> Response<ResponseBody> {
    publish(request, admitted, publishing, limits).await.unwrap_or_else(ApiError::into_response)
}

async fn publish(
    req: PublishRequest<'_>,
    admitted: &Admitted,
    publishing: &Arc<PublishPolicy>,
    limits: BodyLimits,
) -> Result<Response<ResponseBody>, ApiError> {
    if *req.method != Method::POST {
        return Err(ApiError::method_not_allowed(req.method, req.path, "POST"));
    }
    if is_ndjson(req.headers.get(header::CONTENT_TYPE)) {
        return publish_batch(req, admitted, publishing, limits).await;
    }
    let topic = admitted.query.publish_topic()?.clone();
    let name = admitted.query.event_name()?;
    let idempotency_key = match req.headers.get(&IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value.to_str().ok().and_then(|key| IdempotencyKey::new(key).ok()).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadIdempotencyKey,
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?,
        ),
    };
    admitted.access.check_publish(topic.as_str())?;
    let permit = publishing.admit(admitted.peer, admitted.access.subject(), &topic)?;
    let binary = is_binary(req.headers.get(header::CONTENT_TYPE));
    let body = req.body.read(req.headers, limits.max_event_bytes, limits, publishing).await?;
    let data = if binary {
        EventData::Binary(body)
    } else {
        EventData::text(body).map_err(|_| {
            ApiError::new(
                ErrorCode::BadData,
                "event data is not valid UTF-8; send binary data with Content-Type: application/octet-stream",
            )
        })?
    };
    let published = permit.publish(topic.clone(), name, data, idempotency_key).await?;
    Ok(published_response(&topic, published))
}

/// A batch: one event per line; `200` with each event's id or error, in order.
async fn publish_batch(
    req: PublishRequest<'_>,
    admitted: &Admitted,
    publishing: &Arc<PublishPolicy>,
    limits: BodyLimits,
) -> Result<Response<ResponseBody>, ApiError> {
    let body = req.body.read(req.headers, limits.max_batch_bytes, limits, publishing).await?;
    let events = crate::http::parse_ndjson(&body);
    let (peer, access) = (admitted.peer, &admitted.access);
    let outcomes =
        crate::http::publish_batch(events, publishing, peer, access, limits.max_event_bytes)
            .await?;
    let body = crate::http::answer_json(&outcomes, "");
    Ok(json_response(StatusCode::OK, body))
}

/// `200 {"topic":"T","id":"<id>"}`, with `Idempotent-Replayed: true` when the id is an earlier
/// publish's (same idempotency key: nothing was published).
fn published_response(topic: &TopicName, done: Published) -> Response<ResponseBody> {
    // Written directly: a topic name and an id hold no character JSON escapes (their alphabets
    // say so), and this answer is on every publish's path.
    // With room for the id and the newline the answer ends with.
    let mut body = String::with_capacity(24 + topic.as_str().len() + MAX_EVENT_ID_LEN);
    body.push_str(r#"{"topic":""#);
    body.push_str(topic.as_str());
    body.push_str(r#"","id":""#);
    done.id.push_to(&mut body);
    body.push_str(r#""}"#);
    let mut response = json_response(StatusCode::OK, body);
    if done.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", http::HeaderValue::from_static("true"));
    }
    response
}

fn is_ndjson(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

fn is_binary(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/octet-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_stream_marks_binary() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_binary(Some(&v("application/octet-stream"))));
        assert!(is_binary(Some(&v("Application/Octet-Stream; x=y"))));
        assert!(!is_binary(Some(&v("text/plain"))));
        assert!(!is_binary(None));
    }
}

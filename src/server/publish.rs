//! `POST /publish?topic=T[&event=NAME]`: the HTTP publish endpoint. [`PublishEndpoint`] reads
//! and checks the request (method, publisher, query, body) and hands a [`Publish`] to the
//! service behind it, in the end [`HubPublisher`]; between them, the layers that bound a
//! publish once its body is read (the timeout).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tower::{Service, ServiceExt as _};

use super::layers::{BoxError, Elapsed, error_response};
use crate::event::{EventData, EventName, IdempotencyKey, TopicName};
use crate::http::{
    Admitted, ApiError, ErrorCode, PublishQuery, ResponseBody, json_response, read_body,
};
use crate::hub::{Hub, PublishError, PublishOptions, Published, Ticket};
use crate::metrics::Metrics;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A publish, checked and read.
#[derive(Debug)]
pub(crate) struct Publish {
    topic: TopicName,
    name: Option<EventName>,
    data: EventData,
    /// The `Idempotency-Key`, and the ticket by which a publish that timed out while queued
    /// for Redis is withdrawn.
    options: PublishOptions,
}

/// Publishes into the hub.
#[derive(Clone)]
pub(crate) struct HubPublisher {
    hub: Arc<Hub>,
}

impl HubPublisher {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        HubPublisher { hub }
    }
}

impl Service<Publish> for HubPublisher {
    type Response = Published;
    type Error = PublishError;
    type Future = BoxFuture<Result<Published, PublishError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, publish: Publish) -> Self::Future {
        let hub = self.hub.clone();
        Box::pin(async move {
            let Publish { topic, name, data, options } = publish;
            hub.publish_with(&topic, name, data, options).await
        })
    }
}

/// The HTTP side of a publish: reads and checks the request, hands the publish to `inner`, and
/// answers with the event's id or the error.
#[derive(Clone)]
pub(crate) struct PublishEndpoint<S> {
    inner: S,
    max_event_bytes: usize,
    /// Longest the body may take to arrive.
    body_timeout: Duration,
    /// Publishes go through Redis (cluster mode): one that times out while queued can be
    /// withdrawn.
    withdrawable: bool,
    metrics: Arc<Metrics>,
}

impl<S> PublishEndpoint<S> {
    /// Takes event data of at most `max_event_bytes`, arriving within `body_timeout`;
    /// `withdrawable` in cluster mode.
    pub(crate) fn new(
        inner: S,
        max_event_bytes: usize,
        body_timeout: Duration,
        withdrawable: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        PublishEndpoint { inner, max_event_bytes, body_timeout, withdrawable, metrics }
    }
}

impl<S> Service<Request<Incoming>> for PublishEndpoint<S>
where
    S: Service<Publish, Response = Published> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is made ready per request: refusals are answers, not errors.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        let (max, body_timeout, metrics) =
            (self.max_event_bytes, self.body_timeout, self.metrics.clone());
        let withdrawable = self.withdrawable;
        Box::pin(async move {
            let answer = match read(req, max, body_timeout, &metrics).await {
                // Only a cluster publish waits in a queue it can be withdrawn from.
                Ok(mut publish) if withdrawable => {
                    publish.options.ticket = Some(Arc::new(Ticket::default()));
                    Ok(publish)
                }
                read => read,
            };
            let answer = match answer {
                Ok(publish) => {
                    let topic = publish.topic.clone();
                    let ticket = publish.options.ticket.clone();
                    match inner.oneshot(publish).await {
                        Ok(done) => Ok(published(&topic, done)),
                        Err(error) => {
                            let error = error.into();
                            // Timed out: withdrawn if still queued for Redis (then nothing is
                            // published), else only Redis knows.
                            let sent = ticket.is_some_and(|ticket| !ticket.withdraw());
                            if sent && error.is::<Elapsed>() {
                                let detail = "the event was sent to Redis and no answer came in \
                                              time: it may have been published; retry with the \
                                              same Idempotency-Key to find out";
                                Err(ApiError::new(ErrorCode::OutcomeUnknown, detail))
                            } else {
                                Err(error_response(error))
                            }
                        }
                    }
                }
                Err(refused) => Err(refused),
            };
            Ok(answer.unwrap_or_else(ApiError::into_response))
        })
    }
}

/// Checks a publish request and reads its body.
async fn read(
    req: Request<Incoming>,
    max: usize,
    body_timeout: Duration,
    metrics: &Metrics,
) -> Result<Publish, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::method_not_allowed(req.method(), req.uri().path(), "POST"));
    }
    let PublishQuery { topic, name } = PublishQuery::parse(req.uri().query())?;
    let idempotency_key = match req.headers().get("idempotency-key") {
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
    let options = PublishOptions { idempotency_key, ticket: None };
    // The gate in front put what the client may do here; nothing may publish without it.
    let Some(Admitted { access, .. }) = req.extensions().get::<Admitted>() else {
        tracing::error!("a publish reached its endpoint without passing the gate");
        return Err(ApiError::new(ErrorCode::Internal, "the server failed to answer"));
    };
    access.check_publish(topic.as_str())?;
    let binary = is_binary(req.headers().get(header::CONTENT_TYPE));
    let body = read_body(req, max, body_timeout, metrics).await?;
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
    Ok(Publish { topic, name, data, options })
}

/// `200 {"topic":"T","id":"<id>"}`, with `Idempotent-Replayed: true` when the id is an earlier
/// publish's (same idempotency key: nothing was published).
fn published(topic: &TopicName, done: Published) -> Response<ResponseBody> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        topic: &'a str,
        id: String,
    }
    let body = serde_json::to_string(&Answer { topic: topic.as_str(), id: done.id.to_string() })
        .expect("two strings serialize to JSON");
    let mut response = json_response(StatusCode::OK, body);
    if done.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", http::HeaderValue::from_static("true"));
    }
    response
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

//! `POST /publish?topic=T[&event=NAME]`: the HTTP publish endpoint.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::error::{ApiError, json_response};
use crate::event::{EventData, EventName, TopicName};
use crate::hub::{Hub, PublishError};
use crate::server::body::ResponseBody;

/// Whether a request comes from a local publisher: a loopback peer and, when a proxy forwarded
/// it, a loopback client of that proxy. The last `X-Forwarded-For` hop is the one the nearest
/// proxy appended (nginx's `$proxy_add_x_forwarded_for`); the hops before it are whatever the
/// client claimed, so only the last one counts. A proxy on the same host that sets no
/// `X-Forwarded-For` makes every client look local: the nginx/ configuration sets it.
pub(crate) fn is_local_publisher(peer: SocketAddr, headers: &HeaderMap) -> bool {
    let forwarded_from_loopback = |value: &http::HeaderValue| {
        value
            .to_str()
            .ok()
            .and_then(|hops| hops.rsplit(',').next())
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.to_canonical().is_loopback())
    };
    peer.ip().to_canonical().is_loopback()
        && headers.get_all("x-forwarded-for").iter().next_back().is_none_or(forwarded_from_loopback)
}

/// Publishes the request body to the topic named in the query.
pub(crate) async fn handle(
    hub: &Hub,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    // Without credentials configured, only local publishers are trusted (DESIGN decision 8).
    if !is_local_publisher(peer, req.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "publishing is accepted only from loopback peers when no credentials are configured",
        ));
    }
    let (topic, name) = parse_query(req.uri().query())?;
    let binary = is_binary(req.headers().get(header::CONTENT_TYPE));
    let max = hub.config().max_event_bytes;
    let too_large = |size: Option<u64>| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            match size {
                Some(size) => format!("event data is {size} bytes, the limit is {max}"),
                None => format!("event data exceeds the limit of {max} bytes"),
            },
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&size| size > max as u64) {
        return Err(too_large(Some(size)));
    }
    let body: Bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large(None)),
        Err(e) => {
            return Err(ApiError::bad_request(
                "bad_body",
                format!("could not read the request body: {e}"),
            ));
        }
    };
    let data = if binary {
        EventData::Binary(body)
    } else {
        EventData::text(body).ok_or_else(|| {
            ApiError::bad_request(
                "bad_data",
                "event data is not valid UTF-8; send binary data with Content-Type: application/octet-stream",
            )
        })?
    };
    let id = hub.publish(&topic, name, data).await.map_err(|e| match e {
        PublishError::TooLarge { size, .. } => too_large(Some(size as u64)),
        PublishError::Unavailable(e) => ApiError::unavailable(e.to_string()),
    })?;
    #[derive(serde::Serialize)]
    struct Published<'a> {
        topic: &'a str,
        id: String,
    }
    let body = serde_json::to_string(&Published { topic: topic.as_str(), id: id.to_string() })
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, body))
}

fn parse_query(query: Option<&str>) -> Result<(TopicName, Option<EventName>), ApiError> {
    let mut topic = None;
    let mut name = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "topic" if topic.is_some() => {
                return Err(ApiError::bad_request(
                    "bad_topic",
                    "give exactly one topic to publish to",
                ));
            }
            "topic" => {
                topic = Some(TopicName::new(&value).map_err(|e| {
                    ApiError::bad_request("bad_topic", format!("topic {value:?} {e}"))
                })?);
            }
            "event" => {
                name = Some(EventName::new(&value).map_err(|e| {
                    ApiError::bad_request("bad_event_name", format!("event name {value:?} {e}"))
                })?);
            }
            _ => {}
        }
    }
    let topic = topic.ok_or_else(|| {
        ApiError::bad_request("bad_topic", "the topic query parameter is required")
    })?;
    Ok((topic, name))
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
    fn query_needs_exactly_one_valid_topic() {
        assert!(parse_query(Some("topic=a&event=x")).is_ok());
        assert_eq!(parse_query(None).unwrap_err().code, "bad_topic");
        assert_eq!(parse_query(Some("topic=a&topic=b")).unwrap_err().code, "bad_topic");
        assert_eq!(parse_query(Some("topic=a%20b")).unwrap_err().code, "bad_topic");
        assert_eq!(
            parse_query(Some("topic=a&event=crier.gap")).unwrap_err().code,
            "bad_event_name"
        );
        assert_eq!(parse_query(Some("topic=a&event=")).unwrap_err().code, "bad_event_name");
    }

    #[test]
    fn octet_stream_marks_binary() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_binary(Some(&v("application/octet-stream"))));
        assert!(is_binary(Some(&v("Application/Octet-Stream; x=y"))));
        assert!(!is_binary(Some(&v("text/plain"))));
        assert!(!is_binary(None));
    }
}

//! Refusals a browser retries. A browser's `EventSource` never reconnects after an answer
//! other than `200 text/event-stream`, and a page sees a refused WebSocket handshake as close
//! code 1006 with no reason. So a temporary refusal (a rate, a cap, a drain, Redis away) of a
//! request that asks for an event stream is answered `200 text/event-stream` with `retry:`
//! (the wait, with jitter) and one `crier.refused` event, then the end of the stream; and a
//! refused WebSocket handshake is completed, then closed with 1013 (Try Again Later) and a
//! JSON reason. Permanent refusals keep their status, and every other client keeps the
//! `429`/`503` with `Retry-After`.
//!
//! A soft refusal invites the retry it names. Its jitter spreads a crowd's retries over as
//! long as it takes to admit them: the address's recent rate of refusals over the rate the
//! refused budget admits (its pace), between 1 and 30 seconds. An address refused more than
//! [`SOFT_REFUSALS_PER_SEC`] times a second keeps hammering whatever it is told: it gets the
//! hard answer, which a browser does not retry.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::body::ResponseBody;
use super::error::{ApiError, ErrorCode};
use super::route::GatedRoute;
use crate::limits::ClientKey;

/// Refusals per second past which an address gets hard ones.
pub(crate) const SOFT_REFUSALS_PER_SEC: f64 = 5000.0;

/// How long a refusal weighs in an address's recent rate (the time constant of its decay).
const RECENT: f64 = 2.0;

/// Addresses tracked at most (per shard); past it, new ones get hard refusals.
const MAX_ADDRESSES: usize = 1 << 16;

/// Shards of the table of recent refusals.
const SHARDS: usize = 16;

/// Longest a soft refusal asks a client to wait.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The shortest spread of a crowd's retries.
const MIN_SPREAD: Duration = Duration::from_secs(1);

/// How a refused request asked, as far as the form of its refusal goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    /// A `GET` accepting `text/event-stream`: a browser's `EventSource`, most likely.
    EventSource,
    /// A WebSocket handshake.
    WebSocket,
    /// Anything else.
    Other,
}

impl Asker {
    /// How a request to `route` with `method` and `headers` asks: an event stream only of the
    /// endpoints that serve one, a WebSocket only of `/ws`.
    pub(crate) fn of(route: GatedRoute, method: &Method, headers: &HeaderMap) -> Asker {
        let asker = Asker::of_request(method, headers);
        match (route, asker) {
            (GatedRoute::Sse | GatedRoute::Mercure, Asker::EventSource)
            | (GatedRoute::Ws, Asker::WebSocket) => asker,
            _ => Asker::Other,
        }
    }

    fn of_request(method: &Method, headers: &HeaderMap) -> Asker {
        if method != Method::GET {
            return Asker::Other;
        }
        let lists = |name, token: &str| {
            headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(',').any(|t| {
                    let t = t.split(';').next().unwrap_or("").trim();
                    t.eq_ignore_ascii_case(token)
                })
            })
        };
        if lists(header::UPGRADE, "websocket") {
            Asker::WebSocket
        } else if lists(header::ACCEPT, "text/event-stream") {
            Asker::EventSource
        } else {
            Asker::Other
        }
    }
}

/// How a refusal is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalForm {
    /// The status and JSON error.
    Hard,
    /// `200 text/event-stream` with `retry:` and a `crier.refused` event; retry after this.
    EventStream(Duration),
    /// The WebSocket handshake completed, then closed 1013; retry after this.
    WsClose(Duration),
}

/// The rate each address was refused at lately.
pub(crate) struct SoftRefusals {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<ClientKey, Recent>>]>,
}

/// An address's recent refusals, per second, decaying with time.
#[derive(Clone, Copy, Debug)]
struct Recent {
    per_sec: f64,
    at: Instant,
}

impl Recent {
    fn at(self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.per_sec * (-elapsed / RECENT).exp()
    }
}

impl SoftRefusals {
    pub(crate) fn new() -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        SoftRefusals { hasher: RandomState::new(), shards }
    }

    /// How to answer `error`, asked by `asker` from `peer`. The refusal's wait and pace (the
    /// rate its budget admits at; a new stream's if it does not say) set when to retry.
    pub(crate) fn form(
        &self,
        peer: std::net::IpAddr,
        error: &ApiError,
        asker: Asker,
        default_pace: u32,
    ) -> RefusalForm {
        if asker == Asker::Other || !error.code.is_temporary() {
            return RefusalForm::Hard;
        }
        let now = Instant::now();
        let key = ClientKey::of(peer);
        let mut shard = self.shards[self.hasher.hash_one(key) as usize % SHARDS].lock();
        if shard.len() >= MAX_ADDRESSES && !shard.contains_key(&key) {
            shard.retain(|_, recent| recent.at(now) >= 0.01);
            if shard.len() >= MAX_ADDRESSES {
                return RefusalForm::Hard;
            }
        }
        let recent = shard.entry(key).or_insert(Recent { per_sec: 0.0, at: now });
        recent.per_sec = recent.at(now) + 1.0 / RECENT;
        recent.at = now;
        let rate = recent.per_sec;
        drop(shard);
        if rate > SOFT_REFUSALS_PER_SEC {
            return RefusalForm::Hard;
        }
        let pace = f64::from(error.pace().unwrap_or(default_pace).max(1));
        let wait = error.retry_wait();
        let spread = Duration::from_secs_f64((rate / pace).min(MAX_RETRY.as_secs_f64()));
        let spread = spread.max(MIN_SPREAD).max(wait);
        let retry = (wait + spread.mul_f64(fastrand::f64())).min(MAX_RETRY);
        match asker {
            Asker::EventSource => RefusalForm::EventStream(retry),
            Asker::WebSocket => RefusalForm::WsClose(retry),
            Asker::Other => RefusalForm::Hard,
        }
    }

    /// Forgets the addresses not refused lately.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, recent| recent.at(now) >= 0.01);
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                let len = shard.len();
                shard.shrink_to(len * 2);
            }
        }
    }
}

/// The JSON a soft refusal carries: `{"error","detail","retry_after_ms"}`.
fn refusal_json(error: &ApiError, retry: Duration, detail: bool) -> String {
    #[derive(serde::Serialize)]
    struct SoftRefusalBody<'a> {
        error: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<&'a str>,
        retry_after_ms: u128,
    }
    let refusal = SoftRefusalBody {
        error: error.code.as_str(),
        detail: detail.then_some(error.detail.as_str()),
        retry_after_ms: retry.as_millis(),
    };
    serde_json::to_string(&refusal).expect("strings and a number serialize to JSON")
}

/// The body of a soft refusal on an event stream.
fn event_stream_body(error: &ApiError, retry: Duration) -> String {
    let json = refusal_json(error, retry, true);
    format!("retry: {}\nevent: crier.refused\ndata: {json}\n\n", retry.as_millis())
}

/// A soft refusal on an event stream, as a response.
pub(crate) fn event_stream_response(error: &ApiError, retry: Duration) -> Response<ResponseBody> {
    let mut response =
        Response::new(ResponseBody::full(Bytes::from(event_stream_body(error, retry))));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The reason of a 1013 close: the refusal's JSON, its detail dropped if it does not fit.
pub(crate) fn close_reason(error: &ApiError, retry: Duration, max: usize) -> String {
    let reason = refusal_json(error, retry, true);
    if reason.len() <= max { reason } else { refusal_json(error, retry, false) }
}

impl ErrorCode {
    /// Whether retrying later can help.
    pub(crate) fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::TooManyConnections
                | ErrorCode::TooManyStreams
                | ErrorCode::AtCapacity
                | ErrorCode::Unavailable
                | ErrorCode::Overloaded
                | ErrorCode::TopicLimit
                | ErrorCode::ShuttingDown
                | ErrorCode::Draining
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn browsers_are_told_apart_by_what_they_accept_or_upgrade_to() {
        let get = &Method::GET;
        let sse = |method, pairs| Asker::of(GatedRoute::Sse, method, &headers(pairs));
        assert_eq!(sse(get, &[("accept", "text/event-stream")]), Asker::EventSource);
        assert_eq!(
            sse(get, &[("accept", "text/html, Text/Event-Stream;q=0.9")]),
            Asker::EventSource
        );
        assert_eq!(
            Asker::of(GatedRoute::Mercure, get, &headers(&[("accept", "text/event-stream")])),
            Asker::EventSource
        );
        let upgrade = headers(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert_eq!(Asker::of(GatedRoute::Ws, get, &upgrade), Asker::WebSocket);
        assert_eq!(Asker::of(GatedRoute::Sse, get, &upgrade), Asker::Other, "not on /sse");
        assert_eq!(sse(get, &[("accept", "*/*")]), Asker::Other);
        assert_eq!(sse(&Method::POST, &[("accept", "text/event-stream")]), Asker::Other);
        let publish = headers(&[("accept", "text/event-stream")]);
        assert_eq!(Asker::of(GatedRoute::Publish, get, &publish), Asker::Other);
    }

    #[test]
    fn only_temporary_refusals_of_browsers_are_soft_and_an_address_that_hammers_gets_hard_ones() {
        let soft = SoftRefusals::new();
        let peer = std::net::IpAddr::from([192, 0, 2, 1]);
        let wait = Duration::from_millis(20);
        let limited = ApiError::new(ErrorCode::RateLimited, "slow down").retry_after(wait);
        let RefusalForm::EventStream(retry) = soft.form(peer, &limited, Asker::EventSource, 50)
        else {
            panic!("a soft refusal");
        };
        assert!(retry >= wait && retry <= wait + MIN_SPREAD, "{retry:?}");
        assert!(matches!(soft.form(peer, &limited, Asker::WebSocket, 50), RefusalForm::WsClose(_)));
        assert_eq!(soft.form(peer, &limited, Asker::Other, 50), RefusalForm::Hard);
        let forbidden = ApiError::new(ErrorCode::Forbidden, "no");
        assert_eq!(soft.form(peer, &forbidden, Asker::EventSource, 50), RefusalForm::Hard);
        // A crowd of 500 refused at once at a pace of 50 a second: spread over seconds.
        let retries: Vec<Duration> = (0..500)
            .filter_map(|_| match soft.form(peer, &limited, Asker::EventSource, 50) {
                RefusalForm::EventStream(retry) => Some(retry),
                _ => None,
            })
            .collect();
        assert_eq!(retries.len(), 500);
        let late = retries.iter().filter(|r| **r > Duration::from_secs(2)).count();
        assert!(late > 100, "a crowd's retries spread out: {late} of 500 after 2 s");
        assert!(retries.iter().max().is_some_and(|r| *r > Duration::from_secs(3)));
        assert!(retries.iter().all(|r| *r <= MAX_RETRY));
        // A resume budget admitting 1,000 a second spreads the same crowd less.
        let paced = limited.clone().paced(1000);
        let other = std::net::IpAddr::from([192, 0, 2, 2]);
        for _ in 0..500 {
            let RefusalForm::EventStream(retry) = soft.form(other, &paced, Asker::EventSource, 50)
            else {
                panic!("soft");
            };
            assert!(retry <= wait + MIN_SPREAD, "{retry:?}");
        }
        let hard = (0..20_000)
            .filter(|_| soft.form(peer, &limited, Asker::EventSource, 50) == RefusalForm::Hard)
            .count();
        assert!(hard > 5000, "an address that keeps hammering gets hard refusals: {hard}");
    }

    #[test]
    fn a_soft_refusal_names_its_reason_and_when_to_retry() {
        let error = ApiError::new(ErrorCode::RateLimited, "more than 2 new streams per second");
        let body = event_stream_body(&error, Duration::from_millis(1500));
        assert_eq!(
            body,
            "retry: 1500\nevent: crier.refused\ndata: {\"error\":\"rate_limited\",\"detail\":\
             \"more than 2 new streams per second\",\"retry_after_ms\":1500}\n\n"
        );
        let long = ApiError::new(ErrorCode::AtCapacity, "x".repeat(200));
        let reason = close_reason(&long, Duration::from_secs(2), 123);
        assert_eq!(reason, r#"{"error":"at_capacity","retry_after_ms":2000}"#);
    }
}

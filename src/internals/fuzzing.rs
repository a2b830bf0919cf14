//! Checks the fuzz targets in `fuzz/` drive: library internals exercised with arbitrary input
//! and compared with simple models. Compiled for fuzzing builds and unit tests only.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt as _;

use crate::codec::{Draft, ws};
use crate::event::{Event, EventData, EventId, EventName, GapReason, TopicName, Wire};
use crate::hub::{Hub, HubConfig, Polled, Subscription, SubscriptionRequest};
use crate::mercure::selector::MercureSelector;
use crate::metrics::Metrics;
use crate::registry::{Closed, MIN_LOG_EVENTS};
use crate::server::first_request::{FirstRequest, classify};

/// Mercure selectors and log records from clients: compiling and matching never panic; a
/// selector matches itself, `*` everything, a selector without `{` only itself; a template's
/// remembered answer is its first. Data that is not a record decodes to no update; a record's
/// frame is whole, and carries its id on one line.
pub fn check_mercure(selector: &str, topic: &str, bytes: &[u8]) {
    let compiled = MercureSelector::compile(selector);
    assert!(compiled.matches(selector), "{selector:?} matches itself");
    let first = compiled.matches(topic);
    assert_eq!(compiled.matches(topic), first, "a remembered answer is the first");
    if !selector.contains('{') {
        assert_eq!(first, selector == "*" || selector == topic, "{selector:?} on {topic:?}");
    }
    let data = EventData::Binary(bytes::Bytes::copy_from_slice(bytes));
    let (frame, update) = crate::codec::mercure::decode(&data);
    match update {
        None => assert!(frame.is_empty()),
        Some(update) => {
            let update = update
                .downcast_ref::<crate::codec::mercure::MercureUpdate>()
                .expect("a Mercure record decodes to a Mercure update");
            assert!(frame.ends_with(b"\n\n"), "a frame ends with a blank line");
            if !update.id.contains(['\r', '\n']) {
                let line = format!("id: {}\n", update.id);
                assert!(memchr::memmem::find(&frame, line.as_bytes()).is_some());
            }
        }
    }
}

/// Classifies the first bytes of a connection; only a complete HTTP/1.1 `GET /sse` head with
/// nothing after it may take the SSE fast path, and only an HTTP/1.1 `POST /publish` head of
/// at most the head cap, with a body of known length of at most 64 KiB, the publish fast path.
pub fn check_first_request(bytes: &[u8]) {
    check_publish_head(bytes);
    let decision = classify(bytes, 16 << 10);
    if bytes.len() > 16 << 10 {
        assert!(!matches!(decision, Some(FirstRequest::EventStream { .. })), "over the head cap");
    }
    if let Some(FirstRequest::EventStream { query, .. }) = decision {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(bytes);
        assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == bytes.len()));
        assert_eq!(request.method, Some("GET"));
        assert_eq!(request.version, Some(1));
        let target = request.path.unwrap_or_default();
        assert_eq!(target.split_once('?').map_or(target, |(p, _)| p), "/sse");
        assert_eq!(target.split_once('?').map(|(_, q)| q.to_owned()), query);
    }
}

fn check_publish_head(bytes: &[u8]) {
    use crate::server::publish_path::{MAX_HELD_BODY, publish_lengths};
    let Some((head_len, body_len)) = publish_lengths(bytes, 16 << 10) else { return };
    assert!(head_len <= bytes.len() && head_len <= 16 << 10, "a head within the buffer and cap");
    assert!(body_len <= MAX_HELD_BODY, "a body the fast path holds");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(bytes);
    assert!(matches!(parsed, Ok(httparse::Status::Complete(n)) if n == head_len));
    assert_eq!((request.method, request.version), (Some("POST"), Some(1)));
    let target = request.path.unwrap_or_default();
    assert_eq!(target.split_once('?').map_or(target, |(p, _)| p), "/publish");
    let chunked = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    assert!(!chunked, "a chunked body is hyper's");
}

/// Feeds `bytes` to a WebSocket decoder in reads cut at `cuts`, buffering a cut frame as the
/// session does: never panics, never holds more than one frame or a message over `max`, and
/// every text message it yields is UTF-8.
pub fn check_ws_decoder(bytes: &[u8], cuts: &[u16], max: usize) {
    use crate::ws::inbound::{Decoder, Inbound};
    use crate::ws::message::Message;
    let mut decoder = Decoder::new(max);
    let mut buffered = Vec::new();
    let mut rest = bytes;
    for &cut in cuts.iter().chain(std::iter::once(&u16::MAX)) {
        let n = usize::from(cut).min(rest.len());
        buffered.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let mut pos = 0;
        while let Some(item) = decoder.next(&mut buffered, &mut pos) {
            match item {
                Inbound::Message(Message::Text(text)) => {
                    assert!(text.len() <= max);
                    assert!(std::str::from_utf8(&text).is_ok(), "a text message must be UTF-8");
                }
                Inbound::Message(Message::Binary(bytes)) => assert!(bytes.len() <= max),
                Inbound::Ping(payload) => assert!(payload.len() <= 125),
                Inbound::Violation(_) => return,
                Inbound::Close(_) | Inbound::Pong | Inbound::Fragment => {}
            }
            assert!(decoder.buffered() <= max, "a message over the limit is held");
        }
        assert!(pos <= buffered.len());
        buffered.drain(..pos);
        // What stays buffered is at most one frame: a header and a payload within the limit.
        assert!(buffered.len() <= max.max(125) + 14);
    }
}

/// Encodes an event in every wire format: each frame has the length known before it was
/// encoded (what each subscriber's lag is counted in), and the JSON frame parses back to the
/// event.
pub fn check_event_frames(topic: &str, name: Option<&str>, data: EventData, seq: u64) {
    let (Ok(topic), Ok(name)) = (TopicName::new(topic), name.map(EventName::new).transpose())
    else {
        return;
    };
    let id = EventId { epoch: crate::event::Epoch::from_u64(1).expect("in range"), seq };
    let frames = Draft::new(&topic, name.as_ref(), &data).finish(id);
    let event = Event::new(topic, id, name, data, frames, [0; Wire::COUNT]);
    assert_eq!(event.frames.sse().len(), event.frames.len(Wire::Sse));
    for wire in [Wire::WsJson, Wire::WsRaw] {
        assert_eq!(ws::event_frame(&event, wire).len(), event.frames.len(wire), "{wire:?}");
    }
    let json = ws::event_frame(&event, Wire::WsJson);
    let payload = match json[1] {
        126 => &json[4..],
        127 => &json[10..],
        _ => &json[2..],
    };
    let value: serde_json::Value = serde_json::from_slice(payload).expect("a JSON frame");
    assert_eq!(value["id"], id.to_string());
    if let EventData::Text(text) = &event.data {
        assert_eq!(value["data"], text.as_str());
    }
}

/// Runs the WebSocket handshake check on an arbitrary request; an accepted one must have every
/// part RFC 6455 requires, and a 16-byte key.
pub fn check_ws_handshake(
    post: bool,
    http10: bool,
    headers: &[(String, Vec<u8>)],
    origins: &[String],
) {
    use base64::Engine as _;
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Version, header};
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    let method = if post { Method::POST } else { Method::GET };
    let version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let origins = crate::http::OriginPolicy::new(origins);
    let host = map.get(header::HOST).and_then(|host| host.to_str().ok());
    if let Ok(accept) = crate::ws::handshake::validate(&method, version, &map, &origins, host) {
        assert!(method == Method::GET && version == Version::HTTP_11);
        let key = map.get(header::SEC_WEBSOCKET_KEY).expect("a key");
        let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes().trim_ascii());
        assert_eq!(decoded.map(|k| k.len()).ok(), Some(16));
        assert!(
            map.get_all(header::SEC_WEBSOCKET_VERSION)
                .iter()
                .any(|v| v.as_bytes().trim_ascii() == b"13")
        );
        assert_eq!(accept.accept.len(), 28);
    }
}

/// One step of [`check_topic_ops`].
#[derive(Debug)]
pub enum TopicOp {
    /// Subscribe, resuming `resume_back` events before the head if given.
    Subscribe {
        /// How far back to resume.
        resume_back: Option<u8>,
    },
    /// Drop a subscription (index modulo the live ones).
    Unsubscribe {
        /// Which.
        which: u8,
    },
    /// Publish an event of `size` bytes.
    Publish {
        /// Payload size.
        size: u8,
    },
    /// Let one subscriber's writer take what it can and check it.
    Drain {
        /// Which.
        which: u8,
    },
}

struct ModelReader {
    subscription: Subscription,
    /// The position it started after.
    start: u64,
    /// Sequence numbers received so far.
    received: Vec<u64>,
    evicted: bool,
}

impl ModelReader {
    fn last(&self) -> u64 {
        self.received.last().copied().unwrap_or(self.start)
    }

    /// Takes everything available, checking it against the model: contiguous after the start,
    /// or eviction exactly when the log no longer holds the next event.
    fn drain(&mut self, head: u64, log_capacity: u64) {
        if self.evicted {
            return;
        }
        let lapped = head.saturating_sub(self.last()) > log_capacity;
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        let polled = self.subscription.poll_events(&mut cx, usize::MAX, |_, e| got.push(e.id.seq));
        match polled {
            Poll::Ready(Polled::Closed(Closed::Evicted)) => {
                assert!(lapped, "evicted while the log still held its next event");
                self.evicted = true;
                return;
            }
            Poll::Ready(Polled::Events) => self.received.extend(got),
            Poll::Pending => assert!(got.is_empty()),
            Poll::Ready(Polled::Closed(Closed::Shutdown)) => panic!("no shutdown here"),
        }
        assert!(!lapped, "a lapped reader must be evicted, not skip ahead");
        let first = self.start + 1;
        let expected: Vec<u64> = (first..first + self.received.len() as u64).collect();
        assert_eq!(self.received, expected, "a subscriber saw a gap or a duplicate");
        assert_eq!(self.last(), head, "a drain takes everything published");
    }
}

/// Runs `ops` against one topic of a hub retaining `history` events, checking every
/// subscriber against the model: it starts exactly after the requested position when the
/// history still covers it (else after the oldest retained event, with a gap notice saying how
/// many were missed), then receives every later event once, in order, unless it falls further
/// behind than the log holds, in which case it is evicted.
pub fn check_topic_ops(history: usize, ops: impl IntoIterator<Item = TopicOp>) {
    let config = HubConfig { history, max_lag_bytes: usize::MAX, ..HubConfig::default() };
    let hub = Hub::local(config, Arc::new(Metrics::new()));
    let topic = TopicName::new("t").expect("valid");
    let log_capacity = history.max(MIN_LOG_EVENTS) as u64;
    let mut head = 0u64;
    let mut epoch = None;
    let mut readers: Vec<ModelReader> = Vec::new();
    for op in ops {
        match op {
            TopicOp::Publish { size } => {
                let data = EventData::from("x".repeat(usize::from(size)));
                let published = hub.publish(&topic, None, data).now_or_never();
                let id = published.expect("a local publish is immediate").expect("within limits");
                head += 1;
                assert_eq!(id.seq, head);
                epoch = Some(id.epoch);
            }
            TopicOp::Subscribe { resume_back } => {
                let requested = resume_back.zip(epoch).map(|(back, epoch)| EventId {
                    epoch,
                    seq: head.saturating_sub(u64::from(back)),
                });
                let resume = requested.map(|id| id.to_string());
                let request = SubscriptionRequest::new(vec![topic.clone()], resume, Wire::Sse);
                let subscription = hub
                    .subscribe(request)
                    .now_or_never()
                    .expect("a local subscribe is immediate")
                    .expect("valid subscription");
                let oldest = (head + 1).saturating_sub(history as u64).max(1);
                let (start, missed) = match requested {
                    None => (head, None),
                    Some(r) if r.seq + 1 < oldest => (oldest - 1, Some(oldest - 1 - r.seq)),
                    Some(r) => (r.seq, None),
                };
                assert_eq!(subscription.start_positions()[0].seq, start);
                let gap = subscription.gaps().first().map(|g| (g.gap.reason, g.gap.missed));
                assert_eq!(gap, missed.map(|m| (GapReason::Expired, Some(m))));
                readers.push(ModelReader {
                    subscription,
                    start,
                    received: Vec::new(),
                    evicted: false,
                });
            }
            TopicOp::Unsubscribe { which } if !readers.is_empty() => {
                let mut gone = readers.swap_remove(usize::from(which) % readers.len());
                gone.drain(head, log_capacity);
            }
            TopicOp::Drain { which } if !readers.is_empty() => {
                let index = usize::from(which) % readers.len();
                readers[index].drain(head, log_capacity);
            }
            TopicOp::Unsubscribe { .. } | TopicOp::Drain { .. } => {}
        }
    }
    for mut reader in readers {
        reader.drain(head, log_capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_model_holds_for_a_mixed_sequence() {
        use TopicOp::*;
        for history in [0, 1, 3, 50] {
            let mut ops = Vec::new();
            for round in 0u8..120 {
                ops.push(Publish { size: round });
                if round % 3 == 0 {
                    ops.push(Subscribe { resume_back: Some(round % 7) });
                }
                if round % 4 == 1 {
                    ops.push(Subscribe { resume_back: None });
                }
                if round % 2 == 0 || round > 100 {
                    ops.push(Drain { which: round });
                }
                if round % 5 == 4 {
                    ops.push(Unsubscribe { which: round });
                }
            }
            check_topic_ops(history, ops);
        }
    }

    #[test]
    fn frame_lengths_hold_for_handmade_events() {
        check_event_frames("t", None, EventData::from("a\"b\\c\u{1}\n".to_owned()), 1);
        check_event_frames("t/u", Some("n"), EventData::from("é".repeat(70_000)), u64::MAX);
        check_event_frames("t", None, EventData::Binary(vec![0; 100].into()), 9);
    }

    #[test]
    fn ws_checks_hold_for_handmade_inputs() {
        let mut frame = vec![0x81, 0x85, 1, 2, 3, 4];
        frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        check_ws_decoder(&frame, &[1, 3, 2], 100);
        check_ws_decoder(&[0x82, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], &[], 100);
        let headers = [
            ("upgrade".to_owned(), b"websocket".to_vec()),
            ("connection".to_owned(), b"Upgrade".to_vec()),
            ("sec-websocket-version".to_owned(), b"13".to_vec()),
            ("sec-websocket-key".to_owned(), b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()),
        ];
        check_ws_handshake(false, false, &headers, &[]);
        check_ws_handshake(true, false, &headers, &[]);
    }

    #[test]
    fn mercure_checks_hold_for_handmade_inputs() {
        check_mercure("https://a/{id}", "https://a/1", br#"{"id":"x","topics":["t"],"data":"d"}"#);
        check_mercure("*", "anything", b"not json");
        check_mercure("{", "{", br#"{"id":"a\nb","topics":[],"data":""}"#);
    }

    #[test]
    fn first_request_check_accepts_what_the_server_would() {
        check_first_request(b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
        check_first_request(b"GET /sse HTTP/1.1\r\n\r\nextra");
        check_first_request(b"\xff\x00garbage");
        check_first_request(b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        check_first_request(b"POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let taken = b"POST /publish?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nab";
        let lengths = crate::server::publish_path::publish_lengths(taken, 16 << 10);
        assert_eq!(lengths, Some((taken.len() - 2, 3)), "a body still on its way");
    }
}

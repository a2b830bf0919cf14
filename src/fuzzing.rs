//! Checks the fuzz targets in `fuzz/` drive: library internals exercised with arbitrary input
//! and compared with simple models. Compiled for fuzzing builds and unit tests only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::event::{EventData, EventId, TopicName};
use crate::metrics::Transport;
use crate::registry::{ClientQueue, Drained, GapReason, Registry, TopicStart};
use crate::server::first_request::{FirstRequest, classify};
use crate::sse::encode;

/// Classifies the first bytes of a connection; only a complete HTTP/1.1 `GET /sse` head with
/// nothing after it may take the SSE fast path.
pub fn check_first_request(bytes: &[u8]) {
    if let Some(FirstRequest::EventStream { query, .. }) = classify(bytes) {
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
    /// Drain one subscriber's queue and check what it got.
    Drain {
        /// Which.
        which: u8,
    },
}

struct Subscriber {
    queue: Arc<ClientQueue>,
    start: TopicStart,
    /// Sequence numbers received so far (replay, then live without duplicates).
    received: Vec<u64>,
}

impl Subscriber {
    fn drain(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = VecDeque::new();
        if let Poll::Ready(Drained::Events) = self.queue.poll_drain(&mut cx, &mut out) {
            let live = out.iter().map(|d| d.event.id.seq).filter(|&s| s > self.start.live_after);
            self.received.extend(live);
        }
        // Everything received is contiguous, starting right after the start position.
        let first = self.start.position().seq + 1;
        let expected: Vec<u64> = (first..first + self.received.len() as u64).collect();
        assert_eq!(self.received, expected, "a subscriber saw a gap or a duplicate");
    }
}

/// Runs `ops` against one topic with `history` retained events, checking every subscriber
/// against the model: replay exactly what is retained after its resume point (with a gap notice
/// exactly when something is missing), then every later event once, in order.
pub fn check_topic_ops(history: usize, ops: impl IntoIterator<Item = TopicOp>) {
    let registry = Registry::new(history);
    let topic = registry.topic_or_create(&TopicName::new("t").expect("valid")).0;
    let mut subscribers: Vec<Subscriber> = Vec::new();
    for op in ops {
        match op {
            TopicOp::Publish { size } => {
                let data = EventData::Text(Bytes::from(vec![b'x'; usize::from(size)]));
                let body = encode::encode_body(None, &data);
                topic.publish(None, data, body, |_| panic!("unbounded queues never evict"));
            }
            TopicOp::Subscribe { resume_back } => {
                let head = topic.head();
                let resume = resume_back.map(|back| EventId {
                    epoch: head.epoch,
                    seq: head.seq.saturating_sub(u64::from(back)),
                });
                let queue = Arc::new(ClientQueue::new(usize::MAX, Transport::Sse, None));
                let start = topic.subscribe(&queue, 0, resume);
                assert_eq!(start.live_after, head.seq, "no concurrent publisher here");
                let requested = resume.map_or(head.seq, |r| r.seq);
                let wanted = head.seq - requested;
                let kept = wanted.min(history as u64);
                let replay: Vec<u64> = start.replay.iter().map(|e| e.id.seq).collect();
                assert_eq!(replay, ((head.seq - kept + 1)..=head.seq).collect::<Vec<_>>());
                match &start.gap {
                    None => assert_eq!(kept, wanted),
                    Some(gap) => {
                        assert_eq!(gap.reason, GapReason::Expired);
                        assert_eq!(gap.missed, Some(wanted - kept));
                    }
                }
                let received = replay;
                subscribers.push(Subscriber { queue, start, received });
            }
            TopicOp::Unsubscribe { which } if !subscribers.is_empty() => {
                let mut gone = subscribers.swap_remove(usize::from(which) % subscribers.len());
                assert!(topic.unsubscribe(gone.start.slot));
                gone.drain();
                let last = gone.received.last().copied().unwrap_or(gone.start.position().seq);
                assert_eq!(last, topic.head().seq, "everything up to unsubscribing arrived");
            }
            TopicOp::Drain { which } if !subscribers.is_empty() => {
                let index = usize::from(which) % subscribers.len();
                subscribers[index].drain();
            }
            TopicOp::Unsubscribe { .. } | TopicOp::Drain { .. } => {}
        }
    }
    for mut s in subscribers {
        s.drain();
        let last = s.received.last().copied().unwrap_or(s.start.position().seq);
        assert_eq!(last, topic.head().seq);
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
            for round in 0u8..20 {
                ops.push(Publish { size: round });
                if round % 3 == 0 {
                    ops.push(Subscribe { resume_back: Some(round % 7) });
                }
                if round % 4 == 1 {
                    ops.push(Subscribe { resume_back: None });
                }
                ops.push(Drain { which: round });
                if round % 5 == 4 {
                    ops.push(Unsubscribe { which: round });
                }
            }
            check_topic_ops(history, ops);
        }
    }

    #[test]
    fn first_request_check_accepts_what_the_server_would() {
        check_first_request(b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
        check_first_request(b"GET /sse HTTP/1.1\r\n\r\nextra");
        check_first_request(b"\xff\x00garbage");
    }
}

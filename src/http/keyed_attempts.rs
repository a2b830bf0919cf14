//! Exact retries of keyed cluster publishes: the attempts of each `(topic, Idempotency-Key)`
//! whose outcome is still open, so that a retry is never told `unavailable` (nothing was
//! published) while an earlier attempt may yet be published.
//!
//! An attempt is open from when it is made until Redis answers it. One whose caller stopped
//! waiting (`outcome_unknown`) stays open in the background until its answer comes; one whose
//! connection broke stays open, unknown, until a later attempt of the same key gets Redis's
//! answer (the publish script remembers the key, so that answer settles every attempt) or the
//! idempotency window has passed. While a key is open, a retry waits for whichever attempt is
//! answered first, and a retry that cannot reach Redis answers `outcome_unknown` again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::event::{EventId, IdempotencyKey, TopicName};
use crate::hub::{PublishError, Published};

/// Keys tracked at most: beyond, the oldest unknown outcomes are forgotten first (a retry of
/// one then answers as if it were the first attempt).
const MAX_KEYS: usize = 1 << 16;

type AttemptKey = (TopicName, IdempotencyKey);

/// The keyed attempts whose outcome is open, by topic and key.
pub(crate) struct KeyedAttempts {
    window: Duration,
    keys: Mutex<HashMap<AttemptKey, Open>>,
}

/// A key with an open attempt.
struct Open {
    /// The id, once an attempt of the key got Redis's answer; shared with its attempts.
    settled: Arc<watch::Sender<Option<EventId>>>,
    /// Attempts still waiting for Redis.
    waiting: u32,
    /// When an attempt last ended with its outcome unknown (its call was sent and the
    /// connection broke): the key stays open until then plus the window.
    unknown_at: Option<Instant>,
}

impl Open {
    fn is_open(&self, now: Instant, window: Duration) -> bool {
        self.waiting > 0 || self.unknown_at.is_some_and(|at| now - at < window)
    }
}

/// One attempt of a key, registered until it ends ([`KeyedAttempts::end`]).
pub(crate) struct Attempt {
    key: AttemptKey,
    settled: Arc<watch::Sender<Option<EventId>>>,
    /// Whether an earlier attempt of the key was still open when this one began.
    earlier_open: bool,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Redis answered with the key's id.
    Published(EventId),
    /// Certainly not published (withdrawn before it was sent, or refused).
    NotPublished,
    /// Sent, and no answer will come: Redis may or may not have run it.
    Unknown,
}

impl Ending {
    /// How an attempt that got `answer` ended.
    pub(crate) fn of(answer: &Result<Published, PublishError>) -> Self {
        match answer {
            Ok(published) => Ending::Published(published.id),
            Err(error) if error.outcome_unknown() => Ending::Unknown,
            Err(_) => Ending::NotPublished,
        }
    }
}

impl KeyedAttempts {
    pub(crate) fn new(window: Duration) -> Self {
        KeyedAttempts { window, keys: Mutex::new(HashMap::new()) }
    }

    /// Begins an attempt of `key` to `topic`.
    pub(crate) fn begin(&self, topic: &TopicName, key: &IdempotencyKey) -> Attempt {
        let key = (topic.clone(), key.clone());
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_KEYS {
            self.forget_expired(&mut keys, Instant::now());
        }
        let open = keys.entry(key.clone()).or_insert_with(|| Open {
            settled: Arc::new(watch::channel(None).0),
            waiting: 0,
            unknown_at: None,
        });
        let earlier_open = open.waiting > 0 || open.unknown_at.is_some();
        open.waiting += 1;
        Attempt { key, settled: open.settled.clone(), earlier_open }
    }

    /// Ends `attempt`: a published id settles the key for every attempt waiting on it.
    pub(crate) fn end(&self, attempt: &Attempt, ending: Ending) {
        if let Ending::Published(id) = ending {
            attempt.settled.send_replace(Some(id));
        }
        let mut keys = self.keys.lock();
        // The key may have been settled, and begun anew, since this attempt began.
        let Some(open) =
            keys.get_mut(&attempt.key).filter(|open| Arc::ptr_eq(&open.settled, &attempt.settled))
        else {
            return;
        };
        open.waiting = open.waiting.saturating_sub(1);
        match ending {
            Ending::Published(_) => {
                keys.remove(&attempt.key);
            }
            Ending::Unknown => open.unknown_at = Some(Instant::now()),
            Ending::NotPublished if open.waiting == 0 && open.unknown_at.is_none() => {
                keys.remove(&attempt.key);
            }
            Ending::NotPublished => {}
        }
    }

    /// Forgets the unknown outcomes older than the window: Redis has forgotten their keys too.
    pub(crate) fn prune(&self) {
        self.forget_expired(&mut self.keys.lock(), Instant::now());
    }

    fn forget_expired(&self, keys: &mut HashMap<AttemptKey, Open>, now: Instant) {
        keys.retain(|_, open| open.is_open(now, self.window));
    }

    /// Keys tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().len()
    }
}

impl Attempt {
    /// Whether an earlier attempt of the key may yet be (or have been) published.
    pub(crate) fn earlier_open(&self) -> bool {
        self.earlier_open
    }

    /// Resolves with the key's id once any attempt of it got Redis's answer.
    pub(crate) async fn settled(&self) -> EventId {
        let mut settled = self.settled.subscribe();
        loop {
            if let Some(id) = *settled.borrow_and_update() {
                return id;
            }
            if settled.changed().await.is_err() {
                // The sender lives as long as `self`: never reached.
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str, key: &str) -> (TopicName, IdempotencyKey) {
        (TopicName::new(topic).unwrap(), IdempotencyKey::new(key).unwrap())
    }

    #[tokio::test]
    async fn a_retry_sees_an_earlier_attempt_until_redis_answers_one() {
        let attempts = Arc::new(KeyedAttempts::new(Duration::from_secs(60)));
        let (topic, k) = key("t", "k");
        let first = attempts.begin(&topic, &k);
        assert!(!first.earlier_open());
        let retry = attempts.begin(&topic, &k);
        assert!(retry.earlier_open(), "the first is still waiting for Redis");
        attempts.end(&first, Ending::Unknown);
        attempts.end(&retry, Ending::NotPublished);
        let again = attempts.begin(&topic, &k);
        assert!(again.earlier_open(), "an unknown outcome keeps the key open");
        let id: EventId = "abc-7".parse().unwrap();
        let waiter = attempts.begin(&topic, &k);
        attempts.end(&again, Ending::Published(id));
        assert_eq!(waiter.settled().await, id, "an answer settles every attempt waiting");
        attempts.end(&waiter, Ending::NotPublished);
        assert_eq!(attempts.len(), 0);
        let fresh = attempts.begin(&topic, &k);
        assert!(!fresh.earlier_open(), "settled keys are forgotten");
        attempts.end(&fresh, Ending::NotPublished);
        let (other, _) = key("u", "k");
        assert!(!attempts.begin(&other, &k).earlier_open(), "keys are per topic");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_outcomes_are_forgotten_after_the_window() {
        let attempts = Arc::new(KeyedAttempts::new(Duration::from_secs(60)));
        let (topic, k) = key("t", "k");
        let first = attempts.begin(&topic, &k);
        attempts.end(&first, Ending::Unknown);
        tokio::time::advance(Duration::from_secs(59)).await;
        attempts.prune();
        assert_eq!(attempts.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        attempts.prune();
        assert_eq!(attempts.len(), 0);
    }
}

//! Idempotency keys on a single node: the id each key's publish got, remembered for the
//! window, so a retry with the same key publishes nothing and answers that id. (In cluster
//! mode Redis remembers them, in the publish script.)

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{PublishError, Published};
use crate::event::{EventId, IdempotencyKey, TopicName};

/// Keys remembered at most; past it the oldest are forgotten first.
const MAX_KEYS: usize = 1 << 20;

/// The ids of recent keyed publishes, by topic and key.
pub(super) struct Remembered {
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    ids: HashMap<(TopicName, IdempotencyKey), EventId>,
    /// Keys in the order they were remembered, to forget them when the window has passed.
    order: VecDeque<(Instant, TopicName, IdempotencyKey)>,
}

impl Remembered {
    pub(super) fn new(window: Duration) -> Self {
        Remembered { window, inner: Mutex::new(Inner::default()) }
    }

    /// Answers a publish with `key` to `topic` from memory if one was made within the window;
    /// otherwise runs `publish` (which must not wait: keyed publishes on a node go one at a
    /// time) and remembers its id.
    pub(super) fn publish(
        &self,
        topic: &TopicName,
        key: IdempotencyKey,
        publish: impl FnOnce() -> Result<EventId, PublishError>,
    ) -> Result<Published, PublishError> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let Inner { ids, order } = &mut *inner;
        while let Some((at, ..)) = order.front()
            && (now.duration_since(*at) >= self.window || order.len() > MAX_KEYS)
        {
            if let Some((_, topic, key)) = order.pop_front() {
                ids.remove(&(topic, key));
            }
        }
        let entry = (topic.clone(), key);
        if let Some(&id) = ids.get(&entry) {
            return Ok(Published { id, replayed: true });
        }
        let id = publish()?;
        order.push_back((now, entry.0.clone(), entry.1.clone()));
        ids.insert(entry, id);
        Ok(Published { id, replayed: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_key_is_answered_from_memory_within_the_window() {
        let remembered = Remembered::new(Duration::from_millis(50));
        let topic = TopicName::new("t").unwrap();
        let key = IdempotencyKey::new("k").unwrap();
        let next = Cell::new(0);
        let publish = || {
            next.set(next.get() + 1);
            Ok(format!("abc-{}", next.get()).parse().unwrap())
        };
        let first = remembered.publish(&topic, key.clone(), publish).unwrap();
        let again = remembered.publish(&topic, key.clone(), publish).unwrap();
        assert_eq!((again.id, again.replayed, first.replayed), (first.id, true, false));
        assert_eq!(next.get(), 1, "published once");
        let other = TopicName::new("u").unwrap();
        assert!(!remembered.publish(&other, key.clone(), publish).unwrap().replayed);
        std::thread::sleep(Duration::from_millis(60));
        let later = remembered.publish(&topic, key, publish).unwrap();
        assert!(!later.replayed, "forgotten after the window");
        assert_eq!(next.get(), 3);
    }
}

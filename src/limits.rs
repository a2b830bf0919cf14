//! Limits per client: token buckets (a WebSocket connection's commands; new streams per
//! client address; publishes per principal), kept in tables bounded in size, and the count of
//! open connections per client address.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Admits `rate` actions per second on average, with bursts of up to `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket admitting `rate` per second with a burst of `rate` (at least 1).
    pub(crate) fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket { tokens: rate, rate, burst: rate, refilled: Instant::now() }
    }

    /// Takes one token if there is one at `now`; whether the action is admitted.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.take_n(1, now)
    }

    /// Takes `n` tokens (at most a burst's worth) if there are that many at `now`.
    fn take_n(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        let n = f64::from(n).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// How long until there are `n` tokens (at most a burst's worth).
    fn wait(&self, n: u32) -> Duration {
        let n = f64::from(n).min(self.burst);
        Duration::from_secs_f64(((n - self.tokens) / self.rate).max(0.0))
    }

    /// Whether the bucket is full at `now`: it remembers nothing a new one would not.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// A client as limits count it: an IPv4 address, or the /64 network of an IPv6 address (one
/// host usually holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(u128);

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => ClientKey((u128::from(v6) >> 64) | (1 << 127)),
        }
    }
}

/// Entries a table holds at most; beyond, idle entries are dropped first and then new keys
/// are refused, so a flood of addresses cannot grow memory without bound.
const MAX_ENTRIES: usize = 1 << 20;

/// Shards of a table, so clients rarely wait on each other.
const SHARDS: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 4;

/// One shard of a [`RateTable`]: the buckets whose keys' hashes start alike.
type RateShard<K> = Mutex<HashTable<(K, TokenBucket)>>;

/// A token bucket per key, `rate` per second with bursts of `rate`.
///
/// Each action hashes its key once: the hash picks the shard (by its top bits) and finds the
/// bucket in the shard's table (by the rest).
pub(crate) struct RateTable<K> {
    rate: u32,
    hasher: RandomState,
    shards: Box<[RateShard<K>]>,
}

impl<K: Hash + Eq + Clone> RateTable<K> {
    pub(crate) fn per_second(rate: u32) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect();
        RateTable { rate, hasher: RandomState::new(), shards }
    }

    /// The key's hash and its shard.
    fn shard(&self, key: &K) -> (u64, &RateShard<K>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> (u64::BITS - SHARD_BITS)) as usize])
    }

    /// Takes a token for `key`; on refusal, how long until the next one.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.take_n(key, 1, now)
    }

    /// Takes `n` tokens for `key` (at most a burst's worth); on refusal, how long until there
    /// are that many.
    pub(crate) fn take_n(&self, key: &K, n: u32, now: Instant) -> Result<(), Duration> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock();
        if let Some((_, bucket)) = shard.find_mut(hash, |(k, _)| k == key) {
            return if bucket.take_n(n, now) { Ok(()) } else { Err(bucket.wait(n)) };
        }
        if shard.len() >= MAX_ENTRIES / SHARDS {
            shard.retain(|(_, bucket)| !bucket.is_full(now));
            if shard.len() >= MAX_ENTRIES / SHARDS {
                return Err(Duration::from_secs(1));
            }
        }
        let mut bucket = TokenBucket::per_second(self.rate);
        bucket.refilled = now;
        let taken = bucket.take_n(n, now);
        shard.insert_unique(hash, (key.clone(), bucket), |(k, _)| self.hasher.hash_one(k));
        if taken { Ok(()) } else { Err(Duration::from_secs(1)) }
    }

    /// Whether `key` has a token left at `now`, taking none; on refusal, how long until it
    /// has one. For actions charged once their cost is known ([`RateTable::take`] then).
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let (hash, shard) = self.shard(key);
        match shard.lock().find_mut(hash, |(k, _)| k == key) {
            Some((_, bucket)) => {
                bucket.refill(now);
                if bucket.tokens >= 1.0 { Ok(()) } else { Err(bucket.wait(1)) }
            }
            None => Ok(()),
        }
    }

    /// Forgets the buckets that are full again: those clients are as good as new.
    pub(crate) fn prune(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|(_, bucket)| !bucket.is_full(now));
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                let len = shard.len();
                shard.shrink_to(len * 2, |(k, _)| self.hasher.hash_one(k));
            }
        }
    }
}

/// Open connections per client, at most `max` each.
pub(crate) struct ConnectionCounts {
    max: u32,
    counts: Mutex<HashMap<ClientKey, u32>>,
}

/// One open connection of a client, counted until dropped.
pub(crate) struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    key: ClientKey,
}

impl ConnectionCounts {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(ConnectionCounts { max, counts: Mutex::new(HashMap::new()) })
    }

    /// Counts one more connection of `key`, unless it has `max` already.
    pub(crate) fn open(self: &Arc<Self>, key: ClientKey) -> Option<ConnectionSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { counts: self.clone(), key })
    }
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlot").field("key", &self.key).finish()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
                if counts.capacity() > 64 && counts.len() < counts.capacity() / 4 {
                    let len = counts.len();
                    counts.shrink_to(len * 2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::per_second(10);
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 10, "the burst");
        let later = start + Duration::from_millis(250);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 2, "2.5 tokens refilled");
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(much_later)).count(), 10, "capped at the burst");
    }

    #[test]
    fn a_table_limits_each_key_and_forgets_the_idle_ones() {
        let start = Instant::now();
        let table = RateTable::per_second(2);
        let (a, b) = (
            ClientKey::of("192.0.2.1".parse().unwrap()),
            ClientKey::of("192.0.2.2".parse().unwrap()),
        );
        assert!(table.take(&a, start).is_ok() && table.take(&a, start).is_ok());
        let wait = table.take(&a, start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "{wait:?}");
        assert!(table.take(&b, start).is_ok(), "another client has its own bucket");
        assert!(table.take(&a, start + Duration::from_millis(500)).is_ok(), "refilled");
        table.prune(start + Duration::from_secs(10));
        assert!(table.shards.iter().all(|s| s.lock().is_empty()));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_slash_64() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("::c000:201"), "v4 and v6 never collide");
        let counts = ConnectionCounts::new(2);
        let (first, second) = (counts.open(key("192.0.2.1")), counts.open(key("192.0.2.1")));
        assert!(first.is_some() && second.is_some());
        assert!(counts.open(key("192.0.2.1")).is_none());
        drop(first);
        assert!(counts.open(key("192.0.2.1")).is_some());
    }
}

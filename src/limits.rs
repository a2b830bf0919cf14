//! Rate limits: a token bucket, used per WebSocket connection for its commands, and meant for
//! the HTTP boundary's per-client limits as well.

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
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
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
}

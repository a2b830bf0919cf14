//! How long a busy stream gathers events before it writes them: the node's write delay,
//! adapted so the node's stream writes stay near a budget.
//!
//! A write to a socket costs about the same whatever it carries (the system call, the TCP send
//! path, waking the reader), so a stream that writes each event on its own pays that cost per
//! event. A stream that took events less than the delay ago gathers what follows and writes it
//! at once when the delay has passed; a quiet stream writes a lone event at once. The delay is
//! node-wide and adapts: when the node writes more than `writes_per_sec` times a second it
//! grows (towards `--write-delay`), so each busy stream writes less often with more events per
//! write; when the node writes well under it, it shrinks to nothing, so a node with few busy
//! streams adds no latency at all. A gathering stream is still woken early when its backlog
//! nears its lag bounds (see [`crate::registry`]'s gathering), so a delay never evicts a
//! subscriber that keeps up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The node's write delay and how it adapts.
#[derive(Debug)]
pub(crate) struct WritePacing {
    /// The longest delay (`--write-delay`).
    most: Duration,
    /// Stream writes per second the delay aims to keep the node near (0: always `most`).
    writes_per_sec: u64,
    /// The delay now, in microseconds.
    delay_us: AtomicU64,
    /// The write count and time of the last adjustment.
    last: Mutex<Option<(u64, Instant)>>,
}

/// Below this an adapted delay is no delay: it would gather nothing.
const LEAST_DELAY: Duration = Duration::from_micros(500);

/// The delay a node that just went over its budget starts from.
const FIRST_DELAY: Duration = Duration::from_millis(1);

/// Most an adjustment multiplies or divides the delay by, so one odd interval cannot swing it.
const MOST_STEP: f64 = 4.0;

impl WritePacing {
    /// A delay of up to `most`, adapted to keep the node near `writes_per_sec` stream writes a
    /// second; with `writes_per_sec` 0, always `most`.
    pub(crate) fn new(most: Duration, writes_per_sec: u64) -> Self {
        let start = if writes_per_sec == 0 { most } else { Duration::ZERO };
        WritePacing {
            most,
            writes_per_sec,
            delay_us: AtomicU64::new(start.as_micros() as u64),
            last: Mutex::new(None),
        }
    }

    /// How long a stream that took events gathers more before it takes them.
    pub(crate) fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Adapts the delay to the writes counted so far (`writes`, a running total), measured
    /// since the last call.
    pub(crate) fn adjust(&self, writes: u64, now: Instant) {
        if self.writes_per_sec == 0 || self.most.is_zero() {
            return;
        }
        let mut last = self.last.lock();
        let Some((last_writes, last_at)) = last.replace((writes, now)) else { return };
        let elapsed = now.saturating_duration_since(last_at).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        let rate = writes.saturating_sub(last_writes) as f64 / elapsed;
        let next = next_delay(self.delay(), rate, self.writes_per_sec as f64, self.most);
        self.delay_us.store(next.as_micros() as u64, Ordering::Relaxed);
    }
}

/// One step of the control: over budget, the delay grows in proportion (each busy stream then
/// writes proportionally less often); under half of it, it shrinks in proportion; in between
/// it holds, so the delay settles rather than swings.
fn next_delay(delay: Duration, rate: f64, budget: f64, most: Duration) -> Duration {
    let next = if rate > budget {
        delay.max(FIRST_DELAY).mul_f64((rate / budget).min(MOST_STEP))
    } else if rate < budget / 2.0 {
        delay.mul_f64((rate / (budget / 2.0)).max(1.0 / MOST_STEP))
    } else {
        delay
    };
    if next < LEAST_DELAY { Duration::ZERO } else { next.min(most) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_over_budget_settles_and_goes_back_to_nothing() {
        let most = Duration::from_millis(200);
        let budget = 40_000.0;
        // 10,000 busy streams: each writes at most once per delay, so the rate is 10,000/delay
        // (capped by what the node manages without a delay, 100,000 writes a second).
        let streams = 10_000.0;
        let rate_at = |delay: Duration| (streams / delay.as_secs_f64()).min(100_000.0);
        let mut delay = Duration::ZERO;
        let mut steps = 0;
        while delay < most {
            delay = next_delay(delay, rate_at(delay), budget, most);
            steps += 1;
            assert!(steps < 10, "reaches the cap in a few steps: {delay:?}");
        }
        assert_eq!(next_delay(delay, rate_at(delay), budget, most), most, "held at the cap");
        // 6,000 busy streams settle where they write within the budget, without swinging.
        let rate_at = |delay: Duration| (6_000.0 / delay.as_secs_f64()).min(100_000.0);
        let mut seen = Vec::new();
        for _ in 0..20 {
            delay = next_delay(delay, rate_at(delay), budget, most);
            seen.push(delay);
        }
        let settled = seen[seen.len() - 1];
        assert!(seen[10..].iter().all(|d| *d == settled), "settles: {seen:?}");
        let rate = rate_at(settled);
        assert!((budget / 2.0..=budget).contains(&rate), "within budget: {rate} at {settled:?}");
        // The load goes: a few busy streams write rarely, and the delay vanishes.
        for _ in 0..10 {
            delay = next_delay(delay, 50.0, budget, most);
        }
        assert_eq!(delay, Duration::ZERO);
    }

    #[test]
    fn without_a_budget_the_delay_is_fixed() {
        let pacing = WritePacing::new(Duration::from_millis(20), 0);
        let start = Instant::now();
        pacing.adjust(0, start);
        pacing.adjust(1_000_000, start + Duration::from_secs(1));
        assert_eq!(pacing.delay(), Duration::from_millis(20));
        let adaptive = WritePacing::new(Duration::from_millis(20), 1_000);
        assert_eq!(adaptive.delay(), Duration::ZERO, "starts with no delay");
        adaptive.adjust(0, start);
        adaptive.adjust(4_000, start + Duration::from_secs(1));
        assert_eq!(adaptive.delay(), Duration::from_millis(4));
    }
}

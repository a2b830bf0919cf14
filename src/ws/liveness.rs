//! Whether the client is still there: a ping every heartbeat interval, and the deadline by which
//! the client must have shown it is alive.
//!
//! Any bytes from the client count as an answer, not only pongs: a client busy sending a large
//! message is alive. A ping's deadline starts when the ping is written, not when it is queued,
//! so a ping waiting behind a large message going out does not count against the client. The
//! client must then answer within one interval, and is never closed before it has been silent
//! for two. A client that takes nothing of what is written for two intervals (its socket is
//! full) is dead too: its ping could never be written.

use std::time::Duration;

use tokio::time::Instant;

/// What the heartbeat asks for now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing.
    Nothing,
    /// Send a ping.
    Ping,
    /// The client missed its deadline: close.
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// No ping waiting to be written.
    Idle,
    /// A ping waits with the frames to write.
    Queued,
    /// A ping is in the chunk being written.
    Writing,
}

/// The heartbeat of one connection.
#[derive(Debug)]
pub(super) struct Liveness {
    interval: Duration,
    /// When the client last sent anything.
    heard: Instant,
    /// When the next ping is due.
    next_ping: Instant,
    ping: Ping,
    /// When a ping nothing has answered since was written.
    unanswered_since: Option<Instant>,
    /// Since when output has waited without any of it being taken.
    stalled_since: Option<Instant>,
}

impl Liveness {
    /// A heartbeat every `interval`, starting at `now`.
    pub(super) fn new(interval: Duration, now: Instant) -> Self {
        Liveness {
            interval,
            heard: now,
            next_ping: now + interval,
            ping: Ping::Idle,
            unanswered_since: None,
            stalled_since: None,
        }
    }

    /// The client sent something.
    pub(super) fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.unanswered_since = None;
    }

    /// A chunk was built from the frames waiting (a queued ping went into it).
    pub(super) fn chunk_built(&mut self) {
        if self.ping == Ping::Queued {
            self.ping = Ping::Writing;
        }
    }

    /// The chunk being written is out.
    pub(super) fn chunk_written(&mut self, now: Instant) {
        if self.ping == Ping::Writing {
            self.ping = Ping::Idle;
            self.unanswered_since.get_or_insert(now);
        }
    }

    /// After a write attempt: whether any bytes went out, and whether output still waits.
    pub(super) fn wrote(&mut self, now: Instant, progressed: bool, waiting: bool) {
        if !waiting {
            self.stalled_since = None;
        } else if progressed || self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
    }

    /// What is due at `now`.
    pub(super) fn poll(&mut self, now: Instant) -> Due {
        if self.deadline().is_some_and(|deadline| now >= deadline) {
            return Due::Dead;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            if self.ping == Ping::Idle {
                self.ping = Ping::Queued;
                return Due::Ping;
            }
        }
        Due::Nothing
    }

    /// When [`Liveness::poll`] next has something to do.
    pub(super) fn next_wakeup(&self) -> Instant {
        self.deadline().map_or(self.next_ping, |deadline| deadline.min(self.next_ping))
    }

    fn deadline(&self) -> Option<Instant> {
        let answer = self
            .unanswered_since
            .map(|written| (written + self.interval).max(self.heard + 2 * self.interval));
        let stall = self.stalled_since.map(|since| since + 2 * self.interval);
        match (answer, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_silent_client_is_closed_after_two_intervals() {
        let start = Instant::now();
        let mut live = Liveness::new(SECOND, start);
        assert_eq!(live.poll(start), Due::Nothing);
        assert_eq!(live.next_wakeup(), start + SECOND);
        assert_eq!(live.poll(start + SECOND), Due::Ping);
        live.chunk_built();
        live.chunk_written(start + SECOND);
        assert_eq!(live.next_wakeup(), start + 2 * SECOND);
        assert_eq!(live.poll(start + 2 * SECOND - Duration::from_millis(1)), Due::Nothing);
        assert_eq!(live.poll(start + 2 * SECOND), Due::Dead);
    }

    #[test]
    fn any_bytes_answer_a_ping() {
        let start = Instant::now();
        let mut live = Liveness::new(SECOND, start);
        assert_eq!(live.poll(start + SECOND), Due::Ping);
        live.chunk_built();
        live.chunk_written(start + SECOND);
        live.heard(start + SECOND + Duration::from_millis(900));
        assert_eq!(live.poll(start + 2 * SECOND), Due::Ping, "answered: the next ping");
        assert_ne!(live.poll(start + 3 * SECOND), Due::Dead);
    }

    #[test]
    fn a_ping_stuck_behind_a_large_write_does_not_count_until_written() {
        let start = Instant::now();
        let mut live = Liveness::new(SECOND, start);
        assert_eq!(live.poll(start + SECOND), Due::Ping);
        live.chunk_built();
        // The chunk takes five seconds to write; the client reads it all along.
        for ms in (1_000..6_000).step_by(100) {
            let now = start + Duration::from_millis(ms);
            live.wrote(now, true, true);
            assert_ne!(live.poll(now), Due::Dead, "at {ms} ms");
        }
        let written = start + 6 * SECOND;
        live.wrote(written, true, false);
        live.chunk_written(written);
        assert_ne!(live.poll(written + SECOND - Duration::from_millis(1)), Due::Dead);
        assert_eq!(live.poll(written + SECOND), Due::Dead, "one interval after it was written");
    }

    #[test]
    fn a_client_that_takes_nothing_is_dead_after_two_intervals() {
        let start = Instant::now();
        let mut live = Liveness::new(SECOND, start);
        live.wrote(start, false, true);
        live.heard(start + SECOND);
        assert_eq!(live.poll(start + SECOND), Due::Ping);
        live.wrote(start + SECOND, false, true);
        assert_eq!(live.poll(start + 2 * SECOND), Due::Dead, "nothing taken since the start");
    }
}

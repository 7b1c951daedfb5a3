//! The connection's timers: an enum and a fixed table; the next deadline is their minimum.

use std::time::Instant;

/// One of the connection's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A delayed acknowledgement is due.
    Ack = 0,
    /// Time-threshold loss detection or a probe timeout (RFC 9002 section 6).
    Loss = 1,
    /// Nothing heard from the peer for the idle timeout.
    Idle = 2,
    /// Nothing sent for the keepalive interval.
    Keepalive = 3,
    /// The earliest message deadline.
    Deadline = 4,
    /// The oldest partial reassembly expires.
    Reassembly = 5,
    /// A graceful close stops waiting for pending outcomes.
    Drain = 6,
    /// The closing or draining period ends.
    Close = 7,
}

const COUNT: usize = 8;

/// A fixed table of optional deadlines, one per [`Timer`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimerTable {
    data: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    pub(crate) fn set_opt(&mut self, timer: Timer, at: Option<Instant>) {
        self.data[timer as usize] = at;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    /// Whether `timer` is set and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.data[timer as usize].is_some_and(|t| t <= now)
    }

    /// The earliest deadline of all timers.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }

    pub(crate) fn clear(&mut self) {
        self.data = [None; COUNT];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_minimum_and_expiry_is_inclusive() {
        let t0 = Instant::now_for_tests();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::Idle, t0 + Duration::from_secs(10));
        table.set(Timer::Ack, t0 + Duration::from_millis(1));
        assert_eq!(table.next(), Some(t0 + Duration::from_millis(1)));
        assert!(table.is_expired(Timer::Ack, t0 + Duration::from_millis(1)));
        assert!(!table.is_expired(Timer::Idle, t0));
        table.stop(Timer::Ack);
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(10)));
        table.clear();
        assert_eq!(table.next(), None);
    }

    trait NowForTests {
        fn now_for_tests() -> Instant;
    }
    impl NowForTests for Instant {
        #[allow(clippy::disallowed_methods)] // tests need some base instant; its value is irrelevant
        fn now_for_tests() -> Instant {
            Instant::now()
        }
    }
}

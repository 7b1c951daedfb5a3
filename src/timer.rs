//! The connection's timers: an enum and a fixed table; the next deadline is their minimum.

use std::cell::Cell;
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

/// A fixed table of optional deadlines, one per [`Timer`], with their minimum.
///
/// Several timers change for every datagram in and out, and the minimum is asked about once
/// after each: a change that may raise the minimum (the earliest timer moved later or stopped)
/// only marks it stale, and [`next`](Self::next) scans the table once, when asked.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    data: [Option<Instant>; COUNT],
    /// The earliest of `data`, unless `stale`.
    earliest: Cell<Option<Instant>>,
    /// `earliest` may be too early: the next [`next`](Self::next) scans.
    stale: Cell<bool>,
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.change(timer, Some(at));
    }

    pub(crate) fn set_opt(&mut self, timer: Timer, at: Option<Instant>) {
        self.change(timer, at);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.change(timer, None);
    }

    /// Whether `timer` is set and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.data[timer as usize].is_some_and(|t| t <= now)
    }

    /// The earliest deadline of all timers.
    pub(crate) fn next(&self) -> Option<Instant> {
        if self.stale.get() {
            self.earliest.set(self.scan());
            self.stale.set(false);
        }
        self.earliest.get()
    }

    pub(crate) fn clear(&mut self) {
        self.data = [None; COUNT];
        self.earliest.set(None);
        self.stale.set(false);
    }

    #[inline]
    fn change(&mut self, timer: Timer, at: Option<Instant>) {
        let old = std::mem::replace(&mut self.data[timer as usize], at);
        if self.stale.get() {
            // The next `next` scans anyway.
            return;
        }
        let earliest = self.earliest.get();
        match (at, earliest) {
            // Earlier than (or as early as) every other deadline: the new minimum.
            (Some(t), Some(e)) if t <= e => self.earliest.set(Some(t)),
            // The only deadline.
            (Some(t), None) => self.earliest.set(Some(t)),
            // The earliest deadline moved later or stopped: another one may be the minimum now.
            _ if old.is_some() && old == earliest => self.stale.set(true),
            // A later deadline changed, or nothing did: the minimum stays.
            _ => {}
        }
    }

    fn scan(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
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

    const ALL: [Timer; COUNT] = [
        Timer::Ack,
        Timer::Loss,
        Timer::Idle,
        Timer::Keepalive,
        Timer::Deadline,
        Timer::Reassembly,
        Timer::Drain,
        Timer::Close,
    ];

    proptest::proptest! {
        /// Whatever the sequence of changes, `next` is the minimum of the table, whether it is
        /// asked after every change or after several.
        #[test]
        fn next_is_always_the_minimum(ops in proptest::collection::vec((0usize..COUNT, 0u64..20, 0u8..5, proptest::bool::ANY), 0..200)) {
            let t0 = Instant::now_for_tests();
            let mut table = TimerTable::default();
            for (timer, at, op, ask) in ops {
                let (timer, at) = (ALL[timer], t0 + Duration::from_millis(at));
                match op {
                    0 | 1 => table.set(timer, at),
                    2 => table.stop(timer),
                    3 => table.set_opt(timer, (at > t0 + Duration::from_millis(10)).then_some(at)),
                    _ => {
                        if at == t0 {
                            table.clear();
                        }
                    }
                }
                if ask {
                    let min = ALL.iter().filter_map(|&t| table.get(t)).min();
                    proptest::prop_assert_eq!(table.next(), min);
                }
            }
            let min = ALL.iter().filter_map(|&t| table.get(t)).min();
            proptest::prop_assert_eq!(table.next(), min);
        }
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

//! The handshake rate limit: a token bucket, kept as a single instant (GCRA, the generic cell
//! rate algorithm), with time passed in.

use std::time::{Duration, Instant};

/// Admits at most `burst` requests at once and `rate` per second on average.
///
/// Instead of a token count it keeps the *theoretical arrival time* `tat`: the instant at which
/// the bucket would be full again. A request at `now` is admitted if `tat - now` does not exceed
/// `(burst - 1)` emission intervals, and then pushes `tat` one interval further.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    tat: Option<Instant>,
}

impl RateLimiter {
    /// `rate` and `burst` must be at least 1 (checked by the configuration).
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        let tolerance = interval
            .checked_mul(burst.saturating_sub(1))
            .unwrap_or(Duration::MAX);
        RateLimiter {
            interval,
            tolerance,
            tat: None,
        }
    }

    /// Takes a token if one is available at `now`.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let over = tat.saturating_duration_since(now);
        if over > self.tolerance {
            return false;
        }
        self.tat = Some(tat.checked_add(self.interval).unwrap_or(tat));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_the_rate() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut r = RateLimiter::new(100, 10);
        let admitted = (0..50).filter(|_| r.try_take(t0)).count();
        assert_eq!(admitted, 10);
        // 10 ms later, exactly one more token.
        let t1 = t0 + Duration::from_millis(10);
        assert!(r.try_take(t1));
        assert!(!r.try_take(t1));
        // Over one second at 1 ms steps: about 100 more.
        let n = (1..=1000)
            .filter(|ms| r.try_take(t1 + Duration::from_millis(*ms)))
            .count();
        assert!((99..=101).contains(&n), "{n}");
        // After a long pause, the burst again (not more).
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| r.try_take(t2)).count(), 10);
    }
}

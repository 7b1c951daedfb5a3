//! Round-trip time estimation (RFC 6298, RFC 9002 section 5) and retransmission backoff.
//!
//! The estimator only does arithmetic on durations the caller measured: it never reads the
//! clock. All arithmetic saturates, so no sample (however absurd) can make it panic.

use std::time::Duration;

/// Smoothed round-trip time, its variation and the minimum, as in RFC 9002 section 5.
///
/// Before the first sample, [`smoothed`](Self::smoothed), [`latest`](Self::latest) and
/// [`min`](Self::min) report the initial RTT and [`rttvar`](Self::rttvar) half of it.
///
/// The values are kept in whole nanoseconds (`u64`, which saturates at about 584 years), so an
/// update is a handful of integer operations; the results are those of the same arithmetic on
/// [`Duration`]s, which truncates to the nanosecond too.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// The most recent raw sample, in nanoseconds.
    latest: u64,
    /// Exponentially weighted moving average of the (ack-delay-adjusted) samples.
    smoothed: u64,
    /// Mean deviation of the samples.
    rttvar: u64,
    /// The smallest raw sample seen.
    min: u64,
    /// Whether `update` was ever called.
    has_samples: bool,
}

/// `d` in nanoseconds, saturating at `u64::MAX`.
#[inline]
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl RttEstimator {
    /// Creates an estimator that assumes `initial_rtt` until the first sample.
    pub fn new(initial_rtt: Duration) -> Self {
        let initial = nanos(initial_rtt);
        RttEstimator {
            latest: initial,
            smoothed: initial,
            rttvar: initial / 2,
            min: initial,
            has_samples: false,
        }
    }

    /// Feeds one RTT sample (RFC 9002 section 5.3).
    ///
    /// `sample` is the time from sending the newly acknowledged packet to receiving its ack;
    /// `ack_delay` is the delay the peer reports it held the ack, capped at `max_ack_delay`.
    /// The minimum tracks the raw samples. The ack delay is subtracted only if the result stays
    /// at or above the minimum. The first sample sets the smoothed RTT to itself and the
    /// variation to half of it; later ones update both with gains 1/8 and 1/4, the variation
    /// using the previous smoothed value (RFC 6298 section 2.3).
    pub fn update(&mut self, sample: Duration, ack_delay: Duration, max_ack_delay: Duration) {
        let sample = nanos(sample);
        self.latest = sample;
        if !self.has_samples {
            self.has_samples = true;
            self.min = sample;
            self.smoothed = sample;
            self.rttvar = sample / 2;
            return;
        }
        self.min = self.min.min(sample);
        let ack_delay = nanos(ack_delay.min(max_ack_delay));
        let adjusted = sample
            .checked_sub(ack_delay)
            .filter(|adjusted| *adjusted >= self.min)
            .unwrap_or(sample);
        let deviation = self.smoothed.abs_diff(adjusted);
        self.rttvar = (self.rttvar.saturating_mul(3).saturating_add(deviation)) / 4;
        self.smoothed = (self.smoothed.saturating_mul(7).saturating_add(adjusted)) / 8;
    }

    /// The smoothed RTT.
    pub fn smoothed(&self) -> Duration {
        Duration::from_nanos(self.smoothed)
    }

    /// The RTT variation.
    pub fn rttvar(&self) -> Duration {
        Duration::from_nanos(self.rttvar)
    }

    /// The smallest sample seen (the initial RTT before any).
    pub fn min(&self) -> Duration {
        Duration::from_nanos(self.min)
    }

    /// The most recent sample (the initial RTT before any).
    pub fn latest(&self) -> Duration {
        Duration::from_nanos(self.latest)
    }

    /// Whether at least one sample was fed.
    pub fn has_samples(&self) -> bool {
        self.has_samples
    }

    /// The probe / retransmission timeout before backoff:
    /// `max(smoothed + max(4 * rttvar, granularity) + max_ack_delay, min_rto)`.
    pub fn pto(
        &self,
        granularity: Duration,
        max_ack_delay: Duration,
        min_rto: Duration,
    ) -> Duration {
        let pto = self
            .smoothed
            .saturating_add(self.rttvar.saturating_mul(4).max(nanos(granularity)))
            .saturating_add(nanos(max_ack_delay));
        Duration::from_nanos(pto).max(min_rto)
    }

    /// The time threshold after which an unacknowledged packet, older than an acknowledged
    /// one, is declared lost: `max(9/8 * max(smoothed, latest), granularity)` (RFC 9002
    /// section 6.1.2).
    pub fn loss_delay(&self, granularity: Duration) -> Duration {
        let rtt = self.smoothed.max(self.latest);
        Duration::from_nanos(rtt.saturating_add(rtt / 8)).max(granularity)
    }
}

/// Exponential backoff: `base * 2^count`, saturating, capped at `max`.
pub fn backoff(base: Duration, count: u32, max: Duration) -> Duration {
    if base.is_zero() {
        return Duration::ZERO;
    }
    let mut d = base;
    // At most ~94 doublings take 1 ns past `Duration::MAX`, so this loop is short.
    for _ in 0..count {
        if d >= max {
            break;
        }
        d = d.saturating_mul(2);
    }
    d.min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_any_sample() {
        let r = RttEstimator::new(ms(333));
        assert!(!r.has_samples());
        assert_eq!(
            (r.smoothed(), r.rttvar(), r.min(), r.latest()),
            (ms(333), Duration::from_micros(166_500), ms(333), ms(333))
        );
        // 333 + 4 * 166.5 + 25 = 1024
        assert_eq!(r.pto(MS, ms(25), ms(200)), ms(1024));
    }

    #[test]
    fn first_sample_replaces_the_initial_guess() {
        let mut r = RttEstimator::new(ms(333));
        r.update(ms(100), ms(50), ms(25));
        assert!(r.has_samples());
        // The first sample ignores the ack delay.
        assert_eq!(
            (r.smoothed(), r.rttvar(), r.min(), r.latest()),
            (ms(100), ms(50), ms(100), ms(100))
        );
    }

    #[test]
    fn later_samples_follow_rfc_9002() {
        // (sample, ack_delay, expected smoothed, rttvar, min) with max_ack_delay = 25 ms,
        // starting from a first sample of 100 ms (srtt 100, rttvar 50).
        let cases = [
            // Steady: var decays by 3/4.
            (100, 0, 100_000, 37_500, 100),
            // 120 - 10 = 110 >= min + 10: adjusted 110; var = (3*37.5 + 10) / 4.
            (120, 10, 101_250, 30_625, 100),
            // Ack delay capped at 25: 200 - 25 = 175.
            (200, 80, 110_468, 41_406, 100),
            // New minimum; 60 < 60 + 5, so the delay is not subtracted.
            (60, 5, 104_160, 43_671, 60),
            // 62 < 60 + 5: no subtraction either.
            (62, 5, 98_890, 43_293, 60),
        ];
        let mut r = RttEstimator::new(ms(333));
        r.update(ms(100), Duration::ZERO, ms(25));
        for (i, (sample, delay, srtt_us, var_us, min)) in cases.into_iter().enumerate() {
            r.update(ms(sample), ms(delay), ms(25));
            let us = |d: Duration| d.as_micros() as u64;
            assert_eq!(us(r.smoothed()), srtt_us, "case {i}");
            assert_eq!(us(r.rttvar()), var_us, "case {i}");
            assert_eq!(r.min(), ms(min), "case {i}");
            assert_eq!(r.latest(), ms(sample), "case {i}");
        }
    }

    #[test]
    fn pto_and_loss_delay() {
        let mut r = RttEstimator::new(ms(333));
        r.update(ms(100), Duration::ZERO, ms(25));
        // 100 + 4 * 50 + 25
        assert_eq!(r.pto(MS, ms(25), ms(0)), ms(325));
        assert_eq!(r.pto(MS, ms(25), ms(500)), ms(500));
        for _ in 0..200 {
            r.update(ms(100), Duration::ZERO, ms(25));
        }
        // rttvar ~ 0: the granularity floor applies.
        assert_eq!(r.rttvar(), Duration::ZERO);
        assert_eq!(r.pto(ms(1), ms(25), ms(0)), ms(126));
        assert_eq!(r.loss_delay(MS), ms(112) + Duration::from_micros(500));
        r.update(ms(200), Duration::ZERO, ms(25));
        // latest (200) > smoothed (112.5): 9/8 * 200
        assert_eq!(r.loss_delay(MS), ms(225));
        assert_eq!(RttEstimator::new(Duration::ZERO).loss_delay(MS), MS);
    }

    #[test]
    fn absurd_samples_saturate() {
        let mut r = RttEstimator::new(Duration::MAX);
        r.update(Duration::MAX, Duration::MAX, Duration::MAX);
        r.update(Duration::MAX, Duration::MAX, Duration::MAX);
        r.update(Duration::ZERO, Duration::MAX, Duration::MAX);
        let _ = r.pto(Duration::MAX, Duration::MAX, Duration::MAX);
        let _ = r.loss_delay(Duration::MAX);
    }

    /// The same update on `Duration`s, as RFC 9002 writes it: the estimator's integer
    /// nanoseconds must give exactly these values.
    fn reference(samples: &[(u64, u64)], max_ack_delay: Duration) -> [Duration; 4] {
        let (mut latest, mut smoothed, mut rttvar, mut min) =
            (ms(333), ms(333), ms(333) / 2, ms(333));
        for (k, &(sample, delay)) in samples.iter().enumerate() {
            let (sample, delay) = (Duration::from_nanos(sample), Duration::from_nanos(delay));
            latest = sample;
            if k == 0 {
                (min, smoothed, rttvar) = (sample, sample, sample / 2);
                continue;
            }
            min = min.min(sample);
            let adjusted = sample
                .checked_sub(delay.min(max_ack_delay))
                .filter(|a| *a >= min)
                .unwrap_or(sample);
            let deviation = smoothed.abs_diff(adjusted);
            rttvar = (rttvar * 3 + deviation) / 4;
            smoothed = (smoothed * 7 + adjusted) / 8;
        }
        [latest, smoothed, rttvar, min]
    }

    proptest::proptest! {
        /// Integer nanoseconds give what `Duration` arithmetic gives, for samples up to an
        /// hour and any ack delay.
        #[test]
        fn nanosecond_arithmetic_matches_durations(
            samples in proptest::collection::vec((0u64..3_600_000_000_000, 0u64..1_000_000_000), 1..50),
            max_ack_delay_us in 0u64..100_000,
        ) {
            let max_ack_delay = Duration::from_micros(max_ack_delay_us);
            let mut r = RttEstimator::new(ms(333));
            for &(sample, delay) in &samples {
                r.update(Duration::from_nanos(sample), Duration::from_nanos(delay), max_ack_delay);
            }
            proptest::prop_assert_eq!(
                [r.latest(), r.smoothed(), r.rttvar(), r.min()],
                reference(&samples, max_ack_delay)
            );
            let [_, smoothed, rttvar, _] = reference(&samples, max_ack_delay);
            let pto = (smoothed + (rttvar * 4).max(MS) + max_ack_delay).max(ms(1));
            proptest::prop_assert_eq!(r.pto(MS, max_ack_delay, ms(1)), pto);
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cases = [
            (ms(100), 0, ms(60_000), ms(100)),
            (ms(100), 1, ms(60_000), ms(200)),
            (ms(100), 3, ms(60_000), ms(800)),
            (ms(100), 10, ms(60_000), ms(60_000)),
            (ms(100), u32::MAX, ms(60_000), ms(60_000)),
            (Duration::ZERO, u32::MAX, ms(60_000), Duration::ZERO),
            (
                Duration::from_nanos(1),
                u32::MAX,
                Duration::MAX,
                Duration::MAX,
            ),
            (ms(100), 2, ms(50), ms(50)),
        ];
        for (base, count, max, want) in cases {
            assert_eq!(backoff(base, count, max), want, "{base:?} {count} {max:?}");
        }
    }
}

//! A NewReno variant for paths with random (non-congestive) loss, such as wireless links.
//!
//! NewReno halves its window at every loss event, once per round trip. On a path that drops,
//! say, 5% of packets at random, that keeps the window at a few packets however fast the path
//! is. This controller grows its window as NewReno does, but reduces it only when the loss
//! looks like congestion:
//!
//! - the smoothed RTT has risen well above the minimum RTT (a queue is building:
//!   `srtt > 1.5 * min_rtt + 1 ms`), or
//! - the recent loss rate (an exponentially weighted average over packets, weight 1/256) is
//!   above 15%, which random loss on a usable path does not reach.
//!
//! Then it halves, once per recovery period, like NewReno; persistent congestion collapses
//! the window to the minimum. Losses that look random do not shrink the window. The idea of
//! telling random from congestive loss by the RTT is TCP Veno's; this controller is simpler
//! and more permissive, and is meant for paths the application knows to be lossy.

use std::time::{Duration, Instant};

use super::Controller;
use super::new_reno::NewReno;
use crate::rtt::RttEstimator;

/// Fixed-point unit of the loss rate: 1.0.
const ONE: u32 = 1 << 16;
/// Loss rate above which losses count as congestion (15%).
const LOSS_RATE_LIMIT: u32 = ONE * 15 / 100;
/// EWMA weight shift: each packet moves the average by 1/256 of the difference, so at 5%
/// random loss the average stays within a percentage point or so of 5% (with 1/32 it
/// passed 15% every few hundred packets), and a loss rate that jumps to 30% takes it past
/// 15% within about 130 packets.
const EWMA_SHIFT: u32 = 8;

/// NewReno growth; reductions only for losses that look like congestion.
#[derive(Debug, Clone)]
pub struct LossTolerant {
    inner: NewReno,
    /// Loss rate in 1/65536ths, averaged over packets.
    loss_rate: u32,
    smoothed: Duration,
    min_rtt: Option<Duration>,
}

impl LossTolerant {
    /// A controller for datagrams of at most `max_datagram` bytes.
    pub fn new(max_datagram: u64) -> Self {
        LossTolerant {
            inner: NewReno::new(max_datagram),
            loss_rate: 0,
            smoothed: Duration::ZERO,
            min_rtt: None,
        }
    }

    /// The recent loss rate, as a fraction.
    pub fn loss_rate(&self) -> f64 {
        f64::from(self.loss_rate) / f64::from(ONE)
    }

    fn record(&mut self, lost: bool) {
        let sample = if lost { ONE } else { 0 };
        // loss_rate += (sample - loss_rate) / 256, in integers.
        self.loss_rate = self.loss_rate - (self.loss_rate >> EWMA_SHIFT) + (sample >> EWMA_SHIFT);
    }

    /// A packet was delivered: counts it and takes the latest RTT figures.
    fn delivered(&mut self, rtt: &RttEstimator) {
        self.record(false);
        if rtt.has_samples() {
            self.smoothed = rtt.smoothed();
            self.min_rtt = Some(rtt.min());
        }
    }

    /// Whether the current loss looks like congestion.
    fn congested(&self) -> bool {
        if self.loss_rate > LOSS_RATE_LIMIT {
            return true;
        }
        match self.min_rtt {
            Some(min) => self.smoothed > min * 3 / 2 + Duration::from_millis(1),
            // No RTT sample yet: nothing to compare with, so be conservative.
            None => true,
        }
    }
}

impl Controller for LossTolerant {
    fn on_packet_sent(&mut self, now: Instant, bytes: u64) {
        self.inner.on_packet_sent(now, bytes);
    }

    fn on_packet_acked(
        &mut self,
        now: Instant,
        sent_time: Instant,
        bytes: u64,
        rtt: &RttEstimator,
    ) {
        self.delivered(rtt);
        self.inner.on_packet_acked(now, sent_time, bytes, rtt);
    }

    fn on_packet_acked_app_limited(
        &mut self,
        _now: Instant,
        _sent_time: Instant,
        _bytes: u64,
        rtt: &RttEstimator,
    ) {
        // Not a reason to grow, but a delivery: without it the loss rate would count every
        // loss and only some of the deliveries.
        self.delivered(rtt);
    }

    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) {
        self.record(true);
        if self.congested() {
            self.inner.on_congestion_event(now, sent_time);
        }
    }

    fn on_persistent_congestion(&mut self, now: Instant) {
        self.inner.on_persistent_congestion(now);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn name(&self) -> &'static str {
        "loss_tolerant"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MDS: u64 = 1200;

    #[allow(clippy::disallowed_methods)] // a base instant; only offsets matter
    fn t0() -> Instant {
        Instant::now()
    }

    /// An estimator that has seen `samples` (each with no ack delay).
    fn rtt_with(samples: &[u64]) -> RttEstimator {
        let mut r = RttEstimator::new(Duration::from_millis(100));
        for &ms in samples {
            r.update(Duration::from_millis(ms), Duration::ZERO, Duration::ZERO);
        }
        r
    }

    #[test]
    fn random_loss_on_a_steady_rtt_keeps_the_window() {
        let t = t0();
        let rtt = rtt_with(&[10, 10, 10]);
        let mut c = LossTolerant::new(MDS);
        for i in 0..200 {
            c.on_packet_acked(t, t, MDS, &rtt);
            if i % 20 == 0 {
                // 5% loss
                let before = c.window();
                c.on_congestion_event(t + Duration::from_millis(i), t);
                assert_eq!(c.window(), before, "loss {i} looked random");
            }
        }
        assert!(c.loss_rate() < 0.15);
    }

    #[test]
    fn a_rising_rtt_makes_loss_count_as_congestion() {
        let t = t0();
        let mut c = LossTolerant::new(MDS);
        c.on_packet_acked(t, t, MDS, &rtt_with(&[10]));
        let queued = rtt_with(&[10, 40, 40, 40, 40, 40]);
        c.on_packet_acked(t, t, MDS, &queued);
        let before = c.window();
        c.on_congestion_event(t + Duration::from_millis(1), t + Duration::from_millis(1));
        assert_eq!(c.window(), before / 2);
    }

    #[test]
    fn a_high_loss_rate_counts_as_congestion() {
        let t = t0();
        let rtt = rtt_with(&[10, 10]);
        let mut c = LossTolerant::new(MDS);
        c.on_packet_acked(t, t, MDS, &rtt);
        let mut reduced = false;
        for i in 0..100u64 {
            let before = c.window();
            // 50% loss
            c.on_packet_acked(t, t, MDS, &rtt);
            c.on_congestion_event(
                t + Duration::from_millis(i + 1),
                t + Duration::from_millis(i + 1),
            );
            reduced |= c.window() < before;
        }
        assert!(reduced);
        assert!(c.loss_rate() > 0.15);
    }

    /// 5% random loss on a steady RTT, over many seeds and 20,000 packets each: no loss ever
    /// counts as congestion. (With the average at weight 1/32 the rate passed 15% every few
    /// hundred packets and halved the window.)
    #[test]
    fn five_percent_random_loss_never_halves_the_window() {
        let t = t0();
        let rtt = rtt_with(&[10, 10, 10]);
        for seed in 0..20 {
            let mut rng = crate::Rng::new(seed);
            let mut c = LossTolerant::new(MDS);
            // An RTT sample first: before one, every loss counts as congestion.
            c.on_packet_acked(t, t, MDS, &rtt);
            let mut highest = 0.0f64;
            for i in 0..20_000u64 {
                let at = t + Duration::from_micros(i * 100);
                if rng.chance(0.05) {
                    let before = c.window();
                    c.on_congestion_event(at, at);
                    assert!(
                        c.window() >= before,
                        "seed {seed}: loss at packet {i} halved the window (rate {})",
                        c.loss_rate()
                    );
                } else {
                    c.on_packet_acked(at, at, MDS, &rtt);
                }
                highest = highest.max(c.loss_rate());
            }
            assert!(highest < 0.12, "seed {seed}: loss rate reached {highest}");
        }
    }

    /// Acknowledgements of packets sent while the window was mostly unused do not grow it,
    /// but they are deliveries: the loss rate counts them.
    #[test]
    fn app_limited_acknowledgements_count_as_deliveries() {
        let t = t0();
        let rtt = rtt_with(&[10, 10]);
        let mut c = LossTolerant::new(MDS);
        let start = c.window();
        for i in 0..2_000u64 {
            let at = t + Duration::from_millis(i);
            if i % 20 == 19 {
                c.on_congestion_event(at, at);
            } else {
                c.on_packet_acked_app_limited(at, at, MDS, &rtt);
            }
        }
        assert!((0.03..0.07).contains(&c.loss_rate()), "{}", c.loss_rate());
        assert_eq!(c.window(), start, "neither grown nor halved");
    }

    /// A loss rate that jumps from 5% to 30% counts as congestion within a few hundred
    /// packets.
    #[test]
    fn a_jump_in_the_loss_rate_is_seen_soon() {
        let t = t0();
        let rtt = rtt_with(&[10, 10]);
        let mut rng = crate::Rng::new(7);
        let mut c = LossTolerant::new(MDS);
        for i in 0..5_000u64 {
            let at = t + Duration::from_micros(i * 100);
            if rng.chance(0.05) {
                c.on_congestion_event(at, at);
            } else {
                c.on_packet_acked(at, at, MDS, &rtt);
            }
        }
        let mut seen = None;
        for i in 0..1_000u64 {
            let at = t + Duration::from_millis(1_000 + i);
            if rng.chance(0.3) {
                let before = c.window();
                c.on_congestion_event(at, at);
                if c.window() < before {
                    seen = Some(i);
                    break;
                }
            } else {
                c.on_packet_acked(at, at, MDS, &rtt);
            }
        }
        let seen = seen.expect("30% loss never counted as congestion");
        assert!(seen < 400, "took {seen} packets");
    }

    #[test]
    fn persistent_congestion_collapses_the_window() {
        let t = t0();
        let mut c = LossTolerant::new(MDS);
        c.on_packet_acked(t, t, MDS, &rtt_with(&[10, 10]));
        c.on_persistent_congestion(t);
        assert_eq!(c.window(), 2 * MDS);
    }
}

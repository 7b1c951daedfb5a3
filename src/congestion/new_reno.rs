//! NewReno congestion control as specified in RFC 9002 section 7 and appendix B.

use std::time::Instant;

use super::Controller;
use crate::rtt::RttEstimator;

/// The classic loss-based controller: slow start, congestion avoidance, halving on loss.
///
/// - The window starts at `min(10 * mds, max(14720, 2 * mds))` bytes (`mds` = maximum
///   datagram size) and never drops below `2 * mds`.
/// - In slow start (window below the threshold) every acknowledged byte grows the window by
///   one byte; in congestion avoidance it grows by one datagram per window of acknowledged
///   bytes.
/// - A loss halves the window and starts a recovery period at `now`. Losses and
///   acknowledgments of packets sent before that start neither shrink nor grow the window
///   again, so one burst of losses costs one reduction.
/// - Persistent congestion collapses the window to the minimum and ends the recovery period.
///
/// The connection should not report acknowledgments while it is application-limited (RFC
/// 9002 section 7.8), so that an idle sender does not inflate its window.
#[derive(Debug, Clone)]
pub struct NewReno {
    max_datagram: u64,
    window: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance since the window last grew.
    bytes_acked: u64,
    /// When the current recovery period started; `None` outside recovery.
    recovery_start: Option<Instant>,
}

impl NewReno {
    /// Creates a controller for datagrams of at most `max_datagram` bytes (at least 1).
    pub fn new(max_datagram: u64) -> Self {
        let max_datagram = max_datagram.max(1);
        NewReno {
            max_datagram,
            window: Self::initial_window(max_datagram),
            ssthresh: u64::MAX,
            bytes_acked: 0,
            recovery_start: None,
        }
    }

    /// The initial window for `max_datagram`: `min(10 * mds, max(14720, 2 * mds))` (RFC 9002
    /// section 7.2).
    pub fn initial_window(max_datagram: u64) -> u64 {
        max_datagram
            .saturating_mul(10)
            .min(max_datagram.saturating_mul(2).max(14_720))
    }

    /// The smallest window: two datagrams.
    pub fn minimum_window(&self) -> u64 {
        self.max_datagram.saturating_mul(2)
    }

    /// The slow-start threshold (`u64::MAX` until the first loss).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    /// Whether a packet sent at `sent_time` belongs to the current recovery period.
    pub fn in_recovery(&self, sent_time: Instant) -> bool {
        self.recovery_start.is_some_and(|start| sent_time <= start)
    }
}

impl Controller for NewReno {
    fn on_packet_sent(&mut self, _now: Instant, _bytes: u64) {}

    fn on_packet_acked(
        &mut self,
        _now: Instant,
        sent_time: Instant,
        bytes: u64,
        _rtt: &RttEstimator,
    ) {
        if self.in_recovery(sent_time) {
            return;
        }
        if self.window < self.ssthresh {
            // Slow start: grow up to the threshold; the rest counts towards avoidance.
            let grown = self.window.saturating_add(bytes);
            if grown <= self.ssthresh {
                self.window = grown;
                return;
            }
            self.window = self.ssthresh;
            self.bytes_acked = self.bytes_acked.saturating_add(grown - self.ssthresh);
        } else {
            self.bytes_acked = self.bytes_acked.saturating_add(bytes);
        }
        // Congestion avoidance: one datagram per window's worth of acknowledged bytes.
        if self.bytes_acked >= self.window {
            self.bytes_acked -= self.window;
            self.window = self.window.saturating_add(self.max_datagram);
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant) {
        if !self.in_recovery(sent_time) {
            self.recovery_start = Some(now);
            self.ssthresh = self.window / 2;
            self.window = self.ssthresh.max(self.minimum_window());
            self.bytes_acked = 0;
        }
    }

    fn on_persistent_congestion(&mut self, _now: Instant) {
        self.window = self.minimum_window();
        self.recovery_start = None;
        self.bytes_acked = 0;
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn name(&self) -> &'static str {
        "new_reno"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MDS: u64 = 1200;

    /// A fixed origin plus `ms` milliseconds; the controller only compares instants.
    fn at(ms: u64) -> Instant {
        use std::sync::OnceLock;
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        #[allow(clippy::disallowed_methods)]
        let origin = *ORIGIN.get_or_init(Instant::now);
        origin + Duration::from_millis(ms)
    }

    fn rtt() -> RttEstimator {
        RttEstimator::new(Duration::from_millis(100))
    }

    #[test]
    fn initial_window() {
        for (mds, want) in [
            (1200, 12_000),
            (1472, 14_720),
            (1500, 14_720),
            (9000, 18_000),
            (100, 1000),
        ] {
            assert_eq!(NewReno::initial_window(mds), want, "{mds}");
            assert_eq!(NewReno::new(mds).window(), want, "{mds}");
        }
        assert_eq!(NewReno::new(0).minimum_window(), 2);
        assert_eq!(NewReno::initial_window(u64::MAX), u64::MAX);
    }

    #[test]
    fn slow_start_doubles_per_round_trip() {
        let mut c = NewReno::new(MDS);
        for round in 0..3 {
            let start = c.window();
            for _ in 0..start / MDS {
                c.on_packet_sent(at(round * 100), MDS);
            }
            for _ in 0..start / MDS {
                c.on_packet_acked(at(round * 100 + 100), at(round * 100), MDS, &rtt());
            }
            assert_eq!(c.window(), 2 * start, "round {round}");
        }
        assert_eq!(c.window(), 96_000);
    }

    #[test]
    fn loss_halves_once_per_recovery_period() {
        let mut c = NewReno::new(MDS);
        c.on_packet_acked(at(10), at(0), 12_000, &rtt());
        assert_eq!(c.window(), 24_000);

        // A packet sent at 20 is lost, detected at 100: recovery starts at 100.
        c.on_congestion_event(at(100), at(20));
        assert_eq!((c.window(), c.ssthresh()), (12_000, 12_000));
        assert!(c.in_recovery(at(100)) && !c.in_recovery(at(101)));

        // More losses and late acks of packets sent before the recovery start change nothing.
        c.on_congestion_event(at(110), at(30));
        c.on_congestion_event(at(120), at(100));
        c.on_packet_acked(at(130), at(90), MDS, &rtt());
        assert_eq!(c.window(), 12_000);

        // A packet sent after the recovery start ends it: its loss reduces again.
        c.on_congestion_event(at(200), at(150));
        assert_eq!((c.window(), c.ssthresh()), (6000, 6000));
    }

    #[test]
    fn congestion_avoidance_adds_one_datagram_per_window() {
        let mut c = NewReno::new(MDS);
        c.on_congestion_event(at(10), at(0));
        assert_eq!(c.window(), 6000);
        // 6000 bytes acknowledged (packets sent after recovery): +1 datagram.
        for _ in 0..4 {
            c.on_packet_acked(at(100), at(20), 1200, &rtt());
        }
        assert_eq!(c.window(), 6000);
        c.on_packet_acked(at(100), at(20), 1200, &rtt());
        assert_eq!(c.window(), 7200);
        // The next increase needs a full 7200-byte window.
        for _ in 0..5 {
            c.on_packet_acked(at(200), at(120), 1200, &rtt());
        }
        assert_eq!(c.window(), 7200);
        c.on_packet_acked(at(200), at(120), 1200, &rtt());
        assert_eq!(c.window(), 8400);
    }

    #[test]
    fn slow_start_stops_at_the_threshold() {
        let mut c = NewReno::new(MDS);
        c.on_packet_acked(at(10), at(0), 12_000, &rtt());
        c.on_congestion_event(at(20), at(5)); // window 12000, ssthresh 12000
        // Persistent congestion within the same period: the threshold stays, the window collapses.
        c.on_congestion_event(at(30), at(15));
        c.on_persistent_congestion(at(30));
        assert_eq!(c.window(), 2400);
        c.on_packet_acked(at(40), at(35), 9000, &rtt());
        assert_eq!(c.window(), 11_400);
        // 1200 more: 600 reach the threshold, 600 count towards avoidance.
        c.on_packet_acked(at(40), at(35), 1200, &rtt());
        assert_eq!((c.window(), c.bytes_acked), (12_000, 600));
    }

    #[test]
    fn persistent_congestion_collapses_to_the_minimum() {
        let mut c = NewReno::new(MDS);
        c.on_packet_acked(at(10), at(0), 50_000, &rtt());
        c.on_congestion_event(at(100), at(20));
        c.on_persistent_congestion(at(100));
        assert_eq!(c.window(), 2 * MDS);
        assert!(!c.in_recovery(at(0)));
        // Even inside a recovery period.
        let mut c = NewReno::new(MDS);
        c.on_congestion_event(at(100), at(20));
        c.on_congestion_event(at(110), at(30));
        c.on_persistent_congestion(at(110));
        assert_eq!(c.window(), 2 * MDS);
    }

    #[test]
    fn window_never_below_minimum() {
        let mut c = NewReno::new(MDS);
        for i in 0..50 {
            // Each loss is of a packet sent after the previous recovery started.
            c.on_congestion_event(at(i * 10 + 5), at(i * 10 + 1));
            if i % 7 == 0 {
                c.on_persistent_congestion(at(i * 10 + 5));
            }
            assert!(c.window() >= c.minimum_window(), "step {i}");
        }
        assert_eq!(c.window(), 2 * MDS);
    }
}

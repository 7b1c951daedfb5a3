//! The absence of congestion control.

use std::time::Instant;

use super::Controller;
use crate::rtt::RttEstimator;

/// A controller whose window is unlimited (`u64::MAX`) and never changes.
///
/// For latency-first users on provisioned links only: on a shared network it will make
/// congestion worse instead of backing off.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCongestionControl;

impl Controller for NoCongestionControl {
    fn on_packet_sent(&mut self, _now: Instant, _bytes: u64) {}

    fn on_packet_acked(&mut self, _now: Instant, _sent: Instant, _bytes: u64, _rtt: &RttEstimator) {
    }

    fn on_congestion_event(&mut self, _now: Instant, _sent_time: Instant) {}

    fn on_persistent_congestion(&mut self, _now: Instant) {}

    fn window(&self) -> u64 {
        u64::MAX
    }

    fn name(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn window_never_moves() {
        // Any origin will do: the controller only compares the instants it is given.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let rtt = RttEstimator::new(Duration::from_millis(100));
        let mut c = NoCongestionControl;
        c.on_packet_sent(t0, 1200);
        c.on_congestion_event(t0, t0);
        c.on_persistent_congestion(t0);
        c.on_packet_acked(t0, t0, 1200, &rtt);
        assert_eq!(c.window(), u64::MAX);
    }
}

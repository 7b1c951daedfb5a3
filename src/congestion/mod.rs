//! Congestion control: a narrow [`Controller`] trait and its implementations.
//!
//! The connection tells the controller what happened (a packet sent, acknowledged, or lost)
//! and asks it one thing: how many bytes may be in flight ([`Controller::window`]). Bytes in
//! flight are counted by the connection, not here. Every method takes `now`, so controllers
//! never read the clock (RFC 9002 section 7).

mod loss_tolerant;
mod new_reno;
mod none;

pub use loss_tolerant::LossTolerant;
pub use new_reno::NewReno;
pub use none::NoCongestionControl;

use std::time::Instant;

use crate::rtt::RttEstimator;

/// A congestion controller, driven by the connection's loss recovery.
pub trait Controller: std::fmt::Debug + Send {
    /// A packet of `bytes` bytes that counts towards bytes in flight was sent.
    fn on_packet_sent(&mut self, now: Instant, bytes: u64);

    /// A packet of `bytes` bytes, sent at `sent_time`, was acknowledged for the first time.
    fn on_packet_acked(&mut self, now: Instant, sent_time: Instant, bytes: u64, rtt: &RttEstimator);

    /// A packet of `bytes` bytes, sent at `sent_time`, was acknowledged for the first time
    /// while the sender left most of its window unused (RFC 9002 section 7.8): the window
    /// must not grow on it, so [`on_packet_acked`](Self::on_packet_acked) is not called. A
    /// controller that keeps statistics of deliveries, such as a loss rate, counts it here.
    /// Does nothing unless implemented.
    fn on_packet_acked_app_limited(
        &mut self,
        _now: Instant,
        _sent_time: Instant,
        _bytes: u64,
        _rtt: &RttEstimator,
    ) {
    }

    /// A packet sent at `sent_time` was declared lost.
    fn on_congestion_event(&mut self, now: Instant, sent_time: Instant);

    /// Persistent congestion was established (RFC 9002 section 7.6): the packets lost over
    /// more than three probe timeouts were each reported to
    /// [`on_congestion_event`](Self::on_congestion_event) first.
    fn on_persistent_congestion(&mut self, now: Instant);

    /// The congestion window in bytes: how many bytes may be in flight.
    fn window(&self) -> u64;

    /// A short name for logs and statistics.
    fn name(&self) -> &'static str;
}

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// NewReno as in RFC 9002 section 7: the safe choice on shared networks.
    #[default]
    NewReno,
    /// NewReno growth, but losses that look random (steady RTT, loss rate under 15%) do not
    /// shrink the window: for paths with random loss, such as wireless links.
    LossTolerant,
    /// No congestion control: the window is unlimited. Only for latency-first users on
    /// provisioned links, where the application bounds its own rate.
    None,
}

impl std::str::FromStr for CongestionControl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "new-reno" => Ok(CongestionControl::NewReno),
            "loss-tolerant" => Ok(CongestionControl::LossTolerant),
            "none" => Ok(CongestionControl::None),
            other => Err(format!(
                "unknown congestion controller {other:?} (expected new-reno, loss-tolerant or none)"
            )),
        }
    }
}

impl CongestionControl {
    /// Creates a controller of this kind for datagrams of at most `max_datagram` bytes.
    pub fn build(self, max_datagram: u64) -> Box<dyn Controller> {
        match self {
            CongestionControl::NewReno => Box::new(NewReno::new(max_datagram)),
            CongestionControl::LossTolerant => Box::new(LossTolerant::new(max_datagram)),
            CongestionControl::None => Box::new(NoCongestionControl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_picks_the_controller() {
        let cases = [
            (CongestionControl::NewReno, "new_reno", 12_000),
            (CongestionControl::LossTolerant, "loss_tolerant", 12_000),
            (CongestionControl::None, "none", u64::MAX),
        ];
        for (kind, name, window) in cases {
            let c = kind.build(1200);
            assert_eq!((c.name(), c.window()), (name, window));
        }
        assert_eq!(CongestionControl::default(), CongestionControl::NewReno);
    }
}

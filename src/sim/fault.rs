//! [`FaultPlan`]: a random but reproducible set of faults for one seed of an invariant suite.

use std::time::{Duration, Instant};

use super::link::{BurstLoss, LinkConfig, uniform_duration};
use super::network::{Network, NodeId};
use crate::rng::Rng;

/// Keeps the plan's random stream apart from other streams seeded with the same number (the
/// network's, the protocol's).
const SALT: u64 = 0xFA17_9A1E_5EED_0001;

/// Faults drawn per seed for invariant suites: one link configuration (used in both
/// directions) and outage windows, as offsets from the start of the run.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The impairments of both directions of the link.
    pub link: LinkConfig,
    /// Partitions between the two nodes: `(start, end)` offsets, sorted by start.
    pub partitions: Vec<(Duration, Duration)>,
    /// Blackouts of the whole network: `(start, end)` offsets, sorted by start.
    pub blackouts: Vec<(Duration, Duration)>,
}

impl FaultPlan {
    /// Draws a plan from `seed`: loss 0–30% (sometimes bursty, with the long-run loss still at
    /// most 30%), duplication 0–50%, reordering, corruption 0–5%, delay 0.1–50 ms with jitter,
    /// and occasional partitions and blackouts (some longer than `long_outage`), all within
    /// `horizon` from the start. Each impairment is absent for some seeds, so light and clean
    /// runs are covered too. Bandwidth and queue limits are left unset.
    ///
    /// ```
    /// use std::time::Duration;
    /// use surely::sim::FaultPlan;
    ///
    /// let horizon = Duration::from_secs(10);
    /// let plan = FaultPlan::draw(7, horizon, Duration::from_secs(2));
    /// assert!(plan.link.loss <= 0.3);
    /// assert!(plan.outages_end() <= horizon);
    /// ```
    pub fn draw(seed: u64, horizon: Duration, long_outage: Duration) -> FaultPlan {
        let mut rng = Rng::new(seed ^ SALT);
        let link = draw_link(&mut rng);
        let partitions = if rng.chance(0.5) { 0 } else { 1 + rng.below(3) };
        let partitions = draw_outages(&mut rng, partitions, horizon, long_outage);
        let blackouts = if rng.chance(0.7) { 0 } else { 1 + rng.below(2) };
        let blackouts = draw_outages(&mut rng, blackouts, horizon, long_outage);
        FaultPlan {
            link,
            partitions,
            blackouts,
        }
    }

    /// Applies the plan between `a` and `b` on `net`, with offsets counted from `start`.
    pub fn apply(&self, net: &mut Network, a: NodeId, b: NodeId, start: Instant) {
        net.set_links(a, b, self.link.clone());
        for &(from, to) in &self.partitions {
            net.partition(a, b, start + from, start + to);
        }
        for &(from, to) in &self.blackouts {
            net.blackout(start + from, start + to);
        }
    }

    /// The offset at which the last outage ends (zero if there is none).
    pub fn outages_end(&self) -> Duration {
        self.partitions
            .iter()
            .chain(&self.blackouts)
            .map(|&(_, end)| end)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The longest outage (zero if there is none).
    pub fn longest_outage(&self) -> Duration {
        self.partitions
            .iter()
            .chain(&self.blackouts)
            .map(|&(start, end)| end - start)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

fn draw_link(rng: &mut Rng) -> LinkConfig {
    let delay = between(rng, Duration::from_micros(100), Duration::from_millis(50));
    let jitter = if rng.chance(0.75) {
        uniform_duration(rng, delay)
    } else {
        Duration::ZERO
    };
    let mut link = LinkConfig::perfect(delay)
        .jitter(jitter)
        .fifo(rng.chance(0.5));

    let total_loss = if rng.chance(0.8) {
        rng.next_f64() * 0.3
    } else {
        0.0
    };
    if total_loss > 0.0 && rng.chance(0.35) {
        // Split the loss between a uniform part and a bursty part whose long-run mean is the
        // rest: fraction of time bad = p_enter / (p_enter + p_leave) = burst_loss / loss_in_bad.
        link.loss = total_loss * 0.25 * rng.next_f64();
        let burst_loss = total_loss - link.loss;
        let loss_in_bad = 0.5 + 0.5 * rng.next_f64();
        let bad_fraction = burst_loss / loss_in_bad;
        let p_leave_bad = 0.1 + 0.4 * rng.next_f64();
        let p_enter_bad = bad_fraction * p_leave_bad / (1.0 - bad_fraction);
        link.burst = Some(BurstLoss {
            p_enter_bad,
            p_leave_bad,
            loss_in_bad,
        });
    } else {
        link.loss = total_loss;
    }

    if rng.chance(0.6) {
        link.duplicate = rng.next_f64() * 0.5;
    }
    if rng.chance(0.6) {
        let max_extra = between(
            rng,
            Duration::from_millis(1),
            2 * delay + Duration::from_millis(1),
        );
        link = link.reorder(rng.next_f64() * 0.3, max_extra);
    }
    if rng.chance(0.5) {
        link.corrupt = rng.next_f64() * 0.05;
    }
    link
}

/// Draws `n` outage windows within `horizon`; one in four is longer than `long_outage`
/// (as far as the horizon allows), the others last between 1/20 and 1/2 of it.
fn draw_outages(
    rng: &mut Rng,
    n: u64,
    horizon: Duration,
    long_outage: Duration,
) -> Vec<(Duration, Duration)> {
    let mut outages: Vec<_> = (0..n)
        .map(|_| {
            let len = if rng.chance(0.25) {
                between(
                    rng,
                    long_outage + Duration::from_millis(1),
                    long_outage * 2 + Duration::from_millis(1),
                )
            } else {
                between(rng, long_outage / 20, long_outage / 2)
            };
            let len = len.min(horizon);
            let start = uniform_duration(rng, horizon - len);
            (start, start + len)
        })
        .collect();
    outages.sort();
    outages
}

/// A duration uniformly distributed in `[lo, hi]` (`lo` if `hi <= lo`).
fn between(rng: &mut Rng, lo: Duration, hi: Duration) -> Duration {
    lo + uniform_duration(rng, hi.saturating_sub(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HORIZON: Duration = Duration::from_secs(20);
    const LONG: Duration = Duration::from_secs(3);

    #[test]
    fn draw_is_deterministic() {
        for seed in 0..100 {
            let a = FaultPlan::draw(seed, HORIZON, LONG);
            let b = FaultPlan::draw(seed, HORIZON, LONG);
            assert_eq!(a.link, b.link);
            assert_eq!(a.partitions, b.partitions);
            assert_eq!(a.blackouts, b.blackouts);
        }
        let differ = (0..100)
            .filter(|seed| {
                FaultPlan::draw(*seed, HORIZON, LONG).link
                    != FaultPlan::draw(seed + 1, HORIZON, LONG).link
            })
            .count();
        assert_eq!(differ, 100);
    }

    #[test]
    fn draw_stays_within_bounds_and_covers_the_space() {
        let mut bursty = 0;
        let mut clean_loss = 0;
        let mut long = 0;
        let mut with_partitions = 0;
        let mut with_blackouts = 0;
        let mut max_loss: f64 = 0.0;
        for seed in 0..2000 {
            let plan = FaultPlan::draw(seed, HORIZON, LONG);
            let l = &plan.link;
            let burst_loss = l.burst.map_or(0.0, |b| b.mean_loss());
            let effective = l.loss + burst_loss;
            assert!((0.0..=0.3 + 1e-9).contains(&effective), "{seed}: {l:?}");
            max_loss = max_loss.max(effective);
            if let Some(b) = l.burst {
                bursty += 1;
                for p in [b.p_enter_bad, b.p_leave_bad, b.loss_in_bad] {
                    assert!((0.0..=1.0).contains(&p), "{seed}: {b:?}");
                }
            }
            clean_loss += usize::from(effective == 0.0);
            assert!((0.0..=0.5).contains(&l.duplicate));
            assert!((0.0..=0.3).contains(&l.reorder));
            assert!((0.0..=0.05).contains(&l.corrupt));
            assert!(l.delay >= Duration::from_micros(100) && l.delay <= Duration::from_millis(50));
            assert!(l.jitter <= l.delay);
            assert!(l.bandwidth_bps.is_none() && l.queue_limit_bytes.is_none());
            for w in plan.partitions.windows(2).chain(plan.blackouts.windows(2)) {
                assert!(w[0].0 <= w[1].0);
            }
            for &(start, end) in plan.partitions.iter().chain(&plan.blackouts) {
                assert!(start < end && end <= HORIZON, "{seed}: {plan:?}");
                long += usize::from(end - start > LONG);
            }
            assert!(plan.outages_end() <= HORIZON);
            assert!(plan.longest_outage() <= 2 * LONG + Duration::from_millis(1));
            with_partitions += usize::from(!plan.partitions.is_empty());
            with_blackouts += usize::from(!plan.blackouts.is_empty());
        }
        assert!(max_loss > 0.25);
        assert!(bursty > 200, "{bursty}");
        assert!(clean_loss > 200, "{clean_loss}");
        assert!(long > 200, "{long}");
        assert!((800..1200).contains(&with_partitions), "{with_partitions}");
        assert!((400..800).contains(&with_blackouts), "{with_blackouts}");
    }

    #[test]
    fn outages_fit_a_short_horizon() {
        let horizon = Duration::from_secs(1);
        for seed in 0..500 {
            let plan = FaultPlan::draw(seed, horizon, LONG);
            for &(start, end) in plan.partitions.iter().chain(&plan.blackouts) {
                assert!(start <= end && end <= horizon);
            }
        }
    }

    #[test]
    fn apply_installs_links_and_outages() {
        #[allow(clippy::disallowed_methods)] // the origin of virtual time; only offsets matter
        let start = Instant::now();
        let plan = FaultPlan {
            link: LinkConfig::perfect(Duration::from_millis(5)),
            partitions: vec![(Duration::from_millis(10), Duration::from_millis(20))],
            blackouts: vec![(Duration::from_millis(30), Duration::from_millis(40))],
        };
        let mut net = Network::new(1);
        plan.apply(&mut net, 2, 5, start);
        assert_eq!(net.link(2, 5), plan.link);
        assert_eq!(net.link(5, 2), plan.link);
        for t in [0, 10, 19, 20, 30, 39, 40] {
            net.send(start + Duration::from_millis(t), 5, 2, b"x");
        }
        net.send(start + Duration::from_millis(15), 2, 7, b"elsewhere");
        net.send(start + Duration::from_millis(35), 2, 7, b"blackout");
        assert_eq!(net.stats().dropped_partition, 5);
        assert_eq!(net.in_flight(), 4);
    }
}

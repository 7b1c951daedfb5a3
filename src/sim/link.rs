//! One direction of a simulated link: its impairments ([`LinkConfig`]) and the state they need.
//!
//! A [`Link`] is a small node in the protocol's own shape: it takes `(datagram, now)` and
//! answers with the copies that will come out of the far end and when. The
//! [`Network`](crate::sim::Network) owns one per ordered node pair and keeps the copies in its
//! queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::network::NetStats;
use crate::rng::Rng;

/// Gilbert-Elliott two-state burst loss.
///
/// The link is either *good* or *bad*. Before each datagram the state may change: a good link
/// turns bad with probability `p_enter_bad`, a bad link recovers with probability
/// `p_leave_bad`. In the bad state a datagram is lost with probability `loss_in_bad` (on top of
/// the link's uniform [`LinkConfig::loss`], which applies in both states). The mean length of a
/// bad period is `1 / p_leave_bad` datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    /// Probability, per datagram, that a good link turns bad.
    pub p_enter_bad: f64,
    /// Probability, per datagram, that a bad link turns good again.
    pub p_leave_bad: f64,
    /// Probability that a datagram is lost while the link is bad.
    pub loss_in_bad: f64,
}

impl BurstLoss {
    /// The long-run fraction of datagrams this process alone loses:
    /// `p_enter_bad / (p_enter_bad + p_leave_bad) * loss_in_bad`.
    ///
    /// ```
    /// use surely::sim::BurstLoss;
    /// let b = BurstLoss { p_enter_bad: 0.1, p_leave_bad: 0.4, loss_in_bad: 0.5 };
    /// assert!((b.mean_loss() - 0.1).abs() < 1e-12);
    /// ```
    pub fn mean_loss(&self) -> f64 {
        let enter = self.p_enter_bad.clamp(0.0, 1.0);
        let leave = self.p_leave_bad.clamp(0.0, 1.0);
        if enter + leave <= 0.0 {
            // Never leaves the initial (good) state.
            return 0.0;
        }
        enter / (enter + leave) * self.loss_in_bad.clamp(0.0, 1.0)
    }
}

/// Impairments of one direction of a link.
///
/// `Default` is a perfect link with zero delay. A datagram handed to a link goes through these
/// stages, in order (each probability is drawn independently per datagram):
///
/// 1. **Bottleneck queue.** With [`bandwidth_bps`](Self::bandwidth_bps) set, datagrams are
///    serialized one after the other (FIFO) and leave after `len * 8 / bandwidth`; a datagram
///    that would make the bytes waiting or being serialized exceed
///    [`queue_limit_bytes`](Self::queue_limit_bytes) is tail-dropped. Without a bandwidth the
///    queue is always empty, so only a datagram larger than the limit by itself is dropped.
/// 2. **Loss**: uniform [`loss`](Self::loss), plus [`burst`](Self::burst) loss.
/// 3. **Duplication**: with probability [`duplicate`](Self::duplicate) a second copy is made.
/// 4. Per copy: **corruption** ([`corrupt`](Self::corrupt)), then the **delay**: `delay` plus a
///    uniform draw in `[0, jitter]`, plus, with probability [`reorder`](Self::reorder), a
///    uniform extra in `[0, reorder_delay]`.
///
/// With [`fifo`](Self::fifo) set, a copy that was not picked for reordering is never delivered
/// before an earlier such copy on the same link (its time is raised to the previous one's), so
/// jitter alone does not reorder; copies picked for reordering skip that rule and may overtake
/// or be overtaken.
///
/// ```
/// use std::time::Duration;
/// use surely::sim::LinkConfig;
///
/// let lossy = LinkConfig::perfect(Duration::from_millis(20))
///     .jitter(Duration::from_millis(5))
///     .loss(0.05)
///     .duplicate(0.01)
///     .reorder(0.02, Duration::from_millis(30))
///     .bandwidth(10_000_000)
///     .queue_limit(64 * 1024);
/// assert_eq!(lossy.delay, Duration::from_millis(20));
/// assert_eq!(lossy.bandwidth_bps, Some(10_000_000));
/// assert_eq!(LinkConfig::default(), LinkConfig::perfect(Duration::ZERO));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkConfig {
    /// One-way base delay.
    pub delay: Duration,
    /// Extra uniform `[0, jitter]` delay per datagram (does not by itself reorder if
    /// [`fifo`](Self::fifo) is set).
    pub jitter: Duration,
    /// Uniform loss probability.
    pub loss: f64,
    /// Bursty (Gilbert-Elliott) loss on top of [`loss`](Self::loss).
    pub burst: Option<BurstLoss>,
    /// Probability that a datagram is delivered twice (the copy gets its own delay draw).
    pub duplicate: f64,
    /// Probability that a datagram gets an extra delay in `[0, reorder_delay]`, so that it may
    /// overtake or be overtaken.
    pub reorder: f64,
    /// Largest extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Probability that one to three random bits are flipped (or, one time in eight, the
    /// datagram is truncated by a random amount). Empty datagrams are never corrupted.
    pub corrupt: f64,
    /// Serialization rate in bits per second; `None` is infinitely fast. `Some(0)` is treated
    /// as 1 bit per second.
    pub bandwidth_bps: Option<u64>,
    /// Tail drop when the bytes queued for serialization would exceed this.
    pub queue_limit_bytes: Option<usize>,
    /// If true, jitter never reorders (delivery time is the maximum of the previous delivery
    /// and the drawn time).
    pub fifo: bool,
}

impl LinkConfig {
    /// A perfect link (no loss, no jitter, infinite bandwidth) with a one-way `delay`.
    pub fn perfect(delay: Duration) -> Self {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }

    /// Sets the one-way base delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the uniform jitter bound.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the uniform loss probability.
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    /// Adds Gilbert-Elliott burst loss.
    pub fn burst(mut self, burst: BurstLoss) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Sets the duplication probability.
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Sets the reordering probability and the largest extra delay of a reordered datagram.
    pub fn reorder(mut self, p: f64, max_extra: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = max_extra;
        self
    }

    /// Sets the corruption probability.
    pub fn corrupt(mut self, p: f64) -> Self {
        self.corrupt = p;
        self
    }

    /// Limits the link to `bps` bits per second.
    pub fn bandwidth(mut self, bps: u64) -> Self {
        self.bandwidth_bps = Some(bps);
        self
    }

    /// Tail-drops datagrams once `bytes` are waiting in the bottleneck queue.
    pub fn queue_limit(mut self, bytes: usize) -> Self {
        self.queue_limit_bytes = Some(bytes);
        self
    }

    /// Sets whether jitter may reorder (`false`) or not (`true`).
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }
}

/// One direction of a link: its configuration, its random stream and its state.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) cfg: LinkConfig,
    rng: Rng,
    /// Gilbert-Elliott state: true while the link is in the bad state.
    bad: bool,
    /// When the serializer finishes the last queued datagram.
    busy_until: Option<Instant>,
    /// `(time it leaves the queue, length)` of datagrams not yet fully serialized.
    backlog: VecDeque<(Instant, usize)>,
    backlog_bytes: usize,
    /// Latest delivery time handed out under the `fifo` rule.
    last_fifo: Option<Instant>,
}

impl Link {
    pub(crate) fn new(cfg: LinkConfig, seed: u64) -> Self {
        Link {
            cfg,
            rng: Rng::new(seed),
            bad: false,
            busy_until: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            last_fifo: None,
        }
    }

    /// Takes a datagram at `now` and appends the copies that will arrive, with their arrival
    /// times, to `out`. With `healed` set only the delay, jitter and the bottleneck queue apply.
    pub(crate) fn transmit(
        &mut self,
        now: Instant,
        datagram: &[u8],
        healed: bool,
        stats: &mut NetStats,
        out: &mut Vec<(Instant, Vec<u8>)>,
    ) {
        let Some(leaves) = self.enqueue(now, datagram.len()) else {
            stats.dropped_queue += 1;
            return;
        };
        if !healed && self.lose() {
            stats.lost += 1;
            return;
        }
        let copies = if !healed && self.rng.chance(self.cfg.duplicate) {
            stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut data = datagram.to_vec();
            if !healed && self.rng.chance(self.cfg.corrupt) && corrupt(&mut self.rng, &mut data) {
                stats.corrupted += 1;
            }
            let at = self.arrival(leaves, healed, stats);
            out.push((at, data));
        }
    }

    /// The bottleneck queue: returns when a datagram of `len` bytes, offered at `now`, has
    /// been serialized, or `None` if it is tail-dropped.
    fn enqueue(&mut self, now: Instant, len: usize) -> Option<Instant> {
        while let Some(&(leaves, bytes)) = self.backlog.front() {
            if leaves > now {
                break;
            }
            self.backlog.pop_front();
            self.backlog_bytes -= bytes;
        }
        if let Some(limit) = self.cfg.queue_limit_bytes {
            if self.backlog_bytes + len > limit {
                return None;
            }
        }
        let Some(bps) = self.cfg.bandwidth_bps else {
            return Some(now);
        };
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        let leaves = start + serialization_time(len, bps);
        self.busy_until = Some(leaves);
        self.backlog.push_back((leaves, len));
        self.backlog_bytes += len;
        Some(leaves)
    }

    /// Steps the Gilbert-Elliott state and decides whether this datagram is lost.
    fn lose(&mut self) -> bool {
        let mut lost = self.rng.chance(self.cfg.loss);
        if let Some(burst) = self.cfg.burst {
            self.bad = if self.bad {
                !self.rng.chance(burst.p_leave_bad)
            } else {
                self.rng.chance(burst.p_enter_bad)
            };
            if self.bad && self.rng.chance(burst.loss_in_bad) {
                lost = true;
            }
        }
        lost
    }

    /// Draws the arrival time of one copy that left the bottleneck queue at `leaves`.
    fn arrival(&mut self, leaves: Instant, healed: bool, stats: &mut NetStats) -> Instant {
        let mut at = leaves + self.cfg.delay + uniform_duration(&mut self.rng, self.cfg.jitter);
        if !healed && self.rng.chance(self.cfg.reorder) {
            stats.reordered += 1;
            return at + uniform_duration(&mut self.rng, self.cfg.reorder_delay);
        }
        if self.cfg.fifo {
            if let Some(last) = self.last_fifo {
                at = at.max(last);
            }
            self.last_fifo = Some(at);
        }
        at
    }
}

/// Time to put `len` bytes on a wire of `bps` bits per second, rounded up to the nanosecond.
fn serialization_time(len: usize, bps: u64) -> Duration {
    let bits = len as u128 * 8;
    let nanos = (bits * 1_000_000_000).div_ceil(u128::from(bps.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A duration uniformly distributed in `[0, max]`, at nanosecond resolution.
pub(crate) fn uniform_duration(rng: &mut Rng, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.range_inclusive(0, max))
}

/// Damages `data`: flips one to three distinct bits, or (one time in eight) truncates it.
/// Returns false, leaving it alone, if `data` is empty.
fn corrupt(rng: &mut Rng, data: &mut Vec<u8>) -> bool {
    if data.is_empty() {
        return false;
    }
    let len = data.len() as u64;
    if rng.below(8) == 0 {
        let keep = rng.below(len);
        // `keep < len`, so it fits in usize.
        data.truncate(keep as usize);
        return true;
    }
    let bits = len * 8;
    let flips = (1 + rng.below(3)).min(bits) as usize;
    let mut chosen = [u64::MAX; 3];
    let mut n = 0;
    while n < flips {
        let bit = rng.below(bits);
        if chosen[..n].contains(&bit) {
            continue;
        }
        chosen[n] = bit;
        n += 1;
        // `bit / 8 < len`, so the index is in bounds and fits in usize.
        data[(bit / 8) as usize] ^= 1 << (bit % 8);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_time_rounds_up() {
        assert_eq!(
            serialization_time(1250, 10_000_000),
            Duration::from_millis(1)
        );
        assert_eq!(
            serialization_time(1, 3),
            Duration::from_nanos(2_666_666_667)
        );
        assert_eq!(serialization_time(0, 1000), Duration::ZERO);
        assert_eq!(serialization_time(1, 0), Duration::from_secs(8));
    }

    #[test]
    fn corrupt_always_changes_nonempty_data() {
        let mut rng = Rng::new(5);
        let mut truncated = 0;
        for len in [1usize, 2, 7, 100, 1200] {
            for _ in 0..500 {
                let original: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut data = original.clone();
                assert!(corrupt(&mut rng, &mut data));
                assert_ne!(data, original);
                if data.len() < original.len() {
                    truncated += 1;
                    assert_eq!(data[..], original[..data.len()]);
                } else {
                    let flipped: u32 = data
                        .iter()
                        .zip(&original)
                        .map(|(a, b)| (a ^ b).count_ones())
                        .sum();
                    assert!((1..=3).contains(&flipped), "{flipped} bits flipped");
                }
            }
        }
        assert!(truncated > 100, "{truncated}");
        let mut empty = Vec::new();
        assert!(!corrupt(&mut rng, &mut empty));
    }

    #[test]
    fn burst_mean_loss_degenerate_cases() {
        let never = BurstLoss {
            p_enter_bad: 0.0,
            p_leave_bad: 0.0,
            loss_in_bad: 1.0,
        };
        assert_eq!(never.mean_loss(), 0.0);
        let always = BurstLoss {
            p_enter_bad: 1.0,
            p_leave_bad: 0.0,
            loss_in_bad: 1.0,
        };
        assert_eq!(always.mean_loss(), 1.0);
    }
}

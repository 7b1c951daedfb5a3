//! The [`Network`]: links between numbered nodes, scheduled outages, and the queue of
//! datagrams in flight, ordered by delivery time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

use super::link::{Link, LinkConfig};

/// Identifies an endpoint attached to a [`Network`]. Any number may be used; nodes need no
/// registration.
pub type NodeId = usize;

/// Counters kept by a [`Network`].
///
/// Every datagram handed to [`Network::send`] is counted in `sent` and ends in exactly one of
/// `lost`, `dropped_partition`, `dropped_queue` or the queue of datagrams in flight; each
/// duplicate adds one more copy. So at any time
/// `sent + duplicated == delivered + lost + dropped_partition + dropped_queue + in_flight()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to [`Network::send`].
    pub sent: u64,
    /// Copies handed out by [`Network::poll_delivery`] (duplicates count separately).
    pub delivered: u64,
    /// Datagrams lost to uniform or burst loss.
    pub lost: u64,
    /// Datagrams that were given a second copy.
    pub duplicated: u64,
    /// Copies whose bytes were damaged.
    pub corrupted: u64,
    /// Copies given the extra reordering delay (whether or not they ended up out of order).
    pub reordered: u64,
    /// Datagrams dropped because they were sent during a partition or a blackout.
    pub dropped_partition: u64,
    /// Datagrams tail-dropped by a full bottleneck queue.
    pub dropped_queue: u64,
}

/// A datagram coming out of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sending node.
    pub from: NodeId,
    /// The receiving node.
    pub to: NodeId,
    /// When it was scheduled to arrive (at or before the `now` it was polled with).
    pub at: Instant,
    /// The bytes, possibly corrupted.
    pub data: Vec<u8>,
}

/// A deterministic simulated network between numbered nodes.
///
/// Call order, as with a protocol connection: [`send`](Self::send) datagrams at the current
/// virtual time, then advance time to [`next_delivery`](Self::next_delivery) (or to an
/// endpoint's own timer, whichever comes first) and drain [`poll_delivery`](Self::poll_delivery).
/// Time is only ever passed in; it should not go backwards.
///
/// Each ordered pair of nodes has its own link ([`set_link`](Self::set_link); unset links are
/// perfect with zero delay) with its own random stream derived from the network's seed and the
/// pair, so the fate of a datagram depends only on the seed, the link's configuration and the
/// datagrams sent on that link before it. Outages ([`partition`](Self::partition),
/// [`blackout`](Self::blackout)) apply to datagrams *sent* within their window, which are
/// dropped at once; datagrams already in flight still arrive.
#[derive(Debug, Clone)]
pub struct Network {
    seed: u64,
    links: BTreeMap<(NodeId, NodeId), Link>,
    partitions: Vec<Partition>,
    blackouts: Vec<(Instant, Instant)>,
    heal_at: Option<Instant>,
    pending: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    stats: NetStats,
    /// Reused buffer for the copies a link produces.
    scratch: Vec<(Instant, Vec<u8>)>,
}

/// Traffic between `a` and `b`, both directions, is cut for datagrams sent in `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Partition {
    a: NodeId,
    b: NodeId,
    start: Instant,
    end: Instant,
}

/// A copy in flight. Ordered by `(at, seq)`; `seq` is unique, so later fields never decide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: Instant,
    seq: u64,
    from: NodeId,
    to: NodeId,
    data: Vec<u8>,
}

impl Network {
    /// Creates an empty network whose random draws all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Network {
            seed,
            links: BTreeMap::new(),
            partitions: Vec::new(),
            blackouts: Vec::new(),
            heal_at: None,
            pending: BinaryHeap::new(),
            next_seq: 0,
            stats: NetStats::default(),
            scratch: Vec::new(),
        }
    }

    /// The seed this network was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Configures the link from `from` to `to` (one direction).
    ///
    /// Reconfiguring a link that has carried traffic keeps its state (its random stream, its
    /// bottleneck queue, its burst-loss state) and applies to datagrams sent from now on.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: LinkConfig) {
        self.link_mut(from, to).cfg = cfg;
    }

    /// Configures both directions between `a` and `b` alike.
    pub fn set_links(&mut self, a: NodeId, b: NodeId, cfg: LinkConfig) {
        self.set_link(b, a, cfg.clone());
        self.set_link(a, b, cfg);
    }

    /// The configuration of the link from `from` to `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkConfig {
        self.links
            .get(&(from, to))
            .map(|link| link.cfg.clone())
            .unwrap_or_default()
    }

    /// Cuts all traffic between `a` and `b` (both directions) for datagrams sent in
    /// `[start, end)`. Several partitions may be scheduled.
    pub fn partition(&mut self, a: NodeId, b: NodeId, start: Instant, end: Instant) {
        self.partitions.push(Partition { a, b, start, end });
    }

    /// Drops everything sent by anyone in `[start, end)`.
    pub fn blackout(&mut self, start: Instant, end: Instant) {
        self.blackouts.push((start, end));
    }

    /// Stops all impairments (loss, duplication, reordering, corruption, partitions and
    /// blackouts) for datagrams sent at or after `at`. Delay, jitter, bandwidth and the
    /// bottleneck queue limit stay: they are the link's capacity, not faults. A later call
    /// replaces the earlier time.
    ///
    /// Used by liveness checks: once faults stop, every message must reach an outcome within a
    /// bound.
    pub fn heal_at(&mut self, at: Instant) {
        self.heal_at = Some(at);
    }

    /// Hands a datagram from `from` to `to` to the network at virtual time `now`.
    ///
    /// The bytes are copied; the impairments are drawn here, deterministically from the seed
    /// and the order of calls on this link.
    pub fn send(&mut self, now: Instant, from: NodeId, to: NodeId, datagram: &[u8]) {
        self.stats.sent += 1;
        let healed = self.heal_at.is_some_and(|heal| now >= heal);
        if !healed && self.is_cut(now, from, to) {
            self.stats.dropped_partition += 1;
            return;
        }
        let seed = self.seed;
        let link = self
            .links
            .entry((from, to))
            .or_insert_with(|| Link::new(LinkConfig::default(), link_seed(seed, from, to)));
        link.transmit(now, datagram, healed, &mut self.stats, &mut self.scratch);
        for (at, data) in self.scratch.drain(..) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.pending.push(Reverse(Pending {
                at,
                seq,
                from,
                to,
                data,
            }));
        }
    }

    /// The earliest pending delivery time, if anything is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.pending.peek().map(|Reverse(p)| p.at)
    }

    /// Pops the next datagram due at or before `now`: earliest first, ties in send order.
    pub fn poll_delivery(&mut self, now: Instant) -> Option<Delivery> {
        if self.next_delivery()? > now {
            return None;
        }
        let Reverse(p) = self.pending.pop()?;
        self.stats.delivered += 1;
        Some(Delivery {
            from: p.from,
            to: p.to,
            at: p.at,
            data: p.data,
        })
    }

    /// The number of copies in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The link from `from` to `to`, created perfect if it has never been used.
    fn link_mut(&mut self, from: NodeId, to: NodeId) -> &mut Link {
        let seed = self.seed;
        self.links
            .entry((from, to))
            .or_insert_with(|| Link::new(LinkConfig::default(), link_seed(seed, from, to)))
    }

    /// Whether a datagram sent at `now` from `from` to `to` falls in an outage.
    fn is_cut(&self, now: Instant, from: NodeId, to: NodeId) -> bool {
        let within = |start: Instant, end: Instant| start <= now && now < end;
        self.blackouts
            .iter()
            .any(|&(start, end)| within(start, end))
            || self.partitions.iter().any(|p| {
                ((p.a, p.b) == (from, to) || (p.a, p.b) == (to, from)) && within(p.start, p.end)
            })
    }
}

/// The seed of the random stream of the link `from -> to`; the two directions differ.
fn link_seed(seed: u64, from: NodeId, to: NodeId) -> u64 {
    seed ^ (from as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (to as u64)
            .wrapping_add(1)
            .wrapping_mul(0xD1B5_4A32_D192_ED03)
            .rotate_left(29)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::BurstLoss;

    /// The origin of virtual time. Only offsets from it are used, so the wall clock never
    /// influences a result.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drains everything, returning the deliveries in order.
    fn drain(net: &mut Network) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(at) = net.next_delivery() {
            while let Some(d) = net.poll_delivery(at) {
                out.push(d);
            }
        }
        out
    }

    fn numbered(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    fn number(d: &Delivery) -> u32 {
        u32::from_be_bytes(d.data[..4].try_into().unwrap())
    }

    fn check_conservation(net: &Network) {
        let s = net.stats();
        assert_eq!(
            s.sent + s.duplicated,
            s.delivered + s.lost + s.dropped_partition + s.dropped_queue + net.in_flight() as u64,
            "{s:?}"
        );
    }

    fn everything() -> LinkConfig {
        LinkConfig::perfect(ms(10))
            .jitter(ms(5))
            .loss(0.1)
            .burst(BurstLoss {
                p_enter_bad: 0.05,
                p_leave_bad: 0.3,
                loss_in_bad: 0.7,
            })
            .duplicate(0.1)
            .reorder(0.1, ms(20))
            .corrupt(0.05)
            .bandwidth(500_000)
            .queue_limit(5_000)
    }

    /// What a run observed: `(from, to, arrival offset, bytes)` per delivery, and the counters.
    type Observed = (Vec<(NodeId, NodeId, Duration, Vec<u8>)>, NetStats);

    /// Sends 2000 datagrams both ways on a busy configuration.
    fn run(seed: u64) -> Observed {
        let start = t0();
        let mut net = Network::new(seed);
        net.set_links(0, 1, everything());
        net.partition(0, 1, start + ms(300), start + ms(400));
        let mut out = Vec::new();
        for i in 0..2000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 500);
            while let Some(d) = net.poll_delivery(now) {
                out.push(d);
            }
            net.send(now, (i % 2) as usize, 1 - (i % 2) as usize, &[i as u8; 100]);
        }
        out.extend(drain(&mut net));
        check_conservation(&net);
        let observed = out
            .into_iter()
            .map(|d| (d.from, d.to, d.at - start, d.data))
            .collect();
        (observed, net.stats().clone())
    }

    #[test]
    fn same_seed_same_deliveries() {
        let (a, sa) = run(42);
        let (b, sb) = run(42);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        let (c, _) = run(43);
        assert_ne!(a, c);
        assert!(sa.lost > 0 && sa.duplicated > 0 && sa.corrupted > 0 && sa.reordered > 0);
        assert!(sa.dropped_partition > 0 && sa.dropped_queue > 0, "{sa:?}");
    }

    #[test]
    fn perfect_link_delivers_in_order_after_delay() {
        let start = t0();
        let mut net = Network::new(1);
        net.set_link(3, 7, LinkConfig::perfect(ms(25)));
        for i in 0..10 {
            net.send(start + ms(i), 3, 7, &numbered(i as u32));
        }
        assert_eq!(net.in_flight(), 10);
        assert_eq!(net.next_delivery(), Some(start + ms(25)));
        assert_eq!(net.poll_delivery(start + ms(24)), None);
        let got = drain(&mut net);
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!((d.from, d.to), (3, 7));
            assert_eq!(d.at, start + ms(25 + i as u64));
            assert_eq!(number(d), i as u32);
        }
        assert_eq!(net.next_delivery(), None);
        assert_eq!(net.stats().delivered, 10);
        // The reverse direction was never configured: perfect with zero delay.
        net.send(start + ms(50), 7, 3, b"back");
        assert_eq!(net.next_delivery(), Some(start + ms(50)));
        assert_eq!(net.link(7, 3), LinkConfig::default());
        check_conservation(&net);
    }

    #[test]
    fn ties_are_delivered_in_send_order() {
        let start = t0();
        let mut net = Network::new(1);
        for i in 0..20 {
            net.send(start, i % 3, 9, &numbered(i as u32));
        }
        let got: Vec<u32> = drain(&mut net).iter().map(number).collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn loss_rate_close_to_configured() {
        let start = t0();
        let mut net = Network::new(7);
        net.set_link(0, 1, LinkConfig::perfect(ms(1)).loss(0.2));
        for i in 0..10_000 {
            net.send(start + ms(i), 0, 1, b"x");
        }
        let lost = net.stats().lost;
        assert!((1_800..2_200).contains(&lost), "{lost}");
        assert_eq!(drain(&mut net).len() as u64, 10_000 - lost);
        check_conservation(&net);
    }

    #[test]
    fn burst_loss_is_bursty_and_calibrated() {
        let start = t0();
        let mut net = Network::new(8);
        let burst = BurstLoss {
            p_enter_bad: 0.02,
            p_leave_bad: 0.2,
            loss_in_bad: 1.0,
        };
        net.set_link(0, 1, LinkConfig::perfect(ms(1)).burst(burst));
        let n = 20_000u32;
        for i in 0..n {
            net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
        }
        let lost = net.stats().lost as f64 / f64::from(n);
        assert!((lost - burst.mean_loss()).abs() < 0.03, "{lost}");
        // Losses come in runs: the mean run of consecutive losses is near 1 / p_leave_bad.
        let got: Vec<u32> = drain(&mut net).iter().map(number).collect();
        let gaps: Vec<u32> = got
            .windows(2)
            .map(|w| w[1] - w[0] - 1)
            .filter(|g| *g > 0)
            .collect();
        let mean_run = f64::from(gaps.iter().sum::<u32>()) / gaps.len() as f64;
        assert!((3.5..7.0).contains(&mean_run), "{mean_run}");
    }

    #[test]
    fn duplication_produces_copies() {
        let start = t0();
        let mut net = Network::new(9);
        net.set_link(
            0,
            1,
            LinkConfig::perfect(ms(5)).jitter(ms(3)).duplicate(0.3),
        );
        for i in 0..1000 {
            net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
        }
        let dups = net.stats().duplicated;
        assert!((250..350).contains(&dups), "{dups}");
        let got = drain(&mut net);
        assert_eq!(got.len() as u64, 1000 + dups);
        let mut counts = BTreeMap::new();
        for d in &got {
            *counts.entry(number(d)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 1000);
        assert_eq!(counts.values().filter(|c| **c == 2).count() as u64, dups);
        assert!(counts.values().all(|c| *c <= 2));
        check_conservation(&net);
    }

    fn inversions(got: &[u32]) -> usize {
        got.windows(2).filter(|w| w[1] < w[0]).count()
    }

    #[test]
    fn reordering_reorders() {
        let start = t0();
        let mut net = Network::new(10);
        net.set_link(
            0,
            1,
            LinkConfig::perfect(ms(10)).fifo(true).reorder(0.1, ms(30)),
        );
        for i in 0..1000 {
            net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
        }
        assert!(net.stats().reordered > 50);
        let got: Vec<u32> = drain(&mut net).iter().map(number).collect();
        assert_eq!(got.len(), 1000);
        assert!(inversions(&got) > 50, "{}", inversions(&got));
    }

    #[test]
    fn jitter_reorders_unless_fifo() {
        let start = t0();
        let send_all = |fifo: bool| {
            let mut net = Network::new(11);
            net.set_link(0, 1, LinkConfig::perfect(ms(10)).jitter(ms(20)).fifo(fifo));
            for i in 0..1000 {
                net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
            }
            let got = drain(&mut net);
            assert_eq!(got.len(), 1000);
            for d in &got {
                let sent = start + ms(u64::from(number(d)));
                assert!(d.at >= sent + ms(10));
            }
            got.iter().map(number).collect::<Vec<_>>()
        };
        assert!(inversions(&send_all(false)) > 100);
        assert_eq!(inversions(&send_all(true)), 0);
    }

    #[test]
    fn corruption_changes_bytes() {
        let start = t0();
        let mut net = Network::new(12);
        net.set_link(0, 1, LinkConfig::perfect(ms(1)).corrupt(0.5));
        let payload = vec![0x5Au8; 64];
        for i in 0..1000 {
            net.send(start + ms(i), 0, 1, &payload);
        }
        let corrupted = net.stats().corrupted;
        assert!((430..570).contains(&corrupted), "{corrupted}");
        let got = drain(&mut net);
        assert_eq!(got.len(), 1000);
        let changed = got.iter().filter(|d| d.data != payload).count() as u64;
        assert_eq!(changed, corrupted);
        assert!(got.iter().any(|d| d.data.len() < payload.len()));
        assert!(
            got.iter()
                .any(|d| d.data.len() == payload.len() && d.data != payload)
        );
    }

    #[test]
    fn bandwidth_spaces_datagrams() {
        let start = t0();
        let mut net = Network::new(13);
        // 1250 bytes at 10 Mbit/s take 1 ms each.
        net.set_link(0, 1, LinkConfig::perfect(ms(20)).bandwidth(10_000_000));
        for _ in 0..10 {
            net.send(start, 0, 1, &[0; 1250]);
        }
        let times: Vec<Duration> = drain(&mut net).iter().map(|d| d.at - start).collect();
        let expected: Vec<Duration> = (1..=10).map(|i| ms(20 + i)).collect();
        assert_eq!(times, expected);
        // Once the queue has drained, a datagram goes straight through again.
        net.send(start + ms(100), 0, 1, &[0; 1250]);
        assert_eq!(net.next_delivery(), Some(start + ms(121)));
    }

    #[test]
    fn queue_limit_tail_drops() {
        let start = t0();
        let mut net = Network::new(14);
        net.set_link(
            0,
            1,
            LinkConfig::perfect(ms(5))
                .bandwidth(10_000_000)
                .queue_limit(5_000),
        );
        // A burst of 10 x 1250 bytes: only 4 fit in 5000 bytes of queue.
        for _ in 0..10 {
            net.send(start, 0, 1, &[0; 1250]);
        }
        assert_eq!(net.stats().dropped_queue, 6);
        assert_eq!(net.in_flight(), 4);
        // After 1 ms the first has been serialized, making room for exactly one more.
        net.send(start + ms(1), 0, 1, &[0; 1250]);
        net.send(start + ms(1), 0, 1, &[0; 1250]);
        assert_eq!(net.stats().dropped_queue, 7);
        assert_eq!(drain(&mut net).len(), 5);
        check_conservation(&net);
        // Without a bandwidth limit the queue never fills: only oversized datagrams drop.
        net.set_link(2, 3, LinkConfig::perfect(ms(1)).queue_limit(100));
        for _ in 0..10 {
            net.send(start, 2, 3, &[0; 100]);
        }
        net.send(start, 2, 3, &[0; 101]);
        assert_eq!(net.stats().dropped_queue, 8);
    }

    #[test]
    fn partition_window_cuts_both_directions_only_between_the_pair() {
        let start = t0();
        let mut net = Network::new(15);
        net.partition(0, 1, start + ms(10), start + ms(20));
        net.partition(1, 0, start + ms(40), start + ms(50));
        let mut delivered = Vec::new();
        for t in 0..60 {
            let now = start + ms(t);
            for (from, to) in [(0, 1), (1, 0), (0, 2)] {
                net.send(now, from, to, &numbered(t as u32));
            }
            while let Some(d) = net.poll_delivery(now) {
                delivered.push((d.from, d.to, number(&d)));
            }
        }
        let cut = |t: u32| (10..20).contains(&t) || (40..50).contains(&t);
        for t in 0..60u32 {
            for (from, to) in [(0, 1), (1, 0)] {
                assert_eq!(delivered.contains(&(from, to, t)), !cut(t), "t={t}");
            }
            assert!(delivered.contains(&(0, 2, t)));
        }
        assert_eq!(net.stats().dropped_partition, 40);
        check_conservation(&net);
    }

    #[test]
    fn partition_spares_datagrams_already_in_flight() {
        let start = t0();
        let mut net = Network::new(16);
        net.set_links(0, 1, LinkConfig::perfect(ms(50)));
        net.send(start, 0, 1, b"early");
        net.partition(0, 1, start + ms(1), start + ms(100));
        net.send(start + ms(1), 0, 1, b"cut");
        let got = drain(&mut net);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"early");
    }

    #[test]
    fn blackout_drops_everything_in_window() {
        let start = t0();
        let mut net = Network::new(17);
        net.blackout(start + ms(5), start + ms(8));
        let mut sent_ok = 0;
        for t in 0..10 {
            for (from, to) in [(0, 1), (4, 5), (5, 4)] {
                net.send(start + ms(t), from, to, b"x");
                if !(5..8).contains(&t) {
                    sent_ok += 1;
                }
            }
        }
        assert_eq!(net.stats().dropped_partition, 9);
        assert_eq!(drain(&mut net).len(), sent_ok);
    }

    #[test]
    fn heal_at_stops_impairments_but_keeps_delay() {
        let start = t0();
        let mut net = Network::new(18);
        let cfg = LinkConfig::perfect(ms(10))
            .jitter(ms(2))
            .loss(0.5)
            .duplicate(0.5)
            .reorder(0.5, ms(50))
            .corrupt(0.5)
            .fifo(true);
        net.set_links(0, 1, cfg);
        net.partition(0, 1, start + ms(1500), start + ms(2500));
        net.blackout(start + ms(3000), start + ms(4000));
        net.heal_at(start + ms(1000));
        for i in 0..1000u32 {
            net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
        }
        let before = net.stats().clone();
        assert!(before.lost > 0 && before.duplicated > 0 && before.corrupted > 0);
        drain(&mut net);
        for i in 1000..5000u32 {
            net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
        }
        let mut after = net.stats().clone();
        after.sent -= 4000;
        assert_eq!(
            after,
            NetStats {
                delivered: after.delivered,
                ..before
            }
        );
        let got = drain(&mut net);
        let numbers: Vec<u32> = got.iter().map(number).collect();
        assert_eq!(numbers, (1000..5000).collect::<Vec<_>>());
        for d in &got {
            let sent = start + ms(u64::from(number(d)));
            assert!(d.at >= sent + ms(10) && d.at <= sent + ms(12));
        }
        check_conservation(&net);
    }

    #[test]
    fn links_have_independent_streams() {
        // Traffic on one link does not change the fate of datagrams on another.
        let start = t0();
        let fates = |noise: bool| {
            let mut net = Network::new(19);
            net.set_links(0, 1, LinkConfig::perfect(ms(1)).loss(0.3).jitter(ms(4)));
            for i in 0..200u32 {
                if noise {
                    net.send(start + ms(u64::from(i)), 1, 0, b"noise");
                }
                net.send(start + ms(u64::from(i)), 0, 1, &numbered(i));
            }
            drain(&mut net)
                .into_iter()
                .filter(|d| d.from == 0)
                .map(|d| (number(&d), d.at))
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(false), fates(true));
        assert_ne!(link_seed(1, 0, 1), link_seed(1, 1, 0));
        assert_ne!(link_seed(1, 0, 0), link_seed(2, 0, 0));
    }

    #[test]
    fn reconfiguring_a_link_applies_to_later_sends() {
        let start = t0();
        let mut net = Network::new(20);
        net.set_link(0, 1, LinkConfig::perfect(ms(30)));
        net.send(start, 0, 1, b"slow");
        net.set_link(0, 1, LinkConfig::perfect(ms(1)));
        net.send(start, 0, 1, b"fast");
        let got: Vec<Vec<u8>> = drain(&mut net).into_iter().map(|d| d.data).collect();
        assert_eq!(got, [b"fast".to_vec(), b"slow".to_vec()]);
    }
}

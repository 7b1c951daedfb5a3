//! In-memory transfer: two connections handing datagrams to each other directly (no
//! syscalls, no simulator queue), on virtual time, with default configuration (NewReno).
//!
//! For each guarantee, messages of 64 B, 1,200 B (fragmented in two: a 1,200-byte datagram
//! carries at most 1,135 payload bytes) and 64 KiB (58 fragments), with a perfect link and with
//! 5% of the datagrams dropped (both directions, seeded). One iteration sends a batch and runs
//! both ends until every message has its outcome at the sender (Delivered, or Undeliverable for
//! at-most-once messages lost); virtual time jumps to the next timer whenever neither end has
//! anything to send. Criterion reports messages per second; at the end of each case the bench
//! prints messages/s and payload bytes/s over every iteration it ran, and the virtual time a
//! batch took. On this zero-delay link a lossless batch takes no virtual time at all: any
//! virtual time is time spent waiting on a timer (ack delay, loss time threshold, probe
//! timeout), which the wall-clock rate does not show.
//!
//! A second group runs exactly-once 64 B messages under each congestion controller
//! (`NewReno`, `LossTolerant`, `None`), lossless and with 5% loss.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
#![allow(clippy::disallowed_methods)] // one real `Instant` as the origin of virtual time

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use surely::{Config, CongestionControl, Connection, Event, Guarantee, Rng};

/// Guard: most loop turns per batch (a stuck transfer panics instead of spinning).
const MAX_TURNS: u64 = 50_000_000;

struct Sides {
    a: Connection,
    b: Connection,
    now: Instant,
    rng: Rng,
    loss: f64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

/// Per-batch outcome counts.
#[derive(Default)]
struct Outcome {
    delivered: u64,
    undeliverable: u64,
    received: u64,
    /// Virtual time the batch took.
    virtual_time: Duration,
}

impl Sides {
    fn new(size: usize, loss: f64, start: Instant, cc: CongestionControl) -> Sides {
        let config = Arc::new(Config::default().congestion(cc));
        Sides {
            a: Connection::new(config.clone(), 1, 2, start).unwrap(),
            b: Connection::new(config, 2, 1, start).unwrap(),
            now: start,
            rng: Rng::new(0x5eed),
            loss,
            buf: vec![0; 1500],
            payload: vec![0x61; size],
        }
    }

    /// Sends `count` messages and runs until each has an outcome.
    fn batch(&mut self, g: Guarantee, count: u64) -> Outcome {
        for _ in 0..count {
            self.a.send(self.now, &self.payload, g).expect("send");
        }
        let mut out = Outcome::default();
        let began = self.now;
        let mut turns = 0u64;
        while out.delivered + out.undeliverable < count {
            turns += 1;
            assert!(turns < MAX_TURNS, "transfer stuck: {:?}", self.a);
            let mut moved = false;
            while let Some(n) = self.a.poll_transmit(self.now, &mut self.buf) {
                moved = true;
                if !self.rng.chance(self.loss) {
                    let _ = self.b.handle_datagram(self.now, &self.buf[..n]);
                }
            }
            while let Some(n) = self.b.poll_transmit(self.now, &mut self.buf) {
                moved = true;
                if !self.rng.chance(self.loss) {
                    let _ = self.a.handle_datagram(self.now, &self.buf[..n]);
                }
            }
            while let Some(ev) = self.b.poll_event() {
                if let Event::Message(m) = ev {
                    out.received += 1;
                    self.b.recycle(m.payload);
                }
            }
            while let Some(ev) = self.a.poll_event() {
                match ev {
                    Event::Delivered { .. } => out.delivered += 1,
                    Event::Undeliverable { payload, .. } => {
                        out.undeliverable += 1;
                        self.a.recycle(payload);
                    }
                    _ => {}
                }
            }
            if !moved {
                let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("a timer is always armed on an open connection");
                self.now = self.now.max(next);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
        }
        out.virtual_time = self.now - began;
        out
    }
}

fn name(g: Guarantee) -> &'static str {
    match g {
        Guarantee::AtMostOnce => "at-most-once",
        Guarantee::AtLeastOnce => "at-least-once",
        Guarantee::ExactlyOnce => "exactly-once",
    }
}

/// What one case measured over every iteration criterion ran.
#[derive(Clone, Copy, Default)]
struct Totals {
    sent: u64,
    delivered: u64,
    received: u64,
    batches: u64,
    wall: Duration,
    virtual_time: Duration,
    /// The receiver's (bytes, datagrams) sent: nearly all acknowledgements.
    rx_sent: (u64, u64),
    /// The sender's (retransmissions, probes) during the batches.
    recovery: (u64, u64),
}

impl Totals {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.wall.as_secs_f64()
    }

    fn virtual_ms_per_batch(&self) -> f64 {
        self.virtual_time.as_secs_f64() * 1e3 / self.batches.max(1) as f64
    }
}

/// Runs one case in `group`; `None` when criterion filtered it out.
fn run_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    (g, size, count, loss, cc): (Guarantee, usize, u64, f64, CongestionControl),
    start: Instant,
) -> Option<Totals> {
    group.throughput(Throughput::Elements(count));
    let totals = Cell::new(Totals::default());
    group.bench_function(id, |b| {
        let mut sides = Sides::new(size, loss, start, cc);
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let before = sides.a.stats();
                let t = Instant::now();
                let o = sides.batch(g, count);
                let dt = t.elapsed();
                took += dt;
                let after = sides.a.stats();
                let mut tt = totals.get();
                tt.recovery.0 += after.retransmissions - before.retransmissions;
                tt.recovery.1 += after.probes - before.probes;
                tt.sent += count;
                tt.delivered += o.delivered;
                tt.received += o.received;
                tt.batches += 1;
                tt.wall += dt;
                tt.virtual_time += o.virtual_time;
                totals.set(tt);
            }
            let rx = sides.b.stats();
            let mut tt = totals.get();
            tt.rx_sent = (rx.bytes_sent, rx.packets_sent);
            totals.set(tt);
            took
        })
    });
    let t = totals.get();
    (t.sent > 0).then_some(t)
}

fn bench_transfer(c: &mut Criterion) {
    let start = Instant::now();
    // (message size, messages per batch): about 128 KiB to 1 MiB of payload per batch.
    let sizes = [(64usize, 2_000u64), (1_200, 500), (64 * 1024, 16)];
    let mut summary = Vec::new();
    for loss in [0.0, 0.05] {
        let mut group = c.benchmark_group(format!("transfer/loss_{}pct", (loss * 100.0) as u32));
        group.sample_size(10);
        for (size, count) in sizes {
            for g in [
                Guarantee::AtMostOnce,
                Guarantee::AtLeastOnce,
                Guarantee::ExactlyOnce,
            ] {
                let id = BenchmarkId::new(name(g), format!("{size}B"));
                let case = (g, size, count, loss, CongestionControl::NewReno);
                let Some(t) = run_case(&mut group, id, case, start) else {
                    continue; // filtered out
                };
                let line = format!(
                    "| {} | {size} B | {:.0}% | {:.0} | {:.1} | {:.1}% | {:.1}% | {:.0} | {:.2} |",
                    name(g),
                    loss * 100.0,
                    t.rate(),
                    (t.sent * size as u64) as f64 / t.wall.as_secs_f64() / 1e6,
                    100.0 * t.delivered as f64 / t.sent as f64,
                    100.0 * t.received as f64 / t.sent as f64,
                    t.rx_sent.0 as f64 / t.rx_sent.1.max(1) as f64,
                    t.virtual_ms_per_batch(),
                );
                println!("transfer summary: {line}");
                summary.push(line);
            }
        }
        group.finish();
    }

    // Exactly-once 64 B under each congestion controller.
    let mut by_controller = Vec::new();
    let mut group = c.benchmark_group("transfer/controller");
    group.sample_size(10);
    for cc in [
        CongestionControl::NewReno,
        CongestionControl::LossTolerant,
        CongestionControl::None,
    ] {
        for loss in [0.0, 0.05] {
            let id = BenchmarkId::new(
                format!("{cc:?}"),
                format!("exactly-once/64B/loss_{}pct", (loss * 100.0) as u32),
            );
            let case = (Guarantee::ExactlyOnce, 64, 2_000, loss, cc);
            let Some(t) = run_case(&mut group, id, case, start) else {
                continue;
            };
            let line = format!(
                "| {cc:?} | {:.0}% | {:.0} | {:.2} | {:.2} | {:.2} |",
                loss * 100.0,
                t.rate(),
                t.virtual_ms_per_batch(),
                t.recovery.0 as f64 / t.batches as f64,
                t.recovery.1 as f64 / t.batches as f64,
            );
            println!("transfer controller: {line}");
            by_controller.push(line);
        }
    }
    group.finish();

    println!();
    println!(
        "| guarantee | size | loss | messages/s | MB/s (payload) | Delivered | received | receiver B/datagram | virtual ms/batch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
    println!();
    println!("exactly-once 64 B, 2,000 messages per batch:");
    println!(
        "| controller | loss | messages/s | virtual ms/batch | retransmissions/batch | probes/batch |"
    );
    println!("|---|---|---|---|---|---|");
    for line in by_controller {
        println!("{line}");
    }
}

criterion_group!(benches, bench_transfer);
criterion_main!(benches);

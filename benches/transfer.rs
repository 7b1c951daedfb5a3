//! In-memory transfer: two connections handing datagrams to each other directly (no
//! syscalls, no simulator queue), on virtual time, with default configuration (NewReno).
//!
//! For each guarantee, messages of 64 B, 1,200 B (fragmented in two: a 1,200-byte datagram
//! carries at most 1,135 payload bytes) and 64 KiB (58 fragments), with a perfect link and with
//! 5% of the datagrams dropped (both directions, seeded). One iteration sends a batch and runs
//! both ends until every message has its outcome at the sender (Delivered, or Undeliverable for
//! at-most-once messages lost); virtual time jumps to the next timer whenever neither end has
//! anything to send. Criterion reports messages per second; at the end of each case the bench
//! prints messages/s and payload bytes/s over every iteration it ran.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
#![allow(clippy::disallowed_methods)] // one real `Instant` as the origin of virtual time

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use surely::{Config, Connection, Event, Guarantee, Rng};

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
}

impl Sides {
    fn new(size: usize, loss: f64, start: Instant) -> Sides {
        let config = Arc::new(Config::default());
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
                group.throughput(Throughput::Elements(count));
                let totals = Cell::new((0u64, 0u64, 0u64, Duration::ZERO)); // sent, delivered, received, time
                // The receiver's (bytes, datagrams) sent: nearly all acknowledgements.
                let rx_stats = Cell::new((0u64, 0u64));
                let id = BenchmarkId::new(name(g), format!("{size}B"));
                group.bench_function(id, |b| {
                    let mut sides = Sides::new(size, loss, start);
                    b.iter_custom(|iters| {
                        let mut took = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            let o = sides.batch(g, count);
                            let dt = t.elapsed();
                            took += dt;
                            let (s, d, r, time) = totals.get();
                            totals.set((s + count, d + o.delivered, r + o.received, time + dt));
                        }
                        let st = sides.b.stats();
                        rx_stats.set((st.bytes_sent, st.packets_sent));
                        took
                    })
                });
                let (sent, delivered, received, time) = totals.get();
                if sent == 0 {
                    continue; // filtered out
                }
                let secs = time.as_secs_f64();
                let rs = rx_stats.get();
                let line = format!(
                    "| {} | {size} B | {:.0}% | {:.0} | {:.1} | {:.1}% | {:.1}% | {:.0} |",
                    name(g),
                    loss * 100.0,
                    sent as f64 / secs,
                    (sent * size as u64) as f64 / secs / 1e6,
                    100.0 * delivered as f64 / sent as f64,
                    100.0 * received as f64 / sent as f64,
                    rs.0 as f64 / rs.1.max(1) as f64,
                );
                println!("transfer summary: {line}");
                summary.push(line);
            }
        }
        group.finish();
    }
    println!();
    println!(
        "| guarantee | size | loss | messages/s | MB/s (payload) | Delivered | received | receiver B/datagram |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for line in summary {
        println!("{line}");
    }
}

criterion_group!(benches, bench_transfer);
criterion_main!(benches);

//! The sender processing acknowledgements with 1, 100 and 10,000 packets in flight.
//!
//! Setup (not timed, rebuilt for every iteration with `iter_batched`): a connection `a` whose
//! peer `b` advertised a 16,384-id window, then `n` messages of 1,100 bytes (one per datagram)
//! sent and their datagrams collected and thrown away, so `n` packets are in flight. No
//! congestion control, so the window does not cap the flight.
//!
//! The sender skips a packet number every 64 to 255 packets on purpose (optimistic-ACK
//! detection), so the ACKs list exactly the packet numbers that were sent (read back from the
//! collected datagrams' headers): the runs between skipped numbers, highest first, at most 64
//! ranges per ACK frame as a receiver would send them.
//!
//! Timed:
//! - `ack/N`: `handle_datagram` of the ACK datagrams (built by hand with `wire::emit_ack` and
//!   `wire::encode_datagram`) acknowledging every packet: one datagram up to 64 runs, more
//!   for longer flights;
//! - `ack_msg_ack/N`: the same datagrams, the last with a MSG_ACK confirming every message, so
//!   all `n` messages also reach their outcome (Delivered events are queued, not polled);
//! - `ack_one_by_one/N`: `n` ACK datagrams, the k-th acknowledging the packets up to the k-th
//!   in flight (what a receiver acknowledging every packet sends): per-ACK cost at a large
//!   flight.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
#![allow(clippy::disallowed_methods)] // one real `Instant` as the origin of virtual time

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use surely::wire::{self, Crc32, Frame, Header, PacketType, Writer};
use surely::{Config, CongestionControl, Connection, Event, Guarantee};

const PAYLOAD: usize = 1100;
const WINDOW: u64 = 16_384;

fn config() -> Arc<Config> {
    Arc::new(
        Config::default()
            .window(WINDOW)
            .max_pending_messages(20_000)
            .send_buffer_bytes(32 << 20)
            .recv_buffer_bytes(32 << 20)
            .congestion(CongestionControl::None),
    )
}

/// A sender with `n` packets in flight, and what the ACK datagrams need to know.
struct Flight {
    a: Connection,
    /// When the ACK arrives.
    now: Instant,
    /// The packet numbers in flight, ascending (numbers skipped on purpose are missing).
    sent: Vec<u64>,
    /// The packet number `b` would put on its next datagram.
    b_pn: u64,
    /// Reliable ids `0..end_id` were sent.
    end_id: u64,
}

/// Builds `a` with `n` packets in flight (see the module documentation).
fn flight(n: usize, start: Instant) -> Flight {
    let cfg = config();
    let mut now = start;
    let mut a = Connection::new(cfg.clone(), 1, 2, now).unwrap();
    let mut b = Connection::new(cfg, 2, 1, now).unwrap();
    let mut buf = vec![0u8; 1500];
    // One message there and back so that `b`'s MSG_ACK raises `a`'s credit to the window.
    a.send(now, b"hello", Guarantee::ExactlyOnce).unwrap();
    let mut delivered = false;
    for _ in 0..20 {
        while let Some(len) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(now, &buf[..len]);
        }
        while let Some(len) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(now, &buf[..len]);
        }
        while b.poll_event().is_some() {}
        while let Some(ev) = a.poll_event() {
            delivered |= matches!(ev, Event::Delivered { .. });
        }
        if delivered {
            break;
        }
        now += Duration::from_millis(2);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    assert!(delivered, "the priming message was not delivered");
    // Let `a` send what it owes (an ACK) so that only the messages remain.
    while a.poll_transmit(now, &mut buf).is_some() {}
    let payload = vec![0x42u8; PAYLOAD];
    for _ in 0..n {
        a.send(now, &payload, Guarantee::ExactlyOnce).unwrap();
    }
    let mut sent = Vec::with_capacity(n);
    while let Some(len) = a.poll_transmit(now, &mut buf) {
        // Packet numbers are far below 2^32 here: the header's 32 bits are the whole number.
        let (header, _) = wire::open(&buf[..len], &Crc32).unwrap();
        sent.push(u64::from(header.packet_number));
    }
    assert_eq!(sent.len(), n, "one message per datagram");
    Flight {
        a,
        now: now + Duration::from_millis(1),
        sent,
        b_pn: b.stats().packets_sent,
        end_id: 1 + n as u64,
    }
}

/// Runs of consecutive numbers in `pns` (ascending), as half-open ranges, highest first.
fn runs_desc(pns: &[u64]) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for &pn in pns {
        match runs.last_mut() {
            Some(r) if r.end == pn => r.end += 1,
            _ => runs.push(pn..pn + 1),
        }
    }
    runs.reverse();
    runs
}

/// A datagram from `b` (packet number `pn`) to `a` with an ACK of `ranges` (highest first, at
/// most 64) and, if `msg_ack_end` is set, a MSG_ACK of reliable ids below it.
fn ack_datagram(pn: u64, ranges: &[Range<u64>], msg_ack_end: Option<u64>) -> Vec<u8> {
    let mut store = vec![0u8; 1024];
    let mut w = Writer::new(&mut store);
    wire::emit_ack(&mut w, 0, ranges.iter().cloned()).unwrap();
    if let Some(cum) = msg_ack_end {
        wire::emit_msg_ack(&mut w, cum, cum + WINDOW, std::iter::empty()).unwrap();
    }
    let len = w.position();
    let frames = wire::frames(&store[..len])
        .collect::<Result<Vec<Frame<'_>>, _>>()
        .unwrap();
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: 1,
        packet_number: pn as u32,
    };
    let mut out = vec![0u8; 1500];
    let n = wire::encode_datagram(&mut out, &header, &frames, &Crc32).unwrap();
    out.truncate(n);
    out
}

/// ACK datagrams acknowledging every packet in flight, 64 runs each, oldest runs first; the
/// last also carries the MSG_ACK if asked.
fn ack_all(f: &Flight, msg_ack: bool) -> Vec<Vec<u8>> {
    let mut runs = runs_desc(&f.sent);
    runs.reverse(); // ascending, to cut into frames from the oldest
    let chunks: Vec<Vec<Range<u64>>> = runs
        .chunks(wire::MAX_ACK_RANGES)
        .map(|c| c.iter().rev().cloned().collect())
        .collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let m = (msg_ack && i == last).then_some(f.end_id);
            ack_datagram(f.b_pn + i as u64, c, m)
        })
        .collect()
}

/// The k-th of `n` ACKs a receiver acknowledging every packet sends: everything up to the
/// k-th packet in flight, at most 64 runs, highest first.
fn ack_upto(f: &Flight, k: usize) -> Vec<u8> {
    let mut runs = runs_desc(&f.sent[..=k]);
    runs.truncate(wire::MAX_ACK_RANGES);
    ack_datagram(f.b_pn + k as u64, &runs, None)
}

fn bench_acks(c: &mut Criterion) {
    let start = Instant::now();
    let mut g = c.benchmark_group("acks");
    for n in [1usize, 100, 10_000] {
        // Once, untimed: the ACKs are accepted and confirm everything.
        let mut f = flight(n, start);
        let acks = ack_all(&f, true);
        for d in &acks {
            f.a.handle_datagram(f.now, d).unwrap();
        }
        assert_eq!(f.a.pending_messages(), 0, "every message confirmed");
        println!(
            "acks: {n} packets in flight, {} runs of packet numbers, {} ACK datagram(s)",
            runs_desc(&f.sent).len(),
            acks.len()
        );
        // Setup costs far more than the routine for large flights: hold one state at a time.
        let batch = if n >= 1000 {
            BatchSize::PerIteration
        } else {
            BatchSize::NumIterations(64)
        };
        if n >= 1000 {
            g.sample_size(10);
        } else {
            g.sample_size(50);
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("ack", n), |b| {
            b.iter_batched(
                || {
                    let f = flight(n, start);
                    let d = ack_all(&f, false);
                    (f, d)
                },
                |(mut f, acks)| {
                    for d in &acks {
                        f.a.handle_datagram(f.now, black_box(d)).unwrap();
                    }
                    (f, acks)
                },
                batch,
            )
        });
        g.bench_function(BenchmarkId::new("ack_msg_ack", n), |b| {
            b.iter_batched(
                || {
                    let f = flight(n, start);
                    let d = ack_all(&f, true);
                    (f, d)
                },
                |(mut f, acks)| {
                    for d in &acks {
                        f.a.handle_datagram(f.now, black_box(d)).unwrap();
                    }
                    (f, acks)
                },
                batch,
            )
        });
        if n > 1 {
            g.bench_function(BenchmarkId::new("ack_one_by_one", n), |b| {
                b.iter_batched(
                    || {
                        let f = flight(n, start);
                        let acks: Vec<Vec<u8>> = (0..n).map(|k| ack_upto(&f, k)).collect();
                        (f, acks)
                    },
                    |(mut f, acks)| {
                        for d in &acks {
                            f.a.handle_datagram(f.now, black_box(d)).unwrap();
                        }
                        (f, acks)
                    },
                    batch,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_acks);
criterion_main!(benches);

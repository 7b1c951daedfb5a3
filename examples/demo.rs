//! The three guarantees side by side.
//!
//! Sends the same workload under at-most-once, at-least-once and exactly-once through a
//! faulty network (loss, duplication, reordering) and prints what the application on each
//! side saw: messages delivered, duplicates, losses reported, dead letters, retransmissions,
//! latency and throughput.
//!
//! This version runs on the crate's deterministic network simulator, in virtual time: the
//! same seed gives the same table on every machine.
//!
//! ```text
//! cargo run --release --example demo -- [--messages N] [--size BYTES] [--loss P]
//!     [--duplicate P] [--reorder P] [--delay-ms MS] [--seed S] [--json]
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::sim::{LinkConfig, Pair};
use surely::{Config, Event, Guarantee, SendError};

struct Args {
    messages: u64,
    size: usize,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    delay_ms: u64,
    seed: u64,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 10_000,
        size: 64,
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        delay_ms: 5,
        seed: 1,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = num(&value("--messages")?)?,
            "--size" => a.size = num(&value("--size")?)?,
            "--loss" => a.loss = prob(&value("--loss")?)?,
            "--duplicate" => a.duplicate = prob(&value("--duplicate")?)?,
            "--reorder" => a.reorder = prob(&value("--reorder")?)?,
            "--delay-ms" => a.delay_ms = num(&value("--delay-ms")?)?,
            "--seed" => a.seed = num(&value("--seed")?)?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--messages N] [--size BYTES] [--loss P] [--duplicate P] \
                     [--reorder P] [--delay-ms MS] [--seed S] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if a.size < 8 {
        return Err("--size must be at least 8".into());
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn prob(s: &str) -> Result<f64, String> {
    let p: f64 = num(s)?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("probability out of range 0..=1: {s}"))
    }
}

/// Message `i`: `i` little-endian, then a pattern derived from `i`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.extend(
        (0..len.saturating_sub(8)).map(|k| (i as usize).wrapping_mul(31).wrapping_add(k) as u8),
    );
    p
}

#[derive(Default)]
struct Row {
    sent: u64,
    delivered: u64,
    app_received: u64,
    app_duplicates: u64,
    corrupt: u64,
    losses_reported: u64,
    dead_letters: u64,
    retransmissions: u64,
    p50_us: u64,
    p99_us: u64,
    virtual_secs: f64,
}

fn run(g: Guarantee, args: &Args) -> Row {
    #[allow(clippy::disallowed_methods)] // origin of virtual time; only offsets matter
    let t0 = Instant::now();
    let config = Arc::new(Config::default().rng_seed(args.seed));
    let mut pair =
        Pair::new(config.clone(), config, args.seed, t0).expect("default config is valid");
    let link = LinkConfig::perfect(Duration::from_millis(args.delay_ms))
        .jitter(Duration::from_micros(args.delay_ms * 100))
        .loss(args.loss)
        .duplicate(args.duplicate)
        .reorder(args.reorder, Duration::from_millis(args.delay_ms * 2 + 1));
    pair.net.set_links(0, 1, link);
    let mut row = Row::default();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut next = 0u64;
    let limit = t0 + Duration::from_secs(600);
    let mut outcomes = 0u64;
    while (next < args.messages || outcomes < next) && pair.now < limit {
        while next < args.messages {
            match pair.a.send(pair.now, &payload(next, args.size), g) {
                Ok(_) => next += 1,
                Err(SendError::Backpressure) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        pair.step(limit);
        while let Some(ev) = pair.b.poll_event() {
            match ev {
                Event::Message(m) => {
                    let i = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                    if m.payload != payload(i, args.size) {
                        row.corrupt += 1;
                    }
                    let n = seen.entry(i).or_insert(0);
                    *n += 1;
                    if *n > 1 {
                        row.app_duplicates += 1;
                    }
                    pair.b.recycle(m.payload);
                }
                Event::Lost { count } => row.losses_reported += count,
                _ => {}
            }
        }
        while let Some(ev) = pair.a.poll_event() {
            match ev {
                Event::Delivered { .. } => outcomes += 1,
                Event::Undeliverable { .. } => outcomes += 1,
                _ => {}
            }
        }
    }
    let a = pair.a.stats();
    row.sent = next;
    row.delivered = a.delivered;
    row.dead_letters = a.undeliverable;
    row.app_received = seen.len() as u64;
    row.retransmissions = a.retransmissions;
    row.p50_us = a.latency.quantile(0.5).map_or(0, |d| d.as_micros() as u64);
    row.p99_us = a.latency.quantile(0.99).map_or(0, |d| d.as_micros() as u64);
    row.virtual_secs = (pair.now - t0).as_secs_f64();
    row
}

fn main() -> ExitCode {
    env_logger::init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "demo: {} messages of {} bytes per guarantee over a simulated link: {}% loss, {}% \
         duplication, {}% reordering, {} ms delay (seed {})",
        args.messages,
        args.size,
        args.loss * 100.0,
        args.duplicate * 100.0,
        args.reorder * 100.0,
        args.delay_ms,
        args.seed
    );
    let mut rows = Vec::new();
    for g in [
        Guarantee::AtMostOnce,
        Guarantee::AtLeastOnce,
        Guarantee::ExactlyOnce,
    ] {
        eprintln!("demo: running {g} ...");
        rows.push((g, run(g, &args)));
    }
    if args.json {
        for (g, r) in &rows {
            println!(
                "{{\"guarantee\":\"{g}\",\"sent\":{},\"delivered\":{},\"app_received\":{},\
                 \"app_duplicates\":{},\"corrupt\":{},\"losses_reported\":{},\
                 \"dead_letters\":{},\"retransmissions\":{},\"p50_us\":{},\"p99_us\":{},\
                 \"virtual_s\":{:.3}}}",
                r.sent,
                r.delivered,
                r.app_received,
                r.app_duplicates,
                r.corrupt,
                r.losses_reported,
                r.dead_letters,
                r.retransmissions,
                r.p50_us,
                r.p99_us,
                r.virtual_secs
            );
        }
    } else {
        println!(
            "{:<14} {:>7} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11}",
            "guarantee",
            "sent",
            "delivered",
            "app got",
            "app dups",
            "lost rep",
            "dead",
            "retx",
            "p50 ms",
            "p99 ms",
            "msgs/s (v)"
        );
        for (g, r) in &rows {
            println!(
                "{:<14} {:>7} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9.2} {:>9.2} {:>11.0}",
                g.to_string(),
                r.sent,
                r.delivered,
                r.app_received,
                r.app_duplicates,
                r.losses_reported,
                r.dead_letters,
                r.retransmissions,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.sent as f64 / r.virtual_secs.max(1e-9)
            );
        }
        println!(
            "\ndelivered = sender got Delivered; app got = distinct messages the receiving \
             application saw; app dups = extra copies it saw; lost rep = at-most-once losses \
             the receiver proved and reported; dead = Undeliverable outcomes (dead letters)."
        );
    }
    let corrupt: u64 = rows.iter().map(|(_, r)| r.corrupt).sum();
    let eo = &rows[2].1;
    if corrupt > 0 || eo.app_duplicates > 0 {
        eprintln!("demo: a guarantee was broken");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

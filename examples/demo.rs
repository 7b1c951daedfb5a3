//! The three guarantees side by side.
//!
//! Sends the same workload under at-most-once, at-least-once and exactly-once through a
//! faulty network (loss, duplication, reordering) and prints what the application on each
//! side saw: messages delivered, duplicates, losses reported, dead letters, retransmissions,
//! latency and throughput.
//!
//! By default it runs over real UDP on loopback: a receiver endpoint, a fault-injecting relay
//! in front of it, and a sender endpoint, all in this process. With `--sim` it runs on the
//! crate's deterministic network simulator instead, in virtual time: the same seed gives the
//! same table on every machine.
//!
//! ```text
//! cargo run --release --example demo -- [--messages N] [--size BYTES] [--loss P]
//!     [--duplicate P] [--reorder P] [--delay-ms MS] [--rate MSGS_PER_S] [--seed S]
//!     [--congestion new-reno|loss-tolerant|none] [--sim] [--json]
//! ```
// Examples run on the real clock; only the protocol core is kept off it.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::sim::{LinkConfig, Pair};
use surely::{Config, CongestionControl, Event, Guarantee, SendError};

struct Args {
    messages: u64,
    size: usize,
    loss: f64,
    duplicate: f64,
    reorder: f64,
    delay_ms: u64,
    rate: u64,
    congestion: CongestionControl,
    seed: u64,
    sim: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 5_000,
        size: 64,
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        delay_ms: 5,
        rate: 2_000,
        congestion: CongestionControl::NewReno,
        seed: 1,
        sim: false,
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
            "--rate" => a.rate = num(&value("--rate")?)?,
            "--congestion" => a.congestion = value("--congestion")?.parse()?,
            "--seed" => a.seed = num(&value("--seed")?)?,
            "--sim" => a.sim = true,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--messages N] [--size BYTES] [--loss P] [--duplicate P] \
                     [--reorder P] [--delay-ms MS] [--rate MSGS_PER_S (0 = unpaced)] \
                     [--congestion new-reno|loss-tolerant|none] \
                     [--seed S] [--sim] [--json]"
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

fn link(args: &Args) -> LinkConfig {
    // Jitter keeps datagrams in order (as most real paths do); --reorder adds reordering.
    LinkConfig::perfect(Duration::from_millis(args.delay_ms))
        .jitter(Duration::from_micros(args.delay_ms * 100))
        .fifo(true)
        .loss(args.loss)
        .duplicate(args.duplicate)
        .reorder(args.reorder, Duration::from_millis(args.delay_ms * 2 + 1))
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
    /// Seconds from the first send to the last outcome (virtual with `--sim`).
    secs: f64,
}

/// One guarantee on the simulator, in virtual time.
fn run_sim(g: Guarantee, args: &Args) -> Row {
    // (origin of virtual time; only offsets matter)
    let t0 = Instant::now();
    let config = Arc::new(
        Config::default()
            .rng_seed(args.seed)
            .congestion(args.congestion),
    );
    let mut pair =
        Pair::new(config.clone(), config, args.seed, t0).expect("default config is valid");
    pair.net.set_links(0, 1, link(args));
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
    row.secs = (pair.now - t0).as_secs_f64();
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
        "demo: {} messages of {} bytes per guarantee over {}: {}% loss, {}% \
         duplication, {}% reordering, {} ms delay (seed {})",
        args.messages,
        args.size,
        if args.sim {
            "a simulated link (virtual time)"
        } else {
            "loopback UDP through a fault-injecting relay"
        },
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
        let row = if args.sim {
            run_sim(g, &args)
        } else {
            match udp::run(g, &args) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("demo: {e}");
                    return ExitCode::FAILURE;
                }
            }
        };
        eprintln!(
            "demo: {g}: {} delivered, {} dead letters, {} retransmissions in {:.2} s",
            row.delivered, row.dead_letters, row.retransmissions, row.secs
        );
        rows.push((g, row));
    }
    if args.json {
        for (g, r) in &rows {
            println!(
                "{{\"guarantee\":\"{g}\",\"sent\":{},\"delivered\":{},\"app_received\":{},\
                 \"app_duplicates\":{},\"corrupt\":{},\"losses_reported\":{},\
                 \"dead_letters\":{},\"retransmissions\":{},\"p50_us\":{},\"p99_us\":{},\
                 \"elapsed_s\":{:.3}}}",
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
                r.secs
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
            if args.sim { "msgs/s (v)" } else { "msgs/s" }
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
                r.delivered as f64 / r.secs.max(1e-9)
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

/// One guarantee over real UDP on loopback, through the fault-injecting relay.
mod udp {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use surely::endpoint::{EndpointConfig, EndpointEvent};
    use surely::net::relay::Relay;
    use surely::net::{Driver, SocketOptions};
    use surely::{Event, Guarantee, SendError};

    use super::{Args, Row, link, payload};

    /// What the receiving application saw.
    #[derive(Default)]
    struct Seen {
        distinct: u64,
        duplicates: u64,
        corrupt: u64,
        gaps: u64,
    }

    pub fn run(g: Guarantee, args: &Args) -> Result<Row, String> {
        let loopback = "127.0.0.1:0".parse().expect("valid address");
        let opts = SocketOptions::default();
        // The receiver, on its own thread, as it would be in its own process.
        let mut receiver = Driver::bind(loopback, EndpointConfig::default(), &opts)
            .map_err(|e| format!("receiver: {e}"))?;
        let server = receiver.local_addr();
        let relay = Relay::spawn(loopback, server, link(args), args.seed)
            .map_err(|e| format!("relay: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_rx = stop.clone();
        let size = args.size;
        let rx = thread::spawn(move || {
            let mut seen = Seen::default();
            let mut counts: HashMap<u64, u32> = HashMap::new();
            let hard_stop = Instant::now() + Duration::from_secs(120);
            while !stop_rx.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                if receiver.wait(Some(Duration::from_millis(5))).is_err() {
                    break;
                }
                while let Some(ev) = receiver.poll_event() {
                    match ev {
                        EndpointEvent::Connection {
                            event: Event::Message(m),
                            ..
                        } => {
                            let i = u64::from_le_bytes(m.payload[..8].try_into().expect("8"));
                            if m.payload != payload(i, size) {
                                seen.corrupt += 1;
                            }
                            let n = counts.entry(i).or_insert(0);
                            *n += 1;
                            if *n == 1 {
                                seen.distinct += 1;
                            } else {
                                seen.duplicates += 1;
                            }
                        }
                        EndpointEvent::Connection {
                            event: Event::Lost { count },
                            ..
                        } => seen.gaps += count,
                        _ => {}
                    }
                }
                let _ = receiver.flush();
            }
            seen
        });

        // The sender: paced at --rate messages per second (0 = as fast as allowed).
        let transport = surely::Config::default().congestion(args.congestion);
        let config = EndpointConfig::default().transport(transport);
        let mut sender =
            Driver::bind(loopback, config, &opts).map_err(|e| format!("sender: {e}"))?;
        let handle = sender
            .connect(relay.local_addr())
            .map_err(|e| format!("connect: {e}"))?;
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut connected = false;
        let mut start = Instant::now();
        let (mut next, mut outcomes) = (0u64, 0u64);
        let mut last_progress = Instant::now();
        while Instant::now() < give_up && (next < args.messages || outcomes < next) {
            if connected && next < args.messages {
                let now = Instant::now();
                let due = if args.rate == 0 {
                    args.messages
                } else {
                    let elapsed = now.duration_since(start).as_secs_f64();
                    ((elapsed * args.rate as f64) as u64 + 1).min(args.messages)
                };
                if let Some(conn) = sender.endpoint().connection_mut(handle) {
                    while next < due {
                        match conn.send(now, &payload(next, args.size), g) {
                            Ok(_) => next += 1,
                            Err(SendError::Backpressure) => break,
                            Err(e) => return Err(format!("send: {e}")),
                        }
                    }
                }
                sender.flush().map_err(|e| e.to_string())?;
            }
            let pacing = connected && next < args.messages;
            sender
                .wait(Some(if pacing {
                    Duration::from_micros(200)
                } else {
                    Duration::from_millis(5)
                }))
                .map_err(|e| e.to_string())?;
            while let Some(ev) = sender.poll_event() {
                match ev {
                    EndpointEvent::Connected { .. } => {
                        connected = true;
                        start = Instant::now();
                    }
                    EndpointEvent::ConnectFailed { reason, .. } => {
                        return Err(format!("handshake failed: {reason}"));
                    }
                    EndpointEvent::Connection {
                        event: Event::Delivered { .. } | Event::Undeliverable { .. },
                        ..
                    } => outcomes += 1,
                    _ => {}
                }
            }
            if last_progress.elapsed() > Duration::from_secs(1) {
                last_progress = Instant::now();
                eprintln!("demo:   {next} sent, {outcomes} outcomes");
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let stats = sender
            .endpoint()
            .connection(handle)
            .map(|c| c.stats())
            .ok_or("the connection closed early")?;
        // Close gracefully and give the receiver a moment to hear the last at-most-once floor.
        if let Some(conn) = sender.endpoint().connection_mut(handle) {
            conn.close(Instant::now());
        }
        let closing = Instant::now() + Duration::from_millis(300);
        while Instant::now() < closing {
            let _ = sender.wait(Some(Duration::from_millis(5)));
            while sender.poll_event().is_some() {}
        }
        stop.store(true, Ordering::Relaxed);
        let seen = rx.join().map_err(|_| "receiver thread panicked")?;
        drop(relay);
        Ok(Row {
            sent: next,
            delivered: stats.delivered,
            app_received: seen.distinct,
            app_duplicates: seen.duplicates,
            corrupt: seen.corrupt,
            losses_reported: seen.gaps,
            dead_letters: stats.undeliverable,
            retransmissions: stats.retransmissions,
            p50_us: stats
                .latency
                .quantile(0.5)
                .map_or(0, |d| d.as_micros() as u64),
            p99_us: stats
                .latency
                .quantile(0.99)
                .map_or(0, |d| d.as_micros() as u64),
            secs,
        })
    }
}

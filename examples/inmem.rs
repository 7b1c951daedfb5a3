//! Moves messages between two connections in memory (no sockets, no simulator), for
//! measuring the protocol's own cost: run it under `valgrind --tool=callgrind` with two
//! message counts and divide the difference in instructions by the difference in messages.
//!
//! ```text
//! cargo run --release --example inmem -- [--messages N] [--size BYTES] [--guarantee G] [--ordered]
//!     [--loss P] [--seed S]
//! ```
//!
//! `--ordered` sends every message on ordered channel 0 (a reliable guarantee only). `--loss`
//! drops each datagram, either way, with probability P (0 <= P < 1, default 0; seeded by
//! `--seed`, default 1): time then moves on in steps of 1 ms whenever nothing moves, so that
//! retransmission timers fire (virtual time, no sleeping).
//!
//! Prints one JSON line:
//! `{"messages","size","guarantee","elapsed_s","msgs_per_s","datagrams","ordered","delivered",
//! "received","in_order","loss","dropped"}`: `dropped` counts the datagrams dropped;
//! `delivered` counts the sender's Delivered outcomes (the run ends
//! when every message has an outcome, Delivered or Undeliverable), `received` the messages the
//! receiving connection handed over, and `in_order` whether each of them had a higher id than
//! the one before (ids are given in send order, so this is send order). With `--ordered`, a
//! message out of order makes the exit status 1 (after the JSON line). These checks cost
//! about 10 instructions per message of the example's own.
// The example measures wall time; the protocol core itself never reads the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Args, Json};
use surely::{Config, Connection, Event, Guarantee, Rng, SendOptions};

fn main() -> ExitCode {
    env_logger::init();
    let args = match Args::parse(
        "inmem",
        &["--messages", "--size", "--guarantee", "--loss", "--seed"],
        &["--ordered"],
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("inmem: {e}");
            return ExitCode::from(2);
        }
    };
    let parsed = (|| -> Result<_, String> {
        Ok((
            args.get::<u64>("--messages", 1_000_000)?,
            args.get::<usize>("--size", 64)?,
            args.get("--guarantee", Guarantee::ExactlyOnce)?,
            args.get::<f64>("--loss", 0.0)?,
            args.get::<u64>("--seed", 1)?,
        ))
    })();
    let (messages, size, g, loss, seed) = match parsed {
        Ok(p) => p,
        Err(e) => return args.fail(&e),
    };
    if !(0.0..1.0).contains(&loss) {
        return args.fail("--loss must be at least 0 and below 1");
    }
    let mut rng = Rng::new(seed);
    let ordered = args.has("--ordered");
    if ordered && !g.is_reliable() {
        return args.fail("--ordered needs at-least-once or exactly-once");
    }
    let opts = SendOptions::new(g).ordered(ordered);
    let mut config = Config::default();
    if loss > 0.0 {
        // Virtual time moves 1 ms at a time whenever nothing moves: at high loss the default
        // 10 s of silence would end the connection before every message has an outcome.
        config = config.idle_timeout(Duration::from_secs(86_400));
    }
    let config = Arc::new(config);
    let start = Instant::now();
    let mut now = start;
    let mut a = Connection::new(config.clone(), 1, 2, now).expect("valid config");
    let mut b = Connection::new(config, 2, 1, now).expect("valid config");
    let payload = vec![0x5au8; size];
    let mut buf = vec![0u8; 1500];
    let (mut sent, mut outcomes, mut datagrams) = (0u64, 0u64, 0u64);
    let (mut delivered, mut received, mut dropped) = (0u64, 0u64, 0u64);
    // The lowest id the receiver may see next: ids are given in send order.
    let (mut next_id, mut in_order) = (0u64, true);
    while outcomes < messages {
        // The application queues a batch, then the connections exchange datagrams.
        let batch = (messages - sent).min(256);
        for _ in 0..batch {
            if let Err(e) = a.send(now, &payload, opts) {
                eprintln!("inmem: send: {e}");
                return ExitCode::FAILURE;
            }
            sent += 1;
        }
        loop {
            let mut moved = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                if loss > 0.0 && rng.chance(loss) {
                    dropped += 1;
                } else {
                    let _ = b.handle_datagram(now, &buf[..n]);
                }
                datagrams += 1;
                moved = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                if loss > 0.0 && rng.chance(loss) {
                    dropped += 1;
                } else {
                    let _ = a.handle_datagram(now, &buf[..n]);
                }
                datagrams += 1;
                moved = true;
            }
            while let Some(ev) = b.poll_event() {
                if let Event::Message(m) = ev {
                    let id = m.id.get();
                    received += 1;
                    in_order &= id >= next_id;
                    next_id = id + 1;
                    b.recycle(m.payload);
                }
            }
            while let Some(ev) = a.poll_event() {
                match ev {
                    Event::Delivered { .. } => {
                        delivered += 1;
                        outcomes += 1;
                    }
                    Event::Undeliverable { .. } => outcomes += 1,
                    _ => {}
                }
            }
            if !moved {
                if a.pending_messages() == 0 {
                    break;
                }
                // Let the delayed acknowledgement fire (virtual time: no sleeping).
                now += Duration::from_millis(1);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        Json::default()
            .int("messages", messages)
            .int("size", size as u64)
            .str("guarantee", &g.to_string())
            .num("elapsed_s", elapsed)
            .num("msgs_per_s", messages as f64 / elapsed.max(1e-9))
            .int("datagrams", datagrams)
            .bool("ordered", ordered)
            .int("delivered", delivered)
            .int("received", received)
            .bool("in_order", in_order)
            .num("loss", loss)
            .int("dropped", dropped)
            .finish()
    );
    if ordered && !in_order {
        eprintln!("inmem: the receiver got ordered messages out of order");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

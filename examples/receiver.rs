//! Receives messages, checks every byte, and reports what the application saw as JSON.
//!
//! ```text
//! cargo run --release --example receiver -- --listen ADDR [--guarantee G] [--count N]
//!     [--timeout-s T] [--ack on-receipt|after-processing]
//! ```
//!
//! Accepts connections on ADDR and exits after it has handed N distinct messages to the
//! application (N = 0: no limit), or after T seconds with nothing new. Before it exits it
//! closes every connection gracefully, so that each sender learns of every delivery. The last
//! line on stdout is one JSON object:
//! `{"delivered", "duplicates", "corrupt", "out_of_order", "gaps_reported", "elapsed_s", ...}`.
//! The exit status is 0 when the run kept the guarantee's promise (see `verdict`).
// Examples run on the real clock; only the protocol core is kept off it.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Args, Json, verify};
use surely::endpoint::{EndpointConfig, EndpointEvent};
use surely::net::{Driver, SocketOptions};
use surely::{AckMode, Config, Event, Guarantee};

const USAGE: &str = "usage: receiver --listen ADDR [--guarantee at-most-once|at-least-once|exactly-once] \
                     [--count N] [--timeout-s T] [--ack on-receipt|after-processing]";

fn main() -> ExitCode {
    env_logger::init();
    let args = match Args::parse(
        "receiver",
        &["--listen", "--guarantee", "--count", "--timeout-s", "--ack"],
        &[],
    ) {
        Ok(a) => a,
        Err(e) if e == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("receiver: {e}");
            return ExitCode::from(2);
        }
    };
    let parsed = (|| -> Result<_, String> {
        Ok((
            args.required::<std::net::SocketAddr>("--listen")?,
            args.get("--guarantee", Guarantee::ExactlyOnce)?,
            args.get::<u64>("--count", 0)?,
            args.get::<f64>("--timeout-s", 10.0)?,
            args.get("--ack", AckMode::OnReceipt)?,
        ))
    })();
    let (listen, guarantee, count, timeout_s, ack_mode) = match parsed {
        Ok(p) => p,
        Err(e) => return args.fail(&e),
    };
    if !(timeout_s > 0.0 && timeout_s.is_finite()) {
        return args.fail("--timeout-s must be a positive number of seconds");
    }
    let idle_limit = Duration::from_secs_f64(timeout_s);

    // Step 1: bind a server endpoint. The transport config says how we acknowledge.
    let config = EndpointConfig::default()
        .accept_incoming(true)
        .transport(Config::default().ack_mode(ack_mode));
    let mut driver = match Driver::bind(listen, config, &SocketOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("receiver: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("receiver: listening on {}", driver.local_addr());

    // Step 2: receive until N distinct messages or T seconds with nothing new.
    let started = Instant::now();
    let mut last_new = started;
    let mut seen = std::collections::HashSet::new();
    let (mut duplicates, mut corrupt, mut out_of_order, mut gaps) = (0u64, 0u64, 0u64, 0u64);
    let mut highest: Option<u64> = None;
    let mut connections = Vec::new();
    let mut done = false;
    while !done && last_new.elapsed() < idle_limit {
        if let Err(e) = driver.wait(Some(Duration::from_millis(20))) {
            eprintln!("receiver: socket error: {e}");
            return ExitCode::from(1);
        }
        while let Some(ev) = driver.poll_event() {
            match ev {
                EndpointEvent::NewConnection { handle, remote } => {
                    eprintln!("receiver: connection from {remote}");
                    connections.push(handle);
                }
                EndpointEvent::Connection {
                    handle,
                    event: Event::Message(m),
                } => {
                    match verify(&m.payload) {
                        None => corrupt += 1,
                        Some(i) => {
                            if seen.insert(i) {
                                last_new = Instant::now();
                            } else {
                                duplicates += 1;
                            }
                            if highest.is_some_and(|h| i < h) {
                                out_of_order += 1;
                            }
                            highest = Some(highest.map_or(i, |h| h.max(i)));
                        }
                    }
                    // "Processing" is the check above; in after-processing mode confirm it now.
                    if let Some(token) = m.token {
                        let now = Instant::now();
                        if let Some(conn) = driver.endpoint().connection_mut(handle) {
                            let _ = conn.ack(now, token);
                        }
                    }
                }
                EndpointEvent::Connection {
                    event: Event::Lost { count },
                    ..
                } => gaps += count,
                _ => {}
            }
        }
        if count > 0 && seen.len() as u64 >= count {
            done = true;
        }
        if let Err(e) = driver.flush() {
            eprintln!("receiver: socket error: {e}");
            return ExitCode::from(1);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Step 3: close gracefully, so the senders hear of every delivery, then wait (bounded)
    // for the closes to complete.
    let now = Instant::now();
    for &h in &connections {
        if let Some(conn) = driver.endpoint().connection_mut(h) {
            conn.close(now);
        }
    }
    let close_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < close_deadline
        && connections
            .iter()
            .any(|&h| driver.endpoint().connection(h).is_some())
    {
        let _ = driver.wait(Some(Duration::from_millis(10)));
        while driver.poll_event().is_some() {}
    }

    // Step 4: the verdict and the JSON line.
    let delivered = seen.len() as u64;
    let complete = count == 0
        || match guarantee {
            Guarantee::AtMostOnce => delivered + gaps >= count,
            _ => delivered == count,
        };
    let ok = corrupt == 0 && complete && (guarantee == Guarantee::AtLeastOnce || duplicates == 0);
    println!(
        "{}",
        Json::default()
            .int("delivered", delivered)
            .int("duplicates", duplicates)
            .int("corrupt", corrupt)
            .int("out_of_order", out_of_order)
            .int("gaps_reported", gaps)
            .num("elapsed_s", elapsed)
            .str("guarantee", &guarantee.to_string())
            .bool("ok", ok)
            .finish()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

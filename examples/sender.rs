//! Sends N messages and reports every outcome as JSON.
//!
//! ```text
//! cargo run --release --example sender -- --to ADDR [--guarantee G] [--count N]
//!     [--size BYTES] [--timeout-s T] [--ordered]
//! ```
//!
//! Connects to ADDR, sends N messages of BYTES bytes (message i starts with i as a
//! little-endian u64, the rest is derived from i) and exits when every message has an outcome
//! (Delivered or Undeliverable) or after T seconds. The last line on stdout is one JSON object:
//! `{"sent", "delivered", "undeliverable", "retransmissions", "elapsed_s", "msgs_per_s",
//! "p50_us", "p99_us", ...}`. The exit status is 0 when every message was confirmed
//! (at-most-once: when every message has an outcome).
// Examples run on the real clock; only the protocol core is kept off it.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Args, Json, payload};
use surely::endpoint::{EndpointConfig, EndpointEvent};
use surely::net::{Driver, SocketOptions};
use surely::{Config, Event, Guarantee, SendError, SendOptions};

const USAGE: &str = "usage: sender --to ADDR [--guarantee at-most-once|at-least-once|exactly-once] \
                     [--count N] [--size BYTES] [--timeout-s T] [--ordered]";

fn main() -> ExitCode {
    env_logger::init();
    let args = match Args::parse(
        "sender",
        &["--to", "--guarantee", "--count", "--size", "--timeout-s"],
        &["--ordered"],
    ) {
        Ok(a) => a,
        Err(e) if e == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sender: {e}");
            return ExitCode::from(2);
        }
    };
    let parsed = (|| -> Result<_, String> {
        Ok((
            args.required::<SocketAddr>("--to")?,
            args.get("--guarantee", Guarantee::ExactlyOnce)?,
            args.get::<u64>("--count", 1000)?,
            args.get::<usize>("--size", 64)?,
            args.get::<f64>("--timeout-s", 30.0)?,
        ))
    })();
    let (to, guarantee, count, size, timeout_s) = match parsed {
        Ok(p) => p,
        Err(e) => return args.fail(&e),
    };
    let ordered = args.has("--ordered");
    let transport = Config::default();
    if size < 8 || size > transport.max_message_size {
        return args.fail(&format!(
            "--size must be within 8..={}",
            transport.max_message_size
        ));
    }
    if ordered && guarantee == Guarantee::AtMostOnce {
        return args.fail("--ordered needs at-least-once or exactly-once");
    }
    if !(timeout_s > 0.0 && timeout_s.is_finite()) {
        return args.fail("--timeout-s must be a positive number of seconds");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);

    // Step 1: a client endpoint on an ephemeral port of the right address family.
    let local: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let config = EndpointConfig::default()
        .accept_incoming(false)
        .transport(transport);
    let mut driver = match Driver::bind(local, config, &SocketOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("sender: cannot bind {local}: {e}");
            return ExitCode::from(1);
        }
    };
    let handle = match driver.connect(to) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("sender: cannot connect to {to}: {e}");
            return ExitCode::from(1);
        }
    };

    // Step 2: once connected, send as fast as back-pressure allows; count the outcomes.
    let opts = SendOptions::new(guarantee).ordered(ordered);
    let mut connected = false;
    let mut started = Instant::now();
    let (mut next, mut delivered, mut undeliverable) = (0u64, 0u64, 0u64);
    let mut failure: Option<String> = None;
    let mut buf = Vec::new();
    while Instant::now() < deadline && delivered + undeliverable < count {
        if connected && next < count {
            let now = Instant::now();
            if let Some(conn) = driver.endpoint().connection_mut(handle) {
                while next < count {
                    buf = payload_into(buf, next, size);
                    match conn.send(now, &buf, opts) {
                        Ok(_) => next += 1,
                        Err(SendError::Backpressure) => break,
                        Err(e) => {
                            failure = Some(format!("send failed: {e}"));
                            break;
                        }
                    }
                }
            }
            if let Err(e) = driver.flush() {
                eprintln!("sender: socket error: {e}");
                return ExitCode::from(1);
            }
        }
        if failure.is_some() {
            break;
        }
        let wait = if connected && next < count {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        if let Err(e) = driver.wait(Some(wait)) {
            eprintln!("sender: socket error: {e}");
            return ExitCode::from(1);
        }
        while let Some(ev) = driver.poll_event() {
            match ev {
                EndpointEvent::Connected { .. } => {
                    connected = true;
                    started = Instant::now();
                }
                EndpointEvent::ConnectFailed { reason, .. } => {
                    failure = Some(format!("cannot connect to {to}: {reason}"));
                }
                EndpointEvent::Connection { event, .. } => match event {
                    Event::Delivered { .. } => delivered += 1,
                    Event::Undeliverable { .. } => undeliverable += 1,
                    _ => {}
                },
                EndpointEvent::ConnectionClosed { reason, .. }
                    if delivered + undeliverable < next =>
                {
                    eprintln!("sender: connection closed: {reason}");
                }
                _ => {}
            }
        }
        if failure.is_some() {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = driver.endpoint().connection(handle).map(|c| c.stats());

    // Step 3: close gracefully (bounded), so the receiver is told too.
    if let Some(conn) = driver.endpoint().connection_mut(handle) {
        conn.close(Instant::now());
    }
    let close_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < close_deadline && driver.endpoint().connection(handle).is_some() {
        let _ = driver.wait(Some(Duration::from_millis(10)));
        while let Some(ev) = driver.poll_event() {
            if let EndpointEvent::Connection { event, .. } = ev {
                match event {
                    Event::Delivered { .. } => delivered += 1,
                    Event::Undeliverable { .. } => undeliverable += 1,
                    _ => {}
                }
            }
        }
    }
    if let Some(f) = &failure {
        eprintln!("sender: {f}");
    }

    // Step 4: the JSON line and the verdict.
    let (retx, p50, p99) = stats.map_or((0, 0, 0), |s| {
        (
            s.retransmissions,
            s.latency.quantile(0.5).map_or(0, |d| d.as_micros() as u64),
            s.latency.quantile(0.99).map_or(0, |d| d.as_micros() as u64),
        )
    });
    let ok = failure.is_none()
        && match guarantee {
            Guarantee::AtMostOnce => delivered + undeliverable == count,
            _ => delivered == count,
        };
    println!(
        "{}",
        Json::default()
            .int("sent", next)
            .int("delivered", delivered)
            .int("undeliverable", undeliverable)
            .int("retransmissions", retx)
            .num("elapsed_s", elapsed)
            .num("msgs_per_s", delivered as f64 / elapsed.max(1e-9))
            .int("p50_us", p50)
            .int("p99_us", p99)
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

/// Reuses `buf` for message `i`'s payload.
fn payload_into(mut buf: Vec<u8>, i: u64, len: usize) -> Vec<u8> {
    buf.clear();
    buf.extend_from_slice(&payload(i, len));
    buf
}

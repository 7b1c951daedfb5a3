//! Ping-pong between two drivers over loopback in one thread, for measuring what one round
//! trip costs the crate: run it under `valgrind --tool=callgrind` with two ping counts and
//! divide the difference in instructions by the difference in pings.
//!
//! ```text
//! cargo run --release --example pingpong -- [--pings N] [--size BYTES] [--raw]
//! ```
//!
//! The client sends an exactly-once message of BYTES bytes and flushes; the server processes
//! (as [`Driver::busy_poll`] does) until the message arrives, sends it back and flushes; the
//! client processes until the echo arrives and flushes what it owes. This is the loopback
//! bench's round trip (`benches/loopback.rs`) without the second thread and the waiting, so
//! instruction counts do not depend on scheduling. `--raw` does the same with plain datagrams
//! on the same batched socket calls, the baseline.
//!
//! Prints one JSON line: `{"pings","size","raw","elapsed_s","rtt_p50_us","rtt_p99_us",
//! "datagrams_out","datagrams_in","send_calls","recv_calls","turns"}`, counted over both
//! ends (`turns`: processing calls, including those that found nothing yet).
// Examples run on the real clock; only the protocol core is kept off it.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{Args, Json};
use surely::endpoint::{EndpointConfig, EndpointEvent};
use surely::histogram::LatencyHistogram;
use surely::net::{Driver, RecvBatch, SendBatch, SocketOptions, UdpSocket};
use surely::{ConnectionHandle, Event, Guarantee};

/// Longest one ping, or the handshake, may take before the run gives up.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// What the ends did, summed over both.
#[derive(Default)]
struct Counts {
    datagrams_out: u64,
    datagrams_in: u64,
    send_calls: u64,
    recv_calls: u64,
    turns: u64,
}

fn main() -> ExitCode {
    env_logger::init();
    let args = match Args::parse("pingpong", &["--pings", "--size"], &["--raw"]) {
        Ok(a) => a,
        Err(e) if e == "help" => {
            println!("usage: pingpong [--pings N] [--size BYTES] [--raw]");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pingpong: {e}");
            return ExitCode::from(2);
        }
    };
    let parsed = (|| -> Result<_, String> {
        Ok((
            args.get::<u64>("--pings", 10_000)?,
            args.get::<usize>("--size", 64)?,
        ))
    })();
    let (pings, size) = match parsed {
        Ok(p) => p,
        Err(e) => return args.fail(&e),
    };
    let raw = args.has("--raw");
    let payload = vec![0x42u8; size];
    let mut hist = LatencyHistogram::new();
    let mut counts = Counts::default();
    let start = Instant::now();
    let outcome = if raw {
        raw_pings(pings, &payload, &mut hist, &mut counts)
    } else {
        crate_pings(pings, &payload, &mut hist, &mut counts)
    };
    if let Err(e) = outcome {
        eprintln!("pingpong: {e}");
        return ExitCode::FAILURE;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let us = |q| hist.quantile(q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "{}",
        Json::default()
            .int("pings", pings)
            .int("size", size as u64)
            .bool("raw", raw)
            .num("elapsed_s", elapsed)
            .num("rtt_p50_us", us(0.5))
            .num("rtt_p99_us", us(0.99))
            .int("datagrams_out", counts.datagrams_out)
            .int("datagrams_in", counts.datagrams_in)
            .int("send_calls", counts.send_calls)
            .int("recv_calls", counts.recv_calls)
            .int("turns", counts.turns)
            .finish()
    );
    ExitCode::SUCCESS
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Processes `d` until a message arrives; returns its payload.
fn until_message(d: &mut Driver, turns: &mut u64) -> Result<Vec<u8>, String> {
    let end = Instant::now() + STEP_LIMIT;
    loop {
        d.process().map_err(|e| e.to_string())?;
        *turns += 1;
        let mut got = None;
        while let Some(ev) = d.poll_event() {
            if let EndpointEvent::Connection {
                event: Event::Message(m),
                ..
            } = ev
            {
                got = Some(m.payload);
            }
        }
        if let Some(p) = got {
            return Ok(p);
        }
        if Instant::now() > end {
            return Err(format!("nothing within {STEP_LIMIT:?}"));
        }
    }
}

/// Sends `payload` on `h` and flushes.
fn send(d: &mut Driver, h: ConnectionHandle, payload: &[u8]) -> Result<(), String> {
    let conn = d.endpoint().connection_mut(h).ok_or("connection gone")?;
    conn.send(Instant::now(), payload, Guarantee::ExactlyOnce)
        .map_err(|e| e.to_string())?;
    d.flush().map_err(|e| e.to_string())
}

fn crate_pings(
    pings: u64,
    payload: &[u8],
    hist: &mut LatencyHistogram,
    counts: &mut Counts,
) -> Result<(), String> {
    let opts = SocketOptions::default();
    let bind = |config| Driver::bind(loopback(), config, &opts).map_err(|e| e.to_string());
    let mut server = bind(EndpointConfig::default())?;
    let mut client = bind(EndpointConfig::default().accept_incoming(false))?;
    let h = client
        .connect(server.local_addr())
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + STEP_LIMIT;
    let (mut client_up, mut server_h) = (false, None);
    while !(client_up && server_h.is_some()) {
        client.process().map_err(|e| e.to_string())?;
        server.process().map_err(|e| e.to_string())?;
        while let Some(ev) = client.poll_event() {
            match ev {
                EndpointEvent::Connected { handle } if handle == h => client_up = true,
                EndpointEvent::ConnectFailed { reason, .. } => return Err(reason.to_string()),
                _ => {}
            }
        }
        while let Some(ev) = server.poll_event() {
            if let EndpointEvent::NewConnection { handle, .. } = ev {
                server_h = Some(handle);
            }
        }
        if Instant::now() > end {
            return Err("no connection".into());
        }
    }
    let sh = server_h.ok_or("no connection")?;
    let base = (client.stats().clone(), server.stats().clone());
    for _ in 0..pings {
        let t = Instant::now();
        send(&mut client, h, payload)?;
        let m = until_message(&mut server, &mut counts.turns)?;
        send(&mut server, sh, &m)?;
        if let Some(conn) = server.endpoint().connection_mut(sh) {
            conn.recycle(m);
        }
        let echo = until_message(&mut client, &mut counts.turns)?;
        hist.record(t.elapsed());
        if let Some(conn) = client.endpoint().connection_mut(h) {
            conn.recycle(echo);
        }
        // Acknowledgements owed go out now rather than with the next ping.
        client.flush().map_err(|e| e.to_string())?;
    }
    // A last acknowledgement may still be on its way: let each end take what the other sent.
    let sent_to =
        |from: &Driver, b: &surely::net::DriverStats| from.stats().datagrams_out - b.datagrams_out;
    let got = |at: &Driver, b: &surely::net::DriverStats| at.stats().datagrams_in - b.datagrams_in;
    for _ in 0..1000 {
        if sent_to(&client, &base.0) == got(&server, &base.1)
            && sent_to(&server, &base.1) == got(&client, &base.0)
        {
            break;
        }
        server.process().map_err(|e| e.to_string())?;
        client.process().map_err(|e| e.to_string())?;
    }
    for (d, b) in [(&client, &base.0), (&server, &base.1)] {
        let s = d.stats();
        counts.datagrams_out += s.datagrams_out - b.datagrams_out;
        counts.datagrams_in += s.datagrams_in - b.datagrams_in;
        counts.send_calls += s.send_calls - b.send_calls;
        counts.recv_calls += s.recv_calls - b.recv_calls;
    }
    Ok(())
}

/// A socket with its batches, for the raw baseline.
struct Raw {
    sock: UdpSocket,
    inb: RecvBatch,
    out: SendBatch,
}

impl Raw {
    fn bind() -> Result<Raw, String> {
        Ok(Raw {
            sock: UdpSocket::bind(loopback(), &SocketOptions::default())
                .map_err(|e| e.to_string())?,
            // The driver's receive slots: GRO on where the kernel has it, as for the crate.
            inb: RecvBatch::new(64, 65_536),
            out: SendBatch::new(64, 2048),
        })
    }

    fn send(&mut self, to: SocketAddr, data: &[u8], c: &mut Counts) -> Result<(), String> {
        let slot = self.out.slot_mut().ok_or("send batch full")?;
        slot[..data.len()].copy_from_slice(data);
        self.out.push(to, data.len());
        let n = self
            .sock
            .send_batch(&mut self.out)
            .map_err(|e| e.to_string())?;
        c.send_calls += 1;
        c.datagrams_out += n as u64;
        Ok(())
    }

    /// Receives until a datagram arrives; returns the first of the batch. One ping is in
    /// flight at a time, so a batch holds one datagram unless something else reached the
    /// socket; measuring and echoing the first keeps the two ends on the same datagram.
    fn until_datagram(&mut self, c: &mut Counts) -> Result<&[u8], String> {
        let end = Instant::now() + STEP_LIMIT;
        loop {
            let n = self
                .sock
                .recv_batch(&mut self.inb)
                .map_err(|e| e.to_string())?;
            c.turns += 1;
            if n > 0 {
                c.recv_calls += 1;
                c.datagrams_in += n as u64;
                return Ok(self.inb.get(0).map_or(&[], |(_, d)| d));
            }
            if Instant::now() > end {
                return Err(format!("nothing within {STEP_LIMIT:?}"));
            }
        }
    }
}

fn raw_pings(
    pings: u64,
    payload: &[u8],
    hist: &mut LatencyHistogram,
    counts: &mut Counts,
) -> Result<(), String> {
    let (mut client, mut server) = (Raw::bind()?, Raw::bind()?);
    let (to_server, to_client) = (server.sock.local_addr(), client.sock.local_addr());
    let mut echo = vec![0u8; payload.len()];
    for _ in 0..pings {
        let t = Instant::now();
        client.send(to_server, payload, counts)?;
        echo_first(&mut server, to_client, &mut echo, counts)?;
        client.until_datagram(counts)?;
        hist.record(t.elapsed());
    }
    Ok(())
}

/// The raw server's turn: receives until a datagram arrives and sends the first of the batch
/// back to `to` (through `echo`, cut to its length if longer).
fn echo_first(
    server: &mut Raw,
    to: SocketAddr,
    echo: &mut [u8],
    counts: &mut Counts,
) -> Result<(), String> {
    let ping = server.until_datagram(counts)?;
    let n = ping.len().min(echo.len());
    echo[..n].copy_from_slice(&ping[..n]);
    server.send(to, &echo[..n], counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two datagrams reach the raw server before it looks: it echoes the first, whole, and
    /// only it.
    #[test]
    fn raw_server_echoes_the_first_datagram_of_a_batch() {
        let (mut client, mut server) = (Raw::bind().unwrap(), Raw::bind().unwrap());
        let (to_server, to_client) = (server.sock.local_addr(), client.sock.local_addr());
        let mut counts = Counts::default();
        client.send(to_server, &[1; 10], &mut counts).unwrap();
        client.send(to_server, &[2; 30], &mut counts).unwrap();
        // Loopback delivers within the send; the pause only makes sure both are queued.
        std::thread::sleep(Duration::from_millis(20));
        let mut echo = vec![0u8; 64];
        echo_first(&mut server, to_client, &mut echo, &mut counts).unwrap();
        assert_eq!(
            counts.datagrams_in, 2,
            "both datagrams in the server's batch"
        );
        let got = client.until_datagram(&mut counts).unwrap();
        assert_eq!(got, &[1; 10][..]);
    }
}

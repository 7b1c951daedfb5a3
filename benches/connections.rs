//! Many idle connections on one endpoint, sans-IO (no sockets): a server `Endpoint` and a
//! client `Endpoint` hand datagrams to each other directly, on virtual time.
//!
//! Printed, for 1,000 and 10,000 connections (1,000 only under `--test`):
//!
//! - **memory per connection**: a counting global allocator in this binary counts the bytes
//!   requested from the allocator (the allocator's own overhead is not included). The server
//!   endpoint's share is what is still allocated after the client endpoint is dropped, minus
//!   what was allocated before either was created, divided by the number of connections;
//!   measured after the handshakes and again after the idle phase. One fresh
//!   `Connection::new` with the default configuration is measured alone for comparison.
//! - **CPU per second of idle time**: virtual time advances from deadline to deadline for 10
//!   seconds (keepalive 1 s, idle timeout 10 s: every connection pings every second and is
//!   acknowledged). Timed separately per endpoint: `handle_timeout` + `poll_transmit`, and
//!   `handle_datagram` of what the other side sent. A cost per timer event that grows with the
//!   number of connections (instead of O(log n)) shows as a per-connection cost that grows
//!   from 1,000 to 10,000.
//! - handshakes per second (CPU, both endpoints together), and allocations during the idle
//!   phase.
#![allow(clippy::disallowed_methods)] // one real `Instant` as the origin of virtual time; timing

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use surely::dedup::DedupWindow;
use surely::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use surely::histogram::LatencyHistogram;
use surely::rangeset::RangeSet;
use surely::{Config, Connection};

/// Counts live bytes and allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

const SERVER: &str = "127.0.0.1:4000";
const CLIENT: &str = "127.0.0.1:5000";
/// Connects issued before waiting for them (below the server's handshake queue of 1,024).
const CHUNK: usize = 500;
const IDLE_SECONDS: u64 = 10;
/// Guard on loop turns (every loop below is bounded).
const MAX_TURNS: u64 = 10_000_000;

/// Datagrams one side produced, kept to be handed over after the sender's timing stops.
struct Outbox {
    data: Vec<u8>,
    lens: Vec<usize>,
}

impl Outbox {
    fn with_capacity(datagrams: usize) -> Outbox {
        Outbox {
            data: Vec::with_capacity(datagrams * 1200),
            lens: Vec::with_capacity(datagrams),
        }
    }

    /// Drains `ep.poll_transmit` into the outbox; returns how many datagrams.
    fn fill(&mut self, ep: &mut Endpoint, now: Instant, buf: &mut [u8]) -> usize {
        self.data.clear();
        self.lens.clear();
        while let Some((_, n)) = ep.poll_transmit(now, buf) {
            self.data.extend_from_slice(&buf[..n]);
            self.lens.push(n);
        }
        self.lens.len()
    }

    fn deliver(&self, ep: &mut Endpoint, now: Instant, from: SocketAddr) {
        let mut at = 0;
        for &n in &self.lens {
            ep.handle_datagram(now, from, &self.data[at..at + n]);
            at += n;
        }
    }
}

/// CPU time spent by one endpoint during the idle phase.
#[derive(Default, Debug)]
struct Cpu {
    timeout_and_transmit: Duration,
    datagrams_in: Duration,
    datagrams_out: u64,
}

struct World {
    server: Endpoint,
    client: Endpoint,
    now: Instant,
    buf: Vec<u8>,
    s_out: Outbox,
    c_out: Outbox,
    s_cpu: Cpu,
    c_cpu: Cpu,
    timer_events: u64,
}

impl World {
    /// One round: both sides fire their timers and transmit, each side's datagrams are
    /// handed to the other. Returns whether anything was sent.
    fn round(&mut self) -> bool {
        let (s_addr, c_addr): (SocketAddr, SocketAddr) =
            (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
        let t = Instant::now();
        self.server.handle_timeout(self.now);
        let s_n = self.s_out.fill(&mut self.server, self.now, &mut self.buf);
        self.s_cpu.timeout_and_transmit += t.elapsed();

        let t = Instant::now();
        self.client.handle_timeout(self.now);
        let c_n = self.c_out.fill(&mut self.client, self.now, &mut self.buf);
        self.c_cpu.timeout_and_transmit += t.elapsed();

        let t = Instant::now();
        self.s_out.deliver(&mut self.client, self.now, s_addr);
        self.c_cpu.datagrams_in += t.elapsed();

        let t = Instant::now();
        self.c_out.deliver(&mut self.server, self.now, c_addr);
        self.s_cpu.datagrams_in += t.elapsed();

        self.s_cpu.datagrams_out += s_n as u64;
        self.c_cpu.datagrams_out += c_n as u64;
        s_n + c_n > 0
    }

    /// Rounds until neither side sends, then jumps to the next deadline (not past `limit`).
    /// Returns `false` once `limit` is reached.
    fn step(&mut self, limit: Instant) -> bool {
        let mut turns = 0;
        while self.round() {
            turns += 1;
            assert!(turns < MAX_TURNS, "endpoints never stop sending");
        }
        let next = [self.server.poll_timeout(), self.client.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                self.timer_events += 1;
                true
            }
            _ => {
                self.now = limit;
                false
            }
        }
    }
}

fn endpoint_config(n: usize, accept: bool) -> EndpointConfig {
    EndpointConfig::default()
        .max_connections(2 * n)
        .max_handshakes_per_sec(1_000_000)
        .handshake_burst(100_000)
        .accept_incoming(accept)
        .rng_seed(if accept { 1 } else { 2 })
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn run(n: usize, start: Instant) {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    // Buffers of the bench itself, allocated before the baseline.
    let buf = vec![0u8; 1500];
    let s_out = Outbox::with_capacity(2 * n + 64);
    let c_out = Outbox::with_capacity(2 * n + 64);
    let before = live();

    let server = Endpoint::new(endpoint_config(n, true), [1; 16], start).unwrap();
    let client = Endpoint::new(endpoint_config(n, false), [2; 16], start).unwrap();
    let mut w = World {
        server,
        client,
        now: start,
        buf,
        s_out,
        c_out,
        s_cpu: Cpu::default(),
        c_cpu: Cpu::default(),
        timer_events: 0,
    };

    // Handshakes, CHUNK at a time.
    let t = Instant::now();
    let (mut issued, mut connected, mut accepted) = (0usize, 0usize, 0usize);
    let limit = start + Duration::from_secs(600);
    let mut turns = 0u64;
    while connected < n {
        turns += 1;
        assert!(
            turns < MAX_TURNS && w.now < limit,
            "handshakes stuck at {connected}"
        );
        while issued < n && issued - connected < CHUNK {
            w.client.connect(w.now, server_addr).expect("connect");
            issued += 1;
        }
        while w.round() {}
        let was = connected;
        while let Some(ev) = w.client.poll_event() {
            match ev {
                EndpointEvent::Connected { .. } => connected += 1,
                EndpointEvent::ConnectFailed { reason, .. } => panic!("connect failed: {reason}"),
                _ => {}
            }
        }
        while let Some(ev) = w.server.poll_event() {
            if let EndpointEvent::NewConnection { .. } = ev {
                accepted += 1;
            }
        }
        if connected == was {
            // Nothing completed at this instant: let time move (retransmissions, if any).
            w.step(limit);
        }
    }
    let handshake_time = t.elapsed();
    assert_eq!(w.server.connection_count(), n);
    assert_eq!(accepted, n);
    let after_setup = live() - before;

    // Idle: 1 s to settle, then IDLE_SECONDS measured.
    let settle = w.now + Duration::from_secs(1);
    while w.step(settle) {}
    w.s_cpu = Cpu::default();
    w.c_cpu = Cpu::default();
    w.timer_events = 0;
    let allocs_before = ALLOCS.load(Relaxed);
    let idle_end = w.now + Duration::from_secs(IDLE_SECONDS);
    let mut steps = 0u64;
    while w.step(idle_end) {
        steps += 1;
        assert!(steps < MAX_TURNS, "idle phase never ends");
        // Nothing happens on an idle connection that the application must see.
        while w.server.poll_event().is_some() {}
        while w.client.poll_event().is_some() {}
    }
    let idle_allocs = ALLOCS.load(Relaxed) - allocs_before;
    assert_eq!(w.server.connection_count(), n, "idle connections stay open");
    assert_eq!(w.client.connection_count(), n, "idle connections stay open");
    let after_idle = live() - before;

    // The server's share: drop the client endpoint.
    let World {
        server,
        client,
        s_cpu,
        c_cpu,
        timer_events,
        ..
    } = w;
    let with_client = live();
    drop(client);
    let client_bytes = with_client - live();
    let server_bytes = live() - before;
    drop(server);

    let per = |b: usize| b as f64 / n as f64;
    let secs = IDLE_SECONDS as f64;
    println!("connections: {n} idle connections");
    println!(
        "  handshakes: {:.0} per second of CPU (both endpoints, {handshake_time:?} for {n})",
        n as f64 / handshake_time.as_secs_f64()
    );
    println!(
        "  memory, both endpoints, after handshakes: {} per connection pair; after {IDLE_SECONDS} s idle: {}",
        kib(per(after_setup)),
        kib(per(after_idle))
    );
    println!(
        "  memory, server endpoint after idle: {} per connection; client endpoint: {} per connection",
        kib(per(server_bytes)),
        kib(per(client_bytes))
    );
    for (name, cpu) in [("server", &s_cpu), ("client", &c_cpu)] {
        let tt = cpu.timeout_and_transmit.as_secs_f64() / secs;
        let rx = cpu.datagrams_in.as_secs_f64() / secs;
        println!(
            "  {name}: handle_timeout+poll_transmit {:.2} ms per idle second ({:.2} us per connection), \
             handle_datagram {:.2} ms per idle second ({:.2} us per connection); {:.0} datagrams out per second",
            tt * 1e3,
            tt * 1e6 / n as f64,
            rx * 1e3,
            rx * 1e6 / n as f64,
            cpu.datagrams_out as f64 / secs,
        );
    }
    println!(
        "  idle phase: {timer_events} distinct deadlines visited, {idle_allocs} allocations \
         ({:.2} per connection in {secs:.0} s)",
        idle_allocs as f64 / n as f64
    );
    let total = (s_cpu.timeout_and_transmit + s_cpu.datagrams_in).as_secs_f64() / secs;
    println!(
        "  SUMMARY n={n}: server memory {} per connection, server CPU {:.2} ms per idle second ({:.2} us per connection-second)",
        kib(per(server_bytes)),
        total * 1e3,
        total * 1e6 / n as f64
    );
}

fn main() {
    let start = Instant::now();
    // One connection alone, for comparison.
    let before = live();
    let conn = Connection::new(Arc::new(Config::default()), 1, 2, start).unwrap();
    let one = live() - before;
    drop(conn);
    println!(
        "connections: one fresh Connection (default Config) holds {} ({one} bytes)",
        kib(one as f64)
    );
    // What a fresh connection's largest parts take, built alone with the same arguments as in
    // `Connection::new` (acked_pns: 1,024 ranges; msg_acked and rx.received: 256; the latency
    // histogram in Stats; the done, seen and at-most-once windows of 4,096 ids).
    macro_rules! heap {
        ($e:expr) => {{
            let before = live();
            let x = $e;
            let bytes = live() - before;
            drop(x);
            bytes
        }};
    }
    let ranges_1024 = heap!(RangeSet::new(1024));
    let ranges_256 = heap!(RangeSet::new(256));
    let histogram = heap!(LatencyHistogram::new());
    let window = heap!(DedupWindow::new(0, 4096));
    let parts = ranges_1024 + 2 * ranges_256 + histogram + 3 * window;
    println!(
        "  of which: RangeSet::new(1024) {} + 2 x RangeSet::new(256) {} + LatencyHistogram {} + \
         3 x DedupWindow(4096) {} = {} B; the other {} B are the rest",
        ranges_1024,
        ranges_256,
        histogram,
        window,
        parts,
        one.saturating_sub(parts)
    );
    let test_mode = std::env::args().any(|a| a == "--test");
    let sizes: &[usize] = if test_mode {
        &[1_000]
    } else {
        &[1_000, 10_000]
    };
    for &n in sizes {
        run(n, start);
    }
}

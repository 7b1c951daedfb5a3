//! The crate against raw UDP over loopback, in one run, with the same system calls.
//!
//! Both sides use `surely::net::UdpSocket` with batches of 64 (`send_batch`/`recv_batch`,
//! i.e. `sendmmsg`/`recvmmsg` on Linux), a receiver thread and the measuring thread, and one
//! of two wait strategies:
//!
//! - **blocking**: the crate's `Driver::wait`; for raw UDP a `mio::Poll` wait for readability
//!   (as `Driver::wait` does), then receive until the socket is empty;
//! - **busy-poll**: the crate's `Driver::busy_poll` in a loop; for raw UDP a nonblocking
//!   `recv_batch` in a loop.
//!
//! **Throughput** (criterion): one iteration sends a batch of 64 B or 1,200 B messages and
//! waits until it is confirmed. The crate sends exactly-once messages (default configuration,
//! NewReno), flushes whenever about 64 datagrams' worth is queued (1,024 messages of 64 B, 64
//! of 1,200 B) and at the end, and waits for every Delivered event. For 1,200 B messages both
//! crate endpoints set `max_datagram_size` to 1,472 (an Ethernet MTU of 1,500 minus the IPv4
//! and UDP headers, what a LAN or loopback user would set), so that a message and its header
//! fit one datagram as raw UDP's does; at the default 1,200 each message would take two. Raw
//! UDP sends one datagram per message with a window of 1,024 unconfirmed datagrams; the
//! receiver answers every `recv_batch` with one 8-byte datagram holding the count received so
//! far, and the sender waits until the count covers the batch (a datagram the kernel drops is
//! counted as lost after 100 ms without progress, and reported). The means over all iterations and the crate/raw ratios are printed
//! at the end, and so are the crate's datagrams per message and per kernel message (GSO/GRO).
//!
//! Raw UDP runs three times: `raw` receives into the driver's batch (64 KiB slots, so GRO is
//! on where the kernel has it, as for the crate), `raw-no-gro` into 2 KiB slots, one datagram
//! per receive entry. Both send with GSO where the kernel has it, like the driver. On loopback
//! GSO and GRO let the kernel move up to 64 datagrams as one, so `raw` is the same-syscalls
//! baseline and `raw-no-gro` the per-datagram one on receive. `raw-plain` turns both offloads
//! off (`SocketOptions::offload`): `sendmmsg` and `recvmmsg` of 64 separate datagrams, plain
//! UDP as an application without segmentation offload sends it.
//!
//! **Round-trip time** (own timed loop, after criterion): ping-pong of 64 B messages, the
//! receiver echoing each one (the crate: an exactly-once message answered by an exactly-once
//! message; raw: a datagram answered by a datagram). 1,000 warm-up pings, then 20,000 timed
//! (`SURELY_BENCH_PINGS` overrides; 200 under `--test`; `SURELY_BENCH_RTT=crate|raw` and
//! `SURELY_BENCH_WAIT=blocking|busy-poll` run one side or one strategy alone), recorded in
//! `surely::histogram::LatencyHistogram`; p50/p99/p99.9 and the ratios are printed. Blocking
//! waits have the same bound on both sides at each place (`PEER_WAIT`, `BATCH_WAIT`,
//! `PING_WAIT`); the crate may wake earlier for a timer of its own. Where the scheduler puts
//! the two threads moves the blocking figures more than anything either side does (a wake-up
//! across CPUs can cost tens of microseconds on a virtual machine); `taskset -c 0` runs both
//! ends on one CPU, where the round trip is mostly the code and the system calls.
//! `SURELY_BENCH_PIN=split` keeps the sending or pinging thread on CPU 0 and the peers on CPU
//! 1, `SURELY_BENCH_PIN=same` every thread on CPU 0 (blocking only); both sides alike.
//!
//! Every socket is bound to 127.0.0.1; every loop is bounded by a count and a deadline; the
//! receiver threads stop when the measurement ends.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
#![allow(clippy::disallowed_methods)] // real sockets run on the real clock

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use mio::{Events, Interest, Poll, Token};
use surely::endpoint::{EndpointConfig, EndpointEvent};
use surely::histogram::LatencyHistogram;
use surely::net::{Driver, RecvBatch, SendBatch, SocketOptions, UdpSocket};
use surely::{Config, ConnectionHandle, Event, Guarantee, SendError};

/// Datagrams per batched system call, as in the driver.
const BATCH: usize = 64;
/// Raw UDP: most datagrams sent and not yet counted by the receiver.
const RAW_WINDOW: u64 = 1024;
/// Raw UDP: after this long without progress the missing datagrams count as lost.
const RAW_STALL: Duration = Duration::from_millis(100);
/// Longest any one batch or ping may take before the bench gives up (a bug, not a result).
const STEP_LIMIT: Duration = Duration::from_secs(30);
/// Blocking waits, the same bound for the crate and raw UDP at each place: a receiving or
/// echoing peer between looks at its stop flag; a throughput sender between checks of
/// progress; a ping client (the echo ends its wait long before).
const PEER_WAIT: Duration = Duration::from_millis(5);
const BATCH_WAIT: Duration = Duration::from_millis(1);
const PING_WAIT: Duration = Duration::from_millis(100);
/// A receiver thread stops by itself after this long in any case.
const THREAD_LIMIT: Duration = Duration::from_secs(1800);
const GUARANTEE: Guarantee = Guarantee::ExactlyOnce;
/// `max_datagram_size` for the 1,200 B case: Ethernet's 1,500-byte MTU minus 20 bytes of IPv4
/// and 8 of UDP header.
const LAN_DATAGRAM: usize = 1_472;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Blocking,
    BusyPoll,
}

impl Wait {
    fn name(self) -> &'static str {
        match self {
            Wait::Blocking => "blocking",
            Wait::BusyPoll => "busy-poll",
        }
    }
}

/// What a receiver thread does with what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Count (and, for raw UDP, report the count after every receive call).
    Sink,
    /// Send every message back.
    Echo,
}

/// Where the threads run, from `SURELY_BENCH_PIN`: unset, where the scheduler puts them;
/// `split`, the sending (or pinging) thread on CPU 0 and the peers on CPU 1; `same`, every
/// thread on CPU 0. The same placement holds for the crate and raw UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Free,
    Split,
    Same,
}

impl Placement {
    fn from_env() -> Placement {
        match std::env::var("SURELY_BENCH_PIN").as_deref() {
            Ok("split") => Placement::Split,
            Ok("same") => Placement::Same,
            Ok("") | Err(_) => Placement::Free,
            Ok(other) => panic!("SURELY_BENCH_PIN={other}: expected split or same"),
        }
    }

    fn main_cpu(self) -> Option<usize> {
        (self != Placement::Free).then_some(0)
    }

    fn peer_cpu(self) -> Option<usize> {
        match self {
            Placement::Free => None,
            Placement::Split => Some(1),
            Placement::Same => Some(0),
        }
    }
}

impl Wait {
    /// The wait strategies this placement can measure: two spinning ends on one CPU take
    /// turns of a scheduler time slice, so `same` measures blocking alone.
    fn placed() -> Vec<Wait> {
        if Placement::from_env() == Placement::Same {
            println!("SURELY_BENCH_PIN=same: busy-poll not measured (both ends on one CPU)");
            vec![Wait::Blocking]
        } else {
            vec![Wait::Blocking, Wait::BusyPoll]
        }
    }
}

/// Keeps the calling thread on `cpu` (no change for `None`).
fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: `cpu_set_t` is plain data whose all-zero value is the empty set; `CPU_SET`
    // writes a bit inside it (it checks the index against the set's size); the kernel reads
    // `size_of::<cpu_set_t>()` bytes from a pointer to that live local value.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity to CPU {cpu}: {}",
        io::Error::last_os_error()
    );
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A receiver thread and the flag that stops it.
struct Peer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn spawn(run: impl FnOnce(mpsc::Sender<SocketAddr>, Arc<AtomicBool>) + Send + 'static) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin(Placement::from_env().peer_cpu());
            run(tx, flag)
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver thread bound its socket");
        Peer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("receiver thread");
        }
    }
}

// ---------------------------------------------------------------------------------- the crate

fn driver(config: EndpointConfig) -> Driver {
    Driver::bind(loopback(), config, &SocketOptions::default()).expect("bind 127.0.0.1")
}

/// The connection configuration for messages of `size` bytes: the default, but with
/// [`LAN_DATAGRAM`] for messages that would not fit one default-sized datagram.
fn transport(size: usize) -> Config {
    let config = Config::default();
    if size + 100 > config.max_datagram_size {
        config.max_datagram_size(LAN_DATAGRAM)
    } else {
        config
    }
}

/// A driver's datagrams per system call and per kernel message, and its offloads.
fn io_counters(d: &Driver) -> String {
    let s = d.stats();
    let per = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    format!(
        "out: {} datagrams in {} kernel messages ({:.2} per message, GSO {}), {} send calls; \
         in: {} datagrams in {} kernel messages ({:.2} per message, GRO {}), {} recv calls \
         ({:.1} datagrams per call)",
        s.datagrams_out,
        s.messages_out,
        per(s.datagrams_out, s.messages_out),
        if d.socket().gso_enabled() {
            "on"
        } else {
            "off"
        },
        s.send_calls,
        s.datagrams_in,
        s.messages_in,
        per(s.datagrams_in, s.messages_in),
        if d.socket().gro_enabled() {
            "on"
        } else {
            "off"
        },
        s.recv_calls,
        per(s.datagrams_in, s.recv_calls),
    )
}

/// One turn of the driver. Blocking waits at most `timeout` (or until the crate's next timer),
/// the same bound the raw side uses at the same place.
fn drive(d: &mut Driver, wait: Wait, timeout: Duration) {
    match wait {
        Wait::Blocking => d.wait(Some(timeout)),
        Wait::BusyPoll => d.busy_poll(),
    }
    .expect("socket");
}

fn crate_peer(wait: Wait, role: Role, transport: Config) -> Peer {
    Peer::spawn(move |tx, stop| {
        let mut server = driver(EndpointConfig::default().transport(transport));
        tx.send(server.local_addr()).unwrap();
        let end = Instant::now() + THREAD_LIMIT;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            drive(&mut server, wait, PEER_WAIT);
            while let Some(ev) = server.poll_event() {
                if let EndpointEvent::Connection {
                    handle,
                    event: Event::Message(m),
                } = ev
                {
                    if let Some(conn) = server.endpoint().connection_mut(handle) {
                        if role == Role::Echo {
                            let _ = conn.send(Instant::now(), &m.payload, GUARANTEE);
                        }
                        conn.recycle(m.payload);
                    }
                }
            }
            server.flush().expect("flush");
        }
        println!(
            "crate server ({}, {role:?}) {}",
            wait.name(),
            io_counters(&server)
        );
    })
}

/// A client connected to `to`.
fn crate_client(to: SocketAddr, wait: Wait, transport: Config) -> (Driver, ConnectionHandle) {
    let config = EndpointConfig::default().transport(transport);
    let mut client = driver(config.accept_incoming(false));
    let h = client.connect(to).expect("connect");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        drive(&mut client, wait, BATCH_WAIT);
        while let Some(ev) = client.poll_event() {
            match ev {
                EndpointEvent::Connected { handle } if handle == h => return (client, h),
                EndpointEvent::ConnectFailed { reason, .. } => panic!("connect failed: {reason}"),
                _ => {}
            }
        }
    }
    panic!("no connection within 10 s");
}

/// Sends `count` messages and waits until every one is Delivered.
fn crate_batch(
    client: &mut Driver,
    h: ConnectionHandle,
    wait: Wait,
    payload: &[u8],
    count: u64,
) -> Duration {
    let t = Instant::now();
    let end = t + STEP_LIMIT;
    let (mut queued, mut done) = (0u64, 0u64);
    while done < count {
        if queued < count {
            let now = Instant::now();
            let conn = client
                .endpoint()
                .connection_mut(h)
                .expect("connection open");
            let (mut conn, every) = (conn, flush_every(payload.len()));
            while queued < count {
                match conn.send(now, payload, GUARANTEE) {
                    Ok(_) => queued += 1,
                    Err(SendError::Backpressure) => break,
                    Err(e) => panic!("send: {e}"),
                }
                if queued % every == 0 {
                    // A send batch is ready: out with it, as raw UDP sends every 64 datagrams.
                    client.flush().expect("flush");
                    conn = client
                        .endpoint()
                        .connection_mut(h)
                        .expect("connection open");
                }
            }
            client.flush().expect("flush");
        }
        drive(client, wait, BATCH_WAIT);
        while let Some(ev) = client.poll_event() {
            if let EndpointEvent::Connection { event, .. } = ev {
                match event {
                    Event::Delivered { .. } => done += 1,
                    Event::Undeliverable { reason, .. } => panic!("undeliverable: {reason}"),
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < end, "crate batch took over {STEP_LIMIT:?}");
    }
    t.elapsed()
}

/// One ping-pong: sends `payload`, waits for the echo.
fn crate_ping(client: &mut Driver, h: ConnectionHandle, wait: Wait, payload: &[u8]) -> Duration {
    let t = Instant::now();
    let conn = client
        .endpoint()
        .connection_mut(h)
        .expect("connection open");
    conn.send(t, payload, GUARANTEE).expect("send");
    client.flush().expect("flush");
    let end = t + STEP_LIMIT;
    loop {
        drive(client, wait, PING_WAIT);
        let mut got = None;
        while let Some(ev) = client.poll_event() {
            if let EndpointEvent::Connection {
                event: Event::Message(m),
                ..
            } = ev
            {
                got = Some(m.payload);
            }
        }
        if let Some(p) = got {
            let took = t.elapsed();
            if let Some(conn) = client.endpoint().connection_mut(h) {
                conn.recycle(p);
            }
            // Acknowledgements owed go out now rather than with the next ping.
            client.flush().expect("flush");
            return took;
        }
        assert!(Instant::now() < end, "no echo within {STEP_LIMIT:?}");
    }
}

/// The client connection's counters, for the report.
fn crate_counters(client: &mut Driver, h: ConnectionHandle) -> String {
    let Some(conn) = client.endpoint().connection(h) else {
        return "connection gone".into();
    };
    let s = conn.stats();
    format!(
        "messages_sent {}, packets_sent {}, packets_received {}, retransmissions {}, \
         packets_lost {}, probes {}, rtt {:?}, cwnd {}",
        s.messages_sent,
        s.packets_sent,
        s.packets_received,
        s.retransmissions,
        s.packets_lost,
        s.probes,
        s.rtt,
        s.cwnd
    )
}

// ---------------------------------------------------------------------------------- raw UDP

/// A raw socket with a private poll for the blocking strategy.
struct Raw {
    sock: UdpSocket,
    poll: Poll,
    events: Events,
    inb: RecvBatch,
    out: SendBatch,
}

impl Raw {
    /// `recv_slot`: [`GRO_SLOT`] for the driver's receive batch (GRO on where the kernel has
    /// it), [`PLAIN_SLOT`] for one datagram per receive entry. `offload`: GSO and GRO where
    /// the kernel has them.
    fn bind(recv_slot: usize, offload: bool) -> Raw {
        let mut options = SocketOptions::default();
        options.offload = offload;
        let mut sock = UdpSocket::bind(loopback(), &options).expect("bind");
        let poll = Poll::new().expect("poll");
        poll.registry()
            .register(sock.source(), Token(0), Interest::READABLE)
            .expect("register");
        Raw {
            sock,
            poll,
            events: Events::with_capacity(8),
            inb: RecvBatch::new(BATCH, recv_slot),
            out: SendBatch::new(BATCH, 2048),
        }
    }

    /// Blocking: sleeps until readable (or `timeout`). Busy-poll: returns at once.
    fn wait(&mut self, wait: Wait, timeout: Duration) {
        if wait == Wait::Blocking {
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("poll: {e}"),
            }
        }
    }

    /// One `recv_batch`; calls `f` for each datagram; returns how many.
    fn recv(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> usize {
        let n = self.sock.recv_batch(&mut self.inb).expect("recv");
        for i in 0..n {
            if let Some((from, data)) = self.inb.get(i) {
                f(from, data);
            }
        }
        n
    }

    /// Queues one datagram (sending the batch first if it is full).
    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        if self.out.slot_mut().is_none() {
            self.flush();
        }
        // With the socket buffer still full the datagram is dropped, as the kernel would.
        if let Some(slot) = self.out.slot_mut() {
            slot[..data.len()].copy_from_slice(data);
            self.out.push(to, data.len());
        }
    }

    fn flush(&mut self) {
        if self.out.pending() > 0 {
            self.sock.send_batch(&mut self.out).expect("send");
        }
    }
}

fn raw_peer(wait: Wait, role: Role, recv_slot: usize, offload: bool) -> Peer {
    Peer::spawn(move |tx, stop| {
        let mut raw = Raw::bind(recv_slot, offload);
        tx.send(raw.sock.local_addr()).unwrap();
        let end = Instant::now() + THREAD_LIMIT;
        let mut received = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            raw.wait(wait, PEER_WAIT);
            loop {
                let n = raw.sock.recv_batch(&mut raw.inb).expect("recv");
                received += n as u64;
                let mut last = None;
                for i in 0..n {
                    let Some((from, data)) = raw.inb.get(i) else {
                        continue;
                    };
                    last = Some(from);
                    if role == Role::Echo {
                        if raw.out.slot_mut().is_none() {
                            raw.sock.send_batch(&mut raw.out).expect("send");
                        }
                        if let Some(slot) = raw.out.slot_mut() {
                            slot[..data.len()].copy_from_slice(data);
                            raw.out.push(from, data.len());
                        }
                    }
                }
                if let (Role::Sink, Some(to)) = (role, last) {
                    raw.push(to, &received.to_le_bytes());
                }
                raw.flush();
                if n < BATCH {
                    break;
                }
            }
        }
    })
}

/// The raw sender's running totals (the receiver's count is cumulative).
#[derive(Default)]
struct RawSender {
    sent: u64,
    counted: u64,
    lost: u64,
}

/// Sends `count` datagrams of `payload` (window `RAW_WINDOW`) until the receiver counted them.
fn raw_batch(
    raw: &mut Raw,
    st: &mut RawSender,
    to: SocketAddr,
    wait: Wait,
    payload: &[u8],
    count: u64,
) -> Duration {
    let t = Instant::now();
    let end = t + STEP_LIMIT;
    let target = st.sent + count;
    let mut progress = t;
    while st.counted + st.lost < target {
        while st.sent < target && st.sent - st.counted - st.lost < RAW_WINDOW {
            let Some(slot) = raw.out.slot_mut() else {
                break;
            };
            slot[..payload.len()].copy_from_slice(payload);
            raw.out.push(to, payload.len());
            st.sent += 1;
        }
        raw.flush();
        raw.wait(wait, BATCH_WAIT);
        loop {
            let mut counted = st.counted;
            let n = raw.recv(|_, data| {
                if let Ok(b) = <[u8; 8]>::try_from(data) {
                    counted = counted.max(u64::from_le_bytes(b));
                }
            });
            if counted > st.counted {
                st.counted = counted;
                progress = Instant::now();
            }
            if n < BATCH {
                break;
            }
        }
        let now = Instant::now();
        if now - progress > RAW_STALL {
            st.lost = st.sent - st.counted;
            progress = now;
        }
        assert!(now < end, "raw batch took over {STEP_LIMIT:?}");
    }
    t.elapsed()
}

fn raw_ping(raw: &mut Raw, to: SocketAddr, wait: Wait, payload: &[u8]) -> Duration {
    let t = Instant::now();
    raw.push(to, payload);
    raw.flush();
    let end = t + STEP_LIMIT;
    loop {
        raw.wait(wait, PING_WAIT);
        let mut got = false;
        while raw.recv(|_, _| got = true) == BATCH {}
        if got {
            return t.elapsed();
        }
        assert!(Instant::now() < end, "no echo within {STEP_LIMIT:?}");
    }
}

// ---------------------------------------------------------------------------------- benches

/// Receive slots of the driver's batch: large enough for a GRO super-datagram.
const GRO_SLOT: usize = 65_536;
/// Receive slots for one plain datagram each (GRO stays off).
const PLAIN_SLOT: usize = 2_048;

/// Messages per iteration for a message size.
fn batch_len(size: usize) -> u64 {
    if size <= 64 { 2_000 } else { 1_000 }
}

/// The crate's sender flushes after this many messages: about one send batch ([`BATCH`]
/// datagrams; 17 messages of 64 B share a datagram, a message of 1,200 B takes one), so that
/// the receiver starts while the sender goes on, as raw UDP's sender sends each batch of 64
/// datagrams as soon as it is full.
fn flush_every(size: usize) -> u64 {
    if size <= 64 { 1_024 } else { BATCH as u64 }
}

fn bench_throughput(c: &mut Criterion) {
    // (wait, size, crate msgs/s, [raw msgs/s with GRO, without], raw (lost, sent))
    let mut results = Vec::new();
    for wait in Wait::placed() {
        let mut g = c.benchmark_group(format!("loopback/{}", wait.name()));
        g.sample_size(10);
        for size in [64usize, 1200] {
            let count = batch_len(size);
            let payload = vec![0x42u8; size];
            g.throughput(Throughput::Elements(count));

            let crate_total = Cell::new((0u64, Duration::ZERO));
            {
                let config = transport(size);
                println!(
                    "crate ({}, {size} B): max_datagram_size {}",
                    wait.name(),
                    config.max_datagram_size
                );
                let server = crate_peer(wait, Role::Sink, config.clone());
                let (mut client, h) = crate_client(server.addr, wait, config);
                g.bench_function(BenchmarkId::new("crate", format!("{size}B")), |b| {
                    b.iter_custom(|iters| {
                        let mut took = Duration::ZERO;
                        for _ in 0..iters {
                            took += crate_batch(&mut client, h, wait, &payload, count);
                        }
                        let (n, t) = crate_total.get();
                        crate_total.set((n + iters * count, t + took));
                        took
                    })
                });
                if crate_total.get().0 > 0 {
                    println!(
                        "crate client ({}, {size} B): {}",
                        wait.name(),
                        crate_counters(&mut client, h)
                    );
                    println!(
                        "crate client ({}, {size} B) {}",
                        wait.name(),
                        io_counters(&client)
                    );
                }
            }

            let mut raw_rates = [0.0f64; 3];
            let mut raw_lost = (0u64, 0u64);
            let variants = [
                ("raw", GRO_SLOT, true),
                ("raw-no-gro", PLAIN_SLOT, true),
                ("raw-plain", PLAIN_SLOT, false),
            ];
            for (k, (name, slot, offload)) in variants.into_iter().enumerate() {
                let raw_total = Cell::new((0u64, Duration::ZERO));
                let mut sender = RawSender::default();
                let server = raw_peer(wait, Role::Sink, slot, offload);
                let mut raw = Raw::bind(slot, offload);
                g.bench_function(BenchmarkId::new(name, format!("{size}B")), |b| {
                    b.iter_custom(|iters| {
                        let mut took = Duration::ZERO;
                        for _ in 0..iters {
                            took += raw_batch(
                                &mut raw,
                                &mut sender,
                                server.addr,
                                wait,
                                &payload,
                                count,
                            );
                        }
                        let (n, t) = raw_total.get();
                        raw_total.set((n + iters * count, t + took));
                        took
                    })
                });
                println!(
                    "{name} sender ({}, {size} B): {} datagrams in {} kernel messages (GSO {})",
                    wait.name(),
                    sender.sent,
                    raw.out.messages_sent(),
                    if raw.sock.gso_enabled() { "on" } else { "off" },
                );
                let (n, t) = raw_total.get();
                if n > 0 {
                    raw_rates[k] = n as f64 / t.as_secs_f64();
                }
                raw_lost.0 += sender.lost;
                raw_lost.1 += sender.sent;
            }
            let (n, t) = crate_total.get();
            if n > 0 && raw_rates.iter().all(|&r| r > 0.0) {
                results.push((wait, size, n as f64 / t.as_secs_f64(), raw_rates, raw_lost));
            }
        }
        g.finish();
    }
    if results.is_empty() {
        return;
    }
    println!();
    println!("loopback throughput (mean over every iteration run, warm-up included):");
    println!(
        "| wait | size | crate msgs/s | raw msgs/s (GRO) | crate/raw | raw msgs/s (no GRO) | \
         crate/raw (no GRO) | crate MB/s | raw lost | raw msgs/s (no GSO, no GRO) | \
         crate/raw (no GSO, no GRO) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (wait, size, c, [r, no_gro, plain], (lost, sent)) in results {
        println!(
            "| {} | {size} B | {c:.0} | {r:.0} | {:.3} | {no_gro:.0} | {:.3} | {:.1} | {lost} of {sent} \
             | {plain:.0} | {:.3} |",
            wait.name(),
            c / r,
            c / no_gro,
            c * size as f64 / 1e6,
            c / plain,
        );
    }
}

fn pings() -> (u64, u64) {
    if std::env::args().any(|a| a == "--test") {
        return (20, 200);
    }
    let n = std::env::var("SURELY_BENCH_PINGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    (1_000, n)
}

fn us(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

fn rtt() {
    let (warm, count) = pings();
    let payload = [0x42u8; 64];
    let mut rows = Vec::new();
    // For profiling one side alone: SURELY_BENCH_RTT=crate or raw; one wait strategy alone:
    // SURELY_BENCH_WAIT=blocking or busy-poll.
    let only = std::env::var("SURELY_BENCH_RTT").unwrap_or_default();
    let only_wait = std::env::var("SURELY_BENCH_WAIT").unwrap_or_default();
    for wait in Wait::placed() {
        if !only_wait.is_empty() && only_wait != wait.name() {
            continue;
        }
        let mut crate_h = LatencyHistogram::new();
        if only != "raw" {
            let server = crate_peer(wait, Role::Echo, Config::default());
            let (mut client, h) = crate_client(server.addr, wait, Config::default());
            for i in 0..warm + count {
                let d = crate_ping(&mut client, h, wait, &payload);
                if i >= warm {
                    crate_h.record(d);
                }
            }
            println!(
                "crate ping client ({}): {}",
                wait.name(),
                crate_counters(&mut client, h)
            );
            println!(
                "crate ping client ({}) {}",
                wait.name(),
                io_counters(&client)
            );
        }
        let mut raw_h = LatencyHistogram::new();
        if only != "crate" {
            let server = raw_peer(wait, Role::Echo, GRO_SLOT, true);
            let mut raw = Raw::bind(GRO_SLOT, true);
            for i in 0..warm + count {
                let d = raw_ping(&mut raw, server.addr, wait, &payload);
                if i >= warm {
                    raw_h.record(d);
                }
            }
        }
        rows.push((wait, crate_h, raw_h));
    }
    println!();
    println!("loopback round-trip time, 64 B ping-pong, {count} pings after {warm} warm-up (us):");
    println!("| wait | impl | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    for (wait, c, r) in &rows {
        for (name, h) in [("crate", c), ("raw", r)] {
            println!(
                "| {} | {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
                wait.name(),
                us(h.quantile(0.5)),
                us(h.quantile(0.99)),
                us(h.quantile(0.999)),
                us(h.max()),
            );
        }
        println!(
            "| {} | crate/raw | {:.2} | {:.2} | {:.2} | |",
            wait.name(),
            us(c.quantile(0.5)) / us(r.quantile(0.5)),
            us(c.quantile(0.99)) / us(r.quantile(0.99)),
            us(c.quantile(0.999)) / us(r.quantile(0.999)),
        );
    }
}

criterion_group!(benches, bench_throughput);

fn main() {
    pin(Placement::from_env().main_cpu());
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::var_os("SURELY_BENCH_SKIP_RTT").is_none() {
        rtt();
    }
}

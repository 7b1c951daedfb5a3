//! Steady-state allocation: once warmed up, moving messages between two connections (send,
//! transmit, receive, deliver, acknowledge, outcome) allocates nothing on the heap, provided the
//! application hands received payloads back with `recycle`.
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use surely::{Config, Connection, Event, Guarantee, SendOptions};

/// Counts allocations made on threads that asked for it (the measuring test's own thread), so
/// that the test harness's other threads do not disturb the count.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tracked() -> bool {
    TRACKED.try_with(|t| t.get()).unwrap_or(false)
}

/// Counts this thread's allocations from now on.
fn track() {
    TRACKED.with(|t| t.set(true));
}

// SAFETY: delegates every call to the system allocator unchanged; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if tracked() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if tracked() {
            BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if tracked() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
            BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Moves `rounds` batches of `batch` messages from a to b; returns allocations counted during
/// the last `measured` rounds.
fn allocations(
    opts: SendOptions,
    size: usize,
    batch: usize,
    rounds: usize,
    measured: usize,
) -> u64 {
    let config = Arc::new(Config::default());
    let t0 = Instant::now();
    let mut a = Connection::new(config.clone(), 1, 2, t0).unwrap();
    let mut b = Connection::new(config, 2, 1, t0).unwrap();
    let mut buf = vec![0u8; 1500];
    let payload = vec![7u8; size];
    let mut now = t0;
    let mut before = 0;
    for round in 0..rounds {
        if round == rounds - measured {
            before = ALLOCATIONS.load(Ordering::Relaxed);
        }
        for _ in 0..batch {
            a.send(now, &payload, opts).unwrap();
        }
        // Deliver until both sides are quiet, advancing time past the ack delay.
        for _ in 0..50 {
            let mut moved = false;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, &buf[..n]).unwrap();
                moved = true;
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, &buf[..n]).unwrap();
                moved = true;
            }
            while let Some(ev) = b.poll_event() {
                if let Event::Message(m) = ev {
                    b.recycle(m.payload);
                }
            }
            while let Some(ev) = a.poll_event() {
                assert!(matches!(ev, Event::Delivered { .. }), "{ev:?}");
            }
            if !moved && a.pending_messages() == 0 {
                break;
            }
            now += Duration::from_millis(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        assert_eq!(a.pending_messages(), 0, "round {round} completed");
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn no_allocation_per_message_in_steady_state() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track();
    for g in [
        Guarantee::ExactlyOnce,
        Guarantee::AtLeastOnce,
        Guarantee::AtMostOnce,
    ] {
        let n = allocations(SendOptions::new(g), 64, 100, 2_000, 500);
        assert_eq!(
            n, 0,
            "{g}: {n} allocations for 50,000 messages in steady state"
        );
    }
}

#[test]
fn no_allocation_per_message_in_bursts_of_thousands() {
    // 2,000 messages in flight at once: the default pool (1 MiB) keeps a buffer for each, so
    // a burst reuses the buffers of the one before.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track();
    let n = allocations(SendOptions::new(Guarantee::ExactlyOnce), 64, 2_000, 30, 6);
    assert_eq!(
        n, 0,
        "{n} allocations for 12,000 messages in bursts of 2,000"
    );
}

#[test]
fn no_allocation_per_message_on_an_ordered_channel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track();
    let opts = SendOptions::new(Guarantee::ExactlyOnce)
        .channel(3)
        .ordered(true);
    let n = allocations(opts, 200, 50, 2_000, 500);
    assert_eq!(
        n, 0,
        "{n} allocations for 25,000 ordered messages in steady state"
    );
}

static BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes held by one idle connection with default settings, after it exchanged a few
/// messages (so that its buffers have their working sizes). Two connections are created and
/// measured together, each sending to the other, and the total is halved.
#[test]
fn an_idle_connection_costs_at_most_16_kib() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track();
    let config = Arc::new(Config::default());
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1500];
    let before = BYTES.load(Ordering::Relaxed);
    let mut a = Connection::new(config.clone(), 1, 2, t0).unwrap();
    let mut b = Connection::new(config, 2, 1, t0).unwrap();
    let mut now = t0;
    for i in 0..20u8 {
        a.send(now, &[i; 32], Guarantee::ExactlyOnce).unwrap();
        b.send(now, &[i; 32], Guarantee::ExactlyOnce).unwrap();
        for _ in 0..5 {
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, &buf[..n]).unwrap();
            }
            for c in [&mut a, &mut b] {
                while let Some(ev) = c.poll_event() {
                    if let Event::Message(m) = ev {
                        c.recycle(m.payload);
                    }
                }
            }
            now += Duration::from_millis(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
    }
    assert_eq!((a.pending_messages(), b.pending_messages()), (0, 0));
    let heap = (BYTES.load(Ordering::Relaxed) - before) / 2;
    let total = heap + std::mem::size_of::<Connection>() as u64;
    eprintln!("idle connection: {total} bytes ({heap} on the heap)");
    assert!(total <= 16 * 1024, "{total} bytes per idle connection");
}

/// A datagram to connection 2 with the given frames, sealed with the CRC.
fn to_b(pn: u32, frames: &[surely::wire::Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let header = surely::wire::Header {
        packet_type: surely::wire::PacketType::Data,
        conn_id: 2,
        packet_number: pn,
    };
    let n = surely::wire::encode_datagram(&mut buf, &header, frames, &surely::wire::Crc32)
        .expect("valid frames");
    buf.truncate(n);
    buf
}

/// Under attack (first fragments of many large messages, ordered messages and FORWARD skips
/// far ahead of their channel, at-most-once ids all over the window), the heap a connection
/// holds stays within its receive buffer limit plus a fixed overhead.
#[test]
fn a_connection_under_attack_stays_within_its_caps() {
    use surely::wire::{ForwardEntry, Fragment, Frame, MessageFrame};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track();
    let limit = 1 << 20;
    let config = Arc::new(
        Config::default()
            .recv_buffer_bytes(limit)
            .max_message_size(256 << 10)
            .max_partial_messages(16),
    );
    let now = Instant::now();
    let before = BYTES.load(Ordering::Relaxed);
    let mut c = Connection::new(config.clone(), 2, 1, now).unwrap();
    let chunk = vec![0xabu8; 1000];
    let mut pn = 0u32;
    let mut next_pn = || {
        pn += 1;
        pn
    };
    for round in 0..3u64 {
        // First fragments of messages that never complete.
        for id in 0..2_000u64 {
            let f = Frame::Message(MessageFrame {
                guarantee: if id % 2 == 0 {
                    Guarantee::ExactlyOnce
                } else {
                    Guarantee::AtMostOnce
                },
                channel: 0,
                id: round * 2_000 + id,
                chan_seq: None,
                fragment: Some(Fragment {
                    total_len: 200_000,
                    count: 200,
                    index: 0,
                }),
                payload: &chunk,
            });
            let _ = c.handle_datagram(now, &to_b(next_pn(), &[f]));
        }
        // Ordered messages and skips held back behind a position that never arrives.
        for k in 1..3_000u64 {
            let id = 10_000 + round * 3_000 + k;
            let frame = if k % 2 == 0 {
                Frame::Message(MessageFrame {
                    guarantee: Guarantee::ExactlyOnce,
                    channel: (k % 200) as u8,
                    id: id % 4_000,
                    chan_seq: Some(k),
                    fragment: None,
                    payload: &chunk[..500],
                })
            } else {
                let entries = [ForwardEntry {
                    id: id % 4_000,
                    ordered: Some(((k % 200) as u8, k)),
                }];
                let mut fb = vec![0u8; 64];
                let mut w = surely::wire::Writer::new(&mut fb);
                surely::wire::emit_forward(&mut w, &entries).unwrap();
                let n = w.position();
                let d = {
                    let fr: Vec<_> = surely::wire::frames(&fb[..n]).map(|f| f.unwrap()).collect();
                    to_b(next_pn(), &fr)
                };
                let _ = c.handle_datagram(now, &d);
                continue;
            };
            let _ = c.handle_datagram(now, &to_b(next_pn(), &[frame]));
        }
        assert!(c.receive_buffered_bytes() <= limit);
    }
    let held = BYTES.load(Ordering::Relaxed) - before;
    eprintln!(
        "under attack: {held} bytes held, {} counted as buffered, limit {limit}",
        c.receive_buffered_bytes()
    );
    // The receive buffer limit, plus bookkeeping that does not grow with the attack
    // (windows, range sets, tables) and allocator slack on the held buffers.
    assert!(held <= limit as u64 + 256 * 1024, "{held} bytes held");
    drop(c);
}

/// Passes every datagram `from` has to send to `to`; returns how many.
fn pump(
    from: &mut surely::endpoint::Endpoint,
    from_addr: std::net::SocketAddr,
    to: &mut surely::endpoint::Endpoint,
    now: Instant,
    buf: &mut [u8],
) -> usize {
    let mut n = 0;
    while let Some((_, len)) = from.poll_transmit(now, buf) {
        to.handle_datagram(now, from_addr, &buf[..len]);
        n += 1;
    }
    n
}

#[test]
fn idle_connections_on_endpoints_allocate_nothing() {
    // Keepalives and acknowledgements move every connection's deadline each second: the
    // endpoints' deadline queues must absorb that without allocating.
    use surely::endpoint::{Endpoint, EndpointConfig};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut now = start;
    let (sa, ca) = (
        "127.0.0.1:4000".parse().unwrap(),
        "127.0.0.1:5000".parse().unwrap(),
    );
    let mut server = Endpoint::new(EndpointConfig::default(), [1; 16], now).unwrap();
    let mut client = Endpoint::new(
        EndpointConfig::default().accept_incoming(false),
        [2; 16],
        now,
    )
    .unwrap();
    let mut buf = vec![0u8; server.buffer_size().max(client.buffer_size())];
    for _ in 0..300 {
        client.connect(now, sa).unwrap();
    }
    let step = Duration::from_millis(10);
    let mut measured_from = None;
    let mut datagrams = 0;
    for turn in 0..2_000u32 {
        // 20 s of virtual time: handshakes, then idle; count the last 10 s.
        if turn == 1_000 {
            while client.poll_event().is_some() {}
            while server.poll_event().is_some() {}
            assert_eq!(server.connection_count(), 300);
            measured_from = Some(ALLOCATIONS.load(Ordering::Relaxed));
            track();
        }
        for _ in 0..4 {
            let a = pump(&mut client, ca, &mut server, now, &mut buf);
            let b = pump(&mut server, sa, &mut client, now, &mut buf);
            if turn >= 1_000 {
                datagrams += a + b;
            }
            if a + b == 0 {
                break;
            }
        }
        now += step;
        client.handle_timeout(now);
        server.handle_timeout(now);
        if turn >= 1_000 {
            while client.poll_event().is_some() {}
            while server.poll_event().is_some() {}
        }
    }
    let n = ALLOCATIONS.load(Ordering::Relaxed) - measured_from.unwrap();
    assert!(
        datagrams >= 300 * 10,
        "only {datagrams} datagrams while idle"
    );
    assert_eq!(server.connection_count(), 300);
    assert_eq!(
        n, 0,
        "{n} allocations in 10 idle seconds of 300 connections"
    );
}

//! Attackers on the simulator, each over many seeds, with the caps they must not break:
//! spoofed handshake floods, slow handshakes, a peer that sends first fragments only, an
//! optimistic acker, a peer that never acknowledges, and a replayer.
//!
//! Every test is deterministic (seeded) and bounded (virtual time and iteration caps).
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::endpoint::{ConnectionHandle, Endpoint, EndpointConfig, EndpointEvent};
use surely::sim::{LinkConfig, NODE_A, NODE_B, Network, NodeId, Pair, for_each_seed};
use surely::wire::{
    self, Crc32, Fragment, Frame, HEADER_LEN, HandshakePacket, Header, MAX_DATAGRAM,
    MIN_INITIAL_DATAGRAM, MessageFrame, PacketType, TransportParams, Writer,
};
use surely::{
    CloseReason, Config, Connection, DatagramError, Event, Guarantee, PacketNumber, Rng, SendError,
    SendOptions, State, UndeliverableReason,
};

const SEEDS: std::ops::Range<u64> = 0..50;

fn t0() -> Instant {
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A DATA datagram to connection `cid` from well-formed frames.
fn data_to(cid: u64, pn: u64, frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: cid,
        packet_number: PacketNumber(pn).truncate(),
    };
    let n = wire::encode_datagram(&mut buf, &header, frames, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// A DATA datagram to `cid` whose frame bytes are `payload`.
fn raw_to(cid: u64, pn: u64, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN + payload.len() + 4];
    Header {
        packet_type: PacketType::Data,
        conn_id: cid,
        packet_number: PacketNumber(pn).truncate(),
    }
    .emit(&mut Writer::new(&mut d))
    .unwrap();
    d[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let n = HEADER_LEN + payload.len();
    wire::seal(&mut d, n, &Crc32).unwrap();
    d
}

// ------------------------------------------------------------------ endpoints

const BASE_PORT: u16 = 10_000;

fn addr_of(node: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BASE_PORT + node as u16))
}

fn node_of(addr: SocketAddr) -> Option<NodeId> {
    let ip: [u8; 4] = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => return None,
    };
    (ip == [127, 0, 0, 1] && addr.port() >= BASE_PORT).then(|| usize::from(addr.port() - BASE_PORT))
}

/// A random address that is not a simulated node (10.x.y.z).
fn spoofed(rng: &mut Rng) -> SocketAddr {
    let x = rng.next_u64();
    SocketAddr::from((
        [10, (x >> 8) as u8, (x >> 16) as u8, (x >> 24) as u8],
        1024 + (x >> 32) as u16 % 60_000,
    ))
}

fn params() -> TransportParams {
    TransportParams {
        max_datagram_size: 1200,
        initial_packet_number: 0,
        initial_message_id: 0,
    }
}

fn initial(cid: u64, attempt: u32, cookie: Option<&[u8]>) -> Vec<u8> {
    let p = HandshakePacket::Initial {
        attempt,
        client_cid: cid,
        params: params(),
        cookie,
    };
    let mut buf = vec![0u8; 1500];
    let n = p.encode(&mut buf, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// A server on node 0 and honest client endpoints on the other nodes, on a simulated
/// network; datagrams the server sends to addresses that are not nodes (spoofed ones) are
/// handed to `off_net` instead.
struct World {
    net: Network,
    server: Endpoint,
    clients: Vec<Endpoint>,
    now: Instant,
    buf: Vec<u8>,
    server_events: Vec<EndpointEvent>,
    client_events: Vec<Vec<EndpointEvent>>,
}

impl World {
    fn new(seed: u64, server: EndpointConfig, clients: usize, link: LinkConfig) -> World {
        let now = t0();
        let mut net = Network::new(seed);
        for a in 0..=clients {
            for b in 0..=clients {
                if a != b {
                    net.set_link(a, b, link.clone());
                }
            }
        }
        World {
            net,
            server: Endpoint::new(server.rng_seed(seed), [7; 16], now).unwrap(),
            clients: (0..clients)
                .map(|i| {
                    let c = EndpointConfig::default()
                        .accept_incoming(false)
                        .rng_seed(seed * 100 + i as u64 + 1);
                    Endpoint::new(c, [i as u8 + 1; 16], now).unwrap()
                })
                .collect(),
            now,
            buf: vec![0; 65_536],
            server_events: Vec::new(),
            client_events: (0..clients).map(|_| Vec::new()).collect(),
        }
    }

    /// Sends what every endpoint has; returns the server's datagrams to off-network addresses.
    fn flush(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut off = Vec::new();
        let mut n = 0;
        while let Some((to, len)) = self.server.poll_transmit(self.now, &mut self.buf) {
            n += 1;
            assert!(n < 100_000, "server never stops sending");
            match node_of(to) {
                Some(node) => self.net.send(self.now, 0, node, &self.buf[..len]),
                None => off.push((to, self.buf[..len].to_vec())),
            }
        }
        while let Some(ev) = self.server.poll_event() {
            self.server_events.push(ev);
        }
        for (i, c) in self.clients.iter_mut().enumerate() {
            while let Some((to, len)) = c.poll_transmit(self.now, &mut self.buf) {
                let node = node_of(to).expect("clients only talk to nodes");
                self.net.send(self.now, i + 1, node, &self.buf[..len]);
            }
            while let Some(ev) = c.poll_event() {
                self.client_events[i].push(ev);
            }
        }
        off
    }

    /// Advances to the next deadline but not past `limit`; delivers and fires timers.
    fn step(&mut self, limit: Instant) {
        let next = self
            .clients
            .iter_mut()
            .filter_map(|c| c.poll_timeout())
            .chain(self.server.poll_timeout())
            .chain(self.net.next_delivery())
            .min();
        self.now = next.map_or(limit, |n| n.min(limit)).max(self.now);
        while let Some(d) = self.net.poll_delivery(self.now) {
            if d.to == 0 {
                self.server
                    .handle_datagram(self.now, addr_of(d.from), &d.data);
            } else {
                self.clients[d.to - 1].handle_datagram(self.now, addr_of(d.from), &d.data);
            }
        }
        self.server.handle_timeout(self.now);
        for c in &mut self.clients {
            c.handle_timeout(self.now);
        }
    }

    fn connected(&self, client: usize, h: ConnectionHandle) -> bool {
        self.client_events[client]
            .iter()
            .any(|e| matches!(e, EndpointEvent::Connected { handle } if *handle == h))
    }
}

/// Bytes in and out per unvalidated address, and replies per datagram.
#[derive(Default)]
struct Ledger {
    received: BTreeMap<SocketAddr, (usize, usize)>,
    sent: BTreeMap<SocketAddr, (usize, usize)>,
}

impl Ledger {
    fn got(&mut self, from: SocketAddr, len: usize) {
        let e = self.received.entry(from).or_default();
        e.0 += len;
        e.1 += 1;
    }

    fn answered(&mut self, to: SocketAddr, d: &[u8]) {
        let e = self.sent.entry(to).or_default();
        e.0 += d.len();
        e.1 += 1;
        let (bytes, count) = self.received.get(&to).copied().unwrap_or_default();
        assert!(
            e.0 <= bytes,
            "{to}: {} bytes sent, {bytes} received (amplification)",
            e.0
        );
        assert!(e.1 <= count, "{to}: {} answers to {count} datagrams", e.1);
        assert!(d.len() < MIN_INITIAL_DATAGRAM);
        assert!(
            d[1] == PacketType::Retry as u8 || d[1] == PacketType::Refuse as u8,
            "{to}: packet type {} to an unvalidated address",
            d[1]
        );
    }
}

/// Spoofed-source flood: 2,000 datagrams a second for a second from random addresses
/// (INITIALs with no cookie, with a forged cookie, truncated, junk, DATA for made-up ids,
/// server-side handshake packets) while an honest client connects.
#[test]
fn spoofed_source_flood_keeps_no_state_and_never_amplifies() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let link = LinkConfig::perfect(ms(10)).loss(0.02);
        let mut w = World::new(seed, EndpointConfig::default(), 1, link);
        let mut rng = Rng::new(seed ^ 0xf100d);
        let mut ledger = Ledger::default();
        let start = w.now;
        let h = w.clients[0].connect(w.now, addr_of(0)).unwrap();
        let flood_end = start + secs(1);
        let mut next_spoof = start;
        let mut sent_spoofed = 0u64;
        while w.now < start + secs(15) && !(w.connected(0, h) && w.now >= flood_end) {
            while next_spoof <= w.now && next_spoof < flood_end {
                let from = spoofed(&mut rng);
                let cid = rng.next_u64() | 1;
                let d = match rng.below(6) {
                    0 | 1 => initial(cid, 0, None),
                    2 => initial(cid, 1, Some(&[0x5a; 13])),
                    3 => {
                        let mut d = initial(cid, 0, None);
                        d.truncate(rng.range_inclusive(1, 1199) as usize);
                        d
                    }
                    4 => raw_to(rng.next_u64(), rng.next_u64(), &[0x01]),
                    _ => {
                        let mut b = vec![0u8; 1 + rng.below(1300) as usize];
                        b.iter_mut().for_each(|x| *x = rng.next_u64() as u8);
                        b
                    }
                };
                ledger.got(from, d.len());
                w.server.handle_datagram(next_spoof.max(w.now), from, &d);
                sent_spoofed += 1;
                next_spoof += Duration::from_micros(500);
            }
            for (to, d) in w.flush() {
                ledger.answered(to, &d);
            }
            assert_eq!(w.server.handshake_count(), 0);
            assert!(w.server.connection_count() <= 1);
            if w.server.connection_count() == 0 {
                assert_eq!(w.server.poll_timeout(), None, "a timer for nobody");
            }
            let limit = if next_spoof < flood_end {
                next_spoof
            } else {
                start + secs(15)
            };
            w.step(limit);
        }
        assert_eq!(sent_spoofed, 2000);
        assert!(w.connected(0, h), "the honest client did not get in");
        assert_eq!(w.server.connection_count(), 1);
        let s = w.server.stats();
        assert_eq!(s.handshakes_completed, 1, "{s:?}");
        assert!(
            s.bytes_sent_unvalidated <= s.bytes_received_unvalidated,
            "{s:?}"
        );
    });
}

/// Slow handshakes: 1,000 clients send an INITIAL and never echo the cookie; 20 more echo it
/// and then never send a packet. The server keeps nothing for the first, a bounded slot for
/// each of the others until their idle timeout, and an honest client still connects.
#[test]
fn slow_handshakes_hold_no_half_open_state() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let config = EndpointConfig::default().max_connections(32);
        let mut w = World::new(seed, config, 1, LinkConfig::perfect(ms(5)));
        let mut rng = Rng::new(seed ^ 0x510);
        let mut ledger = Ledger::default();
        let start = w.now;
        // (address, cid) of the attackers that echo the cookie, and their cookies.
        let mut echoers: BTreeMap<SocketAddr, (u64, Option<Vec<u8>>)> = BTreeMap::new();
        let mut to_echoers: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut i = 0u64;
        let mut honest = None;
        let mut most = 0;
        while w.now < start + secs(25) {
            // One slow client every 2 ms for 2 s; every 50th echoes the cookie.
            while i < 1000 && start + ms(2 * i) <= w.now {
                let from = spoofed(&mut rng);
                let cid = rng.next_u64() | 1;
                let d = initial(cid, 0, None);
                ledger.got(from, d.len());
                if i % 50 == 0 {
                    echoers.insert(from, (cid, None));
                }
                w.server.handle_datagram(w.now, from, &d);
                i += 1;
            }
            if honest.is_none() && w.now >= start + ms(500) {
                honest = Some(w.clients[0].connect(w.now, addr_of(0)).unwrap());
            }
            for (to, d) in w.flush() {
                if let Some((cid, cookie)) = echoers.get_mut(&to) {
                    *to_echoers.entry(to).or_default() += 1;
                    if let Ok(HandshakePacket::Retry { cookie: c, .. }) =
                        HandshakePacket::decode(&d, &Crc32)
                    {
                        if cookie.is_none() {
                            // Echo once, then go silent forever.
                            *cookie = Some(c.to_vec());
                            let echo = initial(*cid, 1, Some(c));
                            w.server.handle_datagram(w.now, to, &echo);
                        }
                    }
                } else {
                    ledger.answered(to, &d);
                }
            }
            assert_eq!(w.server.handshake_count(), 0, "half-open state kept");
            let open = w.server.connection_count();
            most = most.max(open);
            assert!(open <= echoers.len() + 1, "{open} connections");
            let limit = if i < 1000 {
                start + ms(2 * i)
            } else {
                start + secs(25)
            };
            w.step(limit);
        }
        let h = honest.unwrap();
        assert!(w.connected(0, h), "the honest client did not get in");
        assert_eq!(echoers.len(), 20);
        assert_eq!(
            most, 21,
            "every echoer got a connection, and the honest client"
        );
        // The silent ones were closed by idle timeout and freed; the honest one stays.
        assert_eq!(w.server.connection_count(), 1);
        let idle_closes = w
            .server_events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    EndpointEvent::ConnectionClosed {
                        reason: CloseReason::IdleTimeout,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(idle_closes, 20);
        // Work spent on each silent peer is bounded: an ACCEPT, keepalives and probes.
        for (addr, n) in &to_echoers {
            assert!(*n <= 64, "{n} datagrams to silent {addr}");
        }
        let s = w.server.stats();
        assert!(
            s.bytes_sent_unvalidated <= s.bytes_received_unvalidated,
            "{s:?}"
        );
    });
}

// ------------------------------------------------------------------ fragments

/// A peer that sends the first fragment (or a few) of many large messages and never the rest:
/// the receiver's buffer stays within its caps, partial messages expire, memory returns to 0.
#[test]
fn gapped_fragment_sender_cannot_pin_memory() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        const MAX_TOTAL: u64 = 100_000;
        const PARTIALS: usize = 8;
        let config = Config::default()
            .recv_buffer_bytes(1 << 20)
            .max_message_size(256 << 10)
            .max_partial_messages(PARTIALS)
            .reassembly_timeout(secs(2))
            .rng_seed(seed);
        let cap = config.recv_buffer_bytes;
        let start = t0();
        let mut victim = Connection::new(Arc::new(config), 2, 1, start).unwrap();
        let mut net = Network::new(seed);
        let link = LinkConfig::perfect(ms(10))
            .jitter(ms(5))
            .loss(0.05)
            .reorder(0.1, ms(20))
            .duplicate(0.05);
        net.set_links(NODE_A, NODE_B, link);
        let mut rng = Rng::new(seed ^ 0xf4a9);
        let mut now = start;
        let mut pn = 0u64;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut lost = 0u64;
        let mut data = vec![0u8; MAX_TOTAL as usize];
        let mut peak = 0;
        let attack_end = start + secs(3);
        for id in 0..600u64 {
            now = start + ms(5 * id);
            let total = rng.range_inclusive(10_000, MAX_TOTAL);
            let count = total.div_ceil(1000);
            let g = match rng.below(3) {
                0 => Guarantee::AtMostOnce,
                1 => Guarantee::AtLeastOnce,
                _ => Guarantee::ExactlyOnce,
            };
            data.iter_mut().for_each(|b| *b = id as u8);
            // One to three fragments, never all of them.
            let sends = 1 + rng.below(3);
            for _ in 0..sends {
                let index = rng.below(count - 1);
                let r = Fragment::byte_range(total, count, index).unwrap();
                let frame = Frame::Message(MessageFrame {
                    guarantee: g,
                    channel: 0,
                    id,
                    chan_seq: None,
                    fragment: Some(Fragment {
                        total_len: total,
                        count,
                        index,
                    }),
                    payload: &data[r.start as usize..r.end as usize],
                });
                net.send(now, NODE_A, NODE_B, &data_to(2, pn, &[frame]));
                pn += 1;
            }
            while let Some(d) = net.poll_delivery(now) {
                let got = victim.handle_datagram(now, &d.data);
                assert!(
                    !matches!(got, Err(DatagramError::ProtocolViolation(_))),
                    "{got:?}"
                );
                let buffered = victim.receive_buffered_bytes();
                peak = peak.max(buffered);
                assert!(buffered <= cap);
                assert!(
                    buffered <= PARTIALS * MAX_TOTAL as usize,
                    "{buffered} bytes: more than {PARTIALS} partial messages"
                );
            }
            victim.handle_timeout(now);
            while victim.poll_transmit(now, &mut buf).is_some() {}
            for e in events(&mut victim) {
                match e {
                    Event::Message(m) => panic!("message {} was never sent whole", m.id.get()),
                    Event::Lost { count } => lost += count,
                    Event::Closed { reason } => panic!("closed: {reason:?}"),
                    _ => {}
                }
            }
        }
        assert!(now < attack_end);
        assert!(peak > 0);
        // The attacker stops. Partial messages expire after the reassembly timeout.
        let end = now + secs(3);
        let mut rounds = 0;
        while let Some(t) = victim.poll_timeout() {
            if t > end {
                break;
            }
            now = now.max(t);
            victim.handle_timeout(now);
            while victim.poll_transmit(now, &mut buf).is_some() {}
            for e in events(&mut victim) {
                if let Event::Lost { count } = e {
                    lost += count;
                }
            }
            rounds += 1;
            assert!(rounds < 100_000, "timer loop");
        }
        assert_eq!(victim.receive_buffered_bytes(), 0, "memory not returned");
        assert_eq!(victim.state(), State::Established);
        assert_eq!(victim.stats().messages_received, 0);
        // At-most-once partials that expired (or were passed over) are counted lost.
        assert!(lost > 0);
    });
}

// ------------------------------------------------------------------ optimistic acker

/// A peer that acknowledges `[0, largest sent]` whatever it received. The sender's deliberately skipped packet numbers give it away: a
/// protocol-violation close within a bounded number of packets.
#[test]
fn optimistic_acker_is_detected() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let config = Config::default().rng_seed(seed);
        let start = t0();
        let mut now = start;
        let mut victim = Connection::new(Arc::new(config), 2, 1, start).unwrap();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut largest: Option<PacketNumber> = None;
        let mut sent = 0u64;
        let mut peer_pn = 0u64;
        let mut verdict = None;
        let mut delivered = 0u64;
        for _round in 0..20_000 {
            // At-most-once messages: an ACK alone makes them Delivered, which is what an
            // optimistic acker is after (and keeps the sender sending).
            while victim.pending_messages() < 64 {
                victim
                    .send(now, &[0x33; 700], Guarantee::AtMostOnce)
                    .unwrap();
            }
            while let Some(n) = victim.poll_transmit(now, &mut buf) {
                sent += 1;
                // The attacker sees the packet numbers go by (it need not receive the
                // packets) and acknowledges everything up to the largest.
                let (h, _) = wire::open(&buf[..n], &Crc32).unwrap();
                largest = Some(PacketNumber::expand(h.packet_number, largest));
            }
            if let Some(l) = largest {
                let mut fb = vec![0u8; 64];
                let mut w = Writer::new(&mut fb);
                wire::emit_ack(&mut w, 0, std::iter::once(0..l.0 + 1)).unwrap();
                let len = w.position();
                let d = raw_to(2, peer_pn, &fb[..len]);
                peer_pn += 1;
                if let Err(e) = victim.handle_datagram(now, &d) {
                    verdict = Some(e);
                    break;
                }
            }
            for e in events(&mut victim) {
                if matches!(e, Event::Delivered { .. }) {
                    delivered += 1;
                }
            }
            now += ms(2);
            victim.handle_timeout(now);
        }
        let Some(DatagramError::ProtocolViolation(why)) = verdict else {
            panic!("not detected after {sent} packets: {verdict:?}");
        };
        assert!(why.contains("skipped"), "{why}");
        assert!(sent <= 10_000, "detected only after {sent} packets");
        assert!(delivered > 0);
        assert_eq!(victim.state(), State::Closing);
        let evs = events(&mut victim);
        let closed: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Closed { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![CloseReason::ProtocolViolation(why)]);
        // It ends: CLOSE sent, then closed by timer.
        for _ in 0..1000 {
            let Some(t) = victim.poll_timeout() else {
                break;
            };
            now = now.max(t);
            victim.handle_timeout(now);
            while victim.poll_transmit(now, &mut buf).is_some() {}
        }
        assert!(victim.is_closed());
        assert_eq!(victim.pending_messages(), 0);
    });
}

/// The detector's scope: packet numbers are skipped only while a packet is in flight, so a
/// sender of lone packets, each acknowledged before the next, skips none and an optimistic
/// acker goes unseen. It gains no window there either: a window the sender does not fill
/// does not grow, however early the acknowledgements come.
#[test]
fn an_optimistic_acker_of_lone_packets_gains_no_window() {
    let start = t0();
    let mut now = start;
    let mut victim = Connection::new(Arc::new(Config::default()), 2, 1, start).unwrap();
    let window = victim.stats().cwnd;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut largest: Option<PacketNumber> = None;
    for peer_pn in 0..3_000u64 {
        victim
            .send(now, &[0x44; 100], Guarantee::AtMostOnce)
            .unwrap();
        while let Some(n) = victim.poll_transmit(now, &mut buf) {
            let (h, _) = wire::open(&buf[..n], &Crc32).unwrap();
            largest = Some(PacketNumber::expand(h.packet_number, largest));
        }
        let l = largest.expect("a packet was sent");
        let mut fb = vec![0u8; 64];
        let mut w = Writer::new(&mut fb);
        wire::emit_ack(&mut w, 0, std::iter::once(0..l.0 + 1)).unwrap();
        let len = w.position();
        victim
            .handle_datagram(now, &raw_to(2, peer_pn, &fb[..len]))
            .unwrap();
        events(&mut victim);
        now += ms(2);
        victim.handle_timeout(now);
        assert!(victim.stats().cwnd <= window, "{:?}", victim.stats());
    }
    assert_eq!(victim.state(), State::Established);
    assert_eq!(victim.stats().cwnd, window);
}

/// Honest peers over a lossy, reordering, duplicating link never trip the detector, in either
/// direction, over thousands of packets (many skipped numbers, past the 16 remembered).
#[test]
fn honest_peers_never_trigger_the_optimistic_ack_detector() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let start = t0();
        let ca = Arc::new(Config::default().rng_seed(seed));
        let cb = Arc::new(Config::default().rng_seed(seed + 1000));
        let mut pair = Pair::new(ca, cb, seed, start).unwrap();
        let link = LinkConfig::perfect(ms(10))
            .jitter(ms(3))
            .loss(0.08)
            .reorder(0.1, ms(15))
            .duplicate(0.03);
        pair.net.set_links(NODE_A, NODE_B, link);
        let n = 3000u64;
        let mut reliable = BTreeSet::new();
        for i in 0..n {
            let g = match i % 3 {
                0 => Guarantee::AtMostOnce,
                1 => Guarantee::AtLeastOnce,
                _ => Guarantee::ExactlyOnce,
            };
            let id = pair.a.send(pair.now, &[i as u8; 1000], g).unwrap();
            if g.is_reliable() {
                reliable.insert(id.get());
            }
            if i % 10 == 0 {
                pair.b
                    .send(pair.now, &[1; 300], Guarantee::ExactlyOnce)
                    .unwrap();
            }
        }
        let mut outcomes = 0;
        let mut got = BTreeSet::new();
        let end = start + secs(120);
        while pair.step(end) {
            for (c, other) in [(&mut pair.a, "a"), (&mut pair.b, "b")] {
                for e in events(c) {
                    match e {
                        Event::Closed { reason } => panic!("{other} closed: {reason:?}"),
                        Event::Delivered { .. } | Event::Undeliverable { .. } if other == "a" => {
                            outcomes += 1;
                        }
                        Event::Message(m) if other == "b" && m.guarantee.is_reliable() => {
                            got.insert(m.id.get());
                        }
                        _ => {}
                    }
                }
            }
            if outcomes == n && pair.b.pending_messages() == 0 {
                break;
            }
        }
        assert_eq!(outcomes, n, "outcomes missing");
        assert_eq!(got, reliable, "reliable messages missing");
        assert!(pair.a.stats().packets_sent > 3000);
        assert_eq!(pair.a.state(), State::Established);
        assert_eq!(pair.b.state(), State::Established);
    });
}

// ------------------------------------------------------------------ ack withholder

/// Reliable messages given up and still waiting for the peer to confirm it skipped them.
fn forward_len(c: &Connection) -> usize {
    c.unconfirmed_abandoned()
}

/// A peer that never acknowledges. On even seeds it is silent; on odd seeds it keeps the
/// connection alive with PINGs (so no idle timeout) but never sends ACK or MSG_ACK. The sender
/// keeps trying to send: its memory stays within its caps, `send` pushes back, and every
/// message ends Undeliverable by its deadline (or when the connection is lost).
#[test]
fn ack_withholder_cannot_grow_sender_memory() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let pinging = seed % 2 == 1;
        let config = Config::default()
            .send_buffer_bytes(64 << 10)
            .max_message_size(16 << 10)
            .recv_buffer_bytes(64 << 10)
            .max_pending_messages(128)
            .rng_seed(seed);
        let send_cap = config.send_buffer_bytes;
        let pending_cap = config.max_pending_messages;
        let idle = config.idle_timeout;
        let start = t0();
        let mut now = start;
        let mut victim = Connection::new(Arc::new(config), 1, 2, start).unwrap();
        let mut rng = Rng::new(seed ^ 0xac4);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut accepted = BTreeMap::new();
        let mut outcomes: BTreeMap<(bool, u64), UndeliverableReason> = BTreeMap::new();
        let mut backpressure = 0;
        let mut datagrams = 0u64;
        let mut peer_pn = 0u64;
        let mut next_ping = start;
        let mut closed = None;
        let end = start + secs(40);
        let mut max_forward = 0;
        while now < end {
            if victim.state() == State::Established {
                for _ in 0..4 {
                    let len = rng.range_inclusive(100, 6000) as usize;
                    let g = match rng.below(3) {
                        0 => Guarantee::AtMostOnce,
                        1 => Guarantee::AtLeastOnce,
                        _ => Guarantee::ExactlyOnce,
                    };
                    let opts = SendOptions::new(g).deadline(ms(rng.range_inclusive(200, 3000)));
                    match victim.send(now, &vec![9; len], opts) {
                        Ok(id) => {
                            accepted.insert((g.is_reliable(), id.get()), ());
                        }
                        Err(SendError::Backpressure) => backpressure += 1,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            assert!(victim.pending_bytes() <= send_cap);
            assert!(victim.pending_messages() <= pending_cap);
            while victim.poll_transmit(now, &mut buf).is_some() {
                datagrams += 1;
            }
            if pinging && now >= next_ping {
                let d = data_to(1, peer_pn, &[Frame::Ping]);
                peer_pn += 1;
                let _ = victim.handle_datagram(now, &d);
                next_ping = now + ms(500);
            }
            for e in events(&mut victim) {
                match e {
                    Event::Delivered { id, .. } => panic!("{id:?} Delivered without an ack"),
                    Event::Undeliverable {
                        id,
                        guarantee,
                        reason,
                        ..
                    } => {
                        let key = (guarantee.is_reliable(), id.get());
                        assert!(outcomes.insert(key, reason).is_none(), "two outcomes");
                    }
                    Event::Closed { reason } => closed = Some((reason, now)),
                    _ => {}
                }
            }
            max_forward = max_forward.max(forward_len(&victim));
            if victim.is_closed() {
                break;
            }
            let next = victim.poll_timeout().unwrap_or(now + ms(10));
            now = next.min(now + ms(10)).max(now + Duration::from_micros(1));
            victim.handle_timeout(now);
        }
        for e in events(&mut victim) {
            if let Event::Undeliverable {
                id,
                guarantee,
                reason,
                ..
            } = e
            {
                let key = (guarantee.is_reliable(), id.get());
                assert!(outcomes.insert(key, reason).is_none(), "two outcomes");
            }
        }
        assert!(backpressure > 0, "send never pushed back");
        // Bounded work: the sender backs off instead of flooding the silent peer.
        assert!(datagrams < 20_000, "{datagrams} datagrams");
        if pinging {
            assert!(closed.is_none(), "{closed:?}");
            assert!(victim.state() == State::Established);
            // Every message accepted more than 3 s before the end has its outcome.
            assert!(
                outcomes
                    .values()
                    .any(|r| *r == UndeliverableReason::DeadlinePassed),
                "{outcomes:?}"
            );
            assert_eq!(
                outcomes.len() + victim.pending_messages(),
                accepted.len(),
                "outcomes {} pending {} accepted {} missing {:?}",
                outcomes.len(),
                victim.pending_messages(),
                accepted.len(),
                accepted
                    .keys()
                    .filter(|k| !outcomes.contains_key(k))
                    .take(10)
                    .collect::<Vec<_>>()
            );
            // What the sender keeps for messages it gave up on is bounded too.
            assert!(
                max_forward <= pending_cap,
                "{max_forward} abandoned messages kept for FORWARD (pending cap {pending_cap})"
            );
        } else {
            let (reason, at) = closed.expect("a silent peer ends the connection");
            assert_eq!(reason, CloseReason::IdleTimeout);
            assert!(at <= start + idle + secs(1));
            assert_eq!(
                outcomes.len(),
                accepted.len(),
                "a message without an outcome"
            );
            assert_eq!(victim.pending_bytes(), 0);
        }
    });
}

// ------------------------------------------------------------------ replayer

/// Every datagram a sent (delivered or lost by the network) is replayed to b: right after the
/// exchange (inside the tracked window) and again after thousands more packets (beyond it).
/// Nothing is handed over a second time.
#[test]
fn replayed_datagrams_never_deliver_twice() {
    for_each_seed("ATTACK_SEED", SEEDS, |seed| {
        let start = t0();
        let config = Arc::new(Config::default().rng_seed(seed));
        let mut pair = Pair::new(config.clone(), config, seed, start).unwrap();
        let link = LinkConfig::perfect(ms(5)).loss(0.1).reorder(0.05, ms(10));
        pair.net.set_links(NODE_A, NODE_B, link);
        let mut recorded: Vec<Vec<u8>> = Vec::new();
        let mut delivered: BTreeMap<(bool, u64), usize> = BTreeMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut next_index = 0u64;
        let mut run = |pair: &mut Pair,
                       recorded: &mut Vec<Vec<u8>>,
                       delivered: &mut BTreeMap<(bool, u64), usize>,
                       count: u64| {
            for _ in 0..count {
                let g = match next_index % 3 {
                    0 => Guarantee::AtMostOnce,
                    1 => Guarantee::AtLeastOnce,
                    _ => Guarantee::ExactlyOnce,
                };
                let len = if next_index % 17 == 0 { 2500 } else { 40 };
                pair.a
                    .send(pair.now, &vec![next_index as u8; len], g)
                    .unwrap();
                next_index += 1;
            }
            let end = pair.now + secs(60);
            loop {
                while let Some(n) = pair.a.poll_transmit(pair.now, &mut buf) {
                    recorded.push(buf[..n].to_vec());
                    pair.net.send(pair.now, NODE_A, NODE_B, &buf[..n]);
                }
                for e in events(&mut pair.b) {
                    if let Event::Message(m) = e {
                        // At-least-once copies may be handed over again by design; replays
                        // are checked separately below.
                        if m.guarantee != Guarantee::AtLeastOnce {
                            let key = (m.guarantee.is_reliable(), m.id.get());
                            *delivered.entry(key).or_default() += 1;
                        }
                    }
                }
                events(&mut pair.a);
                if pair.a.pending_messages() == 0 || !pair.step(end) {
                    break;
                }
            }
            // Let the last acknowledgements and AMO_FLOOR settle.
            let settle = pair.now + secs(1);
            loop {
                while let Some(n) = pair.a.poll_transmit(pair.now, &mut buf) {
                    recorded.push(buf[..n].to_vec());
                    pair.net.send(pair.now, NODE_A, NODE_B, &buf[..n]);
                }
                events(&mut pair.a);
                for e in events(&mut pair.b) {
                    // A fragment held up by reordering may still complete an at-most-once
                    // message the sender already counted lost: a first delivery, not a
                    // second one.
                    if let Event::Message(m) = e {
                        if m.guarantee != Guarantee::AtLeastOnce {
                            let key = (m.guarantee.is_reliable(), m.id.get());
                            *delivered.entry(key).or_default() += 1;
                        }
                    }
                }
                if !pair.step(settle) {
                    break;
                }
            }
        };
        run(&mut pair, &mut recorded, &mut delivered, 300);
        assert!(delivered.values().all(|&n| n <= 1), "a delivery twice");
        let first = recorded.clone();
        // Replay inside the window.
        let replay = |pair: &mut Pair, dgs: &[Vec<u8>]| {
            let before = pair.b.stats();
            for d in dgs {
                let _ = pair.b.handle_datagram(pair.now, d);
                let evs = events(&mut pair.b);
                for e in evs {
                    if let Event::Message(m) = e {
                        panic!("a replay delivered {:?} id {}", m.guarantee, m.id.get());
                    }
                }
            }
            let after = pair.b.stats();
            assert_eq!(after.messages_received, before.messages_received);
            assert_eq!(pair.b.state(), State::Established);
        };
        replay(&mut pair, &first);
        // Thousands of packets later: the old numbers are far below what b tracks.
        run(&mut pair, &mut recorded, &mut delivered, 3000);
        replay(&mut pair, &first);
        replay(&mut pair, &recorded);
        assert!(delivered.values().all(|&n| n <= 1), "a delivery twice");
        // From an earlier connection with other connection ids: never routed to this one.
        let mut later = Connection::new(Arc::new(Config::default()), 7, 8, pair.now).unwrap();
        for d in &recorded {
            assert_eq!(
                later.handle_datagram(pair.now, d),
                Err(DatagramError::UnknownConnection)
            );
        }
        assert!(events(&mut later).is_empty());
        assert_eq!(later.stats().dropped_stale, recorded.len() as u64);
    });
}

/// Across connections at an endpoint: DATA recorded on a first connection and replayed from the
/// same address after it closed, while a second connection runs, is dropped as unknown.
#[test]
fn replayed_datagrams_from_an_earlier_connection_are_dropped_by_the_endpoint() {
    for_each_seed("ATTACK_SEED", 0..20, |seed| {
        let mut w = World::new(
            seed,
            EndpointConfig::default(),
            1,
            LinkConfig::perfect(ms(5)),
        );
        let start = w.now;
        let mut recorded: Vec<Vec<u8>> = Vec::new();
        let mut messages = Vec::new();
        let open_connection = |w: &mut World, recorded: &mut Vec<Vec<u8>>| {
            let h = w.clients[0].connect(w.now, addr_of(0)).unwrap();
            let until = w.now + secs(10);
            while !w.connected(0, h) && w.now < until {
                w.flush();
                w.step(until);
            }
            assert!(w.connected(0, h));
            for i in 0..20u8 {
                let c = w.clients[0].connection_mut(h).unwrap();
                c.send(w.now, &[i; 50], Guarantee::ExactlyOnce).unwrap();
            }
            // Record the client's DATA packets by driving its transmissions by hand.
            let until = w.now + secs(5);
            while w.now < until {
                let mut buf = vec![0u8; 65_536];
                while let Some((to, n)) = w.clients[0].poll_transmit(w.now, &mut buf) {
                    if buf[1] == PacketType::Data as u8 {
                        recorded.push(buf[..n].to_vec());
                    }
                    w.net.send(w.now, 1, node_of(to).unwrap(), &buf[..n]);
                }
                w.flush();
                w.step(until);
            }
            h
        };
        let h1 = open_connection(&mut w, &mut recorded);
        let first_cid = w.clients[0].connection(h1).unwrap().remote_cid();
        w.clients[0].connection_mut(h1).unwrap().close(w.now);
        let until = w.now + secs(15);
        while w.server.connection_count() > 0 && w.now < until {
            w.flush();
            w.step(until);
        }
        assert_eq!(w.server.connection_count(), 0);
        let old = recorded.clone();
        assert!(!old.is_empty());
        let h2 = open_connection(&mut w, &mut recorded);
        let second_cid = w.clients[0].connection(h2).unwrap().remote_cid();
        assert_ne!(first_cid, second_cid);
        for e in w.server_events.drain(..) {
            if let EndpointEvent::Connection {
                event: Event::Message(m),
                ..
            } = e
            {
                messages.push(m.payload);
            }
        }
        let before = w.server.stats().clone();
        for d in &old {
            w.server.handle_datagram(w.now, addr_of(1), d);
        }
        w.flush();
        let after = w.server.stats();
        assert_eq!(
            after.dropped_unknown_cid - before.dropped_unknown_cid,
            old.len() as u64
        );
        assert!(
            !w.server_events.iter().any(|e| matches!(
                e,
                EndpointEvent::Connection {
                    event: Event::Message(_),
                    ..
                }
            )),
            "a replay from the earlier connection was delivered"
        );
        // 20 messages on each connection. (The second connection reuses the first one's slot
        // at both endpoints: see `a_reused_connection_slot_still_reports_events`.)
        assert_eq!(
            messages.len(),
            40,
            "messages of the second connection never reported"
        );
        assert!(w.now < start + secs(120));
    });
}

/// Found by the replay test above: after a closed connection's slot is freed through
/// `poll_event`, the next connection given the same slot never has its events reported.
#[test]
fn a_reused_connection_slot_still_reports_events() {
    let mut w = World::new(1, EndpointConfig::default(), 1, LinkConfig::perfect(ms(5)));
    for round in 0..3u8 {
        let h = w.clients[0].connect(w.now, addr_of(0)).unwrap();
        let until = w.now + secs(5);
        while !w.connected(0, h) && w.now < until {
            w.flush();
            w.step(until);
        }
        assert!(w.connected(0, h), "round {round}: not connected");
        let id = w.clients[0]
            .connection_mut(h)
            .unwrap()
            .send(w.now, &[round; 10], Guarantee::ExactlyOnce)
            .unwrap();
        let until = w.now + secs(2);
        while w.now < until {
            w.flush();
            w.step(until);
        }
        let got = w.server_events.iter().any(|e| {
            matches!(e, EndpointEvent::Connection { event: Event::Message(m), .. } if m.payload == [round; 10])
        });
        let delivered = w.client_events[0].iter().any(|e| {
            matches!(e, EndpointEvent::Connection { handle, event: Event::Delivered { id: d, .. } } if *handle == h && *d == id)
        });
        assert!(got, "round {round}: the server never reported the message");
        assert!(
            delivered,
            "round {round}: the client never reported Delivered"
        );
        w.clients[0].connection_mut(h).unwrap().close(w.now);
        let until = w.now + secs(10);
        while (w.server.connection_count() > 0 || w.clients[0].connection(h).is_some())
            && w.now < until
        {
            w.flush();
            w.step(until);
        }
        assert_eq!(
            w.server.connection_count(),
            0,
            "round {round}: slot not freed"
        );
    }
}

//! The endpoint: handshake, many peers behind one address, limits, and the defences of a
//! server against spoofed handshakes. Endpoints run on the simulated network (node `i` is the
//! address `127.0.0.1:10000+i`), or are handed crafted datagrams directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use surely::endpoint::{
    ConnectFailReason, ConnectionHandle, Endpoint, EndpointConfig, EndpointEvent, RefuseReason,
};
use surely::sim::{LinkConfig, Network, NodeId, for_each_seed};
use surely::wire::{Crc32, HandshakePacket, MIN_INITIAL_DATAGRAM, PacketType, TransportParams};
use surely::{CloseReason, Config, Event, Guarantee, Rng};

/// The origin of virtual time (only offsets from it matter).
#[allow(clippy::disallowed_methods)]
fn start() -> Instant {
    Instant::now()
}

const BASE_PORT: u16 = 10_000;

fn addr_of(node: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], BASE_PORT + node as u16))
}

fn node_of(addr: SocketAddr) -> NodeId {
    usize::from(addr.port() - BASE_PORT)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secret(node: usize) -> [u8; 16] {
    std::array::from_fn(|i| (node * 31 + i) as u8)
}

/// Decides whether a datagram from one node to another is dropped before the network sees it.
type Filter = Box<dyn FnMut(NodeId, NodeId, &[u8]) -> bool>;

/// Endpoints on a simulated network, with every event they reported.
struct World {
    net: Network,
    eps: Vec<Option<Endpoint>>,
    now: Instant,
    buf: Vec<u8>,
    events: Vec<Vec<EndpointEvent>>,
    drop: Option<Filter>,
}

impl World {
    /// `nodes` endpoints; `config(i)` configures node `i` (`None`: no endpoint there).
    fn new(seed: u64, nodes: usize, config: impl Fn(usize) -> Option<EndpointConfig>) -> World {
        let now = start();
        let eps: Vec<Option<Endpoint>> = (0..nodes)
            .map(|i| {
                config(i).map(|c| {
                    Endpoint::new(c.rng_seed(seed * 1000 + i as u64), secret(i), now).unwrap()
                })
            })
            .collect();
        World {
            net: Network::new(seed),
            eps,
            now,
            buf: vec![0; 65_536],
            events: (0..nodes).map(|_| Vec::new()).collect(),
            drop: None,
        }
    }

    fn ep(&mut self, node: usize) -> &mut Endpoint {
        self.eps[node].as_mut().expect("an endpoint on this node")
    }

    fn link_all(&mut self, cfg: LinkConfig) {
        for a in 0..self.eps.len() {
            for b in 0..self.eps.len() {
                if a != b {
                    self.net.set_link(a, b, cfg.clone());
                }
            }
        }
    }

    /// Sends everything every endpoint has to send, and collects its events.
    fn flush(&mut self) {
        for i in 0..self.eps.len() {
            let Some(ep) = self.eps[i].as_mut() else {
                continue;
            };
            let mut n_sent = 0;
            while let Some((to, n)) = ep.poll_transmit(self.now, &mut self.buf) {
                n_sent += 1;
                assert!(n_sent < 100_000, "node {i} never stops sending");
                let to = node_of(to);
                let data = &self.buf[..n];
                if self.drop.as_mut().is_some_and(|f| f(i, to, data)) {
                    continue;
                }
                self.net.send(self.now, i, to, data);
            }
            while let Some(ev) = ep.poll_event() {
                self.events[i].push(ev);
            }
        }
    }

    /// Transmits, advances to the next deadline (at most `limit`), delivers and fires timers.
    fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let next = self
            .eps
            .iter_mut()
            .flatten()
            .filter_map(|e| e.poll_timeout())
            .chain(self.net.next_delivery())
            .min();
        let Some(next) = next else {
            self.now = self.now.max(limit);
            return false;
        };
        if next > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(next);
        while let Some(d) = self.net.poll_delivery(self.now) {
            if let Some(Some(ep)) = self.eps.get_mut(d.to) {
                ep.handle_datagram(self.now, addr_of(d.from), &d.data);
            }
        }
        for ep in self.eps.iter_mut().flatten() {
            ep.handle_timeout(self.now);
        }
        true
    }

    /// Steps until `done` (checked after every step, with the events so far) or `limit` from
    /// now has passed. Returns whether `done` became true.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            if !self.step(end) && self.now >= end {
                self.flush();
                return done(self);
            }
        }
    }

    /// Takes the events node `i` reported so far.
    fn take_events(&mut self, i: usize) -> Vec<EndpointEvent> {
        std::mem::take(&mut self.events[i])
    }

    /// Every endpoint sent no more to unvalidated addresses than it received from them.
    fn check_amplification(&self) {
        for ep in self.eps.iter().flatten() {
            let s = ep.stats();
            assert!(
                s.bytes_sent_unvalidated <= s.bytes_received_unvalidated,
                "{s:?}"
            );
        }
    }
}

fn connected(events: &[EndpointEvent], h: ConnectionHandle) -> bool {
    events
        .iter()
        .any(|e| matches!(e, EndpointEvent::Connected { handle } if *handle == h))
}

fn client_config() -> Option<EndpointConfig> {
    Some(EndpointConfig::default().accept_incoming(false))
}

/// A world of `nodes` endpoints: node 0 a server with the default configuration, the
/// others clients.
fn server_and_clients(seed: u64, nodes: usize) -> World {
    World::new(seed, nodes, |i| {
        if i == 0 {
            Some(EndpointConfig::default())
        } else {
            client_config()
        }
    })
}

/// Connects node `client` to node 0 and runs until both sides report it.
fn handshake(w: &mut World, client: usize) -> (ConnectionHandle, ConnectionHandle) {
    let now = w.now;
    let h = w.ep(client).connect(now, addr_of(0)).unwrap();
    let mut server_handle = None;
    let ok = w.run_until(Duration::from_secs(30), |w| {
        for ev in &w.events[0] {
            if let EndpointEvent::NewConnection { handle, remote } = ev {
                if *remote == addr_of(client) {
                    server_handle = Some(*handle);
                }
            }
        }
        server_handle.is_some() && connected(&w.events[client], h)
    });
    assert!(
        ok,
        "client {client} did not connect: {:?}",
        w.ep(client).stats()
    );
    (h, server_handle.unwrap())
}

#[test]
fn handshake_then_exactly_once_messages_both_ways() {
    for_each_seed("SURELY_SEED", 0..8, |seed| {
        let mut w = server_and_clients(seed, 2);
        w.link_all(
            LinkConfig::perfect(ms(10))
                .jitter(ms(5))
                .loss(0.1)
                .duplicate(0.05),
        );
        let (hc, hs) = handshake(&mut w, 1);
        w.take_events(0);
        w.take_events(1);

        const N: u64 = 200;
        let now = w.now;
        for i in 0..N {
            let c = w.ep(1).connection_mut(hc).unwrap();
            c.send(now, &i.to_be_bytes(), Guarantee::ExactlyOnce)
                .unwrap();
            let s = w.ep(0).connection_mut(hs).unwrap();
            s.send(now, &(1000 + i).to_be_bytes(), Guarantee::ExactlyOnce)
                .unwrap();
        }
        let mut got: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut delivered = [0u64; 2];
        let ok = w.run_until(Duration::from_secs(60), |w| {
            for node in 0..2 {
                for ev in w.take_events(node) {
                    match ev {
                        EndpointEvent::Connection {
                            event: Event::Message(m),
                            ..
                        } => {
                            got[node].push(u64::from_be_bytes(m.payload[..8].try_into().unwrap()));
                        }
                        EndpointEvent::Connection {
                            event: Event::Delivered { .. },
                            ..
                        } => {
                            delivered[node] += 1;
                        }
                        EndpointEvent::Connection {
                            event: Event::Undeliverable { .. },
                            ..
                        } => {
                            panic!("seed {seed}: undeliverable on a 10% loss link")
                        }
                        _ => {}
                    }
                }
            }
            delivered == [N, N]
        });
        assert!(ok, "seed {seed}: delivered {delivered:?}");
        // Exactly once, each way.
        let mut server_got = got[0].clone();
        server_got.sort_unstable();
        assert_eq!(server_got, (0..N).collect::<Vec<_>>(), "seed {seed}");
        let mut client_got = got[1].clone();
        client_got.sort_unstable();
        assert_eq!(
            client_got,
            (1000..1000 + N).collect::<Vec<_>>(),
            "seed {seed}"
        );
        w.check_amplification();
        assert_eq!(w.ep(0).stats().handshakes_completed, 1);
        assert_eq!(w.ep(1).stats().handshakes_completed, 1);
    });
}

#[test]
fn fifty_clients_one_server() {
    const CLIENTS: usize = 50;
    let mut w = server_and_clients(3, CLIENTS + 1);
    w.link_all(LinkConfig::perfect(ms(5)).jitter(ms(3)).loss(0.02));
    let now = w.now;
    let handles: Vec<ConnectionHandle> = (1..=CLIENTS)
        .map(|c| w.ep(c).connect(now, addr_of(0)).unwrap())
        .collect();
    // Each client sends its number once connected; the server echoes every message back on
    // the connection it came from.
    let mut echoed = BTreeSet::new();
    let mut replies = BTreeMap::new();
    let mut remotes = BTreeMap::new();
    let ok = w.run_until(Duration::from_secs(60), |w| {
        let now = w.now;
        for c in 1..=CLIENTS {
            for ev in w.take_events(c) {
                match ev {
                    EndpointEvent::Connected { handle } => {
                        assert_eq!(handle, handles[c - 1]);
                        let conn = w.ep(c).connection_mut(handle).unwrap();
                        conn.send(now, &[c as u8], Guarantee::ExactlyOnce).unwrap();
                    }
                    EndpointEvent::Connection {
                        event: Event::Message(m),
                        ..
                    } => {
                        assert!(
                            replies.insert(c, m.payload).is_none(),
                            "client {c}: two replies"
                        );
                    }
                    EndpointEvent::ConnectFailed { reason, .. } => panic!("client {c}: {reason}"),
                    _ => {}
                }
            }
        }
        for ev in w.take_events(0) {
            match ev {
                EndpointEvent::NewConnection { handle, remote } => {
                    remotes.insert(handle, remote);
                }
                EndpointEvent::Connection {
                    handle,
                    event: Event::Message(m),
                } => {
                    let from = node_of(remotes[&handle]);
                    assert_eq!(m.payload, [from as u8], "message on the wrong connection");
                    assert!(echoed.insert(from));
                    let conn = w.ep(0).connection_mut(handle).unwrap();
                    conn.send(now, &m.payload, Guarantee::ExactlyOnce).unwrap();
                }
                _ => {}
            }
        }
        replies.len() == CLIENTS
    });
    assert!(
        ok,
        "{} replies, server {:?}",
        replies.len(),
        w.ep(0).stats()
    );
    for (c, payload) in &replies {
        assert_eq!(payload, &[*c as u8]);
    }
    let server = w.ep(0);
    assert_eq!(server.connection_count(), CLIENTS);
    assert_eq!(server.handshake_count(), 0);
    assert_eq!(server.stats().handshakes_completed, CLIENTS as u64);
    assert_eq!(remotes.len(), CLIENTS);
    w.check_amplification();
}

#[test]
fn a_full_server_refuses_with_a_reason() {
    const MAX: usize = 3;
    let mut w = World::new(5, MAX + 2, |i| {
        if i == 0 {
            Some(EndpointConfig::default().max_connections(MAX))
        } else {
            client_config()
        }
    });
    w.link_all(LinkConfig::perfect(ms(5)));
    for c in 1..=MAX {
        handshake(&mut w, c);
    }
    w.take_events(0);
    let now = w.now;
    let h = w.ep(MAX + 1).connect(now, addr_of(0)).unwrap();
    let mut failed = None;
    let done = w.run_until(Duration::from_secs(10), |w| {
        for ev in w.take_events(MAX + 1) {
            if let EndpointEvent::ConnectFailed { handle, reason } = ev {
                assert_eq!(handle, h);
                failed = Some(reason);
            }
        }
        failed.is_some()
    });
    assert!(done);
    assert_eq!(
        failed,
        Some(ConnectFailReason::Refused(RefuseReason::ServerFull))
    );
    let refused: Vec<_> = w
        .take_events(0)
        .into_iter()
        .filter_map(|e| match e {
            EndpointEvent::Refused { remote, reason } => Some((remote, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(addr_of(MAX + 1), RefuseReason::ServerFull)]);
    let server = w.ep(0);
    assert_eq!(server.connection_count(), MAX);
    assert_eq!(server.stats().handshakes_refused, 1);
    let client = w.ep(MAX + 1);
    assert_eq!(client.handshake_count(), 0);
    assert_eq!(client.stats().handshakes_failed, 1);
    assert!(client.connection_mut(h).is_none());
    w.check_amplification();
}

fn params() -> TransportParams {
    TransportParams {
        max_datagram_size: 1200,
        initial_packet_number: 0,
        initial_message_id: 0,
    }
}

fn initial(cid: u64, cookie: Option<&[u8]>) -> Vec<u8> {
    let p = HandshakePacket::Initial {
        attempt: 0,
        client_cid: cid,
        params: params(),
        cookie,
    };
    let mut buf = vec![0u8; 1500];
    let n = p.encode(&mut buf, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// Everything `ep` sends now, with destinations.
fn drain(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; ep.buffer_size()];
    let mut out = Vec::new();
    while let Some((to, n)) = ep.poll_transmit(now, &mut buf) {
        out.push((to, buf[..n].to_vec()));
    }
    out
}

#[test]
fn a_spoofed_handshake_flood_leaves_no_state_and_no_amplification() {
    let t0 = start();
    let mut server = Endpoint::new(EndpointConfig::default(), secret(0), t0).unwrap();
    let mut rng = Rng::new(99);
    let mut received: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut sent: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let fake_cookie = [0x5a; 13];
    let mut now = t0;
    for i in 0..10_000u64 {
        // 10,000 INITIALs in 2 s from random addresses, a third with a made-up cookie.
        now = t0 + Duration::from_micros(200 * i);
        let ip = rng.next_u64() as u32;
        let from = SocketAddr::from((ip.to_be_bytes(), (rng.below(60_000) + 1024) as u16));
        let cookie = (i % 3 == 0).then_some(&fake_cookie[..]);
        let d = initial(rng.next_u64() | 1, cookie);
        *received.entry(from).or_default() += d.len();
        server.handle_datagram(now, from, &d);
        for (to, reply) in drain(&mut server, now) {
            assert!(reply.len() < MIN_INITIAL_DATAGRAM);
            assert_eq!(reply[1], PacketType::Retry as u8);
            *sent.entry(to).or_default() += reply.len();
        }
    }
    for (addr, n) in &sent {
        let got = received.get(addr).copied().unwrap_or(0);
        assert!(*n <= got, "{addr}: sent {n} bytes, received {got}");
    }
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.handshake_count(), 0);
    assert_eq!(server.poll_timeout(), None);
    assert!(server.poll_event().is_none());
    let s = server.stats().clone();
    assert_eq!(s.datagrams_received, 10_000);
    assert_eq!(s.cookies_rejected, 3334);
    assert_eq!(s.handshakes_completed, 0);
    // The rate limit (1000/s, burst 256) let about 256 + 2 * 1000 RETRYs out.
    assert!(s.datagrams_sent <= 256 + 2001, "{s:?}");
    assert_eq!(s.datagrams_sent + s.dropped_rate_limited, 10_000, "{s:?}");
    assert!(
        s.bytes_sent_unvalidated <= s.bytes_received_unvalidated / 30,
        "{s:?}"
    );

    // A real client still gets in afterwards.
    let client_addr = SocketAddr::from(([127, 0, 0, 1], 5555));
    let server_addr = SocketAddr::from(([127, 0, 0, 1], 4444));
    let mut client = Endpoint::new(client_config().unwrap(), secret(1), now).unwrap();
    let h = client.connect(now, server_addr).unwrap();
    for _ in 0..10 {
        now += ms(1);
        for (_, d) in drain(&mut client, now) {
            server.handle_datagram(now, client_addr, &d);
        }
        for (_, d) in drain(&mut server, now) {
            client.handle_datagram(now, server_addr, &d);
        }
    }
    assert!(client.connection(h).is_some());
    assert_eq!(server.connection_count(), 1);
}

/// Asks `server` for a cookie for (`from`, `cid`).
fn get_cookie(server: &mut Endpoint, now: Instant, from: SocketAddr, cid: u64) -> Vec<u8> {
    server.handle_datagram(now, from, &initial(cid, None));
    let out = drain(server, now);
    assert_eq!(out.len(), 1);
    match HandshakePacket::decode(&out[0].1, &Crc32) {
        Ok(HandshakePacket::Retry { cookie, .. }) => cookie.to_vec(),
        other => panic!("expected RETRY, got {other:?}"),
    }
}

/// Presents `cookie` for (`from`, `cid`); returns whether a connection was made.
fn present(server: &mut Endpoint, now: Instant, from: SocketAddr, cid: u64, cookie: &[u8]) -> bool {
    let before = server.connection_count();
    server.handle_datagram(now, from, &initial(cid, Some(cookie)));
    drain(server, now);
    server.connection_count() > before
}

#[test]
fn bad_cookies_are_rejected() {
    let t0 = start();
    let config = EndpointConfig::default()
        .cookie_lifetime(Duration::from_secs(10))
        .secret_rotation_period(Duration::from_secs(60));
    let mut server = Endpoint::new(config, secret(0), t0).unwrap();
    let a = SocketAddr::from(([192, 0, 2, 1], 1000));
    let b = SocketAddr::from(([192, 0, 2, 2], 1000));
    let a_other_port = SocketAddr::from(([192, 0, 2, 1], 1001));

    // Another address, another port, another connection id, a flipped bit.
    let cookie = get_cookie(&mut server, t0, a, 5);
    assert!(!present(&mut server, t0, b, 5, &cookie));
    assert!(!present(&mut server, t0, a_other_port, 5, &cookie));
    assert!(!present(&mut server, t0, a, 6, &cookie));
    let mut forged = cookie.clone();
    forged[8] ^= 0x10;
    assert!(!present(&mut server, t0, a, 5, &forged));
    assert!(!present(&mut server, t0, a, 5, &cookie[..12]));
    assert_eq!(server.stats().cookies_rejected, 5);

    // Expired: the lifetime is 10 s (whole seconds).
    assert!(!present(
        &mut server,
        t0 + Duration::from_secs(12),
        a,
        5,
        &cookie
    ));
    assert_eq!(server.stats().cookies_rejected, 6);

    // Rotation: a cookie made under the previous secret is still good, one made two secrets
    // ago is not.
    let t1 = t0 + Duration::from_secs(20);
    let old = get_cookie(&mut server, t1, a, 7);
    let older = get_cookie(&mut server, t1, a, 8);
    server.rotate_secret(t1, [0xee; 16]);
    assert!(present(&mut server, t1, a, 7, &old));
    server.rotate_secret(t1, [0xdd; 16]);
    assert!(!present(&mut server, t1, a, 8, &older));
    assert_eq!(server.stats().cookies_rejected, 7);

    // The original cookie still works for its owner while it is fresh.
    let fresh = get_cookie(&mut server, t1, a, 5);
    assert!(present(
        &mut server,
        t1 + Duration::from_secs(3),
        a,
        5,
        &fresh
    ));
    assert_eq!(server.connection_count(), 2);
    assert_eq!(server.stats().cookies_rejected, 7);
    assert!(server.stats().bytes_sent_unvalidated <= server.stats().bytes_received_unvalidated);
}

#[test]
fn a_lost_initial_retry_and_accept_are_recovered() {
    let mut w = server_and_clients(1, 2);
    w.link_all(LinkConfig::perfect(ms(20)));
    // Drop the first datagram of each handshake type.
    let mut seen = BTreeSet::new();
    w.drop = Some(Box::new(move |_, _, d: &[u8]| {
        d[1] != PacketType::Data as u8 && seen.insert(d[1])
    }));
    let (hc, _) = handshake(&mut w, 1);
    let client = w.ep(1);
    // INITIAL (lost), INITIAL, INITIAL+cookie (RETRY lost: sent again after a timeout),
    // INITIAL+cookie (ACCEPT lost), INITIAL+cookie.
    assert!(client.stats().datagrams_sent >= 5, "{:?}", client.stats());
    assert!(client.connection(hc).is_some());
    let server = w.ep(0);
    assert_eq!(server.connection_count(), 1);
    assert_eq!(server.stats().handshakes_completed, 1);
    w.check_amplification();
}

#[test]
fn random_handshake_loss_still_connects() {
    for_each_seed("SURELY_SEED", 0..30, |seed| {
        let mut w = World::new(seed, 2, |i| {
            let c = EndpointConfig::default().handshake_retries(8);
            if i == 0 {
                Some(c)
            } else {
                Some(c.accept_incoming(false))
            }
        });
        w.link_all(
            LinkConfig::perfect(ms(15))
                .jitter(ms(10))
                .loss(0.3)
                .duplicate(0.1),
        );
        handshake(&mut w, 1);
        assert_eq!(w.ep(0).connection_count(), 1, "seed {seed}");
        w.check_amplification();
    });
}

#[test]
fn a_client_without_an_answer_gives_up_in_bounded_time() {
    // Node 1 has no endpoint: nothing ever answers.
    let mut w = World::new(2, 2, |i| if i == 0 { client_config() } else { None });
    let t0 = w.now;
    let now = w.now;
    let h = w.ep(0).connect(now, addr_of(1)).unwrap();
    assert_eq!(w.ep(0).handshake_count(), 1);
    let mut failed_at = None;
    w.run_until(Duration::from_secs(60), |w| {
        for ev in w.take_events(0) {
            if let EndpointEvent::ConnectFailed { handle, reason } = ev {
                assert_eq!(handle, h);
                assert_eq!(reason, ConnectFailReason::TimedOut);
                failed_at = Some(w.now);
            }
        }
        failed_at.is_some()
    });
    // 250 ms, doubled 4 times: 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s, 5 INITIALs.
    assert_eq!(failed_at, Some(t0 + ms(7750)));
    let client = w.ep(0);
    assert_eq!(client.stats().datagrams_sent, 5);
    assert_eq!(client.handshake_count(), 0);
    assert_eq!(client.poll_timeout(), None);
    assert!(client.remote_address(h).is_none());
}

#[test]
fn a_closed_connection_frees_its_slot() {
    let mut w = World::new(4, 3, |i| {
        if i == 0 {
            Some(EndpointConfig::default().max_connections(1))
        } else {
            client_config()
        }
    });
    w.link_all(LinkConfig::perfect(ms(5)));
    let (hc, hs) = handshake(&mut w, 1);

    // The server is full: a second client is refused.
    let now = w.now;
    let h2 = w.ep(2).connect(now, addr_of(0)).unwrap();
    let refused = w.run_until(Duration::from_secs(5), |w| {
        w.events[2].iter().any(|e| {
            matches!(e, EndpointEvent::ConnectFailed { handle, reason: ConnectFailReason::Refused(RefuseReason::ServerFull) } if *handle == h2)
        })
    });
    assert!(refused);

    // Client 1 closes; both ends report it and free the slot.
    let now = w.now;
    w.ep(1).connection_mut(hc).unwrap().close(now);
    let closed = w.run_until(Duration::from_secs(30), |w| {
        let gone = |evs: &[EndpointEvent], h: ConnectionHandle| {
            evs.iter().any(
                |e| matches!(e, EndpointEvent::ConnectionClosed { handle, .. } if *handle == h),
            )
        };
        gone(&w.events[1], hc) && gone(&w.events[0], hs)
    });
    assert!(closed);
    let reasons: Vec<CloseReason> = w.events[0]
        .iter()
        .filter_map(|e| match e {
            EndpointEvent::ConnectionClosed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(reasons[..], [CloseReason::Peer { code: 0, .. }]),
        "{reasons:?}"
    );
    assert_eq!(w.ep(0).connection_count(), 0);
    assert_eq!(w.ep(1).connection_count(), 0);
    assert!(w.ep(0).connection(hs).is_none());
    assert!(w.ep(1).connection_mut(hc).is_none());
    assert_eq!(w.ep(0).stats().connections_closed, 1);

    // Now client 2 gets in, on the freed slot (with a new handle).
    let (_, hs2) = handshake(&mut w, 2);
    assert_ne!(hs2, hs);
    assert!(w.ep(0).connection(hs).is_none());
    assert_eq!(w.ep(0).connection_count(), 1);
}

#[test]
fn a_peer_that_vanishes_is_closed_by_idle_timeout_and_freed() {
    let mut w = server_and_clients(6, 2);
    w.link_all(LinkConfig::perfect(ms(5)));
    let (_, hs) = handshake(&mut w, 1);
    w.eps[1] = None; // the client disappears without a word
    let closed = w.run_until(Duration::from_secs(30), |w| {
        w.events[0].iter().any(|e| {
            matches!(e, EndpointEvent::ConnectionClosed { handle, reason: CloseReason::IdleTimeout } if *handle == hs)
        })
    });
    assert!(closed);
    assert_eq!(w.ep(0).connection_count(), 0);
    assert_eq!(w.ep(0).poll_timeout(), None);
}

#[test]
fn unknown_ids_wrong_addresses_and_garbage_are_counted_and_dropped() {
    let mut w = server_and_clients(7, 3);
    let (hc, _) = handshake(&mut w, 1);
    let server_cid = w.ep(1).connection(hc).unwrap().remote_cid();
    let now = w.now;

    // A valid DATA packet (a PING) for an id the server never gave out.
    let ping = |cid: u64| {
        let header = surely::wire::Header {
            packet_type: PacketType::Data,
            conn_id: cid,
            packet_number: 1000,
        };
        let mut buf = vec![0u8; 64];
        let n =
            surely::wire::encode_datagram(&mut buf, &header, &[surely::wire::Frame::Ping], &Crc32)
                .unwrap();
        buf.truncate(n);
        buf
    };
    let server = w.ep(0);
    let started = server.stats().handshakes_started;
    server.handle_datagram(now, addr_of(1), &ping(server_cid ^ 1));
    assert_eq!(server.stats().dropped_unknown_cid, 1);
    // The right id from another address.
    server.handle_datagram(now, addr_of(2), &ping(server_cid));
    assert_eq!(server.stats().dropped_wrong_address, 1);
    // Random bytes, truncated and corrupted packets, a short INITIAL.
    let mut rng = Rng::new(1);
    for len in 0..1300 {
        let d: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        server.handle_datagram(now, addr_of(2), &d);
    }
    let mut short = initial(9, None);
    short.truncate(600);
    let n = short.len() - 4;
    surely::wire::seal(&mut short, n, &Crc32).unwrap();
    server.handle_datagram(now, addr_of(2), &short);
    let s = server.stats();
    assert_eq!(s.dropped_malformed, 1301);
    assert_eq!(s.handshakes_started, started);
    assert!(drain(server, now).is_empty());
    assert_eq!(server.connection_count(), 1);
}

#[test]
fn an_endpoint_that_does_not_accept_refuses() {
    let mut w = World::new(8, 2, |_| client_config());
    let now = w.now;
    let h = w.ep(1).connect(now, addr_of(0)).unwrap();
    let failed = w.run_until(Duration::from_secs(5), |w| {
        w.events[1].iter().any(|e| {
            matches!(e, EndpointEvent::ConnectFailed { handle, reason: ConnectFailReason::Refused(RefuseReason::NotAccepting) } if *handle == h)
        })
    });
    assert!(failed);
    assert!(w.events[0].iter().any(|e| matches!(
        e,
        EndpointEvent::Refused {
            reason: RefuseReason::NotAccepting,
            ..
        }
    )));
    w.check_amplification();
}

#[test]
fn the_handshake_rate_is_limited() {
    let t0 = start();
    let config = EndpointConfig::default()
        .max_handshakes_per_sec(10)
        .handshake_burst(5);
    let mut server = Endpoint::new(config, secret(0), t0).unwrap();
    for i in 0..20u16 {
        let from = SocketAddr::from(([198, 51, 100, 1], 2000 + i));
        server.handle_datagram(t0, from, &initial(u64::from(i) + 1, None));
    }
    assert_eq!(drain(&mut server, t0).len(), 5);
    assert_eq!(server.stats().dropped_rate_limited, 15);
    // 100 ms later, one more.
    let t1 = t0 + ms(100);
    for i in 0..3u16 {
        let from = SocketAddr::from(([198, 51, 100, 2], 2000 + i));
        server.handle_datagram(t1, from, &initial(u64::from(i) + 1, None));
    }
    assert_eq!(drain(&mut server, t1).len(), 1);
}

#[test]
fn transport_settings_are_negotiated() {
    // The client uses larger datagrams than the server: both use the server's size.
    let mut w = World::new(9, 3, |i| match i {
        0 => Some(EndpointConfig::default().transport(Config::default().max_datagram_size(1200))),
        1 => Some(
            EndpointConfig::default()
                .accept_incoming(false)
                .transport(Config::default().max_datagram_size(1400)),
        ),
        _ => Some(
            EndpointConfig::default()
                .accept_incoming(false)
                .transport(Config::default().initial_message_id(5)),
        ),
    });
    let (hc, hs) = handshake(&mut w, 1);
    assert_eq!(
        w.ep(1).connection(hc).unwrap().config().max_datagram_size,
        1200
    );
    assert_eq!(
        w.ep(0).connection(hs).unwrap().config().max_datagram_size,
        1200
    );
    // A client with another initial message id is refused as incompatible.
    let now = w.now;
    let h = w.ep(2).connect(now, addr_of(0)).unwrap();
    let failed = w.run_until(Duration::from_secs(5), |w| {
        w.events[2].iter().any(|e| {
            matches!(e, EndpointEvent::ConnectFailed { handle, reason: ConnectFailReason::Refused(RefuseReason::Incompatible) } if *handle == h)
        })
    });
    assert!(failed);
}

/// An integrity check with CRC-32's tag whose verdict is fixed: `Verdict(false)` refuses
/// every datagram, `Verdict(true)` checks the CRC-32 as the default does.
#[derive(Debug)]
struct Verdict(bool);

impl surely::wire::Integrity for Verdict {
    fn tag_len(&self) -> usize {
        4
    }
    fn seal(&self, data: &[u8], tag: &mut [u8]) {
        Crc32.seal(data, tag)
    }
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        self.0 && Crc32.verify(data, tag)
    }
}

#[test]
fn a_connection_with_its_own_integrity_check_under_an_endpoint_still_makes_that_check() {
    // The endpoint checks every datagram's CRC-32 before routing it; a connection that uses
    // another check must still apply its own, not rely on the endpoint's. The control: the
    // same swap with a check that accepts delivers the message.
    for accept in [false, true] {
        let mut w = server_and_clients(1, 2);
        w.link_all(LinkConfig::perfect(ms(10)));
        let (hc, hs) = handshake(&mut w, 1);
        let now = w.now;
        {
            let s = w.ep(0).connection_mut(hs).unwrap();
            let swapped = surely::Connection::new(
                std::sync::Arc::new(Config::default()),
                s.local_cid(),
                s.remote_cid(),
                now,
            )
            .unwrap()
            .with_integrity(Box::new(Verdict(accept)));
            let _ = std::mem::replace(s, swapped);
        }
        w.ep(1)
            .connection_mut(hc)
            .unwrap()
            .send(now, b"hello", Guarantee::ExactlyOnce)
            .unwrap();
        w.run_until(ms(200), |_| false);
        let st = w.ep(0).connection(hs).unwrap().stats();
        if accept {
            assert_eq!(st.messages_received, 1, "{st:?}");
            assert_eq!(st.dropped_malformed, 0, "{st:?}");
        } else {
            assert_eq!(st.messages_received, 0, "{st:?}");
            assert!(st.dropped_malformed > 0, "{st:?}");
        }
    }
}

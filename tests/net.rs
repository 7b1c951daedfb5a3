//! Endpoints over real loopback sockets: through the fault-injecting relay under each
//! guarantee, many clients to one server, a full server refusing, a handshake flood that leaves
//! no state, and a peer that vanishes. Every loop is bounded in count and time.
#![allow(clippy::disallowed_methods)] // real sockets run on the real clock

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use surely::endpoint::{ConnectFailReason, EndpointConfig, EndpointEvent, RefuseReason};
use surely::net::relay::Relay;
use surely::net::{Driver, SocketOptions};
use surely::sim::LinkConfig;
use surely::{
    Config, ConnectionHandle, Event, Guarantee, SendError, SendOptions, UndeliverableReason,
};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn driver(config: EndpointConfig) -> Driver {
    Driver::bind(loopback(), config, &SocketOptions::default()).expect("bind loopback")
}

/// Message `i`: `i` little-endian, then bytes derived from `i`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.extend((0..len.saturating_sub(8)).map(|k| (i as usize * 7 + k) as u8));
    p
}

/// Processes every driver once; sleeps a little when none had anything to do.
fn pump(drivers: &mut [&mut Driver]) {
    for d in drivers.iter_mut() {
        d.process().expect("socket");
    }
    std::thread::sleep(Duration::from_micros(200));
}

/// Connects `client` to `server_addr`, pumping both; returns the handle once connected.
fn connect(client: &mut Driver, server: &mut Driver, to: SocketAddr) -> ConnectionHandle {
    let h = client.connect(to).expect("connect");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        pump(&mut [client, server]);
        while let Some(ev) = client.poll_event() {
            match ev {
                EndpointEvent::Connected { handle } if handle == h => return h,
                EndpointEvent::ConnectFailed { reason, .. } => panic!("connect failed: {reason}"),
                _ => {}
            }
        }
    }
    panic!("no connection within 10 s");
}

#[derive(Default, Debug)]
struct Tally {
    /// Hand-overs per message index at the receiver.
    received: HashMap<u64, u32>,
    corrupt: u64,
    gaps: u64,
    delivered: u64,
    undeliverable: u64,
}

/// Sends `count` messages of `size` bytes from client to server through `relay` (if any) and
/// checks the guarantee. Returns the tally.
fn transfer(g: Guarantee, count: u64, size: usize, link: Option<LinkConfig>) -> Tally {
    let mut server = driver(EndpointConfig::default());
    let mut client = driver(EndpointConfig::default().accept_incoming(false));
    let relay = link.map(|l| Relay::spawn(loopback(), server.local_addr(), l, 11).expect("relay"));
    let to = relay
        .as_ref()
        .map_or(server.local_addr(), |r| r.local_addr());
    let h = connect(&mut client, &mut server, to);
    let mut t = Tally::default();
    let mut next = 0u64;
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && t.delivered + t.undeliverable < count {
        let now = Instant::now();
        if let Some(conn) = client.endpoint().connection_mut(h) {
            while next < count {
                match conn.send(now, &payload(next, size), g) {
                    Ok(_) => next += 1,
                    Err(SendError::Backpressure) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
        client.flush().expect("flush");
        pump(&mut [&mut client, &mut server]);
        while let Some(ev) = server.poll_event() {
            if let EndpointEvent::Connection { event, .. } = ev {
                match event {
                    Event::Message(m) => {
                        let i = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                        if m.payload != payload(i, size) {
                            t.corrupt += 1;
                        }
                        *t.received.entry(i).or_insert(0) += 1;
                    }
                    Event::Lost { count } => t.gaps += count,
                    _ => {}
                }
            }
        }
        while let Some(ev) = client.poll_event() {
            if let EndpointEvent::Connection { event, .. } = ev {
                match event {
                    Event::Delivered { .. } => t.delivered += 1,
                    Event::Undeliverable { .. } => t.undeliverable += 1,
                    _ => {}
                }
            }
        }
    }
    // Let the last at-most-once floor reach the server.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        pump(&mut [&mut client, &mut server]);
        while let Some(ev) = server.poll_event() {
            if let EndpointEvent::Connection {
                event: Event::Lost { count },
                ..
            } = ev
            {
                t.gaps += count;
            }
        }
    }
    assert_eq!(t.corrupt, 0, "{g}: payloads byte-identical");
    assert_eq!(
        t.delivered + t.undeliverable,
        count,
        "{g}: one outcome per message"
    );
    assert!(
        t.received.keys().all(|&i| i < count),
        "nothing unsent arrives"
    );
    match g {
        Guarantee::ExactlyOnce => {
            assert!(t.received.values().all(|&n| n == 1), "{g}: never twice");
            assert_eq!(t.received.len() as u64, count, "{g}: all arrive");
            assert_eq!(t.delivered, count);
        }
        Guarantee::AtLeastOnce => {
            assert_eq!(t.received.len() as u64, count, "{g}: all arrive");
            assert_eq!(t.delivered, count);
        }
        Guarantee::AtMostOnce => {
            assert!(t.received.values().all(|&n| n == 1), "{g}: never twice");
            assert_eq!(
                t.received.len() as u64 + t.gaps,
                count,
                "{g}: reported gaps add up to what did not arrive"
            );
            assert!(t.delivered <= t.received.len() as u64);
        }
    }
    t
}

fn faulty_link() -> LinkConfig {
    LinkConfig::perfect(Duration::from_micros(300))
        .loss(0.02)
        .duplicate(0.02)
        .reorder(0.02, Duration::from_millis(1))
        .corrupt(0.01)
}

#[test]
fn hundred_thousand_small_messages_per_guarantee_through_a_faulty_relay() {
    for g in [
        Guarantee::ExactlyOnce,
        Guarantee::AtLeastOnce,
        Guarantee::AtMostOnce,
    ] {
        transfer(g, 100_000, 32, Some(faulty_link()));
    }
}

#[test]
fn thousand_fragmented_messages_per_guarantee_through_a_faulty_relay() {
    for g in [
        Guarantee::ExactlyOnce,
        Guarantee::AtLeastOnce,
        Guarantee::AtMostOnce,
    ] {
        transfer(g, 1_000, 5_000, Some(faulty_link()));
    }
}

#[test]
fn many_clients_to_one_server() {
    let mut server = driver(EndpointConfig::default());
    let to = server.local_addr();
    let mut clients: Vec<(Driver, ConnectionHandle)> = (0..16)
        .map(|_| {
            let mut c = driver(EndpointConfig::default().accept_incoming(false));
            let h = connect(&mut c, &mut server, to);
            (c, h)
        })
        .collect();
    let per_client = 200u64;
    for (i, (c, h)) in clients.iter_mut().enumerate() {
        let now = Instant::now();
        let conn = c.endpoint().connection_mut(*h).unwrap();
        for k in 0..per_client {
            let opts = SendOptions::new(Guarantee::ExactlyOnce)
                .channel(1)
                .ordered(true);
            conn.send(now, &payload(i as u64 * 1_000_000 + k, 40), opts)
                .unwrap();
        }
    }
    let mut got: HashMap<SocketAddr, Vec<u64>> = HashMap::new();
    let mut delivered = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end && delivered < 16 * per_client {
        server.process().unwrap();
        for (c, _) in clients.iter_mut() {
            c.process().unwrap();
            while let Some(ev) = c.poll_event() {
                if let EndpointEvent::Connection {
                    event: Event::Delivered { .. },
                    ..
                } = ev
                {
                    delivered += 1;
                }
            }
        }
        while let Some(ev) = server.poll_event() {
            if let EndpointEvent::Connection {
                handle,
                event: Event::Message(m),
            } = ev
            {
                let from = server.endpoint().remote_address(handle).unwrap();
                let i = u64::from_le_bytes(m.payload[..8].try_into().unwrap());
                got.entry(from).or_default().push(i);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(delivered, 16 * per_client);
    assert_eq!(got.len(), 16, "one connection per client");
    for seq in got.values() {
        assert_eq!(seq.len() as u64, per_client);
        assert!(
            seq.windows(2).all(|w| w[0] + 1 == w[1]),
            "each channel in order"
        );
    }
    assert_eq!(server.endpoint().connection_count(), 16);
}

#[test]
fn a_full_server_refuses_with_a_reason() {
    let mut server = driver(EndpointConfig::default().max_connections(2));
    let to = server.local_addr();
    let mut a = driver(EndpointConfig::default().accept_incoming(false));
    let mut b = driver(EndpointConfig::default().accept_incoming(false));
    connect(&mut a, &mut server, to);
    connect(&mut b, &mut server, to);
    let mut c = driver(EndpointConfig::default().accept_incoming(false));
    let h = c.connect(to).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut outcome = None;
    while Instant::now() < end && outcome.is_none() {
        pump(&mut [&mut a, &mut b, &mut c, &mut server]);
        while let Some(ev) = c.poll_event() {
            if let EndpointEvent::ConnectFailed { handle, reason } = ev {
                assert_eq!(handle, h);
                outcome = Some(reason);
            }
        }
    }
    assert_eq!(
        outcome,
        Some(ConnectFailReason::Refused(RefuseReason::ServerFull))
    );
    assert_eq!(server.endpoint().connection_count(), 2);
    assert!(server.endpoint().stats().handshakes_refused >= 1);
}

#[test]
fn a_handshake_flood_from_many_sources_leaves_no_state() {
    let mut server = driver(EndpointConfig::default());
    let to = server.local_addr();
    // 64 sources, each sending INITIALs and never answering the RETRY.
    let sources: Vec<std::net::UdpSocket> = (0..64)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut initial = vec![0u8; 1200];
    let header = surely::wire::Header {
        packet_type: surely::wire::PacketType::Initial,
        conn_id: 0,
        packet_number: 0,
    };
    let mut w = surely::wire::Writer::new(&mut initial);
    header.emit(&mut w).unwrap();
    for round in 0..20 {
        for (i, s) in sources.iter().enumerate() {
            let mut d = initial.clone();
            d[14..22].copy_from_slice(&((round * 64 + i) as u64 + 1).to_be_bytes());
            let n = d.len() - 4;
            let n = surely::wire::seal(&mut d, n, &surely::wire::Crc32).unwrap();
            let _ = s.send_to(&d[..n], to);
        }
        pump(&mut [&mut server]);
    }
    for _ in 0..50 {
        pump(&mut [&mut server]);
    }
    let ep = server.endpoint();
    assert_eq!(ep.connection_count(), 0, "no state before a cookie returns");
    let stats = ep.stats();
    assert!(stats.bytes_sent_unvalidated <= stats.bytes_received_unvalidated);
    assert!(stats.datagrams_received > 0);
}

#[test]
fn a_peer_that_vanishes_ends_in_undeliverable_not_a_hang() {
    let transport = Config::default()
        .idle_timeout(Duration::from_millis(800))
        .keepalive_interval(Some(Duration::from_millis(200)));
    let mut server = driver(EndpointConfig::default().transport(transport.clone()));
    let mut client = driver(
        EndpointConfig::default()
            .accept_incoming(false)
            .transport(transport),
    );
    let to = server.local_addr();
    let h = connect(&mut client, &mut server, to);
    drop(server); // the peer vanishes
    let now = Instant::now();
    let conn = client.endpoint().connection_mut(h).unwrap();
    for i in 0..10 {
        conn.send(now, &payload(i, 20), Guarantee::ExactlyOnce)
            .unwrap();
    }
    let mut reasons = Vec::new();
    let mut closed = false;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !closed {
        client.wait(Some(Duration::from_millis(20))).unwrap();
        while let Some(ev) = client.poll_event() {
            match ev {
                EndpointEvent::Connection {
                    event: Event::Undeliverable { reason, .. },
                    ..
                } => reasons.push(reason),
                EndpointEvent::ConnectionClosed { .. } => closed = true,
                _ => {}
            }
        }
    }
    assert!(closed, "the connection ends by idle timeout");
    assert_eq!(reasons.len(), 10);
    assert!(
        reasons
            .iter()
            .all(|r| *r == UndeliverableReason::ConnectionLost)
    );
}

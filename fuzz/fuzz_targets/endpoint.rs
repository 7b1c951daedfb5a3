//! A server `Endpoint` fed (byte-coded, see `read_op`) datagrams from arbitrary source addresses: raw bytes, INITIALs
//! (with no cookie, a forged one, or the cookie the server last gave that address), and DATA
//! for the connections it made. Checks: `connection_count() <= max_connections`, a server
//! never has handshakes of its own, and no amplification: per source address, the bytes of
//! RETRY/REFUSE sent to it never exceed the bytes received from it, ACCEPT and DATA go only to
//! addresses that echoed a cookie issued to them, and the endpoint's own
//! `bytes_sent_unvalidated <= bytes_received_unvalidated`.
#![no_main]
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use surely::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use surely::wire::{self, Crc32, HandshakePacket, Header, PacketType, TransportParams};
use surely::{Config, Guarantee};
use surely_fuzz::checks::Input;

/// Operation codes (first byte of each operation, modulo 6); see [`read_op`].
mod code {
    pub const RAW: u8 = 0;
    pub const INITIAL: u8 = 1;
    pub const DATA: u8 = 2;
    pub const ADVANCE: u8 = 3;
    pub const CLOSE: u8 = 4;
}

/// A source address: one byte; below 0x80 one of eight fixed addresses (IPv4 and IPv6, so that
/// cookies can be echoed), 0x80..0xc0 an IPv4 address and port from the next 6 bytes, above an
/// IPv6 address and port from the next 18.
fn read_addr(input: &mut Input<'_>) -> SocketAddr {
    let b = input.u8();
    if b < 0x80 {
        let i = b % 8;
        let port = 4000 + u16::from(i % 4);
        return if i & 4 == 0 {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), port)
        } else {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i))),
                port,
            )
        };
    }
    if b < 0xc0 {
        let mut ip = [0u8; 4];
        ip.iter_mut().for_each(|x| *x = input.u8());
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), input.u16())
    } else {
        let mut ip = [0u8; 16];
        ip.iter_mut().for_each(|x| *x = input.u8());
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), input.u16())
    }
}

#[derive(Debug)]
enum Cookie<'a> {
    None,
    /// The last cookie the server sent to this address and client id.
    Echo,
    Forged(&'a [u8]),
}

#[derive(Debug)]
enum Op<'a> {
    /// `addr, len u16, bytes`: any datagram.
    Raw(SocketAddr, &'a [u8]),
    /// `addr, cid u8, attempt u8, mds u16, flags u8 (bit 0 incompatible, bits 1-2 cookie:
    /// none, echo, forged with a length byte and bytes), extra padding u8`.
    Initial {
        from: SocketAddr,
        client_cid: u64,
        attempt: u32,
        mds: u16,
        compatible: bool,
        cookie: Cookie<'a>,
        extra_padding: usize,
    },
    /// `addr, conn u8, pn u16, ping u8, len u16, frame bytes`: DATA to the `conn`-th
    /// connection the server made (or to connection id `conn` before there is any).
    Data {
        from: SocketAddr,
        conn: u8,
        pn: u16,
        ping: bool,
        frames: &'a [u8],
    },
    /// `u16`: milliseconds to advance.
    Advance(u16),
    /// `u8`: the application closes that connection.
    CloseConn(u8),
    /// `u8, u16`: the application sends a message of that length on that connection.
    SendOnConn(u8, u16),
}

fn read_op<'a>(input: &mut Input<'a>) -> Op<'a> {
    match input.u8() % 6 {
        code::RAW => {
            let from = read_addr(input);
            let len = usize::from(input.u16()) % 2048;
            Op::Raw(from, input.bytes(len))
        }
        code::INITIAL => {
            let from = read_addr(input);
            let client_cid = u64::from(input.u8()) + 1;
            let attempt = u32::from(input.u8());
            let mds = input.u16();
            let flags = input.u8();
            let cookie = match (flags >> 1) & 3 {
                1 => Cookie::Echo,
                2 => {
                    let n = usize::from(input.u8());
                    Cookie::Forged(input.bytes(n))
                }
                _ => Cookie::None,
            };
            Op::Initial {
                from,
                client_cid,
                attempt,
                mds,
                compatible: flags & 1 == 0,
                cookie,
                extra_padding: usize::from(input.u8()),
            }
        }
        code::DATA => {
            let from = read_addr(input);
            let conn = input.u8();
            let pn = input.u16();
            let ping = input.u8() & 1 != 0;
            let len = usize::from(input.u16()) % 1500;
            Op::Data {
                from,
                conn,
                pn,
                ping,
                frames: input.bytes(len),
            }
        }
        code::ADVANCE => Op::Advance(input.u16()),
        code::CLOSE => Op::CloseConn(input.u8()),
        _ => Op::SendOnConn(input.u8(), input.u16()),
    }
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

struct Tracker {
    received: HashMap<SocketAddr, u64>,
    sent_unvalidated: HashMap<SocketAddr, u64>,
    /// (address, client cid) -> the last cookie sent there.
    cookies: HashMap<(SocketAddr, u64), Vec<u8>>,
    /// Every cookie issued: (address, client cid, cookie).
    issued: HashSet<(SocketAddr, u64, Vec<u8>)>,
    /// Addresses that echoed a cookie issued to them.
    echoed: HashSet<SocketAddr>,
    /// Server connection ids from ACCEPTs, with the address they went to.
    accepted: Vec<(u64, SocketAddr)>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let mut now = start();
    let config = EndpointConfig::default()
        .max_connections(4)
        .handshake_burst(16)
        .max_handshakes_per_sec(100)
        .cookie_lifetime(Duration::from_secs(2))
        .secret_rotation_period(Duration::from_secs(3))
        .transport(
            Config::default()
                .max_message_size(4096)
                .recv_buffer_bytes(16384)
                .send_buffer_bytes(16384),
        );
    let max = config.max_connections;
    let mut server = Endpoint::new(config, [7; 16], now).unwrap();
    let mut t = Tracker {
        received: HashMap::new(),
        sent_unvalidated: HashMap::new(),
        cookies: HashMap::new(),
        issued: HashSet::new(),
        echoed: HashSet::new(),
        accepted: Vec::new(),
    };
    let mut buf = vec![0u8; server.buffer_size().max(wire::MAX_DATAGRAM)];
    let mut handles = Vec::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        let op = read_op(&mut input);
        let mut dg: Option<(SocketAddr, Vec<u8>)> = None;
        match op {
            Op::Raw(from, bytes) => dg = Some((from, bytes.to_vec())),
            Op::Initial {
                from,
                client_cid,
                attempt,
                mds,
                compatible,
                cookie,
                extra_padding,
            } => {
                let cid = client_cid;
                let echo;
                let cookie = match cookie {
                    Cookie::None => None,
                    Cookie::Echo => {
                        echo = t.cookies.get(&(from, cid)).cloned();
                        echo.as_deref()
                    }
                    Cookie::Forged(c) => {
                        Some(&c[..c.len().min(wire::MAX_COOKIE_LEN)]).filter(|c| !c.is_empty())
                    }
                };
                let params = TransportParams {
                    max_datagram_size: u64::from(mds).max(256),
                    initial_packet_number: if compatible { 0 } else { 1 },
                    initial_message_id: 0,
                };
                let p = HandshakePacket::Initial {
                    attempt,
                    client_cid: cid,
                    params,
                    cookie,
                };
                if let Ok(n) = p.encode(&mut buf, &Crc32) {
                    let mut d = buf[..n].to_vec();
                    if extra_padding > 0 {
                        // More zero padding before the tag: still a valid INITIAL.
                        d.truncate(n - 4);
                        d.resize(n - 4 + extra_padding, 0);
                        let len = d.len();
                        d.resize(len + 4, 0);
                        wire::seal(&mut d, len, &Crc32).unwrap();
                    }
                    dg = Some((from, d));
                }
            }
            Op::Data {
                from,
                conn,
                pn,
                frames,
                ping,
            } => {
                let cid = if t.accepted.is_empty() {
                    u64::from(conn)
                } else {
                    t.accepted[usize::from(conn) % t.accepted.len()].0
                };
                let header = Header {
                    packet_type: PacketType::Data,
                    conn_id: cid,
                    packet_number: u32::from(pn),
                };
                let mut d = vec![0u8; 14];
                let mut w = wire::Writer::new(&mut d);
                header.emit(&mut w).unwrap();
                if ping {
                    d.push(1);
                }
                d.extend_from_slice(&frames[..frames.len().min(1400)]);
                let len = d.len();
                d.resize(len + 4, 0);
                if len > wire::HEADER_LEN {
                    wire::seal(&mut d, len, &Crc32).unwrap();
                }
                dg = Some((from, d));
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms) % 5000);
                server.handle_timeout(now);
            }
            Op::CloseConn(i) => {
                if !handles.is_empty() {
                    let h = handles[usize::from(i) % handles.len()];
                    if let Some(c) = server.connection_mut(h) {
                        c.close(now);
                    }
                }
            }
            Op::SendOnConn(i, len) => {
                if !handles.is_empty() {
                    let h = handles[usize::from(i) % handles.len()];
                    if let Some(c) = server.connection_mut(h) {
                        let _ = c.send(
                            now,
                            &vec![7u8; usize::from(len) % 5000],
                            Guarantee::ExactlyOnce,
                        );
                    }
                }
            }
        }
        if let Some((from, d)) = dg {
            // An INITIAL carrying a cookie issued to its address and client id (however the
            // input came by it) validates the address.
            if let Ok(HandshakePacket::Initial {
                client_cid,
                cookie: Some(c),
                ..
            }) = HandshakePacket::decode(&d, &Crc32)
                && t.issued.contains(&(from, client_cid, c.to_vec()))
            {
                t.echoed.insert(from);
            }
            *t.received.entry(from).or_default() += d.len() as u64;
            server.handle_datagram(now, from, &d);
        }
        let mut n_out = 0;
        while let Some((to, n)) = server.poll_transmit(now, &mut buf) {
            n_out += 1;
            assert!(n_out < 100_000, "endless poll_transmit");
            let d = &buf[..n];
            let (header, _) = wire::open(d, &Crc32).expect("the server sends valid datagrams");
            match header.packet_type {
                PacketType::Data => assert!(
                    t.echoed.contains(&to),
                    "DATA to {to}, which never echoed a cookie"
                ),
                PacketType::Accept => {
                    assert!(
                        t.echoed.contains(&to),
                        "ACCEPT to {to}, which never echoed a cookie"
                    );
                    if let Ok(HandshakePacket::Accept { server_cid, .. }) =
                        HandshakePacket::decode(d, &Crc32)
                        && !t.accepted.iter().any(|&(c, _)| c == server_cid)
                    {
                        t.accepted.push((server_cid, to));
                    }
                }
                PacketType::Retry | PacketType::Refuse => {
                    if let Ok(HandshakePacket::Retry {
                        client_cid, cookie, ..
                    }) = HandshakePacket::decode(d, &Crc32)
                    {
                        t.cookies.insert((to, client_cid), cookie.to_vec());
                        t.issued.insert((to, client_cid, cookie.to_vec()));
                    }
                    let sent = t.sent_unvalidated.entry(to).or_default();
                    *sent += n as u64;
                    let got = t.received.get(&to).copied().unwrap_or(0);
                    assert!(
                        *sent <= got,
                        "amplification: {sent} bytes sent to {to}, {got} received from it"
                    );
                }
                PacketType::Initial => panic!("a server sent an INITIAL"),
                _ => {}
            }
        }
        while let Some(ev) = server.poll_event() {
            if let EndpointEvent::NewConnection { handle, remote } = ev {
                assert!(
                    t.echoed.contains(&remote),
                    "connection made for {remote} without a cookie echo"
                );
                handles.push(handle);
            }
        }
        assert!(
            server.connection_count() <= max,
            "{} connections > {max}",
            server.connection_count()
        );
        assert_eq!(
            server.handshake_count(),
            0,
            "a server keeps no handshake state"
        );
        let s = server.stats();
        assert!(
            s.bytes_sent_unvalidated <= s.bytes_received_unvalidated,
            "stats: sent {} > received {} unvalidated",
            s.bytes_sent_unvalidated,
            s.bytes_received_unvalidated
        );
    }
});

//! Hostile and malformed input to one connection: every case must end in a counted drop (a
//! named error and a counter) or a clean close with a reason, never a panic, never a wrong or
//! second delivery. Datagrams are built by hand (the emitters refuse to write invalid frames),
//! or recorded from a simulated exchange and then cut or edited.
//!
//! The connection under test is `Connection::new(config, 2, 1, now)`: it receives datagrams
//! whose header connection id is 2.
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::sim::{LinkConfig, NODE_A, NODE_B, Pair};
use surely::wire::{
    self, Crc32, Fragment, Frame, HEADER_LEN, Header, MAX_DATAGRAM, MAX_VARINT, MIN_DATAGRAM,
    MessageFrame, PacketType, WireError, Writer,
};
use surely::{
    CloseReason, Config, Connection, DatagramError, Event, Guarantee, Rng, SendOptions, State,
    Stats,
};

fn t0() -> Instant {
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn conn_with(config: Config, now: Instant) -> Connection {
    Connection::new(Arc::new(config), 2, 1, now).unwrap()
}

fn conn(now: Instant) -> Connection {
    conn_with(Config::default(), now)
}

// ------------------------------------------------------------------ building datagrams

/// Appends `v` as a varint in its shortest form.
fn vi(out: &mut Vec<u8>, v: u64) {
    assert!(v <= MAX_VARINT);
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A DATA datagram to connection `cid` whose frame bytes are `payload`, with a valid tag.
fn raw_to(cid: u64, pn: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN + payload.len() + 4];
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: cid,
        packet_number: pn,
    };
    header.emit(&mut Writer::new(&mut d)).unwrap();
    d[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let n = HEADER_LEN + payload.len();
    wire::seal(&mut d, n, &Crc32).unwrap();
    d
}

/// A DATA datagram to the connection under test (cid 2) with raw frame bytes.
fn raw(pn: u32, payload: &[u8]) -> Vec<u8> {
    raw_to(2, pn, payload)
}

/// A DATA datagram to the connection under test, from well-formed frames.
fn dg(pn: u32, frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: 2,
        packet_number: pn,
    };
    let n = wire::encode_datagram(&mut buf, &header, frames, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// Re-seals `d` (whose last 4 bytes are the tag) after its body was edited.
fn reseal(d: &mut [u8]) {
    let n = d.len() - 4;
    wire::seal(d, n, &Crc32).unwrap();
}

fn whole(g: Guarantee, id: u64, payload: &[u8]) -> Frame<'_> {
    Frame::Message(MessageFrame {
        guarantee: g,
        channel: 0,
        id,
        chan_seq: None,
        fragment: None,
        payload,
    })
}

fn ordered(id: u64, chan_seq: u64, payload: &[u8]) -> Frame<'_> {
    Frame::Message(MessageFrame {
        guarantee: Guarantee::ExactlyOnce,
        channel: 3,
        id,
        chan_seq: Some(chan_seq),
        fragment: None,
        payload,
    })
}

/// Fragment `index` of `data` cut into `count` fragments, as a valid frame.
fn frag(g: Guarantee, id: u64, data: &[u8], count: u64, index: u64) -> Frame<'_> {
    let r = Fragment::byte_range(data.len() as u64, count, index).unwrap();
    Frame::Message(MessageFrame {
        guarantee: g,
        channel: 0,
        id,
        chan_seq: None,
        fragment: Some(Fragment {
            total_len: data.len() as u64,
            count,
            index,
        }),
        payload: &data[r.start as usize..r.end as usize],
    })
}

/// Raw MESSAGE frame bytes: flags, channel 0, id, fragment fields if `frag`, then `len` and
/// `body` (which need not be `len` bytes long).
fn raw_message(
    flags: u8,
    id: u64,
    frag: Option<(u64, u64, u64)>,
    len: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut b = vec![0x04, flags, 0];
    vi(&mut b, id);
    if let Some((total, count, index)) = frag {
        vi(&mut b, total);
        vi(&mut b, count);
        vi(&mut b, index);
    }
    vi(&mut b, len);
    b.extend_from_slice(body);
    b
}

/// Raw ACK frame bytes: largest, delay 0, the number of additional ranges, first range, then
/// (gap, len) pairs.
fn raw_ack(largest: u64, range_count: u64, first_range: u64, pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut b = vec![0x02];
    vi(&mut b, largest);
    vi(&mut b, 0);
    vi(&mut b, range_count);
    vi(&mut b, first_range);
    for &(gap, len) in pairs {
        vi(&mut b, gap);
        vi(&mut b, len);
    }
    b
}

/// An ACK frame for `ranges` (highest first), as the emitter writes it.
fn ack_frame_bytes(ranges: &[Range<u64>]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut w = Writer::new(&mut buf);
    wire::emit_ack(&mut w, 0, ranges.iter().cloned()).unwrap();
    let n = w.position();
    buf.truncate(n);
    buf
}

/// An ACK frame for one range.
fn ack_range(r: Range<u64>) -> Vec<u8> {
    ack_frame_bytes(std::slice::from_ref(&r))
}

// ------------------------------------------------------------------ observing

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn messages(evs: &[Event]) -> Vec<(u64, Vec<u8>)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some((m.id.get(), m.payload.clone())),
            _ => None,
        })
        .collect()
}

fn closed_reason(evs: &[Event]) -> Option<CloseReason> {
    evs.iter().find_map(|e| match e {
        Event::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
}

/// Every datagram `c` sends now.
fn drain(c: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::new();
    while let Some(n) = c.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
        assert!(out.len() < 10_000, "endless transmit");
    }
    out
}

/// Lets the ack delay pass and returns what `c` sends then.
fn settle(c: &mut Connection, now: &mut Instant) -> Vec<Vec<u8>> {
    let mut out = drain(c, *now);
    *now += ms(5);
    c.handle_timeout(*now);
    out.extend(drain(c, *now));
    out
}

/// Every packet number acknowledged by the ACK frames in `dgs`.
fn acked(dgs: &[Vec<u8>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for d in dgs {
        let (_, payload) = wire::open(d, &Crc32).unwrap();
        for f in wire::frames(payload) {
            if let Ok(Frame::Ack(a)) = f {
                out.extend(a.ranges());
            }
        }
    }
    out
}

fn is_acked(dgs: &[Vec<u8>], pn: u64) -> bool {
    acked(dgs).iter().any(|r| r.contains(&pn))
}

/// The counters that a dropped datagram must leave alone (all but the drop counters and
/// `bytes_received`).
fn untouched(s: &Stats) -> [u64; 14] {
    [
        s.packets_sent,
        s.bytes_sent,
        s.packets_received,
        s.messages_sent,
        s.messages_received,
        s.duplicates_suppressed,
        s.duplicates_delivered,
        s.retransmissions,
        s.packets_lost,
        s.probes,
        s.amo_gaps,
        s.delivered,
        s.undeliverable,
        s.rejected,
    ]
}

/// Feeds `d`, expects the malformed-drop `want`, and checks nothing else changed.
fn expect_malformed(c: &mut Connection, now: Instant, d: &[u8], want: WireError) {
    let before = c.stats();
    let state = c.state();
    let buffered = c.receive_buffered_bytes();
    assert_eq!(
        c.handle_datagram(now, d),
        Err(DatagramError::Malformed(want)),
        "datagram {:02x?}",
        &d[..d.len().min(64)]
    );
    let after = c.stats();
    assert_eq!(after.dropped_malformed, before.dropped_malformed + 1);
    assert_eq!(after.dropped_stale, before.dropped_stale);
    assert_eq!(after.dropped_no_room, before.dropped_no_room);
    assert_eq!(untouched(&after), untouched(&before));
    assert_eq!(c.state(), state);
    assert_eq!(c.receive_buffered_bytes(), buffered);
    assert!(c.poll_event().is_none(), "a dropped datagram made an event");
}

/// Feeds `d`, expects it accepted but dropped for lack of room: counted, nothing delivered,
/// the packet not acknowledged.
fn expect_no_room(c: &mut Connection, now: &mut Instant, pn: u32, d: &[u8]) -> Vec<Vec<u8>> {
    let before = c.stats();
    assert_eq!(c.handle_datagram(*now, d), Ok(()));
    let after = c.stats();
    assert_eq!(after.dropped_no_room, before.dropped_no_room + 1);
    assert_eq!(after.packets_received, before.packets_received);
    assert_eq!(after.messages_received, before.messages_received);
    assert!(messages(&events(c)).is_empty());
    let out = settle(c, now);
    assert!(
        !is_acked(&out, u64::from(pn)),
        "a packet whose message had no room was acknowledged"
    );
    out
}

// ------------------------------------------------------------------ truncation

/// Offsets (in the frame payload) at which a prefix is made of whole frames: frame ends, and
/// every offset inside a run of padding.
fn frame_boundaries(payload: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    for f in wire::frames(payload) {
        let f = f.unwrap();
        let len = f.encoded_len();
        if let Frame::Padding { .. } = f {
            out.extend(pos + 1..pos + len);
        }
        pos += len;
        out.push(pos);
    }
    assert_eq!(pos, payload.len(), "frame lengths do not add up");
    out
}

/// Feeds every cut of `d` (and every cut re-sealed with a valid tag that does not end on a
/// frame boundary) to `c`, which has not received `d` yet: each must be a counted drop that
/// changes nothing.
fn feed_truncations(c: &mut Connection, now: Instant, d: &[u8]) -> usize {
    let mut fed = 0;
    let (_, payload) = wire::open(d, &Crc32).unwrap();
    let boundaries = frame_boundaries(payload);
    for cut in 0..d.len() {
        let want = if cut < MIN_DATAGRAM {
            WireError::TooShort
        } else {
            WireError::BadChecksum
        };
        expect_malformed(c, now, &d[..cut], want);
        fed += 1;
        // The same cut with a valid tag: the frames themselves are cut.
        let body = cut.saturating_sub(4);
        if body <= HEADER_LEN || boundaries.contains(&(body - HEADER_LEN)) {
            continue;
        }
        let mut resealed = d[..body + 4].to_vec();
        reseal(&mut resealed);
        let before = c.stats();
        let got = c.handle_datagram(now, &resealed);
        assert!(
            matches!(
                got,
                Err(DatagramError::Malformed(
                    WireError::Truncated | WireError::CountTooLarge
                ))
            ),
            "cut at {body}: {got:?}"
        );
        assert_eq!(c.stats().dropped_malformed, before.dropped_malformed + 1);
        assert_eq!(untouched(&c.stats()), untouched(&before));
        assert!(c.poll_event().is_none());
        fed += 1;
    }
    fed
}

/// A real exchange on the simulator (both directions: messages of every kind, fragmented ones,
/// acknowledgements, MSG_ACK, AMO_FLOOR, FORWARD after a deadline, a graceful close). Before
/// each datagram is delivered, every truncation of it is fed to its receiver; the exchange must
/// then complete exactly as without them.
#[test]
fn truncation_at_every_offset_of_recorded_packets_is_a_counted_drop() {
    let start = t0();
    let config = Arc::new(Config::default());
    let mut pair = Pair::new(config.clone(), config, 5, start).unwrap();
    pair.net
        .set_links(NODE_A, NODE_B, LinkConfig::perfect(ms(5)).loss(0.05));
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut sent = BTreeMap::new();
    let sends: Vec<(Vec<u8>, SendOptions)> = vec![
        (b"exactly once".to_vec(), Guarantee::ExactlyOnce.into()),
        (b"at least once".to_vec(), Guarantee::AtLeastOnce.into()),
        (b"at most once".to_vec(), Guarantee::AtMostOnce.into()),
        (
            b"ordered".to_vec(),
            SendOptions::new(Guarantee::ExactlyOnce)
                .channel(4)
                .ordered(true),
        ),
        (big.clone(), Guarantee::ExactlyOnce.into()),
        (big[..2500].to_vec(), Guarantee::AtMostOnce.into()),
        (vec![], Guarantee::ExactlyOnce.into()),
    ];
    for (p, o) in &sends {
        let id = pair.a.send(pair.now, p, *o).unwrap();
        sent.insert((o.guarantee.is_reliable(), id.get()), p.clone());
    }
    pair.b
        .send(pair.now, b"reply", Guarantee::ExactlyOnce)
        .unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut got: Vec<(Guarantee, u64, Vec<u8>)> = Vec::new();
    let mut fed = 0;
    let mut datagrams = 0;
    let end = start + Duration::from_secs(30);
    let mut closed = false;
    // Takes the events of both ends, so that a dropped datagram can be seen to make none.
    let collect = |pair: &mut Pair, got: &mut Vec<(Guarantee, u64, Vec<u8>)>| {
        for ev in events(&mut pair.b) {
            if let Event::Message(m) = ev {
                got.push((m.guarantee, m.id.get(), m.payload));
            }
        }
        let a_events = events(&mut pair.a);
        assert!(
            a_events
                .iter()
                .all(|e| !matches!(e, Event::Undeliverable { .. })),
            "{a_events:?}"
        );
    };
    while pair.now < end {
        for (conn, from, to) in [(&mut pair.a, NODE_A, NODE_B), (&mut pair.b, NODE_B, NODE_A)] {
            while let Some(n) = conn.poll_transmit(pair.now, &mut buf) {
                pair.net.send(pair.now, from, to, &buf[..n]);
            }
        }
        let Some(next) = pair.next_deadline() else {
            break;
        };
        pair.now = pair.now.max(next);
        while let Some(d) = pair.net.poll_delivery(pair.now) {
            let conn = if d.to == NODE_A {
                &mut pair.a
            } else {
                &mut pair.b
            };
            if !conn.is_closed() {
                fed += feed_truncations(conn, pair.now, &d.data);
            }
            datagrams += 1;
            let _ = conn.handle_datagram(pair.now, &d.data);
            collect(&mut pair, &mut got);
        }
        pair.a.handle_timeout(pair.now);
        pair.b.handle_timeout(pair.now);
        collect(&mut pair, &mut got);
        if pair.a.pending_messages() == 0 && pair.b.pending_messages() == 0 && !closed {
            pair.a.close(pair.now);
            closed = true;
        }
        if pair.a.is_closed() && pair.b.is_closed() {
            break;
        }
    }
    assert!(datagrams >= 10, "only {datagrams} datagrams");
    assert!(fed > 10_000, "only {fed} truncations");
    // Everything arrived with its own bytes; exactly-once and at-most-once ones at most once
    // (an at-least-once copy may legitimately be handed over again); every reliable one.
    let mut seen = BTreeMap::new();
    for (g, id, p) in got {
        let key = (g.is_reliable(), id);
        assert_eq!(sent.get(&key), Some(&p), "wrong payload for {id}");
        let again = seen.insert(key, ()).is_some();
        assert!(
            !again || g == Guarantee::AtLeastOnce,
            "{id} delivered twice"
        );
    }
    for (key, _) in sent.iter().filter(|(k, _)| k.0) {
        assert!(seen.contains_key(key), "reliable {key:?} not delivered");
    }
    assert!(pair.a.is_closed() && pair.b.is_closed());
}

// ------------------------------------------------------------------ lengths

#[test]
fn a_length_field_larger_than_the_datagram_is_truncated() {
    let now = t0();
    let mut c = conn(now);
    // MESSAGE claiming 1000 bytes with 5 present.
    let m = raw_message(0x02, 0, None, 1000, b"hello");
    expect_malformed(&mut c, now, &raw(0, &m), WireError::Truncated);
    // The largest varint as a length (8-byte form).
    let mut m = vec![0x04, 0x02, 0, 0];
    m.extend_from_slice(&u64::MAX.to_be_bytes());
    m.extend_from_slice(b"x");
    expect_malformed(&mut c, now, &raw(0, &m), WireError::Truncated);
    // CLOSE whose reason length passes the end, and one above the 255-byte maximum.
    let mut close = vec![0x08, 0];
    vi(&mut close, 200);
    close.extend_from_slice(b"short");
    expect_malformed(&mut c, now, &raw(0, &close), WireError::Truncated);
    let mut close = vec![0x08, 0];
    vi(&mut close, 256);
    close.extend_from_slice(&[b'a'; 256]);
    expect_malformed(&mut c, now, &raw(0, &close), WireError::ReasonTooLong);
    // FORWARD and REJECT counts beyond what the rest could hold.
    let mut fwd = vec![0x05];
    vi(&mut fwd, 1000);
    fwd.extend_from_slice(&[0, 0]);
    expect_malformed(&mut c, now, &raw(0, &fwd), WireError::CountTooLarge);
    let mut rej = vec![0x06];
    vi(&mut rej, MAX_VARINT);
    rej.push(0);
    expect_malformed(&mut c, now, &raw(0, &rej), WireError::CountTooLarge);
    // A truncated varint as the last byte.
    expect_malformed(&mut c, now, &raw(0, &[0x07, 0xc0]), WireError::Truncated);
    // None of it was acknowledged or left a trace.
    let mut t = now;
    assert!(settle(&mut c, &mut t).is_empty());
    assert_eq!(c.stats().packets_received, 0);
    assert_eq!(c.state(), State::Established);
}

#[test]
fn zero_lengths_and_zero_counts() {
    let mut now = t0();
    let mut c = conn(now);
    // A fragment of zero bytes is never valid (no fragment may be empty).
    let m = raw_message(0x0a, 0, Some((10, 2, 0)), 0, b"");
    expect_malformed(&mut c, now, &raw(0, &m), WireError::BadFragment);
    // FORWARD and REJECT without entries.
    expect_malformed(&mut c, now, &raw(0, &[0x05, 0x00]), WireError::ZeroCount);
    expect_malformed(&mut c, now, &raw(0, &[0x06, 0x00]), WireError::ZeroCount);
    // A datagram with a header and a tag but no frame is too short to be a packet.
    let mut empty = vec![0u8; HEADER_LEN + 4];
    Header {
        packet_type: PacketType::Data,
        conn_id: 2,
        packet_number: 0,
    }
    .emit(&mut Writer::new(&mut empty))
    .unwrap();
    reseal(&mut empty);
    expect_malformed(&mut c, now, &empty, WireError::TooShort);
    // A whole message of zero bytes is a valid (empty) message: delivered once.
    let m = raw_message(0x02, 0, None, 0, b"");
    c.handle_datagram(now, &raw(0, &m)).unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(0, vec![])]);
    c.handle_datagram(now, &raw(1, &m)).unwrap();
    assert!(messages(&events(&mut c)).is_empty());
    assert_eq!(c.stats().duplicates_suppressed, 1);
    // A CLOSE with an empty reason is a clean close by the peer.
    c.handle_datagram(now, &raw(2, &[0x08, 0x00, 0x00]))
        .unwrap();
    assert_eq!(c.state(), State::Draining);
    assert_eq!(
        closed_reason(&events(&mut c)),
        Some(CloseReason::Peer {
            code: 0,
            reason: String::new()
        })
    );
    now += Duration::from_secs(5);
    c.handle_timeout(now);
    assert!(c.is_closed());
}

// ------------------------------------------------------------------ unknown codes

#[test]
fn unknown_version_is_dropped() {
    let now = t0();
    let mut c = conn(now);
    for v in [0u8, 2, 0x7f, 0xff] {
        let mut d = dg(0, &[whole(Guarantee::ExactlyOnce, 0, b"v")]);
        d[0] = v;
        reseal(&mut d);
        expect_malformed(&mut c, now, &d, WireError::BadVersion(v));
    }
    assert_eq!(c.stats().dropped_malformed, 4);
}

#[test]
fn unknown_packet_types_are_dropped_and_handshake_types_are_not_for_a_connection() {
    let now = t0();
    let mut c = conn(now);
    for t in [0u8, 6, 7, 0x0f, 0x10, 0x81, 0xff] {
        let mut d = dg(0, &[whole(Guarantee::ExactlyOnce, 0, b"t")]);
        d[1] = t;
        reseal(&mut d);
        expect_malformed(&mut c, now, &d, WireError::UnknownPacketType(t));
    }
    // INITIAL, RETRY, ACCEPT, REFUSE belong to the endpoint: counted stale, never parsed here.
    for t in 2u8..=5 {
        let mut d = dg(0, &[whole(Guarantee::ExactlyOnce, 0, b"t")]);
        d[1] = t;
        reseal(&mut d);
        assert_eq!(
            c.handle_datagram(now, &d),
            Err(DatagramError::UnknownConnection)
        );
    }
    assert_eq!(c.stats().dropped_stale, 4);
    assert!(c.poll_event().is_none());
    assert_eq!(c.stats().packets_received, 0);
}

#[test]
fn unknown_frame_types_drop_the_whole_datagram() {
    let now = t0();
    let mut c = conn(now);
    for t in (0x0au8..=0xff).step_by(7).chain([0x0a, 0x3f, 0x40, 0xff]) {
        // A valid message first: it must not take effect either.
        let mut p = raw_message(0x02, 0, None, 2, b"ok");
        p.push(t);
        expect_malformed(&mut c, now, &raw(0, &p), WireError::UnknownFrame(t));
    }
    // Reserved flag bits, guarantee code 3, and ordered at-most-once.
    expect_malformed(
        &mut c,
        now,
        &raw(0, &raw_message(0x12, 0, None, 1, b"x")),
        WireError::BadFlags(0x12),
    );
    expect_malformed(
        &mut c,
        now,
        &raw(0, &raw_message(0x03, 0, None, 1, b"x")),
        WireError::BadGuarantee,
    );
    expect_malformed(
        &mut c,
        now,
        &raw(0, &raw_message(0x04, 0, None, 1, b"x")),
        WireError::OrderedAtMostOnce,
    );
    let mut fwd = vec![0x05, 0x01, 0x00, 0x02];
    fwd.push(0);
    expect_malformed(&mut c, now, &raw(0, &fwd), WireError::BadFlags(0x02));
    // A CLOSE reason that is not UTF-8: the connection does not close.
    expect_malformed(
        &mut c,
        now,
        &raw(0, &[0x08, 0x00, 0x02, 0xc3, 0x28]),
        WireError::BadReason,
    );
    assert_eq!(c.state(), State::Established);
}

// ------------------------------------------------------------------ ACK

/// A connection that has sent `n` packets (one small at-most-once message each), none acked.
fn sender_with(n: usize, config: Config, now: Instant) -> (Connection, Vec<u64>) {
    let mut c = conn_with(config.congestion(surely::CongestionControl::None), now);
    let mut pns = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Expanded as the peer does: around the agreed initial packet number.
    let mut largest = c
        .config()
        .initial_packet_number
        .checked_sub(1)
        .map(surely::PacketNumber);
    while pns.len() < n {
        c.send(now, &[7u8; 900], Guarantee::AtMostOnce).unwrap();
        while let Some(len) = c.poll_transmit(now, &mut buf) {
            let (h, _) = wire::open(&buf[..len], &Crc32).unwrap();
            let pn = surely::PacketNumber::expand(h.packet_number, largest).0;
            largest = Some(surely::PacketNumber(pn));
            pns.push(pn);
        }
    }
    (c, pns)
}

#[test]
fn ack_ranges_that_would_overlap_or_run_out_of_order_are_malformed() {
    let now = t0();
    let (mut c, pns) = sender_with(10, Config::default(), now);
    let largest = *pns.last().unwrap();
    // The ACK encoding cannot express an overlap or an ascending range: a gap is unsigned and
    // always leaves one packet out. What an attacker can write is a gap or a length that
    // runs below zero (the only way to "wrap" a range above the previous one).
    for (first, pairs) in [
        (largest + 1, vec![]),
        (0, vec![(largest, 0)]),
        (0, vec![(largest - 1, 0)]),
        (2, vec![(0, largest)]),
        (0, vec![(MAX_VARINT, 0)]),
    ] {
        let f = raw_ack(largest, pairs.len() as u64, first, &pairs);
        expect_malformed(&mut c, now, &raw(0, &f), WireError::AckRangeUnderflow);
    }
    // A range count larger than the pairs present.
    let f = raw_ack(largest, 5, 0, &[(0, 0)]);
    expect_malformed(&mut c, now, &raw(0, &f), WireError::Truncated);
    // MSG_ACK: a zero gap (adjacent or overlapping ranges), a range past 2^62 - 1, a limit
    // below the cumulative point.
    let mut m = vec![0x03, 0, 10, 2, 1, 0];
    m.extend_from_slice(&[0, 0]);
    expect_malformed(&mut c, now, &raw(0, &m), WireError::BadMsgAckRange);
    let mut m = vec![0x03, 0];
    vi(&mut m, MAX_VARINT);
    m.push(1);
    vi(&mut m, MAX_VARINT);
    m.push(1);
    expect_malformed(&mut c, now, &raw(0, &m), WireError::BadMsgAckRange);
    expect_malformed(
        &mut c,
        now,
        &raw(0, &[0x03, 5, 4, 0]),
        WireError::LimitBelowCumulative,
    );
    assert_eq!(c.stats().delivered, 0);
    assert_eq!(c.state(), State::Established);
}

/// Two valid ACK frames in one datagram that overlap each other, the second below the first:
/// each packet counts as acknowledged once.
#[test]
fn overlapping_ack_frames_in_one_datagram_count_each_packet_once() {
    let now = t0();
    let (mut c, pns) = sender_with(10, Config::default(), now);
    assert_eq!(pns, (0..10).collect::<Vec<_>>());
    let mut p = ack_range(2..8);
    p.extend(ack_range(0..6));
    p.extend(ack_range(4..10));
    p.extend(ack_range(4..10));
    c.handle_datagram(now, &raw(0, &p)).unwrap();
    // The first frame's largest (7) declares packets 0 and 1 lost (packet threshold 3): their
    // at-most-once messages end Lost, and the later frames that cover them change nothing.
    let mut outcomes = BTreeMap::new();
    for e in events(&mut c) {
        let (id, ok) = match e {
            Event::Delivered { id, .. } => (id.get(), true),
            Event::Undeliverable { id, reason, .. } => {
                assert_eq!(reason, surely::UndeliverableReason::Lost);
                (id.get(), false)
            }
            _ => continue,
        };
        assert!(outcomes.insert(id, ok).is_none(), "two outcomes for {id}");
    }
    assert_eq!(outcomes.len(), 10);
    assert_eq!(outcomes.values().filter(|ok| **ok).count(), 8);
    assert_eq!(c.stats().delivered, 8);
    assert_eq!(c.pending_messages(), 0);
    assert_eq!(c.state(), State::Established);
}

#[test]
fn ack_spanning_2_pow_32_packet_numbers() {
    let now = t0();
    // Never sent: closes.
    let (mut c, pns) = sender_with(5, Config::default(), now);
    let span = 1u64 << 32;
    let f = raw_ack(span + 4, 0, span + 4, &[]);
    let got = c.handle_datagram(now, &raw(0, &f));
    assert_eq!(
        got,
        Err(DatagramError::ProtocolViolation(
            "ACK of a packet never sent"
        ))
    );
    assert_eq!(c.state(), State::Closing);
    assert_eq!(pns.len(), 5);
    // Sent, the numbers crossing 2^32 (start just below it): one range of 2^32 + 300 numbers
    // down to zero, of which only the last ~300 were ever sent, covers the skipped ones.
    let start = span - 100;
    let (mut c, pns) = sender_with(400, Config::default().initial_packet_number(start), now);
    let largest = *pns.last().unwrap();
    assert!(largest > span);
    let f = raw_ack(largest, 0, largest, &[]);
    // The peer's packet 0 is expanded around the agreed initial number: put it there.
    let d = raw(surely::PacketNumber(start).truncate(), &f);
    let got = c.handle_datagram(now, &d);
    assert!(
        matches!(got, Err(DatagramError::ProtocolViolation(_))),
        "{got:?}"
    );
    assert!(matches!(
        closed_reason(&events(&mut c)),
        Some(CloseReason::ProtocolViolation(_))
    ));
}

/// An ACK of packet numbers below the first one this connection ever used acknowledges packets
/// never sent, even when its largest was sent.
#[test]
fn ack_below_the_initial_packet_number_is_a_violation() {
    let now = t0();
    let start = 1u64 << 32;
    let (mut c, pns) = sender_with(20, Config::default().initial_packet_number(start), now);
    assert_eq!(pns.first(), Some(&start));
    let largest = *pns.last().unwrap();
    // Ranges: [start, largest] (all sent) and [0, 10] (never sent).
    let f = ack_frame_bytes(&[start..largest + 1, 0..11]);
    let d = raw(surely::PacketNumber(start).truncate(), &f);
    let got = c.handle_datagram(now, &d);
    assert!(
        matches!(got, Err(DatagramError::ProtocolViolation(_))),
        "an ACK of packets 0..=10, never sent, was accepted: {got:?}"
    );
}

#[test]
fn ack_with_10000_ranges_is_malformed_before_they_are_read() {
    let now = t0();
    let (mut c, _) = sender_with(3, Config::default(), now);
    let pairs = vec![(0u64, 0u64); 10_000];
    let f = raw_ack(100_000, 10_000, 0, &pairs);
    expect_malformed(&mut c, now, &raw(0, &f), WireError::TooManyRanges);
    // 64 ranges in all is the maximum, 65 too many.
    let pairs = vec![(0u64, 0u64); 64];
    let f = raw_ack(2, 64, 0, &pairs);
    expect_malformed(&mut c, now, &raw(0, &f), WireError::TooManyRanges);
    // MSG_ACK: 65 ranges, and 10,000.
    let mut m = vec![0x03, 0, 0];
    vi(&mut m, 10_000);
    for _ in 0..10_000 {
        m.extend_from_slice(&[1, 0]);
    }
    expect_malformed(&mut c, now, &raw(0, &m), WireError::TooManyRanges);
    let mut m = vec![0x03, 0, 0, 65];
    for _ in 0..65 {
        m.extend_from_slice(&[1, 0]);
    }
    expect_malformed(&mut c, now, &raw(0, &m), WireError::TooManyRanges);
}

#[test]
fn ack_of_a_packet_never_sent_closes_with_a_protocol_violation() {
    let mut now = t0();
    let mut c = conn(now);
    c.send(now, b"pending", Guarantee::ExactlyOnce).unwrap();
    // Nothing sent yet: packet 0 was never sent.
    let got = c.handle_datagram(now, &raw(0, &raw_ack(0, 0, 0, &[])));
    assert_eq!(
        got,
        Err(DatagramError::ProtocolViolation(
            "ACK of a packet never sent"
        ))
    );
    assert_eq!(c.state(), State::Closing);
    let evs = events(&mut c);
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::Undeliverable {
            reason: surely::UndeliverableReason::ConnectionClosed,
            ..
        }
    )));
    assert_eq!(
        closed_reason(&evs),
        Some(CloseReason::ProtocolViolation("ACK of a packet never sent"))
    );
    // The peer is told: CLOSE with code 1.
    let out = drain(&mut c, now);
    let close = out.iter().find_map(|d| {
        let (_, p) = wire::open(d, &Crc32).unwrap();
        wire::frames(p).find_map(|f| match f {
            Ok(Frame::Close(c)) => Some(c.code),
            _ => None,
        })
    });
    assert_eq!(close, Some(1));
    // Messages are no longer accepted, and it ends in bounded time with one Closed event.
    c.handle_datagram(now, &dg(1, &[whole(Guarantee::ExactlyOnce, 0, b"late")]))
        .unwrap();
    assert!(messages(&events(&mut c)).is_empty());
    for _ in 0..100 {
        let Some(t) = c.poll_timeout() else { break };
        now = now.max(t);
        c.handle_timeout(now);
        drain(&mut c, now);
    }
    assert!(c.is_closed());
    assert!(closed_reason(&events(&mut c)).is_none(), "a second Closed");
    // A bigger "largest" after sending a few: the same.
    let (mut c, pns) = sender_with(3, Config::default(), now);
    let f = raw_ack(pns[2] + 1, 0, 0, &[]);
    assert!(matches!(
        c.handle_datagram(now, &raw(0, &f)),
        Err(DatagramError::ProtocolViolation(_))
    ));
    // MSG_ACK of a message never sent is a violation too.
    let (mut c, _) = sender_with(3, Config::default(), now);
    let got = c.handle_datagram(now, &raw(0, &[0x03, 1, 1, 0]));
    assert_eq!(
        got,
        Err(DatagramError::ProtocolViolation(
            "MSG_ACK of a message never sent"
        ))
    );
}

// ------------------------------------------------------------------ fragments

#[test]
fn fragment_count_zero_one_or_index_beyond_count_is_malformed() {
    let now = t0();
    let mut c = conn(now);
    for (total, count, index, len) in [
        (10, 0, 0, 10),
        (10, 1, 0, 10),
        (10, 2, 2, 5),
        (10, 2, 3, 5),
        (10, 2, MAX_VARINT, 5),
        (10, 6, 0, 2), // the last fragment would be empty
        (10, 4, 0, 2), // not the fragment's size (3)
        (0, 2, 0, 0),
        (1, 2, 0, 1),
    ] {
        for g in [0x02u8, 0x00] {
            let m = raw_message(
                g | 0x08,
                0,
                Some((total, count, index)),
                len,
                &vec![1; len as usize],
            );
            expect_malformed(&mut c, now, &raw(0, &m), WireError::BadFragment);
        }
    }
}

#[test]
fn fragment_count_beyond_the_receivers_cap_is_dropped_without_ack() {
    let mut now = t0();
    let mut c = conn_with(
        Config::default().max_fragments(16).max_message_size(10_000),
        now,
    );
    let data = vec![9u8; 170];
    // 17 fragments: valid on the wire, above this receiver's cap.
    for (pn, g) in [(0u32, Guarantee::ExactlyOnce), (1, Guarantee::AtMostOnce)] {
        let d = dg(pn, &[frag(g, 0, &data, 17, 0)]);
        expect_no_room(&mut c, &mut now, pn, &d);
    }
    assert_eq!(c.receive_buffered_bytes(), 0);
    // The largest count the wire allows, one-byte fragments: no allocation of 2^62 slots.
    let m = raw_message(0x0a, 0, Some((MAX_VARINT, MAX_VARINT, 0)), 1, b"x");
    expect_no_room(&mut c, &mut now, 2, &raw(2, &m));
    // Exactly at the cap: accepted and reassembled.
    let data = vec![3u8; 160];
    let frames: Vec<_> = (0..16)
        .map(|i| frag(Guarantee::ExactlyOnce, 0, &data, 16, i))
        .collect();
    c.handle_datagram(now, &dg(3, &frames)).unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(0, data)]);
}

#[test]
fn total_length_beyond_max_message_size_or_near_the_varint_limit() {
    let mut now = t0();
    let mut c = conn_with(
        Config::default()
            .max_message_size(10_000)
            .recv_buffer_bytes(20_000),
        now,
    );
    // One byte over the maximum message size: dropped, nothing allocated.
    let data = vec![1u8; 10_001];
    let d = dg(0, &[frag(Guarantee::ExactlyOnce, 0, &data, 11, 0)]);
    expect_no_room(&mut c, &mut now, 0, &d);
    // total_len 2^62 - 1 in 2 fragments: the fragment would be 2^61 bytes long.
    let mut m = raw_message(0x0a, 1, Some((MAX_VARINT, 2, 0)), 1 << 61, b"");
    m.extend_from_slice(&[0; 100]);
    expect_malformed(&mut c, now, &raw(1, &m), WireError::Truncated);
    // ...and its length field disagreeing with that size.
    let m = raw_message(0x0a, 1, Some((MAX_VARINT, 2, 1)), 100, &[0; 100]);
    expect_malformed(&mut c, now, &raw(1, &m), WireError::BadFragment);
    // An 8-byte varint whose value would pass u64 limits is read as 2^62 - 1 at most.
    let mut m = vec![0x04, 0x0a, 0, 2];
    m.extend_from_slice(&u64::MAX.to_be_bytes());
    m.extend_from_slice(&[0x40, 0x03, 0x00, 0x01, b'x']);
    let got = c.handle_datagram(now, &raw(1, &m));
    assert!(
        matches!(got, Err(DatagramError::Malformed(WireError::BadFragment))),
        "{got:?}"
    );
    // Within the maximum size but above the receive buffer left: no room. Each partial
    // message counts 10,000 bytes, 10 for its fragment map and 64 for its future event.
    let partial = 10_000 + 10 + 64;
    let mut c = conn_with(
        Config::default()
            .max_message_size(10_000)
            .recv_buffer_bytes(2 * partial),
        now,
    );
    let data = vec![2u8; 10_000];
    for id in 0..2 {
        c.handle_datagram(
            now,
            &dg(id as u32, &[frag(Guarantee::ExactlyOnce, id, &data, 10, 0)]),
        )
        .unwrap();
    }
    assert_eq!(c.receive_buffered_bytes(), 2 * partial);
    let d = dg(2, &[frag(Guarantee::ExactlyOnce, 2, &data, 10, 0)]);
    expect_no_room(&mut c, &mut now, 2, &d);
    assert_eq!(c.receive_buffered_bytes(), 2 * partial);
}

#[test]
fn conflicting_fragments_never_mix_and_the_first_bytes_win() {
    let mut now = t0();
    let mut c = conn(now);
    let first = vec![0xaa; 3000];
    let other = vec![0x55; 3000];
    // Fragment 0 of 3.
    c.handle_datagram(
        now,
        &dg(0, &[frag(Guarantee::ExactlyOnce, 7, &first, 3, 0)]),
    )
    .unwrap();
    // The same fragment with other bytes: a copy, ignored (the first bytes stay).
    c.handle_datagram(
        now,
        &dg(1, &[frag(Guarantee::ExactlyOnce, 7, &other, 3, 0)]),
    )
    .unwrap();
    // Cut differently (4 fragments: byte ranges overlapping the first cut): a conflict,
    // dropped and counted, the packet not acknowledged.
    let before = c.stats().dropped_malformed;
    c.handle_datagram(
        now,
        &dg(2, &[frag(Guarantee::ExactlyOnce, 7, &other, 4, 1)]),
    )
    .unwrap();
    assert_eq!(c.stats().dropped_malformed, before + 1);
    // Another total length, another guarantee, another channel: conflicts too.
    let shorter = vec![0x55; 2999];
    c.handle_datagram(
        now,
        &dg(3, &[frag(Guarantee::ExactlyOnce, 7, &shorter, 3, 1)]),
    )
    .unwrap();
    c.handle_datagram(
        now,
        &dg(4, &[frag(Guarantee::AtLeastOnce, 7, &other, 3, 1)]),
    )
    .unwrap();
    assert_eq!(c.stats().dropped_malformed, before + 3);
    let out = settle(&mut c, &mut now);
    for pn in [2, 3, 4] {
        assert!(!is_acked(&out, pn), "conflicting packet {pn} acknowledged");
    }
    assert!(is_acked(&out, 0) && is_acked(&out, 1));
    assert!(messages(&events(&mut c)).is_empty());
    // The rest of the first cut completes the message with the first bytes everywhere.
    let mixed: Vec<u8> = first[..2000]
        .iter()
        .chain(&other[2000..])
        .copied()
        .collect();
    c.handle_datagram(
        now,
        &dg(
            5,
            &[
                frag(Guarantee::ExactlyOnce, 7, &first, 3, 1),
                frag(Guarantee::ExactlyOnce, 7, &mixed, 3, 2),
            ],
        ),
    )
    .unwrap();
    let got = messages(&events(&mut c));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 7);
    assert_eq!(&got[0].1[..2000], &first[..2000]);
    assert_eq!(&got[0].1[2000..], &other[2000..]);
    // Now complete: any fragment of it again is a copy.
    c.handle_datagram(
        now,
        &dg(6, &[frag(Guarantee::ExactlyOnce, 7, &other, 3, 0)]),
    )
    .unwrap();
    assert!(messages(&events(&mut c)).is_empty());
    assert_eq!(c.receive_buffered_bytes(), 0);
}

// ------------------------------------------------------------------ message ids

#[test]
fn message_ids_at_zero_and_at_the_window_edges() {
    let mut now = t0();
    let window = 256;
    let mut c = conn_with(Config::default().window(window), now);
    // The last id inside the window, first: accepted, delivered, acknowledged.
    c.handle_datagram(
        now,
        &dg(0, &[whole(Guarantee::ExactlyOnce, window - 1, b"edge")]),
    )
    .unwrap();
    assert_eq!(
        messages(&events(&mut c)),
        vec![(window - 1, b"edge".to_vec())]
    );
    // The first id beyond it: dropped for lack of room, not acknowledged.
    expect_no_room(
        &mut c,
        &mut now,
        1,
        &dg(1, &[whole(Guarantee::ExactlyOnce, window, b"beyond")]),
    );
    // Id 0: accepted; the cumulative point moves to 1, so the window now ends at 257.
    c.handle_datagram(now, &dg(2, &[whole(Guarantee::ExactlyOnce, 0, b"zero")]))
        .unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(0, b"zero".to_vec())]);
    c.handle_datagram(
        now,
        &dg(3, &[whole(Guarantee::ExactlyOnce, window, b"beyond")]),
    )
    .unwrap();
    assert_eq!(
        messages(&events(&mut c)),
        vec![(window, b"beyond".to_vec())]
    );
    let out = expect_no_room(
        &mut c,
        &mut now,
        4,
        &dg(4, &[whole(Guarantee::ExactlyOnce, window + 1, b"x")]),
    );
    assert!(is_acked(&out, 0) && is_acked(&out, 2) && is_acked(&out, 3));
    assert!(!is_acked(&out, 1) && !is_acked(&out, 4));
}

#[test]
fn message_ids_far_beyond_the_window() {
    let mut now = t0();
    let mut c = conn(now);
    for (pn, id) in [(0u32, 1u64 << 40), (1, MAX_VARINT - 1), (2, MAX_VARINT)] {
        for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
            expect_no_room(&mut c, &mut now, pn, &dg(pn, &[whole(g, id, b"far")]));
        }
        let m = Frame::Message(MessageFrame {
            guarantee: Guarantee::ExactlyOnce,
            channel: 1,
            id: 0,
            chan_seq: Some(id),
            fragment: None,
            payload: b"far seq",
        });
        // A channel position far beyond the window is a protocol violation (one connection
        // each, since it closes).
        let mut v = conn(now);
        let got = v.handle_datagram(now, &dg(pn, &[m]));
        assert!(
            matches!(got, Err(DatagramError::ProtocolViolation(_))),
            "{got:?}"
        );
        assert!(messages(&events(&mut v)).is_empty());
    }
    // At-most-once ids far ahead move that window (a peer may skip its own ids): the ids
    // passed over are reported lost, the message is delivered once, and nothing hangs.
    let far = MAX_VARINT - 1;
    c.handle_datagram(now, &dg(9, &[whole(Guarantee::AtMostOnce, far, b"amo")]))
        .unwrap();
    let evs = events(&mut c);
    assert_eq!(messages(&evs), vec![(far, b"amo".to_vec())]);
    let lost: u64 = evs
        .iter()
        .map(|e| match e {
            Event::Lost { count } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(lost, far + 1 - 4096);
    // The id itself and everything below the window are now refused (not acknowledged).
    for (pn, id) in [(10u32, far), (11, 0), (12, far - 5000)] {
        let before = c.stats().duplicates_suppressed;
        c.handle_datagram(now, &dg(pn, &[whole(Guarantee::AtMostOnce, id, b"again")]))
            .unwrap();
        assert_eq!(c.stats().duplicates_suppressed, before + 1);
        assert!(messages(&events(&mut c)).is_empty());
    }
    // The last id, 2^62 - 1: delivered (the window moves to its end without overflow).
    c.handle_datagram(
        now,
        &dg(13, &[whole(Guarantee::AtMostOnce, MAX_VARINT, b"last")]),
    )
    .unwrap();
    assert_eq!(
        messages(&events(&mut c)),
        vec![(MAX_VARINT, b"last".to_vec())]
    );
    // AMO_FLOOR at the largest value.
    let mut f = vec![0x07];
    vi(&mut f, MAX_VARINT);
    c.handle_datagram(now, &raw(14, &f)).unwrap();
    assert_eq!(c.state(), State::Established);
}

// ------------------------------------------------------------------ sizes

#[test]
fn one_byte_and_65507_byte_datagrams() {
    let now = t0();
    let mut c = conn(now);
    for b in [0x00u8, 0x01, 0xff] {
        expect_malformed(&mut c, now, &[b], WireError::TooShort);
    }
    expect_malformed(&mut c, now, &[], WireError::TooShort);
    expect_malformed(&mut c, now, &[1; MIN_DATAGRAM - 1], WireError::TooShort);
    // Largest size, random bytes: bad tag.
    let mut rng = Rng::new(3);
    let junk: Vec<u8> = (0..MAX_DATAGRAM).map(|_| rng.next_u64() as u8).collect();
    expect_malformed(&mut c, now, &junk, WireError::BadChecksum);
    // One byte more than the largest: refused before the tag is computed.
    expect_malformed(&mut c, now, &vec![0; MAX_DATAGRAM + 1], WireError::TooLong);
    expect_malformed(&mut c, now, &vec![0; 1 << 20], WireError::TooLong);
    // The largest size, valid: padding and a ping.
    let d = dg(
        0,
        &[
            Frame::Ping,
            Frame::Padding {
                len: MAX_DATAGRAM - HEADER_LEN - 5,
            },
        ],
    );
    assert_eq!(d.len(), MAX_DATAGRAM);
    c.handle_datagram(now, &d).unwrap();
    // The largest size with one message filling it (larger than this receiver's own 1200-byte
    // datagrams): a valid message, delivered once.
    let payload = vec![0x42u8; MAX_DATAGRAM - HEADER_LEN - 4 - 8];
    let d = dg(1, &[whole(Guarantee::ExactlyOnce, 0, &payload)]);
    assert_eq!(d.len(), MAX_DATAGRAM);
    c.handle_datagram(now, &d).unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(0, payload)]);
    assert_eq!(c.stats().packets_received, 2);
}

#[test]
fn a_valid_tag_on_nonsense_bytes_is_dropped_whole() {
    let mut now = t0();
    let mut c = conn(now);
    let mut rng = Rng::new(11);
    // The first frame byte is an unknown type: precisely UnknownFrame.
    for i in 0..2000u32 {
        let len = 1 + rng.below(1500) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        p[0] = 0x0a + (rng.below(0xf6) as u8);
        expect_malformed(&mut c, now, &raw(i, &p), WireError::UnknownFrame(p[0]));
    }
    // Whole random headers and bodies with a valid tag: never a panic, never a delivery that
    // the bytes did not spell out, the receive buffer within bounds.
    let mut delivered = 0;
    for i in 0..20_000u32 {
        let len = MIN_DATAGRAM + rng.below(300) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Mostly a plausible header, so the frames are reached.
        if i % 4 != 0 {
            d[0] = 1;
            d[1] = 1;
            d[2..10].copy_from_slice(&2u64.to_be_bytes());
            d[10..14].copy_from_slice(&i.to_be_bytes());
        }
        reseal(&mut d);
        match c.handle_datagram(now, &d) {
            Ok(()) | Err(DatagramError::Malformed(_)) => {}
            Err(DatagramError::UnknownConnection | DatagramError::Stale) => {}
            Err(DatagramError::ProtocolViolation(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        delivered += messages(&events(&mut c)).len();
        assert!(c.receive_buffered_bytes() <= c.config().recv_buffer_bytes);
        if c.state() != State::Established {
            // Closed by a random CLOSE frame or a violation: carry on with a fresh one.
            c = conn(now);
        }
        if i % 1000 == 0 {
            now += ms(10);
            c.handle_timeout(now);
            drain(&mut c, now);
        }
    }
    // Random bytes rarely form a valid message; it is enough that some datagrams got through
    // the parser and none broke anything.
    assert!(delivered < 20_000);
}

// ------------------------------------------------------------------ copies

#[test]
fn the_same_message_id_with_another_payload_is_dropped_and_the_first_wins() {
    let mut now = t0();
    let mut c = conn(now);
    // Exactly-once, unordered.
    c.handle_datagram(now, &dg(0, &[whole(Guarantee::ExactlyOnce, 5, b"first")]))
        .unwrap();
    c.handle_datagram(now, &dg(1, &[whole(Guarantee::ExactlyOnce, 5, b"second")]))
        .unwrap();
    // In the same datagram as well.
    c.handle_datagram(
        now,
        &dg(
            2,
            &[
                whole(Guarantee::ExactlyOnce, 5, b"third"),
                whole(Guarantee::ExactlyOnce, 5, b"fourth"),
            ],
        ),
    )
    .unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(5, b"first".to_vec())]);
    assert_eq!(c.stats().duplicates_suppressed, 3);
    // Ordered, held back behind a gap: the copy does not replace what is held.
    c.handle_datagram(now, &dg(4, &[ordered(11, 1, b"held")]))
        .unwrap();
    c.handle_datagram(now, &dg(5, &[ordered(11, 1, b"replacement")]))
        .unwrap();
    assert!(messages(&events(&mut c)).is_empty());
    c.handle_datagram(now, &dg(6, &[ordered(10, 0, b"zero")]))
        .unwrap();
    assert_eq!(
        messages(&events(&mut c)),
        vec![(10, b"zero".to_vec()), (11, b"held".to_vec())]
    );
    // At-most-once: the copy is refused and not acknowledged.
    c.handle_datagram(now, &dg(7, &[whole(Guarantee::AtMostOnce, 3, b"amo")]))
        .unwrap();
    c.handle_datagram(now, &dg(8, &[whole(Guarantee::AtMostOnce, 3, b"AMO")]))
        .unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(3, b"amo".to_vec())]);
    let out = settle(&mut c, &mut now);
    assert!(is_acked(&out, 7) && !is_acked(&out, 8));
    // Once the id is below the cumulative point: still a copy.
    let frames: Vec<_> = (0..5)
        .map(|i| whole(Guarantee::ExactlyOnce, i, b"fill"))
        .collect();
    c.handle_datagram(now, &dg(9, &frames)).unwrap();
    events(&mut c);
    c.handle_datagram(now, &dg(10, &[whole(Guarantee::ExactlyOnce, 5, b"late")]))
        .unwrap();
    assert!(messages(&events(&mut c)).is_empty());
}

/// A whole message arriving while fragments of the same id are under reassembly wins (it is
/// complete first); the partial must not linger, hold buffer space, or deliver a second copy.
#[test]
fn a_whole_message_over_a_partial_one_with_the_same_id() {
    let mut now = t0();
    let mut c = conn_with(
        Config::default().reassembly_timeout(Duration::from_secs(2)),
        now,
    );
    let big = vec![0x77u8; 3000];
    c.handle_datagram(now, &dg(0, &[frag(Guarantee::ExactlyOnce, 4, &big, 3, 0)]))
        .unwrap();
    // A partial message counts its bytes, one byte per fragment and its future event (64).
    assert_eq!(c.receive_buffered_bytes(), 3000 + 3 + 64);
    c.handle_datagram(now, &dg(1, &[whole(Guarantee::ExactlyOnce, 4, b"whole")]))
        .unwrap();
    assert_eq!(messages(&events(&mut c)), vec![(4, b"whole".to_vec())]);
    c.handle_datagram(
        now,
        &dg(
            2,
            &[
                frag(Guarantee::ExactlyOnce, 4, &big, 3, 1),
                frag(Guarantee::ExactlyOnce, 4, &big, 3, 2),
            ],
        ),
    )
    .unwrap();
    assert!(messages(&events(&mut c)).is_empty(), "delivered twice");
    // Whatever the partial held is released by the reassembly timeout at the latest.
    now += c.config().reassembly_timeout + ms(1);
    c.handle_timeout(now);
    assert_eq!(c.receive_buffered_bytes(), 0);
    // And no REJECT is sent for a message that was delivered.
    let out = drain(&mut c, now);
    for d in &out {
        let (_, p) = wire::open(d, &Crc32).unwrap();
        assert!(!wire::frames(p).any(|f| matches!(f, Ok(Frame::Reject(_)))));
    }
}

#[test]
fn empty_messages_cannot_queue_unbounded_events_while_the_application_does_not_poll() {
    // Every unpolled Message event counts against the receive buffer, even with no payload;
    // consecutive at-most-once gaps merge into one Lost event.
    let now = t0();
    let limit = 16 * 1024;
    let mut c = conn_with(
        Config::default()
            .max_message_size(1024)
            .recv_buffer_bytes(limit),
        now,
    );
    let mut pn = 0u32;
    for id in 0..2_000u64 {
        for g in [Guarantee::AtMostOnce, Guarantee::AtLeastOnce] {
            // At-most-once ids advance by two: every message leaves a one-id gap behind it.
            let id = if g == Guarantee::AtMostOnce {
                2 * id + 1
            } else {
                id
            };
            let _ = c.handle_datagram(now, &dg(pn, &[whole(g, id, b"")]));
            pn += 1;
        }
        assert!(c.receive_buffered_bytes() <= limit);
    }
    let evs = events(&mut c);
    let queued = evs
        .iter()
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert!(queued > 0);
    assert!(queued <= limit / 64, "{queued} events queued past the cap");
    let lost = evs
        .iter()
        .filter(|e| matches!(e, Event::Lost { .. }))
        .count();
    assert!(
        lost <= queued + 1,
        "{lost} Lost events for {queued} messages"
    );
    assert_eq!(c.receive_buffered_bytes(), 0);
}

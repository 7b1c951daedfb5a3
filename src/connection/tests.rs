//! Connection unit tests that need hand-made datagrams or internal state. Scenario tests over
//! the simulator live in tests/.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::{Frame, Header, MessageFrame, PacketType};

#[allow(clippy::disallowed_methods)] // origin of virtual time; only offsets matter
fn t0() -> Instant {
    Instant::now()
}

fn conn(config: Config, now: Instant) -> Connection {
    Connection::new(Arc::new(config), 2, 1, now).unwrap()
}

/// Two ends of one connection with the same configuration: (cid 1, cid 2).
fn connection_pair(config: Config, now: Instant) -> (Connection, Connection) {
    let config = Arc::new(config);
    (
        Connection::new(config.clone(), 1, 2, now).unwrap(),
        Connection::new(config, 2, 1, now).unwrap(),
    )
}

/// A datagram from the peer (cid 1) to us (cid 2).
fn datagram(pn: u32, frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: 2,
        packet_number: pn,
    };
    let n = wire::encode_datagram(&mut buf, &header, frames, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// The bytes of an ACK frame (no ack delay) for `ranges`, highest first.
fn ack_frame(ranges: impl IntoIterator<Item = std::ops::Range<u64>>) -> Vec<u8> {
    let ranges: Vec<_> = ranges.into_iter().collect();
    let mut fb = vec![0u8; 1024];
    let mut w = wire::Writer::new(&mut fb);
    wire::emit_ack(&mut w, 0, ranges.into_iter()).unwrap();
    let n = w.position();
    fb.truncate(n);
    fb
}

/// The one frame in `bytes`.
fn one_frame(bytes: &[u8]) -> Frame<'_> {
    wire::frames(bytes).next().unwrap().unwrap()
}

/// A datagram from the peer (packet number `pn`) whose only frame acknowledges `ranges`,
/// highest first.
fn ack_datagram(pn: u32, ranges: impl IntoIterator<Item = std::ops::Range<u64>>) -> Vec<u8> {
    datagram(pn, &[one_frame(&ack_frame(ranges))])
}

fn message(g: Guarantee, id: u64, payload: &[u8]) -> Frame<'_> {
    Frame::Message(MessageFrame {
        guarantee: g,
        channel: 0,
        id,
        chan_seq: None,
        fragment: None,
        payload,
    })
}

use crate::message::Guarantee;

/// Runs `f` with every message on the general receive path (the fast paths off), and turns
/// them on again afterwards, also if `f` panics.
fn general_only<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            super::recv::GENERAL_PATH_ONLY.with(|g| g.set(false));
        }
    }
    super::recv::GENERAL_PATH_ONLY.with(|g| g.set(true));
    let _reset = Reset;
    f()
}

/// With probability `p` one of the two 10-byte halves of a 20-byte message, else a whole
/// message of below `whole_below` bytes: the fragment, if any, and the payload length.
fn random_fragment(
    rng: &mut crate::rng::Rng,
    p: f64,
    whole_below: u64,
) -> (Option<wire::Fragment>, usize) {
    if rng.chance(p) {
        let index = rng.below(2);
        let fragment = wire::Fragment {
            total_len: 20,
            count: 2,
            index,
        };
        (Some(fragment), 10)
    } else {
        (None, rng.below(whole_below) as usize)
    }
}

fn messages(c: &mut Connection) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(ev) = c.poll_event() {
        if let Event::Message(m) = ev {
            out.push((m.id.get(), m.payload));
        }
    }
    out
}

#[test]
fn delivers_and_acknowledges_a_message() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    c.handle_datagram(
        now,
        &datagram(0, &[message(Guarantee::ExactlyOnce, 0, b"hi")]),
    )
    .unwrap();
    assert_eq!(messages(&mut c), vec![(0, b"hi".to_vec())]);
    // One ack-eliciting packet: the acknowledgement waits for max_ack_delay...
    let mut buf = [0u8; 1500];
    assert!(c.poll_transmit(now, &mut buf).is_none());
    let due = c.poll_timeout().unwrap();
    assert!(due <= now + Duration::from_millis(1));
    c.handle_timeout(due);
    let n = c.poll_transmit(due, &mut buf).unwrap();
    // ...and then carries ACK and MSG_ACK.
    let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
    let frames: Vec<_> = wire::frames(payload).map(|f| f.unwrap()).collect();
    assert!(matches!(frames[0], Frame::Ack(a) if a.largest == 0));
    assert!(matches!(frames[1], Frame::MsgAck(m) if m.cumulative == 1));
}

#[test]
fn a_repair_is_acknowledged_without_the_ack_delay() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let mut buf = [0u8; 1500];
    // Message 0 was lost; message 1 arrives alone and is acknowledged after the ack delay.
    c.handle_datagram(
        now,
        &datagram(0, &[message(Guarantee::ExactlyOnce, 1, b"b")]),
    )
    .unwrap();
    assert!(c.poll_transmit(now, &mut buf).is_none());
    let due = c.poll_timeout().unwrap();
    c.handle_timeout(due);
    assert!(c.poll_transmit(due, &mut buf).is_some());
    // The retransmission of message 0, alone in an in-order packet: the sender is waiting
    // for it, so it is acknowledged at once.
    c.handle_datagram(
        due,
        &datagram(1, &[message(Guarantee::ExactlyOnce, 0, b"a")]),
    )
    .unwrap();
    let n = c
        .poll_transmit(due, &mut buf)
        .expect("an immediate acknowledgement");
    let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
    let frames: Vec<_> = wire::frames(payload).map(|f| f.unwrap()).collect();
    assert!(matches!(frames[0], Frame::Ack(a) if a.largest == 1));
    assert!(matches!(frames[1], Frame::MsgAck(m) if m.cumulative == 2));
}

#[test]
fn copies_of_a_packet_and_of_a_message_are_suppressed() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let d = datagram(0, &[message(Guarantee::ExactlyOnce, 0, b"x")]);
    c.handle_datagram(now, &d).unwrap();
    assert_eq!(c.handle_datagram(now, &d), Err(DatagramError::Stale));
    // The same message in another packet: recognised by id.
    c.handle_datagram(
        now,
        &datagram(1, &[message(Guarantee::ExactlyOnce, 0, b"x")]),
    )
    .unwrap();
    assert_eq!(messages(&mut c).len(), 1);
    assert_eq!(c.stats().duplicates_suppressed, 1);
    // At-least-once copies may be handed over again; exactly-once never.
    c.handle_datagram(
        now,
        &datagram(2, &[message(Guarantee::AtLeastOnce, 1, b"y")]),
    )
    .unwrap();
    c.handle_datagram(
        now,
        &datagram(3, &[message(Guarantee::AtLeastOnce, 1, b"y")]),
    )
    .unwrap();
    assert_eq!(
        messages(&mut c).len(),
        1,
        "below the cumulative point: a copy"
    );
}

#[test]
fn message_beyond_the_window_is_not_acknowledged() {
    let now = t0();
    let mut c = conn(Config::default().window(256), now);
    let far = datagram(0, &[message(Guarantee::ExactlyOnce, 256, b"far")]);
    c.handle_datagram(now, &far).unwrap();
    assert!(messages(&mut c).is_empty());
    assert_eq!(c.stats().dropped_no_room, 1);
    assert_eq!(c.stats().packets_received, 0, "packet not recorded");
    // The same packet number may be processed again later.
    let ok = datagram(0, &[message(Guarantee::ExactlyOnce, 255, b"edge")]);
    c.handle_datagram(now, &ok).unwrap();
    assert_eq!(messages(&mut c).len(), 1);
}

#[test]
fn ack_of_a_packet_never_sent_closes_the_connection() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let err = c
        .handle_datagram(now, &ack_datagram(0, std::iter::once(0..1_000_000)))
        .unwrap_err();
    assert!(matches!(err, DatagramError::ProtocolViolation(_)));
    assert_eq!(c.state(), State::Closing);
    let closed = std::iter::from_fn(|| c.poll_event())
        .filter(|e| matches!(e, Event::Closed { .. }))
        .count();
    assert_eq!(closed, 1);
}

#[test]
fn ack_with_a_huge_range_is_cheap_and_below_the_first_packet_a_violation() {
    // A range of 2^40 packet numbers is clamped to what is tracked, so it costs as much as a
    // range of one; reaching below the first packet number ever used, it is a lie.
    let now = t0();
    let config = Config::default().initial_packet_number(1 << 40);
    let mut c = conn(config, now);
    c.send(now, b"x", Guarantee::ExactlyOnce).unwrap();
    let mut buf = [0u8; 1500];
    c.poll_transmit(now, &mut buf).unwrap();
    let later = now + Duration::from_millis(5);
    let honest = ack_datagram(0, std::iter::once(1 << 40..(1 << 40) + 1));
    c.handle_datagram(later, &honest).unwrap();
    assert_eq!(c.stats().rtt, Duration::from_millis(5));
    let lie = ack_datagram(1, std::iter::once(0..(1 << 40) + 1));
    let err = c.handle_datagram(later, &lie).unwrap_err();
    assert!(matches!(err, DatagramError::ProtocolViolation(_)));
}

#[test]
fn corrupted_datagram_is_counted_and_ignored() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let mut d = datagram(0, &[message(Guarantee::ExactlyOnce, 0, b"hello")]);
    let i = d.len() / 2;
    d[i] ^= 0x40;
    assert!(matches!(
        c.handle_datagram(now, &d),
        Err(DatagramError::Malformed(_))
    ));
    assert_eq!(c.stats().dropped_malformed, 1);
    assert!(messages(&mut c).is_empty());
}

#[test]
fn send_refuses_what_it_cannot_account_for() {
    let now = t0();
    let mut c = conn(Config::default().max_pending_messages(2), now);
    let big = vec![0u8; c.config().max_message_size + 1];
    assert!(matches!(
        c.send(now, &big, Guarantee::ExactlyOnce),
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(
        c.send(
            now,
            b"x",
            SendOptions::new(Guarantee::AtMostOnce).ordered(true)
        ),
        Err(SendError::OrderedAtMostOnce)
    );
    c.send(now, b"1", Guarantee::ExactlyOnce).unwrap();
    c.send(now, b"2", Guarantee::AtMostOnce).unwrap();
    assert_eq!(
        c.send(now, b"3", Guarantee::ExactlyOnce),
        Err(SendError::Backpressure)
    );
    c.close(now);
    assert_eq!(
        c.send(now, b"4", Guarantee::ExactlyOnce),
        Err(SendError::Closed)
    );
}

#[test]
fn idle_timeout_ends_every_pending_message() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    c.send(now, b"a", Guarantee::ExactlyOnce).unwrap();
    c.send(now, b"b", Guarantee::AtMostOnce).unwrap();
    let mut buf = [0u8; 1500];
    let mut t = now;
    for _ in 0..10_000 {
        while c.poll_transmit(t, &mut buf).is_some() {}
        let Some(next) = c.poll_timeout() else { break };
        t = next;
        c.handle_timeout(t);
    }
    assert!(c.is_closed());
    assert!(t <= now + Duration::from_secs(10) + Duration::from_millis(1));
    let mut lost = 0;
    let mut closed = 0;
    while let Some(ev) = c.poll_event() {
        match ev {
            Event::Undeliverable { reason, .. } => {
                assert!(matches!(
                    reason,
                    UndeliverableReason::ConnectionLost | UndeliverableReason::Lost
                ));
                lost += 1;
            }
            Event::Closed { reason } => {
                assert_eq!(reason, CloseReason::IdleTimeout);
                closed += 1;
            }
            _ => {}
        }
    }
    assert_eq!((lost, closed), (2, 1));
    assert_eq!(c.pending_messages(), 0);
}

#[test]
fn fragment_counts_and_chunks_fit_a_datagram() {
    for mds in [256usize, 512, 1200, 1472, 9000, 65507] {
        let chunk = fragment_chunk(mds);
        assert_eq!(send::fragment_count(chunk, mds), 1);
        assert_eq!(send::fragment_count(chunk + 1, mds), 2);
        // A full fragment plus the largest header fits an empty packet.
        assert!(wire::HEADER_LEN + MAX_MESSAGE_OVERHEAD + chunk + 4 <= mds);
    }
}

#[test]
fn acknowledging_a_skipped_packet_number_closes_the_connection() {
    let now = t0();
    let mut c = conn(
        Config::default().congestion(crate::CongestionControl::None),
        now,
    );
    let mut buf = [0u8; 1500];
    let mut sent = 0u64;
    let mut largest = 0;
    // Enough packets to pass at least one skipped number (one in every 64 to 255).
    while sent < 400 {
        c.send(now, &[1u8; 1000], Guarantee::AtMostOnce).unwrap();
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            let (h, _) = wire::open(&buf[..n], &Crc32).unwrap();
            largest = u64::from(h.packet_number);
            sent += 1;
        }
    }
    assert!(!c.skipped_pns.is_empty());
    let skipped = c.skipped_pns[0];
    assert!(skipped < largest);
    // An honest acknowledgement leaves the skipped number out...
    let honest = ack_datagram(0, [skipped + 1..skipped + 2, 0..skipped]);
    c.handle_datagram(now, &honest).unwrap();
    assert_eq!(c.state(), State::Established);
    // ...an optimistic one covers it.
    let optimistic = ack_datagram(1, std::iter::once(0..largest + 1));
    let err = c.handle_datagram(now, &optimistic).unwrap_err();
    assert!(matches!(err, DatagramError::ProtocolViolation(why) if why.contains("skipped")));
    assert_eq!(c.state(), State::Closing);
}

#[test]
fn an_app_limited_sender_with_random_loss_keeps_its_loss_tolerant_window() {
    // One small message per millisecond leaves the window mostly unused, so acknowledgements
    // do not grow it; they must still reach the controller as deliveries. Every 20th packet
    // is dropped: 5% loss, which LossTolerant takes for random. Were only the losses counted,
    // its loss rate would pass 15% and halve the window.
    let mut now = t0();
    let config = Config::default().congestion(crate::CongestionControl::LossTolerant);
    let (mut a, mut b) = connection_pair(config, now);
    let start = a.stats().cwnd;
    let mut buf = [0u8; 1500];
    let mut sent = 0u64;
    for _ in 0..2_000 {
        now += Duration::from_millis(1);
        a.send(now, &[7u8; 64], Guarantee::ExactlyOnce).unwrap();
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            sent += 1;
            if sent % 20 != 0 {
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
        }
        b.handle_timeout(now);
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            a.handle_datagram(now, &buf[..n]).unwrap();
        }
        a.handle_timeout(now);
        while b.poll_event().is_some() {}
        while a.poll_event().is_some() {}
    }
    let s = a.stats();
    assert!(s.packets_lost >= 50, "{s:?}");
    assert!(
        s.cwnd >= start,
        "window {} fell below {start}: {s:?}",
        s.cwnd
    );
}

#[test]
fn ping_pong_costs_one_packet_per_message_each_way() {
    // Each side answers every message at once, driven in the order a driver uses: datagrams
    // in, transmit, then the application's events and its answer, then transmit again. The
    // first flush sends nothing: the acknowledgement rides on the answer. Packet numbers are
    // skipped only while a packet is in flight, so none of these lone packets follows a gap
    // that would ask for an acknowledgement at once.
    let now0 = t0();
    let (mut a, mut b) = connection_pair(Config::default(), now0);
    let mut now = now0;
    let pings = 3_000u64;
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    let flush = |c: &mut Connection, now, out: &mut Vec<Vec<u8>>| {
        let mut buf = [0u8; 1500];
        while let Some(n) = c.poll_transmit(now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
    };
    a.send(now, b"ping", Guarantee::ExactlyOnce).unwrap();
    flush(&mut a, now, &mut to_b);
    // One side's turn: take what arrived, flush, answer, flush.
    let turn = |me: &mut Connection, inbox: &mut Vec<Vec<u8>>, outbox: &mut Vec<Vec<u8>>, now| {
        for d in inbox.drain(..) {
            me.handle_datagram(now, &d).unwrap();
        }
        me.handle_timeout(now);
        flush(me, now, outbox);
        while let Some(ev) = me.poll_event() {
            if let Event::Message(m) = ev {
                me.send(now, &m.payload, Guarantee::ExactlyOnce).unwrap();
            }
        }
        flush(me, now, outbox);
    };
    for _ in 0..pings {
        now += Duration::from_micros(50);
        turn(&mut b, &mut to_b, &mut to_a, now);
        now += Duration::from_micros(50);
        turn(&mut a, &mut to_a, &mut to_b, now);
    }
    let (pa, pb) = (a.stats().packets_sent, b.stats().packets_sent);
    // `a` sends the first ping and answers every echo; `b` answers every ping.
    assert_eq!(
        (pa, pb),
        (pings + 1, pings),
        "packets sent for {pings} pings"
    );
}

#[test]
fn the_buffer_pool_keeps_at_most_pool_bytes() {
    // 40 messages of 20,000 bytes each way through a pair; every buffer comes back (the
    // sender's on Delivered, the receiver's by `recycle`), and each pool keeps what its
    // `pool_bytes` allows, no more.
    use crate::connection::POOLED_BUFFER_COST;
    const SIZE: usize = 20_000;
    for limit in [0, 3 * (SIZE + POOLED_BUFFER_COST) + 10, 1 << 20] {
        let mut now = t0();
        let (mut a, mut b) = connection_pair(Config::default().pool_bytes(limit), now);
        for _ in 0..40 {
            a.send(now, &[1; SIZE], Guarantee::ExactlyOnce).unwrap();
        }
        let mut buf = [0u8; 1500];
        let mut delivered = 0;
        for _ in 0..200 {
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, &buf[..n]).unwrap();
            }
            while let Some(ev) = b.poll_event() {
                if let Event::Message(m) = ev {
                    b.recycle(m.payload);
                }
            }
            while let Some(ev) = a.poll_event() {
                delivered += usize::from(matches!(ev, Event::Delivered { .. }));
            }
            now += Duration::from_millis(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        assert_eq!(delivered, 40, "limit {limit}");
        for c in [&a, &b] {
            let held: usize = c
                .pool
                .iter()
                .map(|p| p.capacity() + POOLED_BUFFER_COST)
                .sum();
            assert!(held <= limit, "limit {limit}: {held} bytes pooled");
            assert_eq!(c.pool_room, limit - held, "limit {limit}");
            assert!(c.pool.iter().all(|p| p.is_empty()));
            // As many as fit: each buffer holds one 20,000-byte message.
            let fit = limit / (SIZE + POOLED_BUFFER_COST);
            assert_eq!(c.pool.len(), fit.min(40), "limit {limit}");
        }
    }
}

#[test]
fn an_application_limited_sender_does_not_grow_its_window() {
    // One small message per round trip never fills the window, so the window stays where it
    // started instead of growing into a promise the path never kept (RFC 9002 section 7.8).
    let now0 = t0();
    let (mut a, mut b) = connection_pair(Config::default(), now0);
    let initial = a.stats().cwnd;
    let mut buf = [0u8; 1500];
    let mut now = now0;
    for _ in 0..500 {
        a.send(now, b"tick", Guarantee::ExactlyOnce).unwrap();
        for _ in 0..3 {
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, &buf[..n]).unwrap();
            }
            while a.poll_event().is_some() {}
            while b.poll_event().is_some() {}
            now += Duration::from_millis(5);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
    }
    assert_eq!(a.stats().delivered, 500);
    assert_eq!(a.stats().cwnd, initial);
}

#[test]
fn a_malformed_frame_after_good_ones_leaves_no_effect() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let mut d = datagram(0, &[message(Guarantee::ExactlyOnce, 0, b"hi"), Frame::Ping]);
    // Turn the trailing PING into an unknown frame type and seal again: the checksum is valid,
    // the first frame well-formed, the packet as a whole is not.
    let tag = Crc32.tag_len();
    let ping_at = d.len() - tag - 1;
    d[ping_at] = 0x3f;
    let n = wire::seal(&mut d, ping_at + 1, &Crc32).unwrap();
    assert_eq!(n, d.len());
    assert!(c.handle_datagram(now, &d).is_err());
    assert!(messages(&mut c).is_empty());
    assert_eq!(c.stats().dropped_malformed, 1);
    // The packet number was not consumed: a well-formed copy is accepted.
    c.handle_datagram(
        now,
        &datagram(0, &[message(Guarantee::ExactlyOnce, 0, b"hi")]),
    )
    .unwrap();
    assert_eq!(messages(&mut c), vec![(0, b"hi".to_vec())]);
}

#[test]
fn a_packet_with_more_frames_than_the_inline_array_takes_full_effect() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let payloads: Vec<[u8; 1]> = (0..70u8).map(|i| [i]).collect();
    let frames: Vec<Frame<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| message(Guarantee::ExactlyOnce, i as u64, p))
        .collect();
    c.handle_datagram(now, &datagram(0, &frames)).unwrap();
    let got = messages(&mut c);
    assert_eq!(got.len(), 70);
    for (i, (id, payload)) in got.into_iter().enumerate() {
        assert_eq!((id, payload), (i as u64, vec![i as u8]));
    }
}

#[test]
fn ack_frames_carry_at_most_max_ack_ranges_and_track_ack_ranges_tracked() {
    // Every other packet number arrives: each one is a range of its own.
    let now = t0();
    let config = Config::default().max_ack_ranges(3).ack_ranges_tracked(5);
    let mut c = conn(config, now);
    for pn in (0..20).step_by(2) {
        c.handle_datagram(now, &datagram(pn, &[Frame::Ping]))
            .unwrap();
    }
    assert_eq!(c.rx.received.iter().count(), 5);
    let mut buf = [0u8; 1500];
    let n = c.poll_transmit(now, &mut buf).unwrap();
    let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
    let ack = wire::frames(payload)
        .map(|f| f.unwrap())
        .find_map(|f| match f {
            Frame::Ack(a) => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(ack.largest, 18);
    assert_eq!(ack.range_count(), 3);
}

#[test]
fn the_largest_message_fits_a_receive_buffer_at_its_validated_minimum() {
    // max_fragments 4: the validated minimum is 1000 + 4 + 64.
    let now = t0();
    let cfg = Config::default()
        .max_message_size(1000)
        .max_fragments(4)
        .recv_buffer_bytes(1000 + 4 + 64);
    cfg.validate().unwrap();
    let mut c = conn(cfg, now);
    let payload = vec![7u8; 1000];
    c.handle_datagram(
        now,
        &datagram(0, &[message(Guarantee::ExactlyOnce, 0, &payload)]),
    )
    .unwrap();
    assert_eq!(messages(&mut c), vec![(0, payload)]);
}

#[test]
fn the_largest_fragmented_message_fits_a_receive_buffer_at_its_validated_minimum() {
    use crate::wire::Fragment;
    let now = t0();
    let cfg = Config::default()
        .max_message_size(4000)
        .max_fragments(4)
        .recv_buffer_bytes(4000 + 4 + 64);
    cfg.validate().unwrap();
    let mut c = conn(cfg, now);
    let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    // Out of order, so that the message is partial for three datagrams.
    for (pn, index) in [3u64, 0, 2, 1].into_iter().enumerate() {
        let r = Fragment::byte_range(4000, 4, index).unwrap();
        let f = Frame::Message(MessageFrame {
            guarantee: Guarantee::ExactlyOnce,
            channel: 0,
            id: 0,
            chan_seq: None,
            fragment: Some(Fragment {
                total_len: 4000,
                count: 4,
                index,
            }),
            payload: &data[r.start as usize..r.end as usize],
        });
        c.handle_datagram(now, &datagram(pn as u32, &[f])).unwrap();
    }
    assert_eq!(messages(&mut c), vec![(0, data)]);
}

#[test]
fn messages_held_back_leave_room_for_the_largest_message_in_line() {
    // Position 0 of an ordered channel is missing and later positions keep arriving. Held
    // back, they could fill the receive buffer so that position 0, the one message that would
    // release them, never finds room: a deadlock. Holding stops where the largest message
    // still fits; the positions refused are not acknowledged (sent again later), and the
    // largest message at position 0 then goes through and releases what was held.
    use crate::limits::largest_message_cost;
    let now = t0();
    let budget = 1500;
    let cfg = Config::default()
        .max_message_size(1000)
        .max_fragments(4)
        .recv_buffer_bytes(largest_message_cost(1000, 4) + budget);
    cfg.validate().unwrap();
    static LATER: [u8; 300] = [5; 300];
    static FIRST: [u8; 1000] = [9; 1000];
    for general in [false, true] {
        let run = || {
            let mut c = conn(cfg.clone(), now);
            for id in 1..=10u64 {
                c.handle_datagram(now, &datagram(id as u32, &[ordered_at(id, None, &LATER)]))
                    .unwrap();
            }
            let held = c.rx.buffered_bytes();
            assert!(held <= budget, "{held} held past the budget {budget}");
            assert!(held > 0, "nothing held");
            assert!(messages(&mut c).is_empty());
            c.handle_datagram(now, &datagram(11, &[ordered_at(0, None, &FIRST)]))
                .unwrap();
            let got = messages(&mut c);
            let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
            assert!(ids.len() > 1 && ids.len() < 11, "{ids:?}");
            assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
            assert_eq!(got[0].1, FIRST);
        };
        if general {
            general_only(run);
        } else {
            run();
        }
    }
}

/// An ordered exactly-once MESSAGE frame at position `id` of channel 0 (id and position
/// equal), whole or one fragment of a two-fragment message.
fn ordered_at(id: u64, fragment: Option<crate::wire::Fragment>, payload: &[u8]) -> Frame<'_> {
    Frame::Message(MessageFrame {
        guarantee: Guarantee::ExactlyOnce,
        channel: 0,
        id,
        chan_seq: Some(id),
        fragment,
        payload,
    })
}

/// On a connection with `cfg`: positions 1..=`later` of channel 0 arrive (`len` bytes each;
/// as many held as the budget allows), then `between` runs, then position 0 (`first` bytes),
/// the message in line. Checks that position 0 and at least one held position are delivered,
/// in order.
fn hold_then_in_line(
    cfg: Config,
    (later, len): (u64, usize),
    between: impl FnOnce(&mut Connection, Instant),
    first: usize,
) {
    let now = t0();
    let mut c = conn(cfg, now);
    let held = vec![5u8; len];
    for id in 1..=later {
        c.handle_datagram(now, &datagram(id as u32, &[ordered_at(id, None, &held)]))
            .unwrap();
    }
    between(&mut c, now);
    let payload = vec![9u8; first];
    c.handle_datagram(now, &datagram(100, &[ordered_at(0, None, &payload)]))
        .unwrap();
    let got = messages(&mut c);
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.len() > 1, "{ids:?}");
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(got[0].1, payload);
}

#[test]
fn a_partial_message_ahead_of_its_channel_leaves_room_for_the_one_in_line() {
    // After the held positions, the first fragment of a message ahead would take the room
    // the message in line needs: it is refused (its packet not acknowledged), and position
    // 0, the largest message, goes through and releases what was held.
    use crate::wire::Fragment;
    let cfg = Config::default()
        .max_message_size(1000)
        .max_fragments(4)
        .recv_buffer_bytes(crate::limits::largest_message_cost(1000, 4) + 1500);
    let partial = |c: &mut Connection, now| {
        let half = [6u8; 500];
        let fragment = Some(Fragment {
            total_len: 1000,
            count: 2,
            index: 0,
        });
        c.handle_datagram(now, &datagram(50, &[ordered_at(50, fragment, &half)]))
            .unwrap();
        assert_eq!(c.rx.reassembly.bytes(), 0, "the partial took the room");
        assert!(!c.rx.received.contains(50), "its packet is acknowledged");
    };
    hold_then_in_line(cfg, (4, 300), partial, 1000);
}

#[test]
fn a_whole_message_in_line_larger_than_max_message_size_still_finds_room() {
    // max_message_size is this end's own limit and not the peer's: a peer may send a whole
    // message up to its datagram size. The room kept for the message in line covers that.
    let cfg = Config::default()
        .max_message_size(300)
        .max_fragments(2)
        .recv_buffer_bytes(crate::limits::largest_message_cost(300, 2) + 1500);
    hold_then_in_line(cfg, (10, 200), |_, _| {}, 1000);
}

#[test]
fn a_reassembled_message_with_no_room_to_be_held_is_asked_for_again_whole() {
    // Its first fragment's packet was acknowledged; refusing only the completing one's would
    // leave the sender sending that fragment alone, from which the message can never be
    // rebuilt. Here the partial message fits, but held back it also pays for the empty
    // positions before it, and that does not.
    use crate::limits::{HELD_ENTRY_COST, partial_cost};
    use crate::wire::Fragment;
    let now = t0();
    let cfg = Config::default()
        .max_datagram_size(512)
        .max_message_size(1000)
        .max_fragments(4)
        .recv_buffer_bytes(2300);
    let reserve = ConnectionLimits::new(&cfg).in_line_reserve();
    let budget = 2300 - reserve;
    // Held at position 8 with nothing before it: eight slots and the payload.
    let (position, cost) = (8u64, partial_cost(1000, 2));
    assert!(cost <= budget && 1000 + 8 * HELD_ENTRY_COST > budget);
    static HALF: [u8; 500] = [6; 500];
    let half = |index| {
        let fragment = Fragment {
            total_len: 1000,
            count: 2,
            index,
        };
        ordered_at(position, Some(fragment), &HALF)
    };
    let mut c = conn(cfg, now);
    c.handle_datagram(now, &datagram(0, &[half(1)])).unwrap();
    assert_eq!(
        c.rx.reassembly.bytes(),
        cost,
        "the partial message was not admitted"
    );
    assert!(c.rx.rejects.is_empty());
    c.handle_datagram(now, &datagram(1, &[half(0)])).unwrap();
    assert_eq!(c.rx.rejects, [position], "not asked for again");
    let mut buf = [0u8; 1500];
    let n = c
        .poll_transmit(now, &mut buf)
        .expect("a packet with the REJECT");
    let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
    let rejected: Vec<u64> = wire::frames(payload)
        .filter_map(|f| match f.unwrap() {
            Frame::Reject(r) => Some(r.ids().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(rejected, [position]);
}

#[test]
fn reliable_arrivals_in_and_out_of_order_match_a_model() {
    // In-order arrivals (handled by the next-in-line path) mixed with losses, repairs and
    // copies (the general path): every message is handed over, exactly-once ones once, and
    // both windows end where a plain set of arrived ids says.
    use std::collections::{BTreeMap, BTreeSet};
    for seed in 0..8 {
        let mut rng = crate::rng::Rng::new(seed);
        let now = t0();
        let window = 256;
        let mut c = conn(Config::default().window(window), now);
        let guarantee = |id: u64| {
            if id % 3 == 0 {
                Guarantee::AtLeastOnce
            } else {
                Guarantee::ExactlyOnce
            }
        };
        let mut arrived = BTreeSet::new();
        let mut lost: Vec<u64> = Vec::new();
        let mut handed: BTreeMap<u64, u32> = BTreeMap::new();
        let (mut next, mut pn) = (0u64, 0u32);
        for step in 0..3000 {
            let base = arrived
                .iter()
                .zip(0..)
                .take_while(|(a, b)| **a == *b)
                .count() as u64;
            let id = match rng.below(10) {
                0..=5 if next < base + window - 8 => {
                    next += 1;
                    if rng.chance(0.1) {
                        lost.push(next - 1);
                        continue;
                    }
                    next - 1
                }
                0..=7 if !lost.is_empty() => {
                    lost.swap_remove(rng.below(lost.len() as u64) as usize)
                }
                _ if next > 0 => next - 1 - rng.below(next.min(20)),
                _ => continue,
            };
            let payload = id.to_le_bytes();
            let d = datagram(pn, &[message(guarantee(id), id, &payload)]);
            pn += 1;
            c.rx.msg_ack_dirty = false;
            c.handle_datagram(now, &d).unwrap();
            let fresh = arrived.insert(id);
            // A message completed for the first time is reported in the next MSG_ACK.
            assert!(!fresh || c.rx.msg_ack_dirty, "seed {seed} step {step}");
            for (got, bytes) in messages(&mut c) {
                assert_eq!(bytes, got.to_le_bytes());
                *handed.entry(got).or_default() += 1;
            }
            let times = handed.get(&id).copied().unwrap_or(0);
            match guarantee(id) {
                Guarantee::ExactlyOnce => assert_eq!(times, 1, "seed {seed} step {step} id {id}"),
                _ => assert!(
                    times >= 1 && (!fresh || times == 1),
                    "seed {seed} step {step}"
                ),
            }
            let cum = arrived
                .iter()
                .zip(0..)
                .take_while(|(a, b)| **a == *b)
                .count() as u64;
            let above: Vec<_> = arrived.range(cum..).map(|&i| i..i + 1).collect();
            let ranges = |w: &crate::dedup::DedupWindow| {
                let mut v: Vec<std::ops::Range<u64>> = Vec::new();
                for r in w.set_ranges() {
                    v.extend(r.map(|i| i..i + 1));
                }
                v
            };
            for w in [&c.rx.done, &c.rx.seen] {
                assert_eq!(w.base(), cum, "seed {seed} step {step}");
                assert_eq!(ranges(w), above, "seed {seed} step {step}");
            }
            assert_eq!(c.rx.limit, cum + window);
        }
        assert!(handed.len() > 1500, "seed {seed}: {}", handed.len());
    }
}

/// A receiver's observable state: what the fast paths must leave as the general path does.
fn receive_side(c: &Connection) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        c.state, c.rx, c.stats, c.timers, c
    )
}

#[test]
fn a_messages_run_with_room_for_part_of_it_delivers_that_part_and_is_not_acknowledged() {
    // Room for two queued 36-byte messages (each counts its bytes plus the event's cost), not
    // three: a run of four next in line delivers two, drops the rest, and leaves its packet
    // unacknowledged; the same run again, once the application took the two, delivers the
    // other two and is acknowledged. The general path does exactly the same.
    use super::recv::FAST_PATH_HITS;
    let now = t0();
    let config = Config::default()
        .max_message_size(100)
        .max_fragments(2)
        .recv_buffer_bytes(2 * (36 + crate::limits::QUEUED_EVENT_COST) + 10);
    let mut fast = conn(config.clone(), now);
    let mut general = conn(config, now);
    let mut raw = [0u8; 512];
    let mut w = wire::Writer::new(&mut raw);
    let g = Guarantee::ExactlyOnce;
    let mut b = wire::MessagesWriter::begin(&mut w, g, 0, 0, None, &[0; 36]).unwrap();
    for i in 1..4u8 {
        b.push(&mut w, &[i; 36]).unwrap();
    }
    let n = w.position();
    let run = wire::frames(&raw[..n]).next().unwrap().unwrap();
    let hits = || FAST_PATH_HITS.with(std::cell::Cell::get)[3];
    let before = hits();
    let mut got = Vec::new();
    for pn in [1, 2] {
        let d = datagram(pn, &[run]);
        fast.handle_datagram(now, &d).unwrap();
        general_only(|| general.handle_datagram(now, &d).unwrap());
        assert_eq!(receive_side(&fast), receive_side(&general), "packet {pn}");
        // The first is dropped for want of room, the copy taken whole (two copies, two new).
        assert_eq!(fast.stats.dropped_no_room, 1, "packet {pn}");
        assert_eq!(
            fast.rx.received.contains(u64::from(pn)),
            pn == 2,
            "packet {pn}"
        );
        loop {
            let (a, b) = (fast.poll_event(), general.poll_event());
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            match a {
                Some(Event::Message(m)) => got.push((m.id.get(), m.payload[0])),
                Some(other) => panic!("{other:?}"),
                None => break,
            }
        }
        assert_eq!(got.len(), 2 * pn as usize, "packet {pn}");
    }
    assert_eq!(got, [(0, 0), (1, 1), (2, 2), (3, 3)]);
    // The run's fast path took the first two; the copy starts with two duplicates, so it is
    // not in line and goes message by message.
    assert_eq!(hits() - before, 2);

    // With the room taken by two messages the application has not taken yet, a run in line
    // finds no room for its first message: nothing of it is taken.
    let mut w = wire::Writer::new(&mut raw);
    let mut b = wire::MessagesWriter::begin(&mut w, g, 0, 6, None, &[6; 36]).unwrap();
    b.push(&mut w, &[7; 36]).unwrap();
    let n = w.position();
    let frames = [message(g, 4, &[4; 36]), message(g, 5, &[5; 36])];
    for (pn, frames) in [
        (3, &frames[..]),
        (4, &[wire::frames(&raw[..n]).next().unwrap().unwrap()][..]),
    ] {
        let d = datagram(pn, frames);
        fast.handle_datagram(now, &d).unwrap();
        general_only(|| general.handle_datagram(now, &d).unwrap());
        assert_eq!(receive_side(&fast), receive_side(&general), "packet {pn}");
    }
    assert_eq!(fast.stats.dropped_no_room, 2);
    assert_eq!(fast.rx.done.base(), 6);
    assert_eq!(hits() - before, 2);
}

#[test]
fn an_at_most_once_run_with_room_for_part_of_it_matches_the_general_path() {
    // Room for two queued 36-byte messages and a 4-byte one: of an at-most-once run of
    // 36, 36, 80 and 4 bytes, the run's fast path takes the first two, the 80-byte one is
    // dropped for want of room (so the packet is not acknowledged) and the 4-byte one still
    // fits. A run whose ids arrived before, or that finds no room for its first message,
    // goes message by message. The general path does exactly the same.
    use super::recv::FAST_PATH_HITS;
    let now = t0();
    let q = crate::limits::QUEUED_EVENT_COST;
    let config = Config::default()
        .max_message_size(100)
        .max_fragments(2)
        .recv_buffer_bytes(2 * (36 + q) + (4 + q));
    let mut fast = conn(config.clone(), now);
    let mut general = conn(config, now);
    let g = Guarantee::AtMostOnce;
    let run = |first: u64, sizes: &[usize]| {
        let mut raw = vec![0u8; 512];
        let mut w = wire::Writer::new(&mut raw);
        let mut b =
            wire::MessagesWriter::begin(&mut w, g, 0, first, None, &vec![first as u8; sizes[0]])
                .unwrap();
        for (i, &len) in sizes.iter().enumerate().skip(1) {
            b.push(&mut w, &vec![first as u8 + i as u8; len]).unwrap();
        }
        let n = w.position();
        raw.truncate(n);
        raw
    };
    let hits = || FAST_PATH_HITS.with(std::cell::Cell::get)[5];
    let before = hits();
    let step = |pn: u32, frame: &[u8], fast: &mut Connection, general: &mut Connection| {
        let d = datagram(pn, &[one_frame(frame)]);
        fast.handle_datagram(now, &d).unwrap();
        general_only(|| general.handle_datagram(now, &d).unwrap());
        assert_eq!(receive_side(fast), receive_side(general), "packet {pn}");
        fast.rx.received.contains(u64::from(pn))
    };
    let take = |fast: &mut Connection, general: &mut Connection| {
        let mut got = Vec::new();
        loop {
            let (a, b) = (fast.poll_event(), general.poll_event());
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            match a {
                Some(Event::Message(m)) => got.push(m.id.get()),
                Some(other) => panic!("{other:?}"),
                None => break,
            }
        }
        got
    };
    assert!(!step(1, &run(0, &[36, 36, 80, 4]), &mut fast, &mut general));
    assert_eq!(hits() - before, 2);
    assert_eq!(take(&mut fast, &mut general), [0, 1, 3]);
    // Ids 2 and 3 again: 3 arrived before, so message by message (2 is taken, 3 is a copy).
    assert!(!step(2, &run(2, &[36, 36]), &mut fast, &mut general));
    assert_eq!(hits() - before, 2);
    assert_eq!(take(&mut fast, &mut general), [2]);
    // A fresh run: taken whole, acknowledged.
    assert!(step(3, &run(4, &[36, 36]), &mut fast, &mut general));
    assert_eq!(hits() - before, 4);
    // Not taken by the application: no room for the next run's first message.
    assert!(!step(4, &run(6, &[36]), &mut fast, &mut general));
    assert_eq!(hits() - before, 4);
    assert_eq!(take(&mut fast, &mut general), [4, 5]);
}

#[test]
fn a_run_ahead_of_the_cumulative_point_matches_the_general_path() {
    // Reliable ids 0..5 lost. A run 5..10 arrives ahead of the cumulative point, after id 10,
    // so its last message repairs a reordering and is acknowledged at once; or after a
    // FORWARD that abandoned id 7, which is then never delivered (and the run goes message
    // by message). Unordered and ordered (held back in channel 1, positions equal to the ids),
    // the run's fast path leaves what the general path leaves.
    use super::recv::FAST_PATH_HITS;
    // With `partial`, the receive buffer has room for id 10 and two more messages: the run is
    // taken in part, the packet is not acknowledged, and nothing is due at once.
    let q = crate::limits::QUEUED_EVENT_COST;
    let cases = [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (false, false, true),
    ];
    for (ordered, abandon, partial) in cases {
        let ctx = format!("ordered {ordered}, abandon {abandon}, partial {partial}");
        let now = t0();
        let config = if partial {
            Config::default()
                .max_message_size(100)
                .max_fragments(2)
                .recv_buffer_bytes(3 * (8 + q) + 10)
        } else {
            Config::default()
        };
        let mut fast = conn(config.clone(), now);
        let mut general = conn(config, now);
        let g = Guarantee::ExactlyOnce;
        let seq = |id: u64| ordered.then_some(id);
        let mut raw = [0u8; 512];
        let mut w = wire::Writer::new(&mut raw);
        let mut run = wire::MessagesWriter::begin(&mut w, g, 1, 5, seq(5), &[5; 8]).unwrap();
        for id in 6..10u8 {
            run.push(&mut w, &[id; 8]).unwrap();
        }
        let n = w.position();
        let mut fw = [0u8; 64];
        let mut w = wire::Writer::new(&mut fw);
        let entry = wire::ForwardEntry {
            id: 7,
            ordered: seq(7).map(|s| (1, s)),
        };
        wire::emit_forward(&mut w, &[entry]).unwrap();
        let fwn = w.position();
        let ten = Frame::Message(MessageFrame {
            guarantee: g,
            channel: 1,
            id: 10,
            chan_seq: seq(10),
            fragment: None,
            payload: &[10; 8],
        });
        let first = if abandon {
            datagram(0, &[one_frame(&fw[..fwn])])
        } else {
            datagram(0, &[ten])
        };
        let packets = [first, datagram(1, &[one_frame(&raw[..n])])];
        let hits = || FAST_PATH_HITS.with(std::cell::Cell::get)[6 + usize::from(ordered)];
        let before = hits();
        let mut buf = [0u8; 1500];
        for (pn, d) in packets.iter().enumerate() {
            fast.handle_datagram(now, d).unwrap();
            general_only(|| general.handle_datagram(now, d).unwrap());
            assert_eq!(
                receive_side(&fast),
                receive_side(&general),
                "{ctx}, packet {pn}"
            );
            if pn == 0 {
                // The first packet's acknowledgement goes out after the ack delay, so that
                // only a repair can make the second one's due at once.
                let due = fast.poll_timeout().unwrap();
                for c in [&mut fast, &mut general] {
                    c.handle_timeout(due);
                    while c.poll_transmit(due, &mut buf).is_some() {}
                    assert!(!c.rx.ack_due, "{ctx}");
                }
            }
        }
        let taken = match (abandon, partial) {
            (true, _) => 0,
            (false, true) => 2,
            (false, false) => 5,
        };
        assert_eq!(hits() - before, taken, "{ctx}");
        assert_eq!(fast.rx.ack_due, !abandon && !partial, "{ctx}");
        assert_eq!(fast.rx.received.contains(1), !partial, "{ctx}");
        let got = messages(&mut fast);
        assert_eq!(got, messages(&mut general), "{ctx}");
        let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        // Ordered, everything waits for positions 0..5.
        let expected: &[u64] = match (ordered, abandon, partial) {
            (true, ..) => &[],
            (false, true, _) => &[5, 6, 8, 9],
            (false, false, true) => &[10, 5, 6],
            (false, false, false) => &[10, 5, 6, 7, 8, 9],
        };
        assert_eq!(ids, expected, "{ctx}");
    }
}

#[test]
fn fast_paths_leave_the_same_state_and_events_as_the_general_path() {
    // A sender's datagrams, lost, held back, reordered and copied at random, go to two
    // receivers: one takes the fast paths for messages in line, the other only the general
    // path. Every result, event, reply and the whole receive state must be the same. The
    // traffic mixes guarantees, ordered channels, fragments and abandoned messages (FORWARD).
    use crate::message::SendOptions;
    let mut in_line = 0;
    for seed in 0..10 {
        let mut rng = crate::rng::Rng::new(seed);
        let mut now = t0();
        let config = Arc::new(
            Config::default()
                .window(256)
                .amo_window(64 + 7 * seed)
                .max_datagram_size(400)
                .max_message_size(4096)
                .reassembly_timeout(Duration::from_millis(40)),
        );
        let mut s = Connection::new(config.clone(), 1, 2, now).unwrap();
        let mut fast = Connection::new(config.clone(), 2, 1, now).unwrap();
        let mut general = Connection::new(config, 2, 1, now).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut held_back: Vec<Vec<u8>> = Vec::new();
        let (loss, copies, hold) = match seed % 3 {
            0 => (0.0, 0.0, 0.0),
            1 => (0.05, 0.05, 0.05),
            _ => (0.15, 0.1, 0.2),
        };
        for round in 0..600 {
            // Half the rounds send a burst of one kind (runs of consecutive ids that share a
            // MESSAGES frame), the others mix kinds message by message.
            let burst = rng
                .chance(0.5)
                .then(|| (rng.below(3), rng.below(3) as u8, rng.chance(0.6)));
            for _ in 0..rng.below(6) {
                let (kind, channel, ordered) =
                    burst.unwrap_or_else(|| (rng.below(3), rng.below(3) as u8, rng.chance(0.6)));
                let g = match kind {
                    0 => Guarantee::AtMostOnce,
                    1 => Guarantee::AtLeastOnce,
                    _ => Guarantee::ExactlyOnce,
                };
                let mut opts = SendOptions::new(g)
                    .channel(channel)
                    .ordered(g.is_reliable() && ordered);
                if rng.chance(0.1) {
                    opts = opts.deadline(Duration::from_millis(rng.range_inclusive(1, 30)));
                }
                let len = if rng.chance(0.05) {
                    rng.range_inclusive(400, 1500)
                } else {
                    rng.range_inclusive(1, 64)
                };
                let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (round as u8)).collect();
                let _ = s.send(now, &payload, opts);
            }
            let mut wire: Vec<Vec<u8>> = std::mem::take(&mut held_back);
            while let Some(n) = s.poll_transmit(now, &mut buf) {
                wire.push(buf[..n].to_vec());
            }
            for d in wire {
                if rng.chance(loss) {
                    continue;
                }
                if rng.chance(hold) {
                    held_back.push(d);
                    continue;
                }
                let times = if rng.chance(copies) { 2 } else { 1 };
                for _ in 0..times {
                    let a = fast.handle_datagram(now, &d);
                    let b = general_only(|| general.handle_datagram(now, &d));
                    assert_eq!(
                        format!("{a:?}"),
                        format!("{b:?}"),
                        "seed {seed} round {round}"
                    );
                    assert_eq!(
                        receive_side(&fast),
                        receive_side(&general),
                        "seed {seed} round {round}"
                    );
                }
            }
            let mut events = 0;
            loop {
                let (a, b) = (fast.poll_event(), general.poll_event());
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "seed {seed} round {round}"
                );
                let Some(ev) = a else { break };
                if matches!(ev, Event::Message(_)) {
                    events += 1;
                }
            }
            if loss == 0.0 {
                in_line += events;
            }
            let mut buf2 = vec![0u8; 2048];
            loop {
                let a = fast.poll_transmit(now, &mut buf);
                let b = general.poll_transmit(now, &mut buf2);
                assert_eq!(a, b, "seed {seed} round {round}");
                let Some(n) = a else { break };
                assert_eq!(buf[..n], buf2[..n], "seed {seed} round {round}");
                if !rng.chance(loss) {
                    let _ = s.handle_datagram(now, &buf[..n]);
                }
            }
            while s.poll_event().is_some() {}
            now += Duration::from_millis(rng.range_inclusive(0, 3));
            s.handle_timeout(now);
            fast.handle_timeout(now);
            general_only(|| general.handle_timeout(now));
            assert_eq!(
                receive_side(&fast),
                receive_side(&general),
                "seed {seed} round {round}"
            );
        }
    }
    assert!(in_line > 3000, "{in_line}");
    // Runs ahead of the cumulative point (the last two kinds) need a loss inside a burst:
    // fewer of them.
    let hits = super::recv::FAST_PATH_HITS.with(std::cell::Cell::get);
    let (others, ahead) = hits.split_at(6);
    assert!(
        others.iter().all(|&h| h > 100) && ahead.iter().all(|&h| h > 50),
        "a fast path hardly ran: {hits:?}"
    );
}

#[test]
fn a_message_in_line_with_its_channel_holding_a_later_position_takes_the_general_path() {
    // Ids out of step with channel positions (no honest sender does this): id 0 abandoned at
    // position 1 of channel 0 is held as a skip; id 1 then arrives at position 0. Both
    // windows are empty at id 1, but the channel holds position 1, passed along with it.
    use super::recv::GENERAL_PATH_ONLY;
    let forward_raw = [0x05, 1, 0, 1, 0, 1]; // FORWARD, 1 entry: id 0, ordered, channel 0, seq 1
    let forward = wire::frames(&forward_raw).next().unwrap().unwrap();
    let m = Frame::Message(MessageFrame {
        guarantee: Guarantee::ExactlyOnce,
        channel: 0,
        id: 1,
        chan_seq: Some(0),
        fragment: None,
        payload: b"m",
    });
    let now = t0();
    let mut states = Vec::new();
    for general_only in [false, true] {
        GENERAL_PATH_ONLY.with(|g| g.set(general_only));
        let mut c = conn(Config::default(), now);
        c.handle_datagram(now, &datagram(0, &[forward])).unwrap();
        c.handle_datagram(now, &datagram(1, &[m])).unwrap();
        GENERAL_PATH_ONLY.with(|g| g.set(false));
        assert_eq!(messages(&mut c), vec![(1, b"m".to_vec())]);
        let ch = c.rx.channels[0].as_deref().unwrap();
        assert_eq!((ch.next(), ch.held_bytes()), (2, 0));
        assert_eq!(c.rx.done.base(), 2);
        states.push(receive_side(&c));
    }
    assert_eq!(states[0], states[1]);
}

#[test]
fn fast_paths_match_the_general_path_for_an_arbitrary_peer() {
    // Hand-made packets, each with a fresh packet number, carry what an honest sender sends
    // and what it never does: at-most-once ids repeated, below the window or far ahead of it,
    // with floors moving under them; reliable ids near the front, repeated, ahead, with their
    // channel positions (now and then a position out of step with the id); fragments;
    // FORWARD entries; MESSAGES frames of runs from the front, repeated or ahead, now and then
    // with a receive buffer too small for the whole run. One receiver takes the fast paths,
    // the other only the general path; everything observable must be the same.

    /// Each reliable id's channel and position, assigned in id order as a sender would.
    struct Meta {
        of: Vec<(u8, Option<u64>)>,
        next: [u64; 3],
    }
    impl Meta {
        fn get(&mut self, id: u64, rng: &mut crate::rng::Rng) -> (u8, Option<u64>) {
            while self.of.len() as u64 <= id {
                let channel = rng.below(3) as u8;
                let seq = rng.chance(0.6).then(|| {
                    self.next[channel as usize] += 1;
                    self.next[channel as usize] - 1
                });
                self.of.push((channel, seq));
            }
            let (channel, seq) = self.of[id as usize];
            if rng.chance(0.01) {
                // Out of step: a position another id has, or will have.
                let seq = seq.map(|s| (s + rng.below(5)).saturating_sub(2));
                return (channel, seq);
            }
            (channel, seq)
        }

        /// The first id's channel and position for a MESSAGES run of `count` ids from `id`;
        /// the later ids not yet assigned follow it in the channel when they can, as a sender
        /// would assign them.
        fn run(&mut self, id: u64, count: u64, rng: &mut crate::rng::Rng) -> (u8, Option<u64>) {
            let (channel, seq) = self.get(id, rng);
            for i in 1..count {
                if self.of.len() as u64 != id + i {
                    continue;
                }
                let next = &mut self.next[channel as usize];
                match seq {
                    None => self.of.push((channel, None)),
                    Some(s) if *next == s + i => {
                        *next += 1;
                        self.of.push((channel, Some(s + i)));
                    }
                    Some(_) => {
                        self.get(id + i, rng);
                    }
                }
            }
            (channel, seq)
        }
    }

    let (mut delivered, mut resets) = (0, 0);
    for seed in 0..12u64 {
        let mut rng = crate::rng::Rng::new(100 + seed);
        let mut now = t0();
        let mut config = Config::default()
            .amo_window(64 + 13 * (seed % 4))
            .reassembly_timeout(Duration::from_millis(20));
        if seed % 3 == 2 {
            // Room for a few queued messages: a run can stop part way.
            config = config
                .max_message_size(200)
                .max_fragments(2)
                .recv_buffer_bytes(400);
        }
        let mut fast = conn(config.clone(), now);
        let mut general = conn(config.clone(), now);
        let (mut amo_next, mut rel_next) = (0u64, 0u64);
        let mut meta = Meta {
            of: Vec::new(),
            next: [0; 3],
        };
        let mut pn = 0u32;
        let mut last_run = None;
        let mut buf = vec![0u8; 2048];
        let mut buf2 = vec![0u8; 2048];
        let payload: Vec<u8> = (0..=255).collect();
        for step in 0..2500 {
            if fast.state != State::Established {
                resets += 1;
                fast = conn(config.clone(), now);
                general = conn(config.clone(), now);
                (amo_next, rel_next, pn, last_run) = (0, 0, 0, None);
                meta = Meta {
                    of: Vec::new(),
                    next: [0; 3],
                };
            }
            let mut forward_raw = [0u8; 64];
            let forward_len = rng.chance(0.05).then(|| {
                // FORWARD, one entry: type, count, id, flags, [channel, seq].
                let id = rel_next + rng.below(4);
                let (channel, seq) = meta.get(id, &mut rng);
                let mut w = wire::Writer::new(&mut forward_raw);
                w.put_u8(0x05).unwrap();
                w.put_varint(1).unwrap();
                w.put_varint(id).unwrap();
                if let Some(seq) = seq {
                    w.put_u8(1).unwrap();
                    w.put_u8(channel).unwrap();
                    w.put_varint(seq).unwrap();
                } else {
                    w.put_u8(0).unwrap();
                }
                w.position()
            });
            let mut batch_raw = [0u8; 512];
            let batch_len = rng.chance(0.4).then(|| {
                // MESSAGES: a run of 2 to 6 ids from the front or ahead of it, with the first
                // id's guarantee, channel and position (the frame implies the rest), or the
                // last run again (a copy).
                let (id, count, guarantee, channel, seq) = match (rng.below(8), last_run) {
                    (0, _) => {
                        let count = rng.range_inclusive(2, 6);
                        amo_next += count;
                        let channel = rng.below(3) as u8;
                        (
                            amo_next - count,
                            count,
                            Guarantee::AtMostOnce,
                            channel,
                            None,
                        )
                    }
                    (1, Some(run)) => run,
                    (k, _) => {
                        // Past every id given a channel position yet, as a sender's new
                        // messages are.
                        let front = rel_next.max(meta.of.len() as u64);
                        let id = if k == 2 { front + rng.below(6) } else { front };
                        let count = rng.range_inclusive(2, 6);
                        rel_next = id + count;
                        let (channel, seq) = meta.run(id, count, &mut rng);
                        (id, count, Guarantee::ExactlyOnce, channel, seq)
                    }
                };
                last_run = Some((id, count, guarantee, channel, seq));
                let mut w = wire::Writer::new(&mut batch_raw);
                let body = |i: u64| &payload[..(i * 7 % 40) as usize];
                let mut b =
                    wire::MessagesWriter::begin(&mut w, guarantee, channel, id, seq, body(id))
                        .unwrap();
                for i in id + 1..id + count {
                    b.push(&mut w, body(i)).unwrap();
                }
                w.position()
            });
            let mut frames: Vec<Frame<'_>> = Vec::new();
            if let Some(n) = forward_len {
                frames.push(wire::frames(&forward_raw[..n]).next().unwrap().unwrap());
            }
            if let Some(n) = batch_len {
                frames.push(wire::frames(&batch_raw[..n]).next().unwrap().unwrap());
            }
            for _ in 0..rng.range_inclusive(1, 3) {
                let (fragment, len) = random_fragment(&mut rng, 0.1, 40);
                let body = &payload[..len];
                match rng.below(18) {
                    0..=7 => {
                        let id = match rng.below(10) {
                            0..=5 => {
                                amo_next += 1;
                                amo_next - 1
                            }
                            6 | 7 => amo_next.saturating_sub(rng.below(80)),
                            _ => amo_next + rng.below(150),
                        };
                        frames.push(Frame::Message(MessageFrame {
                            guarantee: Guarantee::AtMostOnce,
                            channel: rng.below(3) as u8,
                            id,
                            chan_seq: None,
                            fragment,
                            payload: body,
                        }));
                    }
                    8 => frames.push(Frame::AmoFloor {
                        floor: amo_next.saturating_sub(30) + rng.below(60),
                    }),
                    _ => {
                        let id = match rng.below(10) {
                            0..=6 => {
                                rel_next += 1;
                                rel_next - 1
                            }
                            7 | 8 => rel_next.saturating_sub(rng.below(10)),
                            _ => rel_next + rng.below(10),
                        };
                        let (channel, chan_seq) = meta.get(id, &mut rng);
                        let guarantee = if id % 3 == 0 {
                            Guarantee::AtLeastOnce
                        } else {
                            Guarantee::ExactlyOnce
                        };
                        frames.push(Frame::Message(MessageFrame {
                            guarantee,
                            channel,
                            id,
                            chan_seq,
                            fragment,
                            payload: body,
                        }));
                    }
                }
            }
            pn += 1 + (rng.chance(0.05) as u32);
            let d = datagram(pn, &frames);
            let before = fast.stats.messages_received;
            let a = fast.handle_datagram(now, &d);
            let b = general_only(|| general.handle_datagram(now, &d));
            delivered += fast.stats.messages_received - before;
            let ctx = format!("seed {seed} step {step} {frames:?}");
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
            assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            loop {
                let (a, b) = (fast.poll_event(), general.poll_event());
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
                if a.is_none() {
                    break;
                }
            }
            if rng.chance(0.2) {
                loop {
                    let a = fast.poll_transmit(now, &mut buf);
                    let b = general.poll_transmit(now, &mut buf2);
                    assert_eq!(a, b, "{ctx}");
                    let Some(n) = a else { break };
                    assert_eq!(buf[..n], buf2[..n], "{ctx}");
                }
                now += Duration::from_millis(rng.below(15));
                fast.handle_timeout(now);
                general.handle_timeout(now);
                assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            }
        }
    }
    assert!(delivered > 10_000, "{delivered}");
    assert!(resets > 0 && resets < 200, "{resets}");
    let hits = super::recv::FAST_PATH_HITS.with(std::cell::Cell::get);
    assert!(
        hits.iter().all(|&h| h > 100),
        "a fast path hardly ran: {hits:?}"
    );
}

/// A connection with a first RTT sample (10 ms), then one packet of one message sent every
/// `gap`, `count` times: returns it, the packet numbers of those packets and the time of the
/// last.
fn sending_every(gap: Duration, count: usize) -> (Connection, Vec<u64>, Instant) {
    sending_every_with(gap, count, |_, _| {})
}

/// [`sending_every`], calling `after_each` after each of the `count` packets.
fn sending_every_with(
    gap: Duration,
    count: usize,
    mut after_each: impl FnMut(&mut Connection, Instant),
) -> (Connection, Vec<u64>, Instant) {
    let now0 = t0();
    let mut c = conn(Config::default(), now0);
    let mut buf = [0u8; 1500];
    let mut send_one = |c: &mut Connection, at: Instant| {
        c.send(at, b"x", Guarantee::ExactlyOnce).unwrap();
        let n = c.poll_transmit(at, &mut buf).unwrap();
        let (h, _) = wire::open(&buf[..n], &Crc32).unwrap();
        u64::from(h.packet_number)
    };
    let first = send_one(&mut c, now0);
    let mut now = now0 + Duration::from_millis(10);
    c.handle_datagram(now, &ack_of(0, &[first])).unwrap();
    assert!(c.rtt.has_samples());
    let pns = (0..count)
        .map(|_| {
            now += gap;
            let pn = send_one(&mut c, now);
            after_each(&mut c, now);
            pn
        })
        .collect();
    (c, pns, now)
}

/// A datagram (packet number `pn`) with one ACK frame for exactly `pns`.
fn ack_of(pn: u32, pns: &[u64]) -> Vec<u8> {
    let mut ranges: Vec<_> = pns.iter().map(|&p| p..p + 1).collect();
    ranges.sort_by_key(|r| std::cmp::Reverse(r.start));
    ack_datagram(pn, ranges)
}

/// Three probe timeouts, the persistent congestion period, of a connection of
/// [`sending_every`] after its first RTT sample.
fn persistent_period() -> Duration {
    let (c, _, _) = sending_every(Duration::from_millis(1), 0);
    3 * c.base_pto()
}

/// Acknowledges only the last of `pns` (sent at `last`), 10 ms later, in the peer's packet
/// `peer_pn`, and returns the counters then.
fn ack_only_the_last(c: &mut Connection, peer_pn: u32, pns: &[u64], last: Instant) -> Stats {
    let last_pn = pns[pns.len() - 1];
    let ack = ack_of(peer_pn, &[last_pn]);
    c.handle_datagram(last + Duration::from_millis(10), &ack)
        .unwrap();
    c.stats()
}

#[test]
fn losses_spanning_three_probe_timeouts_collapse_the_window() {
    // Eleven packets a quarter of the period apart; an ACK of the last alone, 10 ms after it,
    // declares the ten before it lost (by the packet and the time thresholds). They were sent
    // 2.25 periods apart with nothing acknowledged between them.
    let period = persistent_period();
    let (mut c, pns, last) = sending_every(period / 4, 11);
    let before = c.stats().cwnd;
    assert!(before > 2 * 1200, "{before}");
    let s = ack_only_the_last(&mut c, 1, &pns, last);
    assert_eq!((s.packets_lost, s.persistent_congestion), (10, 1), "{s:?}");
    assert_eq!(s.cwnd, 2 * c.config.max_datagram_size as u64);
}

#[test]
fn losses_within_three_probe_timeouts_or_split_by_an_acknowledgement_only_halve_the_window() {
    // The same eleven packets sixteen times closer together: ten lost, but within 0.6
    // periods.
    let period = persistent_period();
    let (mut c, pns, last) = sending_every(period / 16, 11);
    let before = c.stats().cwnd;
    let s = ack_only_the_last(&mut c, 1, &pns, last);
    assert_eq!((s.packets_lost, s.persistent_congestion), (10, 0), "{s:?}");
    assert_eq!(s.cwnd, before / 2);
    // A sixth of the period apart, so that the ten losses span 1.5 periods, but the sixth
    // packet acknowledged: the losses before it and after it each span less than the period
    // (which the second RTT sample makes about a sixth shorter).
    let (mut whole, pns, last) = sending_every(period / 6, 11);
    let s = ack_only_the_last(&mut whole, 1, &pns, last);
    assert_eq!(s.persistent_congestion, 1);
    let (mut c, pns, last) = sending_every(period / 6, 11);
    let before = c.stats().cwnd;
    c.handle_datagram(
        last + Duration::from_millis(10),
        &ack_of(1, &[pns[5], pns[10]]),
    )
    .unwrap();
    let s = c.stats();
    assert_eq!((s.packets_lost, s.persistent_congestion), (9, 0), "{s:?}");
    assert_eq!(s.cwnd, before / 2);
}

#[test]
fn acknowledgement_only_packets_between_losses_do_not_split_persistent_congestion() {
    // The peer's packets keep arriving (PINGs), and each is answered by an acknowledgement
    // alone, which is lost with the data packets around it: nothing sent between the lost
    // data packets was acknowledged, so the losses still establish persistent congestion.
    let period = persistent_period();
    let mut peer_pn = 1;
    let (mut c, pns, last) = sending_every_with(period / 4, 11, |c, now| {
        c.handle_datagram(now, &datagram(peer_pn, &[Frame::Ping]))
            .unwrap();
        peer_pn += 1;
        let due = now + Duration::from_millis(1);
        c.handle_timeout(due);
        let mut b = [0u8; 1500];
        let n = c.poll_transmit(due, &mut b).expect("an acknowledgement");
        let (h, _) = wire::open(&b[..n], &Crc32).unwrap();
        let pkt = c.ledger.get(u64::from(h.packet_number)).unwrap();
        assert!(!pkt.ack_eliciting);
    });
    let s = ack_only_the_last(&mut c, 12, &pns, last);
    assert_eq!((s.packets_lost, s.persistent_congestion), (10, 1), "{s:?}");
}

#[test]
fn a_violating_ack_stops_the_frames_after_it_in_its_packet() {
    // ACK frames are applied after the packet's other frames, but checked where they stand:
    // an ACK of a packet never sent closes the connection before the message after it is
    // delivered.
    let now = t0();
    let mut c = conn(Config::default(), now);
    let ack = ack_frame(std::iter::once(5..6));
    let d = datagram(
        0,
        &[one_frame(&ack), message(Guarantee::ExactlyOnce, 0, b"hi")],
    );
    let err = c.handle_datagram(now, &d).unwrap_err();
    assert!(matches!(err, DatagramError::ProtocolViolation(_)));
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Message(_))),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Closed { .. })));
}

#[test]
fn an_ack_frame_too_long_for_the_datagram_goes_out_with_its_highest_ranges() {
    // 64 received packet numbers 1.5 * 2^30 apart make 64 ranges with 8-byte gaps, about 600
    // bytes of ACK frame: a 512-byte datagram carries the highest ranges, halving their
    // number until the frame fits.
    const STEP: u64 = 3 << 29;
    let now = t0();
    let config = Config::default()
        .max_datagram_size(512)
        .max_message_size(64 << 10);
    let mut c = conn(config, now);
    for k in 0..64u64 {
        let pn = (k * STEP) as u32;
        c.handle_datagram(now, &datagram(pn, &[Frame::Ping]))
            .unwrap();
    }
    let mut buf = [0u8; 1500];
    let n = c.poll_transmit(now, &mut buf).expect("an acknowledgement");
    assert!(n <= 512, "{n}");
    let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
    let frames: Vec<_> = wire::frames(payload).map(|f| f.unwrap()).collect();
    let Frame::Ack(ack) = frames[0] else {
        panic!("{frames:?}")
    };
    let got: Vec<_> = ack.ranges().collect();
    let want: Vec<_> = (0..64u64)
        .rev()
        .map(|k| k * STEP..k * STEP + 1)
        .take(got.len())
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 32);
}

/// Two connections (`a`, cid 1, and `b`) on a link of `delay` rounds of 1 ms each way, in
/// virtual time from `start`: datagrams wait in `to_a` and `to_b` by the round they arrive in.
struct DelayedPair {
    a: Connection,
    b: Connection,
    to_a: Vec<Vec<Vec<u8>>>,
    to_b: Vec<Vec<Vec<u8>>>,
    start: Instant,
}

impl DelayedPair {
    fn new(rounds: usize, delay: usize) -> DelayedPair {
        let start = t0();
        let (a, b) = connection_pair(Config::default(), start);
        DelayedPair {
            a,
            b,
            to_a: vec![Vec::new(); rounds + delay + 1],
            to_b: vec![Vec::new(); rounds + delay + 1],
            start,
        }
    }

    /// Round `r` begins: what arrives now is handled and due timers fire. Returns the time.
    fn arrive(&mut self, r: usize) -> Instant {
        let now = self.start + Duration::from_millis(r as u64);
        for d in std::mem::take(&mut self.to_b[r]) {
            self.b.handle_datagram(now, &d).unwrap();
        }
        for d in std::mem::take(&mut self.to_a[r]) {
            self.a.handle_datagram(now, &d).unwrap();
        }
        for c in [&mut self.a, &mut self.b] {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        now
    }
}

/// Ranges in the ACK frame of a datagram, and whether it carries a PING.
fn ack_ranges_and_ping(datagram: &[u8]) -> (Option<usize>, bool) {
    let (_, payload) = wire::open(datagram, &Crc32).unwrap();
    let (mut ranges, mut ping) = (None, false);
    for f in wire::frames(payload) {
        match f.unwrap() {
            Frame::Ack(a) => ranges = Some(a.range_count()),
            Frame::Ping => ping = true,
            _ => {}
        }
    }
    (ranges, ping)
}

#[test]
fn a_receiver_that_only_acknowledges_keeps_its_ack_frames_short() {
    // At-most-once messages one way, every twentieth packet lost, 5 ms each way: the receiver
    // sends nothing but ACKs. About once a round trip one of them carries a PING; the
    // sender's acknowledgement of it lets the receiver stop reporting the gaps below, so its
    // ACK frames do not grow to `max_ack_ranges`.
    let (delay, rounds) = (5usize, 2_000usize);
    let mut p = DelayedPair::new(rounds, delay);
    let mut buf = [0u8; 1500];
    let (mut sent, mut max_ranges, mut pings, mut delivered) = (0usize, 0usize, 0usize, 0usize);
    let (mut last_ping, mut min_gap) = (None, usize::MAX);
    for r in 0..rounds {
        let now = p.arrive(r);
        let (a, b) = (&mut p.a, &mut p.b);
        for _ in 0..4 {
            a.send(now, &[7u8; 64], Guarantee::AtMostOnce).unwrap();
        }
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            sent += 1;
            if sent % 20 != 0 {
                p.to_b[r + delay].push(buf[..n].to_vec());
            }
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            let (ranges, ping) = ack_ranges_and_ping(&buf[..n]);
            if ping {
                if let Some(last) = last_ping {
                    min_gap = min_gap.min(r - last);
                }
                last_ping = Some(r);
            }
            if r >= rounds / 2 {
                max_ranges = max_ranges.max(ranges.unwrap_or(0));
                pings += usize::from(ping);
            }
            p.to_a[r + delay].push(buf[..n].to_vec());
        }
        delivered += messages(b).len();
        while a.poll_event().is_some() {}
    }
    assert!(delivered > rounds * 4 * 3 / 4, "delivered {delivered}");
    // The floor trails by a round trip or two: a handful of losses, not 64 ranges.
    assert!(max_ranges <= 16, "ACK frames of up to {max_ranges} ranges");
    // At most about one PING per 10 ms round trip over the last 1,000 rounds, and only while
    // a gap is reported.
    assert!((1..=110).contains(&pings), "{pings} PINGs");
    // Never two within a round trip (10 ms, and the smoothed RTT is at least that).
    assert!(
        last_ping.is_some() && min_gap < usize::MAX,
        "fewer than two PINGs"
    );
    assert!(min_gap >= 10, "PINGs {min_gap} ms apart");
}

#[test]
fn idle_peers_after_losses_settle_to_keepalives() {
    // Both ends send at-most-once messages for a second, then fall idle; a quarter of all
    // packets are lost (every fourth, or at random), 10 ms each way. ACKs that report gaps
    // carry PINGs, and a lost one makes the next packet (a probe) carry an ACK again, so the
    // report floors rise and the exchange dies down to keepalives. (A probe without an ACK
    // once kept two idle peers trading about 90 packets a second with the every-fourth
    // pattern.)
    for (random, seed) in [(false, 0), (true, 1), (true, 2)] {
        let mut rng = crate::rng::Rng::new(seed);
        let (delay, rounds) = (10usize, 30_000usize);
        let mut p = DelayedPair::new(rounds, delay);
        let mut buf = [0u8; 1500];
        let (mut sent, mut late) = (0usize, 0usize);
        for r in 0..rounds {
            let now = p.arrive(r);
            let (a, b) = (&mut p.a, &mut p.b);
            if r < 1000 {
                for _ in 0..3 {
                    a.send(now, &[7u8; 64], Guarantee::AtMostOnce).unwrap();
                    b.send(now, &[8u8; 64], Guarantee::AtMostOnce).unwrap();
                }
            }
            for (c, q) in [(&mut *a, &mut p.to_b), (&mut *b, &mut p.to_a)] {
                while let Some(n) = c.poll_transmit(now, &mut buf) {
                    sent += 1;
                    late += usize::from(r >= 20_000);
                    let lost = if random {
                        rng.below(4) == 0
                    } else {
                        sent % 4 == 0
                    };
                    if !lost {
                        q[r + delay].push(buf[..n].to_vec());
                    }
                }
            }
            while a.poll_event().is_some() {}
            while b.poll_event().is_some() {}
        }
        // Keepalives (one a second each way) and what their losses bring: well under the
        // 900 or so of the loop; and the peers are still connected.
        assert!(
            late < 250,
            "random {random}: {late} packets in the last 10 s"
        );
        assert_eq!(
            (p.a.state, p.b.state),
            (State::Established, State::Established)
        );
    }
}

#[test]
fn hostile_at_most_once_runs_match_the_general_path() {
    // At-most-once MESSAGES runs from a peer that sends what an honest one never does: runs
    // that cross the window's end or start beyond it or below its base, long runs, floors
    // near 2^62, a receive buffer too small for a run. The run's fast path and the general
    // path must leave the same results, state and events.
    use super::recv::FAST_PATH_HITS;
    let g = Guarantee::AtMostOnce;
    let mut rng = crate::rng::Rng::new(42);
    let mut fast_hits = 0u64;
    for seed in 0..40u64 {
        let now = t0();
        let window = [64u64, 77, 100, 128, 200][seed as usize % 5];
        let mut config = Config::default().amo_window(window);
        if seed % 3 == 1 {
            config = config
                .max_message_size(200)
                .max_fragments(2)
                .recv_buffer_bytes(600);
        }
        let mut fast = conn(config.clone(), now);
        let mut general = conn(config, now);
        let mut base_guess = 0u64;
        for pn in 1..400u32 {
            let mut raw = vec![0u8; 1600];
            let mut w = wire::Writer::new(&mut raw);
            let k = rng.below(10);
            if k == 0 {
                let floor = if rng.chance(0.1) {
                    (1u64 << 62) - 1 - rng.below(300)
                } else {
                    base_guess + rng.below(window)
                };
                Frame::AmoFloor {
                    floor: floor.min((1u64 << 62) - 1),
                }
                .emit(&mut w)
                .unwrap();
                base_guess = base_guess.max(floor.min((1u64 << 62) - 1));
            } else {
                let count = if rng.chance(0.1) {
                    60 + rng.below(200)
                } else {
                    1 + rng.below(8)
                };
                let first = base_guess
                    .saturating_add(rng.below(2 * window + 20))
                    .saturating_sub(rng.below(window / 2 + 10));
                let first = first.min((1u64 << 62) - count);
                let len = |i: u64| (i.wrapping_mul(7) % 30) as usize;
                let mut b = wire::MessagesWriter::begin(
                    &mut w,
                    g,
                    rng.below(3) as u8,
                    first,
                    None,
                    &vec![1u8; len(first)],
                )
                .unwrap();
                for i in 1..count.min(63) {
                    if b.push(&mut w, &vec![2u8; len(first + i)]).is_err() {
                        break;
                    }
                }
            }
            let n = w.position();
            raw.truncate(n);
            let frames: Vec<Frame<'_>> = wire::frames(&raw).map(|f| f.unwrap()).collect();
            let d = datagram(pn, &frames);
            let before = FAST_PATH_HITS.with(std::cell::Cell::get)[5];
            let a = fast.handle_datagram(now, &d);
            fast_hits += FAST_PATH_HITS.with(std::cell::Cell::get)[5] - before;
            let b = general_only(|| general.handle_datagram(now, &d));
            let ctx = format!("seed {seed} pn {pn} {frames:?}");
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
            assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            // Nothing here closes the connection (or every later step would compare two
            // closed ones).
            assert_eq!(fast.state, State::Established, "{ctx}");
            base_guess = base_guess.max(fast.rx.amo.base());
            if rng.chance(0.7) {
                loop {
                    let (x, y) = (fast.poll_event(), general.poll_event());
                    assert_eq!(format!("{x:?}"), format!("{y:?}"), "{ctx}");
                    if x.is_none() {
                        break;
                    }
                }
            }
        }
    }
    assert!(fast_hits > 5000, "{fast_hits}");
}

#[test]
fn hostile_reliable_runs_match_the_general_path() {
    // Reliable MESSAGES runs from a peer that sends what an honest one never does: ids
    // repeated, behind or far ahead; channel positions out of step with the ids, behind, or
    // straddling the channel window; FORWARD skips; fragments whose reassembly expires; small
    // receive buffers; both acknowledgement modes, with tokens acknowledged, rejected or kept
    // a while. The runs' fast paths and the general path must leave the same results, state
    // and events.
    use super::recv::FAST_PATH_HITS;
    let payload: Vec<u8> = (0..=255).collect();
    let mut resets = 0;
    let h0 = FAST_PATH_HITS.with(std::cell::Cell::get);
    for seed in 0..30u64 {
        let mut rng = crate::rng::Rng::new(7000 + seed);
        let mut now = t0();
        let mut config = Config::default()
            .window(256)
            .reassembly_timeout(Duration::from_millis(5));
        if seed % 2 == 1 {
            config = config.ack_mode(crate::config::AckMode::AfterProcessing);
        }
        if seed % 3 == 1 {
            config = config
                .max_message_size(200)
                .max_fragments(2)
                .recv_buffer_bytes(400 + 300 * (seed as usize % 7));
        }
        let mut fast = conn(config.clone(), now);
        let mut general = conn(config.clone(), now);
        let mut front = 0u64;
        let mut pn = 0u32;
        let mut keep = Vec::new();
        for step in 0..3000 {
            if fast.state != State::Established {
                resets += 1;
                fast = conn(config.clone(), now);
                general = conn(config.clone(), now);
                front = 0;
                pn = 0;
                // Tokens of the connections just replaced would only be refused.
                keep.clear();
            }
            let mut frames_raw: Vec<Vec<u8>> = Vec::new();
            for _ in 0..rng.range_inclusive(1, 3) {
                let mut raw = vec![0u8; 600];
                let mut w = wire::Writer::new(&mut raw);
                let k = rng.below(10);
                let channel = rng.below(3) as u8;
                let cn = fast
                    .rx
                    .channels
                    .get(channel as usize)
                    .and_then(|c| c.as_deref())
                    .map_or(0, |c| c.next());
                let seq = match rng.below(6) {
                    0 => cn + 250 + rng.below(12),
                    1 => cn.saturating_sub(2) + rng.below(4),
                    _ => cn + rng.below(40),
                };
                let id = match rng.below(8) {
                    0 => front.saturating_sub(rng.below(20)),
                    1 => front + 240 + rng.below(20),
                    _ => front + rng.below(12),
                };
                let g = if rng.chance(0.3) {
                    Guarantee::AtLeastOnce
                } else {
                    Guarantee::ExactlyOnce
                };
                if k < 6 {
                    let count = rng.range_inclusive(1, 24);
                    let ordered = rng.chance(0.8).then_some(seq);
                    let mut b = wire::MessagesWriter::begin(
                        &mut w,
                        g,
                        channel,
                        id,
                        ordered,
                        &payload[..rng.below(30) as usize],
                    )
                    .unwrap();
                    for _ in 1..count {
                        if b.push(&mut w, &payload[..rng.below(30) as usize]).is_err() {
                            break;
                        }
                    }
                    if rng.chance(0.5) {
                        front = front.max(id + count);
                    }
                } else if k < 8 {
                    let n = rng.range_inclusive(1, 4);
                    w.put_u8(0x05).unwrap();
                    w.put_varint(n).unwrap();
                    for i in 0..n {
                        w.put_varint(id + i).unwrap();
                        if rng.chance(0.7) {
                            w.put_u8(1).unwrap();
                            w.put_u8(channel).unwrap();
                            w.put_varint(seq + i).unwrap();
                        } else {
                            w.put_u8(0).unwrap();
                        }
                    }
                } else {
                    let (frag, len) = random_fragment(&mut rng, 0.7, 30);
                    Frame::Message(MessageFrame {
                        guarantee: g,
                        channel,
                        id,
                        chan_seq: rng.chance(0.6).then_some(seq),
                        fragment: frag,
                        payload: &payload[..len],
                    })
                    .emit(&mut w)
                    .unwrap();
                }
                let n = w.position();
                raw.truncate(n);
                frames_raw.push(raw);
            }
            let frames: Vec<Frame<'_>> = frames_raw
                .iter()
                .map(|r| wire::frames(r).next().unwrap().unwrap())
                .collect();
            pn += 1;
            let d = datagram(pn, &frames);
            let a = fast.handle_datagram(now, &d);
            let b = general_only(|| general.handle_datagram(now, &d));
            let ctx = format!("seed {seed} step {step} {frames:?}");
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
            assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            loop {
                let (a, b) = (fast.poll_event(), general.poll_event());
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
                let (Some(a), Some(b)) = (a, b) else { break };
                if let (Event::Message(a), Event::Message(b)) = (a, b) {
                    if let (Some(ta), Some(tb)) = (a.token, b.token) {
                        if rng.chance(0.2) {
                            keep.push((ta, tb));
                            continue;
                        }
                        let rej = rng.chance(0.1);
                        if rej {
                            fast.reject(now, ta).unwrap();
                        } else {
                            fast.ack(now, ta).unwrap();
                        }
                        general_only(|| {
                            if rej {
                                general.reject(now, tb).unwrap();
                            } else {
                                general.ack(now, tb).unwrap();
                            }
                        });
                    }
                }
                if rng.chance(0.3) {
                    break;
                }
            }
            if rng.chance(0.3) {
                while let Some((ta, tb)) = keep.pop() {
                    let a = fast.ack(now, ta);
                    let b = general_only(|| general.ack(now, tb));
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{ctx}");
                }
            }
            assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            if rng.chance(0.2) {
                now += Duration::from_millis(rng.below(8));
                fast.handle_timeout(now);
                general_only(|| general.handle_timeout(now));
                assert_eq!(receive_side(&fast), receive_side(&general), "{ctx}");
            }
        }
        keep.clear();
    }
    let h1 = FAST_PATH_HITS.with(std::cell::Cell::get);
    let (unordered, ordered) = (h1[6] - h0[6], h1[7] - h0[7]);
    assert!(unordered > 50 && ordered > 100, "{unordered} {ordered}");
    assert!(resets > 0 && resets < 200, "{resets}");
}

#[test]
fn an_ordered_channel_keeps_no_slots_once_nothing_is_held() {
    // On each of the 256 channels, position 64 arrives first and is held, then 0..64 in two
    // runs release everything. No channel keeps ring memory the receive buffer no longer
    // counts (a ring that kept 64 slots would keep 640 KiB here against a 5,000-byte buffer).
    let now = t0();
    let config = Config::default()
        .max_datagram_size(512)
        .max_message_size(200)
        .max_fragments(2)
        .recv_buffer_bytes(5000);
    let mut c = conn(config, now);
    let (mut pn, mut id) = (0u32, 0u64);
    let g = Guarantee::ExactlyOnce;
    let mut raw = [0u8; 512];
    for ch in 0..=255u8 {
        let m = Frame::Message(MessageFrame {
            guarantee: g,
            channel: ch,
            id,
            chan_seq: Some(64),
            fragment: None,
            payload: b"",
        });
        c.handle_datagram(now, &datagram(pn, &[m])).unwrap();
        assert!(c.rx.received.contains(u64::from(pn)), "channel {ch}");
        (pn, id) = (pn + 1, id + 1);
        for first in [0, 32] {
            let mut w = wire::Writer::new(&mut raw);
            let mut b = wire::MessagesWriter::begin(&mut w, g, ch, id, Some(first), b"").unwrap();
            for _ in 1..32 {
                b.push(&mut w, b"").unwrap();
            }
            let n = w.position();
            c.handle_datagram(now, &datagram(pn, &[one_frame(&raw[..n])]))
                .unwrap();
            (pn, id) = (pn + 1, id + 32);
            while c.poll_event().is_some() {}
        }
        let channel = c.rx.channels[ch as usize].as_deref().unwrap();
        assert_eq!(channel.next(), 65, "channel {ch}");
    }
    let slots: usize =
        c.rx.channels
            .iter()
            .flatten()
            .map(|ch| ch.ring_capacity())
            .sum();
    assert_eq!((slots, c.rx.buffered_bytes()), (0, 0));
}

/// Retransmitted MESSAGES runs that span ids the receiver has and ids it lacks (every other
/// packet was lost), and then runs of nothing but duplicates, deliver each message once
/// (exactly-once; ordered at-least-once too, in order) with its own payload, and at least
/// once unordered at-least-once; no protocol violation.
#[test]
fn retransmitted_runs_partly_received_deliver_each_message_once() {
    for ordered in [false, true] {
        for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
            let now = t0();
            let (mut a, mut b) = connection_pair(
                Config::default().congestion(crate::CongestionControl::None),
                now,
            );
            for i in 0..40u8 {
                let opts = crate::message::SendOptions::new(g).ordered(ordered);
                a.send_message(now, &[i; 200], opts).unwrap();
            }
            let mut buf = [0u8; 1500];
            let mut first = Vec::new();
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                first.push(buf[..n].to_vec());
            }
            // 40 messages of 200 bytes in datagrams of at most 1,200.
            assert!(first.len() >= 7, "{}", first.len());
            // Odd packets arrive, even ones are lost; then everything is queued again (as
            // after a lost acknowledgement and a probe).
            for p in first.iter().skip(1).step_by(2) {
                b.handle_datagram(now, p).unwrap();
            }
            let inflight =
                |s: super::send::FragState| matches!(s, super::send::FragState::InFlight(_));
            for id in (2..40).chain(0..2) {
                a.requeue(id, 0, inflight);
            }
            let mut runs = 0;
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
                runs += wire::frames(payload)
                    .filter(|f| matches!(f, Ok(Frame::Messages(m)) if m.len() > 1))
                    .count();
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
            assert!(runs > 0, "retransmissions went out in runs");
            // Once more, all duplicates.
            for id in 0..40 {
                a.requeue(id, 0, inflight);
            }
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                b.handle_datagram(now, &buf[..n]).unwrap();
            }
            assert!(a.retx.is_empty());
            let got = messages(&mut b);
            for (id, p) in &got {
                assert_eq!(p, &vec![*id as u8; 200]);
            }
            let mut ids: Vec<u64> = got.iter().map(|m| m.0).collect();
            let all: Vec<u64> = (0..40).collect();
            if ordered {
                assert_eq!(ids, all, "{g:?} ordered");
            }
            if g == Guarantee::AtLeastOnce && !ordered {
                ids.sort_unstable();
                ids.dedup();
            }
            ids.sort_unstable();
            assert_eq!(ids, all, "{g:?} ordered: {ordered}");
            assert!(b.violation.is_none());
        }
    }
}

/// A lost packet that carried no ACK brings no ACK back: the probe sent after the loss of a
/// data packet, when everything received was already acknowledged, has no ACK frame. (Only a
/// lost ACK the peer may not have seen is repeated.)
#[test]
fn a_lost_packet_without_an_ack_brings_no_ack_back() {
    let now = t0();
    let mut c = conn(Config::default(), now);
    let mut buf = [0u8; 1500];
    let frames_of = |buf: &[u8]| -> Vec<String> {
        let (_, payload) = wire::open(buf, &Crc32).unwrap();
        wire::frames(payload)
            .map(|f| format!("{:?}", f.unwrap()).chars().take(4).collect())
            .collect()
    };
    // The peer's PING, acknowledged once the ack delay has passed.
    c.handle_datagram(now, &datagram(0, &[Frame::Ping]))
        .unwrap();
    let later = now + Duration::from_millis(5);
    c.handle_timeout(later);
    let n = c.poll_transmit(later, &mut buf).unwrap();
    assert!(frames_of(&buf[..n]).iter().any(|f| f.starts_with("Ack")));
    assert_eq!(c.poll_transmit(later, &mut buf), None);
    // A message, in a packet with no ACK (nothing new to acknowledge); it is lost.
    c.send(later, &[1; 10], Guarantee::ExactlyOnce).unwrap();
    let n = c.poll_transmit(later, &mut buf).unwrap();
    assert!(!frames_of(&buf[..n]).iter().any(|f| f.starts_with("Ack")));
    // The probe timeout sends the message again, still without an ACK.
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t);
    let n = c.poll_transmit(t, &mut buf).unwrap();
    let probe = frames_of(&buf[..n]);
    assert!(probe.iter().any(|f| f.starts_with("Mess")), "{probe:?}");
    assert!(!probe.iter().any(|f| f.starts_with("Ack")), "{probe:?}");
}

/// At-most-once messages recorded as one ledger entry per MESSAGES frame end as they do with
/// one entry per message (the packets are the same): the same Delivered and
/// Undeliverable(Lost) events in the same order, the same latencies, queue front and floor
/// after every round, and pending counts, with a quarter of the packets lost, gaps (messages whose deadline passed),
/// fragmented messages and two channels among them.
#[test]
fn at_most_once_run_entries_end_messages_as_entries_per_message_do() {
    use super::transmit::AMO_ENTRY_PER_MESSAGE;
    let mut results = Vec::new();
    for per_message in [false, true] {
        AMO_ENTRY_PER_MESSAGE.with(|f| f.set(per_message));
        let start = t0();
        let (mut a, mut b) = connection_pair(
            Config::default().congestion(crate::CongestionControl::None),
            start,
        );
        let mut rng = crate::rng::Rng::new(9);
        let (mut events, mut packets, mut runs) = (Vec::new(), 0u64, 0usize);
        // The queue's front and floor after each round.
        let mut fronts = Vec::new();
        let mut buf = [0u8; 1500];
        for round in 0..200u64 {
            let now = start + Duration::from_millis(round);
            if round < 100 {
                for _ in 0..20 {
                    let size = if rng.below(16) == 0 { 3000 } else { 40 };
                    let mut opts = crate::message::SendOptions::new(Guarantee::AtMostOnce)
                        .channel(u8::from(rng.below(8) == 0));
                    if rng.below(10) == 0 {
                        opts = opts.deadline(Duration::from_micros(500));
                    }
                    a.send_message(now, &vec![7; size], opts).unwrap();
                }
            }
            a.handle_timeout(now);
            b.handle_timeout(now);
            while let Some(n) = a.poll_transmit(now, &mut buf) {
                packets += 1;
                let (_, payload) = wire::open(&buf[..n], &Crc32).unwrap();
                runs += wire::frames(payload)
                    .filter(|f| matches!(f, Ok(Frame::Messages(m)) if m.len() > 1))
                    .count();
                if rng.below(4) != 0 {
                    b.handle_datagram(now, &buf[..n]).unwrap();
                }
            }
            while let Some(n) = b.poll_transmit(now, &mut buf) {
                a.handle_datagram(now, &buf[..n]).unwrap();
            }
            while let Some(ev) = a.poll_event() {
                events.push(format!("{ev:?}"));
            }
            while b.poll_event().is_some() {}
            fronts.push((a.amo_base, a.amo_floor_dirty, a.amo_floor_acked));
        }
        AMO_ENTRY_PER_MESSAGE.with(|f| f.set(false));
        // At least one run in each of the 100 rounds that send.
        assert!(runs > 100, "{runs} runs");
        let s = a.stats();
        results.push((
            events,
            fronts,
            packets,
            (
                a.amo_base,
                a.amo_floor_acked,
                a.pending_messages,
                a.pending_bytes,
            ),
            (s.delivered, s.latency.count(), s.latency.quantile(0.5)),
        ));
    }
    let delivered = results[0]
        .0
        .iter()
        .filter(|e| e.starts_with("Delivered"))
        .count();
    let lost = results[0].0.iter().filter(|e| e.contains("Lost")).count();
    let ended = results[0]
        .0
        .iter()
        .filter(|e| e.starts_with("Undeliverable"))
        .count();
    // 2,000 messages, a quarter of the packets lost: every message has its one outcome.
    assert!(
        delivered > 1200 && lost > 400 && delivered + ended == 2000,
        "{delivered} delivered, {lost} lost, {ended} undeliverable"
    );
    assert_eq!(results[0], results[1]);
}

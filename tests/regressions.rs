//! Regression tests for bugs found in review of the protocol core, one per bug.
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::wire::{self, Crc32, Frame};
use surely::{AckMode, Config, Connection, Event, Guarantee, SendOptions, State};

fn t0() -> Instant {
    Instant::now()
}

/// Moves every datagram `from` has now to `to` (or drops them); returns how many.
fn xfer(from: &mut Connection, to: &mut Connection, now: Instant, deliver: bool) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while let Some(len) = from.poll_transmit(now, &mut buf) {
        n += 1;
        if deliver {
            let _ = to.handle_datagram(now, &buf[..len]);
        }
        assert!(n < 10_000, "endless transmit");
    }
    n
}

/// Every datagram `c` has now, as owned bytes.
fn drain(c: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while let Some(len) = c.poll_transmit(now, &mut buf) {
        out.push(buf[..len].to_vec());
        assert!(out.len() < 10_000, "endless transmit");
    }
    out
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn datagram_to_b(pn: u64, frames: &[Frame<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let header = wire::Header {
        packet_type: wire::PacketType::Data,
        conn_id: 2,
        packet_number: surely::PacketNumber(pn).truncate(),
    };
    let n = wire::encode_datagram(&mut buf, &header, frames, &Crc32).unwrap();
    buf.truncate(n);
    buf
}

/// Whether any datagram carries a frame matching `pred`.
fn any_frame(dgs: &[Vec<u8>], pred: impl Fn(&Frame<'_>) -> bool) -> bool {
    dgs.iter().any(|d| {
        let (_, payload) = wire::open(d, &Crc32).unwrap();
        wire::frames(payload).any(|f| f.is_ok_and(|f| pred(&f)))
    })
}

/// Drives `a` and `b` over a perfect zero-delay link until `until`, acking every token at b.
/// Returns a's outcome events.
fn run(a: &mut Connection, b: &mut Connection, now: &mut Instant, until: Instant) -> Vec<Event> {
    let mut out = Vec::new();
    for _ in 0..200_000 {
        for _ in 0..4 {
            xfer(a, b, *now, true);
            for ev in events(b) {
                if let Event::Message(m) = ev {
                    if let Some(t) = m.token {
                        b.ack(*now, t).unwrap();
                    }
                }
            }
            xfer(b, a, *now, true);
        }
        out.extend(events(a));
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        if next > until {
            break;
        }
        *now = next.max(*now);
        a.handle_timeout(*now);
        b.handle_timeout(*now);
    }
    out
}

/// A connection in DRAINING keeps processing ACK frames, and `on_ack_frame` re-arms the loss
/// timer (`enter_draining` had cleared it). When the RTT is large enough that the backed-off PTO
/// is capped at `max_rto` (here PTO 3 s > max_rto 2 s), `on_loss_timer` re-arms the timer at
/// `last_eliciting_sent + max_rto`, i.e. the instant that just fired: nothing can be sent in
/// DRAINING to move `last_eliciting_sent`, so `poll_timeout()` stays in the past and a driver
/// loop spins until the close timer (9 s of virtual time; forever at a fixed `now`).
#[test]
fn draining_loss_timer_rearmed_in_the_past_livelocks() {
    let start = t0();
    let ca = Arc::new(Config::default().initial_rtt(Duration::from_secs(1)));
    let mut a = Connection::new(ca, 1, 2, start).unwrap();
    let mut b = Connection::new(Arc::new(Config::default()), 2, 1, start).unwrap();
    // One second in, a's keepalive PING (P1, held back) then a message packet (P2, lost).
    let mut now = start + Duration::from_secs(1);
    a.handle_timeout(now);
    let p1 = drain(&mut a, now);
    assert_eq!(p1.len(), 1);
    a.send(now, b"y", Guarantee::AtMostOnce).unwrap();
    assert_eq!(drain(&mut a, now).len(), 1);
    // b closes; its CLOSE reaches a, which drains (its ACK of the CLOSE is lost).
    b.close(now);
    xfer(&mut b, &mut a, now, true);
    assert_eq!(a.state(), State::Draining);
    drain(&mut a, now);
    // The late PING reaches b, whose ACK of it reaches a in DRAINING.
    b.handle_datagram(now, &p1[0]).unwrap();
    now += Duration::from_millis(2);
    b.handle_timeout(now);
    assert!(xfer(&mut b, &mut a, now, true) > 0);
    for _ in 0..1000 {
        let Some(t) = a.poll_timeout() else { break };
        now = now.max(t);
        a.handle_timeout(now);
        drain(&mut a, now);
        if let Some(next) = a.poll_timeout() {
            assert!(
                next > now,
                "timer {:?} still due after handle_timeout at {:?}: {a:?}",
                next - start,
                now - start
            );
        }
    }
    assert!(a.is_closed());
}

/// After-processing mode: the receiver holds message 0 (seen, not complete) when the sender
/// abandons it (FORWARD ignored: "it completes normally"); then the application rejects it.
/// The sender ignores the REJECT (no such message), the FORWARD is not sent again, and the
/// receiver's cumulative point stays at 0 forever: the window never opens again.
#[test]
fn forward_of_held_message_then_reject_stalls_the_window() {
    let mut now = t0();
    let start = now;
    let ca = Arc::new(Config::default().window(256));
    let cb = Arc::new(
        Config::default()
            .window(256)
            .ack_mode(AckMode::AfterProcessing),
    );
    let mut a = Connection::new(ca, 1, 2, now).unwrap();
    let mut b = Connection::new(cb, 2, 1, now).unwrap();
    let opts = SendOptions::new(Guarantee::ExactlyOnce).deadline(Duration::from_millis(50));
    a.send(now, b"first", opts).unwrap();
    xfer(&mut a, &mut b, now, true);
    let mut token = None;
    for ev in events(&mut b) {
        if let Event::Message(m) = ev {
            token = m.token;
        }
    }
    let token = token.expect("token");
    xfer(&mut b, &mut a, now, true);
    // The deadline passes: Undeliverable, FORWARD 0 reaches b, which still holds the token.
    now += Duration::from_millis(60);
    a.handle_timeout(now);
    b.handle_timeout(now);
    assert!(
        events(&mut a)
            .iter()
            .any(|e| matches!(e, Event::Undeliverable { .. }))
    );
    xfer(&mut a, &mut b, now, true);
    xfer(&mut b, &mut a, now, true);
    // Now the application rejects it.
    b.reject(now, token).unwrap();
    xfer(&mut b, &mut a, now, true);
    xfer(&mut a, &mut b, now, true);
    // 300 more messages: ids 1..=300, more than the 256-id window.
    for i in 0..300u32 {
        a.send(now, &i.to_le_bytes(), Guarantee::ExactlyOnce)
            .unwrap();
    }
    let evs = run(&mut a, &mut b, &mut now, start + Duration::from_secs(8));
    let delivered = evs
        .iter()
        .filter(|e| matches!(e, Event::Delivered { .. }))
        .count();
    assert_eq!(delivered, 300, "pending: {} ({a:?})", a.pending_messages());
}

/// Acknowledge-on-receipt, at-least-once, fragmented, id 1 complete above a gap at id 0 (so
/// still inside the window, seen and complete): a spurious retransmission of one
/// fragment (a probe timeout) after the message was delivered opens a new partial
/// reassembly for an id already complete. It holds buffer space and a reassembly slot, and
/// when it expires the receiver sends REJECT for a message it already has; the id stays in
/// `rx.rejects` forever (it can never "arrive again" as new).
#[test]
fn duplicate_fragment_of_delivered_message_reassembles_and_rejects() {
    let now = t0();
    let config = Arc::new(Config::default().reassembly_timeout(Duration::from_secs(1)));
    let mut b = Connection::new(config, 2, 1, now).unwrap();
    let data = [7u8; 100];
    let frag = |i: u64| {
        let r = wire::Fragment::byte_range(100, 2, i).unwrap();
        Frame::Message(wire::MessageFrame {
            guarantee: Guarantee::AtLeastOnce,
            channel: 0,
            id: 1,
            chan_seq: None,
            fragment: Some(wire::Fragment {
                total_len: 100,
                count: 2,
                index: i,
            }),
            payload: &data[r.start as usize..r.end as usize],
        })
    };
    b.handle_datagram(now, &datagram_to_b(0, &[frag(0), frag(1)]))
        .unwrap();
    assert_eq!(
        events(&mut b)
            .iter()
            .filter(|e| matches!(e, Event::Message(_)))
            .count(),
        1
    );
    drain(&mut b, now);
    // The probe resends fragment 0.
    b.handle_datagram(now, &datagram_to_b(1, &[frag(0)]))
        .unwrap();
    let held = b.receive_buffered_bytes();
    let later = now + Duration::from_secs(2);
    b.handle_timeout(later);
    let out = drain(&mut b, later);
    let reject = any_frame(&out, |f| matches!(f, Frame::Reject(_)));
    assert!(
        held == 0 && !reject,
        "partial for a delivered id holds {held} bytes; REJECT sent: {reject}"
    );
}

/// SHUTDOWN moves to CLOSING "once nothing is pending", but the time-threshold branch of
/// `on_loss_timer` (which ends at-most-once messages Lost and may exhaust retry budgets) returns
/// before `maybe_finish_shutdown`: the connection sits in SHUTDOWN with nothing pending until
/// some unrelated datagram or the drain timeout (5 s) comes along.
#[test]
fn shutdown_stalls_when_last_outcome_comes_from_the_loss_timer() {
    let t = t0();
    let config = Arc::new(Config::default().keepalive_interval(None));
    let mut a = Connection::new(config.clone(), 1, 2, t).unwrap();
    let mut b = Connection::new(config, 2, 1, t).unwrap();
    a.send(t, b"one", Guarantee::AtMostOnce).unwrap();
    assert_eq!(drain(&mut a, t).len(), 1); // lost
    let t1 = t + Duration::from_millis(1);
    a.send(t1, b"two", Guarantee::AtMostOnce).unwrap();
    xfer(&mut a, &mut b, t1, true);
    a.close(t1);
    assert_eq!(a.state(), State::Shutdown);
    let t2 = t + Duration::from_millis(2);
    b.handle_timeout(t2);
    let acks = drain(&mut b, t2);
    assert!(!acks.is_empty());
    // The ACK takes 100 ms: P1 is not yet lost by the time threshold; a loss timer is set.
    let t3 = t + Duration::from_millis(101);
    for d in &acks {
        a.handle_datagram(t3, d).unwrap();
    }
    assert_eq!(a.pending_messages(), 1);
    let t4 = a.poll_timeout().unwrap();
    assert!(t4 < t + Duration::from_millis(200), "loss timer expected");
    a.handle_timeout(t4);
    assert_eq!(a.pending_messages(), 0);
    assert_eq!(
        a.state(),
        State::Closing,
        "nothing pending, still in SHUTDOWN"
    );
}

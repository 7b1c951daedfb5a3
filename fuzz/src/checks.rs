//! The checks of the `decode` and `connection` fuzz targets, with no dependency besides
//! `surely` and `std`, so that `tests/fuzz_corpus.rs` in the main crate replays the committed
//! corpus through exactly the same code on stable (`#[path]`-included there).
//!
//! Under `cfg(fuzzing)` the CRC always verifies, so fuzzer inputs reach the frame logic; in the
//! replay the CRC is checked, so the connection harness re-seals every datagram it injects
//! (unless the input asks it not to).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surely::congestion::CongestionControl;
use surely::wire::{self, Crc32, Frame, HandshakePacket, PacketType};
use surely::{AckMode, AckToken, Config, Connection, Event, Guarantee, SendOptions, State};

// ------------------------------------------------------------------------------------ decode

/// The `decode` target: any bytes into `wire::open`, `validate` and `frames`. Never panics;
/// `validate` agrees with `frames`; whatever validates re-encodes (same header) to a datagram
/// that parses to equal frames, no longer than the original. Handshake packets that parse
/// re-encode to an equal packet.
pub fn check_decode(data: &[u8]) {
    let Ok((header, payload)) = wire::open(data, &Crc32) else {
        return;
    };
    if header.packet_type != PacketType::Data {
        check_handshake(&header, payload, data.len());
    }
    let valid = wire::validate(payload);
    let parsed: Result<Vec<Frame<'_>>, _> = wire::frames(payload).collect();
    match (&valid, &parsed) {
        (Ok(()), Ok(frames)) => assert!(!frames.is_empty(), "validated payload without frames"),
        (Ok(()), Err(e)) => panic!("validate accepted what frames() rejects: {e:?}"),
        (Err(_), Ok(frames)) => assert!(
            frames.is_empty(),
            "validate rejected frames() parsed whole: {frames:?}"
        ),
        (Err(a), Err(b)) => assert_eq!(a, b, "validate and frames() disagree on the error"),
    }
    let Ok(frames) = parsed else {
        return;
    };
    if valid.is_err() {
        return;
    }
    // A padding run is one frame: two paddings in a row would have been merged.
    for pair in frames.windows(2) {
        assert!(
            !matches!(pair, [Frame::Padding { .. }, Frame::Padding { .. }]),
            "adjacent padding frames: {pair:?}"
        );
    }
    let sum: usize = frames.iter().map(Frame::encoded_len).sum();
    assert!(
        sum <= payload.len(),
        "encoded_len sum {sum} > {}",
        payload.len()
    );
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let n = wire::encode_datagram(&mut buf, &header, &frames, &Crc32)
        .unwrap_or_else(|e| panic!("re-encoding validated frames failed: {e:?} {frames:?}"));
    assert_eq!(
        n,
        wire::HEADER_LEN + sum + 4,
        "encoded length != encoded_len sum"
    );
    assert!(n <= data.len(), "re-encoding grew the datagram");
    let (h2, p2) = wire::open(&buf[..n], &Crc32).expect("re-encoded datagram does not open");
    assert_eq!(h2, header);
    wire::validate(p2).expect("re-encoded datagram does not validate");
    let again: Vec<Frame<'_>> = wire::frames(p2)
        .collect::<Result<_, _>>()
        .expect("re-encoded frames do not parse");
    assert_eq!(again, frames, "re-encoded frames differ");
}

fn check_handshake(header: &wire::Header, body: &[u8], len: usize) {
    let Ok(packet) = HandshakePacket::parse(header, body, len) else {
        return;
    };
    assert_eq!(packet.packet_type(), header.packet_type);
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let n = packet
        .encode(&mut buf, &Crc32)
        .unwrap_or_else(|e| panic!("re-encoding {packet:?} failed: {e:?}"));
    let again = HandshakePacket::decode(&buf[..n], &Crc32).expect("re-encoded handshake");
    assert_eq!(again, packet);
}

// -------------------------------------------------------------------------------- connection

/// Operation codes of the connection harness's input (one byte each, modulo [`OPS`]).
pub mod op {
    /// `flags u8, len u16 BE, bytes`: a datagram for the connection under test (B). Flags:
    /// bit 0 writes B's connection id into bytes 2..10, bit 1 forces version and DATA type,
    /// bit 2 leaves the tag as it is (otherwise the datagram is re-sealed).
    pub const INJECT: u8 = 0;
    /// `u16 BE`: advance time (100 us units; with the top bit, to the next deadline), fire
    /// timers, transmit.
    pub const ADVANCE: u8 = 1;
    /// `u8 options, u16 BE length`: B sends a message.
    pub const SEND_B: u8 = 2;
    /// `u8 options, u16 BE length`: the peer (A) sends a message.
    pub const SEND_A: u8 = 3;
    /// `u8 drop mask`: deliver every queued datagram both ways (dropping by the mask).
    pub const EXCHANGE: u8 = 4;
    /// `u16 BE index, u8 value`: A's next datagram with one byte replaced, re-sealed, to B.
    pub const MUTATE: u8 = 5;
    /// Acknowledge B's oldest token.
    pub const ACK: u8 = 6;
    /// Reject B's oldest token.
    pub const REJECT: u8 = 7;
    /// Drop B's oldest token (counts as a rejection).
    pub const DROP_TOKEN: u8 = 8;
    /// B closes.
    pub const CLOSE_B: u8 = 9;
    /// A closes.
    pub const CLOSE_A: u8 = 10;
    /// `u8 index`: deliver one of A's recent datagrams to B again (a network duplicate).
    pub const REPLAY: u8 = 11;
}
/// Number of operation codes.
pub const OPS: u8 = 12;

/// A cursor over fuzzer bytes that answers zeros once they run out.
pub struct Input<'a> {
    /// The bytes not read yet.
    pub data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// The configuration selected by the input's first byte. Both ends use it.
pub fn harness_config(sel: u8) -> Config {
    let mut c = Config::default().rng_seed(u64::from(sel));
    if sel & 1 != 0 {
        c = c.ack_mode(AckMode::AfterProcessing);
    }
    match (sel >> 1) & 3 {
        0 => {}
        1 => c = c.max_ack_delay(Duration::ZERO),
        2 => {
            c = c
                .min_rto(Duration::from_millis(1))
                .max_rto(Duration::from_millis(20))
                .initial_rtt(Duration::from_millis(5))
        }
        _ => c = c.max_ack_delay(Duration::from_millis(25)),
    }
    if sel & 8 != 0 {
        // Small buffers and windows, so that the fuzzer reaches every cap.
        c = c
            .max_message_size(4096)
            .max_fragments(8)
            .recv_buffer_bytes(6000)
            .send_buffer_bytes(8192)
            .max_pending_messages(16)
            .max_partial_messages(2)
            .window(256)
            .amo_window(64)
            .reassembly_timeout(Duration::from_millis(300));
    } else {
        c = c
            .max_message_size(16 * 1024)
            .recv_buffer_bytes(64 * 1024)
            .send_buffer_bytes(64 * 1024)
            .max_pending_messages(256);
    }
    if sel & 16 != 0 {
        c = c.default_deadline(Some(Duration::from_millis(50)));
    }
    if sel & 32 != 0 {
        c = c
            .keepalive_interval(None)
            .idle_timeout(Duration::from_secs(2))
            .drain_timeout(Duration::from_millis(500))
            .default_max_retransmits(3);
    }
    if sel & 64 != 0 {
        c = c.congestion(CongestionControl::None);
    }
    if sel & 128 != 0 {
        // Packet numbers and ids close to the 32-bit wrap of the wire packet number.
        c = c
            .initial_packet_number((1 << 32) - 3)
            .initial_message_id((1 << 32) - 3);
    }
    c
}

const MAX_QUEUE: usize = 256;
const MAX_HISTORY: usize = 16;
const BURST_LIMIT: usize = 10_000;

/// Two connections joined by hand: A (the honest peer) and B (the connection under test, which
/// also gets the fuzzer's datagrams).
pub struct ConnHarness {
    config: Arc<Config>,
    now: Instant,
    a: Connection,
    b: Connection,
    to_b: VecDeque<Vec<u8>>,
    to_a: VecDeque<Vec<u8>>,
    history: VecDeque<Vec<u8>>,
    tokens: VecDeque<AckToken>,
    /// Messages accepted by `send`, by payload tag: (sent by A, guarantee, length).
    sent: HashMap<u64, (bool, Guarantee, usize)>,
    next_tag: u64,
    /// Exactly-once and at-most-once tags handed over (each tag is sent by one side only).
    once: HashSet<u64>,
    /// Tags of B's messages whose tokens went to the application (they may be rejected and
    /// delivered again).
    rejected: Vec<u64>,
    /// No fuzzer-made bytes reached a connection: every delivery must be a sent message.
    clean: bool,
    buf: Vec<u8>,
}

impl ConnHarness {
    /// Two fresh established connections with the configuration `sel` selects.
    pub fn new(sel: u8, start: Instant) -> Self {
        let config = Arc::new(harness_config(sel));
        let a = Connection::new(config.clone(), 1, 2, start).expect("harness config is valid");
        let b = Connection::new(config.clone(), 2, 1, start).expect("harness config is valid");
        ConnHarness {
            buf: vec![0u8; config.max_datagram_size.max(2048)],
            config,
            now: start,
            a,
            b,
            to_b: VecDeque::new(),
            to_a: VecDeque::new(),
            history: VecDeque::new(),
            tokens: VecDeque::new(),
            sent: HashMap::new(),
            next_tag: 0,
            once: HashSet::new(),
            rejected: Vec::new(),
            clean: true,
        }
    }

    /// Runs the whole input: a configuration byte, then operations until the input ends.
    pub fn run(data: &[u8], start: Instant) {
        let mut input = Input { data };
        let mut h = ConnHarness::new(input.u8(), start);
        let mut steps = 0;
        while !input.is_empty() && steps < 512 {
            h.step(&mut input);
            steps += 1;
        }
        // Let it settle: a few rounds of exchange and timers must not panic either.
        for _ in 0..4 {
            h.exchange(0);
            h.advance_to_next();
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let now = self.now;
        match input.u8() % OPS {
            op::INJECT => {
                let flags = input.u8();
                let len = usize::from(input.u16()) % 2048;
                let mut d = input.bytes(len).to_vec();
                self.clean = false;
                if flags & 1 != 0 && d.len() >= 10 {
                    d[2..10].copy_from_slice(&self.b.local_cid().to_be_bytes());
                }
                if flags & 2 != 0 && d.len() >= 2 {
                    d[0] = wire::VERSION;
                    d[1] = PacketType::Data as u8;
                }
                if flags & 4 == 0 {
                    reseal(&mut d);
                }
                let _ = self.b.handle_datagram(now, &d);
                self.check_after_input();
            }
            op::ADVANCE => {
                let v = input.u16();
                if v & 0x8000 != 0 {
                    self.advance_to_next();
                } else {
                    self.advance(Duration::from_micros(u64::from(v) * 100));
                }
            }
            op::SEND_B => self.send(false, input.u8(), input.u16()),
            op::SEND_A => self.send(true, input.u8(), input.u16()),
            op::EXCHANGE => self.exchange(input.u8()),
            op::MUTATE => {
                let idx = usize::from(input.u16());
                let val = input.u8();
                self.transmit_all();
                if let Some(mut d) = self.to_b.pop_front() {
                    self.clean = false;
                    let i = idx % d.len();
                    d[i] = val;
                    reseal(&mut d);
                    let _ = self.b.handle_datagram(now, &d);
                    self.check_after_input();
                }
            }
            op::ACK => {
                if let Some(t) = self.tokens.pop_front() {
                    self.b.ack(now, t).expect("B's own token");
                }
            }
            op::REJECT => {
                if let Some(t) = self.tokens.pop_front() {
                    self.b.reject(now, t).expect("B's own token");
                }
            }
            op::DROP_TOKEN => drop(self.tokens.pop_front()),
            op::CLOSE_B => self.b.close(now),
            op::CLOSE_A => self.a.close(now),
            _ => {
                let i = usize::from(input.u8());
                if !self.history.is_empty() {
                    let d = self.history[i % self.history.len()].clone();
                    let _ = self.b.handle_datagram(now, &d);
                    self.check_after_input();
                }
            }
        }
        self.check_caps();
        self.drain_events();
        self.check_caps();
    }

    fn send(&mut self, from_a: bool, opts: u8, len: u16) {
        let guarantee = match opts % 3 {
            0 => Guarantee::AtMostOnce,
            1 => Guarantee::AtLeastOnce,
            _ => Guarantee::ExactlyOnce,
        };
        let mut o = SendOptions::new(guarantee)
            .channel((opts >> 4) & 3)
            .ordered(opts & 4 != 0);
        if opts & 8 != 0 {
            o = o.deadline(Duration::from_millis(u64::from(opts >> 6) * 40 + 5));
        }
        if opts & 0xc0 == 0xc0 {
            o = o.max_retransmits(1);
        }
        let len = (usize::from(len) % (self.config.max_message_size + 64)).max(8);
        let tag = self.next_tag;
        self.next_tag += 1;
        let payload = make_payload(tag, len);
        let conn = if from_a { &mut self.a } else { &mut self.b };
        if conn.send(self.now, &payload, o).is_ok() {
            self.sent.insert(tag, (from_a, guarantee, len));
        }
    }

    /// Moves every datagram both connections have now into the queues.
    fn transmit_all(&mut self) {
        transmit(&mut self.a, self.now, &mut self.buf, &mut self.to_b);
        transmit(&mut self.b, self.now, &mut self.buf, &mut self.to_a);
    }

    /// Delivers everything queued, both ways, dropping datagram `i` when bit `i % 8` of `mask`
    /// is set; then lets both sides answer.
    fn exchange(&mut self, mask: u8) {
        self.transmit_all();
        let now = self.now;
        for (i, d) in std::mem::take(&mut self.to_b).into_iter().enumerate() {
            if mask & (1 << (i % 8)) == 0 {
                let _ = self.b.handle_datagram(now, &d);
                self.check_after_input();
            }
            if self.history.len() >= MAX_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(d);
        }
        for (i, d) in std::mem::take(&mut self.to_a).into_iter().enumerate() {
            if mask & (0x80 >> (i % 8)) == 0 {
                let _ = self.a.handle_datagram(now, &d);
            }
        }
        self.drain_events();
        self.transmit_all();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.fire_timers();
    }

    /// Jumps to the earlier of the two connections' deadlines (if any) and fires timers.
    fn advance_to_next(&mut self) {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = next {
            self.now = self.now.max(t);
        }
        self.fire_timers();
    }

    /// `handle_timeout(now)` on both, then transmit: afterwards no live connection may ask to
    /// be woken at or before `now` (a driver would spin).
    fn fire_timers(&mut self) {
        let now = self.now;
        self.a.handle_timeout(now);
        self.b.handle_timeout(now);
        self.transmit_all();
        for (name, conn) in [("A", &self.a), ("B", &self.b)] {
            if let Some(t) = conn.poll_timeout() {
                assert!(
                    t > now,
                    "{name}: poll_timeout() {:?} not after now after handle_timeout(now) and \
                     transmit (a driver would spin); state {:?}, {conn:?}",
                    t.saturating_duration_since(now),
                    conn.state(),
                );
            } else {
                assert_eq!(
                    conn.state(),
                    State::Closed,
                    "{name}: live without a deadline"
                );
            }
        }
    }

    /// Takes every event of both sides, checking delivered payloads in clean runs.
    fn drain_events(&mut self) {
        while let Some(ev) = self.a.poll_event() {
            if let Event::Message(mut m) = ev {
                self.check_delivery(false, &m.payload, m.guarantee);
                if let Some(t) = m.token.take() {
                    self.a.ack(self.now, t).expect("A's own token");
                }
            }
        }
        while let Some(ev) = self.b.poll_event() {
            if let Event::Message(mut m) = ev {
                self.check_delivery(true, &m.payload, m.guarantee);
                if let Some(t) = m.token.take() {
                    self.rejected.push(payload_tag(&m.payload));
                    self.tokens.push_back(t);
                    if self.tokens.len() > 64 {
                        // The application keeps at most 64 messages in processing.
                        let t = self.tokens.pop_front().expect("not empty");
                        self.b.ack(self.now, t).expect("B's own token");
                    }
                }
            }
        }
    }

    /// In a clean run every delivered message is one that the other side sent, byte for
    /// byte, and an exactly-once or at-most-once message is handed over at most once (unless the application
    /// rejected it).
    fn check_delivery(&mut self, at_b: bool, payload: &[u8], guarantee: Guarantee) {
        if !self.clean {
            return;
        }
        let tag = payload_tag(payload);
        let Some(&(from_a, g, len)) = self.sent.get(&tag) else {
            panic!(
                "clean run delivered a message never sent (tag {tag}, {} bytes)",
                payload.len()
            );
        };
        assert_eq!(from_a, at_b, "message delivered to its own sender");
        assert_eq!(g, guarantee, "guarantee changed in transit");
        assert_eq!(payload.len(), len, "length changed in transit");
        assert!(
            payload == make_payload(tag, len).as_slice(),
            "payload changed in transit"
        );
        if g != Guarantee::AtLeastOnce && !self.once.insert(tag) && !self.rejected.contains(&tag) {
            panic!("{g:?} message {tag} handed over twice");
        }
    }

    /// Memory caps, checked on both sides at any time (undelivered events included).
    fn check_caps(&self) {
        for (name, c) in [("A", &self.a), ("B", &self.b)] {
            let cfg = c.config();
            assert!(
                c.receive_buffered_bytes() <= cfg.recv_buffer_bytes,
                "{name}: receive_buffered_bytes {} > recv_buffer_bytes {}",
                c.receive_buffered_bytes(),
                cfg.recv_buffer_bytes
            );
            assert!(
                c.pending_bytes() <= cfg.send_buffer_bytes,
                "{name}: pending_bytes {} > send_buffer_bytes {}",
                c.pending_bytes(),
                cfg.send_buffer_bytes
            );
            assert!(
                c.pending_messages() <= cfg.max_pending_messages,
                "{name}: pending_messages {} > max_pending_messages {}",
                c.pending_messages(),
                cfg.max_pending_messages
            );
        }
    }

    fn check_after_input(&self) {
        self.check_caps();
    }
}

/// Moves every datagram `conn` has now into `queue` (oldest dropped beyond [`MAX_QUEUE`]).
fn transmit(conn: &mut Connection, now: Instant, buf: &mut [u8], queue: &mut VecDeque<Vec<u8>>) {
    let mut n = 0;
    while let Some(len) = conn.poll_transmit(now, buf) {
        n += 1;
        assert!(n < BURST_LIMIT, "endless poll_transmit: {conn:?}");
        if queue.len() >= MAX_QUEUE {
            queue.pop_front();
        }
        queue.push_back(buf[..len].to_vec());
    }
}

/// A message payload: an 8-byte tag, then bytes derived from it.
fn make_payload(tag: u64, len: usize) -> Vec<u8> {
    let mut p = tag.to_be_bytes().to_vec();
    p.extend(
        (8..len as u64).map(|i| (tag.wrapping_mul(0x9e37_79b9).wrapping_add(i * 131) >> 3) as u8),
    );
    p.truncate(len);
    p
}

fn payload_tag(payload: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(payload) {
        *d = *s;
    }
    u64::from_be_bytes(b)
}

/// Writes a fresh tag over the last four bytes (datagrams too short for a tag are left alone).
pub fn reseal(d: &mut [u8]) {
    if d.len() >= wire::MIN_DATAGRAM {
        let n = d.len() - 4;
        let _ = wire::seal(d, n, &Crc32);
    }
}

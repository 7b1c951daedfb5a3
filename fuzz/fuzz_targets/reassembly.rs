//! Reassembly (crate-private) fuzzed through a `Connection`: datagrams of MESSAGE fragments
//! built from arbitrary (space, id, count, index, total_len, content), plus AMO_FLOOR, FORWARD
//! and timer advances. Every delivered message must be byte-identical to what was sent for its
//! id: each byte is one the fuzzer wrote at that offset (the model keeps, per id and offset,
//! which of four contents were written there). Receive memory stays within its cap.
#![no_main]
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use surely::wire::{self, Crc32, ForwardEntry, Fragment, Frame, Header, MessageFrame, PacketType};
use surely::{Config, Connection, Event, Guarantee};

const MAX_MESSAGE: usize = 8192;

#[derive(Arbitrary, Debug)]
struct Frag {
    /// At-most-once id space, else reliable.
    amo: bool,
    exactly_once: bool,
    /// Reliable only: ordered, with this channel sequence number.
    chan_seq: Option<u8>,
    channel: u8,
    id: u8,
    total_len: u16,
    count: u8,
    index: u8,
    /// Which of four contents the bytes come from.
    variant: u8,
    /// Send it whole (no fragment fields) with `total_len` bytes.
    whole: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Datagram(Vec<Frag>),
    Advance(u16),
    AmoFloor(u8),
    Forward(u8, Option<(u8, u8)>),
    TakeEvents,
}

/// Byte `offset` of content `variant` of message `id`.
fn content(id: u64, offset: u64, variant: u8) -> u8 {
    let x = id
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(offset.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(u64::from(variant).wrapping_mul(0x94d0_49bb_1331_11eb));
    (x >> 29) as u8
}

/// Per (at-most-once?, id): the message lengths used, and per offset a bit per variant written.
#[derive(Default)]
struct Model {
    written: HashMap<(bool, u64), (Vec<u64>, Vec<u8>)>,
}

impl Model {
    fn record(&mut self, amo: bool, id: u64, total: u64, range: std::ops::Range<u64>, v: u8) {
        let (lens, bits) = self
            .written
            .entry((amo, id))
            .or_insert_with(|| (Vec::new(), vec![0u8; MAX_MESSAGE]));
        if !lens.contains(&total) {
            lens.push(total);
        }
        for off in range {
            bits[off as usize] |= 1 << v;
        }
    }

    fn check(&self, amo: bool, id: u64, payload: &[u8]) {
        let Some((lens, bits)) = self.written.get(&(amo, id)) else {
            panic!("delivered id {id} (amo {amo}) that was never sent");
        };
        assert!(
            lens.contains(&(payload.len() as u64)),
            "id {id}: delivered {} bytes, sent lengths {lens:?}",
            payload.len()
        );
        for (off, &b) in payload.iter().enumerate() {
            let ok = (0..4).any(|v| bits[off] & (1 << v) != 0 && content(id, off as u64, v) == b);
            assert!(
                ok,
                "id {id} (amo {amo}): byte {off} = {b:#04x} was never sent there"
            );
        }
    }
}

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fuzz_target!(|ops: Vec<Op>| {
    let config = Arc::new(
        Config::default()
            .max_message_size(MAX_MESSAGE)
            .max_fragments(16)
            .recv_buffer_bytes(12_000)
            .max_partial_messages(4)
            .reassembly_timeout(Duration::from_millis(500))
            .window(256)
            .amo_window(64),
    );
    let mut now = start();
    let mut conn = Connection::new(config.clone(), 2, 1, now).unwrap();
    let mut model = Model::default();
    let mut pn: u32 = 0;
    let mut buf = vec![0u8; wire::MAX_DATAGRAM];
    let mut out = vec![0u8; 2048];
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for op in ops.iter().take(256) {
        let mut frames_spec: Vec<(bool, u64, Frame<'_>)> = Vec::new();
        payloads.clear();
        match op {
            Op::Datagram(frags) => {
                // Build every payload first, then borrow them into frames.
                let mut metas = Vec::new();
                let mut room = 60_000u64; // keep the datagram under wire::MAX_DATAGRAM
                for f in frags.iter().take(8) {
                    let id = u64::from(f.id);
                    let total = u64::from(f.total_len) % (MAX_MESSAGE as u64 + 1);
                    let v = f.variant % 4;
                    let (fragment, range) = if f.whole {
                        (None, 0..total)
                    } else {
                        let count = 2 + u64::from(f.count) % 17;
                        let index = u64::from(f.index) % count;
                        let Some(r) = Fragment::byte_range(total, count, index) else {
                            continue;
                        };
                        (
                            Some(Fragment {
                                total_len: total,
                                count,
                                index,
                            }),
                            r,
                        )
                    };
                    let Some(left) = room.checked_sub(range.end - range.start + 64) else {
                        break;
                    };
                    room = left;
                    payloads.push(range.clone().map(|o| content(id, o, v)).collect());
                    metas.push((f, id, total, v, fragment, range));
                }
                for ((f, id, total, v, fragment, range), payload) in
                    metas.into_iter().zip(&payloads)
                {
                    let guarantee = if f.amo {
                        Guarantee::AtMostOnce
                    } else if f.exactly_once {
                        Guarantee::ExactlyOnce
                    } else {
                        Guarantee::AtLeastOnce
                    };
                    let chan_seq = if f.amo {
                        None
                    } else {
                        f.chan_seq.map(u64::from)
                    };
                    model.record(f.amo, id, total, range, v);
                    let frame = Frame::Message(MessageFrame {
                        guarantee,
                        channel: f.channel % 2,
                        id,
                        chan_seq,
                        fragment,
                        payload,
                    });
                    frames_spec.push((f.amo, id, frame));
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(*ms) % 2000);
                conn.handle_timeout(now);
            }
            Op::AmoFloor(floor) => frames_spec.push((
                true,
                0,
                Frame::AmoFloor {
                    floor: u64::from(*floor),
                },
            )),
            Op::Forward(..) | Op::TakeEvents => {}
        }
        let entries;
        if let Op::Forward(id, ordered) = op {
            entries = [ForwardEntry {
                id: u64::from(*id),
                ordered: ordered.map(|(c, s)| (c % 2, u64::from(s))),
            }];
            let mut w = wire::Writer::new(&mut out);
            wire::emit_forward(&mut w, &entries).unwrap();
            let n = w.position();
            let mut bytes = [0u8; 64];
            bytes[..n].copy_from_slice(&out[..n]);
            let f = wire::frames(&bytes[..n]).next().unwrap().unwrap();
            let Frame::Forward(fwd) = f else {
                unreachable!()
            };
            // Re-emit through encode_datagram below with the parsed frame.
            let header = Header {
                packet_type: PacketType::Data,
                conn_id: 2,
                packet_number: pn,
            };
            pn = pn.wrapping_add(1);
            let len =
                wire::encode_datagram(&mut buf, &header, &[Frame::Forward(fwd)], &Crc32).unwrap();
            let _ = conn.handle_datagram(now, &buf[..len]);
        }
        if !frames_spec.is_empty() {
            let frames: Vec<Frame<'_>> = frames_spec.iter().map(|(_, _, f)| *f).collect();
            let header = Header {
                packet_type: PacketType::Data,
                conn_id: 2,
                packet_number: pn,
            };
            pn = pn.wrapping_add(1);
            let len = wire::encode_datagram(&mut buf, &header, &frames, &Crc32)
                .expect("fragments built to be valid");
            let _ = conn.handle_datagram(now, &buf[..len]);
        }
        assert!(
            conn.receive_buffered_bytes() <= config.recv_buffer_bytes,
            "receive_buffered_bytes {} over the cap",
            conn.receive_buffered_bytes()
        );
        while conn.poll_transmit(now, &mut out).is_some() {}
        if matches!(op, Op::TakeEvents) || ops.len() < 8 {
            while let Some(ev) = conn.poll_event() {
                if let Event::Message(m) = ev {
                    model.check(m.guarantee == Guarantee::AtMostOnce, m.id.get(), &m.payload);
                }
            }
        }
    }
    while let Some(ev) = conn.poll_event() {
        if let Event::Message(m) = ev {
            model.check(m.guarantee == Guarantee::AtMostOnce, m.id.get(), &m.payload);
        }
    }
});

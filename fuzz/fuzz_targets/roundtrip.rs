//! Structure-aware: arbitrary frames -> `encode_datagram` -> `open`/`validate`/`frames` gives
//! the same frames back (adjacent padding merged). Inputs the emitter refuses are skipped, but
//! the emitter must never accept what the parser then rejects.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use surely::Guarantee;
use surely::wire::{
    self, CloseFrame, Crc32, ForwardEntry, Fragment, Frame, Header, MessageFrame, MessagesWriter,
    PacketType, Writer,
};

#[allow(clippy::enum_variant_names)] // the guarantees' own names
#[derive(Arbitrary, Debug)]
enum G {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Arbitrary, Debug)]
enum Spec {
    Padding(u8),
    Ping,
    /// Largest packet number, ack delay, first range length, then (gap, len) pairs.
    Ack(u64, u64, u16, Vec<(u16, u16)>),
    /// Cumulative, credit, then (gap >= 1, len) pairs.
    MsgAck(u64, u32, Vec<(u16, u16)>),
    Message {
        g: G,
        channel: u8,
        id: u64,
        chan_seq: Option<u64>,
        /// (total_len, count, index): the payload is cut to the fragment's size.
        fragment: Option<(u16, u16, u16)>,
        payload: Vec<u8>,
    },
    Forward(Vec<(u64, Option<(u8, u64)>)>),
    Reject(Vec<u64>),
    AmoFloor(u64),
    Close(u64, String),
    /// A MESSAGES frame: guarantee, channel, first id, first sequence number, payloads.
    Messages(G, u8, u64, Option<u64>, Vec<Vec<u8>>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    conn_id: u64,
    packet_number: u32,
    specs: Vec<Spec>,
}

fn guarantee(g: &G) -> Guarantee {
    match g {
        G::AtMostOnce => Guarantee::AtMostOnce,
        G::AtLeastOnce => Guarantee::AtLeastOnce,
        G::ExactlyOnce => Guarantee::ExactlyOnce,
    }
}

/// Bytes of a frame emitted by one of the frame builders, parsed back as a `Frame` (ACK,
/// MSG_ACK, FORWARD and REJECT frames can only be made that way).
fn emitted(spec: &Spec) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut w = Writer::new(&mut buf);
    match spec {
        Spec::Ack(largest, delay, first, pairs) => {
            let largest = largest & wire::MAX_VARINT;
            let mut start = largest.checked_sub(u64::from(*first))?;
            let mut ranges = Vec::with_capacity(pairs.len() + 1);
            ranges.push(start..largest + 1);
            for &(gap, len) in pairs.iter().take(wire::MAX_ACK_RANGES - 1) {
                let Some(end) = start.checked_sub(u64::from(gap) + 1) else {
                    break;
                };
                let Some(s) = end.checked_sub(u64::from(len)) else {
                    break;
                };
                if s >= end {
                    break;
                }
                ranges.push(s..end);
                start = s;
            }
            wire::emit_ack(&mut w, *delay, ranges.into_iter()).ok()?;
        }
        Spec::MsgAck(cum, credit, pairs) => {
            let cum = cum & wire::MAX_VARINT;
            let limit = cum
                .checked_add(u64::from(*credit))
                .filter(|&l| l <= wire::MAX_VARINT)?;
            let mut prev = cum;
            let mut ranges = Vec::new();
            for &(gap, len) in pairs.iter().take(wire::MAX_MSG_ACK_RANGES) {
                let Some(s) = prev.checked_add(u64::from(gap).max(1)) else {
                    break;
                };
                let Some(e) = s.checked_add(u64::from(len) + 1) else {
                    break;
                };
                if e - 1 > wire::MAX_VARINT {
                    break;
                }
                ranges.push(s..e);
                prev = e;
            }
            wire::emit_msg_ack(&mut w, cum, limit, ranges.into_iter()).ok()?;
        }
        Spec::Forward(entries) => {
            let entries: Vec<ForwardEntry> = entries
                .iter()
                .map(|&(id, ordered)| ForwardEntry { id, ordered })
                .collect();
            wire::emit_forward(&mut w, &entries).ok()?;
        }
        Spec::Reject(ids) => wire::emit_reject(&mut w, ids).ok()?,
        Spec::Messages(g, channel, id, seq, payloads) => {
            let (first, rest) = payloads.split_first()?;
            let mut b =
                MessagesWriter::begin(&mut w, guarantee(g), *channel, *id, *seq, first).ok()?;
            for p in rest {
                if b.push(&mut w, p).is_err() {
                    break;
                }
            }
        }
        _ => return None,
    }
    let n = w.position();
    if n == 0 {
        return None;
    }
    buf.truncate(n);
    Some(buf)
}

fn build<'a>(spec: &'a Spec, store: &'a Option<Vec<u8>>) -> Option<Frame<'a>> {
    Some(match spec {
        Spec::Padding(n) => Frame::Padding {
            len: usize::from(*n),
        },
        Spec::Ping => Frame::Ping,
        Spec::Ack(..)
        | Spec::MsgAck(..)
        | Spec::Forward(_)
        | Spec::Reject(_)
        | Spec::Messages(..) => {
            let bytes = store.as_ref()?;
            let mut it = wire::frames(bytes);
            let f = it.next()?.expect("emitted frame must parse");
            assert!(it.next().is_none(), "one emitted frame parsed as several");
            f
        }
        Spec::Message {
            g,
            channel,
            id,
            chan_seq,
            fragment,
            payload,
        } => {
            let fragment = fragment.map(|(t, c, i)| Fragment {
                total_len: u64::from(t),
                count: u64::from(c),
                index: u64::from(i),
            });
            let payload = match fragment {
                Some(f) => match Fragment::byte_range(f.total_len, f.count, f.index) {
                    Some(r) => payload.get(..(r.end - r.start) as usize).unwrap_or(payload),
                    None => payload,
                },
                None => payload,
            };
            Frame::Message(MessageFrame {
                guarantee: guarantee(g),
                channel: *channel,
                id: *id,
                chan_seq: *chan_seq,
                fragment,
                payload,
            })
        }
        Spec::AmoFloor(floor) => Frame::AmoFloor { floor: *floor },
        Spec::Close(code, reason) => Frame::Close(CloseFrame {
            code: *code,
            reason: reason.as_bytes(),
        }),
    })
}

/// What parsing gives back: zero-length padding vanishes, adjacent padding runs merge.
fn normalized<'a>(frames: &[Frame<'a>]) -> Vec<Frame<'a>> {
    let mut out: Vec<Frame<'a>> = Vec::new();
    for f in frames {
        match (out.last_mut(), f) {
            (_, Frame::Padding { len: 0 }) => {}
            (Some(Frame::Padding { len }), Frame::Padding { len: more }) => *len += more,
            _ => out.push(*f),
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let stores: Vec<Option<Vec<u8>>> = input.specs.iter().map(emitted).collect();
    let mut scratch = vec![0u8; 8192];
    let frames: Vec<Frame<'_>> = input
        .specs
        .iter()
        .zip(&stores)
        .filter_map(|(s, st)| build(s, st))
        // Frames the emitter refuses are skipped; those it writes must come back.
        .filter(|f| f.emit(&mut Writer::new(&mut scratch)).is_ok())
        .collect();
    let header = Header {
        packet_type: PacketType::Data,
        conn_id: input.conn_id,
        packet_number: input.packet_number,
    };
    let mut buf = vec![0u8; 8192];
    let Ok(n) = wire::encode_datagram(&mut buf, &header, &frames, &Crc32) else {
        return;
    };
    let sum: usize = frames.iter().map(Frame::encoded_len).sum();
    assert_eq!(
        n,
        wire::HEADER_LEN + sum + 4,
        "length != sum of encoded_len"
    );
    let (h, payload) = wire::open(&buf[..n], &Crc32).expect("emitted datagram must open");
    assert_eq!(h, header);
    wire::validate(payload).expect("emitted datagram must validate");
    let parsed: Vec<Frame<'_>> = wire::frames(payload)
        .collect::<Result<_, _>>()
        .expect("emitted frames must parse");
    assert_eq!(parsed, normalized(&frames));
});

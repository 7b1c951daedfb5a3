//! Wire format: encoding and decoding whole datagrams, CRC-32 included.
//!
//! - `message_64B`: one 64-byte MESSAGE frame;
//! - `coalesced_1200B`: a full 1,200-byte datagram of coalesced 64-byte messages;
//! - `ack_{1,16,64}_ranges`: an ACK frame with that many ranges.
//!
//! Encoding writes header and frames and seals (computes the tag); decoding is what a receiver
//! does before acting on a datagram: `open` (length, tag, header), `validate` (every frame),
//! then one pass over the frames (and, for an ACK, over its ranges).
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`

use std::hint::black_box;
use std::ops::Range;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use surely::Guarantee;
use surely::wire::{self, Crc32, Frame, Header, MessageFrame, PacketType, Writer};

const DATAGRAM: usize = 1200;

const HEADER: Header = Header {
    packet_type: PacketType::Data,
    conn_id: 0x0123_4567_89ab_cdef,
    packet_number: 0x0001_2345,
};

fn message(id: u64, payload: &[u8]) -> Frame<'_> {
    Frame::Message(MessageFrame {
        guarantee: Guarantee::ExactlyOnce,
        channel: 1,
        id,
        chan_seq: None,
        fragment: None,
        payload,
    })
}

/// As many 64-byte messages as fit in a 1,200-byte datagram, then padding up to exactly
/// 1,200 bytes.
fn coalesced(payload: &[u8]) -> Vec<Frame<'_>> {
    let room = DATAGRAM - wire::HEADER_LEN - 4;
    let mut frames = Vec::new();
    let mut used = 0;
    let mut id = 1_000_000;
    loop {
        let f = message(id, payload);
        if used + f.encoded_len() > room {
            break;
        }
        used += f.encoded_len();
        frames.push(f);
        id += 1;
    }
    if used < room {
        frames.push(Frame::Padding { len: room - used });
    }
    frames
}

/// `n` ranges, highest first: three packets received, two missing, and so on, below a
/// largest packet number around one million.
fn ack_ranges(n: usize) -> Vec<Range<u64>> {
    let top = 1_000_000u64;
    (0..n as u64)
        .map(|i| {
            let end = top - i * 5;
            end - 3..end
        })
        .collect()
}

/// Header + ACK frame + tag, written the way the connection writes it.
fn encode_ack(buf: &mut [u8], ranges: &[Range<u64>]) -> usize {
    let mut w = Writer::new(buf);
    HEADER.emit(&mut w).unwrap();
    wire::emit_ack(&mut w, 250, ranges.iter().cloned()).unwrap();
    let len = w.position();
    wire::seal(buf, len, &Crc32).unwrap()
}

/// What a receiver does with a datagram before acting on it; returns a value derived from
/// every frame so nothing is optimised away.
fn decode(datagram: &[u8]) -> u64 {
    let (header, payload) = wire::open(datagram, &Crc32).unwrap();
    wire::validate(payload).unwrap();
    let mut sum = u64::from(header.packet_number);
    for frame in wire::frames(payload) {
        match frame.unwrap() {
            Frame::Message(m) => sum = sum.wrapping_add(m.id + m.payload.len() as u64),
            Frame::Messages(b) => {
                for m in b.messages() {
                    sum = sum.wrapping_add(m.id + m.payload.len() as u64);
                }
            }
            Frame::Ack(a) => {
                for r in a.ranges() {
                    sum = sum.wrapping_add(r.end - r.start);
                }
            }
            Frame::Padding { len } => sum = sum.wrapping_add(len as u64),
            _ => sum = sum.wrapping_add(1),
        }
    }
    sum
}

fn bench_wire(c: &mut Criterion) {
    let payload = [0x5au8; 64];
    let mut buf = vec![0u8; DATAGRAM];
    let mut g = c.benchmark_group("wire");

    // One 64-byte message.
    let one = [message(42, &payload)];
    let n = wire::encode_datagram(&mut buf, &HEADER, &one, &Crc32).unwrap();
    let single = buf[..n].to_vec();
    g.throughput(Throughput::Bytes(n as u64));
    g.bench_function("encode/message_64B", |b| {
        b.iter(|| wire::encode_datagram(black_box(&mut buf), &HEADER, black_box(&one), &Crc32))
    });
    g.bench_function("decode/message_64B", |b| {
        b.iter(|| decode(black_box(&single)))
    });

    // A full datagram of coalesced 64-byte messages.
    let frames = coalesced(&payload);
    let messages = frames
        .iter()
        .filter(|f| matches!(f, Frame::Message(_)))
        .count();
    let n = wire::encode_datagram(&mut buf, &HEADER, &frames, &Crc32).unwrap();
    assert_eq!(n, DATAGRAM);
    let full = buf[..n].to_vec();
    println!("wire: a 1,200-byte datagram holds {messages} messages of 64 bytes");
    g.throughput(Throughput::Bytes(n as u64));
    g.bench_function(format!("encode/coalesced_1200B_{messages}x64B"), |b| {
        b.iter(|| wire::encode_datagram(black_box(&mut buf), &HEADER, black_box(&frames), &Crc32))
    });
    g.bench_function(format!("decode/coalesced_1200B_{messages}x64B"), |b| {
        b.iter(|| decode(black_box(&full)))
    });

    // ACK frames.
    for ranges in [1, 16, 64] {
        let r = ack_ranges(ranges);
        let n = encode_ack(&mut buf, &r);
        let ack = buf[..n].to_vec();
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("encode/ack_{ranges}_ranges"), |b| {
            b.iter(|| encode_ack(black_box(&mut buf), black_box(&r)))
        });
        g.bench_function(format!("decode/ack_{ranges}_ranges"), |b| {
            b.iter(|| decode(black_box(&ack)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_wire);
criterion_main!(benches);

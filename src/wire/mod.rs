//! The datagram layout: header, frames and integrity tag, byte by byte as in
//! `docs/PROTOCOL.md`.
//!
//! Guarantees of this module:
//!
//! - **The parser never panics**, whatever the input: every read goes through the
//!   [`Reader`], which checks lengths first and answers a named [`WireError`]. Nothing is
//!   allocated while parsing; parsed frames borrow from the datagram.
//! - **Everything is validated up front.** [`open`] checks the length, then the integrity tag
//!   (before any other field), then version and packet type. [`validate`] checks every frame
//!   of a payload, including ranges, flags and fragment arithmetic, so a datagram with a
//!   malformed frame or with **trailing bytes that do not form a complete frame is rejected
//!   whole**. Iterating over a parsed frame's ranges or entries cannot fail.
//! - **Emitting uses the shortest varint form** (decoding accepts every form), writes a frame
//!   whole or not at all, and refuses to produce anything the parser would reject.
//!
//! A round trip:
//!
//! ```
//! use surely::Guarantee;
//! use surely::wire::{self, Crc32, Frame, Header, MessageFrame, PacketType};
//!
//! let header = Header { packet_type: PacketType::Data, conn_id: 0x1234, packet_number: 7 };
//! let message = MessageFrame {
//!     guarantee: Guarantee::ExactlyOnce,
//!     channel: 3,
//!     id: 42,
//!     chan_seq: Some(5),
//!     fragment: None,
//!     payload: b"hello",
//! };
//! let frames = [Frame::Ping, Frame::Message(message), Frame::Padding { len: 10 }];
//!
//! let mut buf = [0u8; 1200];
//! let n = wire::encode_datagram(&mut buf, &header, &frames, &Crc32)?;
//!
//! let (got, payload) = wire::open(&buf[..n], &Crc32)?;
//! assert_eq!(got, header);
//! wire::validate(payload)?; // act on no frame before the whole datagram is known good
//! let parsed = wire::frames(payload).collect::<Result<Vec<_>, _>>()?;
//! assert_eq!(parsed, frames);
//!
//! buf[20] ^= 1; // any corruption is caught by the tag
//! assert_eq!(wire::open(&buf[..n], &Crc32), Err(wire::WireError::BadChecksum));
//! # Ok::<(), wire::WireError>(())
//! ```

use std::fmt;

mod ack;
mod frame;
mod handshake;
mod header;
mod integrity;
mod reader;
pub mod varint;
mod writer;

pub use ack::{
    AckFrame, AckRanges, MsgAckFrame, MsgAckRanges, ack_frame_len, emit_ack, emit_msg_ack,
    msg_ack_frame_len,
};
pub use frame::*;
pub use handshake::*;
pub use header::{Header, PacketType};
pub use integrity::{Crc32, Integrity};
pub use reader::Reader;
pub use varint::{MAX_VARINT, varint_len};
pub use writer::Writer;

/// The protocol version in every header.
pub const VERSION: u8 = 1;
/// Length of the packet header.
pub const HEADER_LEN: usize = 14;
/// The smallest valid datagram: header, one frame byte and a 4-byte tag.
pub const MIN_DATAGRAM: usize = 19;
/// The largest datagram (the largest UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65507;
pub use crate::limits::{MAX_ACK_RANGES, MAX_MSG_ACK_RANGES, MAX_REASON_LEN};

/// Why a datagram or frame is malformed, or why one could not be written.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The input ended in the middle of a field.
    Truncated,
    /// The datagram is shorter than a header, one frame byte and the tag.
    TooShort,
    /// The datagram is longer than [`MAX_DATAGRAM`].
    TooLong,
    /// The version byte is not [`VERSION`].
    BadVersion(u8),
    /// The packet type byte is not a known packet type.
    UnknownPacketType(u8),
    /// The integrity tag does not verify.
    BadChecksum,
    /// A frame type byte is not a known frame type.
    UnknownFrame(u8),
    /// A packet without any frame.
    EmptyPacket,
    /// An ACK or MSG_ACK frame with more ranges than allowed.
    TooManyRanges,
    /// An ACK frame whose ranges go below packet number zero.
    AckRangeUnderflow,
    /// A MSG_ACK range with a zero gap, or one that goes past the largest varint.
    BadMsgAckRange,
    /// A MSG_ACK frame whose limit is below its cumulative point.
    LimitBelowCumulative,
    /// Reserved flag bits are set (the flags byte is given).
    BadFlags(u8),
    /// A MESSAGE frame with guarantee code 3.
    BadGuarantee,
    /// A MESSAGE frame that is ordered but at-most-once.
    OrderedAtMostOnce,
    /// A MESSAGE frame whose fragment fields are inconsistent or whose length is not the
    /// fragment's size.
    BadFragment,
    /// A FORWARD or REJECT frame with no entries.
    ZeroCount,
    /// A FORWARD or REJECT count larger than the rest of the datagram could hold.
    CountTooLarge,
    /// A CLOSE reason longer than [`MAX_REASON_LEN`].
    ReasonTooLong,
    /// A CLOSE reason that is not UTF-8.
    BadReason,
    /// Writing: the buffer has no room for what was to be written.
    BufferTooSmall,
    /// Writing: a value above [`MAX_VARINT`] where a varint is needed.
    ValueTooLarge,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("input ends in the middle of a field"),
            WireError::TooShort => f.write_str("datagram too short"),
            WireError::TooLong => write!(f, "datagram longer than {MAX_DATAGRAM} bytes"),
            WireError::BadVersion(v) => write!(f, "unsupported version {v}"),
            WireError::UnknownPacketType(t) => write!(f, "unknown packet type {t:#04x}"),
            WireError::BadChecksum => f.write_str("integrity tag does not verify"),
            WireError::UnknownFrame(t) => write!(f, "unknown frame type {t:#04x}"),
            WireError::EmptyPacket => f.write_str("packet without frames"),
            WireError::TooManyRanges => f.write_str("too many ranges in an ack frame"),
            WireError::AckRangeUnderflow => f.write_str("ACK range below packet number zero"),
            WireError::BadMsgAckRange => f.write_str("MSG_ACK range with zero gap or overflow"),
            WireError::LimitBelowCumulative => f.write_str("MSG_ACK limit below cumulative"),
            WireError::BadFlags(b) => write!(f, "reserved flag bits set in {b:#010b}"),
            WireError::BadGuarantee => f.write_str("invalid guarantee code 3"),
            WireError::OrderedAtMostOnce => f.write_str("ordered at-most-once message"),
            WireError::BadFragment => f.write_str("inconsistent fragment fields"),
            WireError::ZeroCount => f.write_str("FORWARD or REJECT frame without entries"),
            WireError::CountTooLarge => f.write_str("entry count larger than the datagram"),
            WireError::ReasonTooLong => {
                write!(f, "CLOSE reason longer than {MAX_REASON_LEN} bytes")
            }
            WireError::BadReason => f.write_str("CLOSE reason is not UTF-8"),
            WireError::BufferTooSmall => f.write_str("buffer too small"),
            WireError::ValueTooLarge => write!(f, "value above the varint maximum {MAX_VARINT}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Opens a received datagram: checks the length ([`MIN_DATAGRAM`]`..=`[`MAX_DATAGRAM`]), then
/// the integrity tag, then version and packet type, and returns the header and the frame bytes
/// (between header and tag). The tag is checked before any field is looked at.
///
/// The frames are not checked here: call [`validate`] on them before acting on any.
#[inline]
pub fn open<'a>(
    datagram: &'a [u8],
    integrity: &dyn Integrity,
) -> Result<(Header, &'a [u8]), WireError> {
    let (body, tag) = split_tag(datagram, integrity.tag_len())?;
    if !integrity.verify(body, tag) {
        return Err(WireError::BadChecksum);
    }
    let mut r = Reader::new(body);
    let header = Header::parse(&mut r)?;
    Ok((header, r.rest()))
}

/// [`open`] for a datagram whose tag of `tag_len` bytes the caller has already verified with
/// the same integrity check: the same length checks and parse, without a second pass over
/// the bytes.
pub(crate) fn open_verified(datagram: &[u8], tag_len: usize) -> Result<(Header, &[u8]), WireError> {
    let (body, _) = split_tag(datagram, tag_len)?;
    let mut r = Reader::new(body);
    let header = Header::parse(&mut r)?;
    Ok((header, r.rest()))
}

/// Splits a datagram into its body and its tag of `tag_len` bytes, after the length checks
/// that [`open`] makes.
fn split_tag(datagram: &[u8], tag_len: usize) -> Result<(&[u8], &[u8]), WireError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLong);
    }
    let min = HEADER_LEN
        .saturating_add(1)
        .saturating_add(tag_len)
        .max(MIN_DATAGRAM);
    if datagram.len() < min {
        return Err(WireError::TooShort);
    }
    let body_len = datagram.len().saturating_sub(tag_len);
    datagram
        .split_at_checked(body_len)
        .ok_or(WireError::TooShort)
}

/// Seals a datagram: `buf[..len]` holds header and frames; appends the tag at
/// `buf[len..len + tag_len]` and returns the total length.
///
/// Errors: [`WireError::BufferTooSmall`] if the tag does not fit in `buf`,
/// [`WireError::TooLong`] if the datagram would exceed [`MAX_DATAGRAM`].
pub fn seal(buf: &mut [u8], len: usize, integrity: &dyn Integrity) -> Result<usize, WireError> {
    let tag_len = integrity.tag_len();
    let total = len.checked_add(tag_len).ok_or(WireError::BufferTooSmall)?;
    let (body, rest) = buf
        .split_at_mut_checked(len)
        .ok_or(WireError::BufferTooSmall)?;
    let tag = rest.get_mut(..tag_len).ok_or(WireError::BufferTooSmall)?;
    if total > MAX_DATAGRAM {
        return Err(WireError::TooLong);
    }
    integrity.seal(body, tag);
    Ok(total)
}

/// Writes a whole datagram (header, `frames`, tag) into `buf` and returns its length.
/// Convenient for tests and fuzzing; the connection writes frames one by one and [`seal`]s.
///
/// Errors: [`WireError::EmptyPacket`] if the frames take no bytes, any error of
/// [`Frame::emit`], and those of [`seal`].
pub fn encode_datagram(
    buf: &mut [u8],
    header: &Header,
    frames: &[Frame<'_>],
    integrity: &dyn Integrity,
) -> Result<usize, WireError> {
    let mut w = Writer::new(buf);
    header.emit(&mut w)?;
    for frame in frames {
        frame.emit(&mut w)?;
    }
    let len = w.position();
    if len <= HEADER_LEN {
        return Err(WireError::EmptyPacket);
    }
    seal(buf, len, integrity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Guarantee;
    use proptest::prelude::*;

    const HEADER: Header = Header {
        packet_type: PacketType::Data,
        conn_id: 0x0123_4567_89ab_cdef,
        packet_number: 0xdead_beef,
    };

    #[test]
    fn open_verified_reads_what_open_reads_and_makes_the_same_length_checks() {
        let mut buf = [0u8; 128];
        let n = encode_datagram(&mut buf, &HEADER, &[Frame::Ping], &Crc32).unwrap();
        let tag = Crc32.tag_len();
        assert_eq!(
            open_verified(&buf[..n], tag).unwrap(),
            open(&buf[..n], &Crc32).unwrap()
        );
        for len in 0..MIN_DATAGRAM.max(HEADER_LEN + 1 + tag) {
            assert_eq!(open_verified(&buf[..len], tag), open(&buf[..len], &Crc32));
        }
        let long = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(open_verified(&long, tag), Err(WireError::TooLong));
    }

    /// Frames whose variable parts live in `store` (ACK, MSG_ACK, FORWARD, REJECT can only be
    /// made by parsing).
    fn parse_all(bytes: &[u8]) -> Vec<Frame<'_>> {
        frames(bytes).collect::<Result<_, _>>().unwrap()
    }

    fn sample_store() -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf);
        emit_ack(&mut w, 1500, [1000..1010, 900..950, 3..4].into_iter()).unwrap();
        emit_msg_ack(&mut w, 77, 1077, [80..81, 1000..1002].into_iter()).unwrap();
        let entries = [
            ForwardEntry {
                id: 78,
                ordered: Some((4, 300)),
            },
            ForwardEntry {
                id: 79,
                ordered: None,
            },
        ];
        emit_forward(&mut w, &entries).unwrap();
        emit_reject(&mut w, &[81, 82, 1 << 40]).unwrap();
        let n = w.position();
        buf.truncate(n);
        buf
    }

    /// A few realistic frame lists, the last frame of each not padding.
    fn samples(store: &[u8]) -> Vec<Vec<Frame<'_>>> {
        let parsed = parse_all(store);
        let msg = MessageFrame {
            guarantee: Guarantee::ExactlyOnce,
            channel: 2,
            id: 1 << 20,
            chan_seq: Some(70),
            fragment: Some(Fragment {
                total_len: 2000,
                count: 2,
                index: 1,
            }),
            payload: &[0x5a; 1000],
        };
        let amo = MessageFrame {
            guarantee: Guarantee::AtMostOnce,
            channel: 0,
            id: 3,
            chan_seq: None,
            fragment: None,
            payload: b"tick",
        };
        vec![
            vec![Frame::Ping],
            vec![parsed[0], Frame::Padding { len: 3 }, Frame::Message(amo)],
            vec![
                Frame::Message(msg),
                parsed[1],
                parsed[2],
                parsed[3],
                Frame::AmoFloor { floor: 4 },
                Frame::Close(CloseFrame {
                    code: 2,
                    reason: "done ✓".as_bytes(),
                }),
            ],
        ]
    }

    fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let n = encode_datagram(&mut buf, &HEADER, frames, &Crc32).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn samples_round_trip() {
        let store = sample_store();
        for frames_in in samples(&store) {
            let dg = encode(&frames_in);
            let want: usize = frames_in.iter().map(Frame::encoded_len).sum();
            assert_eq!(dg.len(), HEADER_LEN + want + 4);
            let (h, payload) = open(&dg, &Crc32).unwrap();
            assert_eq!(h, HEADER);
            validate(payload).unwrap();
            assert_eq!(parse_all(payload), frames_in);
        }
    }

    #[test]
    fn malformed_datagrams_are_rejected_with_a_named_error() {
        let good = encode(&[Frame::Ping]);
        assert_eq!(good.len(), MIN_DATAGRAM);
        let resealed = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut d = good[..good.len() - 4].to_vec();
            edit(&mut d);
            let n = d.len();
            d.extend([0; 4]);
            seal(&mut d, n, &Crc32).unwrap();
            d
        };
        let mut bad_tag = good.clone();
        bad_tag[MIN_DATAGRAM - 1] ^= 0x80;
        let mut bad_version_and_tag = good.clone();
        bad_version_and_tag[0] = 9;
        let table: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::TooShort),
            (good[..MIN_DATAGRAM - 1].to_vec(), WireError::TooShort),
            (vec![0; MAX_DATAGRAM + 1], WireError::TooLong),
            (bad_tag, WireError::BadChecksum),
            // The tag is checked before the version.
            (bad_version_and_tag, WireError::BadChecksum),
            (resealed(&|d| d[0] = 2), WireError::BadVersion(2)),
            (resealed(&|d| d[1] = 6), WireError::UnknownPacketType(6)),
            (
                resealed(&|d| d[1] = 0xff),
                WireError::UnknownPacketType(0xff),
            ),
        ];
        for (dg, err) in &table {
            assert_eq!(open(dg, &Crc32), Err(*err), "datagram {dg:02x?}");
        }
        // A checked datagram whose frames are bad: open succeeds, validate refuses.
        let d = resealed(&|d| d[HEADER_LEN] = 0x42);
        let (_, payload) = open(&d, &Crc32).unwrap();
        assert_eq!(validate(payload), Err(WireError::UnknownFrame(0x42)));
    }

    #[test]
    fn encode_and_seal_errors() {
        let mut buf = [0u8; MIN_DATAGRAM];
        assert_eq!(
            encode_datagram(&mut buf, &HEADER, &[], &Crc32),
            Err(WireError::EmptyPacket)
        );
        assert_eq!(
            encode_datagram(&mut buf, &HEADER, &[Frame::Padding { len: 0 }], &Crc32),
            Err(WireError::EmptyPacket)
        );
        assert_eq!(
            encode_datagram(&mut buf, &HEADER, &[Frame::Padding { len: 2 }], &Crc32),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            encode_datagram(
                &mut buf[..MIN_DATAGRAM - 1],
                &HEADER,
                &[Frame::Ping],
                &Crc32
            ),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            encode_datagram(&mut buf, &HEADER, &[Frame::Ping], &Crc32),
            Ok(19)
        );
        assert_eq!(seal(&mut buf, 16, &Crc32), Err(WireError::BufferTooSmall));
        assert_eq!(
            seal(&mut buf, usize::MAX, &Crc32),
            Err(WireError::BufferTooSmall)
        );
        let mut big = vec![0u8; MAX_DATAGRAM + 4];
        assert_eq!(
            seal(&mut big, MAX_DATAGRAM - 3, &Crc32),
            Err(WireError::TooLong)
        );
        assert_eq!(seal(&mut big, MAX_DATAGRAM - 4, &Crc32), Ok(MAX_DATAGRAM));
        // The largest datagram opens.
        let mut big = vec![0u8; MAX_DATAGRAM];
        let n = encode_datagram(
            &mut big,
            &HEADER,
            &[
                Frame::Ping,
                Frame::Padding {
                    len: MAX_DATAGRAM - HEADER_LEN - 5,
                },
            ],
            &Crc32,
        )
        .unwrap();
        assert_eq!(n, MAX_DATAGRAM);
        let (_, payload) = open(&big, &Crc32).unwrap();
        validate(payload).unwrap();
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let store = sample_store();
        for frames_in in samples(&store) {
            let dg = encode(&frames_in);
            for k in 0..dg.len() {
                assert!(open(&dg[..k], &Crc32).is_err(), "prefix {k} opened");
            }
            // Cut the frames at every offset and seal again: only cuts at frame boundaries
            // (or inside a padding run) leave a valid payload.
            let mut ok_cuts = Vec::new();
            let mut at = 0;
            for f in &frames_in {
                if let Frame::Padding { len } = f {
                    ok_cuts.extend(at + 1..at + len);
                }
                at += f.encoded_len();
                ok_cuts.push(at);
            }
            let body = &dg[HEADER_LEN..dg.len() - 4];
            for k in 0..body.len() {
                let mut d = dg[..HEADER_LEN + k].to_vec();
                d.extend([0; 4]);
                let n = HEADER_LEN + k;
                seal(&mut d, n, &Crc32).unwrap();
                let result = open(&d, &Crc32).and_then(|(_, p)| validate(p));
                assert_eq!(
                    result.is_ok(),
                    ok_cuts.contains(&k),
                    "cut at frame byte {k}"
                );
            }
        }
    }

    #[cfg(not(fuzzing))]
    #[test]
    fn any_corrupted_byte_fails_the_tag() {
        let store = sample_store();
        for frames_in in samples(&store).iter().take(2) {
            let dg = encode(frames_in);
            for i in 0..dg.len() {
                for mask in 1..=255u8 {
                    let mut d = dg.clone();
                    d[i] ^= mask;
                    assert_eq!(open(&d, &Crc32), Err(WireError::BadChecksum), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn errors_display_without_panicking() {
        assert_eq!(
            WireError::BadVersion(2).to_string(),
            "unsupported version 2"
        );
        assert_eq!(
            WireError::UnknownFrame(0x42).to_string(),
            "unknown frame type 0x42"
        );
        let e: Box<dyn std::error::Error> = Box::new(WireError::BadChecksum);
        assert!(!e.to_string().is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // Properties

    /// A frame description that owns its data; `build` turns it into a [`Frame`].
    #[derive(Debug, Clone)]
    enum Spec {
        Padding(usize),
        Ping,
        /// Delay, and received packet numbers (non-empty).
        Ack(u64, Vec<u64>),
        /// Cumulative, extra credit, and completed ids as offsets above `cumulative`.
        MsgAck(u64, u64, Vec<u64>),
        Message {
            guarantee: Guarantee,
            channel: u8,
            id: u64,
            chan_seq: Option<u64>,
            fragment: Option<Fragment>,
            payload: Vec<u8>,
        },
        Forward(Vec<ForwardEntry>),
        Reject(Vec<u64>),
        AmoFloor(u64),
        Close(u64, String),
        /// A MESSAGES frame: guarantee, channel, first id, first sequence number, payloads
        /// (non-empty).
        Messages(Guarantee, u8, u64, Option<u64>, Vec<Vec<u8>>),
    }

    fn varint() -> impl Strategy<Value = u64> {
        prop_oneof![0..64u64, 0..16384u64, 0..(1u64 << 30), 0..=MAX_VARINT]
    }

    fn ranges_of(sorted: impl Iterator<Item = u64>) -> Vec<std::ops::Range<u64>> {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for v in sorted {
            match out.last_mut() {
                Some(r) if r.end == v => r.end += 1,
                _ => out.push(v..v + 1),
            }
        }
        out
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let guarantee = prop_oneof![
            Just(Guarantee::AtMostOnce),
            Just(Guarantee::AtLeastOnce),
            Just(Guarantee::ExactlyOnce)
        ];
        let message = (
            guarantee,
            any::<u8>(),
            varint(),
            varint(),
            any::<bool>(),
            proptest::option::of((1..3000u64, 1..700u64, any::<u64>())),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(guarantee, channel, id, seq, ordered, fragment, payload)| {
                    let chan_seq = (ordered && guarantee.is_reliable()).then_some(seq);
                    let mut payload = payload;
                    // A fragment needs at least two chunks; its payload is its range's size.
                    let fragment = fragment.map(|(total, chunk, seed)| {
                        let total = total.max(2);
                        let count = total.div_ceil(chunk.min(total - 1));
                        let index = seed % count;
                        let range = Fragment::byte_range(total, count, index).unwrap();
                        payload.resize((range.end - range.start) as usize, 0xa5);
                        Fragment {
                            total_len: total,
                            count,
                            index,
                        }
                    });
                    Spec::Message {
                        guarantee,
                        channel,
                        id,
                        chan_seq,
                        fragment,
                        payload,
                    }
                },
            );
        let entry = (varint(), proptest::option::of((any::<u8>(), varint())))
            .prop_map(|(id, ordered)| ForwardEntry { id, ordered });
        prop_oneof![
            (1..40usize).prop_map(Spec::Padding),
            Just(Spec::Ping),
            (
                0..=MAX_VARINT - 5000,
                varint(),
                proptest::collection::btree_set(0..5000u64, 1..300)
            )
                .prop_map(|(base, delay, set)| Spec::Ack(
                    delay,
                    set.into_iter().map(|v| base + v).collect()
                )),
            (
                0..=MAX_VARINT - 10_000,
                varint(),
                proptest::collection::btree_set(1..5000u64, 0..300)
            )
                .prop_map(|(cum, credit, set)| Spec::MsgAck(
                    cum,
                    credit.min(MAX_VARINT - cum),
                    set.into_iter().collect()
                )),
            message,
            proptest::collection::vec(entry, 1..20).prop_map(Spec::Forward),
            proptest::collection::vec(varint(), 1..20).prop_map(Spec::Reject),
            varint().prop_map(Spec::AmoFloor),
            (varint(), "\\PC{0,60}").prop_map(|(c, s)| Spec::Close(c, s)),
            (
                prop_oneof![
                    Just(Guarantee::AtMostOnce),
                    Just(Guarantee::AtLeastOnce),
                    Just(Guarantee::ExactlyOnce)
                ],
                any::<u8>(),
                0..=MAX_VARINT - 100,
                proptest::option::of(0..=MAX_VARINT - 100),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..40),
            )
                .prop_map(|(g, ch, id, seq, payloads)| {
                    Spec::Messages(g, ch, id, seq.filter(|_| g.is_reliable()), payloads)
                }),
        ]
    }

    /// Bytes of the frames that can only be made by parsing (empty for the others).
    fn stored(spec: &Spec) -> Vec<u8> {
        let mut buf = vec![0u8; 8192];
        let mut w = Writer::new(&mut buf);
        match spec {
            Spec::Ack(delay, pns) => {
                let ranges = ranges_of(pns.iter().copied());
                emit_ack(&mut w, *delay, ranges.into_iter().rev()).unwrap();
            }
            Spec::MsgAck(cum, credit, offsets) => {
                let ranges = ranges_of(offsets.iter().map(|o| cum + o));
                emit_msg_ack(&mut w, *cum, cum + credit, ranges.into_iter()).unwrap();
            }
            Spec::Forward(entries) => emit_forward(&mut w, entries).unwrap(),
            Spec::Reject(ids) => emit_reject(&mut w, ids).unwrap(),
            Spec::Messages(g, ch, id, seq, payloads) => {
                let mut b =
                    MessagesWriter::begin(&mut w, *g, *ch, *id, *seq, &payloads[0]).unwrap();
                for p in &payloads[1..] {
                    b.push(&mut w, p).unwrap();
                }
            }
            _ => {}
        }
        let n = w.position();
        buf.truncate(n);
        buf
    }

    fn build<'a>(spec: &'a Spec, store: &'a [u8]) -> Frame<'a> {
        match spec {
            Spec::Padding(len) => Frame::Padding { len: *len },
            Spec::Ping => Frame::Ping,
            Spec::Ack(..)
            | Spec::MsgAck(..)
            | Spec::Forward(_)
            | Spec::Reject(_)
            | Spec::Messages(..) => {
                let mut parsed = parse_all(store);
                assert_eq!(parsed.len(), 1);
                parsed.remove(0)
            }
            Spec::Message {
                guarantee,
                channel,
                id,
                chan_seq,
                fragment,
                payload,
            } => Frame::Message(MessageFrame {
                guarantee: *guarantee,
                channel: *channel,
                id: *id,
                chan_seq: *chan_seq,
                fragment: *fragment,
                payload,
            }),
            Spec::AmoFloor(floor) => Frame::AmoFloor { floor: *floor },
            Spec::Close(code, reason) => Frame::Close(CloseFrame {
                code: *code,
                reason: reason.as_bytes(),
            }),
        }
    }

    /// What parsing gives back: adjacent padding runs merge.
    fn normalized<'a>(frames: &[Frame<'a>]) -> Vec<Frame<'a>> {
        let mut out: Vec<Frame<'a>> = Vec::new();
        for f in frames {
            match (out.last_mut(), f) {
                (Some(Frame::Padding { len }), Frame::Padding { len: more }) => *len += more,
                _ => out.push(*f),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn frames_round_trip_through_a_datagram(specs in proptest::collection::vec(spec(), 1..8)) {
            let stores: Vec<Vec<u8>> = specs.iter().map(stored).collect();
            let frames_in: Vec<Frame<'_>> =
                specs.iter().zip(&stores).map(|(s, st)| build(s, st)).collect();

            let dg = encode(&frames_in);
            let sum: usize = frames_in.iter().map(Frame::encoded_len).sum();
            prop_assert_eq!(dg.len(), HEADER_LEN + sum + 4);
            let (h, payload) = open(&dg, &Crc32).unwrap();
            prop_assert_eq!(h, HEADER);
            prop_assert_eq!(validate(payload), Ok(()));
            prop_assert_eq!(parse_all(payload), normalized(&frames_in));
        }

        #[test]
        fn ack_ranges_round_trip(
            base in 0..=MAX_VARINT - 100_000,
            set in proptest::collection::btree_set(0..100_000u64, 1..400),
            delay in any::<u64>(),
        ) {
            let ranges = ranges_of(set.into_iter().map(|v| base + v));
            let desc = ranges.iter().rev().cloned();
            let mut buf = [0u8; 2048];
            let mut w = Writer::new(&mut buf);
            emit_ack(&mut w, delay, desc.clone()).unwrap();
            let n = w.position();
            prop_assert_eq!(n, ack_frame_len(delay, desc.clone()));
            let Frame::Ack(ack) = parse_all(&buf[..n])[0] else { panic!("not an ACK") };
            let kept: Vec<_> = desc.take(MAX_ACK_RANGES).collect();
            prop_assert_eq!(ack.ranges().collect::<Vec<_>>(), kept.clone());
            prop_assert_eq!(ack.range_count(), kept.len());
            prop_assert_eq!(ack.smallest(), kept.last().unwrap().start);
            prop_assert_eq!(ack.ack_delay_us, delay.min(MAX_VARINT));
        }

        #[test]
        fn arbitrary_payloads_never_panic_and_valid_ones_reencode(
            bytes in proptest::collection::vec(prop_oneof![0u8..10, 0x40u8..0x42, any::<u8>()], 0..80)
        ) {
            let result = validate(&bytes);
            let collected: Result<Vec<_>, _> = frames(&bytes).collect();
            prop_assert_eq!(result.is_ok(), collected.is_ok() && !bytes.is_empty());
            if let Ok(parsed) = collected {
                let mut buf = vec![0u8; 256];
                let mut w = Writer::new(&mut buf);
                for f in &parsed {
                    f.emit(&mut w).unwrap();
                }
                let n = w.position();
                prop_assert!(n <= bytes.len());
                prop_assert_eq!(parse_all(&buf[..n]), parsed);
            }
        }

        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut d = bytes.clone();
            if d.len() >= MIN_DATAGRAM {
                let n = d.len() - 4;
                seal(&mut d, n, &Crc32).unwrap();
            }
            if let Ok((_, payload)) = open(&d, &Crc32) {
                let _ = validate(payload);
            }
            let _ = open(&bytes, &Crc32);
        }
    }
}

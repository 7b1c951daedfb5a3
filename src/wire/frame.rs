//! Frames: the contents of a packet, back to back after the header.
//!
//! Parsing validates every frame completely before returning it, so the iterators over a
//! frame's ranges or entries ([`AckRanges`](super::AckRanges),
//! [`MsgAckRanges`](super::MsgAckRanges), [`ForwardEntries`], [`RejectIds`]) cannot fail, and nothing is allocated. Emitting refuses (with the error the
//! parser would give) any frame that the parser would reject, and writes nothing when it fails.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;

use super::ack::{AckFrame, MsgAckFrame};
use super::varint::{MAX_VARINT, varint_len};
use super::{Reader, WireError, Writer};
use crate::Guarantee;

/// `PartialEq`, `Eq` and `Debug` for a frame that holds a count and a list read back by
/// `$items`: equal when the decoded items are (the bytes may use longer varints), printed as
/// the list.
macro_rules! list_frame_traits {
    ($frame:ident, $items:ident) => {
        impl PartialEq for $frame<'_> {
            fn eq(&self, other: &Self) -> bool {
                self.count == other.count && self.$items().eq(other.$items())
            }
        }

        impl Eq for $frame<'_> {}

        impl fmt::Debug for $frame<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($frame))
                    .field(&DebugList(self.$items()))
                    .finish()
            }
        }
    };
}

/// Frame type codes.
pub(super) mod ty {
    pub(in crate::wire) const PADDING: u8 = 0x00;
    pub(in crate::wire) const PING: u8 = 0x01;
    pub(in crate::wire) const ACK: u8 = 0x02;
    pub(in crate::wire) const MSG_ACK: u8 = 0x03;
    pub(in crate::wire) const MESSAGE: u8 = 0x04;
    pub(in crate::wire) const FORWARD: u8 = 0x05;
    pub(in crate::wire) const REJECT: u8 = 0x06;
    pub(in crate::wire) const AMO_FLOOR: u8 = 0x07;
    pub(in crate::wire) const CLOSE: u8 = 0x08;
    pub(in crate::wire) const MESSAGES: u8 = 0x09;
}

/// Bits of the MESSAGE and FORWARD flags bytes.
mod flag {
    /// MESSAGE: the two-bit guarantee code.
    pub(super) const GUARANTEE: u8 = 0b0000_0011;
    /// MESSAGE: a channel sequence number follows the id.
    pub(super) const ORDERED: u8 = 0b0000_0100;
    /// MESSAGE: the fragment fields follow.
    pub(super) const FRAGMENT: u8 = 0b0000_1000;
    /// MESSAGE: bits that must be zero.
    pub(super) const RESERVED: u8 = 0b1111_0000;
    /// FORWARD: the entry is ordered (channel and channel sequence follow).
    pub(super) const FORWARD_ORDERED: u8 = 0b0000_0001;
    /// FORWARD: bits that must be zero.
    pub(super) const FORWARD_RESERVED: u8 = !FORWARD_ORDERED;
}

/// Smallest encoding of one FORWARD entry (a one-byte id and the flags byte).
const MIN_FORWARD_ENTRY: usize = 2;

/// One frame, borrowing its variable-length parts from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A run of consecutive zero bytes, collapsed into one frame of `len` bytes.
    Padding {
        /// Number of zero bytes.
        len: usize,
    },
    /// Asks for an acknowledgement.
    Ping,
    /// Packet numbers received.
    Ack(AckFrame<'a>),
    /// Reliable message ids completed, and flow credit.
    MsgAck(MsgAckFrame<'a>),
    /// A whole message or one fragment of it.
    Message(MessageFrame<'a>),
    /// Reliable messages the sender abandoned.
    Forward(ForwardFrame<'a>),
    /// Reliable messages the receiver wants again.
    Reject(RejectFrame<'a>),
    /// At-most-once ids below `floor` will never be sent again.
    AmoFloor {
        /// The first at-most-once id that may still be sent.
        floor: u64,
    },
    /// The connection is closing.
    Close(CloseFrame<'a>),
    /// Whole messages with consecutive ids, one guarantee and one channel.
    Messages(MessagesFrame<'a>),
}

impl<'a> Frame<'a> {
    /// Whether receiving this frame obliges the receiver to send an ACK (everything except
    /// PADDING and ACK).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Padding { .. } | Frame::Ack(_))
    }

    /// Number of bytes [`emit`](Frame::emit) writes, type byte included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Padding { len } => *len,
            Frame::Ping => 1,
            Frame::Ack(f) => f.encoded_len(),
            Frame::MsgAck(f) => f.encoded_len(),
            Frame::Message(f) => f.encoded_len(),
            Frame::Forward(f) => f.encoded_len(),
            Frame::Reject(f) => f.encoded_len(),
            Frame::AmoFloor { floor } => 1 + varint_len(*floor),
            Frame::Close(f) => f.encoded_len(),
            Frame::Messages(f) => f.encoded_len(),
        }
    }

    /// Writes the frame with the shortest varints. On error nothing is written: the frame
    /// does not fit ([`WireError::BufferTooSmall`]), or a field the caller built is out of
    /// range (the error the parser would give for it, or [`WireError::ValueTooLarge`]).
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            Frame::Padding { len } => w.put_zeros(*len),
            Frame::Ping => w.put_u8(ty::PING),
            Frame::Ack(f) => f.emit(w),
            Frame::MsgAck(f) => f.emit(w),
            Frame::Message(f) => f.emit(w),
            Frame::Forward(f) => f.emit(w),
            Frame::Reject(f) => f.emit(w),
            Frame::AmoFloor { floor } => {
                check_varint(*floor)?;
                reserve(w, self.encoded_len())?;
                w.put_u8(ty::AMO_FLOOR)?;
                w.put_varint(*floor)
            }
            Frame::Close(f) => f.emit(w),
            Frame::Messages(f) => f.emit(w),
        }
    }

    /// Reads one frame (a whole run, for padding).
    fn parse(r: &mut Reader<'a>) -> Result<Frame<'a>, WireError> {
        match r.u8()? {
            ty::PADDING => {
                let zeros = r.clone().rest().iter().take_while(|&&b| b == 0).count();
                r.take(zeros)?;
                Ok(Frame::Padding {
                    len: zeros.saturating_add(1),
                })
            }
            ty::PING => Ok(Frame::Ping),
            ty::ACK => AckFrame::parse(r).map(Frame::Ack),
            ty::MSG_ACK => MsgAckFrame::parse(r).map(Frame::MsgAck),
            ty::MESSAGE => MessageFrame::parse(r).map(Frame::Message),
            ty::FORWARD => ForwardFrame::parse(r).map(Frame::Forward),
            ty::REJECT => RejectFrame::parse(r).map(Frame::Reject),
            ty::AMO_FLOOR => Ok(Frame::AmoFloor { floor: r.varint()? }),
            ty::CLOSE => CloseFrame::parse(r).map(Frame::Close),
            ty::MESSAGES => MessagesFrame::parse(r).map(Frame::Messages),
            other => Err(WireError::UnknownFrame(other)),
        }
    }
}

/// Iterates over the frames of a payload: yields each frame, or the first error and then
/// nothing more. See [`frames`].
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<Frame<'a>, WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        // The common frame, a whole MESSAGE (unordered or ordered), is read inline; the others
        // (and anything malformed) by the general parser.
        if let Some((&ty::MESSAGE, rest)) = self.r.clone().rest().split_first() {
            let mut r = Reader::new(rest);
            if let Some(m) = MessageFrame::parse_whole(&mut r) {
                self.r = r;
                return Some(Ok(Frame::Message(m)));
            }
        }
        self.next_any()
    }
}

impl<'a> FrameIter<'a> {
    /// The next frame of any type.
    fn next_any(&mut self) -> Option<Result<Frame<'a>, WireError>> {
        let frame = Frame::parse(&mut self.r);
        self.failed = frame.is_err();
        Some(frame)
    }
}

impl FusedIterator for FrameIter<'_> {}

/// The frames of `payload` (the bytes between header and tag), in order.
///
/// An empty payload yields nothing; [`validate`] rejects it. Since a malformed datagram must
/// be dropped whole, call [`validate`] before acting on any frame.
pub fn frames(payload: &[u8]) -> FrameIter<'_> {
    FrameIter {
        r: Reader::new(payload),
        failed: false,
    }
}

/// Validates a whole frame payload (non-empty, every frame well-formed) without side effects.
pub fn validate(payload: &[u8]) -> Result<(), WireError> {
    if payload.is_empty() {
        return Err(WireError::EmptyPacket);
    }
    frames(payload).try_for_each(|f| f.map(drop))
}

// ---------------------------------------------------------------------------------------------
// MESSAGE

/// The fragment fields of a MESSAGE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Length of the whole message in bytes.
    pub total_len: u64,
    /// Number of fragments (at least 2).
    pub count: u64,
    /// Index of this fragment, `0..count`.
    pub index: u64,
}

impl Fragment {
    /// Byte range of fragment `index` of a `total_len`-byte message cut into `count` chunks
    /// of `ceil(total_len / count)` bytes.
    ///
    /// `None` if inconsistent: `count < 2`, `index >= count`, or a count that leaves some
    /// fragment empty (`(count - 1) * chunk >= total_len`), which also covers an empty message.
    ///
    /// ```
    /// use surely::wire::Fragment;
    /// assert_eq!(Fragment::byte_range(10, 4, 0), Some(0..3));
    /// assert_eq!(Fragment::byte_range(10, 4, 3), Some(9..10));
    /// assert_eq!(Fragment::byte_range(10, 6, 0), None); // fragment 5 would be empty
    /// assert_eq!(Fragment::byte_range(10, 1, 0), None);
    /// ```
    pub fn byte_range(total_len: u64, count: u64, index: u64) -> Option<Range<u64>> {
        if count < 2 || index >= count {
            return None;
        }
        let chunk = total_len.div_ceil(count);
        if count.checked_sub(1)?.checked_mul(chunk)? >= total_len {
            return None;
        }
        let start = index.checked_mul(chunk)?;
        Some(start..start.checked_add(chunk)?.min(total_len))
    }
}

/// A MESSAGE frame: a whole message or one fragment of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFrame<'a> {
    /// The delivery guarantee (selects the id space).
    pub guarantee: Guarantee,
    /// The channel.
    pub channel: u8,
    /// The message id.
    pub id: u64,
    /// Position in the channel's order: `Some` iff the message is ordered (reliable only).
    pub chan_seq: Option<u64>,
    /// The fragment fields, if this is one fragment of a larger message.
    pub fragment: Option<Fragment>,
    /// The payload (the whole message, or this fragment's bytes).
    pub payload: &'a [u8],
}

impl<'a> MessageFrame<'a> {
    /// Number of bytes [`emit`](MessageFrame::emit) writes, type byte included.
    pub fn encoded_len(&self) -> usize {
        MessageFrame::overhead(
            self.chan_seq.is_some(),
            self.id,
            self.chan_seq,
            self.fragment,
            self.payload.len(),
        )
        .saturating_add(self.payload.len())
    }

    /// Bytes the frame takes besides its payload (for the sender to size a payload to the
    /// room left). With `guarantee_ordered` and no `chan_seq` yet, the channel sequence counts
    /// as its largest (8-byte) form.
    pub fn overhead(
        guarantee_ordered: bool,
        id: u64,
        chan_seq: Option<u64>,
        fragment: Option<Fragment>,
        payload_len: usize,
    ) -> usize {
        let seq = match (guarantee_ordered, chan_seq) {
            (_, Some(seq)) => varint_len(seq),
            (true, None) => 8,
            (false, None) => 0,
        };
        let frag = fragment.map_or(0, |f| {
            varint_len(f.total_len) + varint_len(f.count) + varint_len(f.index)
        });
        3 + varint_len(id) + seq + frag + varint_len(len_u64(payload_len))
    }

    /// Writes the frame. Errors, with nothing written: [`WireError::BufferTooSmall`],
    /// [`WireError::OrderedAtMostOnce`], [`WireError::BadFragment`] (fields inconsistent
    /// or the payload not the fragment's size), [`WireError::ValueTooLarge`].
    #[inline]
    pub fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        if self.fragment.is_none() {
            let (g, ch, id, seq) = (self.guarantee, self.channel, self.id, self.chan_seq);
            return emit_whole_message(g, ch, id, seq, self.payload, w);
        }
        self.emit_any(w)
    }

    /// [`emit`](Self::emit) for any shape.
    fn emit_any(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let len = len_u64(self.payload.len());
        let mut flags = self.guarantee.to_bits();
        check_varint(self.id)?;
        if let Some(seq) = self.chan_seq {
            check_varint(seq)?;
            if !self.guarantee.is_reliable() {
                return Err(WireError::OrderedAtMostOnce);
            }
            flags |= flag::ORDERED;
        }
        check_varint(len)?;
        if let Some(f) = self.fragment {
            let range = Fragment::byte_range(f.total_len, f.count, f.index)
                .ok_or(WireError::BadFragment)?;
            check_varint(f.total_len)?;
            if range.end - range.start != len {
                return Err(WireError::BadFragment);
            }
            flags |= flag::FRAGMENT;
        }
        // The frame's bytes are taken whole, then filled in: every write below fits.
        let mut w = w.split_off(self.encoded_len())?;
        w.put_array([ty::MESSAGE, flags, self.channel])?;
        w.put_varint(self.id)?;
        if let Some(seq) = self.chan_seq {
            w.put_varint(seq)?;
        }
        if let Some(f) = self.fragment {
            w.put_varint(f.total_len)?;
            w.put_varint(f.count)?;
            w.put_varint(f.index)?;
        }
        w.put_varint(len)?;
        w.put_slice(self.payload)?;
        debug_assert_eq!(w.remaining(), 0);
        Ok(())
    }

    /// The common shape: a whole message (unordered, or ordered and reliable), complete in
    /// `r`. `None`, with `r` unchanged, for any other frame (or a malformed one):
    /// [`parse`](Self::parse) reads it, or says what is wrong.
    #[inline]
    fn parse_whole(r: &mut Reader<'a>) -> Option<MessageFrame<'a>> {
        let mut c = r.clone();
        let [flags, channel] = c.array().ok()?;
        // Any flag but the guarantee's and ORDERED (or guarantee code 3) is for the general
        // parser, and so is an ordered at-most-once message (an error).
        let m = match Guarantee::from_bits(flags) {
            Some(guarantee) => Self::parse_whole_rest::<false>(&mut c, guarantee, channel)?,
            None => {
                let guarantee =
                    Guarantee::from_bits(flags ^ flag::ORDERED).filter(|g| g.is_reliable())?;
                Self::parse_whole_rest::<true>(&mut c, guarantee, channel)?
            }
        };
        *r = c;
        Some(m)
    }

    /// [`parse_whole`](Self::parse_whole) after the flags and the channel, one copy for each
    /// shape.
    #[inline(always)]
    fn parse_whole_rest<const ORDERED: bool>(
        c: &mut Reader<'a>,
        guarantee: Guarantee,
        channel: u8,
    ) -> Option<MessageFrame<'a>> {
        let id = c.varint().ok()?;
        let chan_seq = if ORDERED {
            Some(c.varint().ok()?)
        } else {
            None
        };
        let len = c.varint().ok()?;
        let payload = c.take(usize::try_from(len).ok()?).ok()?;
        Some(MessageFrame {
            guarantee,
            channel,
            id,
            chan_seq,
            fragment: None,
            payload,
        })
    }

    /// Reads a MESSAGE frame of any shape.
    fn parse(r: &mut Reader<'a>) -> Result<MessageFrame<'a>, WireError> {
        let MessageHead {
            flags,
            guarantee,
            channel,
            id,
            seq: chan_seq,
        } = MessageHead::parse(r, flag::RESERVED)?;
        let fragment = if flags & flag::FRAGMENT != 0 {
            Some(Fragment {
                total_len: r.varint()?,
                count: r.varint()?,
                index: r.varint()?,
            })
        } else {
            None
        };
        let len = r.varint()?;
        if let Some(f) = fragment {
            let range = Fragment::byte_range(f.total_len, f.count, f.index)
                .ok_or(WireError::BadFragment)?;
            if range.end - range.start != len {
                return Err(WireError::BadFragment);
            }
        }
        let payload = r.take(usize::try_from(len).map_err(|_| WireError::Truncated)?)?;
        Ok(MessageFrame {
            guarantee,
            channel,
            id,
            chan_seq,
            fragment,
            payload,
        })
    }
}

/// The fields a MESSAGE or MESSAGES frame starts with, after the type byte.
struct MessageHead {
    flags: u8,
    guarantee: Guarantee,
    channel: u8,
    id: u64,
    /// The channel sequence number, if the ordered flag is set.
    seq: Option<u64>,
}

impl MessageHead {
    /// Reads the flags (any of the `refused` bits set is [`WireError::BadFlags`]; a guarantee
    /// code of 3 and an ordered at-most-once message are malformed), the channel, the id, and
    /// the channel sequence number if ordered.
    #[inline(always)]
    fn parse(r: &mut Reader<'_>, refused: u8) -> Result<MessageHead, WireError> {
        let flags = r.u8()?;
        if flags & refused != 0 {
            return Err(WireError::BadFlags(flags));
        }
        let guarantee =
            Guarantee::from_bits(flags & flag::GUARANTEE).ok_or(WireError::BadGuarantee)?;
        let ordered = flags & flag::ORDERED != 0;
        if ordered && !guarantee.is_reliable() {
            return Err(WireError::OrderedAtMostOnce);
        }
        let channel = r.u8()?;
        let id = r.varint()?;
        let seq = if ordered { Some(r.varint()?) } else { None };
        Ok(MessageHead {
            flags,
            guarantee,
            channel,
            id,
            seq,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// MESSAGES

/// The most messages a [`MessagesWriter`] puts in one frame: its count then fits the one
/// byte it reserves. (The parser takes any count the frame's bytes can hold.)
pub const MAX_MESSAGES_WRITTEN: usize = 63;

/// A MESSAGES frame: whole messages with consecutive ids, all with one guarantee and one
/// channel; ordered ones also have consecutive channel sequence numbers. A run of small
/// messages sent together costs one frame header instead of one each.
///
/// Equality compares the fields and the decoded messages.
#[derive(Clone, Copy)]
pub struct MessagesFrame<'a> {
    guarantee: Guarantee,
    channel: u8,
    first_id: u64,
    first_seq: Option<u64>,
    count: usize,
    /// The `(len, payload)` entries.
    raw: &'a [u8],
}

impl<'a> MessagesFrame<'a> {
    /// The messages' guarantee.
    pub fn guarantee(&self) -> Guarantee {
        self.guarantee
    }

    /// The messages' channel.
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// The first message's id; the others follow it one by one.
    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// The first message's channel sequence number if the messages are ordered.
    pub fn first_seq(&self) -> Option<u64> {
        self.first_seq
    }

    /// Number of messages (at least 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a MESSAGES frame has at least one message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The messages, in id order, each as the MESSAGE frame of a whole message would carry it.
    #[inline]
    pub fn messages(&self) -> MessagesIter<'a> {
        MessagesIter {
            guarantee: self.guarantee,
            channel: self.channel,
            first_id: self.first_id,
            seq: self.first_seq,
            id: self.first_id,
            left: self.count,
            r: Reader::new(self.raw),
        }
    }

    fn parse(r: &mut Reader<'a>) -> Result<MessagesFrame<'a>, WireError> {
        // Whole messages only: no fragment fields.
        let MessageHead {
            guarantee,
            channel,
            id: first_id,
            seq: first_seq,
            ..
        } = MessageHead::parse(r, flag::RESERVED | flag::FRAGMENT)?;
        // Each entry takes at least its one-byte length.
        let count = read_count(r, 1)?;
        // The last id (and sequence number) must be a varint too. Both operands are at most
        // MAX_VARINT (below 2^62), so the sums cannot overflow.
        let last = len_u64(count - 1);
        if first_id + last > MAX_VARINT || first_seq.is_some_and(|s| s + last > MAX_VARINT) {
            return Err(WireError::ValueTooLarge);
        }
        // Walked on a copy of the reader, which stays in registers.
        let start = r.clone();
        let mut c = r.clone();
        for _ in 0..count {
            let len = c.varint()?;
            c.take(usize::try_from(len).map_err(|_| WireError::Truncated)?)?;
        }
        let raw = consumed(start, &c)?;
        *r = c;
        Ok(MessagesFrame {
            guarantee,
            channel,
            first_id,
            first_seq,
            count,
            raw,
        })
    }

    /// Header bytes before the entries: type, flags, channel, first id, first sequence
    /// number and count.
    fn header_len(first_id: u64, first_seq: Option<u64>, count: usize) -> usize {
        3 + varint_len(first_id) + first_seq.map_or(0, varint_len) + varint_len(len_u64(count))
    }

    /// The length `emit` writes: lengths re-encoded in their shortest form.
    fn encoded_len(&self) -> usize {
        let entries: usize = self
            .messages()
            .map(|m| varint_len(len_u64(m.payload.len())) + m.payload.len())
            .sum();
        Self::header_len(self.first_id, self.first_seq, self.count) + entries
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let mut w = w.split_off(self.encoded_len())?;
        let flags = self.guarantee.to_bits() | self.first_seq.map_or(0, |_| flag::ORDERED);
        w.put_array([ty::MESSAGES, flags, self.channel])?;
        w.put_varint(self.first_id)?;
        if let Some(seq) = self.first_seq {
            w.put_varint(seq)?;
        }
        w.put_varint(len_u64(self.count))?;
        for m in self.messages() {
            w.put_varint(len_u64(m.payload.len()))?;
            w.put_slice(m.payload)?;
        }
        debug_assert_eq!(w.remaining(), 0);
        Ok(())
    }
}

list_frame_traits!(MessagesFrame, messages);

/// The messages of a [`MessagesFrame`].
#[derive(Debug, Clone)]
pub struct MessagesIter<'a> {
    guarantee: Guarantee,
    channel: u8,
    first_id: u64,
    /// The first message's sequence number, if ordered.
    seq: Option<u64>,
    id: u64,
    left: usize,
    r: Reader<'a>,
}

impl<'a> MessagesIter<'a> {
    /// The id of the next message (one past the last, at the end).
    pub fn next_id(&self) -> u64 {
        self.id
    }

    /// The next message's payload only (its id was [`next_id`](Self::next_id)): what
    /// [`next`](Iterator::next) gives, without building the frame.
    #[inline(always)]
    pub fn next_payload(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let entry = self
            .r
            .varint()
            .ok()
            .and_then(|len| self.r.take(usize::try_from(len).ok()?).ok());
        let Some(payload) = entry else {
            self.left = 0; // unreachable: the frame was validated
            return None;
        };
        self.id += 1;
        Some(payload)
    }
}

impl<'a> Iterator for MessagesIter<'a> {
    type Item = MessageFrame<'a>;

    #[inline]
    fn next(&mut self) -> Option<MessageFrame<'a>> {
        let id = self.id;
        // The sequence number advances with the id.
        let chan_seq = self.seq.map(|s| s + (id - self.first_id));
        let payload = self.next_payload()?;
        Some(MessageFrame {
            guarantee: self.guarantee,
            channel: self.channel,
            id,
            chan_seq,
            fragment: None,
            payload,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for MessagesIter<'_> {}
impl FusedIterator for MessagesIter<'_> {}

/// Writes a MESSAGES frame one message at a time. The frame on the wire is complete after
/// every step (the count byte is updated as messages are added), so the writer may simply be
/// dropped when the next message does not fit or does not belong.
///
/// ```
/// use surely::Guarantee;
/// use surely::wire::{self, Frame, MessagesWriter, Writer};
///
/// let mut buf = [0u8; 64];
/// let mut w = Writer::new(&mut buf);
/// let mut batch = MessagesWriter::begin(&mut w, Guarantee::ExactlyOnce, 0, 100, None, b"one")?;
/// batch.push(&mut w, b"two")?;
/// let n = w.position();
/// let Some(Ok(Frame::Messages(f))) = wire::frames(&buf[..n]).next() else { panic!() };
/// let ids: Vec<(u64, &[u8])> = f.messages().map(|m| (m.id, m.payload)).collect();
/// assert_eq!(ids, [(100, &b"one"[..]), (101, &b"two"[..])]);
/// # Ok::<(), wire::WireError>(())
/// ```
#[derive(Debug)]
pub struct MessagesWriter<'a> {
    guarantee: Guarantee,
    channel: u8,
    /// The count byte in the frame's header.
    count_byte: &'a mut u8,
    count: usize,
    /// How many messages the frame may hold: [`MAX_MESSAGES_WRITTEN`], or fewer when the ids
    /// (or sequence numbers) would pass [`MAX_VARINT`].
    cap: usize,
}

impl<'a> MessagesWriter<'a> {
    /// Writes the frame's header and its first message, `first_id` (at `first_seq` in
    /// `channel`'s order if ordered). Errors, with nothing written:
    /// [`WireError::BufferTooSmall`], [`WireError::OrderedAtMostOnce`],
    /// [`WireError::ValueTooLarge`].
    #[inline]
    pub fn begin(
        w: &mut Writer<'a>,
        guarantee: Guarantee,
        channel: u8,
        first_id: u64,
        first_seq: Option<u64>,
        payload: &[u8],
    ) -> Result<MessagesWriter<'a>, WireError> {
        check_varint(first_id)?;
        let mut flags = guarantee.to_bits();
        let mut top = first_id;
        if let Some(seq) = first_seq {
            check_varint(seq)?;
            if !guarantee.is_reliable() {
                return Err(WireError::OrderedAtMostOnce);
            }
            flags |= flag::ORDERED;
            top = top.max(seq);
        }
        let len = len_u64(payload.len());
        check_varint(len)?;
        let head = Self::header_len_one(first_id, first_seq);
        reserve(w, head + varint_len(len) + payload.len())?;
        let mut h = w.split_off(head)?;
        h.put_array([ty::MESSAGES, flags, channel])?;
        h.put_varint(first_id)?;
        if let Some(seq) = first_seq {
            h.put_varint(seq)?;
        }
        let [count_byte] = h.reserve_array::<1>()?;
        *count_byte = 1;
        w.put_varint(len)?;
        w.put_slice(payload)?;
        // Ids up to first_id + cap - 1 stay varints (MAX_VARINT - top < 2^62 fits a usize on
        // 64-bit platforms; the min keeps it exact elsewhere).
        let ids_left = usize::try_from(MAX_VARINT - top).unwrap_or(usize::MAX);
        Ok(MessagesWriter {
            guarantee,
            channel,
            count_byte,
            count: 1,
            cap: MAX_MESSAGES_WRITTEN.min(ids_left.saturating_add(1)),
        })
    }

    /// Header bytes with a one-byte count.
    fn header_len_one(first_id: u64, first_seq: Option<u64>) -> usize {
        3 + varint_len(first_id) + first_seq.map_or(0, varint_len) + 1
    }

    /// Adds the next message (the next id, and the next sequence number if ordered). Errors,
    /// with nothing written: [`WireError::BufferTooSmall`] when it does not fit in `w` or the
    /// frame is full ([`is_full`](Self::is_full)), [`WireError::ValueTooLarge`].
    #[inline(always)]
    pub fn push(&mut self, w: &mut Writer<'a>, payload: &[u8]) -> Result<(), WireError> {
        if self.is_full() {
            return Err(WireError::BufferTooSmall);
        }
        let len = len_u64(payload.len());
        check_varint(len)?;
        reserve(w, varint_len(len) + payload.len())?;
        w.put_varint(len)?;
        w.put_slice(payload)?;
        self.count += 1;
        // At most MAX_MESSAGES_WRITTEN (63): a one-byte varint.
        *self.count_byte = self.count as u8;
        Ok(())
    }

    /// Number of messages written.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The frame's guarantee.
    pub fn guarantee(&self) -> Guarantee {
        self.guarantee
    }

    /// The frame's channel.
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// Always `false`: the first message is written by [`begin`](Self::begin).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the frame holds as many messages as it may.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.count >= self.cap
    }
}

// ---------------------------------------------------------------------------------------------
// FORWARD

/// One entry of a FORWARD frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardEntry {
    /// The reliable id the sender abandoned.
    pub id: u64,
    /// `(channel, chan_seq)` if the message was ordered.
    pub ordered: Option<(u8, u64)>,
}

impl ForwardEntry {
    fn encoded_len(&self) -> usize {
        varint_len(self.id) + 1 + self.ordered.map_or(0, |(_, seq)| 1 + varint_len(seq))
    }

    fn parse(r: &mut Reader<'_>) -> Result<ForwardEntry, WireError> {
        let id = r.varint()?;
        let flags = r.u8()?;
        if flags & flag::FORWARD_RESERVED != 0 {
            return Err(WireError::BadFlags(flags));
        }
        let ordered = if flags & flag::FORWARD_ORDERED != 0 {
            Some((r.u8()?, r.varint()?))
        } else {
            None
        };
        Ok(ForwardEntry { id, ordered })
    }
}

/// A FORWARD frame: reliable messages the sender abandoned.
///
/// Equality compares the decoded entries.
#[derive(Clone, Copy)]
pub struct ForwardFrame<'a> {
    count: usize,
    raw: &'a [u8],
}

impl<'a> ForwardFrame<'a> {
    /// The entries, in frame order.
    pub fn entries(&self) -> ForwardEntries<'a> {
        ForwardEntries {
            left: self.count,
            r: Reader::new(self.raw),
        }
    }

    /// Number of entries (at least 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a FORWARD frame has at least one entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn parse(r: &mut Reader<'a>) -> Result<ForwardFrame<'a>, WireError> {
        let count = read_count(r, MIN_FORWARD_ENTRY)?;
        let start = r.clone();
        for _ in 0..count {
            ForwardEntry::parse(r)?;
        }
        Ok(ForwardFrame {
            count,
            raw: consumed(start, r)?,
        })
    }

    /// The length `emit` writes: entries re-encoded in their shortest form (the received
    /// bytes may have used longer varints).
    fn encoded_len(&self) -> usize {
        forward_len(self.count, self.entries())
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        emit_forward_entries(w, self.count, self.entries())
    }
}

list_frame_traits!(ForwardFrame, entries);

/// The entries of a [`ForwardFrame`].
#[derive(Debug, Clone)]
pub struct ForwardEntries<'a> {
    left: usize,
    r: Reader<'a>,
}

impl Iterator for ForwardEntries<'_> {
    type Item = ForwardEntry;

    fn next(&mut self) -> Option<ForwardEntry> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let entry = ForwardEntry::parse(&mut self.r).ok();
        if entry.is_none() {
            self.left = 0; // unreachable: the frame was validated
        }
        entry
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ForwardEntries<'_> {}
impl FusedIterator for ForwardEntries<'_> {}

/// Writes the MESSAGE frame of a whole message, unordered or (with `chan_seq`) ordered: what
/// [`MessageFrame::emit`] writes for that shape, from the fields themselves rather than a
/// frame built for the call. Errors, with nothing written: [`WireError::BufferTooSmall`],
/// [`WireError::OrderedAtMostOnce`], [`WireError::ValueTooLarge`].
#[inline]
pub(crate) fn emit_whole_message(
    guarantee: Guarantee,
    channel: u8,
    id: u64,
    chan_seq: Option<u64>,
    payload: &[u8],
    w: &mut Writer<'_>,
) -> Result<(), WireError> {
    // One copy of the writer for each shape, so the unordered one tests nothing it lacks.
    match chan_seq {
        None => emit_whole::<false>(guarantee, channel, id, 0, payload, w),
        Some(seq) => emit_whole::<true>(guarantee, channel, id, seq, payload, w),
    }
}

/// [`emit_whole_message`] for one shape: `seq` is written when `ORDERED`.
#[inline(always)]
fn emit_whole<const ORDERED: bool>(
    guarantee: Guarantee,
    channel: u8,
    id: u64,
    seq: u64,
    payload: &[u8],
    w: &mut Writer<'_>,
) -> Result<(), WireError> {
    let len = len_u64(payload.len());
    let mut flags = guarantee.to_bits();
    check_varint(id)?;
    let mut total = 3 + varint_len(id) + payload.len();
    if ORDERED {
        check_varint(seq)?;
        if !guarantee.is_reliable() {
            return Err(WireError::OrderedAtMostOnce);
        }
        flags |= flag::ORDERED;
        total += varint_len(seq);
    }
    check_varint(len)?;
    total += varint_len(len);
    // The frame's bytes are taken whole, then filled in: every write below fits.
    let mut w = w.split_off(total)?;
    w.put_array([ty::MESSAGE, flags, channel])?;
    w.put_varint(id)?;
    if ORDERED {
        w.put_varint(seq)?;
    }
    w.put_varint(len)?;
    w.put_slice(payload)?;
    debug_assert_eq!(w.remaining(), 0);
    Ok(())
}

/// Emits a FORWARD frame with every entry. An empty list writes nothing. Errors, with nothing
/// written: [`WireError::BufferTooSmall`], [`WireError::ValueTooLarge`].
pub fn emit_forward(w: &mut Writer<'_>, entries: &[ForwardEntry]) -> Result<(), WireError> {
    emit_forward_entries(w, entries.len(), entries.iter().copied())
}

/// Number of bytes [`emit_forward`] writes (0 for no entries).
pub fn forward_frame_len(entries: &[ForwardEntry]) -> usize {
    forward_len(entries.len(), entries.iter().copied())
}

fn forward_len(count: usize, entries: impl Iterator<Item = ForwardEntry>) -> usize {
    if count == 0 {
        return 0;
    }
    let body: usize = entries.map(|e| e.encoded_len()).sum();
    1 + varint_len(len_u64(count)) + body
}

fn emit_forward_entries<I>(w: &mut Writer<'_>, count: usize, entries: I) -> Result<(), WireError>
where
    I: Iterator<Item = ForwardEntry> + Clone,
{
    if count == 0 {
        return Ok(());
    }
    for e in entries.clone() {
        check_varint(e.id)?;
        if let Some((_, seq)) = e.ordered {
            check_varint(seq)?;
        }
    }
    reserve(w, forward_len(count, entries.clone()))?;
    w.put_u8(ty::FORWARD)?;
    w.put_varint(len_u64(count))?;
    for e in entries {
        w.put_varint(e.id)?;
        match e.ordered {
            Some((channel, seq)) => {
                w.put_u8(flag::FORWARD_ORDERED)?;
                w.put_u8(channel)?;
                w.put_varint(seq)?;
            }
            None => w.put_u8(0)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// REJECT

/// A REJECT frame: reliable ids the receiver wants sent again.
///
/// Equality compares the decoded ids.
#[derive(Clone, Copy)]
pub struct RejectFrame<'a> {
    count: usize,
    raw: &'a [u8],
}

impl<'a> RejectFrame<'a> {
    /// The ids, in frame order.
    pub fn ids(&self) -> RejectIds<'a> {
        RejectIds {
            left: self.count,
            r: Reader::new(self.raw),
        }
    }

    /// Number of ids (at least 1).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always `false`: a REJECT frame has at least one id.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn parse(r: &mut Reader<'a>) -> Result<RejectFrame<'a>, WireError> {
        let count = read_count(r, 1)?;
        let start = r.clone();
        for _ in 0..count {
            r.varint()?;
        }
        Ok(RejectFrame {
            count,
            raw: consumed(start, r)?,
        })
    }

    fn encoded_len(&self) -> usize {
        reject_len(self.count, self.ids())
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        emit_reject_ids(w, self.count, self.ids())
    }
}

list_frame_traits!(RejectFrame, ids);

/// The ids of a [`RejectFrame`].
#[derive(Debug, Clone)]
pub struct RejectIds<'a> {
    left: usize,
    r: Reader<'a>,
}

impl Iterator for RejectIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let id = self.r.varint().ok();
        if id.is_none() {
            self.left = 0; // unreachable: the frame was validated
        }
        id
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for RejectIds<'_> {}
impl FusedIterator for RejectIds<'_> {}

/// Emits a REJECT frame with every id. An empty list writes nothing. Errors, with nothing
/// written: [`WireError::BufferTooSmall`], [`WireError::ValueTooLarge`].
pub fn emit_reject(w: &mut Writer<'_>, ids: &[u64]) -> Result<(), WireError> {
    emit_reject_ids(w, ids.len(), ids.iter().copied())
}

/// Number of bytes [`emit_reject`] writes (0 for no ids).
pub fn reject_frame_len(ids: &[u64]) -> usize {
    reject_len(ids.len(), ids.iter().copied())
}

fn reject_len(count: usize, ids: impl Iterator<Item = u64>) -> usize {
    if count == 0 {
        return 0;
    }
    let body: usize = ids.map(varint_len).sum();
    1 + varint_len(len_u64(count)) + body
}

fn emit_reject_ids<I>(w: &mut Writer<'_>, count: usize, ids: I) -> Result<(), WireError>
where
    I: Iterator<Item = u64> + Clone,
{
    if count == 0 {
        return Ok(());
    }
    ids.clone().try_for_each(check_varint)?;
    reserve(w, reject_len(count, ids.clone()))?;
    w.put_u8(ty::REJECT)?;
    w.put_varint(len_u64(count))?;
    ids.into_iter().try_for_each(|id| w.put_varint(id))
}

// ---------------------------------------------------------------------------------------------
// CLOSE

/// A CLOSE frame: the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// 0 for a graceful close by the application; other codes are defined by the connection.
    pub code: u64,
    /// Human-readable reason: valid UTF-8, at most [`MAX_REASON_LEN`](super::MAX_REASON_LEN) bytes.
    pub reason: &'a [u8],
}

impl<'a> CloseFrame<'a> {
    fn encoded_len(&self) -> usize {
        1 + varint_len(self.code)
            + varint_len(len_u64(self.reason.len()).min(MAX_VARINT))
            + self.reason.len()
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        check_varint(self.code)?;
        check_reason(self.reason)?;
        reserve(w, self.encoded_len())?;
        w.put_u8(ty::CLOSE)?;
        w.put_varint(self.code)?;
        w.put_varint(len_u64(self.reason.len()))?;
        w.put_slice(self.reason)
    }

    fn parse(r: &mut Reader<'a>) -> Result<CloseFrame<'a>, WireError> {
        let code = r.varint()?;
        let len = r.varint()?;
        if !crate::limits::reason_len_ok(len) {
            return Err(WireError::ReasonTooLong);
        }
        let reason = r.take(len as usize)?;
        check_reason(reason)?;
        Ok(CloseFrame { code, reason })
    }
}

fn check_reason(reason: &[u8]) -> Result<(), WireError> {
    if !crate::limits::reason_len_ok(len_u64(reason.len())) {
        return Err(WireError::ReasonTooLong);
    }
    std::str::from_utf8(reason)
        .map(drop)
        .map_err(|_| WireError::BadReason)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Refuses a value that does not fit in a varint.
pub(super) fn check_varint(v: u64) -> Result<(), WireError> {
    if v > MAX_VARINT {
        Err(WireError::ValueTooLarge)
    } else {
        Ok(())
    }
}

/// Fails with [`WireError::BufferTooSmall`] unless `len` bytes fit, so that a frame is
/// written whole or not at all.
pub(super) fn reserve(w: &Writer<'_>, len: usize) -> Result<(), WireError> {
    if len > w.remaining() {
        Err(WireError::BufferTooSmall)
    } else {
        Ok(())
    }
}

/// A length as a `u64` (lossless on every supported platform; saturates otherwise).
fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Reads the entry count of a FORWARD or REJECT frame: at least 1, and no more than the
/// bytes left could hold at `min_entry` bytes per entry.
fn read_count(r: &mut Reader<'_>, min_entry: usize) -> Result<usize, WireError> {
    let count = r.varint()?;
    if count == 0 {
        return Err(WireError::ZeroCount);
    }
    let room = r.remaining() / min_entry;
    usize::try_from(count)
        .ok()
        .filter(|&c| c <= room)
        .ok_or(WireError::CountTooLarge)
}

/// The bytes `end` consumed since it was at `start` (a clone taken earlier).
pub(super) fn consumed<'a>(mut start: Reader<'a>, end: &Reader<'a>) -> Result<&'a [u8], WireError> {
    let n = start
        .remaining()
        .checked_sub(end.remaining())
        .ok_or(WireError::Truncated)?;
    start.take(n)
}

/// Debug-prints an iterator's items as a list.
pub(super) struct DebugList<I>(pub(super) I);

impl<I> fmt::Debug for DebugList<I>
where
    I: Iterator + Clone,
    I::Item: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.clone()).finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{ack_frame_len, emit_ack, emit_msg_ack, msg_ack_frame_len};
    use super::*;

    /// Parses a payload that must hold exactly one valid frame.
    fn one(payload: &[u8]) -> Frame<'_> {
        validate(payload).unwrap();
        let mut it = frames(payload);
        let f = it.next().unwrap().unwrap();
        assert!(it.next().is_none(), "more than one frame in {payload:02x?}");
        f
    }

    /// A varint of `v` (masked to fit) in the form of `form` bytes, shortest or not.
    fn varint_form(v: u64, form: usize) -> Vec<u8> {
        let bits = 8 * form - 2;
        let v = if bits >= 64 { v } else { v & ((1 << bits) - 1) };
        super::super::varint::reference(v & MAX_VARINT, form)
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The fast path for whole messages (unordered or ordered) reads exactly what the
        /// general parser reads, and leaves anything else to it untouched.
        #[test]
        fn the_whole_message_fast_path_agrees_with_the_general_parser(
            flags in prop_oneof![0..8u8, any::<u8>()],
            channel in any::<u8>(),
            id in any::<u64>(),
            id_form in proptest::sample::select(vec![1usize, 2, 4, 8]),
            // The ordered and fragment fields, or a lack of the id, when the flags say so.
            extra in prop_oneof![
                Just(vec![]),
                proptest::collection::vec(any::<u8>(), 1..5),
            ],
            len in prop_oneof![0..80u64, any::<u64>()],
            len_form in proptest::sample::select(vec![1usize, 2, 4, 8]),
            tail in proptest::collection::vec(any::<u8>(), 0..100),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = vec![flags, channel];
            bytes.extend(varint_form(id, id_form));
            bytes.extend(extra.iter().map(|b| b & 0x3f));
            bytes.extend(varint_form(len, len_form));
            bytes.extend(tail);
            for end in [bytes.len(), cut.index(bytes.len() + 1)] {
                let input = &bytes[..end];
                let mut fast = Reader::new(input);
                let mut general = Reader::new(input);
                let want = MessageFrame::parse(&mut general);
                match MessageFrame::parse_whole(&mut fast) {
                    Some(m) => {
                        prop_assert_eq!(Ok(m), want);
                        prop_assert_eq!(fast.remaining(), general.remaining());
                    }
                    None => {
                        prop_assert_eq!(fast.remaining(), input.len());
                        if let Ok(m) = want {
                            prop_assert!(m.fragment.is_some());
                        }
                    }
                }
                // Through the frame iterator, which takes the fast path first.
                let mut payload = vec![ty::MESSAGE];
                payload.extend_from_slice(input);
                let mut it = frames(&payload);
                prop_assert_eq!(it.next(), Some(want.map(Frame::Message)));
                if want.is_ok() {
                    prop_assert_eq!(it.r.remaining(), general.remaining());
                }
            }
        }
    }

    proptest::proptest! {
        /// The fast path for whole messages (unordered or ordered) writes what the general
        /// emitter writes, or fails the same way.
        #[test]
        fn the_whole_message_emit_agrees_with_the_general_emitter(
            guarantee in proptest::sample::select(vec![
                Guarantee::AtMostOnce,
                Guarantee::AtLeastOnce,
                Guarantee::ExactlyOnce,
            ]),
            channel in any::<u8>(),
            id in prop_oneof![
                0..100_000u64,
                any::<u64>().prop_map(|v| v >> (v % 64)),
            ],
            chan_seq in prop_oneof![
                Just(None),
                any::<u64>().prop_map(|v| Some(v >> (v % 64))),
            ],
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            room in 0..20_100usize,
        ) {
            let m = MessageFrame {
                guarantee,
                channel,
                id,
                chan_seq,
                fragment: None,
                payload: &payload,
            };
            let mut fast = vec![0xaa; room];
            let mut general = vec![0xaa; room];
            let mut wf = Writer::new(&mut fast);
            let mut wg = Writer::new(&mut general);
            prop_assert_eq!(
                emit_whole_message(guarantee, channel, id, chan_seq, &payload, &mut wf),
                m.emit_any(&mut wg)
            );
            prop_assert_eq!(wf.position(), wg.position());
            prop_assert_eq!(fast, general);
        }
    }

    fn emitted(f: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = Writer::new(&mut buf);
        f(&mut w).unwrap();
        let n = w.position();
        buf.truncate(n);
        buf
    }

    const MAX: [u8; 8] = [0xff; 8];

    #[test]
    fn malformed_frames_are_rejected_with_a_named_error() {
        let cat = |parts: &[&[u8]]| parts.concat();
        let table: Vec<(Vec<u8>, WireError)> = vec![
            (vec![], WireError::EmptyPacket),
            (vec![0x0a], WireError::UnknownFrame(0x0a)),
            (vec![0x01, 0xff], WireError::UnknownFrame(0xff)),
            // ACK
            (vec![2, 5], WireError::Truncated),
            (vec![2, 5, 0, 0x40, 0x40, 0], WireError::TooManyRanges),
            (vec![2, 5, 0, 0, 6], WireError::AckRangeUnderflow),
            (vec![2, 5, 0, 1, 0, 4, 0], WireError::AckRangeUnderflow),
            (vec![2, 5, 0, 1, 0, 3, 1], WireError::AckRangeUnderflow),
            (vec![2, 5, 0, 1, 0, 3], WireError::Truncated),
            // MSG_ACK
            (vec![3, 5, 4, 0], WireError::LimitBelowCumulative),
            (vec![3, 0, 0, 0x40, 65], WireError::TooManyRanges),
            (vec![3, 0, 10, 1, 0, 0], WireError::BadMsgAckRange),
            (
                cat(&[&[3], &MAX, &MAX, &[1, 1, 0]]),
                WireError::BadMsgAckRange,
            ),
            (vec![3, 0, 10, 2, 1, 0], WireError::Truncated),
            // MESSAGE
            (vec![4, 0x10, 0, 0, 0], WireError::BadFlags(0x10)),
            (vec![4, 0x83, 0, 0, 0], WireError::BadFlags(0x83)),
            (vec![4, 0x03, 0, 0, 0], WireError::BadGuarantee),
            (vec![4, 0x04, 0, 0, 0, 0], WireError::OrderedAtMostOnce),
            (vec![4, 0x09, 0, 0, 10, 1, 0, 10], WireError::BadFragment),
            (vec![4, 0x09, 0, 0, 10, 4, 4, 1, 0], WireError::BadFragment),
            (
                vec![4, 0x09, 0, 0, 10, 6, 0, 2, 0, 0],
                WireError::BadFragment,
            ),
            (vec![4, 0x09, 0, 0, 0, 2, 0, 0], WireError::BadFragment),
            (
                vec![4, 0x09, 0, 0, 10, 4, 0, 2, 0, 0],
                WireError::BadFragment,
            ),
            (vec![4, 0x01, 0, 0, 5, 1, 2], WireError::Truncated),
            (cat(&[&[4, 0x01, 0, 0], &MAX]), WireError::Truncated),
            // FORWARD
            (vec![5, 0], WireError::ZeroCount),
            (vec![5, 3, 0, 0], WireError::CountTooLarge),
            (cat(&[&[5], &MAX, &[0, 0]]), WireError::CountTooLarge),
            (vec![5, 1, 0, 2], WireError::BadFlags(2)),
            (vec![5, 1, 0, 1, 7], WireError::Truncated),
            // REJECT
            (vec![6, 0], WireError::ZeroCount),
            (vec![6, 2, 1], WireError::CountTooLarge),
            (vec![6, 1, 0x40], WireError::Truncated),
            // AMO_FLOOR
            (vec![7], WireError::Truncated),
            // CLOSE
            (vec![8, 0, 0x41, 0x00], WireError::ReasonTooLong),
            (vec![8, 0, 1, 0xff], WireError::BadReason),
            (vec![8, 0, 2, 0xc3, 0x28], WireError::BadReason),
            (vec![8, 0, 2, b'a'], WireError::Truncated),
            // MESSAGES
            (vec![9], WireError::Truncated),
            (vec![9, 0x11, 0, 0, 1, 0], WireError::BadFlags(0x11)),
            (vec![9, 0x09, 0, 0, 1, 0], WireError::BadFlags(0x09)),
            (vec![9, 3, 0, 0, 1, 0], WireError::BadGuarantee),
            (vec![9, 4, 0, 0, 0, 1, 0], WireError::OrderedAtMostOnce),
            (vec![9, 1, 0, 0, 0], WireError::ZeroCount),
            (vec![9, 1, 0, 0, 2, 0], WireError::CountTooLarge),
            (vec![9, 1, 0, 0, 2, 5, 1], WireError::Truncated),
            (vec![9, 1, 0, 0, 1, 0x40], WireError::Truncated),
            // The last id, or the last sequence number, would pass MAX_VARINT.
            (
                cat(&[&[9, 1, 0], &MAX, &[2, 0, 0]]),
                WireError::ValueTooLarge,
            ),
            (
                cat(&[&[9, 5, 0, 0], &MAX, &[2, 0, 0]]),
                WireError::ValueTooLarge,
            ),
            // A valid frame followed by the start of another: trailing garbage.
            (vec![1, 4, 1], WireError::Truncated),
            (vec![0, 0, 1, 8], WireError::Truncated),
        ];
        for (payload, err) in &table {
            assert_eq!(validate(payload), Err(*err), "payload {payload:02x?}");
            // The iterator stops after the error.
            let mut it = frames(payload);
            if !payload.is_empty() {
                assert_eq!(it.by_ref().find_map(Result::err), Some(*err));
            }
            assert!(it.next().is_none());
        }
    }

    #[test]
    fn every_frame_type_has_the_documented_layout() {
        assert_eq!(one(&[0, 0, 0]), Frame::Padding { len: 3 });
        assert_eq!(one(&[1]), Frame::Ping);
        assert_eq!(one(&[7, 0x40, 0x64]), Frame::AmoFloor { floor: 100 });

        // ACK: largest 12, delay 25, 2 more ranges, first range 2 -> 10..13,
        // gap 1 len 3 -> 4..8, gap 2 len 0 -> 0..1.
        let Frame::Ack(ack) = one(&[2, 12, 25, 2, 2, 1, 3, 2, 0]) else {
            panic!()
        };
        assert_eq!((ack.largest, ack.ack_delay_us), (12, 25));
        assert_eq!(ack.ranges().collect::<Vec<_>>(), [10..13, 4..8, 0..1]);
        assert_eq!(ack.ranges().len(), 3);
        assert_eq!((ack.smallest(), ack.range_count()), (0, 3));
        assert!(!Frame::Ack(ack).is_ack_eliciting());

        // MSG_ACK: cumulative 10, limit 100, ranges 11..12 and 15..20.
        let Frame::MsgAck(m) = one(&[3, 10, 0x40, 100, 2, 1, 0, 3, 4]) else {
            panic!()
        };
        assert_eq!((m.cumulative, m.limit, m.range_count()), (10, 100, 2));
        assert_eq!(m.ranges().collect::<Vec<_>>(), [11..12, 15..20]);

        // MESSAGE: exactly-once, ordered, fragment 1 of 3 of a 5-byte message (chunk 2).
        let bytes = [4, 0b1110, 7, 42, 9, 5, 3, 1, 2, b'c', b'd'];
        let Frame::Message(msg) = one(&bytes) else {
            panic!()
        };
        assert_eq!(
            msg,
            MessageFrame {
                guarantee: Guarantee::ExactlyOnce,
                channel: 7,
                id: 42,
                chan_seq: Some(9),
                fragment: Some(Fragment {
                    total_len: 5,
                    count: 3,
                    index: 1
                }),
                payload: b"cd",
            }
        );
        assert_eq!(emitted(|w| msg.emit(w)), bytes);
        assert_eq!(msg.encoded_len(), bytes.len());

        // FORWARD: id 3 unordered, id 4 ordered on channel 2 at seq 9.
        let Frame::Forward(fwd) = one(&[5, 2, 3, 0, 4, 1, 2, 9]) else {
            panic!()
        };
        assert_eq!(fwd.len(), 2);
        assert!(!fwd.is_empty());
        assert_eq!(
            fwd.entries().collect::<Vec<_>>(),
            [
                ForwardEntry {
                    id: 3,
                    ordered: None
                },
                ForwardEntry {
                    id: 4,
                    ordered: Some((2, 9))
                },
            ]
        );

        let Frame::Reject(rej) = one(&[6, 3, 1, 0x40, 0x40, 2]) else {
            panic!()
        };
        assert_eq!(rej.ids().collect::<Vec<_>>(), [1, 64, 2]);
        assert_eq!(rej.len(), 3);

        let Frame::Close(close) = one(&[8, 0, 3, b'b', b'y', b'e']) else {
            panic!()
        };
        assert_eq!(
            close,
            CloseFrame {
                code: 0,
                reason: b"bye"
            }
        );
        assert!(Frame::Close(close).is_ack_eliciting());
        assert!(!Frame::Padding { len: 1 }.is_ack_eliciting());

        // MESSAGES: exactly-once, ordered, channel 7, ids 42 and 43 at seqs 9 and 10, "ab"
        // and "" (the second length in a two-byte form).
        let Frame::Messages(batch) = one(&[9, 0b0110, 7, 42, 9, 2, 2, b'a', b'b', 0x40, 0]) else {
            panic!()
        };
        let m = |id, chan_seq, payload| MessageFrame {
            guarantee: Guarantee::ExactlyOnce,
            channel: 7,
            id,
            chan_seq,
            fragment: None,
            payload,
        };
        assert_eq!(
            batch.messages().collect::<Vec<_>>(),
            [m(42, Some(9), b"ab"), m(43, Some(10), b"")]
        );
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.messages().len(), 2);
        assert!(!batch.is_empty());
        assert_eq!((batch.first_id(), batch.first_seq()), (42, Some(9)));
        assert_eq!(
            (batch.guarantee(), batch.channel()),
            (Guarantee::ExactlyOnce, 7)
        );
        assert!(Frame::Messages(batch).is_ack_eliciting());
        let shortest = [9, 0b0110, 7, 42, 9, 2, 2, b'a', b'b', 0];
        assert_eq!(emitted(|w| Frame::Messages(batch).emit(w)), shortest);
        assert_eq!(Frame::Messages(batch).encoded_len(), shortest.len());
        // Unordered at-most-once: no sequence number.
        let Frame::Messages(batch) = one(&[9, 0, 1, 5, 1, 1, b'z']) else {
            panic!()
        };
        let got: Vec<_> = batch
            .messages()
            .map(|m| (m.guarantee, m.id, m.chan_seq))
            .collect();
        assert_eq!(got, [(Guarantee::AtMostOnce, 5, None)]);
    }

    proptest::proptest! {
        /// What a MessagesWriter writes parses to the messages given, with consecutive ids
        /// (and sequence numbers), their guarantee, channel and payloads; it stops only when
        /// the room or the frame is full.
        #[test]
        fn a_messages_writer_writes_the_messages_given(
            g in proptest::sample::select(vec![
                Guarantee::AtMostOnce,
                Guarantee::AtLeastOnce,
                Guarantee::ExactlyOnce,
            ]),
            channel in any::<u8>(),
            id in prop_oneof![0..100u64, (MAX_VARINT - 100)..=MAX_VARINT],
            seq in proptest::option::of(prop_oneof![0..100u64, (MAX_VARINT - 100)..=MAX_VARINT]),
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..100),
                1..80,
            ),
            room in 0..3000usize,
        ) {
            let seq = seq.filter(|_| g.is_reliable());
            let mut buf = vec![0u8; room];
            let mut w = Writer::new(&mut buf);
            let mut written = 0;
            if let Ok(mut b) = MessagesWriter::begin(&mut w, g, channel, id, seq, &payloads[0]) {
                written = 1;
                for p in &payloads[1..] {
                    if b.push(&mut w, p).is_err() {
                        break;
                    }
                    written += 1;
                }
                prop_assert_eq!(b.len(), written);
            }
            let n = w.position();
            if written == 0 {
                prop_assert_eq!(n, 0);
                return Ok(());
            }
            let Frame::Messages(f) = one(&buf[..n]) else {
                panic!("not a MESSAGES frame")
            };
            let want: Vec<MessageFrame<'_>> = payloads[..written]
                .iter()
                .zip(0u64..)
                .map(|(p, i)| MessageFrame {
                    guarantee: g,
                    channel,
                    id: id + i,
                    chan_seq: seq.map(|s| s + i),
                    fragment: None,
                    payload: p,
                })
                .collect();
            prop_assert_eq!(f.messages().collect::<Vec<_>>(), want);
            // It stopped for a reason: no more messages, a full frame, or no room.
            if written < payloads.len() {
                let next = &payloads[written];
                let full = written == MAX_MESSAGES_WRITTEN
                    || id + written as u64 > MAX_VARINT
                    || seq.is_some_and(|s| s + written as u64 > MAX_VARINT);
                prop_assert!(full || n + varint_len(next.len() as u64) + next.len() > room);
            }
        }
    }

    #[test]
    fn a_messages_writer_keeps_a_valid_frame_and_refuses_what_does_not_fit() {
        let g = Guarantee::AtLeastOnce;
        let mut buf = [0u8; 40];
        let mut w = Writer::new(&mut buf);
        // Header 3 + id 1 + seq 1 + count 1, then each entry 1 + len.
        let mut b = MessagesWriter::begin(&mut w, g, 2, 7, Some(0), b"0123456789").unwrap();
        assert_eq!((b.len(), b.guarantee(), b.channel()), (1, g, 2));
        assert!(!b.is_empty() && !b.is_full());
        b.push(&mut w, b"abcdefghij").unwrap();
        assert_eq!(w.position(), 6 + 11 + 11);
        // 12 bytes left: an 11-byte message fits, then nothing does; a refusal writes nothing.
        assert_eq!(
            b.push(&mut w, b"0123456789ab"),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(w.position(), 28);
        b.push(&mut w, b"klmnopqrst").unwrap();
        assert_eq!(b.push(&mut w, b"a"), Err(WireError::BufferTooSmall));
        let n = w.position();
        assert_eq!(n, 39);
        let Frame::Messages(f) = one(&buf[..n]) else {
            panic!()
        };
        let got: Vec<_> = f
            .messages()
            .map(|m| (m.id, m.chan_seq, m.payload))
            .collect();
        assert_eq!(
            got,
            [
                (7, Some(0), &b"0123456789"[..]),
                (8, Some(1), &b"abcdefghij"[..]),
                (9, Some(2), &b"klmnopqrst"[..]),
            ]
        );

        // A first message that does not fit writes nothing at all.
        let mut small = [0u8; 8];
        let mut w = Writer::new(&mut small);
        let r = MessagesWriter::begin(&mut w, g, 0, 1, None, b"0123");
        assert_eq!(r.err(), Some(WireError::BufferTooSmall));
        assert_eq!(w.position(), 0);
        let r = MessagesWriter::begin(&mut w, Guarantee::AtMostOnce, 0, 1, Some(1), b"");
        assert_eq!(r.err(), Some(WireError::OrderedAtMostOnce));
        let r = MessagesWriter::begin(&mut w, g, 0, MAX_VARINT + 1, None, b"");
        assert_eq!(r.err(), Some(WireError::ValueTooLarge));
        assert_eq!(w.position(), 0);

        // Full at MAX_MESSAGES_WRITTEN, so the count stays one byte.
        let mut big = [0u8; 1000];
        let mut w = Writer::new(&mut big);
        let mut b = MessagesWriter::begin(&mut w, g, 0, 0, None, b"x").unwrap();
        while !b.is_full() {
            b.push(&mut w, b"x").unwrap();
        }
        assert_eq!(b.len(), MAX_MESSAGES_WRITTEN);
        assert_eq!(b.push(&mut w, b"x"), Err(WireError::BufferTooSmall));
        let n = w.position();
        let Frame::Messages(f) = one(&big[..n]) else {
            panic!()
        };
        assert_eq!(f.len(), MAX_MESSAGES_WRITTEN);

        // Full early when the next id (or sequence number) would pass MAX_VARINT.
        for (id, seq) in [(MAX_VARINT - 1, None), (0, Some(MAX_VARINT - 1))] {
            let mut w = Writer::new(&mut big);
            let mut b = MessagesWriter::begin(&mut w, g, 0, id, seq, b"").unwrap();
            b.push(&mut w, b"").unwrap();
            assert!(b.is_full());
            assert_eq!(b.push(&mut w, b""), Err(WireError::BufferTooSmall));
            let n = w.position();
            let Frame::Messages(f) = one(&big[..n]) else {
                panic!()
            };
            assert_eq!(f.messages().last().map(|m| m.id), Some(id + 1));
        }
    }

    #[test]
    fn reemitting_a_parsed_frame_uses_the_shortest_varints() {
        // ACK and REJECT with two-byte forms of small values.
        let Frame::Ack(ack) = one(&[2, 0x40, 12, 25, 2, 2, 0x40, 1, 3, 2, 0]) else {
            panic!()
        };
        assert_eq!(
            emitted(|w| Frame::Ack(ack).emit(w)),
            [2, 12, 25, 2, 2, 1, 3, 2, 0]
        );
        assert_eq!(Frame::Ack(ack).encoded_len(), 9);
        let Frame::Reject(rej) = one(&[6, 0x40, 2, 0x40, 1, 5]) else {
            panic!()
        };
        assert_eq!(emitted(|w| Frame::Reject(rej).emit(w)), [6, 2, 1, 5]);
    }

    #[test]
    fn empty_lists_write_nothing() {
        assert!(emitted(|w| emit_ack(w, 5, std::iter::empty())).is_empty());
        assert_eq!(ack_frame_len(5, std::iter::empty()), 0);
        assert!(emitted(|w| emit_forward(w, &[])).is_empty());
        assert_eq!(forward_frame_len(&[]), 0);
        assert!(emitted(|w| emit_reject(w, &[])).is_empty());
        assert_eq!(reject_frame_len(&[]), 0);
    }

    #[test]
    fn emit_writes_whole_frames_or_nothing() {
        let entries = [ForwardEntry {
            id: 1,
            ordered: Some((3, 400)),
        }];
        let msg = MessageFrame {
            guarantee: Guarantee::AtMostOnce,
            channel: 0,
            id: 1,
            chan_seq: None,
            fragment: None,
            payload: &[1, 2, 3],
        };
        let close = CloseFrame {
            code: 1,
            reason: b"x",
        };
        type Emit<'a> = Box<dyn Fn(&mut Writer<'_>) -> Result<(), WireError> + 'a>;
        let cases: Vec<(usize, Emit<'_>)> = vec![
            (
                ack_frame_len(9, std::iter::once(5..9)),
                Box::new(|w| emit_ack(w, 9, std::iter::once(5..9))),
            ),
            (
                msg_ack_frame_len(1, 9, std::iter::once(5..9)),
                Box::new(|w| emit_msg_ack(w, 1, 9, std::iter::once(5..9))),
            ),
            (
                forward_frame_len(&entries),
                Box::new(|w| emit_forward(w, &entries)),
            ),
            (
                reject_frame_len(&[1, 99]),
                Box::new(|w| emit_reject(w, &[1, 99])),
            ),
            (msg.encoded_len(), Box::new(|w| msg.emit(w))),
            (
                Frame::Close(close).encoded_len(),
                Box::new(|w| Frame::Close(close).emit(w)),
            ),
            (2, Box::new(|w| Frame::AmoFloor { floor: 3 }.emit(w))),
            (1, Box::new(|w| Frame::Ping.emit(w))),
        ];
        for (len, emit) in &cases {
            let mut buf = vec![0xaa; len + 1];
            for room in 0..*len {
                let mut w = Writer::new(&mut buf[..room]);
                assert_eq!(emit(&mut w), Err(WireError::BufferTooSmall));
                assert_eq!(w.position(), 0);
            }
            assert!(buf.iter().all(|&b| b == 0xaa), "wrote into a short buffer");
            let mut w = Writer::new(&mut buf);
            emit(&mut w).unwrap();
            assert_eq!(w.position(), *len);
            one(&buf[..*len]);
        }
    }

    #[test]
    fn emit_refuses_what_the_parser_would_reject() {
        let msg = MessageFrame {
            guarantee: Guarantee::AtMostOnce,
            channel: 0,
            id: 1,
            chan_seq: Some(1),
            fragment: None,
            payload: &[],
        };
        let frag = MessageFrame {
            guarantee: Guarantee::AtLeastOnce,
            chan_seq: None,
            fragment: Some(Fragment {
                total_len: 10,
                count: 4,
                index: 3,
            }),
            payload: &[1, 2],
            ..msg
        };
        let long = [b'a'; super::super::MAX_REASON_LEN + 1];
        let table: &[(Frame<'_>, WireError)] = &[
            (Frame::Message(msg), WireError::OrderedAtMostOnce),
            (Frame::Message(frag), WireError::BadFragment),
            (
                Frame::Message(MessageFrame {
                    fragment: Some(Fragment {
                        total_len: 10,
                        count: 11,
                        index: 0,
                    }),
                    ..frag
                }),
                WireError::BadFragment,
            ),
            (
                Frame::Message(MessageFrame {
                    id: MAX_VARINT + 1,
                    ..frag
                }),
                WireError::ValueTooLarge,
            ),
            (
                Frame::AmoFloor { floor: u64::MAX },
                WireError::ValueTooLarge,
            ),
            (
                Frame::Close(CloseFrame {
                    code: 0,
                    reason: &long,
                }),
                WireError::ReasonTooLong,
            ),
            (
                Frame::Close(CloseFrame {
                    code: 0,
                    reason: &[0xff],
                }),
                WireError::BadReason,
            ),
            (
                Frame::Close(CloseFrame {
                    code: 1 << 62,
                    reason: b"",
                }),
                WireError::ValueTooLarge,
            ),
        ];
        let mut buf = [0u8; 512];
        for (frame, err) in table {
            let mut w = Writer::new(&mut buf);
            assert_eq!(frame.emit(&mut w), Err(*err), "{frame:?}");
            assert_eq!(w.position(), 0);
        }
        let mut w = Writer::new(&mut buf);
        assert_eq!(
            emit_msg_ack(&mut w, 5, 4, std::iter::empty()),
            Err(WireError::LimitBelowCumulative)
        );
        assert_eq!(
            emit_reject(&mut w, &[1 << 62]),
            Err(WireError::ValueTooLarge)
        );
        let bad = [ForwardEntry {
            id: 0,
            ordered: Some((0, u64::MAX)),
        }];
        assert_eq!(emit_forward(&mut w, &bad), Err(WireError::ValueTooLarge));
        assert_eq!(w.position(), 0);

        // Public fields changed after parsing are checked again.
        let Frame::Ack(mut ack) = one(&[2, 12, 25, 1, 2, 1, 3]) else {
            panic!()
        };
        ack.largest = 5;
        assert_eq!(
            Frame::Ack(ack).emit(&mut w),
            Err(WireError::AckRangeUnderflow)
        );
        let Frame::MsgAck(mut m) = one(&[3, 10, 20, 1, 1, 0]) else {
            panic!()
        };
        m.cumulative = MAX_VARINT;
        m.limit = MAX_VARINT;
        assert_eq!(
            Frame::MsgAck(m).emit(&mut w),
            Err(WireError::BadMsgAckRange)
        );
        assert_eq!(w.position(), 0);
    }

    #[test]
    fn fragment_byte_ranges() {
        let table: &[(u64, u64, u64, Option<Range<u64>>)] = &[
            (10, 2, 0, Some(0..5)),
            (10, 2, 1, Some(5..10)),
            (10, 3, 2, Some(8..10)),
            (10, 4, 3, Some(9..10)),
            (10, 10, 9, Some(9..10)),
            (11, 2, 1, Some(6..11)),
            (10, 1, 0, None),  // one fragment is not a fragment
            (10, 0, 0, None),  // no fragments
            (10, 4, 4, None),  // index out of range
            (10, 6, 0, None),  // fragment 5 would be empty
            (10, 11, 0, None), // more fragments than bytes
            (0, 2, 0, None),   // empty message
            (
                MAX_VARINT,
                MAX_VARINT,
                MAX_VARINT - 1,
                Some(MAX_VARINT - 1..MAX_VARINT),
            ),
            (MAX_VARINT, 2, 1, Some(1 << 61..MAX_VARINT)),
            (
                u64::MAX,
                u64::MAX,
                u64::MAX - 1,
                Some(u64::MAX - 1..u64::MAX),
            ),
            (u64::MAX, 3, 2, Some(12297829382473034410..u64::MAX)),
        ];
        for (total, count, index, want) in table {
            assert_eq!(
                Fragment::byte_range(*total, *count, *index),
                *want,
                "total {total} count {count} index {index}"
            );
        }
    }

    #[test]
    fn overhead_matches_encoded_len() {
        let frag = Some(Fragment {
            total_len: 100_000,
            count: 100,
            index: 99,
        });
        let payload = [0u8; 1000];
        let msg = MessageFrame {
            guarantee: Guarantee::ExactlyOnce,
            channel: 9,
            id: 1 << 40,
            chan_seq: Some(70),
            fragment: frag,
            payload: &payload,
        };
        assert_eq!(
            MessageFrame::overhead(true, msg.id, msg.chan_seq, frag, 1000) + 1000,
            msg.encoded_len()
        );
        assert_eq!(emitted(|w| msg.emit(w)).len(), msg.encoded_len());
        // Without a channel sequence yet, the worst case is assumed.
        assert_eq!(
            MessageFrame::overhead(true, 1, None, None, 10),
            MessageFrame::overhead(false, 1, Some(MAX_VARINT), None, 10)
        );
    }
}

//! ACK and MSG_ACK: the two frames made of ranges.
//!
//! ACK reports packet numbers received (highest first, as in RFC 9000 section 19.3); MSG_ACK
//! reports reliable message ids completed above a cumulative point (lowest first), with flow
//! credit. Both are validated whole when parsed, so iterating over their ranges cannot fail.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::Range;

use super::frame::{DebugList, check_varint, consumed, reserve, ty};
use super::varint::{MAX_VARINT, varint_len};
use super::{MAX_ACK_RANGES, MAX_MSG_ACK_RANGES, Reader, WireError, Writer};
use crate::limits;

/// An ACK frame: the packet numbers received, as up to [`MAX_ACK_RANGES`] ranges.
///
/// Equality compares the decoded content.
#[derive(Clone, Copy)]
pub struct AckFrame<'a> {
    /// The largest packet number received.
    pub largest: u64,
    /// Microseconds between the receipt of `largest` and the sending of this frame.
    pub ack_delay_us: u64,
    /// Packets below `largest` in the first range.
    first_range: u64,
    /// Number of (gap, length) pairs in `raw`.
    additional: usize,
    /// Lowest packet number acknowledged (computed while validating).
    smallest: u64,
    /// The validated (gap, length) pairs as they were received.
    raw: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// Ranges received, highest first, half-open. Parsing validated them, so iteration
    /// cannot fail.
    pub fn ranges(&self) -> AckRanges<'a> {
        let start = self.largest.saturating_sub(self.first_range);
        AckRanges {
            first: Some(start..self.largest.saturating_add(1)),
            smallest: start,
            left: self.additional,
            r: Reader::new(self.raw),
        }
    }

    /// The lowest packet number acknowledged.
    pub fn smallest(&self) -> u64 {
        self.smallest
    }

    /// Number of ranges, the first one included.
    pub fn range_count(&self) -> usize {
        self.additional.saturating_add(1)
    }

    pub(super) fn parse(r: &mut Reader<'a>) -> Result<AckFrame<'a>, WireError> {
        let largest = r.varint()?;
        let ack_delay_us = r.varint()?;
        let additional = r.varint()?;
        if !limits::ack_ranges_ok(additional.saturating_add(1)) {
            return Err(WireError::TooManyRanges);
        }
        let first_range = r.varint()?;
        let mut smallest = largest
            .checked_sub(first_range)
            .ok_or(WireError::AckRangeUnderflow)?;
        let start = r.clone();
        for _ in 0..additional {
            let gap = r.varint()?;
            let len = r.varint()?;
            smallest = next_ack_range(smallest, gap, len)
                .ok_or(WireError::AckRangeUnderflow)?
                .start;
        }
        Ok(AckFrame {
            largest,
            ack_delay_us,
            first_range,
            additional: additional as usize,
            smallest,
            raw: consumed(start, r)?,
        })
    }

    pub(super) fn encoded_len(&self) -> usize {
        let pairs: usize = pairs(self.raw, self.additional)
            .map(|(gap, len)| varint_len(gap) + varint_len(len))
            .sum();
        1 + varint_len(self.largest)
            + varint_len(self.ack_delay_us)
            + varint_len(self.additional as u64)
            + varint_len(self.first_range)
            + pairs
    }

    pub(super) fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        // The public fields may have been changed since parsing: check the whole chain again.
        check_varint(self.largest)?;
        check_varint(self.ack_delay_us)?;
        let mut smallest = self
            .largest
            .checked_sub(self.first_range)
            .ok_or(WireError::AckRangeUnderflow)?;
        for (gap, len) in pairs(self.raw, self.additional) {
            smallest = next_ack_range(smallest, gap, len)
                .ok_or(WireError::AckRangeUnderflow)?
                .start;
        }
        reserve(w, self.encoded_len())?;
        w.put_u8(ty::ACK)?;
        w.put_varint(self.largest)?;
        w.put_varint(self.ack_delay_us)?;
        w.put_varint(self.additional as u64)?;
        w.put_varint(self.first_range)?;
        for (gap, len) in pairs(self.raw, self.additional) {
            w.put_varint(gap)?;
            w.put_varint(len)?;
        }
        Ok(())
    }
}

impl PartialEq for AckFrame<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.largest == other.largest
            && self.ack_delay_us == other.ack_delay_us
            && self.range_count() == other.range_count()
            && self.ranges().eq(other.ranges())
    }
}

impl Eq for AckFrame<'_> {}

impl fmt::Debug for AckFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckFrame")
            .field("largest", &self.largest)
            .field("ack_delay_us", &self.ack_delay_us)
            .field("ranges", &DebugList(self.ranges()))
            .finish()
    }
}

/// The range below one that starts at `smallest`, `gap + 1` packets lower, `len + 1` long.
fn next_ack_range(smallest: u64, gap: u64, len: u64) -> Option<Range<u64>> {
    let last = smallest.checked_sub(gap)?.checked_sub(2)?;
    Some(last.checked_sub(len)?..last.checked_add(1)?)
}

/// The ranges of an [`AckFrame`], highest first.
#[derive(Debug, Clone)]
pub struct AckRanges<'a> {
    first: Option<Range<u64>>,
    smallest: u64,
    left: usize,
    r: Reader<'a>,
}

impl Iterator for AckRanges<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let range = self.step();
        match &range {
            Some(range) => self.smallest = range.start,
            None => self.left = 0, // unreachable: the frame was validated
        }
        range
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.left.saturating_add(usize::from(self.first.is_some()));
        (n, Some(n))
    }
}

impl AckRanges<'_> {
    fn step(&mut self) -> Option<Range<u64>> {
        let gap = self.r.varint().ok()?;
        let len = self.r.varint().ok()?;
        next_ack_range(self.smallest, gap, len)
    }
}

impl ExactSizeIterator for AckRanges<'_> {}
impl FusedIterator for AckRanges<'_> {}

/// What an ACK frame built from a list of ranges starts with.
struct AckPlan {
    largest: u64,
    first_range: u64,
    additional: usize,
}

/// Walks ranges given highest first and calls `pair(gap, len)` for each range after the first
/// that goes into the frame: at most [`MAX_ACK_RANGES`] in all, stopping at the first range
/// that is empty, not strictly below the previous one with a gap, or above [`MAX_VARINT`].
/// `None` when not even the first range is usable.
fn walk_ack<I, F>(mut ranges: I, mut pair: F) -> Result<Option<AckPlan>, WireError>
where
    I: Iterator<Item = Range<u64>>,
    F: FnMut(u64, u64) -> Result<(), WireError>,
{
    let Some(first) = ranges.next() else {
        return Ok(None);
    };
    let valid = first.start < first.end && first.end - 1 <= MAX_VARINT;
    debug_assert!(valid, "bad first ACK range {first:?}");
    if !valid {
        return Ok(None);
    }
    let largest = first.end - 1;
    let mut plan = AckPlan {
        largest,
        first_range: largest - first.start,
        additional: 0,
    };
    let mut smallest = first.start;
    for range in ranges.take(MAX_ACK_RANGES - 1) {
        // gap = smallest - end - 1: at least one packet missing between the two ranges.
        let gap = smallest
            .checked_sub(range.end)
            .and_then(|d| d.checked_sub(1))
            .filter(|_| range.start < range.end);
        debug_assert!(
            gap.is_some(),
            "ACK range {range:?} not below {smallest} with a gap"
        );
        let Some(gap) = gap else { break };
        pair(gap, range.end - 1 - range.start)?;
        smallest = range.start;
        plan.additional += 1;
    }
    Ok(Some(plan))
}

/// Emits an ACK frame from ranges given highest first (disjoint, non-adjacent, half-open).
///
/// At most [`MAX_ACK_RANGES`] are sent, the highest ones. `ack_delay_us` above
/// [`MAX_VARINT`] is sent as [`MAX_VARINT`]. An empty iterator writes nothing. Returns
/// [`WireError::BufferTooSmall`] without writing anything if the frame does not fit.
///
/// Ranges out of order are a caller bug: debug builds panic, release builds send the ranges
/// before the first bad one.
///
/// ```
/// use surely::wire::{self, Frame, Writer};
/// let mut buf = [0u8; 32];
/// let mut w = Writer::new(&mut buf);
/// wire::emit_ack(&mut w, 25, [10..13, 4..8, 0..1].into_iter()).unwrap();
/// let n = w.position();
/// assert_eq!(n, wire::ack_frame_len(25, [10..13, 4..8, 0..1].into_iter()));
/// let Some(Ok(Frame::Ack(ack))) = wire::frames(&buf[..n]).next() else { panic!() };
/// assert_eq!(ack.ranges().collect::<Vec<_>>(), [10..13, 4..8, 0..1]);
/// assert_eq!((ack.largest, ack.smallest(), ack.range_count()), (12, 0, 3));
/// ```
pub fn emit_ack<I: Iterator<Item = Range<u64>> + Clone>(
    w: &mut Writer<'_>,
    ack_delay_us: u64,
    ranges_desc: I,
) -> Result<(), WireError> {
    let Some((plan, len)) = ack_plan(ack_delay_us, ranges_desc.clone()) else {
        return Ok(());
    };
    reserve(w, len)?;
    w.put_u8(ty::ACK)?;
    w.put_varint(plan.largest)?;
    w.put_varint(ack_delay_us.min(MAX_VARINT))?;
    w.put_varint(plan.additional as u64)?;
    w.put_varint(plan.first_range)?;
    if plan.additional == 0 {
        // The usual ACK, with no gap: nothing more to walk.
        return Ok(());
    }
    walk_ack(ranges_desc, |gap, len| {
        w.put_varint(gap)?;
        w.put_varint(len)
    })?;
    Ok(())
}

/// Number of bytes [`emit_ack`] writes for these arguments (0 for no ranges).
pub fn ack_frame_len<I: Iterator<Item = Range<u64>> + Clone>(
    ack_delay_us: u64,
    ranges_desc: I,
) -> usize {
    ack_plan(ack_delay_us, ranges_desc).map_or(0, |(_, len)| len)
}

/// What an ACK frame from these ranges starts with, and its length, in one walk of the
/// ranges. `None` when not even the first range is usable (nothing is written).
fn ack_plan<I: Iterator<Item = Range<u64>>>(
    ack_delay_us: u64,
    ranges_desc: I,
) -> Option<(AckPlan, usize)> {
    let mut pairs_len = 0usize;
    let plan = walk_ack(ranges_desc, |gap, len| {
        pairs_len += varint_len(gap) + varint_len(len);
        Ok(())
    })
    .ok()??;
    let len = 1
        + varint_len(plan.largest)
        + varint_len(ack_delay_us.min(MAX_VARINT))
        + varint_len(plan.additional as u64)
        + varint_len(plan.first_range)
        + pairs_len;
    Some((plan, len))
}

// MSG_ACK

/// A MSG_ACK frame: reliable ids completed, and flow credit.
///
/// Equality compares the decoded content.
#[derive(Clone, Copy)]
pub struct MsgAckFrame<'a> {
    /// Every reliable id below this is complete.
    pub cumulative: u64,
    /// The peer may use reliable ids below this (at least `cumulative`).
    pub limit: u64,
    /// Number of (gap, length) pairs in `raw`.
    count: usize,
    /// The validated (gap, length) pairs as they were received.
    raw: &'a [u8],
}

impl<'a> MsgAckFrame<'a> {
    /// Ranges of completed ids above `cumulative`, ascending, half-open, each starting at
    /// least one id above the previous range's end (the first at least `cumulative + 1`).
    pub fn ranges(&self) -> MsgAckRanges<'a> {
        MsgAckRanges {
            prev_end: self.cumulative,
            left: self.count,
            r: Reader::new(self.raw),
        }
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        self.count
    }

    pub(super) fn parse(r: &mut Reader<'a>) -> Result<MsgAckFrame<'a>, WireError> {
        let cumulative = r.varint()?;
        let limit = r.varint()?;
        if limit < cumulative {
            return Err(WireError::LimitBelowCumulative);
        }
        let count = r.varint()?;
        if !limits::msg_ack_ranges_ok(count) {
            return Err(WireError::TooManyRanges);
        }
        let start = r.clone();
        let mut prev_end = cumulative;
        for _ in 0..count {
            let gap = r.varint()?;
            let len = r.varint()?;
            prev_end = next_msg_ack_range(prev_end, gap, len)
                .ok_or(WireError::BadMsgAckRange)?
                .end;
        }
        Ok(MsgAckFrame {
            cumulative,
            limit,
            count: count as usize,
            raw: consumed(start, r)?,
        })
    }

    pub(super) fn encoded_len(&self) -> usize {
        let pairs: usize = pairs(self.raw, self.count)
            .map(|(gap, len)| varint_len(gap) + varint_len(len))
            .sum();
        1 + varint_len(self.cumulative)
            + varint_len(self.limit)
            + varint_len(self.count as u64)
            + pairs
    }

    pub(super) fn emit(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        check_varint(self.cumulative)?;
        check_varint(self.limit)?;
        if self.limit < self.cumulative {
            return Err(WireError::LimitBelowCumulative);
        }
        // `cumulative` may have been changed since parsing: check the ranges again.
        let mut prev_end = self.cumulative;
        for (gap, len) in pairs(self.raw, self.count) {
            prev_end = next_msg_ack_range(prev_end, gap, len)
                .ok_or(WireError::BadMsgAckRange)?
                .end;
        }
        reserve(w, self.encoded_len())?;
        w.put_u8(ty::MSG_ACK)?;
        w.put_varint(self.cumulative)?;
        w.put_varint(self.limit)?;
        w.put_varint(self.count as u64)?;
        for (gap, len) in pairs(self.raw, self.count) {
            w.put_varint(gap)?;
            w.put_varint(len)?;
        }
        Ok(())
    }
}

impl PartialEq for MsgAckFrame<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cumulative == other.cumulative
            && self.limit == other.limit
            && self.count == other.count
            && self.ranges().eq(other.ranges())
    }
}

impl Eq for MsgAckFrame<'_> {}

impl fmt::Debug for MsgAckFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgAckFrame")
            .field("cumulative", &self.cumulative)
            .field("limit", &self.limit)
            .field("ranges", &DebugList(self.ranges()))
            .finish()
    }
}

/// The range `gap` ids above `prev_end` (exclusive), `len + 1` long; `None` if `gap` is zero
/// or an id would exceed [`MAX_VARINT`].
fn next_msg_ack_range(prev_end: u64, gap: u64, len: u64) -> Option<Range<u64>> {
    if gap == 0 {
        return None;
    }
    let start = prev_end.checked_add(gap)?;
    let end = start.checked_add(len)?.checked_add(1)?;
    (end - 1 <= MAX_VARINT).then_some(start..end)
}

/// The ranges of a [`MsgAckFrame`], ascending.
#[derive(Debug, Clone)]
pub struct MsgAckRanges<'a> {
    prev_end: u64,
    left: usize,
    r: Reader<'a>,
}

impl Iterator for MsgAckRanges<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let range = self.step();
        match &range {
            Some(range) => self.prev_end = range.end,
            None => self.left = 0, // unreachable: the frame was validated
        }
        range
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl MsgAckRanges<'_> {
    fn step(&mut self) -> Option<Range<u64>> {
        let gap = self.r.varint().ok()?;
        let len = self.r.varint().ok()?;
        next_msg_ack_range(self.prev_end, gap, len)
    }
}

impl ExactSizeIterator for MsgAckRanges<'_> {}
impl FusedIterator for MsgAckRanges<'_> {}

/// Walks ranges given lowest first and calls `pair(gap, len)` for each one that goes into the
/// frame: at most [`MAX_MSG_ACK_RANGES`], stopping at the first range that is empty, does not
/// start at least one id above the previous end (initially `cumulative`), or exceeds
/// [`MAX_VARINT`]. Returns the number of ranges.
fn walk_msg_ack<I, F>(cumulative: u64, ranges: I, mut pair: F) -> Result<usize, WireError>
where
    I: Iterator<Item = Range<u64>>,
    F: FnMut(u64, u64) -> Result<(), WireError>,
{
    let mut prev_end = cumulative;
    let mut count = 0;
    for range in ranges.take(MAX_MSG_ACK_RANGES) {
        let valid =
            range.start > prev_end && range.start < range.end && range.end - 1 <= MAX_VARINT;
        debug_assert!(
            valid,
            "MSG_ACK range {range:?} not above {prev_end} with a gap"
        );
        if !valid {
            break;
        }
        pair(range.start - prev_end, range.end - 1 - range.start)?;
        prev_end = range.end;
        count += 1;
    }
    Ok(count)
}

/// Emits a MSG_ACK frame from ranges of completed ids above `cumulative`, given lowest first
/// (disjoint, non-adjacent, half-open, the first starting above `cumulative`).
///
/// At most [`MAX_MSG_ACK_RANGES`] are sent, the lowest ones. Errors, with nothing written:
/// [`WireError::BufferTooSmall`], [`WireError::LimitBelowCumulative`],
/// [`WireError::ValueTooLarge`]. Ranges out of order are a caller bug: debug builds panic,
/// release builds send the ranges before the first bad one.
///
/// ```
/// use surely::wire::{self, Frame, Writer};
/// let mut buf = [0u8; 32];
/// let mut w = Writer::new(&mut buf);
/// wire::emit_msg_ack(&mut w, 10, 100, [11..12, 15..20].into_iter()).unwrap();
/// let n = w.position();
/// let Some(Ok(Frame::MsgAck(ack))) = wire::frames(&buf[..n]).next() else { panic!() };
/// assert_eq!((ack.cumulative, ack.limit), (10, 100));
/// assert_eq!(ack.ranges().collect::<Vec<_>>(), [11..12, 15..20]);
/// ```
pub fn emit_msg_ack<I: Iterator<Item = Range<u64>> + Clone>(
    w: &mut Writer<'_>,
    cumulative: u64,
    limit: u64,
    ranges_asc: I,
) -> Result<(), WireError> {
    check_varint(cumulative)?;
    check_varint(limit)?;
    if limit < cumulative {
        return Err(WireError::LimitBelowCumulative);
    }
    let (count, len) = msg_ack_plan(cumulative, limit, ranges_asc.clone());
    reserve(w, len)?;
    w.put_u8(ty::MSG_ACK)?;
    w.put_varint(cumulative)?;
    w.put_varint(limit)?;
    w.put_varint(count as u64)?;
    if count == 0 {
        // The usual MSG_ACK: everything complete is below the cumulative point.
        return Ok(());
    }
    walk_msg_ack(cumulative, ranges_asc, |gap, len| {
        w.put_varint(gap)?;
        w.put_varint(len)
    })?;
    Ok(())
}

/// Number of bytes [`emit_msg_ack`] writes for these arguments.
pub fn msg_ack_frame_len<I: Iterator<Item = Range<u64>> + Clone>(
    cumulative: u64,
    limit: u64,
    ranges_asc: I,
) -> usize {
    msg_ack_plan(cumulative, limit, ranges_asc).1
}

/// The number of ranges a MSG_ACK frame from these arguments carries, and its length, in one
/// walk of the ranges.
fn msg_ack_plan<I: Iterator<Item = Range<u64>>>(
    cumulative: u64,
    limit: u64,
    ranges_asc: I,
) -> (usize, usize) {
    let mut pairs_len = 0usize;
    let count = walk_msg_ack(cumulative, ranges_asc, |gap, len| {
        pairs_len += varint_len(gap) + varint_len(len);
        Ok(())
    })
    .unwrap_or(0);
    let len = 1
        + varint_len(cumulative.min(MAX_VARINT))
        + varint_len(limit.min(MAX_VARINT))
        + varint_len(count as u64)
        + pairs_len;
    (count, len)
}

/// The first `count` (gap, length) pairs of validated raw bytes.
fn pairs(raw: &[u8], count: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut r = Reader::new(raw);
    (0..count).map_while(move |_| Some((r.varint().ok()?, r.varint().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, frames, validate};
    use super::*;

    /// Parses a payload that must hold exactly one valid frame.
    fn one(payload: &[u8]) -> Frame<'_> {
        validate(payload).unwrap();
        let mut it = frames(payload);
        let f = it.next().unwrap().unwrap();
        assert!(it.next().is_none(), "more than one frame in {payload:02x?}");
        f
    }

    fn emitted(f: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = Writer::new(&mut buf);
        f(&mut w).unwrap();
        let n = w.position();
        buf.truncate(n);
        buf
    }

    /// Values at each varint length boundary.
    const EDGES: [u64; 8] = [
        0,
        63,
        64,
        16_383,
        16_384,
        (1 << 30) - 1,
        1 << 30,
        MAX_VARINT,
    ];

    /// Writes the fields in order, as the general walk does, for comparison.
    fn fields(ty: u8, values: &[u64]) -> Vec<u8> {
        emitted(|w| {
            w.put_u8(ty)?;
            values.iter().try_for_each(|&v| w.put_varint(v))
        })
    }

    #[test]
    fn one_range_acks_and_msg_acks_without_ranges_are_written_as_the_general_walk_writes() {
        for &largest in &EDGES {
            for &delay in &EDGES {
                for &below in &[0, 1, 64, 20_000] {
                    let first = largest.saturating_sub(below);
                    let range = first..largest + 1;
                    let bytes = emitted(|w| emit_ack(w, delay, std::iter::once(range.clone())));
                    let want = fields(ty::ACK, &[largest, delay, 0, largest - first]);
                    assert_eq!(bytes, want, "{range:?} delay {delay}");
                    assert_eq!(bytes.len(), ack_frame_len(delay, std::iter::once(range)));
                    // Too little room: an error and nothing written.
                    let mut buf = vec![0u8; bytes.len() - 1];
                    let mut w = Writer::new(&mut buf);
                    let r = emit_ack(&mut w, delay, std::iter::once(first..largest + 1));
                    assert!(matches!(r, Err(WireError::BufferTooSmall)));
                    assert_eq!(w.position(), 0);
                }
            }
        }
        for &cumulative in &EDGES {
            for &extra in &[0, 1, 64, 20_000] {
                let limit = cumulative.saturating_add(extra).min(MAX_VARINT);
                let none = std::iter::empty::<Range<u64>>();
                let bytes = emitted(|w| emit_msg_ack(w, cumulative, limit, none.clone()));
                assert_eq!(bytes, fields(ty::MSG_ACK, &[cumulative, limit, 0]));
                assert_eq!(
                    bytes.len(),
                    msg_ack_frame_len(cumulative, limit, none.clone())
                );
                let mut buf = vec![0u8; bytes.len() - 1];
                let mut w = Writer::new(&mut buf);
                let r = emit_msg_ack(&mut w, cumulative, limit, none);
                assert!(matches!(r, Err(WireError::BufferTooSmall)));
                assert_eq!(w.position(), 0);
            }
        }
    }

    #[test]
    fn at_most_63_additional_ack_ranges_are_accepted() {
        let mut bytes = vec![2, 0x41, 0x00, 0, 63, 0]; // largest 256, 63 more ranges
        for _ in 0..63 {
            bytes.extend([0, 0]); // every other packet
        }
        let Frame::Ack(ack) = one(&bytes) else {
            panic!()
        };
        assert_eq!(ack.range_count(), MAX_ACK_RANGES);
        assert_eq!(ack.smallest(), 256 - 2 * 63);
        assert_eq!(ack.ranges().last(), Some(130..131));
    }

    #[test]
    fn emit_ack_keeps_the_highest_64_ranges() {
        let ranges = (0..100u64).rev().map(|i| 3 * i..3 * i + 2);
        let bytes = emitted(|w| emit_ack(w, 0, ranges.clone()));
        assert_eq!(bytes.len(), ack_frame_len(0, ranges.clone()));
        let Frame::Ack(ack) = one(&bytes) else {
            panic!()
        };
        assert_eq!(ack.range_count(), MAX_ACK_RANGES);
        assert!(ack.ranges().eq(ranges.take(MAX_ACK_RANGES)));
    }

    #[test]
    fn emit_msg_ack_keeps_the_lowest_64_ranges() {
        let ranges = (0..100u64).map(|i| 1000 + 3 * i..1000 + 3 * i + 2);
        let bytes = emitted(|w| emit_msg_ack(w, 990, 5000, ranges.clone()));
        assert_eq!(bytes.len(), msg_ack_frame_len(990, 5000, ranges.clone()));
        let Frame::MsgAck(m) = one(&bytes) else {
            panic!()
        };
        assert_eq!(m.range_count(), MAX_MSG_ACK_RANGES);
        assert!(m.ranges().eq(ranges.take(MAX_MSG_ACK_RANGES)));
        // No ranges at all is a valid MSG_ACK (cumulative and credit only).
        let bytes = emitted(|w| emit_msg_ack(w, 7, 9, std::iter::empty()));
        assert_eq!(bytes, [3, 7, 9, 0]);
    }
}

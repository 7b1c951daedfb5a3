//! Sequence-number newtypes: the only place that knows about truncation and wrap-around.
//!
//! Inside the crate every sequence number is a 62-bit value that never wraps: a connection
//! closes before it would run out (see [`MAX_SEQ`]). On the wire a packet number is truncated to
//! its low 32 bits and expanded on receipt against the largest packet number seen so far, as in
//! RFC 9000 appendix A. Message ids travel as variable-length integers and need no expansion.

use std::fmt;

/// The largest value a sequence number may take (2^62 - 1, the largest wire varint).
pub const MAX_SEQ: u64 = (1 << 62) - 1;

/// Number of bits of a packet number that travel on the wire.
pub const PACKET_NUMBER_WIRE_BITS: u32 = 32;

/// A packet number: unique per packet and per direction, never reused, not even for a
/// retransmission (a retransmitted message travels in a new packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PacketNumber(pub u64);

impl PacketNumber {
    /// The low 32 bits sent on the wire.
    pub fn truncate(self) -> u32 {
        self.0 as u32
    }

    /// Recovers the full packet number from its truncated wire form.
    ///
    /// `largest` is the largest packet number received so far on this connection (`None`
    /// before the first). The result is the value closest to `largest + 1` whose low 32 bits
    /// equal `truncated`, as in RFC 9000 appendix A.
    pub fn expand(truncated: u32, largest: Option<PacketNumber>) -> PacketNumber {
        let expected = largest.map_or(0, |l| l.0.saturating_add(1));
        let win: u64 = 1 << PACKET_NUMBER_WIRE_BITS;
        let hwin = win / 2;
        let mask = win - 1;
        let candidate = (expected & !mask) | u64::from(truncated);
        let pn = if expected > hwin && candidate <= expected - hwin && candidate < (1 << 62) - win {
            candidate + win
        } else if candidate > expected + hwin && candidate >= win {
            candidate - win
        } else {
            candidate
        };
        PacketNumber(pn)
    }

    /// The next packet number.
    pub fn next(self) -> PacketNumber {
        PacketNumber(self.0 + 1)
    }
}

impl fmt::Display for PacketNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pn{}", self.0)
    }
}

/// Identifies one message within its connection and delivery space.
///
/// Reliable messages (at-least-once and exactly-once) share one id space per direction;
/// at-most-once messages have their own, so that the receiver can prove which of them it never
/// saw. Ids are assigned in send order, starting from the configured initial id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The next id.
    pub fn next(self) -> MessageId {
        MessageId(self.0 + 1)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(pn: u64, largest: Option<u64>) {
        let got = PacketNumber::expand(PacketNumber(pn).truncate(), largest.map(PacketNumber));
        assert_eq!(got, PacketNumber(pn), "pn {pn} largest {largest:?}");
    }

    #[test]
    fn expands_near_each_wrap_point() {
        for base in [0u64, (1 << 16) - 3, (1 << 32) - 3, (1 << 62) - 100_000] {
            for delta in 0..10u64 {
                let largest = base + delta;
                // The next packet, a late one, and one that jumped ahead.
                roundtrip(largest + 1, Some(largest));
                if largest > 5 {
                    roundtrip(largest - 5, Some(largest));
                }
                roundtrip(largest + 1000, Some(largest));
            }
        }
        roundtrip(0, None);
        roundtrip(12345, None);
    }

    #[test]
    fn rfc9000_appendix_a_example() {
        // RFC 9000 A.3 uses a 16-bit window; the same rule scaled to 32 bits: with largest
        // 0xa82f30ea and truncated 0x9b32 (16 bits) the answer is 0xa82f9b32. Check the analogue.
        let largest = 0x0000_0001_a82f_30eau64;
        let got = PacketNumber::expand(0xa82f_9b32, Some(PacketNumber(largest)));
        assert_eq!(got.0, 0x0000_0001_a82f_9b32);
    }

    #[test]
    fn reordered_packets_across_a_32_bit_wrap() {
        let largest = (1u64 << 32) + 2; // wire value 2, just past the wrap
        roundtrip((1 << 32) - 2, Some(largest)); // an older packet from before the wrap
        roundtrip((1 << 32) + 3, Some((1 << 32) - 1)); // a newer one after it
    }
}

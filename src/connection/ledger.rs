//! The sent-packet ledger: every packet this side sent that is not yet settled (acknowledged or
//! declared lost), and the message fragments each one carried.
//!
//! Packet numbers are allocated in order, so packets live in a ring indexed by
//! `pn - base`, and their frames in a second ring in the same order. Settled packets are popped
//! from the front; nothing is allocated once the rings have grown to the flight size.

use std::collections::VecDeque;
use std::time::Instant;

/// Control frames a packet carried, as bit flags: on loss they are sent again from current
/// state; on acknowledgement nothing needs doing except for `CLOSE` and `AMO_FLOOR`.
pub(super) mod carried {
    pub const MSG_ACK: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const REJECT: u8 = 4;
    pub const AMO_FLOOR: u8 = 8;
    pub const CLOSE: u8 = 16;
    pub const PING: u8 = 32;
}

/// A message fragment carried by a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SentFrame {
    /// Fragment `frag` (0 for a whole message) of reliable message `id`.
    Reliable { id: u64, frag: u32 },
    /// Fragment 0 of each reliable message `id..id + count` (at least 2): what `count`
    /// `Reliable` frames would say, for the whole messages of a MESSAGES frame.
    ReliableRun { id: u64, count: u32 },
    /// Fragment `frag` of at-most-once message `id`.
    Amo { id: u64, frag: u32 },
    /// Each at-most-once message `id..id + count` (at least 2), whole: what `count` `Amo`
    /// frames with fragment 0 would say, for the messages of a MESSAGES frame.
    AmoRun { id: u64, count: u32 },
}

#[derive(Clone, Copy, Debug)]
pub(super) struct SentPacket {
    pub time: Instant,
    pub size: u32,
    pub ack_eliciting: bool,
    /// Counted in bytes in flight (until settled).
    pub in_flight: bool,
    /// Acknowledged or declared lost.
    pub settled: bool,
    /// Declared lost (an acknowledgement may still arrive: a spurious loss).
    pub lost: bool,
    /// Reported received by an ACK frame (ack-eliciting or not, before or after a loss).
    pub acked: bool,
    pub carried: u8,
    /// The AMO_FLOOR value carried, if `carried & AMO_FLOOR`.
    pub amo_floor: u64,
    /// One past the largest packet number the ACK frame in this packet reported (0: none).
    pub ack_upto: u64,
    frames_start: u64,
    frames_len: u32,
}

#[derive(Debug)]
pub(super) struct Ledger {
    base_pn: u64,
    packets: VecDeque<SentPacket>,
    frames: VecDeque<SentFrame>,
    frames_base: u64,
    /// Frames pushed for the packet being built.
    open_frames: u32,
    pub bytes_in_flight: u64,
    /// Unsettled ack-eliciting packets.
    pub eliciting_in_flight: u64,
    pub last_eliciting_sent: Option<Instant>,
}

impl Ledger {
    pub fn new(first_pn: u64) -> Self {
        Ledger {
            base_pn: first_pn,
            packets: VecDeque::new(),
            frames: VecDeque::new(),
            frames_base: 0,
            open_frames: 0,
            bytes_in_flight: 0,
            eliciting_in_flight: 0,
            last_eliciting_sent: None,
        }
    }

    /// The packet number the next packet gets.
    pub fn next_pn(&self) -> u64 {
        self.base_pn + self.packets.len() as u64
    }

    /// The lowest packet number still tracked.
    pub fn base_pn(&self) -> u64 {
        self.base_pn
    }

    /// Records a fragment carried by the packet being built.
    #[inline]
    pub fn push_frame(&mut self, frame: SentFrame) {
        self.frames.push_back(frame);
        self.open_frames += 1;
    }

    /// Uses up one packet number without sending anything (see `Connection::skip_pn`).
    pub fn skip_pn(&mut self, time: Instant) -> u64 {
        debug_assert_eq!(self.open_frames, 0);
        let pn = self.next_pn();
        self.packets.push_back(SentPacket {
            time,
            size: 0,
            ack_eliciting: false,
            in_flight: false,
            settled: true,
            lost: false,
            acked: false,
            carried: 0,
            amo_floor: 0,
            ack_upto: 0,
            frames_start: self.frames_base + self.frames.len() as u64,
            frames_len: 0,
        });
        self.pop_settled();
        pn
    }

    /// Records the packet being built, with the frames pushed since the last call.
    pub fn finish_packet(
        &mut self,
        time: Instant,
        size: u32,
        ack_eliciting: bool,
        carried: u8,
        amo_floor: u64,
        ack_upto: u64,
    ) -> u64 {
        let pn = self.next_pn();
        let frames_start =
            self.frames_base + self.frames.len() as u64 - u64::from(self.open_frames);
        let pkt = SentPacket {
            time,
            size,
            ack_eliciting,
            in_flight: ack_eliciting,
            settled: !ack_eliciting,
            lost: false,
            acked: false,
            carried,
            amo_floor,
            ack_upto,
            frames_start,
            frames_len: self.open_frames,
        };
        self.open_frames = 0;
        if ack_eliciting {
            self.bytes_in_flight += u64::from(size);
            self.eliciting_in_flight += 1;
            self.last_eliciting_sent = Some(time);
        }
        self.packets.push_back(pkt);
        self.pop_settled();
        pn
    }

    pub fn get(&self, pn: u64) -> Option<&SentPacket> {
        let idx = pn.checked_sub(self.base_pn)?;
        self.packets.get(usize::try_from(idx).ok()?)
    }

    /// Marks packet `pn` reported received by an ACK frame.
    pub fn mark_acked(&mut self, pn: u64) {
        let idx = pn
            .checked_sub(self.base_pn)
            .and_then(|i| usize::try_from(i).ok());
        if let Some(p) = idx.and_then(|i| self.packets.get_mut(i)) {
            p.acked = true;
        }
    }

    /// Whether a packet sent after `a` and before `b` (both packet numbers this ledger holds)
    /// was reported received. An ACK-only packet, settled from the start, counts only once an
    /// ACK reported it; a skipped packet number never does.
    pub fn any_acked_between(&self, a: u64, b: u64) -> bool {
        let (Some(a), Some(b)) = (a.checked_sub(self.base_pn), b.checked_sub(self.base_pn)) else {
            return false;
        };
        let (Ok(a), Ok(b)) = (usize::try_from(a), usize::try_from(b)) else {
            return false;
        };
        let end = b.min(self.packets.len());
        (a + 1..end).any(|i| self.packets[i].acked)
    }

    /// The frames a packet carried.
    pub fn frames_of(&self, pkt: &SentPacket) -> impl Iterator<Item = SentFrame> + '_ {
        let start = (pkt.frames_start - self.frames_base) as usize;
        self.frames
            .range(start..start + pkt.frames_len as usize)
            .copied()
    }

    /// Marks a packet settled; returns it as it was before (None if unknown or already
    /// settled). `lost` records whether it was declared lost.
    pub fn settle(&mut self, pn: u64, lost: bool) -> Option<SentPacket> {
        let idx = usize::try_from(pn.checked_sub(self.base_pn)?).ok()?;
        let pkt = self.packets.get_mut(idx)?;
        if pkt.settled {
            return None;
        }
        let before = *pkt;
        pkt.settled = true;
        pkt.lost = lost;
        if pkt.in_flight {
            self.bytes_in_flight -= u64::from(pkt.size);
            self.eliciting_in_flight -= 1;
        }
        Some(before)
    }

    /// Drops settled packets (and their frames) from the front. A late acknowledgement of a
    /// packet already declared lost and dropped finds nothing; its fragments were already
    /// queued again, so nothing is lost by forgetting it.
    pub fn pop_settled(&mut self) {
        while let Some(front) = self.packets.front() {
            if !front.settled {
                break;
            }
            let n = front.frames_len as usize;
            self.frames.drain(..n);
            self.frames_base += n as u64;
            self.packets.pop_front();
            self.base_pn += 1;
        }
    }

    /// Unsettled packets with numbers below `end`, oldest first.
    pub fn unsettled_below(&self, end: u64) -> impl Iterator<Item = (u64, &SentPacket)> + '_ {
        let base = self.base_pn;
        self.packets
            .iter()
            .enumerate()
            .map(move |(i, p)| (base + i as u64, p))
            .take_while(move |(pn, _)| *pn < end)
            .filter(|(_, p)| !p.settled)
    }

    #[cfg(test)]
    /// The oldest unsettled ack-eliciting packet.
    pub fn oldest_unsettled(&self) -> Option<(u64, &SentPacket)> {
        self.unsettled_below(u64::MAX).next()
    }

    /// Whether nothing is tracked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // a base instant for the test; its value is irrelevant
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn frames_follow_their_packets_through_settling() {
        let now = t0();
        let mut l = Ledger::new(10);
        l.push_frame(SentFrame::Reliable { id: 1, frag: 0 });
        l.push_frame(SentFrame::Amo { id: 7, frag: 0 });
        assert_eq!(l.finish_packet(now, 100, true, 0, 0, 0), 10);
        l.push_frame(SentFrame::Reliable { id: 2, frag: 3 });
        assert_eq!(l.finish_packet(now, 50, true, carried::MSG_ACK, 0, 0), 11);
        assert_eq!(l.bytes_in_flight, 150);
        let p11 = *l.get(11).unwrap();
        assert_eq!(
            l.frames_of(&p11).collect::<Vec<_>>(),
            vec![SentFrame::Reliable { id: 2, frag: 3 }]
        );
        // Settling the second packet first keeps the first in place.
        assert!(l.settle(11, false).is_some());
        assert!(l.settle(11, false).is_none(), "settles once");
        l.pop_settled();
        assert_eq!(l.base_pn(), 10);
        let p10 = *l.get(10).unwrap();
        assert_eq!(l.frames_of(&p10).count(), 2);
        l.settle(10, true);
        l.pop_settled();
        assert!(l.is_empty());
        assert_eq!(l.bytes_in_flight, 0);
        assert_eq!(l.next_pn(), 12);
        assert!(l.get(10).is_none());
    }

    #[test]
    fn ack_only_packets_are_settled_at_once() {
        let now = t0();
        let mut l = Ledger::new(0);
        l.finish_packet(now, 30, false, 0, 0, 0);
        assert!(l.is_empty());
        assert_eq!(l.next_pn(), 1);
        assert_eq!(l.bytes_in_flight, 0);
    }

    #[test]
    fn unsettled_below_skips_settled() {
        let now = t0();
        let mut l = Ledger::new(0);
        for _ in 0..5 {
            l.finish_packet(now, 10, true, 0, 0, 0);
        }
        l.settle(1, false);
        l.settle(3, false);
        let pns: Vec<u64> = l.unsettled_below(4).map(|(pn, _)| pn).collect();
        assert_eq!(pns, vec![0, 2]);
        assert_eq!(l.oldest_unsettled().unwrap().0, 0);
    }
}

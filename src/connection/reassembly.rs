//! Reassembly of fragmented messages, bounded in partial messages and bytes, with expiry.
//!
//! A partial message is keyed by its id space and id. Its buffer is allocated once, at its
//! first fragment, to the announced total length (already checked against the configured
//! maximum message size). Every later fragment must agree with the first on the message's
//! metadata; a fragment that disagrees is dropped and counted, never merged.

use std::time::{Duration, Instant};

use crate::limits::{ConnectionLimits, partial_cost};
use crate::message::Guarantee;
use crate::wire::{Fragment, MessageFrame};

/// Which id space a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Space {
    AtMostOnce,
    Reliable,
}

/// Metadata every fragment of a message repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MessageMeta {
    pub guarantee: Guarantee,
    pub channel: u8,
    pub chan_seq: Option<u64>,
    pub total_len: u64,
    pub count: u64,
}

#[derive(Debug)]
struct Partial {
    space: Space,
    id: u64,
    meta: MessageMeta,
    received: Vec<bool>,
    missing: u64,
    data: Vec<u8>,
    last_activity: Instant,
}

/// What became of a fragment.
#[derive(Debug)]
pub(super) enum FragmentOutcome {
    /// Stored; the message is not complete yet.
    Stored,
    /// Already held: nothing changed.
    Duplicate,
    /// Disagrees with the fragments already held: dropped.
    Conflict,
    /// No room (partial-message slots or bytes): dropped; the sender will resend or give up.
    NoRoom,
    /// The fragment completed the message: its bytes.
    Complete(Vec<u8>),
}

/// A discarded partial message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Discarded {
    pub space: Space,
    pub id: u64,
    pub bytes: usize,
}

#[derive(Debug)]
pub(super) struct Reassembly {
    partials: Vec<Partial>,
    /// What the partial messages count against the receive buffer (see [`partial_cost`]).
    bytes: usize,
}

impl Reassembly {
    pub fn new() -> Self {
        Reassembly {
            partials: Vec::new(),
            bytes: 0,
        }
    }

    /// What the partial messages count against the receive buffer (see [`partial_cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of partial messages.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.partials.len()
    }

    /// Whether a partial message with this id exists.
    #[cfg(test)]
    pub fn contains(&self, space: Space, id: u64) -> bool {
        self.partials.iter().any(|p| p.space == space && p.id == id)
    }

    /// Adds one fragment. `buffered` is what the receiver holds in all (these partial messages
    /// included), checked with `limits` before a new partial message is allocated.
    pub fn on_fragment(
        &mut self,
        now: Instant,
        space: Space,
        frame: &MessageFrame<'_>,
        frag: Fragment,
        limits: &ConnectionLimits,
        buffered: usize,
    ) -> FragmentOutcome {
        let meta = MessageMeta {
            guarantee: frame.guarantee,
            channel: frame.channel,
            chan_seq: frame.chan_seq,
            total_len: frag.total_len,
            count: frag.count,
        };
        // The wire layer validated the arithmetic; recompute the range rather than trust it.
        let Some(range) = Fragment::byte_range(frag.total_len, frag.count, frag.index) else {
            return FragmentOutcome::Conflict;
        };
        let idx = match self
            .partials
            .iter()
            .position(|p| p.space == space && p.id == frame.id)
        {
            Some(i) => i,
            None => {
                let total = frag.total_len as usize;
                let cost = partial_cost(total, frag.count as usize);
                if !limits.admit_partial(self.partials.len())
                    || !limits.admit_recv_bytes(buffered, cost)
                {
                    return FragmentOutcome::NoRoom;
                }
                self.bytes += cost;
                self.partials.push(Partial {
                    space,
                    id: frame.id,
                    meta,
                    received: vec![false; frag.count as usize],
                    missing: frag.count,
                    data: vec![0; total],
                    last_activity: now,
                });
                self.partials.len() - 1
            }
        };
        let p = &mut self.partials[idx];
        if p.meta != meta {
            return FragmentOutcome::Conflict;
        }
        let i = frag.index as usize;
        if p.received[i] {
            return FragmentOutcome::Duplicate;
        }
        p.received[i] = true;
        p.missing -= 1;
        p.data[range.start as usize..range.end as usize].copy_from_slice(frame.payload);
        p.last_activity = now;
        if p.missing > 0 {
            return FragmentOutcome::Stored;
        }
        let done = self.partials.swap_remove(idx);
        self.bytes -= partial_cost(done.data.len(), done.received.len());
        FragmentOutcome::Complete(done.data)
    }

    /// Discards the partial message with this id, if any.
    pub fn remove(&mut self, space: Space, id: u64) -> Option<Discarded> {
        let idx = self
            .partials
            .iter()
            .position(|p| p.space == space && p.id == id)?;
        Some(self.discard(idx))
    }

    /// Discards every partial message of `space` with an id below `floor`, calling `f` for each.
    pub fn remove_below(&mut self, space: Space, floor: u64, mut f: impl FnMut(Discarded)) {
        let mut i = 0;
        while i < self.partials.len() {
            let p = &self.partials[i];
            if p.space == space && p.id < floor {
                f(self.discard(i));
            } else {
                i += 1;
            }
        }
    }

    /// Discards partial messages idle for `timeout`, calling `f` for each.
    pub fn expire(&mut self, now: Instant, timeout: Duration, mut f: impl FnMut(Discarded)) {
        let mut i = 0;
        while i < self.partials.len() {
            if self.partials[i].last_activity + timeout <= now {
                f(self.discard(i));
            } else {
                i += 1;
            }
        }
    }

    /// When the oldest partial message expires.
    pub fn next_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.partials
            .iter()
            .map(|p| p.last_activity + timeout)
            .min()
    }

    fn discard(&mut self, idx: usize) -> Discarded {
        let p = self.partials.swap_remove(idx);
        self.bytes -= partial_cost(p.data.len(), p.received.len());
        Discarded {
            space: p.space,
            id: p.id,
            bytes: p.data.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Caps of `partials` partial messages and `bytes` of receive buffer.
    fn caps(partials: usize, bytes: usize) -> ConnectionLimits {
        ConnectionLimits::new(
            &Config::default()
                .max_partial_messages(partials)
                .recv_buffer_bytes(bytes),
        )
    }

    #[allow(clippy::disallowed_methods)] // a base instant for the test; its value is irrelevant
    fn t0() -> Instant {
        Instant::now()
    }

    fn frag<'a>(data: &'a [u8], id: u64, count: u64, index: u64) -> (MessageFrame<'a>, Fragment) {
        let f = Fragment {
            total_len: data.len() as u64,
            count,
            index,
        };
        let r = Fragment::byte_range(f.total_len, count, index).unwrap();
        (
            MessageFrame {
                guarantee: Guarantee::ExactlyOnce,
                channel: 0,
                id,
                chan_seq: None,
                fragment: Some(f),
                payload: &data[r.start as usize..r.end as usize],
            },
            f,
        )
    }

    #[test]
    fn reassembles_in_any_order_including_last_first() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let now = t0();
        let mut r = Reassembly::new();
        for index in [3, 0, 2] {
            let (f, fr) = frag(&data, 5, 4, index);
            assert!(matches!(
                r.on_fragment(now, Space::Reliable, &f, fr, &caps(4, 1 << 20), 0),
                FragmentOutcome::Stored
            ));
        }
        let (f, fr) = frag(&data, 5, 4, 2);
        assert!(matches!(
            r.on_fragment(now, Space::Reliable, &f, fr, &caps(4, 1 << 20), 0),
            FragmentOutcome::Duplicate
        ));
        assert_eq!(r.bytes(), partial_cost(1000, 4));
        let (f, fr) = frag(&data, 5, 4, 1);
        match r.on_fragment(now, Space::Reliable, &f, fr, &caps(4, 1 << 20), 0) {
            FragmentOutcome::Complete(bytes) => assert_eq!(bytes, data),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn conflicting_metadata_is_dropped() {
        let data = vec![1u8; 100];
        let now = t0();
        let mut r = Reassembly::new();
        let (f, fr) = frag(&data, 1, 2, 0);
        r.on_fragment(now, Space::Reliable, &f, fr, &caps(4, 1 << 20), 0);
        let other = vec![2u8; 120];
        let (f2, fr2) = frag(&other, 1, 2, 1);
        assert!(matches!(
            r.on_fragment(now, Space::Reliable, &f2, fr2, &caps(4, 1 << 20), 0),
            FragmentOutcome::Conflict
        ));
        // Same id in the other space is a different message.
        assert!(matches!(
            r.on_fragment(now, Space::AtMostOnce, &f2, fr2, &caps(4, 1 << 20), 0),
            FragmentOutcome::Stored
        ));
    }

    #[test]
    fn bounded_by_slots_and_budget_and_expires() {
        let data = vec![0u8; 100];
        let now = t0();
        let mut r = Reassembly::new();
        for id in 0..2 {
            let (f, fr) = frag(&data, id, 2, 0);
            assert!(matches!(
                r.on_fragment(now, Space::AtMostOnce, &f, fr, &caps(2, 1000), 0),
                FragmentOutcome::Stored
            ));
        }
        let (f, fr) = frag(&data, 9, 2, 0);
        assert!(matches!(
            r.on_fragment(now, Space::AtMostOnce, &f, fr, &caps(2, 1000), 0),
            FragmentOutcome::NoRoom
        ));
        let mut r2 = Reassembly::new();
        assert!(matches!(
            r2.on_fragment(now, Space::AtMostOnce, &f, fr, &caps(8, 99), 0),
            FragmentOutcome::NoRoom
        ));
        let timeout = Duration::from_secs(1);
        assert_eq!(r.next_expiry(timeout), Some(now + timeout));
        let mut gone = Vec::new();
        r.expire(now + timeout, timeout, |d| gone.push(d.id));
        gone.sort();
        assert_eq!(gone, vec![0, 1]);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn remove_below_discards_only_that_space() {
        let data = vec![0u8; 10];
        let now = t0();
        let mut r = Reassembly::new();
        for id in 0..4 {
            let (f, fr) = frag(&data, id, 2, 0);
            r.on_fragment(now, Space::AtMostOnce, &f, fr, &caps(8, 1000), 0);
            r.on_fragment(now, Space::Reliable, &f, fr, &caps(8, 1000), 0);
        }
        let mut n = 0;
        r.remove_below(Space::AtMostOnce, 2, |_| n += 1);
        assert_eq!(n, 2);
        assert_eq!(r.len(), 6);
        assert!(r.remove(Space::Reliable, 0).is_some());
        assert!(!r.contains(Space::Reliable, 0));
    }
}

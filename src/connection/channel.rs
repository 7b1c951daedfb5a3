//! Receive-side state of one ordered channel: the next position to deliver and the messages
//! (or skips) that arrived ahead of it.

use std::collections::BTreeMap;

use crate::limits::HELD_ENTRY_COST;
use crate::message::Guarantee;

/// Something waiting for its turn in an ordered channel.
#[derive(Debug)]
pub(super) enum Held {
    /// A received message.
    Message {
        id: u64,
        guarantee: Guarantee,
        payload: Vec<u8>,
    },
    /// A position the sender abandoned: skip it.
    Skip,
}

/// One ordered channel.
#[derive(Debug, Default)]
pub(super) struct OrderedChannel {
    next: u64,
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
}

impl OrderedChannel {
    /// Bytes held back: payloads plus [`HELD_ENTRY_COST`] per entry.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The next position to deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Whether `seq` was already passed (delivered or skipped).
    pub fn is_past(&self, seq: u64) -> bool {
        seq < self.next
    }

    /// Whether `seq` is the next position and nothing is held: [`offer`](Self::offer) would
    /// deliver it at once and nothing after it.
    #[inline]
    pub fn is_next_alone(&self, seq: u64) -> bool {
        seq == self.next && self.held.is_empty()
    }

    /// Passes the next position, for a channel where
    /// [`is_next_alone(next)`](Self::is_next_alone) holds: the same as offering a message at
    /// `next`, without the delivery, which the caller makes.
    #[inline]
    pub fn pass_next_alone(&mut self) {
        debug_assert!(self.held.is_empty());
        self.next += 1;
    }

    /// [`pass_next_alone`](Self::pass_next_alone) `n` times.
    #[inline]
    pub fn pass_next_alone_run(&mut self, n: u64) {
        debug_assert!(self.held.is_empty());
        self.next += n;
    }

    /// Offers position `seq`. Calls `deliver` for every message that is now in order (this one
    /// first if it is next), and holds it otherwise. Returns `false` if `seq` was already
    /// passed or is already held (nothing changed).
    pub fn offer(&mut self, seq: u64, item: Held, mut deliver: impl FnMut(Held)) -> bool {
        if seq < self.next || self.held.contains_key(&seq) {
            return false;
        }
        if seq > self.next {
            self.held_bytes += cost(&item);
            self.held.insert(seq, item);
            return true;
        }
        self.next += 1;
        if matches!(item, Held::Message { .. }) {
            deliver(item);
        }
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let item = entry.remove();
            self.next += 1;
            self.held_bytes -= cost(&item);
            if matches!(item, Held::Message { .. }) {
                deliver(item);
            }
        }
        true
    }
}

/// Receive-buffer bytes an entry accounts for while held.
pub(super) fn cost(item: &Held) -> usize {
    HELD_ENTRY_COST
        + match item {
            Held::Message { payload, .. } => payload.len(),
            Held::Skip => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> Held {
        Held::Message {
            id,
            guarantee: Guarantee::ExactlyOnce,
            payload: vec![id as u8; 3],
        }
    }

    fn ids(out: &[Held]) -> Vec<u64> {
        out.iter()
            .map(|h| match h {
                Held::Message { id, .. } => *id,
                Held::Skip => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn delivers_in_order_with_holes_and_skips() {
        let mut ch = OrderedChannel::default();
        let mut out = Vec::new();
        assert!(ch.offer(2, msg(12), |h| out.push(h)));
        assert!(ch.offer(1, Held::Skip, |h| out.push(h)));
        assert!(out.is_empty());
        assert_eq!(ch.held_bytes(), 2 * HELD_ENTRY_COST + 3);
        assert!(ch.offer(0, msg(10), |h| out.push(h)));
        assert_eq!(ids(&out), vec![10, 12]);
        assert_eq!(ch.held_bytes(), 0);
        assert!(ch.is_past(2));
        assert!(!ch.offer(1, msg(11), |h| out.push(h)), "already passed");
        assert!(ch.offer(4, msg(14), |h| out.push(h)));
        assert!(!ch.offer(4, msg(14), |h| out.push(h)), "already held");
        assert!(ch.offer(3, msg(13), |h| out.push(h)));
        assert_eq!(ids(&out), vec![10, 12, 13, 14]);
    }
}

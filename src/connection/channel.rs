//! Receive-side state of one ordered channel: the next position to deliver and the messages
//! (or skips) that arrived ahead of it.

use std::collections::VecDeque;

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
///
/// What arrived ahead of `next` is held in a ring of slots, one per position from `next + 1`
/// to the highest held (positions come consecutive from a sender, so after a loss the slots
/// fill densely): holding and releasing are a slot write and a pop, with no allocation once
/// the ring has grown. Every slot, empty or not, counts [`HELD_ENTRY_COST`] bytes besides the
/// payloads, so a peer that sends one position far ahead pays for the span; the ring's
/// capacity is kept within four times its length (or 64 slots), and freed when nothing is
/// held.
#[derive(Debug, Default)]
pub(super) struct OrderedChannel {
    next: u64,
    /// Slot `i` holds position `next + 1 + i`; the last slot is never empty.
    held: VecDeque<Option<Held>>,
    /// Payload bytes in `held`.
    payload_bytes: usize,
}

/// Ring slots reserved when holding starts, and kept however short the ring gets while it
/// holds anything.
const MIN_SLOTS: usize = 64;

impl OrderedChannel {
    /// Bytes held back: payloads plus [`HELD_ENTRY_COST`] per slot.
    pub fn held_bytes(&self) -> usize {
        self.held.len() * HELD_ENTRY_COST + self.payload_bytes
    }

    /// The next position to deliver.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Slots the ring has room for (its memory is this times the size of a slot).
    #[cfg(test)]
    pub fn ring_capacity(&self) -> usize {
        self.held.capacity()
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

    /// The bytes [`held_bytes`](Self::held_bytes) would grow by if `item` were held at `seq`
    /// (`seq > next`, not held yet): its payload, and the slots the ring grows by.
    pub fn hold_cost(&self, seq: u64, item: &Held) -> usize {
        let slots = usize::try_from(seq.saturating_sub(self.next)).unwrap_or(usize::MAX);
        let added = slots.saturating_sub(self.held.len());
        added
            .saturating_mul(HELD_ENTRY_COST)
            .saturating_add(payload_len(item))
    }

    /// Whether the positions `seq..seq + n` are all ahead of the next one and none is held:
    /// [`offer`](Self::offer) would hold each of them.
    pub fn is_vacant_run(&self, seq: u64, n: u64) -> bool {
        if seq <= self.next {
            return false;
        }
        // Slots past the ring's end are vacant.
        let at = |p: u64| {
            usize::try_from(p - self.next - 1).map_or(self.held.len(), |i| i.min(self.held.len()))
        };
        let (first, end) = (at(seq), at(seq.saturating_add(n)));
        self.held.range(first..end).all(Option::is_none)
    }

    /// Offers position `seq`. Calls `deliver` for every message that is now in order (this one
    /// first if it is next), and holds it otherwise. Returns `false` if `seq` was already
    /// passed or is already held (nothing changed). The caller bounds `seq - next` (the
    /// window) and admits [`hold_cost`](Self::hold_cost).
    pub fn offer(&mut self, seq: u64, item: Held, mut deliver: impl FnMut(Held)) -> bool {
        if seq < self.next {
            return false;
        }
        if seq > self.next {
            let Ok(i) = usize::try_from(seq - self.next - 1) else {
                return false;
            };
            let len = self.held.len();
            if i >= len {
                // Past the last slot (usually the very next one, after a loss).
                self.payload_bytes += payload_len(&item);
                if self.held.capacity() == 0 {
                    // The first hold after a loss: room for a typical run of them at once.
                    self.held.reserve(MIN_SLOTS);
                }
                if i > len {
                    self.held.resize_with(i, || None);
                }
                self.held.push_back(Some(item));
                return true;
            }
            let slot = &mut self.held[i];
            if slot.is_some() {
                return false;
            }
            self.payload_bytes += payload_len(&item);
            *slot = Some(item);
            return true;
        }
        self.next += 1;
        if matches!(item, Held::Message { .. }) {
            deliver(item);
        }
        // Each step of `next` takes the front slot: its position is now `next`.
        while let Some(front) = self.held.pop_front() {
            let Some(item) = front else {
                break;
            };
            self.next += 1;
            self.payload_bytes -= payload_len(&item);
            if matches!(item, Held::Message { .. }) {
                deliver(item);
            }
        }
        if self.held.is_empty() {
            // Nothing held: no memory kept that the receive buffer does not count.
            if self.held.capacity() > 0 {
                self.held = VecDeque::new();
            }
        } else if self.held.capacity() > MIN_SLOTS && self.held.len() * 4 < self.held.capacity() {
            self.held.shrink_to((self.held.len() * 2).max(MIN_SLOTS));
        }
        true
    }
}

/// Payload bytes of a held entry.
fn payload_len(item: &Held) -> usize {
    match item {
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

    /// Random offers around the next position agree with a model that holds entries in a
    /// map: the same results and deliveries; the held bytes count every position up to the
    /// highest held; the ring's capacity stays within four times its length.
    #[test]
    fn matches_a_map_of_held_positions() {
        use std::collections::BTreeMap;
        let mut rng = crate::rng::Rng::new(9);
        let mut ch = OrderedChannel::default();
        let (mut next, mut model) = (0u64, BTreeMap::<u64, Option<u64>>::new());
        let (mut out, mut expected) = (Vec::new(), Vec::new());
        let mut far = 0;
        for step in 0..20_000u64 {
            // Mostly near the front, now and then far ahead (up to 300 positions).
            let ahead = if rng.chance(0.02) {
                rng.below(300)
            } else {
                rng.below(12)
            };
            let seq = (next + ahead).saturating_sub(2);
            let skip = rng.chance(0.1);
            let item = if skip { Held::Skip } else { msg(step) };
            let predicted = (seq > ch.next()).then(|| ch.hold_cost(seq, &item));
            let before = ch.held_bytes();
            let fresh = seq >= next && !model.contains_key(&seq);
            assert_eq!(ch.offer(seq, item, |h| out.push(h)), fresh, "step {step}");
            if fresh && seq > next {
                model.insert(seq, (!skip).then_some(step));
                assert_eq!(Some(ch.held_bytes() - before), predicted, "step {step}");
                far = far.max(seq - next);
            } else if fresh {
                if !skip {
                    expected.push(step);
                }
                next += 1;
                while let Some(held) = model.remove(&next) {
                    expected.extend(held);
                    next += 1;
                }
            }
            assert_eq!(ch.next(), next, "step {step}");
            assert_eq!(ids(&out), expected, "step {step}");
            let span = model.last_key_value().map_or(0, |(&k, _)| k - next) as usize;
            let payloads = model.values().flatten().count() * 3;
            assert_eq!(
                ch.held_bytes(),
                span * HELD_ENTRY_COST + payloads,
                "step {step}"
            );
            assert_eq!(ch.is_next_alone(next), model.is_empty(), "step {step}");
            assert!(
                ch.held.capacity() <= (4 * ch.held.len()).max(MIN_SLOTS)
                    && (ch.held.capacity() == 0 || !ch.held.is_empty()),
                "step {step}: capacity {} length {}",
                ch.held.capacity(),
                ch.held.len()
            );
        }
        assert!(
            far > 200 && expected.len() > 5_000,
            "{far} {}",
            expected.len()
        );
    }
}

//! The endpoint's deadline queue: one deadline per connection-table slot, the earliest first.
//!
//! An indexed binary min-heap: every slot remembers where its entry sits, so moving or removing
//! a deadline is `O(log n)` without a search, and no stale entries pile up. Its two vectors
//! grow to the largest number of slots ever used and are then reused, so keeping thousands of
//! connections' timers current allocates nothing in steady state.

use std::time::Instant;

/// Marks a slot that has no entry in the heap.
const ABSENT: u32 = u32::MAX;

/// Deadlines keyed by slot index.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    /// The heap: each parent is due no later than its children.
    heap: Vec<(Instant, u32)>,
    /// `pos[slot]`: index of the slot's entry in `heap`, or [`ABSENT`].
    pos: Vec<u32>,
}

impl Deadlines {
    /// Number of slots with a deadline.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no slot has a deadline.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest deadline and its slot.
    pub fn first(&self) -> Option<(Instant, u32)> {
        self.heap.first().copied()
    }

    /// Removes and returns the earliest deadline and its slot.
    pub fn pop(&mut self) -> Option<(Instant, u32)> {
        let first = self.first()?;
        self.remove(first.1);
        Some(first)
    }

    /// Sets `slot`'s deadline to `at`, or removes it for `None`.
    pub fn set(&mut self, slot: u32, at: Option<Instant>) {
        let Some(at) = at else {
            self.remove(slot);
            return;
        };
        let i = slot as usize;
        if i >= self.pos.len() {
            self.pos.resize(i + 1, ABSENT);
        }
        match self.pos[i] {
            ABSENT => {
                self.heap.push((at, slot));
                let last = self.heap.len() - 1;
                self.pos[i] = last as u32;
                self.sift_up(last);
            }
            p => {
                let p = p as usize;
                let old = self.heap[p].0;
                self.heap[p].0 = at;
                if at < old {
                    self.sift_up(p);
                } else {
                    self.sift_down(p);
                }
            }
        }
    }

    /// Removes `slot`'s deadline, if it has one.
    pub fn remove(&mut self, slot: u32) {
        let Some(&p) = self.pos.get(slot as usize) else {
            return;
        };
        if p == ABSENT {
            return;
        }
        let p = p as usize;
        self.pos[slot as usize] = ABSENT;
        let last = self.heap.len() - 1;
        if p != last {
            self.heap.swap(p, last);
            self.heap.pop();
            self.pos[self.heap[p].1 as usize] = p as u32;
            // The moved entry may belong above or below its new place.
            self.sift_up(p);
            self.sift_down(p);
        } else {
            self.heap.pop();
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].0 <= self.heap[i].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < n && self.heap[l].0 < self.heap[least].0 {
                least = l;
            }
            if r < n && self.heap[r].0 < self.heap[least].0 {
                least = r;
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[allow(clippy::disallowed_methods)] // origin of virtual time; only offsets matter
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn earliest_first_and_moves_in_place() {
        let now = t0();
        let ms = |n| now + Duration::from_millis(n);
        let mut d = Deadlines::default();
        d.set(3, Some(ms(30)));
        d.set(1, Some(ms(10)));
        d.set(2, Some(ms(20)));
        assert_eq!(d.first(), Some((ms(10), 1)));
        d.set(1, Some(ms(40)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.pop(), Some((ms(20), 2)));
        d.set(3, None);
        assert_eq!(d.pop(), Some((ms(40), 1)));
        assert_eq!(d.pop(), None);
        assert!(d.is_empty());
        d.remove(7);
    }

    proptest! {
        /// Any sequence of sets, removals and pops behaves like an ordered set of
        /// (deadline, slot) with at most one entry per slot.
        #[test]
        fn matches_an_ordered_set(ops in prop::collection::vec((0u32..24, 0u64..50, 0u8..4), 0..400)) {
            let now = t0();
            let mut d = Deadlines::default();
            let mut model: BTreeSet<(Instant, u32)> = BTreeSet::new();
            let mut current: Vec<Option<Instant>> = vec![None; 24];
            for (slot, at, op) in ops {
                let at = now + Duration::from_millis(at);
                match op {
                    0 | 1 => {
                        if let Some(old) = current[slot as usize].take() {
                            model.remove(&(old, slot));
                        }
                        model.insert((at, slot));
                        current[slot as usize] = Some(at);
                        d.set(slot, Some(at));
                    }
                    2 => {
                        if let Some(old) = current[slot as usize].take() {
                            model.remove(&(old, slot));
                        }
                        d.remove(slot);
                    }
                    _ => {
                        let got = d.pop();
                        let want = model.pop_first();
                        // Equal deadlines may come out in either slot order.
                        prop_assert_eq!(got.map(|g| g.0), want.map(|w| w.0));
                        if let (Some(g), Some(w)) = (got, want) {
                            if g != w {
                                prop_assert!(model.remove(&g));
                                model.insert(w);
                            }
                            current[g.1 as usize] = None;
                        }
                    }
                }
                prop_assert_eq!(d.len(), model.len());
                prop_assert_eq!(d.first().map(|f| f.0), model.first().map(|f| f.0));
            }
        }
    }
}

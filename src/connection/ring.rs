//! A ring of optional slots, for the reliable and at-most-once outboxes: the part of `VecDeque<Option<T>>` the
//! connection uses, with a push that writes the new value straight into its slot (a
//! `VecDeque` push is an out-of-line call that copies the value twice, and an outbox entry is
//! about a hundred bytes). Grows by doubling, like `VecDeque`, and never shrinks.

/// Slots `0..len` from the front; a slot is `None` once its message has an outcome.
#[derive(Debug)]
pub(super) struct Ring<T> {
    /// Empty, or a power of two long; slots outside `0..len` hold `None`.
    slots: Vec<Option<T>>,
    head: usize,
    len: usize,
}

impl<T> Ring<T> {
    pub fn new() -> Self {
        Ring {
            slots: Vec::new(),
            head: 0,
            len: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Where slot `i` (from the front) lives; `slots` must not be empty.
    #[inline]
    fn at(&self, i: usize) -> usize {
        (self.head + i) & (self.slots.len() - 1)
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&Option<T>> {
        if i < self.len {
            self.slots.get(self.at(i))
        } else {
            None
        }
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Option<T>> {
        if i < self.len {
            let at = self.at(i);
            self.slots.get_mut(at)
        } else {
            None
        }
    }

    #[inline]
    pub fn front(&self) -> Option<&Option<T>> {
        self.get(0)
    }

    #[inline]
    pub fn pop_front(&mut self) -> Option<Option<T>> {
        if self.len == 0 {
            return None;
        }
        let value = self.slots.get_mut(self.head).and_then(Option::take);
        self.head = (self.head + 1) & (self.slots.len() - 1);
        self.len -= 1;
        Some(value)
    }

    /// Appends `value` in a new slot at the back.
    #[inline(always)]
    pub fn push_back(&mut self, value: T) {
        if self.len == self.slots.len() {
            self.grow();
        }
        let at = self.at(self.len);
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some(value);
            self.len += 1;
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(8);
        let mut slots: Vec<Option<T>> = Vec::with_capacity(cap);
        for i in 0..self.len {
            let at = self.at(i);
            slots.push(self.slots.get_mut(at).and_then(Option::take));
        }
        slots.resize_with(cap, || None);
        self.slots = slots;
        self.head = 0;
    }

    /// Slots `start..len`, front to back (none if `start >= len`).
    #[inline]
    pub fn range_mut(&mut self, start: usize) -> impl Iterator<Item = &mut Option<T>> {
        let count = self.len.saturating_sub(start);
        let first = if count == 0 { 0 } else { self.at(start) };
        let (wrapped, tail) = self.slots.split_at_mut(first);
        let in_tail = count.min(tail.len());
        tail[..in_tail]
            .iter_mut()
            .chain(wrapped[..count - in_tail].iter_mut())
    }

    /// Every slot, front to back.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::rng::Rng;

    /// Random pushes, pops, takes and walks agree with `VecDeque<Option<T>>`, through growth
    /// and wrap-around.
    #[test]
    fn behaves_as_a_vecdeque_of_options() {
        let mut rng = Rng::new(5);
        let mut ring: Ring<u64> = Ring::new();
        let mut model: VecDeque<Option<u64>> = VecDeque::new();
        for step in 0..4_000u64 {
            match rng.below(10) {
                0..=3 => {
                    ring.push_back(step);
                    model.push_back(Some(step));
                }
                4..=6 => assert_eq!(ring.pop_front(), model.pop_front(), "step {step}"),
                7 => {
                    let i = rng.below(model.len() as u64 + 2) as usize;
                    let taken = ring.get_mut(i).and_then(Option::take);
                    assert_eq!(
                        taken,
                        model.get_mut(i).and_then(Option::take),
                        "step {step}"
                    );
                }
                8 => {
                    let start = rng.below(model.len() as u64 + 2) as usize;
                    for v in ring.range_mut(start).flatten() {
                        *v += 1;
                    }
                    for v in model.range_mut(start.min(model.len())..).flatten() {
                        *v += 1;
                    }
                }
                _ => {
                    let i = rng.below(model.len() as u64 + 2) as usize;
                    assert_eq!(ring.get(i), model.get(i), "step {step}");
                    assert_eq!(ring.front(), model.front(), "step {step}");
                }
            }
            assert_eq!(ring.len(), model.len(), "step {step}");
            assert!(ring.iter().eq(model.iter()), "step {step}");
        }
        // Grown well past the first capacity and wrapped many times.
        assert!(ring.slots.len() >= 64, "{}", ring.slots.len());
    }
}

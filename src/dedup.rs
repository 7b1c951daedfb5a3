//! The receiver's sliding duplicate-detection window over `u64` ids.
//!
//! Every id below the window's `base` counts as already seen; ids inside the window are
//! remembered one bit each; ids at or past `base + capacity` cannot be judged yet and are
//! rejected so the caller can decide (drop, or advance the window first).

use std::ops::Range;

/// Steps up to this long are taken bit by bit instead of with slice operations.
const SHORT_STEP: usize = 8;

/// Why an id was not accepted by [`DedupWindow::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The id is inside the window and was already inserted.
    Duplicate,
    /// The id is below the window's base: it was seen (or given up on) long ago.
    TooOld,
    /// The id is at or beyond `base + capacity`: the window cannot hold it yet.
    BeyondWindow,
}

/// The slot an id not yet inserted takes in a [`DedupWindow`]: see
/// [`DedupWindow::vacancy`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vacancy {
    /// Index of the word holding the slot.
    word: usize,
    /// The slot's bit in that word.
    mask: u64,
    /// The window's base when the vacancy was found (checked in debug builds).
    #[cfg(debug_assertions)]
    base: u64,
}

/// A sliding window of seen ids, one bit per id, stored as a ring buffer.
///
/// ```text
///      TooOld      |<----------------- capacity ----------------->|  BeyondWindow
///  ... ____________|_______________________________________________|______________ ...
///                  | 1 1 1 0 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 |
///                  ^                                               ^
///                base                                      base + capacity = end()
///
///  1 = id inserted, 0 = not (yet) seen. `advance_contiguous` consumes the leading 1s
///  (here base moves forward by 3); `advance_to` jumps over a prefix and counts its 0s.
/// ```
///
/// The capacity is rounded up to a multiple of 64 (whole words); all operations cost at most
/// O(capacity / 64), whatever the distance the window moves. `end()` saturates at `u64::MAX`,
/// so `u64::MAX` itself is never accepted; nothing panics for any `u64` id.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// The lowest id that is not implicitly seen.
    base: u64,
    /// Ring of `capacity` bits, 64 to a word (slot `s` is bit `s % 64` of word `s / 64`): the
    /// id `base + o` lives at slot `(head + o) % capacity`. Every bit is inside the window:
    /// bits are cleared as the base passes them. Plain words, so that the single-bit paths
    /// (the hot ones) are a few instructions; operations over ranges of slots go a word at a
    /// time with masks.
    words: Box<[u64]>,
    /// Slot of `base`; always `< capacity`.
    head: usize,
    /// Number of set bits, so that an empty window answers in O(1).
    ones: usize,
}

impl DedupWindow {
    /// Creates an empty window starting at `base`, holding `capacity` ids (rounded up to a
    /// multiple of 64; zero is treated as one).
    pub fn new(base: u64, capacity: usize) -> Self {
        let capacity = capacity.max(1).div_ceil(64).saturating_mul(64);
        DedupWindow {
            base,
            words: vec![0; capacity / 64].into_boxed_slice(),
            head: 0,
            ones: 0,
        }
    }

    /// The lowest id not implicitly seen; every id below it counts as seen.
    #[inline]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The number of ids the window holds (a multiple of 64).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.words.len() * 64
    }

    /// One past the highest id the window can accept: `base + capacity`, saturating at
    /// `u64::MAX`.
    #[inline]
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.capacity() as u64)
    }

    /// Whether [`insert`](Self::insert) would accept `id`, without changing anything.
    pub fn check(&self, id: u64) -> Result<(), Rejection> {
        let offset = self.offset(id)?;
        if self.bit(self.slot(offset)) {
            return Err(Rejection::Duplicate);
        }
        Ok(())
    }

    /// Whether `id` counts as seen: inserted, or below the base.
    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        match self.offset(id) {
            Ok(offset) => self.bit(self.slot(offset)),
            Err(Rejection::TooOld) => true,
            Err(_) => false,
        }
    }

    /// Marks `id` as seen, or says why it cannot be.
    #[inline]
    pub fn insert(&mut self, id: u64) -> Result<(), Rejection> {
        let offset = self.offset(id)?;
        let slot = self.slot(offset);
        if self.replace_bit(slot, true) {
            return Err(Rejection::Duplicate);
        }
        Ok(())
    }

    /// Where the id `base + offset` (`offset < capacity`) would be inserted: `None` if it was
    /// inserted already ([`check`](Self::check) would say `Duplicate`), its slot otherwise.
    /// [`fill`](Self::fill) then inserts it there as [`insert`](Self::insert) would, provided
    /// the window did not change in between.
    #[inline]
    pub(crate) fn vacancy(&self, offset: usize) -> Option<Vacancy> {
        debug_assert!(offset < self.capacity());
        let slot = self.slot(offset);
        let (word, mask) = (slot / 64, 1u64 << (slot % 64));
        if self.words.get(word).is_some_and(|w| w & mask != 0) {
            return None;
        }
        Some(Vacancy {
            word,
            mask,
            #[cfg(debug_assertions)]
            base: self.base,
        })
    }

    /// Inserts the id of a [`vacancy`](Self::vacancy) found since the window last changed.
    #[inline]
    pub(crate) fn fill(&mut self, v: Vacancy) {
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            v.base, self.base,
            "the window moved since the vacancy was found"
        );
        if let Some(w) = self.words.get_mut(v.word) {
            debug_assert!(*w & v.mask == 0, "the vacancy was filled already");
            *w |= v.mask;
            self.ones += 1;
        }
    }

    /// Whether the ids `base + offset .. base + offset + n` (`offset + n <= capacity`) were
    /// all not inserted: [`fill_run`](Self::fill_run) may then insert them.
    #[inline]
    pub(crate) fn is_vacant_run(&self, offset: usize, n: usize) -> bool {
        debug_assert!(offset + n <= self.capacity());
        self.count(offset, offset + n) == 0
    }

    /// Inserts the ids `base + offset .. base + offset + n`, which
    /// [`is_vacant_run`](Self::is_vacant_run) found not inserted since the window last changed.
    #[inline]
    pub(crate) fn fill_run(&mut self, offset: usize, n: usize) {
        debug_assert!(self.is_vacant_run(offset, n));
        for seg in self.segments(offset, offset + n) {
            for_words(seg, |w, mask| self.words[w] |= mask);
        }
        self.ones += n;
    }

    /// Forgets that `id` was inserted (it may then be inserted again). Ids below the base or
    /// beyond the window are left alone. Returns `true` if the id was set.
    pub fn remove(&mut self, id: u64) -> bool {
        match self.offset(id) {
            Ok(offset) => {
                let slot = self.slot(offset);
                self.replace_bit(slot, false)
            }
            Err(_) => false,
        }
    }

    /// Whether the window is empty and `id` is its base (and [`insert`](Self::insert) would
    /// accept it): `id` is the next id expected and nothing above it was inserted.
    #[inline]
    pub(crate) fn is_empty_at(&self, id: u64) -> bool {
        self.ones == 0 && id == self.base && id != u64::MAX
    }

    /// Moves the base of an empty window forward by one: for a window where
    /// [`is_empty_at(base)`](Self::is_empty_at) holds, the same as `insert(base)` followed by
    /// `advance_contiguous()`, or by `advance_to(base + 1)`.
    #[inline]
    pub(crate) fn pass_empty_base(&mut self) {
        debug_assert!(self.is_empty_at(self.base));
        let h = self.head + 1;
        self.head = if h == self.capacity() { 0 } else { h };
        self.base += 1;
    }

    /// [`pass_empty_base`](Self::pass_empty_base) `n` times.
    #[inline]
    pub(crate) fn pass_empty_run(&mut self, n: u64) {
        debug_assert!(self.is_empty_at(self.base));
        let cap = self.capacity() as u64;
        // `head < cap`, so the sum cannot overflow.
        self.head = ((self.head as u64 + n % cap) % cap) as usize;
        self.base += n;
    }

    /// Moves the base forward past every inserted id at the front of the window (their bits
    /// are consumed); returns the new base.
    #[inline]
    pub fn advance_contiguous(&mut self) -> u64 {
        // Fast path, the common case in order: no set bit, or a short run, at the front.
        let mut stepped = 0;
        while stepped < SHORT_STEP {
            if !self.bit(self.head) {
                return self.base;
            }
            self.step();
            stepped += 1;
        }
        let run = self.find(0, false).unwrap_or(self.capacity());
        if run > 0 {
            // Set bits are all below `end()`, so this cannot pass `u64::MAX`.
            self.advance_to(self.base.saturating_add(run as u64));
        }
        self.base
    }

    /// Moves the base to `new_base` (a no-op unless it is greater) and returns how many ids in
    /// `[old base, new_base)` were *not* inserted: the gaps passed over.
    ///
    /// Costs O(capacity / 64) at most, even for a jump of 2^60.
    #[inline]
    pub fn advance_to(&mut self, new_base: u64) -> u64 {
        if new_base <= self.base {
            return 0;
        }
        let delta = new_base - self.base;
        let capacity = self.capacity();
        if delta <= SHORT_STEP as u64 {
            // Fast path for the common small step: bit by bit.
            let mut gaps = 0;
            for _ in 0..delta {
                if !self.bit(self.head) {
                    gaps += 1;
                }
                self.step();
            }
            return gaps;
        }
        let gaps = if delta >= capacity as u64 {
            let set = self.ones as u64;
            self.words.fill(0);
            self.ones = 0;
            self.head = 0;
            delta - set
        } else {
            // `delta < capacity`, so it fits a usize.
            let d = delta as usize;
            let set = self.count(0, d);
            self.clear(0, d);
            self.ones -= set;
            self.head = self.slot(d);
            (d - set) as u64
        };
        self.base = new_base;
        gaps
    }

    /// The inserted ids (all at or above the base) as ascending half-open ranges.
    pub fn set_ranges(&self) -> impl Iterator<Item = Range<u64>> + Clone + '_ {
        SetRanges {
            window: self,
            pos: 0,
            left: self.ones,
        }
    }

    /// The number of inserted ids inside the window.
    pub fn count_set(&self) -> usize {
        self.ones
    }

    /// The bit at `slot` (< capacity).
    #[inline]
    fn bit(&self, slot: usize) -> bool {
        self.words
            .get(slot / 64)
            .is_some_and(|w| w >> (slot % 64) & 1 == 1)
    }

    /// Sets the bit at `slot` (< capacity) to `value`; returns its previous value.
    #[inline]
    fn replace_bit(&mut self, slot: usize, value: bool) -> bool {
        let Some(w) = self.words.get_mut(slot / 64) else {
            return false;
        };
        let mask = 1u64 << (slot % 64);
        let old = *w & mask != 0;
        if value {
            *w |= mask;
        } else {
            *w &= !mask;
        }
        match (old, value) {
            (false, true) => self.ones += 1,
            (true, false) => self.ones -= 1,
            _ => {}
        }
        old
    }

    /// Consumes the front slot: clears it and moves the base and head by one.
    #[inline]
    fn step(&mut self) {
        let h = self.head;
        self.replace_bit(h, false);
        self.head = if h + 1 == self.capacity() { 0 } else { h + 1 };
        self.base += 1;
    }

    /// The offset of `id` from the base if the window can hold it.
    #[inline]
    fn offset(&self, id: u64) -> Result<usize, Rejection> {
        if id < self.base {
            return Err(Rejection::TooOld);
        }
        if id >= self.end() {
            return Err(Rejection::BeyondWindow);
        }
        // `id - base < capacity`, so it fits a usize.
        Ok((id - self.base) as usize)
    }

    /// The ring slot of logical offset `offset` (`<= capacity`; `capacity` maps to `head`).
    #[inline]
    fn slot(&self, offset: usize) -> usize {
        let i = self.head + offset;
        if i >= self.capacity() {
            i - self.capacity()
        } else {
            i
        }
    }

    /// The logical offsets `[from, to)` (`from <= to <= capacity`) as at most two slot ranges,
    /// in logical order.
    fn segments(&self, from: usize, to: usize) -> [Range<usize>; 2] {
        let first_len = self.capacity() - self.head;
        if to <= first_len {
            [self.head + from..self.head + to, 0..0]
        } else if from >= first_len {
            [from - first_len..to - first_len, 0..0]
        } else {
            [self.head + from..self.capacity(), 0..to - first_len]
        }
    }

    /// The smallest logical offset `>= from` whose bit equals `value`.
    fn find(&self, from: usize, value: bool) -> Option<usize> {
        // Inverting each word turns a search for a clear bit into one for a set bit.
        let flip = if value { 0 } else { u64::MAX };
        let mut skipped = from;
        for seg in self.segments(from, self.capacity()) {
            let mut slot = seg.start;
            while slot < seg.end {
                let (w, mask, next) = word_of(slot, seg.end);
                let hits = (self.words[w] ^ flip) & mask;
                if hits != 0 {
                    let hit = w * 64 + hits.trailing_zeros() as usize;
                    return Some(skipped + (hit - seg.start));
                }
                slot = next;
            }
            skipped += seg.len();
        }
        None
    }

    /// Set bits at logical offsets `[from, to)`.
    fn count(&self, from: usize, to: usize) -> usize {
        let mut n = 0;
        for seg in self.segments(from, to) {
            for_words(seg, |w, mask| {
                n += (self.words[w] & mask).count_ones() as usize
            });
        }
        n
    }

    /// Clears the bits at logical offsets `[from, to)`.
    fn clear(&mut self, from: usize, to: usize) {
        for seg in self.segments(from, to) {
            for_words(seg, |w, mask| self.words[w] &= !mask);
        }
    }
}

/// The word holding slot `slot`, the mask of its bits from `slot` up to `end` (exclusive,
/// `slot < end`), and the first slot after them.
#[inline]
fn word_of(slot: usize, end: usize) -> (usize, u64, usize) {
    let w = slot / 64;
    let lo = slot % 64;
    let hi = (end - w * 64).min(64);
    // `hi - lo` is 1..=64 bits.
    let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
    (w, mask, w * 64 + hi)
}

/// Calls `f(word, mask)` for each word the slots `r` touch, with the mask of their bits in it.
#[inline]
fn for_words(r: Range<usize>, mut f: impl FnMut(usize, u64)) {
    let mut slot = r.start;
    while slot < r.end {
        let (w, mask, next) = word_of(slot, r.end);
        f(w, mask);
        slot = next;
    }
}

/// Iterator behind [`DedupWindow::set_ranges`].
#[derive(Clone)]
struct SetRanges<'a> {
    window: &'a DedupWindow,
    /// Logical offset to resume from.
    pos: usize,
    /// Set bits not yet in a range returned: at 0 the walk ends without scanning the rest.
    left: usize,
}

impl Iterator for SetRanges<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        let w = self.window;
        if self.left == 0 || self.pos >= w.capacity() {
            return None;
        }
        let Some(start) = w.find(self.pos, true) else {
            self.pos = w.capacity();
            return None;
        };
        let end = w.find(start, false).unwrap_or(w.capacity());
        self.pos = end;
        self.left = self.left.saturating_sub(end - start);
        Some(w.base.saturating_add(start as u64)..w.base.saturating_add(end as u64))
    }
}

#[cfg(test)]
// One-range arrays are expected values here, not misspelt `vec![x; n]`.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    use Rejection::{BeyondWindow, Duplicate, TooOld};

    /// The first 64 ids of the window as a bit pattern: bit `i` (counting from the right) is
    /// the id `base + i`, so a literal reads right to left from the base.
    fn pattern(w: &DedupWindow) -> u64 {
        (0..64u64)
            .filter(|i| w.contains(w.base() + i))
            .fold(0, |acc, i| acc | 1 << i)
    }

    #[derive(Debug)]
    enum Op {
        Insert(u64, Result<(), Rejection>),
        Remove(u64, bool),
        /// Expected new base.
        Contiguous(u64),
        /// Target, expected gaps.
        AdvanceTo(u64, u64),
    }
    use Op::*;

    /// Runs `ops` on a fresh 64-id window at base 0, checking the verdict, the base and the
    /// bit pattern after each step.
    fn run(ops: &[(Op, u64, u64)]) {
        let mut w = DedupWindow::new(0, 64);
        for (step, (op, base, bits)) in ops.iter().enumerate() {
            match *op {
                Insert(id, want) => {
                    assert_eq!(w.check(id), want, "step {step}: check {id}");
                    assert_eq!(w.insert(id), want, "step {step}: insert {id}");
                }
                Remove(id, want) => assert_eq!(w.remove(id), want, "step {step}: remove {id}"),
                Contiguous(want) => assert_eq!(w.advance_contiguous(), want, "step {step}"),
                AdvanceTo(to, gaps) => assert_eq!(w.advance_to(to), gaps, "step {step}"),
            }
            assert_eq!(w.base(), *base, "step {step}: {op:?}");
            assert_eq!(
                pattern(&w),
                *bits,
                "step {step}: {op:?}: {:#b}",
                pattern(&w)
            );
            assert_eq!(w.count_set(), bits.count_ones() as usize, "step {step}");
        }
    }

    #[test]
    fn in_order_inserts() {
        run(&[
            (Insert(0, Ok(())), 0, 0b1),
            (Insert(1, Ok(())), 0, 0b11),
            (Insert(2, Ok(())), 0, 0b111),
            (Insert(1, Err(Duplicate)), 0, 0b111),
            (Contiguous(3), 3, 0b0),
            (Insert(2, Err(TooOld)), 3, 0b0),
            (Insert(3, Ok(())), 3, 0b1),
            (Contiguous(4), 4, 0b0),
            (Contiguous(4), 4, 0b0),
        ]);
    }

    #[test]
    fn out_of_order_inserts() {
        run(&[
            (Insert(3, Ok(())), 0, 0b1000),
            (Insert(1, Ok(())), 0, 0b1010),
            (Insert(5, Ok(())), 0, 0b10_1010),
            (Contiguous(0), 0, 0b10_1010),
            (Insert(0, Ok(())), 0, 0b10_1011),
            (Contiguous(2), 2, 0b1010),
            (Insert(3, Err(Duplicate)), 2, 0b1010),
            (Insert(2, Ok(())), 2, 0b1011),
            (Contiguous(4), 4, 0b10),
            (Insert(4, Ok(())), 4, 0b11),
            (Contiguous(6), 6, 0b0),
        ]);
    }

    #[test]
    fn window_edges() {
        run(&[
            (Insert(63, Ok(())), 0, 1 << 63),
            (Insert(64, Err(BeyondWindow)), 0, 1 << 63),
            (Insert(u64::MAX, Err(BeyondWindow)), 0, 1 << 63),
            (Insert(0, Ok(())), 0, 1 << 63 | 1),
            (
                Contiguous(1),
                1,
                0b01000000_00000000_00000000_00000000_00000000_00000000_00000000_00000000,
            ),
            (
                Insert(64, Ok(())),
                1,
                0b11000000_00000000_00000000_00000000_00000000_00000000_00000000_00000000,
            ),
            (Insert(65, Err(BeyondWindow)), 1, 0b11 << 62),
            (Insert(0, Err(TooOld)), 1, 0b11 << 62),
        ]);
    }

    #[test]
    fn remove_and_advance_to() {
        run(&[
            (Insert(2, Ok(())), 0, 0b100),
            (Insert(5, Ok(())), 0, 0b10_0100),
            (Insert(6, Ok(())), 0, 0b110_0100),
            (Remove(5, true), 0, 0b100_0100),
            (Remove(5, false), 0, 0b100_0100),
            (Remove(70, false), 0, 0b100_0100),
            (Insert(5, Ok(())), 0, 0b110_0100),
            // Ids 0..4 passed over: 0, 1, 3 were gaps.
            (AdvanceTo(4, 3), 4, 0b110),
            (AdvanceTo(2, 0), 4, 0b110),
            (Remove(2, false), 4, 0b110),
            (AdvanceTo(7, 1), 7, 0b0),
            (Insert(8, Ok(())), 7, 0b10),
            // A jump past the whole window counts every unset id.
            (AdvanceTo(1007, 999), 1007, 0b0),
        ]);
    }

    #[test]
    fn ring_wraps() {
        let mut w = DedupWindow::new(0, 64);
        for id in 0..40 {
            w.insert(id).unwrap();
        }
        w.insert(50).unwrap();
        assert_eq!(w.advance_contiguous(), 40);
        // Ids 64..104 live in slots 0..40, before the head at slot 40.
        for id in (64..102).step_by(3) {
            w.insert(id).unwrap();
        }
        assert_eq!(w.insert(104), Err(BeyondWindow));
        w.insert(103).unwrap();
        let ranges: Vec<_> = w.set_ranges().collect();
        let mut want = vec![50..51];
        want.extend((64..102).step_by(3).map(|i| i..i + 1));
        want.push(103..104);
        assert_eq!(ranges, want);
        assert_eq!(w.count_set(), 1 + 13 + 1);
        // A run that crosses the end of the ring is reported as one range.
        for id in 51..64 {
            w.insert(id).unwrap();
        }
        assert_eq!(w.set_ranges().next(), Some(50..65));
        // Ids 40..60 passed over; 50..60 were set.
        assert_eq!(w.advance_to(60), 10);
        assert_eq!(w.advance_contiguous(), 65);
        assert_eq!(w.advance_to(66), 1);
        assert_eq!(w.set_ranges().next(), Some(67..68));
    }

    #[test]
    fn huge_jumps_count_gaps() {
        let mut w = DedupWindow::new(0, 128);
        for id in [0, 5, 100] {
            w.insert(id).unwrap();
        }
        assert_eq!(w.advance_to(1 << 60), (1 << 60) - 3);
        assert_eq!(w.base(), 1 << 60);
        assert_eq!(w.count_set(), 0);
        assert_eq!(w.set_ranges().count(), 0);
        assert!(w.contains(100));
        w.insert((1 << 60) + 1).unwrap();
        assert_eq!(w.advance_to(u64::MAX), u64::MAX - (1 << 60) - 1);
        assert_eq!(w.end(), u64::MAX);
        assert_eq!(w.insert(u64::MAX), Err(BeyondWindow));
        assert!(w.contains(u64::MAX - 1));
        assert_eq!(w.advance_contiguous(), u64::MAX);
    }

    #[test]
    fn near_the_top_of_u64() {
        let base = u64::MAX - 10;
        let mut w = DedupWindow::new(base, 64);
        assert_eq!(w.end(), u64::MAX);
        for id in base..u64::MAX {
            assert_eq!(w.insert(id), Ok(()));
        }
        assert_eq!(w.insert(u64::MAX), Err(BeyondWindow));
        assert_eq!(w.check(u64::MAX), Err(BeyondWindow));
        assert!(!w.contains(u64::MAX));
        assert!(!w.remove(u64::MAX));
        assert_eq!(w.set_ranges().collect::<Vec<_>>(), [base..u64::MAX]);
        assert_eq!(w.advance_contiguous(), u64::MAX);
        assert_eq!(w.advance_to(u64::MAX), 0);
        assert_eq!(w.insert(0), Err(TooOld));
        assert!(w.contains(0));
    }

    #[test]
    fn passing_an_empty_base_matches_insert_and_advance() {
        for capacity in [64, 128] {
            // Three copies of the window: the fast step, insert + advance_contiguous, and
            // advance_to. Out-of-order inserts between the steps move the head around the ring.
            let mut rng = Rng::new(capacity as u64);
            let mut fast = DedupWindow::new(1 << 40, capacity);
            let mut slow = fast.clone();
            let mut jump = fast.clone();
            for step in 0..2000 {
                let base = fast.base();
                if fast.is_empty_at(base) {
                    assert!(slow.is_empty_at(base) && jump.is_empty_at(base));
                    assert!(!fast.is_empty_at(base + 1));
                    fast.pass_empty_base();
                    assert_eq!(slow.insert(base), Ok(()));
                    assert_eq!(slow.advance_contiguous(), base + 1);
                    assert_eq!(jump.advance_to(base + 1), 1);
                } else {
                    assert!(!slow.is_empty_at(base) && !jump.is_empty_at(base));
                    // Fill the window up to its base and beyond, as the general path does.
                    for w in [&mut fast, &mut slow, &mut jump] {
                        let _ = w.insert(base);
                        w.advance_contiguous();
                    }
                }
                if rng.chance(0.1) {
                    let id = fast.base() + 1 + rng.below(capacity as u64 - 1);
                    let verdict = fast.insert(id);
                    assert_eq!(slow.insert(id), verdict);
                    assert_eq!(jump.insert(id), verdict);
                }
                for w in [&slow, &jump] {
                    assert_eq!(
                        (w.base, w.head, w.ones, &w.words),
                        (fast.base, fast.head, fast.ones, &fast.words),
                        "capacity {capacity} step {step}"
                    );
                }
            }
        }
        // The top of the id space: `u64::MAX` is never accepted, so never passed.
        let mut w = DedupWindow::new(u64::MAX - 1, 64);
        assert!(w.is_empty_at(u64::MAX - 1));
        assert!(!w.is_empty_at(u64::MAX));
        w.pass_empty_base();
        assert_eq!(w.base(), u64::MAX);
        assert!(!w.is_empty_at(u64::MAX));
    }

    #[test]
    fn passing_an_empty_run_is_passing_each_id() {
        for capacity in [64, 128, 192] {
            let mut rng = Rng::new(capacity as u64);
            let mut run = DedupWindow::new(1000, capacity);
            let mut each = run.clone();
            for _ in 0..500 {
                let n = match rng.below(4) {
                    0 => rng.below(3 * capacity as u64),
                    _ => rng.below(70),
                };
                run.pass_empty_run(n);
                for _ in 0..n {
                    each.pass_empty_base();
                }
                assert_eq!(
                    (run.base, run.head, run.ones, &run.words),
                    (each.base, each.head, each.ones, &each.words),
                    "capacity {capacity}"
                );
                assert!(run.is_empty_at(run.base()));
            }
        }
    }

    #[test]
    fn vacancy_and_fill_match_check_and_insert() {
        for capacity in [64, 128, 192] {
            // Two copies of the window: one takes ids through vacancy + fill, the other through
            // check + insert; advances move the head around the ring between them.
            let mut rng = Rng::new(7 + capacity as u64);
            let mut fast = DedupWindow::new(1 << 40, capacity);
            let mut slow = fast.clone();
            for step in 0..5000 {
                let offset = rng.below(capacity as u64) as usize;
                let id = fast.base() + offset as u64;
                let vacancy = fast.vacancy(offset);
                let verdict = slow.check(id);
                assert_eq!(vacancy.is_some(), verdict.is_ok(), "step {step}");
                assert_eq!(verdict.is_err(), fast.contains(id));
                if let Some(v) = vacancy {
                    fast.fill(v);
                    assert_eq!(slow.insert(id), Ok(()));
                    assert!(fast.contains(id));
                }
                if rng.chance(0.2) {
                    let to = fast.base() + rng.below(capacity as u64 / 2);
                    assert_eq!(fast.advance_to(to), slow.advance_to(to));
                }
                assert_eq!(
                    (fast.base, fast.head, fast.ones, &fast.words),
                    (slow.base, slow.head, slow.ones, &slow.words),
                    "capacity {capacity} step {step}"
                );
            }
        }
    }

    #[test]
    fn vacant_runs_and_fill_run_match_check_and_insert() {
        for capacity in [64, 128, 192] {
            // Runs of up to 70 ids through is_vacant_run + fill_run on one copy, id by id
            // through check + insert on the other, with advances that move the head around
            // the ring, so runs cross its end and word boundaries.
            let mut rng = Rng::new(11 + capacity as u64);
            let mut fast = DedupWindow::new(1 << 40, capacity);
            let mut slow = fast.clone();
            let (mut filled, mut refused) = (0, 0);
            for step in 0..5000 {
                let n = 1 + rng.below(70.min(capacity as u64)) as usize;
                let offset = rng.below((capacity - n) as u64 + 1) as usize;
                let first = fast.base() + offset as u64;
                let vacant = (first..first + n as u64).all(|id| slow.check(id).is_ok());
                assert_eq!(fast.is_vacant_run(offset, n), vacant, "step {step}");
                if vacant {
                    fast.fill_run(offset, n);
                    for id in first..first + n as u64 {
                        assert_eq!(slow.insert(id), Ok(()));
                    }
                    filled += 1;
                } else {
                    refused += 1;
                }
                if rng.chance(0.3) {
                    let to = fast.base() + rng.below(capacity as u64);
                    assert_eq!(fast.advance_to(to), slow.advance_to(to));
                }
                assert_eq!(
                    (fast.base, fast.head, fast.ones, &fast.words),
                    (slow.base, slow.head, slow.ones, &slow.words),
                    "capacity {capacity} step {step}"
                );
            }
            assert!(filled > 500 && refused > 500, "{filled} {refused}");
        }
    }

    #[test]
    fn capacity_rounds_up_to_words() {
        for (asked, got) in [(0, 64), (1, 64), (64, 64), (65, 128), (1000, 1024)] {
            let w = DedupWindow::new(7, asked);
            assert_eq!(w.capacity(), got, "{asked}");
            assert_eq!(w.end(), 7 + got as u64);
        }
    }

    /// The reference: a watermark and a set of ids at or above it.
    struct Model {
        base: u64,
        capacity: u64,
        set: BTreeSet<u64>,
    }

    impl Model {
        fn check(&self, id: u64) -> Result<(), Rejection> {
            if id < self.base {
                Err(TooOld)
            } else if id >= self.base.saturating_add(self.capacity) {
                Err(BeyondWindow)
            } else if self.set.contains(&id) {
                Err(Duplicate)
            } else {
                Ok(())
            }
        }

        fn insert(&mut self, id: u64) -> Result<(), Rejection> {
            self.check(id)?;
            self.set.insert(id);
            Ok(())
        }

        fn advance_to(&mut self, new_base: u64) -> u64 {
            if new_base <= self.base {
                return 0;
            }
            let passed = self.set.range(..new_base).count() as u64;
            self.set.retain(|id| *id >= new_base);
            let gaps = new_base - self.base - passed;
            self.base = new_base;
            gaps
        }

        fn ranges(&self) -> Vec<Range<u64>> {
            let mut out: Vec<Range<u64>> = Vec::new();
            for &id in &self.set {
                match out.last_mut() {
                    Some(r) if r.end == id => r.end += 1,
                    _ => out.push(id..id + 1),
                }
            }
            out
        }
    }

    #[test]
    fn matches_a_watermark_model() {
        for seed in 0..16 {
            let mut rng = Rng::new(seed);
            let capacity = [64, 128, 192][seed as usize / 3 % 3];
            let start = [0, 1 << 40, u64::MAX - 5000][seed as usize % 3];
            let mut w = DedupWindow::new(start, capacity);
            let mut m = Model {
                base: start,
                capacity: capacity as u64,
                set: BTreeSet::new(),
            };
            for step in 0..3000 {
                let id = m
                    .base
                    .saturating_sub(8)
                    .saturating_add(rng.below(capacity as u64 + 24));
                match rng.below(10) {
                    0..=5 => {
                        assert_eq!(w.check(id), m.check(id), "seed {seed} step {step}");
                        assert_eq!(w.insert(id), m.insert(id), "seed {seed} step {step}");
                    }
                    6 => {
                        let want = id >= m.base && m.set.remove(&id);
                        assert_eq!(w.remove(id), want, "seed {seed} step {step}");
                    }
                    7 => {
                        let mut b = m.base;
                        while m.set.contains(&b) {
                            b += 1;
                        }
                        m.advance_to(b);
                        assert_eq!(w.advance_contiguous(), b, "seed {seed} step {step}");
                    }
                    8 => {
                        let jump = if rng.chance(0.05) {
                            rng.below(1 << 50)
                        } else {
                            rng.below(capacity as u64 + 10)
                        };
                        let to = m.base.saturating_add(jump);
                        assert_eq!(
                            w.advance_to(to),
                            m.advance_to(to),
                            "seed {seed} step {step}"
                        );
                    }
                    _ => {
                        assert_eq!(w.contains(id), id < m.base || m.set.contains(&id));
                    }
                }
                assert_eq!(w.base(), m.base);
                assert_eq!(w.count_set(), m.set.len());
                if step % 16 == 0 {
                    assert_eq!(
                        w.set_ranges().collect::<Vec<_>>(),
                        m.ranges(),
                        "seed {seed}"
                    );
                }
            }
        }
    }
}

//! A bounded set of `u64` values stored as sorted, disjoint, non-adjacent half-open ranges.
//!
//! Used for "what have I seen recently" bookkeeping (received packet numbers for acks, acked
//! message ids). The storage is reserved once in [`RangeSet::new`], so a set that stays within
//! its bound never allocates again. When an insert would need more ranges than the bound, the
//! **lowest** range is dropped: the set keeps the most recent history.
//!
//! `u64::MAX` itself cannot be stored (a half-open range cannot end past it); inserting it is a
//! no-op. Sequence numbers in this crate stay below 2^62, so this never matters in practice.

use std::ops::Range;

/// A bounded set of `u64` as sorted, disjoint, non-adjacent half-open ranges.
///
/// At most [`max_ranges`](RangeSet::max_ranges) ranges are kept; when an insert would exceed
/// that, the lowest range is dropped (the values in it are forgotten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted ascending; for consecutive `a`, `b`: `a.end < b.start`; no range is empty.
    ranges: Vec<Range<u64>>,
    max_ranges: usize,
}

impl RangeSet {
    /// Creates an empty set that keeps at most `max_ranges` ranges (at least 1).
    ///
    /// The storage for all of them is reserved here.
    pub fn new(max_ranges: usize) -> Self {
        let max_ranges = max_ranges.max(1);
        RangeSet {
            // Grows on demand up to `max_ranges + 1` (an insert may create a range before the
            // lowest one is dropped) and keeps its capacity: no allocation once grown.
            ranges: Vec::new(),
            max_ranges,
        }
    }

    /// The maximum number of ranges kept.
    pub fn max_ranges(&self) -> usize {
        self.max_ranges
    }

    /// Inserts every value of `r`, merging with overlapping or adjacent ranges.
    ///
    /// Returns `true` if any value of `r` was not in the set before. An empty (or inverted)
    /// range is a no-op. If the set is full, the lowest range is dropped afterwards, which may
    /// be `r` itself when it lies below everything else.
    pub fn insert(&mut self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return false;
        }
        let (i, j) = self.touching(&r);
        let new = !(j == i + 1 && self.ranges[i].start <= r.start && r.end <= self.ranges[i].end);
        self.merge(i, j, r);
        new
    }

    /// Inserts the single value `v`; returns `true` if it was new. `u64::MAX` is ignored.
    pub fn insert_one(&mut self, v: u64) -> bool {
        // The common case in order: `v` extends the highest range.
        if let Some(last) = self.ranges.last_mut() {
            if last.end == v && v != u64::MAX {
                last.end = v + 1;
                return true;
            }
        }
        match v.checked_add(1) {
            Some(end) => self.insert(v..end),
            None => false,
        }
    }

    /// Calls `f` with each sub-range of `r` not yet in the set (ascending), then inserts `r`.
    ///
    /// Costs O(log n + ranges touched), never O(width of `r`). As with [`insert`](Self::insert),
    /// a full set then drops its lowest range, which may be `r` itself.
    pub fn insert_with_new(&mut self, r: Range<u64>, mut f: impl FnMut(Range<u64>)) {
        if r.is_empty() {
            return;
        }
        let (i, j) = self.touching(&r);
        let mut cursor = r.start;
        for existing in &self.ranges[i..j] {
            if existing.start > cursor {
                // `existing.start <= r.end` because the range touches `r`.
                f(cursor..existing.start);
            }
            cursor = cursor.max(existing.end);
        }
        if cursor < r.end {
            f(cursor..r.end);
        }
        self.merge(i, j, r);
    }

    /// Whether `v` is in the set.
    pub fn contains(&self, v: u64) -> bool {
        // The common case in order: `v` is above everything.
        if self.ranges.last().is_none_or(|last| v >= last.end) {
            return false;
        }
        let i = self.ranges.partition_point(|x| x.end <= v);
        self.ranges.get(i).is_some_and(|x| x.start <= v)
    }

    /// Drops every value below `v`.
    pub fn remove_below(&mut self, v: u64) {
        let k = self.ranges.partition_point(|x| x.end <= v);
        self.ranges.drain(..k);
        if let Some(first) = self.ranges.first_mut() {
            first.start = first.start.max(v);
        }
    }

    /// The smallest value in the set.
    pub fn min(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.start)
    }

    /// The largest value in the set (the last range's `end - 1`).
    pub fn max(&self) -> Option<u64> {
        // Ranges are never empty, so `end >= 1`.
        self.ranges.last().map(|r| r.end - 1)
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The number of ranges (not values).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Removes everything, keeping the storage.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The ranges in ascending order; `.rev()` for descending.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + Clone + '_ {
        self.ranges.iter().cloned()
    }

    /// Indices `[i, j)` of the ranges that overlap or are adjacent to the non-empty `r`.
    fn touching(&self, r: &Range<u64>) -> (usize, usize) {
        let i = self.ranges.partition_point(|x| x.end < r.start);
        let j = self.ranges.partition_point(|x| x.start <= r.end);
        (i, j)
    }

    /// Replaces the ranges `[i, j)` (all touching `r`) by their union with `r`, then enforces
    /// the bound.
    fn merge(&mut self, i: usize, j: usize, r: Range<u64>) {
        if i == j {
            self.ranges.insert(i, r);
        } else {
            let start = r.start.min(self.ranges[i].start);
            let end = r.end.max(self.ranges[j - 1].end);
            self.ranges[i] = start..end;
            self.ranges.drain(i + 1..j);
        }
        if self.ranges.len() > self.max_ranges {
            self.ranges.remove(0);
        }
    }
}

#[cfg(test)]
// One-range arrays are expected values here, not misspelt `vec![x; n]`.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    fn ranges(s: &RangeSet) -> Vec<Range<u64>> {
        s.iter().collect()
    }

    #[test]
    fn insert_merges_overlaps_and_neighbours() {
        // (inserts, expected `insert` results, expected ranges)
        #[allow(clippy::type_complexity)]
        let cases: &[(&[Range<u64>], &[bool], &[Range<u64>])] = &[
            (&[], &[], &[]),
            (&[5..5], &[false], &[]),
            (&[1..3], &[true], &[1..3]),
            (&[1..3, 3..5], &[true, true], &[1..5]),
            (&[3..5, 1..3], &[true, true], &[1..5]),
            (&[1..3, 4..5], &[true, true], &[1..3, 4..5]),
            (&[1..3, 5..7, 3..5], &[true, true, true], &[1..7]),
            (
                &[1..3, 5..7, 9..10, 0..20],
                &[true, true, true, true],
                &[0..20],
            ),
            (&[1..10, 2..5], &[true, false], &[1..10]),
            (&[1..10, 1..10], &[true, false], &[1..10]),
            (&[1..10, 0..1], &[true, true], &[0..10]),
            (&[1..3, 5..7, 2..6], &[true, true, true], &[1..7]),
            (&[1..3, 5..7, 2..3], &[true, true, false], &[1..3, 5..7]),
            (
                &[10..20, 0..5, 30..40],
                &[true, true, true],
                &[0..5, 10..20, 30..40],
            ),
        ];
        for (inserts, results, expected) in cases {
            let mut s = RangeSet::new(16);
            let got: Vec<bool> = inserts.iter().map(|r| s.insert(r.clone())).collect();
            assert_eq!(&got, results, "{inserts:?}");
            assert_eq!(&ranges(&s), expected, "{inserts:?}");
        }
    }

    #[test]
    fn insert_with_new_reports_only_gaps() {
        let mut s = RangeSet::new(16);
        s.insert(2..4);
        s.insert(6..8);
        s.insert(10..11);
        let mut seen = Vec::new();
        s.insert_with_new(0..12, |r| seen.push(r));
        assert_eq!(seen, [0..2, 4..6, 8..10, 11..12]);
        assert_eq!(ranges(&s), [0..12]);

        seen.clear();
        s.insert_with_new(3..9, |r| seen.push(r));
        assert!(seen.is_empty());

        seen.clear();
        s.insert_with_new(12..15, |r| seen.push(r));
        assert_eq!(seen, [12..15]);
        assert_eq!(ranges(&s), [0..15]);
    }

    #[test]
    fn insert_with_new_is_cheap_for_huge_ranges() {
        let mut s = RangeSet::new(4);
        s.insert(100..200);
        let mut seen = Vec::new();
        s.insert_with_new(0..(1 << 62), |r| seen.push(r));
        assert_eq!(seen, [0..100, 200..(1 << 62)]);
    }

    #[test]
    fn bound_drops_the_lowest_range() {
        let mut s = RangeSet::new(3);
        for v in [10, 20, 30, 40] {
            assert!(s.insert_one(v));
        }
        assert_eq!(ranges(&s), [20..21, 30..31, 40..41]);
        // A value below everything is inserted and dropped at once.
        assert!(s.insert_one(5));
        assert_eq!(ranges(&s), [20..21, 30..31, 40..41]);
        // Merging does not grow the count, so nothing is dropped.
        assert!(s.insert(21..30));
        assert_eq!(ranges(&s), [20..31, 40..41]);
        assert_eq!(s.ranges.capacity(), 4);
    }

    #[test]
    fn zero_bound_keeps_one_range() {
        let mut s = RangeSet::new(0);
        s.insert_one(1);
        s.insert_one(3);
        assert_eq!(ranges(&s), [3..4]);
    }

    #[test]
    fn queries() {
        let mut s = RangeSet::new(8);
        assert_eq!(
            (s.min(), s.max(), s.is_empty(), s.len()),
            (None, None, true, 0)
        );
        s.insert(5..10);
        s.insert(20..25);
        assert_eq!((s.min(), s.max(), s.len()), (Some(5), Some(24), 2));
        for (v, want) in [
            (4, false),
            (5, true),
            (9, true),
            (10, false),
            (19, false),
            (24, true),
        ] {
            assert_eq!(s.contains(v), want, "{v}");
        }
        assert_eq!(s.iter().rev().collect::<Vec<_>>(), [20..25, 5..10]);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn remove_below() {
        let cases: &[(u64, &[Range<u64>])] = &[
            (0, &[5..10, 20..25]),
            (5, &[5..10, 20..25]),
            (7, &[7..10, 20..25]),
            (10, &[20..25]),
            (22, &[22..25]),
            (25, &[]),
            (u64::MAX, &[]),
        ];
        for (v, expected) in cases {
            let mut s = RangeSet::new(8);
            s.insert(5..10);
            s.insert(20..25);
            s.remove_below(*v);
            assert_eq!(&ranges(&s), expected, "{v}");
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = RangeSet::new(4);
        assert!(!s.insert_one(u64::MAX));
        assert!(s.insert_one(u64::MAX - 1));
        assert_eq!(s.max(), Some(u64::MAX - 1));
        assert!(!s.contains(u64::MAX));
        assert!(s.insert(0..u64::MAX));
        assert_eq!(ranges(&s), [0..u64::MAX]);
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 10..5;
        assert!(!s.insert(inverted));
    }

    #[test]
    fn in_order_inserts_match_general_inserts() {
        // Mostly ascending values with gaps and some late ones, as packet numbers arrive:
        // `insert_one` (which extends the highest range directly) agrees with `insert` of
        // one-value ranges, under a bound small enough to drop ranges, and `contains` with the
        // ranges held.
        for seed in 0..8 {
            let mut rng = Rng::new(seed);
            let mut fast = RangeSet::new(4);
            let mut general = RangeSet::new(4);
            let mut next = 0u64;
            for step in 0..2000 {
                let v = if rng.chance(0.1) {
                    next.saturating_sub(rng.below(20))
                } else {
                    next += 1 + u64::from(rng.chance(0.05));
                    next - 1
                };
                let held = |s: &RangeSet, v: u64| s.iter().any(|r| r.contains(&v));
                assert_eq!(fast.contains(v), held(&fast, v), "seed {seed} step {step}");
                assert_eq!(
                    fast.insert_one(v),
                    general.insert(v..v + 1),
                    "seed {seed} step {step}"
                );
                assert_eq!(ranges(&fast), ranges(&general), "seed {seed} step {step}");
                let probe = next.saturating_sub(rng.below(30)) + rng.below(3);
                assert_eq!(fast.contains(probe), held(&fast, probe), "seed {seed}");
            }
        }
    }

    #[test]
    fn matches_a_btreeset_model() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let mut s = RangeSet::new(1000);
            let mut model = BTreeSet::new();
            for _ in 0..300 {
                let start = rng.below(200);
                let end = start + rng.below(8);
                match rng.below(4) {
                    0 => {
                        let new = (start..end).any(|v| !model.contains(&v));
                        assert_eq!(s.insert(start..end), new);
                        model.extend(start..end);
                    }
                    1 => {
                        let mut reported = Vec::new();
                        s.insert_with_new(start..end, |r| reported.extend(r));
                        let want: Vec<u64> = (start..end).filter(|v| !model.contains(v)).collect();
                        assert_eq!(reported, want);
                        model.extend(start..end);
                    }
                    2 => {
                        assert_eq!(s.insert_one(start), model.insert(start));
                    }
                    _ => {
                        if rng.chance(0.1) {
                            s.remove_below(start / 4);
                            model.retain(|v| *v >= start / 4);
                        }
                    }
                }
                let probe = rng.below(210);
                assert_eq!(s.contains(probe), model.contains(&probe), "{probe}");
                let flat: Vec<u64> = s.iter().flatten().collect();
                let want: Vec<u64> = model.iter().copied().collect();
                assert_eq!(flat, want, "seed {seed}");
                let rs = ranges(&s);
                assert!(rs.windows(2).all(|w| w[0].end < w[1].start));
                assert!(rs.iter().all(|r| !r.is_empty()));
                assert_eq!(s.min(), model.first().copied());
                assert_eq!(s.max(), model.last().copied());
            }
        }
    }
}

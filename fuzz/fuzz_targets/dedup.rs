//! Operation sequences on `DedupWindow`, checked against a model: the set of inserted ids at
//! or above the base, and the base (everything below it counts as seen).
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use surely::dedup::{DedupWindow, Rejection};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    /// `base + offset` (saturating): near the window, where the interesting cases are.
    Near(u16),
    /// Just below the base.
    Below(u8),
    /// Anywhere, including `u64::MAX`.
    Abs(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(Id),
    Remove(Id),
    Check(Id),
    Contains(Id),
    AdvanceContiguous,
    AdvanceTo(Id),
    Ranges,
}

#[derive(Arbitrary, Debug)]
struct Input {
    base: Id,
    capacity: u16,
    ops: Vec<Op>,
}

struct Model {
    base: u64,
    capacity: u64,
    set: BTreeSet<u64>,
}

impl Model {
    fn end(&self) -> u64 {
        self.base.saturating_add(self.capacity)
    }
    fn offset(&self, id: u64) -> Result<(), Rejection> {
        if id < self.base {
            Err(Rejection::TooOld)
        } else if id >= self.end() {
            Err(Rejection::BeyondWindow)
        } else {
            Ok(())
        }
    }
}

fn resolve(id: Id, base: u64) -> u64 {
    match id {
        Id::Near(o) => base.saturating_add(u64::from(o)),
        Id::Below(o) => base.saturating_sub(u64::from(o) + 1),
        Id::Abs(v) => v,
    }
}

fuzz_target!(|input: Input| {
    let base = resolve(input.base, 0);
    let mut w = DedupWindow::new(base, usize::from(input.capacity));
    let capacity = u64::from(input.capacity).max(1).div_ceil(64) * 64;
    assert_eq!(w.capacity() as u64, capacity);
    let mut m = Model {
        base,
        capacity,
        set: BTreeSet::new(),
    };
    for op in input.ops.iter().take(2048) {
        match *op {
            Op::Insert(id) => {
                let id = resolve(id, m.base);
                let want = m.offset(id).and_then(|()| {
                    if m.set.insert(id) {
                        Ok(())
                    } else {
                        Err(Rejection::Duplicate)
                    }
                });
                assert_eq!(w.insert(id), want, "insert {id}");
            }
            Op::Remove(id) => {
                let id = resolve(id, m.base);
                let want = m.offset(id).is_ok() && m.set.remove(&id);
                assert_eq!(w.remove(id), want, "remove {id}");
            }
            Op::Check(id) => {
                let id = resolve(id, m.base);
                let want = m.offset(id).and_then(|()| {
                    if m.set.contains(&id) {
                        Err(Rejection::Duplicate)
                    } else {
                        Ok(())
                    }
                });
                assert_eq!(w.check(id), want, "check {id}");
            }
            Op::Contains(id) => {
                let id = resolve(id, m.base);
                let want = match m.offset(id) {
                    Ok(()) => m.set.contains(&id),
                    Err(Rejection::TooOld) => true,
                    Err(_) => false,
                };
                assert_eq!(w.contains(id), want, "contains {id}");
            }
            Op::AdvanceContiguous => {
                while m.set.remove(&m.base) {
                    m.base += 1;
                }
                assert_eq!(w.advance_contiguous(), m.base);
            }
            Op::AdvanceTo(id) => {
                let to = resolve(id, m.base);
                let gaps = if to <= m.base {
                    0
                } else {
                    let passed = m.set.range(..to).count() as u64;
                    m.set = m.set.split_off(&to);
                    let gaps = to - m.base - passed;
                    m.base = to;
                    gaps
                };
                assert_eq!(w.advance_to(to), gaps, "advance_to {to}");
            }
            Op::Ranges => {
                let mut want: Vec<std::ops::Range<u64>> = Vec::new();
                for &id in &m.set {
                    match want.last_mut() {
                        Some(r) if r.end == id => r.end += 1,
                        _ => want.push(id..id + 1),
                    }
                }
                assert_eq!(w.set_ranges().collect::<Vec<_>>(), want);
            }
        }
        assert_eq!(w.base(), m.base);
        assert_eq!(w.end(), m.end());
        assert_eq!(w.count_set(), m.set.len());
    }
});

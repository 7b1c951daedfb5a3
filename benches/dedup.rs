//! The receiver's dedup window (`DedupWindow`, capacity 4,096 like the default `window`):
//! insert and check of ids arriving in order, reordered within the window, and duplicates.
//!
//! "insert" is what the receiver does when a reliable message completes: `insert` then
//! `advance_contiguous` (the cumulative point moves as the front fills). Each iteration handles
//! 4,096 ids; throughput is in ids per second.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use surely::Rng;
use surely::dedup::DedupWindow;

const CAPACITY: usize = 4096;
/// Ids per iteration.
const BATCH: u64 = 4096;
/// Reordering: ids are shuffled within blocks of this many (well inside the window).
const SHUFFLE_BLOCK: usize = 256;

/// Offsets `0..BATCH`, shuffled within blocks of `SHUFFLE_BLOCK` (Fisher-Yates, seeded).
fn reordered_offsets() -> Vec<u64> {
    let mut rng = Rng::new(7);
    let mut v: Vec<u64> = (0..BATCH).collect();
    for block in v.chunks_mut(SHUFFLE_BLOCK) {
        for i in (1..block.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            block.swap(i, j);
        }
    }
    v
}

fn bench_dedup(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(BATCH));

    let in_order: Vec<u64> = (0..BATCH).collect();
    let reordered = reordered_offsets();
    for (name, offsets) in [("in_order", &in_order), ("reordered", &reordered)] {
        // Insert and advance: the window slides by BATCH ids per iteration.
        g.bench_function(BenchmarkId::new("insert", name), |b| {
            let mut w = DedupWindow::new(0, CAPACITY);
            let mut base = 0u64;
            b.iter(|| {
                for &o in offsets {
                    let id = base + o;
                    let _ = black_box(w.insert(black_box(id)));
                    w.advance_contiguous();
                }
                base += BATCH;
                assert_eq!(w.base(), base);
            })
        });
        // Check of fresh ids: the window is empty.
        g.bench_function(BenchmarkId::new("check", name), |b| {
            let w = DedupWindow::new(0, CAPACITY);
            b.iter(|| {
                let mut fresh = 0u32;
                for &o in offsets {
                    fresh += u32::from(w.check(black_box(o)).is_ok());
                }
                assert_eq!(fresh, BATCH as u32);
            })
        });
    }

    // Duplicates: every id in the window but the first is already set (the first missing
    // keeps the base from moving), and each arrives again.
    let mut full = DedupWindow::new(0, CAPACITY);
    for id in 1..CAPACITY as u64 {
        full.insert(id).unwrap();
    }
    let dups: Vec<u64> = reordered.iter().map(|&o| o.max(1)).collect();
    g.bench_function(BenchmarkId::new("insert", "duplicates"), |b| {
        b.iter(|| {
            let mut rejected = 0u32;
            for &id in &dups {
                rejected += u32::from(full.insert(black_box(id)).is_err());
            }
            assert_eq!(rejected, BATCH as u32);
        })
    });
    g.bench_function(BenchmarkId::new("check", "duplicates"), |b| {
        b.iter(|| {
            let mut rejected = 0u32;
            for &id in &dups {
                rejected += u32::from(full.check(black_box(id)).is_err());
            }
            assert_eq!(rejected, BATCH as u32);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_dedup);
criterion_main!(benches);

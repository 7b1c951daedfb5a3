//! The invariant suite: many seeds, each with faults drawn from it (loss, bursts, duplication,
//! reordering, corruption, delay, partitions and blackouts longer than the deadline), a mixed
//! workload (all three guarantees, ordered and unordered channels, fragmented messages,
//! acknowledge-on-receipt and after-processing with rejections), and a history checker.
//!
//! Reproduce one seed: `SURELY_SEED=N cargo test --test invariants`.

mod common;

use common::{Workload, run_seed};
use surely::sim::for_each_seed;

fn run_many(seeds: std::ops::Range<u64>, workload: &Workload) -> (u64, u64, u64) {
    let totals = std::sync::Mutex::new((0u64, 0u64, 0u64));
    for_each_seed("SURELY_SEED", seeds, |seed| {
        match run_seed(seed, workload, true) {
            Ok(s) => {
                let mut t = totals.lock().unwrap();
                t.0 += s.sent;
                t.1 += s.delivered;
                t.2 += s.undeliverable;
            }
            Err(errors) => panic!("seed {seed} broke an invariant:\n{}", errors.join("\n")),
        }
    });
    totals.into_inner().unwrap()
}

#[test]
fn guarantees_hold_under_faults_1000_seeds() {
    let (sent, delivered, undeliverable) = run_many(0..1000, &Workload::default());
    eprintln!("1000 seeds: {sent} messages, {delivered} delivered, {undeliverable} undeliverable");
    // Every message has exactly one outcome (checked per seed); most get through.
    assert_eq!(sent, delivered + undeliverable);
    assert!(delivered > sent / 2, "{delivered} of {sent} delivered");
}

#[test]
fn lossless_network_delivers_everything() {
    for seed in 0..50 {
        let s = run_seed(seed, &Workload::default(), false)
            .unwrap_or_else(|e| panic!("seed {seed}: {}", e.join("\n")));
        assert_eq!(s.undeliverable, 0, "seed {seed}: {s:?}");
        assert_eq!(s.gaps, 0, "seed {seed}");
    }
}

#[test]
#[ignore = "soak: 100,000 seeds, run with --ignored --release"]
fn soak_100k_seeds() {
    run_many(0..100_000, &Workload::default());
}

//! A deterministic network simulator, for testing code built on this crate (and the crate
//! itself) under loss, duplication, reordering, corruption, limited bandwidth and outages.
//!
//! # What it models
//!
//! A [`Network`] connects numbered nodes ([`NodeId`]). Each *direction* between two nodes is a
//! link with its own [`LinkConfig`]: a bottleneck queue (bandwidth and tail drop), uniform and
//! bursty ([`BurstLoss`], Gilbert-Elliott) loss, duplication, corruption, then a one-way delay
//! with jitter and optional reordering. On top of the links, [`Network::partition`] cuts two
//! nodes apart and [`Network::blackout`] silences everyone for a window of time, and
//! [`Network::heal_at`] ends all faults from a given time on (for liveness checks). Datagrams
//! are opaque bytes: the simulator knows nothing about the protocol.
//!
//! It follows the sans-IO shape of the protocol itself. Nothing reads the clock: time is
//! virtual, passed in as `now`, and the network says when it next has something to deliver
//! ([`Network::next_delivery`]), like a connection's next timer. A driver loop advances
//! virtual time to the earliest deadline of the network and the endpoints, hands deliveries to
//! their receivers and sends what they produce.
//!
//! # Determinism
//!
//! Every random choice comes from [`crate::rng::Rng`], seeded from the network's seed and the
//! link, and is drawn when the datagram is sent. The same seed, configuration and sequence of
//! calls give the same deliveries, bytes and times, on every machine. Deliveries due at the
//! same instant come out in the order they were sent.
//!
//! # Reproducing a seed
//!
//! Suites run a closure over many seeds with [`for_each_seed`]. When one panics, the seed is
//! printed to stderr, for example
//!
//! ```text
//! sim: failing seed = 1234 (rerun with SURELY_SEED=1234)
//! ```
//!
//! and setting that variable runs only that seed, e.g.
//! `SURELY_SEED=1234 cargo test --features sim my_test` (decimal or `0x`-prefixed hex).
//! [`seed_from_env`] reads such a variable for single-seed tests. [`FaultPlan::draw`] turns a
//! seed into a reproducible set of faults.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use surely::sim::{LinkConfig, Network};
//!
//! let start = Instant::now(); // the origin of virtual time; only offsets matter
//! let mut net = Network::new(7);
//! net.set_links(0, 1, LinkConfig::perfect(Duration::from_millis(20)).loss(0.1));
//!
//! let mut now = start;
//! for i in 0..100u8 {
//!     net.send(now, 0, 1, &[i]);
//!     now += Duration::from_millis(1);
//! }
//! let mut received = 0;
//! while let Some(at) = net.next_delivery() {
//!     now = now.max(at);
//!     while let Some(d) = net.poll_delivery(now) {
//!         assert_eq!((d.from, d.to), (0, 1));
//!         received += 1;
//!     }
//! }
//! assert_eq!(received + net.stats().lost, 100);
//! ```

mod fault;
mod link;
mod network;
mod pair;

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};

pub use fault::FaultPlan;
pub use link::{BurstLoss, LinkConfig};
pub use network::{Delivery, NetStats, Network, NodeId};
pub use pair::{NODE_A, NODE_B, Pair};

/// Reads a seed from the environment variable `var`: decimal or `0x`-prefixed hexadecimal
/// (underscores allowed). Returns `default` if the variable is unset or empty.
///
/// # Panics
///
/// If the variable is set but is not a valid seed: a typo should not silently run another
/// seed.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    seed_override(var).unwrap_or(default)
}

/// Runs `f(seed)` for each seed in `seeds`, or, if the environment variable `var` is set, for
/// that seed only (see [`seed_from_env`]).
///
/// If `f` panics, prints `sim: failing seed = N (rerun with VAR=N)` to stderr and re-raises
/// the panic, so the test fails as usual with the seed in its output.
///
/// ```
/// use surely::sim::{for_each_seed, Network};
///
/// for_each_seed("MY_SUITE_SEED", 0..100, |seed| {
///     let net = Network::new(seed);
///     assert_eq!(net.in_flight(), 0);
/// });
/// ```
pub fn for_each_seed(var: &str, seeds: Range<u64>, f: impl Fn(u64)) {
    if let Some(seed) = seed_override(var) {
        eprintln!("sim: {var} is set: running seed {seed} only");
        run_seed(var, seed, &f);
        return;
    }
    for seed in seeds {
        run_seed(var, seed, &f);
    }
}

/// Runs one seed, naming it on stderr if it panics.
fn run_seed(var: &str, seed: u64, f: &impl Fn(u64)) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(seed))) {
        eprintln!("{}", failure_message(var, seed));
        panic::resume_unwind(payload);
    }
}

fn failure_message(var: &str, seed: u64) -> String {
    format!("sim: failing seed = {seed} (rerun with {var}={seed})")
}

/// The seed in `var`, if it is set and not empty.
fn seed_override(var: &str) -> Option<u64> {
    let value = match std::env::var(var) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return None,
        Err(std::env::VarError::NotUnicode(value)) => panic!("{var}={value:?} is not a seed"),
    };
    if value.trim().is_empty() {
        return None;
    }
    match parse_seed(&value) {
        Some(seed) => Some(seed),
        None => panic!("{var}={value:?} is not a seed: expected decimal or 0x-prefixed hex"),
    }
}

/// Parses decimal or `0x`-prefixed hexadecimal, ignoring surrounding space and underscores.
fn parse_seed(text: &str) -> Option<u64> {
    let digits: String = text.trim().chars().filter(|c| *c != '_').collect();
    match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// No test sets this variable.
    const UNSET: &str = "SURELY_SIM_TEST_UNSET_SEED_VAR";

    #[test]
    fn parses_decimal_and_hex_seeds() {
        assert_eq!(parse_seed("1234"), Some(1234));
        assert_eq!(parse_seed(" 0x2A\n"), Some(42));
        assert_eq!(parse_seed("0Xff"), Some(255));
        assert_eq!(parse_seed("1_000"), Some(1000));
        assert_eq!(parse_seed("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seed("0xffff_ffff_ffff_ffff"), Some(u64::MAX));
        assert_eq!(parse_seed("-1"), None);
        assert_eq!(parse_seed("0x"), None);
        assert_eq!(parse_seed("12a"), None);
        assert_eq!(parse_seed("18446744073709551616"), None);
    }

    #[test]
    fn seed_from_env_defaults_when_unset() {
        assert_eq!(seed_from_env(UNSET, 99), 99);
        // PATH is always set, and never a number.
        let bad = panic::catch_unwind(|| seed_from_env("PATH", 1));
        assert!(bad.is_err());
    }

    #[test]
    fn for_each_seed_runs_every_seed() {
        let seen = RefCell::new(Vec::new());
        for_each_seed(UNSET, 3..7, |seed| seen.borrow_mut().push(seed));
        assert_eq!(*seen.borrow(), [3, 4, 5, 6]);
    }

    #[test]
    fn for_each_seed_reraises_and_names_the_seed() {
        let seen = RefCell::new(Vec::new());
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            for_each_seed(UNSET, 0..100, |seed| {
                seen.borrow_mut().push(seed);
                assert_ne!(seed, 5, "boom");
            });
        }));
        let payload = result.expect_err("the panic must propagate");
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        assert!(message.contains("boom"), "{message}");
        assert_eq!(*seen.borrow(), [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            failure_message("SURELY_SEED", 5),
            "sim: failing seed = 5 (rerun with SURELY_SEED=5)"
        );
    }

    /// Set only in the child process of `failing_seed_is_printed_and_rerun_alone`.
    const CHILD_VAR: &str = "SURELY_SIM_TEST_CHILD_SEED";

    /// Fails on seed 7, which only runs when `CHILD_VAR` selects it; passes otherwise.
    #[test]
    #[ignore = "run as a child process by failing_seed_is_printed_and_rerun_alone"]
    fn failing_seed_child() {
        for_each_seed(CHILD_VAR, 0..3, |seed| assert_ne!(seed, 7));
    }

    #[test]
    fn failing_seed_is_printed_and_rerun_alone() {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let output = std::process::Command::new(exe)
            .args(["sim::tests::failing_seed_child", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, "0x7")
            .output()
            .expect("the test binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("{CHILD_VAR} is set: running seed 7 only")));
        assert!(
            stderr.contains(&format!("sim: failing seed = 7 (rerun with {CHILD_VAR}=7)")),
            "{stderr}"
        );
    }
}

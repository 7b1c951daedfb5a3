//! An established connection (and its honest peer) driven by a sequence of operations:
//! arbitrary or mutated datagrams, timer advances, sends of every guarantee, acks, rejects
//! and closes. See `surely_fuzz::checks::op` for the input format and the checks.
#![no_main]
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    surely_fuzz::checks::ConnHarness::run(data, start());
});

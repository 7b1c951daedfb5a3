//! Arbitrary bytes into `wire::open`, `validate` and `frames`: never panics, and whatever
//! validates re-encodes to a datagram that parses to equal frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    surely_fuzz::checks::check_decode(data);
});

//! Shared code of the fuzz targets. [`checks`] is also compiled into the main crate's
//! `tests/fuzz_corpus.rs`, which replays the committed corpus on stable.

pub mod checks;

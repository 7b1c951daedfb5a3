//! Replays the committed fuzz corpus and the saved crash reproducers through the checks of the
//! `decode` and `connection` fuzz targets, on stable and without libFuzzer, so that plain
//! `cargo test` guards every build. The checks are the fuzz crate's own code
//! (`fuzz/src/checks.rs`), included here by path.
//!
//! `cfg(fuzzing)` is off here, so the CRC is checked: the corpus holds real (sealed) datagrams,
//! and the connection harness re-seals what it injects.
#![allow(clippy::disallowed_methods)] // a base instant for virtual time; only offsets matter

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every file in `fuzz/<dir>`, sorted (none if the directory does not exist).
fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs `check` on every file, then fails naming every file that panicked.
fn replay(corpus: &str, regressions: &str, check: impl Fn(&[u8])) {
    let corpus_files = files(corpus);
    assert!(
        !corpus_files.is_empty(),
        "fuzz/{corpus} is empty or missing"
    );
    let mut failed = Vec::new();
    for path in corpus_files.iter().chain(&files(regressions)) {
        let data = std::fs::read(path).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz inputs that fail their checks: {failed:#?}"
    );
}

#[test]
fn decode_corpus_and_regressions() {
    replay("corpus/decode", "regressions/decode", checks::check_decode);
}

#[test]
fn connection_corpus_and_regressions() {
    let start = Instant::now();
    replay("corpus/connection", "regressions/connection", |data| {
        checks::ConnHarness::run(data, start)
    });
}

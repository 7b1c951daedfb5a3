#!/usr/bin/env bash
# Smoke-runs every fuzz target for N seconds (default 30) on the committed corpus, after
# replaying the saved crash reproducers (fuzz/regressions/<target>/). Exits non-zero on a
# crash. Needs the nightly toolchain; installs cargo-fuzz if it is missing.
#
#   fuzz/smoke.sh [seconds]
#
# New inputs found during the run go to a temporary directory, never into fuzz/corpus/, so the
# committed corpus only changes on purpose. Crash artifacts land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One build of every target up front, so the timed runs below are only fuzzing.
cargo +nightly fuzz build

status=0
for target in $(cargo +nightly fuzz list); do
    dirs=("$work/$target")
    mkdir -p "$work/$target"
    [ -d "corpus/$target" ] && dirs+=("corpus/$target")
    [ -d "regressions/$target" ] && dirs+=("regressions/$target")
    echo "==> fuzz $target for ${secs}s"
    if ! cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$work/$target.log" 2>&1; then
        echo "FAILED: $target (log below; reproducer in fuzz/artifacts/$target/)"
        tail -n 80 "$work/$target.log"
        status=1
    else
        grep -E '^(Done|stat::number_of_executed_units|#[0-9]+ *DONE)' "$work/$target.log" || true
    fi
done
exit "$status"

#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer) of every decoder of untrusted
# bytes: `scripts/fuzz.sh [SECONDS]` runs each target in fuzz/ for SECONDS (default 10), starting
# from its kept corpus in fuzz/corpus/<target>/. What it learns goes to fuzz/target/corpus/
# (ignored by git); a crash fails the run and leaves its input in fuzz/artifacts/<target>/, to be
# fixed and then added to the corpus. An input that makes a target use over 2 GB counts as a
# crash, so a hostile file cannot exhaust memory unnoticed.
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`; .ci/run installs both); without them it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
EACH=${1:-10}
if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: skipped: needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)"
    exit 0
fi
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
    work=fuzz/target/corpus/$target
    mkdir -p "$work"
    echo "fuzz: $target for ${EACH}s"
    cargo +nightly fuzz run -O "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$EACH" -max_len=16384 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
        grep -E "^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|Done)|panicked|ERROR" || true
    # The pipeline above hides libFuzzer's exit status: a crash leaves an artifact instead.
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done

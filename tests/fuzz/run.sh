#!/usr/bin/env bash
# Fuzzes every target in tests/fuzz for a while: builds them once with
# nightly and cargo-fuzz, then runs each for SECONDS (default 10) from its
# seed corpus. Prints each target's executions; exits non-zero if any target
# found a crash (the input is kept in tests/fuzz/artifacts/<target>/).
#
#   tests/fuzz/run.sh [seconds-per-target] [target...]
#
# Skips, and says so, when no nightly toolchain is installed. Installs
# cargo-fuzz (from crates.io, --locked) when it is missing. New corpus
# entries go to a temporary directory, so the committed seeds stay small.
# The fuzz target directory is deleted at the end (CI's disk is tight) unless
# VMAIL_FUZZ_KEEP_TARGET=1. VMAIL_FUZZ_BUILD=dev builds without optimisation
# (what .ci/run does: the build, not the few seconds of fuzzing, dominates a
# short run); the default, release, is for long campaigns.
#
# Built with `--sanitizer none`: our crates forbid unsafe code, so AddressSanitizer
# would mostly instrument dependencies' code at twice the build time, binary
# size and run time; panics, overflow checks (`-a`) and libFuzzer's own
# out-of-memory and timeout limits are what the targets check.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$PWD
secs=${1:-10}
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "no nightly toolchain: skipping the fuzz targets (rustup toolchain install nightly to run them)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it from crates.io"
    cargo +nightly install cargo-fuzz --locked
fi
if [[ ${VMAIL_FUZZ_KEEP_TARGET:-0} != 1 ]]; then
    trap 'rm -rf "$fuzz_dir/target"' EXIT
fi

case ${VMAIL_FUZZ_BUILD:-release} in
    release) mode=-O profile=release ;;
    dev) mode=--dev profile=debug ;;
    *) echo "VMAIL_FUZZ_BUILD must be release or dev, not ${VMAIL_FUZZ_BUILD}" >&2; exit 2 ;;
esac
flags=(--fuzz-dir "$fuzz_dir" --target-dir "$fuzz_dir/target" "$mode" --debug-assertions --sanitizer none)
start=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz targets built in $((SECONDS - start)) s"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
fi
# The binaries are run directly: `cargo fuzz run` would check the whole
# build again before each target, which costs more than a short run.
bin_dir="$fuzz_dir/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/$profile"
failed=()
for t in "${targets[@]}"; do
    scratch=$(mktemp -d)
    log=$(mktemp)
    mkdir -p "artifacts/$t"
    if "$bin_dir/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        "$scratch" "corpus/$t" >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "$t: ${execs:-?} executions in ${secs} s, no crash"
    else
        echo "$t: CRASHED; the input is in tests/fuzz/artifacts/$t/. The log's end:"
        tail -n 40 "$log"
        failed+=("$t")
    fi
    rm -rf "$scratch" "$log"
done
echo "fuzzing took $((SECONDS - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi

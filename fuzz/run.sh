#!/usr/bin/env bash
# Runs every cargo-fuzz target of this project for SECONDS each, one after the other:
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Needs a nightly toolchain (libFuzzer's instrumentation is nightly-only): without one it says
# so and exits 0. Installs cargo-fuzz (pinned) when it is missing. Builds the targets once, then
# runs each with its corpus in fuzz/corpus/TARGET (created as needed, kept between runs) seeded
# from fuzz/seeds/TARGET. Exits 1 when any target found a crash (a panic, an abort, a timeout or
# running out of memory), after printing where the input is and how to keep it as a test.
#
# Environment: FUZZ_TARGET_DIR (where the instrumented build goes; default fuzz/target),
# FUZZ_SANITIZER (default none: safe Rust, twice the speed of address), FUZZ_JOBS (codegen units,
# default 16). A libFuzzer dictionary fuzz/dicts/TARGET.dict is used when there is one.
set -euo pipefail

usage() {
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
secs=$1
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

CARGO_FUZZ_VERSION=0.13.2
skip() {
    echo "fuzz: skipped: $1"
    exit 0
}
command -v cargo > /dev/null || skip "no cargo on PATH"
if command -v rustup > /dev/null; then
    rustup toolchain list 2> /dev/null | grep -q '^nightly' ||
        skip "no nightly toolchain; install one with rustup toolchain install nightly"
fi
cargo +nightly --version > /dev/null 2>&1 ||
    skip "no nightly toolchain; install one with rustup toolchain install nightly"
echo "fuzz: $(cargo +nightly --version)"

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
echo "fuzz: $(cargo fuzz --version)"

mapfile -t all < <(cargo fuzz list)
if [[ $# -gt 0 ]]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        printf '%s\n' "${all[@]}" | grep -qx -- "$t" || {
            echo "fuzz: no target $t (targets: ${all[*]})" >&2
            exit 2
        }
    done
else
    targets=("${all[@]}")
fi

# 16 codegen units: the first build is a minute shorter on two cores, runs hardly slower.
build=(--sanitizer "${FUZZ_SANITIZER:-none}" --target-dir "${FUZZ_TARGET_DIR:-$here/target}"
    --codegen-units "${FUZZ_JOBS:-16}")

logs=$here/target/logs
mkdir -p "$logs"
started=$(date +%s)
echo "fuzz: building the targets (the first build takes minutes)"
if ! cargo +nightly fuzz build "${build[@]}" > "$logs/build.log" 2>&1; then
    tail -n 40 "$logs/build.log" >&2
    echo "fuzz: the build failed (log: $logs/build.log)" >&2
    exit 1
fi
echo "fuzz: built in $(($(date +%s) - started)) s"

passed=0
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    marker=$(mktemp)
    log=$logs/$t.log
    args=(-max_total_time="$secs" -rss_limit_mb=2048 -max_len=16384 -timeout=10 -print_final_stats=1)
    [[ -f dicts/$t.dict ]] && args+=(-dict="dicts/$t.dict")
    # Seeds are read, never written: new inputs go to corpus/$t.
    set +e
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" > "$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    size=$(find "corpus/$t" -type f | wc -l)
    found=$(find "artifacts/$t" -type f -newer "$marker" 2> /dev/null | sort)
    rm -f "$marker"
    if [[ $rc -eq 0 && -z $found ]]; then
        passed=$((passed + 1))
        echo "fuzz: $t: ${execs:-?} runs in ${secs} s (${rate:-?}/s), corpus $size, no crash"
    else
        failed+=("$t")
        echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} runs (log: $log):"
        # the panic (or libFuzzer's reason: timeout, out of memory) and the input's bytes
        grep -E -A2 'panicked at|^==[0-9]+== ERROR|^SUMMARY|Output of `std::fmt::Debug`' "$log" |
            grep -v '^--$' | head -n 20 | sed 's/^/    /'
        for a in $found; do
            echo "fuzz: $t: crash input: $here/$a"
            echo "fuzz: replay it with: cargo +nightly fuzz run ${build[*]} $t $here/$a"
        done
        echo "fuzz: fix the panic, then keep the input as a test in tests/fuzz_regressions.rs"
        echo "      (its bytes fed to the same chatapp_kommo_sync::fuzzing function as fuzz_targets/$t.rs)"
    fi
done
echo "fuzz: done in $(($(date +%s) - started)) s"
echo "fuzz: ${passed} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]

#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60) and print what each did.
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
#   RUNS=10000000 ./scripts/fuzz.sh 0        each target for that many inputs instead
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); the stable toolchain builds it with
# RUSTC_BOOTSTRAP=1. Each target starts from its committed seeds (fuzz/seeds/TARGET) plus the
# corpus earlier runs grew (fuzz/corpus/TARGET, not committed). A crash leaves its input in
# fuzz/artifacts/TARGET and makes this script fail; turn it into a regression test.
# Not part of .ci/run: see docs/fuzzing.md for the long run and its figures.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^lair-fuzz$')
fi
command -v cargo-fuzz >/dev/null || {
    echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
}
export RUSTC_BOOTSTRAP=1
cargo fuzz build >/dev/null 2>&1 || cargo fuzz build
failed=0
printf '| target | seconds | executions | per second | corpus | crashes |\n|---|---:|---:|---:|---:|---:|\n'
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$(mktemp)"
    before=$(find "artifacts/$t" -type f | wc -l)
    # -rss_limit_mb: the conn target keeps a site and a file cache; 2 GiB is plenty.
    if [ -n "${RUNS:-}" ]; then limit=(-runs="$RUNS"); else limit=(-max_total_time="$secs"); fi
    start=$SECONDS
    if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        "${limit[@]}" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
        failed=1
    fi
    took=$((SECONDS - start))
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$corpus" "$((after - before))"
    if [ "$after" -gt "$before" ] || [ -z "$execs" ]; then
        failed=1
        echo "fuzz.sh: $t failed; its log:" >&2
        tail -40 "$log" >&2
    fi
    rm -f "$log"
done
exit "$failed"

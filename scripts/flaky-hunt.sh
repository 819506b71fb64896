#!/usr/bin/env bash
# The README's test command RUNS times (default 10), each in a fresh clone of this repository's
# HEAD, sharing one target directory; prints a line per run (exit code, seconds, the first
# failures). Start a CPU hog beside it (e.g. ./scripts/fuzz.sh on both CPUs) to find the tests
# that fail only under load: CI runs on a shared 2-core machine.
#   ./scripts/flaky-hunt.sh [RUNS]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-10}"
src="$(mktemp -d)"
target="${CARGO_TARGET_DIR:-$(mktemp -d)}"
trap 'cd /; rm -rf "$src"' EXIT
for i in $(seq "$runs"); do
    cd /
    rm -rf "$src/clone"
    git clone -q "$repo" "$src/clone"
    cd "$src/clone"
    start=$SECONDS
    CARGO_TARGET_DIR="$target" ./scripts/test.sh >"$src/run.log" 2>&1
    rc=$?
    echo "run $i: rc=$rc $((SECONDS - start))s $(grep -E '^test .* FAILED|panicked at' "$src/run.log" | head -3 | tr '\n' ' ')"
done

#!/usr/bin/env bash
# A/B of --notsent-lowat on downloads: lair with the mark (128k) and without (0), alternating,
# server on CPU 1, `lair load` on CPU 0, 1 MiB and 1 KiB files, 10 and 100 connections, 4 s
# each, REPS repetitions (default 3). Prints one line per run:
#   rep lowat file connections req/s MB/s errors p99_us
#   ./scripts/bench-lowat.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
cargo build --release -q -p lair
bin=target/release/lair
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c 1024 /dev/urandom | base64 > "$work/index.html"
head -c $((1 << 20)) /dev/urandom > "$work/big.bin"
for rep in $(seq "$reps"); do
    for lw in 0 128k; do
        for f in big.bin index.html; do
            for c in 10 100; do
                taskset -c 1 "$bin" serve --listen 127.0.0.1:18195 --workers 1 \
                    --notsent-lowat "$lw" "$work" >/dev/null 2>&1 &
                pid=$!
                sleep 0.3
                r=$("$bin" load "http://127.0.0.1:18195/$f" -c "$c" -d 4s --pin 0 --json -q |
                    python3 -c "import json,sys; d=json.load(sys.stdin); print(d['requests_per_s'], round(d['mb_per_s']), sum(d['errors'].values()), d['latency']['p99_us'])")
                kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
                echo "$rep $lw $f $c $r"
            done
        done
    done
done

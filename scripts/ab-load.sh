#!/usr/bin/env bash
# A/B two lair binaries on one small-file load, interleaved: A B A B …, so that both see the
# same machine weather. Each run starts the binary's server fresh (one worker, CPU 1), sends
# REQUESTS requests for a 1 KiB file over CONNS keep-alive connections from `lair load` on
# CPU 0, and reads the server's CPU time from /proc before it stops, user space apart (the
# kernel's TCP path is most of a small request; what lair's own code costs is the user part).
# Prints one line per run and the medians of the per-pair ratios B/A.
#
#   ./scripts/ab-load.sh OLD_BINARY NEW_BINARY [PAIRS]      (REQUESTS=200000 CONNS=100)
set -euo pipefail
a=$1 b=$2 pairs=${3:-9}
requests=${REQUESTS:-200000} conns=${CONNS:-100}
load=$(dirname "$0")/../target/release/lair
[ -x "$load" ] || { echo "ab-load.sh: build first: cargo build --release -p lair" >&2; exit 2; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
head -c 1024 /dev/urandom >"$root/1k.bin"
tick=$(getconf CLK_TCK)

run() { # binary → "req/s server-cpu-µs-per-request user-µs-per-request"
    local port=$((20000 + RANDOM % 20000))
    taskset -c 1 "$1" serve "$root" --listen 127.0.0.1:$port --workers 1 2>/dev/null &
    local pid=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    local rps
    rps=$(taskset -c 0 "$load" load "http://127.0.0.1:$port/1k.bin" -c "$conns" -n "$requests" --json -q |
        python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["errors"]["status"]+r["errors"]["reset"]==0; print(round(r["requests_per_s"]))')
    local cpu
    cpu=$(awk -v t="$tick" -v n="$requests" '{print int(($14+$15)/t*1e6/n*100)/100, int($14/t*1e6/n*100)/100}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$rps $cpu"
}

ratios=()
printf '%-5s %10s %10s %13s %13s %13s %13s\n' pair "A req/s" "B req/s" "A cpu µs/req" "B cpu µs/req" \
    "A user µs" "B user µs"
for i in $(seq "$pairs"); do
    read -r ra ca ua < <(run "$a")
    read -r rb cb ub < <(run "$b")
    printf '%-5s %10s %10s %13s %13s %13s %13s\n' "$i" "$ra" "$rb" "$ca" "$cb" "$ua" "$ub"
    ratios+=("$ra,$rb,$ca,$cb,$ua,$ub")
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
rows = [[float(x) for x in r.split(",")] for r in sys.argv[1:]]
for name, i in (("req/s", 0), ("cpu µs/req", 2), ("user µs/req", 4)):
    r = sorted(b / a for a, b in ((row[i], row[i + 1]) for row in rows) if a > 0)
    print(f"B/A {name}: median {statistics.median(r):.3f}, min {r[0]:.3f}, max {r[-1]:.3f} over {len(r)} pairs")
PY

#!/usr/bin/env bash
# Instructions and simulated cache misses per request of a lair server, from cachegrind.
#
# Machines here have no hardware counters; cachegrind counts every instruction and simulates
# the caches exactly, so a change of a few instructions per request shows (timing cannot).
# The server (a `--features valgrind` build: `cargo build --release --features valgrind
# --target-dir target/valgrind`) runs under cachegrind twice, for N1 and for N2 requests
# (`lair load`, 1 KiB file, CONNS keep-alive connections); the difference of the totals over
# N2 - N1 is the cost of one request without start-up and shutdown.
#
#   scripts/cachegrind-requests.sh [LAIR_VALGRIND_BINARY] [-- serve flags…]
#   N1=2000 N2=22000 CONNS=100 SIZE=1k LL=512K scripts/cachegrind-requests.sh
#
# LL is the simulated last-level cache: this machine's L2 (512 KiB, 8-way) by default; LL=llc
# simulates the 32 MiB L3 instead (both read from sysfs); I1 likewise. Prints one table of events per
# request (Ir, I1 and LL instruction misses, data reads/writes and their D1 and LL misses).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/valgrind/release/lair}
[ $# -gt 0 ] && shift
[ "${1:-}" = -- ] && shift
n1=${N1:-2000} n2=${N2:-22000} conns=${CONNS:-100} size=${SIZE:-1k}
command -v valgrind >/dev/null || { echo "cachegrind-requests: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] || { echo "cachegrind-requests: $bin: build it: cargo build --release --features valgrind --target-dir target/valgrind" >&2; exit 2; }
load=target/release/lair
[ -x "$load" ] || cargo build --release -q -p lair

# The simulated caches from sysfs: "size,ways,line" of the first data-or-unified cache at a level.
cache_of() {
  local level=$1 d
  for d in /sys/devices/system/cpu/cpu0/cache/index*; do
    [ "$(cat "$d/level")" = "$level" ] || continue
    [ "$(cat "$d/type")" = Instruction ] && continue
    local kib
    kib=$(sed 's/K$//' "$d/size")
    echo "$((kib * 1024)),$(cat "$d/ways_of_associativity"),$(cat "$d/coherency_line_size")"
    return
  done
}
case ${LL:-512K} in
  llc) ll=$(cache_of 3) ;;
  *) ll=$(cache_of 2) ;;
esac
d1=$(cache_of 1)
# The instruction cache: this machine's (as the data cache), or I1=SIZE,WAYS,LINE to see how
# far the code a request runs is from fitting.
i1=${I1:-$d1}

work=$(mktemp -d /tmp/lair-cg.XXXXXX)
server=
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "cachegrind-requests: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM
mkdir "$work/root"
head -c "$(numfmt --from=iec "${size^^}")" /dev/urandom >"$work/root/file.bin"

# One server under cachegrind for $1 requests; prints its totals line ("Ir I1mr …").
measure() {
  # A port below the ephemeral range (32768-): a probe of one nobody listens on yet can then
  # never connect to itself.
  local n=$1 port=$((20000 + RANDOM % 12000))
  shift
  taskset -c 1 valgrind --tool=cachegrind --cache-sim=yes --I1="$i1" --D1="$d1" --LL="$ll" \
    --cachegrind-out-file="$work/cg.$n" "$bin" serve "$work/root" --listen "127.0.0.1:$port" \
    --workers 1 "$@" >"$work/log.$n" 2>&1 &
  server=$!
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  kill -0 "$server" 2>/dev/null || { cat "$work/log.$n" >&2; exit 1; }
  taskset -c 0 timeout 600 "$load" load "http://127.0.0.1:$port/file.bin" -c "$conns" -n "$n" --json -q |
    python3 -c 'import json,sys; r=json.load(sys.stdin); e=sum(r["errors"].values()); sys.exit(f"cachegrind-requests: {e} errors" if e else 0)'
  kill -TERM "$server"
  wait "$server" 2>/dev/null || true
  server=
  awk '/^events:/ {sub(/^events: /, ""); print > "/dev/stderr"} /^summary:/ {sub(/^summary: /, ""); print}' \
    "$work/cg.$n" 2>"$work/events"
}
a=$(measure "$n1" "$@")
b=$(measure "$n2" "$@")
python3 - "$(cat "$work/events")" "$a" "$b" "$((n2 - n1))" "$i1" "$d1" "$ll" "$bin" <<'PY'
import sys
events, a, b, n, i1, d1, ll, binary = sys.argv[1:]
names = events.split()
per = {k: (int(y) - int(x)) / int(n) for k, x, y in zip(names, a.split(), b.split())}
print(f"# {binary}: per request, over {n} requests (I1 {i1}, D1 {d1}, LL {ll}: size,ways,line)")
print("| " + " | ".join(names) + " |")
print("|" + "---:|" * len(names))
print("| " + " | ".join(f"{per[k]:.1f}" for k in names) + " |")
PY

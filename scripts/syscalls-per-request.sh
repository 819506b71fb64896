#!/usr/bin/env bash
# System calls per request on the hit path: a cached 1 KiB file, 100 keep-alive connections
# (wrk, CPU 0) against one lair worker (CPU 1), counted by `strace -c -f` attached for the
# run. strace slows the server many times over; the counts per request are what it is for.
#
#   scripts/syscalls-per-request.sh                       this tree's release build
#   scripts/syscalls-per-request.sh /tmp/lair-old ./target/release/lair    several binaries
#   BACKEND=sync DURATION=5 scripts/syscalls-per-request.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-lazy}
DURATION=${DURATION:-3}
PORT=${PORT:-18777}
for tool in strace wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "syscalls-per-request: $tool is missing" >&2; exit 2; }
done
if [ $# -eq 0 ]; then
  cargo build --release --quiet
  set -- "$PWD/target/release/lair"
fi
work=$(mktemp -d /tmp/lair-syscalls.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work/root"
head -c 1024 /dev/urandom > "$work/root/1k.bin"
for bin in "$@"; do
  taskset -c 1 "$bin" serve "$work/root" --listen "127.0.0.1:$PORT" --workers 1 \
    --backend "$BACKEND" 2>/dev/null &
  server=$!
  pids+=("$server")
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/1k.bin" && break; sleep 0.1; done
  strace -c -f -p "$server" -o "$work/strace.txt" 2>/dev/null &
  tracer=$!
  sleep 0.5
  requests=$(taskset -c 0 wrk -t1 -c100 -d"${DURATION}s" "http://127.0.0.1:$PORT/1k.bin" |
    awk '/requests in/ {print $1}')
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  kill "$server"; wait "$server" 2>/dev/null || true
  echo "## $bin ($BACKEND): $requests requests"
  echo
  echo "| system call | calls | errors | per request |"
  echo "|---|---:|---:|---:|"
  awk -v n="$requests" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ {
      calls = $4; errors = (NF == 6) ? $5 : 0;
      if (calls / n >= 0.001) printf "| %s | %d | %d | %.3f |\n", $NF, calls, errors, calls / n }' \
    "$work/strace.txt"
  echo
done

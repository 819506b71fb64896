#!/usr/bin/env bash
# lair load against wrk: the same server, the same file, the same client core, one run.
#
# The server (lighttpd by default, or `lair serve`) runs one worker pinned to CPU 1; each load
# generator runs one thread pinned to CPU 0 with N keep-alive connections fetching a 1 KiB
# file, and the two generators take turns (wrk, lair load, wrk, ...) so drift hits both alike.
# Reported per connection count: median and range of req/s for each, the ratio lair/wrk, and
# each generator's own CPU per request (utime+stime from /usr/bin/time) — when the server is
# the bottleneck both reach the same rate, and CPU per request is what tells the generators
# apart.
#
#   scripts/bench-load.sh                      10 and 100 connections, 5 runs of 5 s
#   SERVER=lair CONNS="100" RUNS=3 scripts/bench-load.sh
#
# Output: results/bench-load/<timestamp>/{raw.csv,summary.md}; summary.md is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
RUNS=${RUNS:-5}
CONNS=${CONNS:-"10 100"}
SERVER=${SERVER:-lighttpd}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PORT=${PORT:-18190}

for tool in wrk taskset python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-load: $tool is missing (apt-get install wrk util-linux python3 time)" >&2; exit 2; }
done
[ "$SERVER" = lair ] || command -v "$SERVER" >/dev/null || { echo "bench-load: $SERVER is missing" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet
LAIR=$PWD/target/release/lair
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$PWD/results/bench-load/$stamp
work=$(mktemp -d /tmp/lair-bench-load.XXXXXX)
mkdir -p "$out" "$work/root"
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

head -c 1024 /dev/urandom > "$work/root/1k.bin"
url=http://127.0.0.1:$PORT/1k.bin

case "$SERVER" in
  lighttpd)
    cat > "$work/lighttpd.conf" <<CONF
server.document-root = "$work/root"
server.port = $PORT
server.bind = "127.0.0.1"
server.max-connections = 8192
server.max-fds = 16384
server.network-backend = "sendfile"
server.max-keep-alive-requests = 1000000
mimetype.assign = ( ".bin" => "application/octet-stream" )
server.errorlog = "$work/lighttpd-error.log"
CONF
    taskset -c "$SERVER_CPU" lighttpd -D -f "$work/lighttpd.conf" &
    server_pid=$! ;;
  lair)
    taskset -c "$SERVER_CPU" "$LAIR" serve "$work/root" --workers 1 -l "127.0.0.1:$PORT" 2>/dev/null &
    server_pid=$! ;;
  *) echo "bench-load: SERVER is lighttpd or lair" >&2; exit 2 ;;
esac
for _ in $(seq 50); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
curl -sf -o /dev/null "$url" || { echo "bench-load: the server did not come up" >&2; exit 1; }

echo "run,conns,tool,req_s,client_user_s,client_sys_s,errors" > "$out/raw.csv"
for run in $(seq "$RUNS"); do
  for conns in $CONNS; do
    # wrk: requests/sec from its summary; errors = non-2xx + socket errors.
    text=$(/usr/bin/time -f '%U %S' -o "$work/t" taskset -c "$CLIENT_CPU" \
      wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 10s "$url")
    read -r u s < "$work/t"
    python3 - "$run" "$conns" "$u" "$s" "$text" >> "$out/raw.csv" <<'PY'
import re, sys
run, conns, u, s, text = sys.argv[1:]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
err = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
err += int(m.group(1)) if m else 0
print(f"{run},{conns},wrk,{rps},{u},{s},{err}")
PY
    json=$(/usr/bin/time -f '%U %S' -o "$work/t" taskset -c "$CLIENT_CPU" \
      "$LAIR" load "$url" -t1 -c"$conns" -d"${DURATION}s" -q --json)
    read -r u s < "$work/t"
    python3 - "$run" "$conns" "$u" "$s" "$json" >> "$out/raw.csv" <<'PY'
import json, sys
run, conns, u, s, text = sys.argv[1:]
r = json.loads(text)
err = sum(v for v in r["errors"].values() if isinstance(v, int))
print(f"{run},{conns},lair-load,{r['requests_per_s']},{u},{s},{err}")
PY
  done
done

python3 - "$out" "$SERVER" "$DURATION" <<'PY' | tee "$out/summary.md"
import csv, statistics, sys
out, server, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
rows = list(csv.DictReader(open(f"{out}/raw.csv")))
print(f"# lair load vs wrk ({server} server on its own core, 1 KiB keep-alive, {duration:.0f} s runs)\n")
print("| conns | tool | req/s median [min–max] | client CPU µs/req | errors | lair/wrk req/s |")
print("|---:|---|---:|---:|---:|---:|")
for conns in sorted({int(r["conns"]) for r in rows}):
    med = {}
    for tool in ("wrk", "lair-load"):
        rs = [r for r in rows if int(r["conns"]) == conns and r["tool"] == tool]
        rps = [float(r["req_s"]) for r in rs]
        cpu = [(float(r["client_user_s"]) + float(r["client_sys_s"])) / (float(r["req_s"]) * duration) * 1e6 for r in rs]
        med[tool] = statistics.median(rps)
        ratio = f"{statistics.median(rps) / med['wrk']:.2f}" if tool == "lair-load" else ""
        print(f"| {conns} | {tool} | {statistics.median(rps):,.0f} [{min(rps):,.0f}–{max(rps):,.0f}] | "
              f"{statistics.median(cpu):.2f} | {sum(int(r['errors']) for r in rs)} | {ratio} |")
    # Per run, the ratio of the two adjacent measurements.
    pairs = []
    for run in sorted({r["run"] for r in rows}):
        w = [float(r["req_s"]) for r in rows if r["run"] == run and int(r["conns"]) == conns and r["tool"] == "wrk"]
        l = [float(r["req_s"]) for r in rows if r["run"] == run and int(r["conns"]) == conns and r["tool"] == "lair-load"]
        if w and l:
            pairs.append(l[0] / w[0])
    print(f"|  | per-run ratios | {', '.join(f'{p:.2f}' for p in pairs)} |  |  |  |")
print("\nClient CPU µs/req: the generator's utime+stime (from /usr/bin/time) over the requests it completed.")
PY
echo "raw: $out/raw.csv"

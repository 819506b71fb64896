#!/usr/bin/env bash
# lair (each backend) vs nginx vs lighttpd on the same files, same machine, one run.
#
# Every server gets one worker pinned to CPU 1; wrk (one thread) is pinned to CPU 0. For each
# repetition, every (size, connections) cell is measured on every server back to back, so slow
# drift of the machine hits all servers alike. Reported per cell: median and spread (min-max)
# of req/s, MB/s, and the server's CPU time per request (utime+stime from /proc/PID/stat
# before and after the cell) — on two cores wrk often saturates its core first, and then CPU
# per request is what tells servers apart. The server's user and system time are recorded
# apart (the kernel's TCP path is most of a small request), and so is the client's own CPU
# (from /usr/bin/time), which shows when wrk, not the server, is the bottleneck.
#
#   scripts/bench-peers.sh                 full matrix: 1k/16k/1m x 10/100/1000 conns x 3 runs, 5 s each
#   QUICK=1 scripts/bench-peers.sh         1 run, 2 s cells (a smoke test, not a result)
#   DURATION=10 RUNS=5 SIZES="1k" CONNS="100" scripts/bench-peers.sh
#   LAIR_BASE=/tmp/lair-old SERVERS="lair-base lair-lazy" scripts/bench-peers.sh
#                                          A/B: another lair binary (lazy) as server lair-base,
#                                          cell by cell against this tree's build
#
# Output: results/bench-peers/<timestamp>/{raw.csv,summary.md,env.txt}; summary.md is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
RUNS=${RUNS:-3}
SIZES=${SIZES:-"1k 16k 1m"}
CONNS=${CONNS:-"10 100 1000"}
SERVERS=${SERVERS:-"lair-lazy lair-sync nginx lighttpd"}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
if [ "${QUICK:-0}" = 1 ]; then DURATION=2; RUNS=1; fi

for tool in wrk nginx lighttpd taskset python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-peers: $tool is missing (apt-get install wrk nginx-light lighttpd util-linux python3 time)" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet
LAIR=$PWD/target/release/lair
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$PWD/results/bench-peers/$stamp
work=$(mktemp -d /tmp/lair-bench.XXXXXX)
mkdir -p "$out" "$work/root"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The files: incompressible bytes, warm in the page cache (this benchmark is about CPU).
head -c 1024 /dev/urandom > "$work/root/1k.bin"
head -c $((16 * 1024)) /dev/urandom > "$work/root/16k.bin"
head -c $((1024 * 1024)) /dev/urandom > "$work/root/1m.bin"

declare -A port=([lair-lazy]=18181 [lair-sync]=18182 [nginx]=18183 [lighttpd]=18184 [lair-base]=18185)
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;
  keepalive_requests 1000000; keepalive_timeout 65;
  types { application/octet-stream bin; }
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:${port[nginx]}; root $work/root; }
}
CONF
cat > "$work/lighttpd.conf" <<CONF
server.document-root = "$work/root"
server.bind = "127.0.0.1"
server.port = ${port[lighttpd]}
server.network-backend = "sendfile"
server.max-keep-alive-requests = 1000000
server.max-connections = 8192
server.max-fds = 16384
server.errorlog = "$work/lighttpd-error.log"
mimetype.assign = ( ".bin" => "application/octet-stream" )
CONF

declare -A pid
start() {
  local s=$1
  case $s in
    lair-lazy|lair-sync)
      taskset -c "$SERVER_CPU" "$LAIR" serve "$work/root" --listen "127.0.0.1:${port[$s]}" \
        --workers 1 --backend "${s#lair-}" 2>"$work/$s.log" & ;;
    lair-base)
      [ -x "${LAIR_BASE:-}" ] || { echo "bench-peers: lair-base needs LAIR_BASE=/path/to/lair" >&2; exit 2; }
      taskset -c "$SERVER_CPU" "$LAIR_BASE" serve "$work/root" --listen "127.0.0.1:${port[$s]}" \
        --workers 1 --backend lazy 2>"$work/$s.log" & ;;
    nginx) taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" & ;;
    lighttpd) taskset -c "$SERVER_CPU" lighttpd -D -f "$work/lighttpd.conf" & ;;
  esac
  pid[$s]=$!
  pids+=("$!")
}
for s in $SERVERS; do start "$s"; done
sleep 1
for s in $SERVERS; do
  curl -sf -o /dev/null "http://127.0.0.1:${port[$s]}/1k.bin" || { echo "bench-peers: $s did not start" >&2; exit 1; }
done

# "utime stime" in clock ticks of a process and its children (nginx's worker).
cpu_ticks() {
  local user=0 sys=0 p
  for p in $1 $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    local f
    f=$(sed 's/.*) //' "/proc/$p/stat")
    set -- $f
    user=$((user + ${12}))
    sys=$((sys + ${13}))
  done
  echo "$user $sys"
}
HZ=$(getconf CLK_TCK)

{
  echo "date: $stamp"; echo "kernel: $(uname -r)"; echo "cpus: $(nproc)"
  echo "model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "lair: $(git rev-parse --short HEAD 2>/dev/null) $($LAIR --version)"
  [ -z "${LAIR_BASE:-}" ] || echo "lair-base: $LAIR_BASE $($LAIR_BASE --version)"
  echo "nginx: $(nginx -v 2>&1)"; echo "lighttpd: $(lighttpd -v 2>&1 | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "server cpu: $SERVER_CPU, client cpu: $CLIENT_CPU, duration: ${DURATION}s, runs: $RUNS"
  echo "command: DURATION=$DURATION RUNS=$RUNS SIZES='$SIZES' CONNS='$CONNS' SERVERS='$SERVERS' scripts/bench-peers.sh"
} > "$out/env.txt"

echo "run,size,conns,server,requests,bytes,duration_us,errors,non2xx,p50_us,p99_us,cpu_ticks,hz,user_ticks,sys_ticks,client_cpu_s" > "$out/raw.csv"
total=$((RUNS * $(wc -w <<<"$SIZES") * $(wc -w <<<"$CONNS") * $(wc -w <<<"$SERVERS")))
n=0
for run in $(seq 1 "$RUNS"); do
  for size in $SIZES; do
    for conns in $CONNS; do
      for s in $SERVERS; do
        n=$((n + 1))
        url="http://127.0.0.1:${port[$s]}/$size.bin"
        read -r u0 s0 < <(cpu_ticks "${pid[$s]}")
        line=$(/usr/bin/time -f '%U %S' -o "$work/client-time" taskset -c "$CLIENT_CPU" \
          wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 10s -s scripts/wrk-report.lua "$url" |
          grep '^WRKJSON ' | cut -d' ' -f2-)
        read -r u1 s1 < <(cpu_ticks "${pid[$s]}")
        client=$(awk '{print $1 + $2}' "$work/client-time")
        python3 - "$run" "$size" "$conns" "$s" "$((u1 - u0))" "$((s1 - s0))" "$HZ" "$client" "$line" \
          >> "$out/raw.csv" <<'PY'
import json, sys
run, size, conns, server, user, sys_, hz, client, line = sys.argv[1:]
j = json.loads(line)
print(",".join(map(str, [run, size, conns, server, j["requests"], j["bytes"], j["duration_us"],
    j["errors"], j["non2xx"], j["p50_us"], j["p99_us"], int(user) + int(sys_), hz, user, sys_,
    client])))
PY
        printf '\r[%d/%d] run %d %s %s conns %-10s' "$n" "$total" "$run" "$size" "$conns" "$s" >&2
      done
    done
  done
done
echo >&2

python3 - "$out" <<'PY' | tee "$out/summary.md"
import csv, statistics, sys, os
out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "raw.csv"))))
env = open(os.path.join(out, "env.txt")).read()
cells = {}
for r in rows:
    d = int(r["duration_us"]) / 1e6
    req = int(r["requests"])
    m = cells.setdefault((r["size"], int(r["conns"]), r["server"]),
                         {"rps": [], "mbs": [], "cpu": [], "user": [], "client": [], "p99": [], "err": 0})
    m["rps"].append(req / d)
    m["mbs"].append(int(r["bytes"]) / d / 1e6)
    m["cpu"].append(int(r["cpu_ticks"]) / int(r["hz"]) / max(req, 1) * 1e6)
    if r.get("user_ticks"):  # runs before these columns existed lack them
        m["user"].append(int(r["user_ticks"]) / int(r["hz"]) / max(req, 1) * 1e6)
        m["client"].append(float(r["client_cpu_s"]) / d * 100)
    m["p99"].append(int(r["p99_us"]) / 1000)
    m["err"] += int(r["errors"]) + int(r["non2xx"])
def fmt(xs, f="{:.0f}"):
    med = statistics.median(xs)
    return f.format(med) + (" (" + f.format(min(xs)) + "–" + f.format(max(xs)) + ")" if len(xs) > 1 else "")
order = {"1k": 0, "16k": 1, "1m": 2}
servers = sorted({k[2] for k in cells}, key=lambda s: (not s.startswith("lair"), s))
print("# bench-peers\n")
print("```\n" + env.strip() + "\n```\n")
print("Median of the runs, (min–max) in brackets. CPU µs/req = server utime+stime per request,")
print("of which user µs/req in user space; client CPU % = wrk's utime+stime over the run.\n")
print("| size | conns | server | req/s | MB/s | CPU µs/req | user µs/req | client CPU % | p99 ms | errors |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for (size, conns) in sorted({(k[0], k[1]) for k in cells}, key=lambda k: (order.get(k[0], 9), k[1])):
    for s in servers:
        m = cells.get((size, conns, s))
        if not m: continue
        user = fmt(m["user"], "{:.2f}") if m["user"] else "—"
        client = fmt(m["client"]) if m["client"] else "—"
        print(f"| {size} | {conns} | {s} | {fmt(m['rps'])} | {fmt(m['mbs'], '{:.1f}')} | {fmt(m['cpu'], '{:.1f}')} | {user} | {client} | {fmt(m['p99'], '{:.2f}')} | {m['err']} |")
peers = [s for s in servers if not s.startswith("lair")]
if "lair-lazy" in servers and peers:
    print("\n## lair lazy against the better peer in each cell\n")
    print("| size | conns | better peer | req/s ratio (≥ 1.0 wanted) | CPU/req ratio (≤ 0.8 wanted) |")
    print("|---|---:|---|---:|---:|")
    for (size, conns) in sorted({(k[0], k[1]) for k in cells}, key=lambda k: (order.get(k[0], 9), k[1])):
        lz = cells.get((size, conns, "lair-lazy"))
        cand = [(statistics.median(cells[(size, conns, p)]["rps"]), p) for p in peers if (size, conns, p) in cells]
        if not lz or not cand: continue
        best_rps, best = max(cand)
        r = statistics.median(lz["rps"]) / best_rps
        c = statistics.median(lz["cpu"]) / statistics.median(cells[(size, conns, best)]["cpu"])
        print(f"| {size} | {conns} | {best} | {r:.2f} | {c:.2f} |")
PY
echo "bench-peers: results in $out" >&2

#!/usr/bin/env bash
# Slow attacks against lair (and, for comparison, nginx) with a third-party tool, Debian's
# slowhttptest, while a normal client asks for a page every 200 ms: does it keep getting
# answers within 1 s?
#
#   ./scripts/slow-attacks.sh [SECONDS] [CONNECTIONS]     (defaults: 60 s, 1000 connections)
#   SERVERS="lair nginx" ./scripts/slow-attacks.sh        (default: lair only)
#
# Attacks: slowloris (-H: headers that never end), slow body (-B: a body one trickle at a
# time), range (-R: "Apache killer" overlapping ranges) and slow read (-X: a tiny receive window
# read a few bytes at a time). The server runs on CPU 1, attacker and probe on CPU 0. Prints a
# Markdown table: per server and attack, the probe's answers, failures (no 200 within 1 s),
# median / p99 / max seconds, the attack's connections the server still held near the end, and
# slowhttptest's own verdict from its last sample. Installs nothing (apt-get install
# slowhttptest nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
conns="${2:-1000}"
servers="${SERVERS:-lair}"
command -v slowhttptest >/dev/null || { echo "slow-attacks.sh: apt-get install slowhttptest" >&2; exit 2; }
cargo build --release -q -p lair
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/site"
chmod 755 "$work"   # nginx's workers run as nobody
head -c 1024 /dev/urandom | base64 > "$work/site/index.html"
head -c $((1 << 20)) /dev/urandom > "$work/site/big.bin"
ulimit -n "$(ulimit -Hn)"
port=18480

start_server() { # name -> pid on stdout
    case "$1" in
    lair)
        taskset -c 1 target/release/lair serve --listen "127.0.0.1:$port" --workers 1 \
            --access-log off "$work/site" >"$work/lair.log" 2>&1 &
        ;;
    nginx)
        cat >"$work/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 20000; }
http {
    access_log off;
    sendfile on;
    server { listen 127.0.0.1:$port reuseport; root $work/site; }
}
CONF
        taskset -c 1 nginx -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
        ;;
    esac
    echo $!
}

probe() { # url seconds -> one time_total per line ("fail" for no 200 in 1 s)
    local end=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$end" ]; do
        out=$(taskset -c 0 curl -s -o /dev/null --max-time 1 -w '%{http_code} %{time_total}' "$1" || true)
        case "$out" in
        "200 "*) echo "${out#200 }" ;;
        *) echo fail ;;
        esac
        sleep 0.2
    done
}

printf '| server | attack | probes | failed | median s | p99 s | max s | open at the end | slowhttptest: available |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---|\n'
for s in $servers; do
    pid=$(start_server "$s")
    pids+=("$pid")
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    for attack in H B R X; do
        case "$attack" in
        H) name="slowloris"; args=(-H -i 10 -u "http://127.0.0.1:$port/index.html") ;;
        B) name="slow body"; args=(-B -i 10 -s 65536 -u "http://127.0.0.1:$port/index.html") ;;
        R) name="range"; args=(-R -a 10 -b 3000 -u "http://127.0.0.1:$port/big.bin") ;;
        X) name="slow read"; args=(-X -k 4 -n 1 -w 16 -y 64 -z 16 -u "http://127.0.0.1:$port/big.bin") ;;
        esac
        taskset -c 0 slowhttptest "${args[@]}" -c "$conns" -r 500 -l "$secs" -p 3 -g \
            -o "$work/$s-$attack" >"$work/$s-$attack.out" 2>&1 &
        attacker=$!
        sleep 3
        probe "http://127.0.0.1:$port/index.html" $((secs - 5)) >"$work/$s-$attack.probe"
        # Connections the server still has open near the end (slowhttptest's own "connected"
        # counts a connection until its next send fails, long after the server closed it).
        open=$(ss -Htn state established "( sport = :$port )" | wc -l)
        wait "$attacker" || true
        python3 - "$s" "$name" "$work/$s-$attack.probe" "$work/$s-$attack.out" "$open" <<'PY'
import re, sys
server, name, path, out, still_open = sys.argv[1:6]
# slowhttptest's last status sample: connections it still held, and its own probe's verdict.
text = re.sub(r"\x1b\[[0-9;]*m", "", open(out, errors="replace").read())
def last(key):
    found = re.findall(key + r":\s*(\S+)", text)
    return found[-1] if found else "?"
verdict = last('service available')
lines = open(path).read().split()
ok = sorted(float(x) for x in lines if x != "fail")
failed = sum(1 for x in lines if x == "fail")
def q(p):
    return ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")
print(f"| {server} | {name} | {len(lines)} | {failed} | {q(0.5):.4f} | {q(0.99):.4f} | "
      f"{(ok[-1] if ok else float('nan')):.4f} | {still_open} | {verdict} |")
PY
        sleep 2
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done

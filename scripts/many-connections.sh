#!/usr/bin/env bash
# Many concurrent connections against one server: each connection asks for a 1 KiB page, gets
# it, and stays open (keep-alive). Reports, per server, connections held and answered, and the
# server's resident memory per connection (RSS after minus RSS before, divided by the count;
# kernel socket buffers are not in RSS and are the same for every server).
#
#   ./scripts/many-connections.sh [CONNECTIONS]          (default 50000)
#   SERVERS="lair nginx" ./scripts/many-connections.sh   (default: both)
#
# The server listens on three loopback addresses and the clients spread over them: the kernel
# picks an ephemeral port per (source, destination) pair, and one pair has only ~28,000. Run as root (the client raises its own
# descriptor limit past the hard one); the servers get theirs from prlimit, as an operator's
# LimitNOFILE= would. One worker for each server, on CPU 1; the client on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-50000}"
servers="${SERVERS:-lair nginx}"
cargo build --release -q -p lair
work="$(mktemp -d)"
chmod 755 "$work"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/site"
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/site/index.html"
port=18520
# lair allows (limit - 64) / 2 connections (each may need a socket and a file), the rule
# nginx's documentation gives too.
limit=$((2 * n + 200))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$limit" -gt "$hard" ]; then
    # Raising a hard limit needs CAP_SYS_RESOURCE; some machines (containers) drop it.
    fit=$(((hard - 200) / 2))
    echo "many-connections.sh: the descriptor hard limit is $hard and cannot be raised here;" \
        "measuring $fit connections instead of $n" >&2
    n=$fit
    limit=$hard
fi
printf '| server | connections | answered | held at the end | RSS before MiB | RSS after MiB | bytes per connection |\n|---|---:|---:|---:|---:|---:|---:|\n'
for s in $servers; do
    case "$s" in
    lair)
        taskset -c 1 prlimit --nofile="$limit:$limit" target/release/lair serve \
            --listen "127.0.0.1:$port" --listen "127.0.0.2:$port" --listen "127.0.0.3:$port" \
            --workers 1 --max-connections "$((n + 100))" --keepalive-timeout 10m "$work/site" \
            >"$work/lair.log" 2>&1 &
        ;;
    nginx)
        cat >"$work/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $limit;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections $((n + 100)); }
http {
    access_log off;
    keepalive_timeout 10m;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$port; listen 127.0.0.2:$port; listen 127.0.0.3:$port; root $work/site; }
}
CONF
        taskset -c 1 prlimit --nofile="$limit:$limit" nginx -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
        ;;
    esac
    pid=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    # nginx runs its worker as a child: measure the process that serves.
    served=$pid
    if [ "$s" = nginx ]; then served=$(pgrep -P "$pid" | head -1); fi
    taskset -c 0 python3 - "$s" "$n" "$port" "$served" <<'PY'
import os, resource, socket, sys, time
server, n, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
before = rss()
req = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
socks, answered, read_upto = [], 0, 0
sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
for i in range(n):
    s = socket.socket()
    s.connect((sources[i % len(sources)], port))
    s.sendall(req)
    socks.append(s)
    # Collect answers in batches so the server sees many requests at once.
    if len(socks) % 500 == 0 or i == n - 1:
        batch, read_upto = socks[read_upto:], len(socks)
        for t in batch:
            t.settimeout(10)
            got = b""
            while b"\r\n\r\n" not in got or len(got) < 1024:
                part = t.recv(65536)
                if not part:
                    break
                got += part
            answered += got.startswith(b"HTTP/1.1 200")
time.sleep(1)
after = rss()
held = 0
for s in socks:
    s.setblocking(False)
    try:
        held += s.recv(1) != b""
    except BlockingIOError:
        held += 1
    except OSError:
        pass
mib = 1 << 20
print(f"| {server} | {n} | {answered} | {held} | {before / mib:.1f} | {after / mib:.1f} | "
      f"{(after - before) / n:.0f} |")
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    grep -E "WARN|ERROR" "$work/$s.log" | head -3 >&2 || true
    sleep 1
done

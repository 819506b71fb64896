#!/usr/bin/env bash
# Head-of-line blocking check: hot clients fetch one small cached file while cold clients fetch
# files that are not in the page cache, from a disk throttled to IOPS reads per second.
# Reports the hot clients' req/s and p99 alone and under the cold load, per server.
# (A precursor of `lair lab run hol`; needs root and cgroup v1 blkio.)
#
#   sudo scripts/hol-check.sh                       lair sync, lair lazy, nginx, nginx aio threads
#   IOPS=100 HOT=10 COLD=50 DURATION=8 sudo scripts/hol-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IOPS=${IOPS:-200}
HOT=${HOT:-10}
COLD=${COLD:-50}
DURATION=${DURATION:-6}
SERVERS=${SERVERS:-"lair-sync lair-lazy nginx nginx-aio"}
NFILES=${NFILES:-20000}   # enough that random picks stay cold for the whole run
SIZE_KB=${SIZE_KB:-16}

[ "$(id -u)" -eq 0 ] || { echo "hol-check: needs root (cgroup blkio, page-cache drops)" >&2; exit 2; }
CG=/sys/fs/cgroup/blkio
[ -w "$CG" ] || { echo "hol-check: cgroup v1 blkio is not available at $CG; cannot throttle the disk" >&2; exit 2; }
for t in wrk nginx taskset dd; do command -v $t >/dev/null || { echo "hol-check: $t missing" >&2; exit 2; }; done

cargo build --release --quiet
LAIR=$PWD/target/release/lair
data=$PWD/target/hol-data              # on the real disk (not tmpfs): it must be throttleable
mkdir -p "$data/root/cold"
dev=$(findmnt -no SOURCE -T "$data")
disk=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -1)
[ -n "$disk" ] || disk=$(basename "$dev")
majmin=$(cat "/sys/class/block/$disk/dev")
head -c 1024 /dev/urandom > "$data/root/hot.bin"
python3 - "$data/root/cold" "$NFILES" "$SIZE_KB" <<'PY'
import os, sys
d, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    p = os.path.join(d, f"f{i:05d}.bin")
    if not os.path.exists(p) or os.path.getsize(p) != kb * 1024:
        with open(p, "wb") as f:
            f.write(os.urandom(kb * 1024))
PY
sync
cat > "$data/cold.lua" <<EOF
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
request = function()
  return wrk.format("GET", string.format("/cold/f%05d.bin", math.random(0, $NFILES - 1)))
end
EOF

cgdir=$CG/lair-hol-$$
mkdir "$cgdir"
echo "$majmin $IOPS" > "$cgdir/blkio.throttle.read_iops_device"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -f "$data/nginx.pid" ] && kill "$(cat "$data/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rmdir "$cgdir" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

nginx_conf() { # $1 = extra location directives
  cat > "$data/nginx.conf" <<EOF
worker_processes 1; daemon off; error_log $data/nginx-error.log; pid $data/nginx.pid;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; open_file_cache max=1000 inactive=60s;
  client_body_temp_path $data; proxy_temp_path $data; fastcgi_temp_path $data;
  uwsgi_temp_path $data; scgi_temp_path $data;
  server { listen 127.0.0.1:18190; root $data/root; location / { $1 } } }
EOF
}

drop_cold() { # every cold file out of the page cache (posix_fadvise DONTNEED via dd)
  find "$data/root/cold" -name '*.bin' -print0 | xargs -0 -n 200 -P 2 sh -c \
    'for f; do dd if="$f" iflag=nocache count=0 status=none; done' sh
}
reads() { awk '$2 == "Read" {s += $3} END {print s + 0}' "$cgdir/blkio.throttle.io_serviced"; }

hot_run() { # prints "rps p99_ms"
  taskset -c 0 wrk -t1 -c"$HOT" -d"${DURATION}s" --latency http://127.0.0.1:18190/hot.bin |
    awk '/^Requests\/sec/{r=$2} / 99%/{v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v} END{printf "%.0f %.2f\n", r, p}'
}

printf "%-10s %14s %12s %14s %12s %12s %12s\n" server hot-alone p99-ms hot-with-cold p99-ms cold-req/s disk-reads/s
for s in $SERVERS; do
  case $s in
    lair-*) taskset -c 1 "$LAIR" serve "$data/root" --listen 127.0.0.1:18190 --workers 1 \
              --backend "${s#lair-}" --file-cache-ttl 0 2>"$data/$s.log" & pid=$! ;;
    nginx) nginx_conf ""; taskset -c 1 nginx -c "$data/nginx.conf" & pid=$! ;;
    nginx-aio) nginx_conf "aio threads;"; taskset -c 1 nginx -c "$data/nginx.conf" & pid=$! ;;
  esac
  sleep 1
  for p in $pid $(pgrep -P "$pid" || true); do echo "$p" > "$cgdir/cgroup.procs"; done
  alone=$(hot_run)
  drop_cold
  r0=$(reads); t0=$(date +%s.%N)
  taskset -c 0 wrk -t1 -c"$COLD" -d"$((DURATION + 2))s" --timeout 30s -s "$data/cold.lua" \
    http://127.0.0.1:18190/ > "$data/cold.out" &
  cold=$!
  sleep 1
  loaded=$(hot_run)
  wait "$cold"
  r1=$(reads); t1=$(date +%s.%N)
  disk=$(python3 -c "print(f'{($r1 - $r0) / ($t1 - $t0):.0f}')")
  cold_rps=$(awk '/^Requests\/sec/{print $2}' "$data/cold.out")
  printf "%-10s %14s %12s %14s %12s %12s %12s\n" "$s" ${alone% *} ${alone#* } ${loaded% *} ${loaded#* } "$cold_rps" "$disk"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  rm -f "$data/nginx.pid"
done
echo "disk $disk ($majmin) throttled to $IOPS reads/s; $HOT hot + $COLD cold connections; ${DURATION}s runs"

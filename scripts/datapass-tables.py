#!/usr/bin/env python3
"""Print the tables of docs/experiments/datapass.md from a `lair lab run datapass` results dir.

    python3 scripts/datapass-tables.py docs/results/datapass/TIMESTAMP

Per environment and client count, one row per body size, one column per server; each cell
is the median over the repetitions (min-max when there are several) of:
  - requests/s and MB/s (10^6 bytes);
  - the server's CPU per request, user + system µs, and per MB, user + system ms;
  - lair only: engine operations per response (every operation submitted, over requests —
    about the system calls, one per operation but for sends split by the socket);
then each lair mode against the best single lair mode of its cell (req/s and CPU per MB),
the crossover sizes (where the cheapest mode per MB changes), and for `emulated` the share
of zero-copy sends the kernel copied anyway.
"""

import json
import statistics
import sys
from collections import defaultdict

MODES = ["lair-copy", "lair-share", "lair-sendfile", "lair-splice", "lair-move", "lair-emulated"]
OTHERS = ["lair-cache", "nginx", "lighttpd"]
SIZES = ["1k", "4k", "16k", "64k", "256k", "1m", "10m"]


def cell(vals, fmt="{:,.0f}"):
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) > 1 and max(vals) > 0 and (max(vals) - min(vals)) / max(vals) > 0.05:
        return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    return fmt.format(med)


def ops_per_response(r):
    e = (r.get("engine") or {}).get("engine") or {}
    n = sum(v.get("submitted", 0) for v in (e.get("ops") or {}).values())
    # The server's whole life: the lab's warm-up and the measured run; per request of the
    # run is close enough when the warm-up is short (reported as such).
    reqs = (r.get("engine") or {}).get("http", {}).get("requests", 0)
    return n / reqs if reqs else None


def main():
    d = sys.argv[1]
    rows = json.load(open(f"{d}/results.json"))["rows"]
    by = defaultdict(list)
    for r in rows:
        by[(r["environment"], r["clients"], r["server"], r["workload"])].append(r)
    envs = sorted({r["environment"] for r in rows}, key=lambda e: (e != "loopback", e))
    clients = sorted({r["clients"] for r in rows})
    servers = [s for s in MODES + OTHERS if any(r["server"] == s for r in rows)]
    sizes = [s for s in SIZES if any(r["workload"] == s for r in rows)]

    def vals(env, c, s, w, f):
        out = []
        for r in by.get((env, c, s, w), []):
            v = f(r)
            if v is not None:
                out.append(v)
        return out

    def rps(r):
        return r["requests_per_s"]

    def mbs(r):
        return r["mb_per_s"]

    def cpu_req(r):
        return r["server_cpu_us_per_req"]

    def cpu_mb(r):
        mb = r["mb_per_s"] * r["elapsed_s"]
        return (r["server_user_s"] + r["server_system_s"]) * 1e3 / mb if mb else None

    def user_req(r):
        return r["server_user_s"] * 1e6 / r["requests"] if r["requests"] else None

    measures = [
        ("requests/s", rps, "{:,.0f}"),
        ("MB/s", mbs, "{:,.0f}"),
        ("server CPU µs per request (user + system)", cpu_req, "{:,.1f}"),
        ("server user-space CPU µs per request", user_req, "{:,.2f}"),
        ("server CPU ms per MB", cpu_mb, "{:,.2f}"),
        ("engine operations per response (lair)", ops_per_response, "{:,.1f}"),
    ]
    for env in envs:
        for c in clients:
            print(f"\n## {env}, {c} connections\n")
            for title, f, fmt in measures:
                print(f"\n### {title}\n")
                print("| size | " + " | ".join(servers) + " |")
                print("|---|" + "---:|" * len(servers))
                for w in sizes:
                    cells = [cell(vals(env, c, s, w, f), fmt) for s in servers]
                    print(f"| {w} | " + " | ".join(cells) + " |")
            print("\n### each lair mode against the best single mode of the cell (req/s ratio / CPU-per-MB ratio)\n")
            modes = [m for m in MODES if m in servers]
            print("| size | best req/s | " + " | ".join(modes + [s for s in OTHERS if s in servers]) + " |")
            print("|---|---|" + "---:|" * (len(modes) + len([s for s in OTHERS if s in servers])))
            for w in sizes:
                med = {
                    s: (
                        statistics.median(vals(env, c, s, w, rps) or [0]),
                        statistics.median(vals(env, c, s, w, cpu_mb) or [0]),
                    )
                    for s in servers
                }
                best = max(modes, key=lambda m: med[m][0])
                cheapest = min((m for m in modes if med[m][1] > 0), key=lambda m: med[m][1], default=best)
                cells = []
                for s in modes + [s for s in OTHERS if s in servers]:
                    r = med[s][0] / med[best][0] if med[best][0] else 0
                    k = med[s][1] / med[cheapest][1] if med[cheapest][1] else 0
                    cells.append(f"{r:.2f} / {k:.2f}")
                print(f"| {w} | {best} | " + " | ".join(cells) + " |")
            print("\n(CPU-per-MB ratios are against the cheapest mode of the cell.)")
            zc = []
            for w in sizes:
                for r in by.get((env, c, "lair-emulated", w), []):
                    z = (r.get("engine") or {}).get("engine", {}).get("zerocopy") or {}
                    if z.get("completed"):
                        zc.append(f"{w}: {z['copied']:,} of {z['completed']:,} copied")
            if zc:
                print("\nemulated, sends the kernel copied anyway: " + "; ".join(zc))


if __name__ == "__main__":
    main()

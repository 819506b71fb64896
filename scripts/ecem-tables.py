#!/usr/bin/env python3
"""Print the tables of docs/experiments/ecem.md from a `lair lab run ecem` results directory.

    python3 scripts/ecem-tables.py docs/results/ecem/TIMESTAMP

Per environment: for each server (rows) and client count, the median over the repetitions
(with the spread, min-max, where it matters) of
  - mean and p99 response time (s), total transmit rate (MB/s, 10^6 bytes);
  - server context switches per MB (voluntary + involuntary, every thread), its event-loop
    wake-ups per MB (lair: the engine's `wakeups`; the thread model counts a thread's wait
    for a socket as one), its CPU per MB (ms);
  - the send queue per connection (KiB: bytes unacknowledged or unsent, `ss -tin` every
    200 ms), of it the unsent bytes, the connection's smoothed RTT, its bandwidth-delay
    product (delivery rate × RTT) and the send queue over it, and the KiB read from disk
    per KiB sent (1.0: each byte read once; more: pages evicted before they were sent);
then seed 000's Table 3: the change each mechanism makes against its own baseline, and lair
against nginx and lighttpd.
"""

import json
import statistics
import sys
from collections import defaultdict

SERVERS = [
    "lair-threads",
    "lair-threads-ded",
    "lair-copy",
    "lair-copy-ded",
    "lair-lazy",
    "lair-lazy-dns",
    "lair-lazy-dns-16k",
    "lair-lazy-dns-512k",
    "lair-lazy-nomark",
    "nginx",
    "nginx-aio",
    "lighttpd",
]

# (mechanism, baseline, with it)
PAIRS = [
    ("DED, thread model", "lair-threads", "lair-threads-ded"),
    ("DED, event loop", "lair-copy", "lair-copy-ded"),
    ("DNS, event loop", "lair-lazy", "lair-lazy-dns"),
    ("DNS against sendfile without a mark", "lair-lazy-nomark", "lair-lazy-dns"),
]


def mb(r):
    return r["mb_per_s"] * r["elapsed_s"]


def wakeups(r):
    e = (r.get("engine") or {}).get("engine") or {}
    return e.get("wakeups")


def metrics(r):
    m = mb(r) or 1e-9
    sendq = None
    if r.get("sendq_mean_kib") is not None and r.get("sendq_conns"):
        sendq = r["sendq_mean_kib"] / r["sendq_conns"]
    disk = None
    if r.get("disk_read_kib") is not None:
        disk = r["disk_read_kib"] / (m * 1e6 / 1024)
    w = wakeups(r)
    bdp = r.get("bdp_kib")
    return {
        "notsent_kib": r.get("notsent_kib"),
        "rtt_ms": r.get("rtt_ms"),
        "bdp_kib": bdp,
        "bdp_min_kib": r.get("bdp_min_kib"),
        "sendq_bdp": None if not sendq or not bdp else sendq / bdp,
        "mean_s": r["mean_us"] / 1e6,
        "p99_s": r["p99_us"] / 1e6,
        "mbps": r["mb_per_s"],
        "cs_mb": (r["server_voluntary_cs"] + r["server_involuntary_cs"]) / m,
        "wake_mb": None if w is None else w / m,
        "cpu_ms_mb": (r["server_user_s"] + r["server_system_s"]) * 1e3 / m,
        "sendq_kib": sendq,
        "disk_ratio": disk,
        "errors": r["errors"],
    }


def med(rows, key):
    vals = [metrics(r)[key] for r in rows]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def fmt(v, digits=2):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def cell(rows, key, digits=2, spread=False):
    m, lo, hi = med(rows, key)
    if m is None:
        return "–"
    if spread and len(rows) > 1:
        return f"{fmt(m, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})"
    return fmt(m, digits)


def main() -> None:
    results = json.load(open(sys.argv[1] + "/results.json"))
    cells = defaultdict(list)
    for r in results["rows"]:
        cells[(r["environment"], r["clients"], r["server"])].append(r)
    envs = list(dict.fromkeys(r["environment"] for r in results["rows"]))
    present = [s for s in SERVERS if any(k[2] == s for k in cells)]
    present += sorted({k[2] for k in cells} - set(present))
    columns = [
        ("mean s", "mean_s", 2, True),
        ("p99 s", "p99_s", 2, False),
        ("MB/s", "mbps", 1, True),
        ("cs/MB", "cs_mb", 1, True),
        ("wake-ups/MB", "wake_mb", 1, False),
        ("CPU ms/MB", "cpu_ms_mb", 2, False),
        ("send queue KiB/conn", "sendq_kib", 0, False),
        ("unsent KiB/conn", "notsent_kib", 0, False),
        ("RTT ms", "rtt_ms", 1, False),
        ("BDP KiB (RTT)", "bdp_kib", 0, False),
        ("send queue / BDP", "sendq_bdp", 2, False),
        ("disk KiB/KiB sent", "disk_ratio", 2, False),
    ]
    for env in envs:
        clients = sorted({k[1] for k in cells if k[0] == env})
        for c in clients:
            print(f"**{env}, {c} clients**\n")
            print("| server | " + " | ".join(h for h, *_ in columns) + " | errors |")
            print("|---|" + "---:|" * (len(columns) + 1))
            for s in present:
                rows = cells.get((env, c, s))
                if not rows:
                    continue
                vals = [cell(rows, k, d, sp) for _, k, d, sp in columns]
                errs = sum(r["errors"] for r in rows)
                print(f"| {s} | " + " | ".join(vals) + f" | {errs} |")
            print()
        print(f"**{env}: each mechanism against its baseline (median of medians; negative = less)**\n")
        print("| mechanism | measure | " + " | ".join(str(c) for c in clients) + " |")
        print("|---|---|" + "---:|" * len(clients))
        for name, base, mech in PAIRS:
            for label, key in [
                ("response time", "mean_s"),
                ("transmit rate", "mbps"),
                ("context switches/MB", "cs_mb"),
                ("wake-ups/MB", "wake_mb"),
                ("CPU/MB", "cpu_ms_mb"),
            ]:
                out = []
                for c in clients:
                    b = med(cells.get((env, c, base), []), key)[0]
                    m = med(cells.get((env, c, mech), []), key)[0]
                    out.append("–" if not b or m is None else f"{(m / b - 1) * 100:+.1f} %")
                print(f"| {name} | {label} | " + " | ".join(out) + " |")
        print()
        print(f"**{env}: lair's best against the peers (transmit rate ×, CPU per MB ×)**\n")
        print("| clients | lair's best (MB/s) | vs nginx | vs nginx aio | vs lighttpd | its CPU/MB vs nginx | vs lighttpd |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for c in clients:
            lairs = [s for s in present if s.startswith("lair") and cells.get((env, c, s))]
            if not lairs:
                continue
            best = max(lairs, key=lambda s: med(cells[(env, c, s)], "mbps")[0])
            bm = med(cells[(env, c, best)], "mbps")[0]
            bc = med(cells[(env, c, best)], "cpu_ms_mb")[0]
            row = [f"{best} ({fmt(bm, 1)})"]
            for peer in ["nginx", "nginx-aio", "lighttpd"]:
                p = med(cells.get((env, c, peer), []), "mbps")[0]
                row.append("–" if not p else f"{bm / p:.3f}×")
            for peer in ["nginx", "lighttpd"]:
                p = med(cells.get((env, c, peer), []), "cpu_ms_mb")[0]
                row.append("–" if not p else f"{bc / p:.2f}×")
            print(f"| {c} | " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()

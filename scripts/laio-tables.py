#!/usr/bin/env python3
"""Print the tables of docs/experiments/laio.md from a `lair lab run laio` results directory.

    python3 scripts/laio-tables.py docs/results/laio/TIMESTAMP

One table per environment: median req/s over the repetitions for each server (columns) and
client count (rows), the best in bold, then the p99 at 100 clients and, where the disk
counted them, the mean number of reads the server kept in the device (emulated disk).
"""

import json
import statistics
import sys
from collections import defaultdict

SERVERS = [
    ("lair-sync", "sync"),
    ("lair-lazy", "lazy"),
    ("lair-eager", "eager"),
    ("lair-eager-net", "eager-net"),
    ("lair-hybrid", "hybrid"),
    ("lair-uring", "uring"),
    ("nginx", "nginx"),
    ("nginx-aio", "nginx aio"),
]


def main() -> None:
    results = json.load(open(sys.argv[1] + "/results.json"))
    cells = defaultdict(list)
    for r in results["rows"]:
        cells[(r["environment"], r["clients"], r["server"])].append(r)
    envs = list(dict.fromkeys(r["environment"] for r in results["rows"]))
    present = [(s, n) for s, n in SERVERS if any(k[2] == s for k in cells)]
    for env in envs:
        clients = sorted({k[1] for k in cells if k[0] == env})
        print(f"**{env}**\n")
        print("| clients | " + " | ".join(n for _, n in present) + " |")
        print("|---:|" + "---:|" * len(present))
        peak = {}
        for c in clients:
            med = {}
            for s, _ in present:
                rows = cells.get((env, c, s), [])
                if rows:
                    med[s] = statistics.median(r["requests_per_s"] for r in rows)
                    peak[s] = max(peak.get(s, 0), med[s])
            best = max(med.values()) if med else None
            out = []
            for s, _ in present:
                v = med.get(s)
                text = "–" if v is None else f"{v:,.0f}"
                out.append(f"**{text}**" if v is not None and v == best else text)
            print(f"| {c} | " + " | ".join(out) + " |")
        for what, key, scale, fmt in [
            ("p99 ms at 100", "p99_us", 1e-3, "{:.1f}"),
            ("disk depth at 100", "disk_depth", 1, "{:.1f}"),
        ]:
            vals = []
            for s, _ in present:
                rows = [r for r in cells.get((env, 100, s), []) if r.get(key) is not None]
                vals.append(
                    fmt.format(statistics.median(r[key] for r in rows) * scale) if rows else "–"
                )
            if any(v != "–" for v in vals):
                print(f"| {what} | " + " | ".join(vals) + " |")
        lazy = peak.get("lair-lazy")
        ratios = ", ".join(
            f"{n} {lazy / peak[s]:.2f}×"
            for s, n in present
            if s != "lair-lazy" and peak.get(s) and lazy
        )
        print(f"\nlazy's peak {lazy:,.0f} req/s against each peak: {ratios}\n")


if __name__ == "__main__":
    main()

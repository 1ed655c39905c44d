"""Print the MoE benchmark table from a pytest-benchmark JSON file.

Usage: ``python benchmarks/report.py moe.json [--markdown]``

One row per problem (device/dtype, pass, N, h, E, k): the median time in ms of each variant, the ratios
fused/naive and fused/floor, and (fwdbwd rows) the peak-memory ratio fused/naive from ``extra_info["peak_bytes"]``.
Then the issue's targets, each marked met or not met.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

VARIANTS = ("naive", "dense", "capacity", "fused", "floor")
TARGET = {"pass": "fwdbwd", "N": 2048, "h": 1024, "E": 16, "k": 2}


def load(path: str) -> dict[tuple, dict[str, dict[str, float]]]:
    """``{(device, dtype, pass, N, d, h, E, k): {variant: {"median_ms": .., "peak_bytes": ..}}}``."""
    with open(path) as f:
        data = json.load(f)
    rows: dict[tuple, dict[str, dict[str, float]]] = defaultdict(dict)
    for b in data.get("benchmarks", []):
        info: dict[str, Any] = b.get("extra_info", {})
        if "variant" not in info:
            continue
        key = (info.get("device", "cpu"), info.get("dtype", "float32"), info["pass"],
               info["N"], info["d"], info["h"], info["E"], info["k"])
        rows[key][info["variant"]] = {"median_ms": b["stats"]["median"] * 1e3, "peak_bytes": info.get("peak_bytes")}
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="pytest-benchmark JSON (pytest benchmarks --benchmark-only --benchmark-json=FILE)")
    args = ap.parse_args(argv)
    rows = load(args.json)
    if not rows:
        print("no MoE benchmark results in", args.json, file=sys.stderr)
        return 1

    header = ["dev/dtype", "pass", "N", "h", "E", "k", *(f"{v} ms" for v in VARIANTS),
              "fused/naive", "fused/floor", "mem fused/naive"]
    table: list[list[str]] = []
    slower_than_naive: list[str] = []
    mem_worse: list[str] = []
    target_row: dict[str, float | None] | None = None
    order = {"fwd": 0, "fwdbwd": 1}
    for key in sorted(rows, key=lambda k: (k[0], k[1], order.get(k[2], 9), *k[3:])):
        dev, dtype, pass_, n, d, h, e, k = key
        r = rows[key]
        med = {v: r[v]["median_ms"] if v in r else None for v in VARIANTS}
        fn, ff = _ratio(med["fused"], med["naive"]), _ratio(med["fused"], med["floor"])
        mem = None
        if pass_ == "fwdbwd" and "fused" in r and "naive" in r:
            mem = _ratio(r["fused"]["peak_bytes"], r["naive"]["peak_bytes"])
        name = f"{pass_} N={n} h={h} E={e} k={k} ({dev}/{dtype})"
        if fn is not None and fn > 1.0:
            slower_than_naive.append(f"{name}: fused/naive = {fn:.2f}")
        if mem is not None and mem > 1.0:
            mem_worse.append(f"{name}: mem fused/naive = {mem:.2f}")
        if (dev, dtype) == ("cpu", "float32") and (pass_, n, h, e, k) == tuple(TARGET.values()):
            target_row = {"fused/naive": fn, "fused/floor": ff, "mem": mem}
        table.append([f"{dev}/{dtype}", pass_, str(n), str(h), str(e), str(k),
                      *(_fmt(med[v], ".1f") for v in VARIANTS), _fmt(fn, ".2f"), _fmt(ff, ".2f"), _fmt(mem, ".2f")])

    widths = [max(len(header[i]), *(len(row[i]) for row in table)) for i in range(len(header))]
    print("| " + " | ".join(h.rjust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    print("\nmedian of the timed rounds, ms; '-' = not run (skipped, see the pytest skip reasons); "
          "mem = peak bytes allocated during fwd+bwd (extra_info.peak_bytes)")

    print("\nTargets (cpu/float32):")
    if target_row is None:
        print("  fwdbwd N=2048 h=1024 E=16 k=2 not in this file")
    else:
        fn, ff = target_row["fused/naive"], target_row["fused/floor"]
        print(f"  fused <= 1.25x floor at N=2048,h=1024,E=16,k=2 fwdbwd: {_fmt(ff, '.2f')}x -> "
              f"{'met' if ff is not None and ff <= 1.25 else 'NOT met'}")
        print(f"  fused <= 0.70x naive at N=2048,h=1024,E=16,k=2 fwdbwd: {_fmt(fn, '.2f')}x -> "
              f"{'met' if fn is not None and fn <= 0.70 else 'NOT met'}")
    print(f"  fused never slower than naive: {'met' if not slower_than_naive else 'NOT met'}")
    for s in slower_than_naive:
        print("    " + s)
    print(f"  fwd+bwd peak memory fused <= naive: {'met' if not mem_worse else 'NOT met'}")
    for s in mem_worse:
        print("    " + s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

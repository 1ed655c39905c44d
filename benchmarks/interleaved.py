"""Re-time chosen MoE benchmark cells with the variants interleaved round by round.

pytest-benchmark times all rounds of one variant before the next, so on a shared machine whose speed drifts
(the 2-core CI box: the dense floor alone moved by +-20 % within one full-grid run) two variants of the same
cell can see different machines. Here every round runs naive, fused and floor back to back, which cancels
the drift out of the ratios. Same problems, passes and variants as ``pytest benchmarks`` (``conftest.py``).

    python benchmarks/interleaved.py fwd:8192,1024,8,2 fwdbwd:8192,512,16,1 --rounds 15
    python benchmarks/interleaved.py          # every cell of the MERCORE_BENCH_GRID grid (default full), both passes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import PASSES, bench_grid, make_problem, pass_fn, variant_fn  # noqa: E402

VARIANTS = ("naive", "fused", "floor")


def time_cell(pass_: str, n: int, h: int, e: int, k: int, rounds: int) -> dict[str, float]:
    """Median seconds of each variant over ``rounds`` interleaved rounds (after one warm-up round)."""
    p = make_problem(n, h, e, k)
    runs = {}
    for v in VARIANTS:
        fn, grad_out = variant_fn(v, p)
        runs[v] = pass_fn(pass_, fn, grad_out, lambda: None)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds + 1):
        for v, run in runs.items():
            p.zero_grad()
            t0 = time.perf_counter()
            run()
            if r:  # round 0 is the warm-up
                times[v].append(time.perf_counter() - t0)
    p.zero_grad()
    return {v: statistics.median(ts) for v, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="*", help="PASS:N,h,E,k with PASS fwd or fwdbwd (d = 256); default: the grid")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    print("| pass | N | h | E | k | naive ms | fused ms | floor ms | fused/naive | fused/floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cells = args.cells or [f"{ps}:{n},{h},{e},{k}" for ps in PASSES for n, h, e, k in bench_grid()]
    slower = []
    for cell in cells:
        pass_, _, dims = cell.partition(":")
        if pass_ not in ("fwd", "fwdbwd"):
            ap.error(f"{cell!r}: PASS must be fwd or fwdbwd")
        n, h, e, k = (int(v) for v in dims.split(","))
        m = time_cell(pass_, n, h, e, k, args.rounds)
        print(f"| {pass_} | {n} | {h} | {e} | {k} | {m['naive'] * 1e3:.1f} | {m['fused'] * 1e3:.1f} | "
              f"{m['floor'] * 1e3:.1f} | {m['fused'] / m['naive']:.2f} | {m['fused'] / m['floor']:.2f} |", flush=True)
        if m["fused"] > m["naive"]:
            slower.append(f"{cell} ({m['fused'] / m['naive']:.2f}x)")
    print(f"\nfused slower than naive in {len(slower)} of {len(cells)} cells" + (": " + ", ".join(slower) if slower else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-time chosen MoE benchmark cells with the variants interleaved round by round.

pytest-benchmark times all rounds of one variant before the next, so on a shared machine whose speed drifts
(the 2-core CI box: the dense floor alone moved by +-20 % within one full-grid run) two variants of the same
cell can see different machines. Here every round runs naive, fused and floor back to back, which cancels
the drift out of the ratios. Same problems, passes and variants as ``pytest benchmarks`` (``conftest.py``).

    python benchmarks/interleaved.py fwd:8192,1024,8,2 fwdbwd:8192,512,16,1 --rounds 15
    python benchmarks/interleaved.py --cells issue13 --rounds 15   # the 7 cells of issue 13's table, in its order
    python benchmarks/interleaved.py          # every cell of the MERCORE_BENCH_GRID grid (default full), both passes

The output starts with the machine (CPU model, ISA, threads, torch's BLAS/oneDNN: ``machine_info.py``) and the
``mercore`` it imported, so a table says what it measured. It imports nothing from ``mercore`` but
``fused_moe`` / ``naive_moe``, so the same script times any checkout's kernel (before/after comparisons).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import PASSES, bench_grid, make_problem, pass_fn, variant_fn  # noqa: E402
from machine_info import machine_header  # noqa: E402

VARIANTS = ("naive", "fused", "floor")

# Named cell lists for --cells (PASS:N,h,E,k[@ROUNDS], d = 256). issue13: the 7 rows of issue 13's table, in
# its order (the target cell twice: with --rounds, then with 25 rounds as the issue re-ran it).
CELL_SETS: dict[str, tuple[str, ...]] = {
    "issue13": (
        "fwdbwd:2048,1024,16,2",
        "fwdbwd:2048,1024,16,2@25",
        "fwd:2048,1024,16,2",
        "fwdbwd:512,1024,16,2",
        "fwdbwd:2048,512,8,1",
        "fwdbwd:8192,1024,8,2",
        "fwd:8192,1024,8,2",
    ),
}


def _mercore_line() -> str:
    """Which mercore the kernel came from (its path, and the kernel's CPU tuning where it has one)."""
    import mercore

    line = f"mercore: {Path(mercore.__file__).resolve().parent}"
    try:
        from mercore.kernels.moe.cpu_tuning import cpu_tuning
    except ImportError:  # a checkout from before the derived tuning
        return line + " (no mercore.kernels.moe.cpu_tuning: fixed CPU_BLOCK_BYTES)"
    t = cpu_tuning()
    return (line + f"; kernel CPU tuning: L2 {t.caches.l2_bytes >> 10} KiB/core, L3 {t.caches.l3_bytes >> 10} KiB "
            f"over {t.caches.l3_sharers} CPUs ({t.caches.source}), block budget {t.block_bytes >> 10} KiB")


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
    ap.add_argument("cells", nargs="*", help="PASS:N,h,E,k[@ROUNDS] with PASS fwd or fwdbwd (d = 256; ROUNDS "
                                             "overrides --rounds for that cell); default: the grid")
    ap.add_argument("--cells", dest="cell_set", choices=sorted(CELL_SETS),
                    help="a named list of cells (issue13: issue 13's table) instead of positional cells")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--list", action="store_true", help="print the cells that would be timed, one a line, and exit")
    args = ap.parse_args(argv)
    if args.cell_set and args.cells:
        ap.error("give either --cells NAME or positional cells, not both")
    cells = list(CELL_SETS[args.cell_set]) if args.cell_set else args.cells
    cells = cells or [f"{ps}:{n},{h},{e},{k}" for ps in PASSES for n, h, e, k in bench_grid()]
    if args.list:
        print("\n".join(cells))
        return 0
    print(machine_header())
    print(_mercore_line())
    print(f"median of {args.rounds} interleaved rounds after one warm-up round\n", flush=True)
    print("| pass | N | h | E | k | naive ms | fused ms | floor ms | fused/naive | fused/floor | rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    slower = []
    for cell in cells:
        pass_, _, spec = cell.partition(":")
        if pass_ not in ("fwd", "fwdbwd"):
            ap.error(f"{cell!r}: PASS must be fwd or fwdbwd")
        dims, _, rounds_text = spec.partition("@")
        try:
            n, h, e, k = (int(v) for v in dims.split(","))
            rounds = int(rounds_text) if rounds_text else args.rounds
        except ValueError:
            ap.error(f"{cell!r}: expected PASS:N,h,E,k or PASS:N,h,E,k@ROUNDS with integers")
        m = time_cell(pass_, n, h, e, k, rounds)
        print(f"| {pass_} | {n} | {h} | {e} | {k} | {m['naive'] * 1e3:.1f} | {m['fused'] * 1e3:.1f} | "
              f"{m['floor'] * 1e3:.1f} | {m['fused'] / m['naive']:.2f} | {m['fused'] / m['floor']:.2f} | {rounds} |", flush=True)
        if m["fused"] > m["naive"]:
            slower.append(f"{cell} ({m['fused'] / m['naive']:.2f}x)")
    print(f"\nfused slower than naive in {len(slower)} of {len(cells)} cells" + (": " + ", ".join(slower) if slower else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

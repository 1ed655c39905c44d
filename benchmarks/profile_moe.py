"""Where the time of an MoE benchmark cell goes: torch.profiler per op, forward and backward separately.

    python benchmarks/profile_moe.py                          # fused and floor at the issue-13 cells N=2048 and 512
    python benchmarks/profile_moe.py 2048,1024,16,2 --variants fused naive floor --top 12 --rounds 5

For each cell (``N,h,E,k``, d = 256, the problems of ``conftest.py``) and variant, the forward (grad enabled, the
first half of a fwd+bwd step) and the backward are profiled apart, over ``--rounds`` runs after two warm-ups,
and the top operations by self CPU time are printed as a Markdown table (self ms per run, share of the pass,
calls per run). The op *shares* are fairly stable on a loaded machine; the absolute times are not (a busy box
stretches them), so compare shares and call counts across runs, and time with ``interleaved.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_problem, variant_fn  # noqa: E402
from machine_info import machine_header  # noqa: E402

DEFAULT_CELLS = ("2048,1024,16,2", "512,1024,16,2")


def _op_table(prof, rounds: int, top: int) -> tuple[float, list[tuple[str, float, float]]]:
    """Total self CPU ms per run and the ``top`` ops as (name, self ms per run, calls per run)."""
    events = [ev for ev in prof.key_averages() if ev.self_cpu_time_total > 0]
    total_us = sum(ev.self_cpu_time_total for ev in events)
    events.sort(key=lambda ev: ev.self_cpu_time_total, reverse=True)
    rows = [(ev.key, ev.self_cpu_time_total / 1e3 / rounds, ev.count / rounds) for ev in events[:top]]
    return total_us / 1e3 / rounds, rows


def profile_cell(n: int, h: int, e: int, k: int, variant: str, rounds: int, top: int) -> str:
    """Markdown: the forward's and the backward's top ops of one variant at one cell."""
    p = make_problem(n, h, e, k)
    fn, grad_out = variant_fn(variant, p)
    for _ in range(2):  # warm-up: thread pools, allocator caches, lazily built state
        p.zero_grad()
        fn().backward(grad_out)
    outs = []
    with profile(activities=[ProfilerActivity.CPU]) as prof_fwd:
        for _ in range(rounds):
            outs.append(fn())
    with profile(activities=[ProfilerActivity.CPU]) as prof_bwd:
        for out in outs:
            p.zero_grad()  # every run writes fresh gradients, as in a training step (no accumulation)
            out.backward(grad_out)
    p.zero_grad()
    lines = []
    for name, prof in (("fwd", prof_fwd), ("bwd", prof_bwd)):
        total, rows = _op_table(prof, rounds, top)
        lines += [f"**{variant} {name}** N={n} h={h} E={e} k={k}: {total:.1f} ms self CPU per run", "",
                  "| op | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{op}` | {ms:.2f} | {ms / total:.0%} | {calls:g} |" for op, ms, calls in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="*", default=list(DEFAULT_CELLS), help="N,h,E,k (d = 256)")
    ap.add_argument("--variants", nargs="+", default=["fused", "floor"], choices=["naive", "fused", "floor"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads first (1 gives a clean op account on a busy machine, where every "
                         "parallel region of a 2-thread run waits for a descheduled thread)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_header(), "\n", flush=True)
    for cell in args.cells:
        n, h, e, k = (int(v) for v in cell.split(","))
        for variant in args.variants:
            print(profile_cell(n, h, e, k, variant, args.rounds, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

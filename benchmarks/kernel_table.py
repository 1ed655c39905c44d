"""The MoE kernel table of issue 11 in one run: naive / fused / grouped-only / floor at the MERC, Mixtral and
fine-grained sizes, forward (no grad) and forward+backward, with peak memory; a Markdown table out.

    python benchmarks/kernel_table.py                      # CUDA, bfloat16, the issue's sizes (~2-3 min on an H200)
    python benchmarks/kernel_table.py --device cpu --quick # small sizes on the CPU (seconds): checks the script

Times are medians over ``--rounds`` timed rounds after one warm-up round, every variant of a cell interleaved
round by round (a shared machine's drift cancels out of the ratios). ``floor`` is one dense matmul pair (GLU:
triple) of the same useful FLOPs; ``grouped-only`` is ``torch._grouped_mm`` on rows already sorted by expert
(the matmuls with no routing; ``-`` where it cannot run). Peak memory is the high-water mark of bytes allocated
during one run above what was allocated before it (CUDA allocator stats; on the CPU the torch profiler).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import mercore  # noqa: F401
except ImportError:  # running from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_variants import floor_matmul, grouped_only  # noqa: E402

from mercore.kernels.moe import fused_moe, grouped_mm_available, naive_moe  # noqa: E402
from mercore.kernels.profiling import cpu_peak_bytes, cuda_peak_bytes  # noqa: E402


@dataclass(frozen=True)
class Size:
    name: str
    n: int
    d: int
    h: int
    e: int
    k: int
    glu: bool

    @property
    def label(self) -> str:
        return f"{self.name}: N={self.n} d={self.d} h={self.h} E={self.e} k={self.k}" + (" GLU" if self.glu else "")


# Issue 11's table; the quick sizes keep each one's shape (GLU, E, k) at a size a CPU runs in a moment.
SIZES = (
    Size("MERC", 2048, 256, 1024, 16, 2, False),
    Size("Mixtral", 8192, 4096, 14336, 8, 2, True),
    Size("fine-grained", 8192, 2048, 1408, 64, 6, True),
    Size("fine-grained", 16384, 2048, 768, 128, 8, True),
)
QUICK_SIZES = (
    Size("MERC", 128, 64, 128, 16, 2, False),
    Size("Mixtral", 128, 128, 256, 8, 2, True),
    Size("fine-grained", 128, 64, 64, 64, 6, True),
    Size("fine-grained", 128, 64, 32, 128, 8, True),
)
VARIANTS = ("naive", "fused", "grouped-only", "floor")
PASSES = ("fwd", "fwd+bwd")


class Cell:
    """Inputs of one size, as leaves that require grad, and each variant's forward as a closure."""

    def __init__(self, s: Size, device: str, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(1234 + s.n + s.e)

        def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

        top = torch.randn(s.n, s.e, generator=g).topk(s.k, dim=-1)
        self.act = "silu" if s.glu else "gelu"
        self.x = leaf(s.n, s.d)
        self.w1, self.w2 = leaf(s.e, s.d, s.h, scale=s.d**-0.5), leaf(s.e, s.h, s.d, scale=s.h**-0.5)
        self.w3 = leaf(s.e, s.d, s.h, scale=s.d**-0.5) if s.glu else None
        self.expert_idx = top.indices.to(device)
        self.gate = top.values.softmax(-1).to(device, dtype).requires_grad_()
        self.grad_out = torch.randn(s.n, s.d, generator=g).to(device, dtype)
        # The floor and grouped-only see N*k rows (the floor: as if already gathered).
        self.x_rep = leaf(s.n * s.k, s.d)
        self.w1_1, self.w2_1 = leaf(s.d, s.h, scale=s.d**-0.5), leaf(s.h, s.d, scale=s.h**-0.5)
        self.w3_1 = leaf(s.d, s.h, scale=s.d**-0.5) if s.glu else None
        self.grad_rep = torch.randn(s.n * s.k, s.d, generator=g).to(device, dtype)
        order = self.expert_idx.reshape(-1).argsort(stable=True)
        self.x_sorted = self.x.detach()[order // s.k].clone().requires_grad_()
        counts = torch.bincount(self.expert_idx.reshape(-1), minlength=s.e)
        self.offs = counts.cumsum(0).to(torch.int32)
        self.grouped_ok = grouped_mm_available(device, dtype)

    def leaves(self) -> list[torch.Tensor]:
        ts = [self.x, self.w1, self.w2, self.w3, self.gate, self.x_rep, self.w1_1, self.w2_1, self.w3_1, self.x_sorted]
        return [t for t in ts if t is not None]

    def zero_grad(self) -> None:
        for t in self.leaves():
            t.grad = None

    def forward(self, variant: str) -> tuple[Callable[[], torch.Tensor], torch.Tensor] | None:
        """The variant's forward and the output gradient to back-propagate; None where it cannot run."""
        kw = {"w3": self.w3, "activation": self.act}
        if variant == "naive":
            return (lambda: naive_moe(self.x, self.w1, self.w2, self.expert_idx, self.gate, **kw)), self.grad_out
        if variant == "fused":
            return (lambda: fused_moe(self.x, self.w1, self.w2, self.expert_idx, self.gate, **kw)), self.grad_out
        if variant == "floor":
            return (lambda: floor_matmul(self.x_rep, self.w1_1, self.w2_1, w3_single=self.w3_1,
                                         activation=self.act)), self.grad_rep
        if variant == "grouped-only":
            if not self.grouped_ok:
                return None
            return (lambda: grouped_only(self.x_sorted, self.w1, self.w2, self.offs, **kw)), self.grad_rep
        raise ValueError(variant)


def _runner(pass_: str, fn: Callable[[], torch.Tensor], grad: torch.Tensor, sync: Callable[[], None]):
    def run() -> None:
        if pass_ == "fwd":
            with torch.no_grad():
                fn()
        else:
            fn().backward(grad)
        sync()

    return run


def measure(cell: Cell, pass_: str, rounds: int, device: str) -> dict[str, tuple[float, int] | None]:
    """``{variant: (median seconds, peak bytes)}``; None for a variant that cannot run here."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peak_of = cuda_peak_bytes if device == "cuda" else cpu_peak_bytes
    runs: dict[str, Callable[[], None]] = {}
    for v in VARIANTS:
        fwd = cell.forward(v)
        if fwd is None:
            continue
        run = _runner(pass_, *fwd, sync)
        try:
            run()  # warm-up (and: does it run at all, e.g. grouped-only's backward)
        except RuntimeError as err:
            print(f"  {v} {pass_}: skipped ({str(err).splitlines()[0]})", file=sys.stderr)
            continue
        cell.zero_grad()
        runs[v] = run
    times: dict[str, list[float]] = {v: [] for v in runs}
    for _ in range(rounds):
        for v, run in runs.items():
            cell.zero_grad()
            t0 = time.perf_counter()
            run()
            times[v].append(time.perf_counter() - t0)
    out: dict[str, tuple[float, int] | None] = {v: None for v in VARIANTS}
    for v, run in runs.items():
        cell.zero_grad()
        out[v] = (statistics.median(times[v]), peak_of(run))
    cell.zero_grad()
    return out


def _ms(m: tuple[float, int] | None) -> str:
    return "-" if m is None else f"{m[0] * 1e3:.2f}"


def _ratio(a: tuple[float, int] | None, b: tuple[float, int] | None, i: int) -> str:
    return "-" if a is None or b is None or not b[i] else f"{a[i] / b[i]:.2f}"


HEADER = ("| problem | pass | naive ms | fused ms | grouped-only ms | floor ms | fused/floor | fused/naive "
          "| naive peak MB | fused peak MB | peak fused/naive |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(size: Size, pass_: str, m: dict[str, tuple[float, int] | None]) -> str:
    mb = lambda v: "-" if m[v] is None else f"{m[v][1] / 2**20:.3g}"  # noqa: E731
    return (f"| {size.label} | {pass_} | {_ms(m['naive'])} | {_ms(m['fused'])} | {_ms(m['grouped-only'])} | "
            f"{_ms(m['floor'])} | {_ratio(m['fused'], m['floor'], 0)} | {_ratio(m['fused'], m['naive'], 0)} | "
            f"{mb('naive')} | {mb('fused')} | {_ratio(m['fused'], m['naive'], 1)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--quick", action="store_true", help="small sizes of the same shapes (seconds on a CPU)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); use --device cpu")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    lines = [f"MoE kernel, {args.device} {str(dtype).removeprefix('torch.')}, torch {torch.__version__}, "
             f"median of {args.rounds} rounds" + (" (quick sizes)" if args.quick else ""), "", HEADER]
    print("\n".join(lines), flush=True)
    for size in QUICK_SIZES if args.quick else SIZES:
        cell = Cell(size, args.device, dtype)
        for pass_ in PASSES:
            lines.append(row(size, pass_, measure(cell, pass_, args.rounds, args.device)))
            print(lines[-1], flush=True)
        del cell
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared set-up of the MoE kernel benchmarks (``pytest benchmarks --benchmark-only``).

Grid, chosen with the ``MERCORE_BENCH_GRID`` environment variable:

* ``full`` (default): N in {512, 2048, 8192} x h in {512, 1024} x E in {8, 16, 32} x k in {1, 2}, d = 256.
* ``small``: N in {512, 2048} x h = 1024 x E in {8, 16} x k in {1, 2}.
* ``target``: only the problem the issue sets targets for (N=2048, h=1024, E=16, k=2).
* ``tiny``: N=37, h=64, E=4, k in {1, 2}: checks the suite and ``report.py`` end to end in seconds.

Each problem is run for both passes (``fwd`` under ``torch.no_grad``, ``fwdbwd`` = forward + backward of all
of x, weights and gate) and every variant (naive, dense, capacity, fused, floor).
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

try:
    import mercore  # noqa: F401
except ImportError:  # running from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mercore.kernels.profiling import cpu_peak_bytes, cuda_peak_bytes  # noqa: E402

# The benchmark-only variants (moe_variants.py) sit beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

D_MODEL = 256
GRIDS: dict[str, dict[str, tuple[int, ...]]] = {
    "full": {"N": (512, 2048, 8192), "h": (512, 1024), "E": (8, 16, 32), "k": (1, 2)},
    "small": {"N": (512, 2048), "h": (1024,), "E": (8, 16), "k": (1, 2)},
    "target": {"N": (2048,), "h": (1024,), "E": (16,), "k": (2,)},
    "tiny": {"N": (37,), "h": (64,), "E": (4,), "k": (1, 2)},  # smoke test of the suite itself (tests/)
}
VARIANTS: tuple[str, ...] = ("naive", "dense", "capacity", "fused", "floor")
PASSES: tuple[str, ...] = ("fwd", "fwdbwd")
ROUNDS = 7  # median of 7 timed rounds ...
WARMUP_ROUNDS = 1  # ... after one untimed warm-up round

# Variants that would be absurd at some sizes (minutes per round or GBs of memory on a 2-core box).
DENSE_MAX_ELEMS = 2**26  # dense keeps (E, N, h) intermediates: 2^26 float32 = 256 MiB each, ~3 live in fwd+bwd
CAPACITY_MAX_ELEMS = 2**27  # capacity builds (N, E, C) dispatch + combine tensors; C*E ~ N*k, so ~N^2 k cost


def bench_grid() -> list[tuple[int, int, int, int]]:
    name = os.environ.get("MERCORE_BENCH_GRID", "full")
    if name not in GRIDS:
        raise pytest.UsageError(f"MERCORE_BENCH_GRID must be one of {sorted(GRIDS)}, got {name!r}")
    g = GRIDS[name]
    return list(itertools.product(g["N"], g["h"], g["E"], g["k"]))


@dataclass
class Problem:
    """Inputs of one benchmark problem; every floating tensor is a leaf that requires grad."""

    n: int
    d: int
    h: int
    e: int
    k: int
    x: torch.Tensor  # (N, d)
    w1: torch.Tensor  # (E, d, h)
    w2: torch.Tensor  # (E, h, d)
    expert_idx: torch.Tensor  # (N, k)
    gate: torch.Tensor  # (N, k)
    grad_out: torch.Tensor  # (N, d)
    x_rep: torch.Tensor  # (N*k, d)   floor inputs
    w1_single: torch.Tensor  # (d, h)
    w2_single: torch.Tensor  # (h, d)
    grad_out_rep: torch.Tensor  # (N*k, d)

    @property
    def max_load(self) -> int:
        return int(torch.bincount(self.expert_idx.flatten().cpu(), minlength=self.e).max())

    def leaves(self) -> list[torch.Tensor]:
        return [self.x, self.w1, self.w2, self.gate, self.x_rep, self.w1_single, self.w2_single]

    def zero_grad(self) -> None:
        for t in self.leaves():
            t.grad = None


@functools.lru_cache(maxsize=2)
def make_problem(n: int, h: int, e: int, k: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Problem:
    """Fixed-seed problem. Routing is the top-k of random router logits with softmax gates over the chosen k:
    roughly balanced loads, like a trained router's top-k (max load is a few percent to ~25% over the mean)."""
    d = D_MODEL
    g = torch.Generator().manual_seed(1234 + n + h + e + k)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

    logits = torch.randn(n, e, generator=g)
    top = logits.topk(k, dim=-1)
    return Problem(
        n=n, d=d, h=h, e=e, k=k,
        x=leaf(n, d),
        w1=leaf(e, d, h, scale=d**-0.5),
        w2=leaf(e, h, d, scale=h**-0.5),
        expert_idx=top.indices.to(device),
        gate=top.values.softmax(-1).to(device, dtype).requires_grad_(),
        grad_out=torch.randn(n, d, generator=g).to(device, dtype),
        x_rep=leaf(n * k, d),
        w1_single=leaf(d, h, scale=d**-0.5),
        w2_single=leaf(h, d, scale=h**-0.5),
        grad_out_rep=torch.randn(n * k, d, generator=g).to(device, dtype),
    )


def skip_reason(variant: str, p: Problem) -> str | None:
    if variant == "dense" and p.n * p.e * p.h > DENSE_MAX_ELEMS:
        return (f"dense skipped at N={p.n}, E={p.e}, h={p.h}: (E, N, h) intermediates of {p.n * p.e * p.h:,} "
                f"elements (> 2^26, ~3 live in fwd+bwd) and E/k = {p.e // p.k}x the useful FLOPs")
    if variant == "capacity" and p.n * p.e * p.max_load > CAPACITY_MAX_ELEMS:
        return (f"capacity skipped at N={p.n}, E={p.e}, k={p.k}: (N, E, C) dispatch/combine tensors of "
                f"{p.n * p.e * p.max_load:,} elements (> 2^27) and O(N^2 k d) dispatch einsums")
    return None


def variant_fn(variant: str, p: Problem) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """The forward of one variant as a closure, and the output gradient to back-propagate."""
    from mercore.kernels.moe import fused_moe, naive_moe
    from moe_variants import capacity_moe, dense_moe, floor_matmul

    args = (p.x, p.w1, p.w2, p.expert_idx, p.gate)
    if variant == "naive":
        return (lambda: naive_moe(*args)), p.grad_out
    if variant == "dense":
        return (lambda: dense_moe(*args)), p.grad_out
    if variant == "capacity":
        cap = p.max_load  # capacity = largest expert load: nothing is dropped, same result as the others
        return (lambda: capacity_moe(*args, capacity=cap)), p.grad_out
    if variant == "fused":
        return (lambda: fused_moe(*args)), p.grad_out
    if variant == "floor":
        return (lambda: floor_matmul(p.x_rep, p.w1_single, p.w2_single)), p.grad_out_rep
    raise ValueError(variant)


def pass_fn(pass_: str, fn: Callable[[], torch.Tensor], grad_out: torch.Tensor, sync: Callable[[], None]):
    if pass_ == "fwd":
        def run() -> None:
            with torch.no_grad():
                fn()
            sync()
    else:
        def run() -> None:
            fn().backward(grad_out)
            sync()
    return run


def run_benchmark(benchmark, variant: str, pass_: str, p: Problem, device: str, dtype: torch.dtype) -> None:
    """Time one (variant, pass, problem) with pytest-benchmark and record extra_info (incl. peak memory)."""
    reason = skip_reason(variant, p)
    if reason:
        pytest.skip(reason)
    on_cuda = device == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    fn, grad_out = variant_fn(variant, p)
    run = pass_fn(pass_, fn, grad_out, sync)
    prefix = "" if not on_cuda else f"cuda-{str(dtype).removeprefix('torch.')} "
    benchmark.group = f"{prefix}{pass_} N={p.n} h={p.h} E={p.e} k={p.k}"
    benchmark.extra_info.update(
        {"variant": variant, "pass": pass_, "N": p.n, "d": p.d, "h": p.h, "E": p.e, "k": p.k,
         "device": device, "dtype": str(dtype).removeprefix("torch.")}
    )
    # Untimed: peak memory of one run (after the warm-up inside pedantic would be equally fine; a run is a run).
    p.zero_grad()
    benchmark.extra_info["peak_bytes"] = (cuda_peak_bytes if on_cuda else cpu_peak_bytes)(run)
    benchmark.pedantic(
        run, setup=p.zero_grad, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1
    )
    p.zero_grad()


# ------------------------------------------------------------------------------------------------- pytest hooks


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Name the machine in the JSON (``machine_info["mercore"]``): CPU model, ISA, threads, torch's BLAS/oneDNN
    (``machine_info.py``), so a stored result says which CPU it was measured on."""
    from machine_info import machine_info as describe

    machine_info["mercore"] = describe()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "moe_cuda: MoE benchmark on CUDA in bfloat16 (h = 1024 problems only)")


def _problem_id(problem: tuple[int, int, int, int]) -> str:
    n, h, e, k = problem
    return f"N{n}-h{h}-E{e}-k{k}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize MoE benchmarks over (problem, pass_, variant). The order makes pytest run all variants of one
    (problem, pass) back to back, so they see the same machine state (a shared 2-core box drifts)."""
    if "moe_problem" not in metafunc.fixturenames:
        return
    grid = bench_grid()
    if metafunc.definition.get_closest_marker("moe_cuda"):
        grid = [pb for pb in grid if pb[1] == 1024]
    metafunc.parametrize("moe_problem", grid, ids=_problem_id)
    metafunc.parametrize("moe_pass", PASSES)
    metafunc.parametrize("moe_variant", VARIANTS)


@pytest.fixture
def moe_bench(benchmark, moe_problem: tuple[int, int, int, int], moe_pass: str, moe_variant: str):
    """Call as ``moe_bench(device, dtype)`` to benchmark the parametrized (problem, pass, variant)."""

    def go(device: str, dtype: torch.dtype) -> None:
        n, h, e, k = moe_problem
        run_benchmark(benchmark, moe_variant, moe_pass, make_problem(n, h, e, k, device, dtype), device, dtype)

    return go

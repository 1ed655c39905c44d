"""Correctness of the fused MoE kernel (mercore.kernels.moe) against the naive Hugging Face style loop.

Every variant must give the same outputs and the same gradients for x, w1, w2, b1, b2, w3 and gate. Sizes are
tiny: the whole file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import functools
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercore.kernels import moe
from mercore.kernels.moe import (
    ACTIVATIONS,
    fused_moe,
    fused_moe_flat,
    grouped_mm_available,
    naive_moe,
    padded_to_flat,
)
from mercore.kernels.moe import padded
from support import benchmark_module


_variants = benchmark_module("moe_variants")  # the benchmark-only variants (dense, capacity, floor)
capacity_moe, dense_moe, floor_matmul = _variants.capacity_moe, _variants.dense_moe, _variants.floor_matmul

# "padded-blocks" is the padded layout with CPU cache blocking forced down to one expert per block, so that the
# tiny test problems walk several blocks (real ones only do from R*h*4 > CPU_BLOCK_BYTES).
# "sync_free" is the CUDA path forced on the CPU (where torch._grouped_mm runs there).
IMPLS = ["auto", "padded", "padded-blocks"] + (
    ["grouped", "sync_free"] if grouped_mm_available("cpu", torch.float32) else [])


def make_problem(
    n: int,
    d: int,
    h: int,
    e: int,
    k: int,
    *,
    bias: bool = False,
    glu: bool = False,
    drop: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Random inputs (all leaves requiring grad) and top-k routing with a fraction ``drop`` of slots set to -1."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    logits = torch.randn(n, e, generator=g)
    top = logits.topk(k, dim=-1)
    expert_idx = top.indices
    if drop > 0:
        expert_idx = torch.where(torch.rand(n, k, generator=g) < drop, -1, expert_idx)
    gate = top.values.softmax(-1).to(device=device, dtype=dtype).requires_grad_()
    p = {
        "x": rnd(n, d),
        "w1": rnd(e, d, h, scale=d**-0.5),
        "w2": rnd(e, h, d, scale=h**-0.5),
        "expert_idx": expert_idx.to(device),
        "gate": gate,
        "b1": rnd(e, h, scale=0.1) if bias else None,
        "b2": rnd(e, d, scale=0.1) if bias else None,
        "w3": rnd(e, d, h, scale=d**-0.5) if glu else None,
    }
    return p


def leaves(p: dict) -> list[str]:
    return [name for name in ("x", "w1", "w2", "gate", "b1", "b2", "w3") if p[name] is not None]


@contextlib.contextmanager
def blocking(kw: dict):
    """Maps the test-only impl "padded-blocks" in ``kw`` to "padded" with one expert per cache block."""
    block_bytes = padded.CPU_BLOCK_BYTES
    if kw.get("impl") == "padded-blocks":
        kw["impl"], block_bytes = "padded", 1
    with mock.patch.object(padded, "CPU_BLOCK_BYTES", block_bytes):
        yield


def run(fn, p: dict, activation: str = "gelu", seed: int = 1, **kw) -> dict[str, torch.Tensor]:
    """Output and gradients of every leaf for a fixed random output gradient."""
    with blocking(kw):
        out = fn(
            p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"],
            b1=p["b1"], b2=p["b2"], w3=p["w3"], activation=activation, **kw,
        )
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    names = leaves(p)
    if out.requires_grad:
        grads = torch.autograd.grad(out, [p[n] for n in names], grad_out, allow_unused=True)
    else:  # the naive loop with no routed token never touches the inputs
        grads = (None,) * len(names)
    res = {"out": out.detach()}
    for n, gr in zip(names, grads):
        res[n] = torch.zeros_like(p[n]) if gr is None else gr
    return res


def assert_match(got: dict, ref: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        a, b = got[name].float(), ref[name].float()
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "n,d,h,e,k",
    [(1, 8, 16, 4, 1), (13, 8, 12, 3, 2), (37, 16, 24, 5, 2), (64, 32, 48, 8, 3), (101, 24, 40, 7, 1)],
)
def test_fused_matches_naive_shapes(impl: str, n: int, d: int, h: int, e: int, k: int) -> None:
    p = make_problem(n, d, h, e, k, seed=n)
    assert_match(run(fused_moe, p, impl=impl), run(naive_moe, p))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,glu", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_matches_naive_options(impl: str, activation: str, bias: bool, glu: bool) -> None:
    p = make_problem(29, 16, 24, 6, 2, bias=bias, glu=glu, drop=0.2, seed=3)
    assert_match(run(fused_moe, p, activation, impl=impl), run(naive_moe, p, activation))


@settings(max_examples=int(os.environ.get("MERCORE_FUZZ_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 20),
    h=st.integers(1, 20),
    e=st.integers(1, 9),
    k=st.integers(1, 3),
    drop=st.sampled_from([0.0, 0.3, 1.0]),
    bias=st.booleans(),
    glu=st.booleans(),
    activation=st.sampled_from(ACTIVATIONS),
    impl=st.sampled_from(IMPLS),
    seed=st.integers(0, 2**16),
)
def test_fused_matches_naive_hypothesis(n, d, h, e, k, drop, bias, glu, activation, impl, seed) -> None:
    k = min(k, e)
    if impl in ("grouped", "sync_free"):  # the grouped GEMM needs 16-byte aligned rows
        d, h = -(-d // 4) * 4, -(-h // 4) * 4
    p = make_problem(n, d, h, e, k, bias=bias, glu=glu, drop=drop, seed=seed)
    assert_match(run(fused_moe, p, activation, impl=impl), run(naive_moe, p, activation))


# ------------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,glu", [(False, False), (True, True)])
def test_gradcheck_float64(activation: str, bias: bool, glu: bool) -> None:
    # float64 has no _grouped_mm, so this exercises the padded path (the auto fallback) end to end.
    p = make_problem(5, 3, 4, 3, 2, bias=bias, glu=glu, dtype=torch.float64, seed=7)
    p["expert_idx"][1, 1] = -1  # a variable number of experts per token
    if activation == "relu":  # keep pre-activations away from the kink for finite differences
        with torch.no_grad():
            p["x"].mul_(3)
    names = leaves(p)

    def f(*args: torch.Tensor) -> torch.Tensor:
        q = dict(p, **dict(zip(names, args)))
        return fused_moe(q["x"], q["w1"], q["w2"], q["expert_idx"], q["gate"],
                         b1=q["b1"], b2=q["b2"], w3=q["w3"], activation=activation)

    assert torch.autograd.gradcheck(f, [p[n] for n in names], eps=1e-6, atol=1e-6)


def test_gradcheck_grouped_float32_vs_float64_reference() -> None:
    # The grouped path runs float32 only; check its gradients against a float64 naive reference.
    if not grouped_mm_available("cpu", torch.float32):
        pytest.skip("torch._grouped_mm is not usable on this CPU build")
    p32 = make_problem(23, 12, 20, 5, 2, bias=True, glu=True, drop=0.2, seed=11)
    p64 = {n: (v.detach().double().requires_grad_() if v is not None and v.is_floating_point() else v)
           for n, v in p32.items()}
    assert_match(run(fused_moe, p32, impl="grouped"), run(naive_moe, p64), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_experts(impl: str) -> None:
    p = make_problem(20, 8, 12, 6, 2, bias=True, seed=5)
    # Route only to experts 1 and 4: experts 0, 2, 3, 5 get no tokens (their weight grads must be exact zeros).
    p["expert_idx"] = torch.stack([torch.full((20,), 1), torch.full((20,), 4)], dim=1)
    got = run(fused_moe, p, impl=impl)
    assert_match(got, run(naive_moe, p))
    for name in ("w1", "w2", "b1", "b2"):
        assert torch.count_nonzero(got[name][[0, 2, 3, 5]]) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_single_token(impl: str) -> None:
    p = make_problem(1, 8, 12, 4, 2, bias=True, glu=True, seed=2)
    assert_match(run(fused_moe, p, impl=impl), run(naive_moe, p))


@pytest.mark.parametrize("impl", IMPLS)
def test_all_tokens_to_one_expert(impl: str) -> None:
    p = make_problem(33, 8, 12, 5, 1, seed=4)
    p["expert_idx"] = torch.full((33, 1), 3)
    assert_match(run(fused_moe, p, impl=impl), run(naive_moe, p))


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_entries_variable_experts_per_token(impl: str) -> None:
    p = make_problem(16, 8, 12, 6, 3, seed=6)
    idx = p["expert_idx"].clone()
    idx[0] = -1  # token with no expert at all: output row must be zero
    idx[1, 1:] = -1  # one expert
    idx[2, 0] = -1  # -1 first, then two experts
    p["expert_idx"] = idx
    got = run(fused_moe, p, impl=impl)
    assert_match(got, run(naive_moe, p))
    assert torch.count_nonzero(got["out"][0]) == 0
    assert torch.count_nonzero(got["gate"][idx < 0]) == 0  # ignored slots get no gate gradient


@pytest.mark.parametrize("impl", IMPLS)
def test_no_valid_assignment(impl: str) -> None:
    p = make_problem(7, 8, 12, 3, 2, bias=True, seed=8)
    p["expert_idx"] = torch.full((7, 2), -1)
    got = run(fused_moe, p, impl=impl)
    assert_match(got, run(naive_moe, p))
    assert all(torch.count_nonzero(v) == 0 for v in got.values())


@pytest.mark.parametrize("impl", IMPLS)
def test_balanced_loads_with_padding_entries(impl: str) -> None:
    # Every expert equally loaded (no padding row in the padded layout) while some slots are -1.
    p = make_problem(6, 8, 12, 2, 2, bias=True, seed=17)
    p["expert_idx"] = torch.tensor([[0, 1], [1, 0], [-1, -1], [0, 1], [-1, 0], [1, -1]])
    assert_match(run(fused_moe, p, impl=impl), run(naive_moe, p))


@pytest.mark.parametrize("impl", IMPLS)
def test_flat_form_matches_padded(impl: str) -> None:
    p = make_problem(19, 8, 12, 5, 2, drop=0.25, seed=9)
    token_idx, expert_idx, weight = padded_to_flat(p["expert_idx"], p["gate"])
    # Shuffle the flat list: the kernel must not depend on assignment order.
    perm = torch.randperm(token_idx.numel(), generator=torch.Generator().manual_seed(0))
    kw = {"impl": impl}
    with blocking(kw):
        flat = fused_moe_flat(p["x"], p["w1"], p["w2"], token_idx[perm], expert_idx[perm], weight[perm], **kw)
    ref = run(naive_moe, p)
    got = torch.autograd.grad(flat, [p["x"], p["w1"], p["gate"]], torch.ones_like(flat))
    ref_g = torch.autograd.grad(naive_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"]),
                                [p["x"], p["w1"], p["gate"]], torch.ones_like(flat))
    torch.testing.assert_close(flat.detach(), ref["out"], rtol=1e-4, atol=1e-5)
    for a, b in zip(got, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_block", [1, 2, 3])
def test_cache_blocks_have_their_own_capacity(per_block: int) -> None:
    """The padded layout walks experts in cache-sized blocks; each block pads only to its own largest load, and
    fused results equal the naive loop's whatever the blocking (uneven loads, an empty expert, a short last block)."""
    e, d, h = 7, 8, 12
    p = make_problem(40, d, h, e, 2, bias=True, glu=True, seed=21)
    idx = p["expert_idx"].clone()
    idx[idx == 3] = 4  # expert 3 empty
    idx[:12, 0] = 0  # expert 0 heavily loaded
    p["expert_idx"] = idx
    counts = [int((idx == i).sum()) for i in range(e)]
    row_bytes = h * 4
    budget = per_block * max(counts) * row_bytes
    with mock.patch.object(padded, "CPU_BLOCK_BYTES", budget), mock.patch("torch.get_num_threads", return_value=1):
        routing = moe.sort_assignments(*padded_to_flat(idx, p["gate"])[:2], e, 40, 2)
        layout = padded.PaddedLayout(routing, padded.block_spans(routing, row_bytes))
        got = run(fused_moe, p, impl="padded")
    spans = [(b.experts.start, b.experts.stop) for b in layout.blocks]
    assert spans == [(e0, min(e0 + per_block, e)) for e0 in range(0, e, per_block)]
    caps = [max(max(counts[e0:e1]), 1) for e0, e1 in spans]
    assert layout.num_rows == sum((e1 - e0) * c for (e0, e1), c in zip(spans, caps))
    assert_match(got, run(naive_moe, p))


@pytest.mark.parametrize(
    "num_experts,threads,budget_runs,expected",
    [
        (8, 2, 8, 8),  # everything fits: one block
        (6, 4, 6, 6),  # all experts fit although 6 is not a multiple of 4 threads: one block
        (16, 2, 14, 8),  # room for 14: two blocks; runs of 8 pad least (loads alternate 3, 10)
        (16, 2, 4, 4),  # room for 4: four blocks of 4
        (8, 2, 3, 2),  # runs are multiples of the thread count: room for 3 on 2 threads gives 2
        (7, 2, 6, 4),  # 7 experts, room for 6 on 2 threads: two blocks, the first 4 (7/2 rounded up to 2s)
        (8, 4, 3, 1),  # room for less than the thread count: one expert per block
        (5, 1, 2, 2),  # one thread: runs of 2, 2, 1
    ],
)
def test_block_run_length_from_cache_and_threads(num_experts, threads, budget_runs, expected) -> None:
    counts = [3, 10] * (num_experts // 2) + [10] * (num_experts % 2)  # the budget is sized at the largest load
    row_bytes = 64
    budget = budget_runs * max(counts) * row_bytes
    with mock.patch.object(padded, "CPU_BLOCK_BYTES", budget), \
            mock.patch("torch.get_num_threads", return_value=threads):
        assert padded.experts_per_block(counts, row_bytes, torch.device("cpu")) == expected
        assert padded.experts_per_block(counts, 0, torch.device("cpu")) == num_experts  # no blocking asked for


def test_block_runs_of_the_same_count_pick_the_least_padding() -> None:
    """Room for 14 of 16 experts on 2 threads: runs of 8, 10, 12 or 14 all make two blocks; the loads make 12 + 4
    pad least (the light experts 12-15 share a block)."""
    counts = [60] * 12 + [20] * 4
    with mock.patch.object(padded, "CPU_BLOCK_BYTES", 14 * 60 * 64), \
            mock.patch("torch.get_num_threads", return_value=2):
        assert padded.experts_per_block(counts, 64, torch.device("cpu")) == 12
    assert padded.padded_rows(counts, 12) == 12 * 60 + 4 * 20 < padded.padded_rows(counts, 8) == 8 * 60 + 8 * 60


def test_block_budget_is_derived_from_the_machine_unless_set() -> None:
    from mercore.kernels.moe.cpu_tuning import cpu_tuning

    with mock.patch.object(padded, "CPU_BLOCK_BYTES", None):
        assert padded.block_budget_bytes() == cpu_tuning().block_bytes > 0
    with mock.patch.object(padded, "CPU_BLOCK_BYTES", 12345):
        assert padded.block_budget_bytes() == 12345


def test_input_validation() -> None:
    p = make_problem(4, 8, 12, 3, 2)
    with pytest.raises(ValueError, match="activation"):
        fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], activation="tanh")
    with pytest.raises(ValueError, match="num_experts"):
        fused_moe(p["x"], p["w1"], p["w2"], torch.full((4, 2), 3), p["gate"])
    with pytest.raises(ValueError, match=r"\[-1, E\)"):
        fused_moe(p["x"], p["w1"], p["w2"], torch.full((4, 2), -2), p["gate"])
    with pytest.raises(ValueError, match="shape"):
        fused_moe(p["x"], p["w1"], p["w1"], p["expert_idx"], p["gate"])
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'grouped', 'padded', 'sync_free'\), got 'bmm'"):
        fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"], impl="bmm")


def test_fused_peak_memory_below_naive() -> None:
    """Peak bytes allocated during forward + backward (profiler-measured, the benchmark's measure): the fused
    kernel keeps act(pre) only until the w2 gradient is taken and works in place, so it peaks below the naive
    loop's autograd graph (which keeps x[token], pre, act(pre) and y per expert, plus per-expert weight-slice
    gradients). Benchmark proportions (d = 256, h = 4d); with d much smaller than h the padded layout's zero rows
    can put it a little above the naive peak (about 13% at d=64, h=256, E=8)."""
    from mercore.kernels.profiling import cpu_peak_bytes

    p = make_problem(1024, 256, 1024, 16, 2, seed=10)
    grad_out = torch.randn(1024, 256, generator=torch.Generator().manual_seed(3))

    def peak(fn) -> int:
        def go() -> None:
            fn(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"]).backward(grad_out)

        go()  # warm-up: lazily built state (thread pools, caches) is not charged to either side
        for name in leaves(p):
            p[name].grad = None
        return cpu_peak_bytes(go)

    naive = peak(naive_moe)
    for impl in IMPLS:
        kw = {"impl": impl}
        with blocking(kw):
            assert peak(functools.partial(fused_moe, **kw)) < naive, impl


def test_fused_backward_twice_with_retained_graph() -> None:
    """The kept activation is dropped after the first backward; a second one (retain_graph) recomputes it."""
    p = make_problem(40, 16, 32, 4, 2, seed=11)
    out = fused_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"])
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, [p["x"], p["w1"], p["w2"], p["gate"]], g, retain_graph=True)
    second = torch.autograd.grad(out, [p["x"], p["w1"], p["w2"], p["gate"]], g)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------- dtypes, devices


def test_bfloat16_forward_close_to_float32() -> None:
    p32 = make_problem(48, 32, 64, 6, 2, bias=True, seed=12)
    ref = run(naive_moe, p32)["out"]
    pbf = {n: (v.detach().bfloat16().requires_grad_() if v is not None and v.is_floating_point() else v)
           for n, v in p32.items()}
    for impl in IMPLS:
        got = run(fused_moe, pbf, impl=impl)
        assert got["out"].dtype == torch.bfloat16
        assert got["w1"].dtype == torch.bfloat16 and got["gate"].dtype == torch.bfloat16
        torch.testing.assert_close(got["out"].float(), ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())
        assert torch.isfinite(got["x"].float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    p_cpu = make_problem(70, 32, 64, 8, 2, bias=True, glu=True, drop=0.2, seed=13)
    p_gpu = {n: (v.detach().to("cuda", dtype).requires_grad_() if v is not None and v.is_floating_point()
                 else (v.cuda() if v is not None else None)) for n, v in p_cpu.items()}
    ref = run(naive_moe, p_cpu)
    for impl in ("auto", "padded"):
        got = {n: v.cpu() for n, v in run(fused_moe, p_gpu, impl=impl).items()}
        tol = 1e-3 if dtype == torch.float32 else 5e-2  # TF32 may be on for float32 matmuls
        assert_match(got, ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------- other variants


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias,glu", [(False, False), (True, True)])
def test_dense_and_capacity_match_naive(activation: str, bias: bool, glu: bool) -> None:
    p = make_problem(31, 12, 20, 5, 2, bias=bias, glu=glu, drop=0.2, seed=14)
    ref = run(naive_moe, p, activation)
    assert_match(run(dense_moe, p, activation), ref)
    load = int(torch.bincount(p["expert_idx"][p["expert_idx"] >= 0], minlength=5).max())
    assert_match(run(capacity_moe, p, activation, capacity=load), ref)  # capacity = largest load: dropless
    assert_match(run(capacity_moe, p, activation, capacity_factor=4.0), ref)


def test_capacity_drops_overflow_in_gshard_order() -> None:
    p = make_problem(12, 8, 12, 3, 2, seed=15)
    p["expert_idx"] = torch.tensor([[0, 1]] * 12)
    cap = 5
    got = run(capacity_moe, p, capacity=cap)
    # GShard priority: first choices of all tokens, then second choices; per expert, tokens in order.
    kept = p["expert_idx"].clone()
    kept[cap:, 0] = -1  # expert 0 keeps the first 5 tokens' first choices
    kept[cap:, 1] = -1  # expert 1 keeps the first 5 tokens' second choices
    assert_match(got, run(naive_moe, dict(p, expert_idx=kept)))


def test_floor_matmul_is_one_expert_pair() -> None:
    p = make_problem(9, 8, 12, 1, 1, seed=16)
    p["gate"] = torch.ones(9, 1)
    ref = naive_moe(p["x"], p["w1"], p["w2"], p["expert_idx"], p["gate"])
    torch.testing.assert_close(floor_matmul(p["x"], p["w1"][0], p["w2"][0]), ref)

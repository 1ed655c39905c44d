"""The MoE variants the kernel is measured against (benchmark-side only; the correctness reference
:func:`mercore.kernels.moe.naive_moe` stays in the package). Same arguments and result as ``fused_moe``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from mercore.kernels.moe.activations import Activation, act
from mercore.kernels.moe.checks import check_shapes

__all__ = ["capacity_moe", "dense_moe", "floor_matmul", "grouped_only"]


def _dense_gate(expert_idx: Tensor, gate: Tensor, num_experts: int) -> Tensor:
    """``(N, k)`` padded routing -> ``(N, E)`` gate matrix (zero where not routed), differentiable in ``gate``."""
    valid = expert_idx >= 0
    col = torch.where(valid, expert_idx, torch.full_like(expert_idx, num_experts))
    g = gate.new_zeros(gate.shape[0], num_experts + 1).scatter_add(1, col, gate)
    return g[:, :num_experts]


def dense_moe(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    expert_idx: Tensor,
    gate: Tensor,
    *,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    w3: Tensor | None = None,
    activation: Activation = "gelu",
) -> Tensor:
    """Every expert on every token (``(E, N, h)`` intermediates, ``E / k`` times the useful FLOPs), then the
    ``(N, E)`` gate matrix masks and combines."""
    num_experts, _, _ = check_shapes(x, w1, w2, b1, b2, w3, activation)
    pre = einsum(x, w1, "n d, e d h -> e n h")
    if b1 is not None:
        pre = pre + b1.unsqueeze(1)
    a = act(activation, pre)
    if w3 is not None:
        a = a * einsum(x, w3, "n d, e d h -> e n h")
    y = einsum(a, w2, "e n h, e h d -> e n d")
    if b2 is not None:
        y = y + b2.unsqueeze(1)
    g = _dense_gate(expert_idx, gate, num_experts).to(y.dtype)
    return einsum(y, g, "e n d, n e -> n d")


def capacity_moe(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    expert_idx: Tensor,
    gate: Tensor,
    *,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    w3: Tensor | None = None,
    activation: Activation = "gelu",
    capacity_factor: float = 1.25,
    capacity: int | None = None,
) -> Tensor:
    """GShard-style fixed-capacity MoE: one-hot ``(N, E, C)`` dispatch and combine tensors and einsums.

    Each expert gets ``C = capacity`` or ``ceil(capacity_factor * N * k / E)`` slots. Slots are filled in GShard
    priority order (every token's first choice before any second choice, tokens in order); assignments past
    ``C`` are dropped (contribute nothing). With ``C >=`` the largest expert load nothing is dropped and the
    result equals ``naive_moe`` -- the benchmark sizes ``C`` that way. Cost: the dispatch/combine einsums are
    ``O(N * E * C * d) = O(N^2 k d)``.
    """
    num_experts, _, _ = check_shapes(x, w1, w2, b1, b2, w3, activation)
    n, k = expert_idx.shape
    cap = capacity if capacity is not None else max(1, math.ceil(capacity_factor * n * k / num_experts))
    # Slot-major flattening gives GShard's priority: all first choices, then all second choices, ...
    e_flat = rearrange(expert_idx, "n k -> (k n)")
    g_flat = rearrange(gate, "n k -> (k n)")
    tok = torch.arange(n, device=x.device).repeat(k)
    valid = e_flat >= 0
    onehot = F.one_hot(torch.where(valid, e_flat, num_experts), num_experts + 1)[:, :num_experts]
    pos = ((onehot.cumsum(0) - 1) * onehot).sum(1)  # position of each assignment in its expert's queue
    keep = valid & (pos < cap)
    tok_k, col = tok[keep], e_flat[keep] * cap + pos[keep]
    dispatch = x.new_zeros(n, num_experts * cap).index_put_((tok_k, col), x.new_ones(()), accumulate=True)
    combine = x.new_zeros(n, num_experts * cap).index_put((tok_k, col), g_flat[keep].to(x.dtype), accumulate=True)
    dispatch = rearrange(dispatch, "n (e c) -> n e c", e=num_experts)
    combine = rearrange(combine, "n (e c) -> n e c", e=num_experts)
    xe = einsum(dispatch, x, "n e c, n d -> e c d")
    pre = einsum(xe, w1, "e c d, e d h -> e c h")
    if b1 is not None:
        pre = pre + b1.unsqueeze(1)
    a = act(activation, pre)
    if w3 is not None:
        a = a * einsum(xe, w3, "e c d, e d h -> e c h")
    y = einsum(a, w2, "e c h, e h d -> e c d")
    if b2 is not None:
        y = y + b2.unsqueeze(1)
    return einsum(combine, y, "n e c, e c d -> n d")


def floor_matmul(
    x_rep: Tensor, w1_single: Tensor, w2_single: Tensor, *, w3_single: Tensor | None = None,
    activation: Activation = "gelu",
) -> Tensor:
    """Benchmark floor: ``act(x_rep @ w1) @ w2`` (GLU: ``(act(x_rep @ w1) * (x_rep @ w3)) @ w2``) with ``x_rep``
    ``(N*k, d)``, ``w1``/``w3`` ``(d, h)``, ``w2`` ``(h, d)``.

    The same matmul FLOPs as the useful work of an MoE layer with ``N*k`` assignments, as one dense pair (or GLU
    triple): no routing, no gather/scatter, no gates. Returns ``(N*k, d)``.
    """
    a = act(activation, x_rep @ w1_single)
    if w3_single is not None:
        a = a * (x_rep @ w3_single)
    return a @ w2_single


def grouped_only(
    x_sorted: Tensor, w1: Tensor, w2: Tensor, offs: Tensor, *, w3: Tensor | None = None,
    activation: Activation = "gelu",
) -> Tensor:
    """The expert matmuls alone: ``torch._grouped_mm`` over rows already sorted by expert (``x_sorted``
    ``(M, d)``, groups ending at ``offs`` ``(E,)`` int32), with no routing, gather, gate or combine."""
    a = act(activation, torch._grouped_mm(x_sorted, w1, offs=offs))
    if w3 is not None:
        a = a * torch._grouped_mm(x_sorted, w3, offs=offs)
    return torch._grouped_mm(a, w2, offs=offs)

"""The public entry points :func:`fused_moe` (padded routing) and :func:`fused_moe_flat` (flat routing): pick the
routing and layout, then run :class:`~.function.FusedMoEFunction`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .activations import Activation
from .checks import check_shapes
from .function import FusedMoEFunction
from .layout import IMPLS, RowLayout, host_layout, sync_free_eligible
from .routing import padded_to_flat, sort_assignments, sort_assignments_on_device
from .sync_free import SyncFreeLayout

__all__ = ["INFERENCE_CHUNK_BYTES", "Impl", "fused_moe", "fused_moe_flat"]

Impl = Literal["auto", "grouped", "padded", "sync_free"]

# No-grad forward on the sync-free path: tokens are processed in chunks whose row intermediates (gathered input,
# pre-activation(s), expert output, the combine's (n, k, d) float32 slots) take about this many bytes, so the
# inference peak stays near the naive loop's instead of growing with N*k*h (DESIGN.md, "Chunked inference").
INFERENCE_CHUNK_BYTES = 64 << 20


def _wants_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _use_sync_free(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor | None, impl: str) -> bool:
    """``sync_free``: always (raises where it cannot run); ``auto`` / ``grouped``: on CUDA where it can run."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "sync_free":
        if not sync_free_eligible(x, w1, w2, w3):
            raise RuntimeError(
                f"impl='sync_free' needs torch._grouped_mm for {x.device.type}/{x.dtype} and 16-byte aligned "
                f"operands (d and h multiples of {16 // x.element_size()} elements)")
        return True
    return impl in ("auto", "grouped") and x.device.type == "cuda" and sync_free_eligible(x, w1, w2, w3)


def inference_chunk_tokens(k: int, d: int, h: int, glu: bool, element_size: int) -> int:
    """Tokens per chunk of a no-grad sync-free forward (see :data:`INFERENCE_CHUNK_BYTES`)."""
    per_token = k * ((2 * d + (2 if glu else 1) * h) * element_size + 4 * d)
    return max(1, INFERENCE_CHUNK_BYTES // max(per_token, 1))


def _fused(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    token_idx: Tensor,
    expert_idx: Tensor,
    weight: Tensor,
    b1: Tensor | None,
    b2: Tensor | None,
    w3: Tensor | None,
    activation: str,
    impl: str,
    slots_per_token: int | None,
) -> Tensor:
    check_shapes(x, w1, w2, b1, b2, w3, activation)
    num_experts, num_tokens = w1.shape[0], x.shape[0]
    layout: RowLayout
    if _use_sync_free(x, w1, w2, w3, impl):
        routing = sort_assignments_on_device(token_idx, expert_idx, num_experts, num_tokens, slots_per_token)
        layout = SyncFreeLayout(routing)
        # Every slot has a row here, so a -1 slot's gate must be zero (and gets a zero gradient).
        weight = weight.reshape(-1).masked_fill(expert_idx.reshape(-1) < 0, 0)
    else:
        routing = sort_assignments(token_idx, expert_idx, num_experts, num_tokens, slots_per_token)
        layout = host_layout(routing, x, impl, w1.shape[-1] * x.element_size())
        weight = weight.reshape(-1)
    # Gates in sort order; autograd turns this gather into a scatter in backward.
    gate_sorted = weight.index_select(0, routing.order)
    inputs = (x, gate_sorted, w1, w2, b1, b2, w3)
    return FusedMoEFunction.apply(*inputs, layout, activation, _wants_grad(*inputs))


def fused_moe_flat(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    token_idx: Tensor,
    expert_idx: Tensor,
    weight: Tensor,
    *,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    w3: Tensor | None = None,
    activation: Activation = "gelu",
    impl: Impl = "auto",
) -> Tensor:
    """:func:`fused_moe` with flat routing: assignment ``i`` sends token ``token_idx[i]`` to expert
    ``expert_idx[i]`` with weight ``weight[i]`` (all ``(A,)``; ``expert_idx == -1`` entries are ignored; a token
    may appear any number of times). From the padded form: ``fused_moe_flat(x, w1, w2, *padded_to_flat(idx, gate))``
    equals ``fused_moe(x, w1, w2, idx, gate)`` (which is a little faster: it combines by gather + sum over ``k``
    instead of ``index_add_``). Not chunked in no-grad inference (tokens may repeat anywhere in the list).

    Returns ``(N, d)``.
    """
    if weight.shape != expert_idx.shape or token_idx.shape != expert_idx.shape or expert_idx.dim() != 1:
        raise ValueError("token_idx, expert_idx and weight must all be (A,)")
    return _fused(x, w1, w2, token_idx, expert_idx, weight, b1, b2, w3, activation, impl, None)


def fused_moe(
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
    impl: Impl = "auto",
) -> Tensor:
    """Fused dropless MoE expert computation.

    Args:
        x: ``(N, d)`` tokens.
        w1: ``(E, d, h)``; w2: ``(E, h, d)``; b1: ``(E, h)``; b2: ``(E, d)``; w3: ``(E, d, h)`` (GLU variant).
        expert_idx: ``(N, k)`` long, ``-1`` for an empty slot.
        gate: ``(N, k)`` float gate of each slot.
        activation: ``"gelu"`` (exact erf), ``"relu"`` or ``"silu"``.
        impl: row layout / matmul strategy: ``"auto"`` (CUDA: sync-free grouped where it can run; CPU: padded
            unless very imbalanced), ``"padded"`` (one bmm per matmul over ``(E, C, .)`` padded groups, cache
            blocked on the CPU), ``"grouped"`` (``torch._grouped_mm`` over compact groups; raises where it cannot
            run; sync-free on CUDA) or ``"sync_free"`` (the CUDA path forced on any device where
            ``torch._grouped_mm`` runs: no host read, rows sized ``N*k``). See ``DESIGN.md``.

    Returns:
        ``(N, d)`` in ``x.dtype``; sums of several experts are accumulated in float32 for 16-bit inputs.
    """
    if expert_idx.shape != gate.shape or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0]:
        raise ValueError(f"expert_idx and gate must both be (N, k); got {tuple(expert_idx.shape)}, {tuple(gate.shape)}")
    n, k = expert_idx.shape
    kw = {"b1": b1, "b2": b2, "w3": w3, "activation": activation, "impl": impl}
    if not _wants_grad(x, gate, w1, w2, b1, b2, w3) and x.dim() == 2 and w1.dim() == 3:
        chunk = inference_chunk_tokens(k, x.shape[1], w1.shape[-1], w3 is not None, x.element_size())
        if n > chunk and _use_sync_free(x, w1, w2, w3, impl):
            out = torch.empty_like(x)
            for i in range(0, n, chunk):
                out[i : i + chunk] = fused_moe(x[i : i + chunk], w1, w2, expert_idx[i : i + chunk],
                                               gate[i : i + chunk], **kw)
            return out
    token_idx, flat_e, flat_g = padded_to_flat(expert_idx, gate)
    return _fused(x, w1, w2, token_idx, flat_e, flat_g, b1, b2, w3, activation, impl, k)

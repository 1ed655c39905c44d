"""Mixture-of-experts expert computation: one fused kernel and the reference variants it is measured against.

Everything here is plain torch + einops: no Triton, no compiled extension.

Shapes used throughout:

* ``N`` tokens, model width ``d``, expert hidden width ``h``, ``E`` experts, ``k`` routing slots per token.
* ``x``: ``(N, d)``; ``w1``: ``(E, d, h)``; ``w2``: ``(E, h, d)``; optional ``b1``: ``(E, h)``, ``b2``: ``(E, d)``;
  optional ``w3``: ``(E, d, h)`` turns each expert into a gated (GLU) MLP ``(act(x @ w1) * (x @ w3)) @ w2``.
* Routing, padded form (the main one): ``expert_idx`` ``(N, k)`` long and ``gate`` ``(N, k)`` float.
  ``expert_idx == -1`` means "no expert in this slot", which is how a top-p router gives a variable number of
  experts per token (its gate value is ignored and gets a zero gradient).
* Routing, flat form: ``A`` assignments ``token_idx`` ``(A,)``, ``expert_idx`` ``(A,)``, ``weight`` ``(A,)``; see
  :func:`fused_moe_flat` and :func:`padded_to_flat`.
* Output ``(N, d)``: for every token, the sum over its assigned experts ``e`` of ``gate * expert_e(x)``.

Variants (all compute the same function, all differentiable in ``x``, weights, biases and ``gate``):

* :func:`fused_moe` -- the kernel: one sort of the ``M`` valid (token, expert) assignments by expert, every
  expert's two (three with ``w3``) matmuls as one grouped matmul over the sorted rows, the activation once over
  all rows, one un-permutation that combines with the gate (``index_add``). A hand-written backward reuses the
  sort, saves only the pre-activation (recomputes the activation and the gathered input) and never builds
  padded copies of the activations.
* :func:`naive_moe` -- the usual Hugging Face (Mixtral-style) loop over experts with ``index_select`` /
  ``index_add_``; the correctness reference.
* :func:`dense_moe` -- every expert on every token, then masked/combined by the gate (``E / k`` times the FLOPs).
* :func:`capacity_moe` -- GShard-style fixed-capacity dispatch/combine with one-hot einsums.
* :func:`floor_matmul` -- one dense matmul pair of the same size as the useful work; the speed floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "MoERouting",
    "capacity_moe",
    "dense_moe",
    "floor_matmul",
    "fused_moe",
    "fused_moe_flat",
    "grouped_mm_available",
    "naive_moe",
    "padded_to_flat",
    "sort_assignments",
]

Activation = Literal["gelu", "relu", "silu"]
Impl = Literal["auto", "grouped", "padded"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "relu", "silu")

# ---------------------------------------------------------------------------------------------------------------
# Activations and their backward. The aten backward ops compute ``grad * act'(pre)`` in one pass over memory
# straight from the saved pre-activation, which is what lets the fused backward skip storing ``act(pre)``.
# ---------------------------------------------------------------------------------------------------------------


def _act(name: str, pre: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(pre)
    if name == "relu":
        return F.relu(pre)
    if name == "silu":
        return F.silu(pre)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _act_backward(name: str, grad: Tensor, pre: Tensor) -> Tensor:
    """``grad * act'(pre)``; ``grad`` and ``pre`` have the same shape and dtype."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, pre)
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, pre, 0)
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, pre)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _act_backward_(name: str, grad: Tensor, pre: Tensor) -> Tensor:
    """In-place :func:`_act_backward`: overwrites and returns ``grad`` (saves an ``(M, h)`` allocation)."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, grad_input=grad)
    if name == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, pre, 0, grad_input=grad)
    if name == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, pre, grad_input=grad)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype to accumulate sums of several experts / tokens in: float32 for 16-bit inputs."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


# ---------------------------------------------------------------------------------------------------------------
# Routing: the one permutation.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MoERouting:
    """The valid (token, expert) assignments, sorted by expert. Built once per forward, reused by the backward.

    Attributes:
        order: ``(M,)`` long, positions in the flat assignment list (``A = N*k`` for the padded form), sorted
            by expert; gather the gates with it.
        token: ``(M,)`` long, token of each sorted assignment.
        expert: ``(M,)`` long, expert of each sorted assignment (non-decreasing).
        offs: ``(E,)`` int32, cumulative group ends (the ``offs`` convention of ``torch._grouped_mm``).
        counts: per-expert assignment counts, on the host (one device sync to get them; needed anyway to
            size buffers).
        num_tokens: ``N``.
    """

    order: Tensor
    token: Tensor
    expert: Tensor
    offs: Tensor
    counts: list[int]
    num_tokens: int
    _slot: Tensor | None = None
    _cap: int = 0

    @property
    def num_experts(self) -> int:
        return len(self.counts)

    @property
    def num_assignments(self) -> int:
        return int(self.order.numel())

    def padded_slots(self, block: int = 8) -> tuple[Tensor, int]:
        """Row of every sorted assignment in the padded ``(E * C, .)`` layout, and ``C``.

        ``C`` is the largest group rounded up to ``block`` rows; computed lazily because only the fallback
        path (and ``float64``) needs it.
        """
        if self._slot is None:
            cap = max(max(self.counts, default=0), 1)
            cap = -(-cap // block) * block
            starts = self.offs.to(torch.long) - torch.tensor(self.counts, device=self.offs.device)
            pos = torch.arange(self.num_assignments, device=self.token.device) - starts.index_select(0, self.expert)
            self._slot = self.expert * cap + pos
            self._cap = cap
        return self._slot, self._cap


def sort_assignments(token_idx: Tensor, expert_idx: Tensor, num_experts: int, num_tokens: int) -> MoERouting:
    """Sort flat assignments by expert, dropping ``expert_idx == -1`` entries.

    Args:
        token_idx: ``(A,)`` long token of each assignment.
        expert_idx: ``(A,)`` long expert of each assignment, ``-1`` for none.
        num_experts: ``E``.
        num_tokens: ``N``.
    """
    expert_idx = expert_idx.reshape(-1).to(torch.long)
    token_idx = token_idx.reshape(-1).to(torch.long)
    if expert_idx.numel() != token_idx.numel():
        raise ValueError("token_idx and expert_idx must have the same number of entries")
    # bincount of expert+1: bucket 0 holds the -1 entries; one host sync gives counts and the range check.
    if expert_idx.numel() and int(expert_idx.min()) < -1:
        raise ValueError("expert_idx entries must be in [-1, E)")
    bc = torch.bincount(expert_idx + 1, minlength=num_experts + 1).tolist()
    if len(bc) > num_experts + 1:
        raise ValueError(f"expert_idx has entries >= num_experts={num_experts}")
    counts = bc[1:]
    num_valid = sum(counts)
    # -1 sorts first, so the valid assignments are the tail of the sort; stable keeps token order per expert
    # (deterministic results, and gathers that walk memory forward).
    sorted_e, order = torch.sort(expert_idx, stable=True)
    start = expert_idx.numel() - num_valid
    order = order[start:]
    sorted_e = sorted_e[start:]
    token = token_idx.index_select(0, order)
    offs = torch.tensor(counts, device=expert_idx.device, dtype=torch.long).cumsum(0).to(torch.int32)
    return MoERouting(order=order, token=token, expert=sorted_e, offs=offs, counts=counts, num_tokens=num_tokens)


def padded_to_flat(expert_idx: Tensor, gate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Convert padded routing ``(N, k)`` to flat ``(token_idx, expert_idx, weight)`` each ``(N*k,)``.

    ``-1`` entries are kept (and ignored by :func:`fused_moe_flat`); drop them with ``mask = expert_idx >= 0``
    if a compact list is wanted.
    """
    n, k = expert_idx.shape
    token_idx = torch.arange(n, device=expert_idx.device).repeat_interleave(k)
    return token_idx, expert_idx.reshape(-1), gate.reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# Grouped matmuls over the sorted rows.
#
# Why torch._grouped_mm: on CPU in torch 2.13 it exists, handles float32/bfloat16/float16, and runs every group as
# its own GEMM inside one ATen call, so there is no padding at all (no wasted FLOPs when the routing is
# imbalanced, no padded copies) and no Python loop over experts. Measured on the 2-core CPU it runs at the speed
# of a single dense matmul of the same total size (see benchmarks/). It is private API, so availability is probed
# once per (device, dtype) and every call falls back on error.
#
# Fallback (float64, older torch, or a device/dtype/alignment _grouped_mm refuses): scatter the sorted rows into
# an ``(E, C, .)`` buffer with ``C`` the largest group (rounded to 8) and use one batched matmul. That wastes
# ``E*C - M`` rows of FLOPs when imbalanced; padding each group to a small block instead and running a
# block-diagonal bmm would need a copy of the expert weight per block (``n_blocks * d * h``), which costs more
# memory traffic than the padded rows it saves at the sizes here, so the simple pad-to-max is the fallback.
# ---------------------------------------------------------------------------------------------------------------

_GROUPED_OK: dict[tuple[str, torch.dtype], bool] = {}


def grouped_mm_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` works (and is right) for this device type and dtype; probed once, cached."""
    device = torch.device(device)
    key = (device.type, dtype)
    if key in _GROUPED_OK:
        return _GROUPED_OK[key]
    ok = False
    if hasattr(torch, "_grouped_mm") and dtype in (torch.float32, torch.bfloat16, torch.float16):
        try:
            g = torch.Generator().manual_seed(0)
            a = torch.randn(48, 16, generator=g).to(device, dtype)
            w = torch.randn(3, 16, 32, generator=g).to(device, dtype)
            b = torch.randn(48, 32, generator=g).to(device, dtype)
            offs = torch.tensor([16, 16, 48], device=device, dtype=torch.int32)
            out = torch._grouped_mm(a, w, offs=offs)
            out_t = torch._grouped_mm(b, w.transpose(-2, -1), offs=offs)
            out_k = torch._grouped_mm(a.t(), b, offs=offs)
            ref = torch.cat([a[:16] @ w[0], a[16:] @ w[2]])
            ref_t = torch.cat([b[:16] @ w[0].t(), b[16:] @ w[2].t()])
            ref_k = torch.stack([a[:16].t() @ b[:16], torch.zeros_like(w[1]), a[16:].t() @ b[16:]])
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            ok = all(
                torch.allclose(o.float(), r.float(), rtol=tol, atol=tol * 16)
                for o, r in ((out, ref), (out_t, ref_t), (out_k, ref_k))
            )
        except Exception:  # noqa: BLE001 -- any failure means "use the fallback"
            ok = False
    _GROUPED_OK[key] = ok
    return ok


def _use_grouped(impl: str, t: Tensor) -> bool:
    if impl == "padded":
        return False
    ok = grouped_mm_available(t.device, t.dtype)
    if impl == "grouped" and not ok:
        raise RuntimeError(f"torch._grouped_mm is not usable for {t.device.type}/{t.dtype}")
    return ok


def _pad(rows: Tensor, routing: MoERouting) -> Tensor:
    """``(M, f)`` sorted rows -> ``(E, C, f)`` with zero rows after each group."""
    slot, cap = routing.padded_slots()
    buf = rows.new_zeros(routing.num_experts * cap, rows.shape[1])
    buf.index_copy_(0, slot, rows)
    return rearrange(buf, "(e c) f -> e c f", e=routing.num_experts)


def _unpad(padded: Tensor, routing: MoERouting) -> Tensor:
    """``(E, C, f)`` -> ``(M, f)`` sorted rows."""
    slot, _ = routing.padded_slots()
    return rearrange(padded, "e c f -> (e c) f").index_select(0, slot)


def _gmm(a: Tensor, w: Tensor, routing: MoERouting, impl: str) -> Tensor:
    """Per-group ``a[rows of e] @ w[e]``: ``a`` ``(M, K)``, ``w`` ``(E, K, P)`` (may be a transposed view) -> ``(M, P)``."""
    if _use_grouped(impl, a):
        try:
            return torch._grouped_mm(a, w, offs=routing.offs)
        except RuntimeError:
            if impl == "grouped":
                raise
    return _unpad(torch.bmm(_pad(a, routing), w), routing)


def _gmm_wgrad(a: Tensor, b: Tensor, routing: MoERouting, impl: str) -> Tensor:
    """Per-group ``a[rows of e].T @ b[rows of e]``: ``a`` ``(M, K)``, ``b`` ``(M, P)`` -> ``(E, K, P)`` (zeros for
    experts with no rows). The weight gradients."""
    if _use_grouped(impl, a):
        try:
            return torch._grouped_mm(a.t(), b, offs=routing.offs)
        except RuntimeError:
            if impl == "grouped":
                raise
    return einsum(_pad(a, routing), _pad(b, routing), "e c k, e c p -> e k p")


def _segment_sum(rows: Tensor, routing: MoERouting) -> Tensor:
    """``(M, f)`` -> ``(E, f)`` per-expert sums (bias gradients), accumulated in float32 for 16-bit rows."""
    out = torch.zeros(routing.num_experts, rows.shape[1], device=rows.device, dtype=_acc_dtype(rows.dtype))
    return out.index_add_(0, routing.expert, rows.to(out.dtype))


def _per_row(bias: Tensor, routing: MoERouting) -> Tensor:
    """``(E, f)`` bias -> ``(M, f)`` the bias of each sorted row's expert."""
    return bias.index_select(0, routing.expert)


# ---------------------------------------------------------------------------------------------------------------
# The fused kernel.
# ---------------------------------------------------------------------------------------------------------------


class _FusedMoEFunction(torch.autograd.Function):
    """Expert MLPs over expert-sorted rows + gated combine, with a memory-lean hand-written backward.

    Forward inputs: ``x`` (N, d), ``gate_sorted`` (M,) (the gates already permuted into the sort order; autograd
    of that gather is a cheap M-element scatter), ``w1``, ``w2``, ``b1``, ``b2``, ``w3`` and the routing.

    Saved for backward: only the pre-activation(s) ``(M, h)`` (plus the inputs themselves, which are references,
    not copies). Recomputed in backward instead of stored: the gathered input ``x[token]`` ``(M, d)`` (one
    gather), the activation ``act(pre)`` ``(M, h)`` (one elementwise pass) and the expert output ``y`` ``(M, d)``,
    whose only use -- the gate gradient ``<grad_out[token], y>`` -- is rewritten as
    ``<grad_out[token] @ w2.T, act(pre)> + <grad_out[token], b2>``, reusing a product the backward computes anyway.
    The naive loop keeps ``x[token]``, ``pre``, ``act(pre)`` and ``y`` alive through autograd, so this saves
    roughly ``(h + 2d) / h`` of its activation memory.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        gate_sorted: Tensor,
        w1: Tensor,
        w2: Tensor,
        b1: Tensor | None,
        b2: Tensor | None,
        w3: Tensor | None,
        routing: MoERouting,
        activation: str,
        impl: str,
    ) -> Tensor:
        acc = _acc_dtype(x.dtype)
        out = torch.zeros(routing.num_tokens, x.shape[1], device=x.device, dtype=acc)
        ctx.routing, ctx.activation, ctx.impl = routing, activation, impl
        ctx.has_b1, ctx.has_b2, ctx.has_w3 = b1 is not None, b2 is not None, w3 is not None
        if routing.num_assignments == 0:
            ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, None, None)
            return out.to(x.dtype)

        xs = x.index_select(0, routing.token)  # (M, d), freed at the end of forward
        pre = _gmm(xs, w1, routing, impl)  # (M, h)
        if b1 is not None:
            pre += _per_row(b1, routing)
        pre3 = _gmm(xs, w3, routing, impl) if w3 is not None else None
        del xs
        a = _act(activation, pre)
        if pre3 is not None:
            a.mul_(pre3)
        y = _gmm(a, w2, routing, impl)  # (M, d)
        del a
        if b2 is not None:
            y += _per_row(b2, routing)
        # The un-permutation and the gated sum over a token's experts in one index_add_ (float32 for 16-bit).
        y = y.to(acc).mul_(gate_sorted.to(acc).unsqueeze(1))
        out.index_add_(0, routing.token, y)
        ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, pre, pre3)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, gate_sorted, w1, w2, b1, b2, w3, pre, pre3 = ctx.saved_tensors
        routing: MoERouting = ctx.routing
        act, impl = ctx.activation, ctx.impl
        need = ctx.needs_input_grad
        gx = gg = gw1 = gw2 = gb1 = gb2 = gw3 = None
        if routing.num_assignments == 0:
            zeros = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
            return (zeros(x) if need[0] else None, zeros(gate_sorted) if need[1] else None,
                    zeros(w1) if need[2] else None, zeros(w2) if need[3] else None,
                    zeros(b1) if need[4] else None, zeros(b2) if need[5] else None,
                    zeros(w3) if need[6] else None, None, None, None)

        acc = _acc_dtype(x.dtype)
        gate_c = gate_sorted.to(x.dtype).unsqueeze(1)  # (M, 1)
        # Every fresh (M, h) buffer costs page faults on CPU (glibc hands large blocks back to the OS), which
        # at these sizes costs as much as the elementwise math itself; so the backward allocates only two of
        # them -- the recomputed activation and the activation gradient -- and works in place on those.
        gy = grad_out.to(x.dtype).index_select(0, routing.token)  # (M, d); d loss / d y = gate * gy
        ga = _gmm(gy, w2.transpose(-2, -1), routing, impl)  # (M, h) = gy @ w2.T, before the gate
        # Recompute the activation from the saved pre-activation (no (M, h) activation was stored).
        act_pre = _act(act, pre)
        a = act_pre * pre3 if pre3 is not None else act_pre
        if need[1]:
            # gate grad = <gy, y> with y = a @ w2 + b2, rewritten without y as <gy @ w2.T, a> + <gy, b2>.
            gg = (gy * _per_row(b2, routing)).sum(-1, dtype=acc) if b2 is not None else None
        gy.mul_(gate_c)  # now the gate-scaled output grad; gy unscaled is not needed again
        if need[3]:
            gw2 = _gmm_wgrad(a, gy, routing, impl)  # (E, h, d)
        if need[5] and b2 is not None:
            gb2 = _segment_sum(gy, routing).to(b2.dtype)
        del gy
        if need[1]:
            dot = a.mul_(ga).sum(-1, dtype=acc)  # a is dead after this: reuse its buffer for the product
            gg = (dot if gg is None else gg + dot).to(gate_sorted.dtype)
        del a
        ga.mul_(gate_c)  # (M, h) d loss / d a
        if pre3 is not None:
            g3 = ga * act_pre  # d loss / d pre3
            ga.mul_(pre3)
        else:
            g3 = None
        del act_pre
        gpre = _act_backward_(act, ga, pre)  # (M, h) d loss / d pre, written over ga
        del ga
        if need[4] and b1 is not None:
            gb1 = _segment_sum(gpre, routing).to(b1.dtype)
        if need[2] or (need[6] and w3 is not None):
            xs = x.index_select(0, routing.token)  # recomputed gather instead of a saved (M, d) copy
            if need[2]:
                gw1 = _gmm_wgrad(xs, gpre, routing, impl)
            if need[6] and g3 is not None:
                gw3 = _gmm_wgrad(xs, g3, routing, impl)
            del xs
        if need[0]:
            gxs = _gmm(gpre, w1.transpose(-2, -1), routing, impl)  # (M, d)
            if g3 is not None:
                gxs += _gmm(g3, w3.transpose(-2, -1), routing, impl)
            gx = torch.zeros(x.shape, device=x.device, dtype=acc)
            gx.index_add_(0, routing.token, gxs.to(acc))
            gx = gx.to(x.dtype)
        return gx, gg, gw1, gw2, gb1, gb2, gw3, None, None, None


def _check(
    x: Tensor, w1: Tensor, w2: Tensor, b1: Tensor | None, b2: Tensor | None, w3: Tensor | None, activation: str
) -> tuple[int, int, int]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2 or w1.dim() != 3 or w2.dim() != 3:
        raise ValueError("expected x (N, d), w1 (E, d, h), w2 (E, h, d)")
    e, d, h = w1.shape
    if x.shape[1] != d or w2.shape != (e, h, d):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    if b1 is not None and b1.shape != (e, h):
        raise ValueError(f"b1 must be (E, h) = {(e, h)}, got {tuple(b1.shape)}")
    if b2 is not None and b2.shape != (e, d):
        raise ValueError(f"b2 must be (E, d) = {(e, d)}, got {tuple(b2.shape)}")
    if w3 is not None and w3.shape != w1.shape:
        raise ValueError(f"w3 must be (E, d, h) = {(e, d, h)}, got {tuple(w3.shape)}")
    return e, d, h


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
    ``expert_idx[i]`` with weight ``weight[i]`` (all ``(A,)``; ``expert_idx == -1`` entries are ignored).

    Returns ``(N, d)``.
    """
    _check(x, w1, w2, b1, b2, w3, activation)
    if weight.shape != expert_idx.shape or token_idx.shape != expert_idx.shape:
        raise ValueError("token_idx, expert_idx and weight must have the same shape")
    routing = sort_assignments(token_idx, expert_idx, w1.shape[0], x.shape[0])
    # Gates in sort order; autograd turns this gather into an M-element scatter in backward.
    gate_sorted = weight.reshape(-1).index_select(0, routing.order)
    return _FusedMoEFunction.apply(x, gate_sorted, w1, w2, b1, b2, w3, routing, activation, impl)


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
        impl: ``"auto"`` (``torch._grouped_mm`` where it works, else padded bmm), ``"grouped"`` or ``"padded"``.

    Returns:
        ``(N, d)`` in ``x.dtype``; sums of several experts are accumulated in float32 for 16-bit inputs.
    """
    if expert_idx.shape != gate.shape or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0]:
        raise ValueError(f"expert_idx and gate must both be (N, k); got {tuple(expert_idx.shape)}, {tuple(gate.shape)}")
    token_idx, flat_e, flat_g = padded_to_flat(expert_idx, gate)
    return fused_moe_flat(x, w1, w2, token_idx, flat_e, flat_g, b1=b1, b2=b2, w3=w3, activation=activation, impl=impl)


# ---------------------------------------------------------------------------------------------------------------
# Reference variants.
# ---------------------------------------------------------------------------------------------------------------


def _expert_mlp(
    xe: Tensor, w1: Tensor, w2: Tensor, b1: Tensor | None, b2: Tensor | None, w3: Tensor | None, activation: str
) -> Tensor:
    pre = xe @ w1
    if b1 is not None:
        pre = pre + b1
    a = _act(activation, pre)
    if w3 is not None:
        a = a * (xe @ w3)
    y = a @ w2
    return y + b2 if b2 is not None else y


def naive_moe(
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
    """Reference: Hugging Face (Mixtral) style Python loop over experts, plain autograd.

    Same arguments and result as :func:`fused_moe`. Accumulates in ``x.dtype`` like the HF code.
    """
    num_experts, _, _ = _check(x, w1, w2, b1, b2, w3, activation)
    out = torch.zeros_like(x)
    for e in range(num_experts):
        tok, slot = torch.where(expert_idx == e)
        if tok.numel() == 0:
            continue
        xe = x.index_select(0, tok)
        ye = _expert_mlp(
            xe, w1[e], w2[e], None if b1 is None else b1[e], None if b2 is None else b2[e],
            None if w3 is None else w3[e], activation,
        )
        # In place on a zeros buffer that needs no grad, exactly as the HF code does.
        out.index_add_(0, tok, ye * gate[tok, slot].unsqueeze(1).to(ye.dtype))
    return out


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
    ``(N, E)`` gate matrix masks and combines. Same arguments and result as :func:`fused_moe`."""
    num_experts, _, _ = _check(x, w1, w2, b1, b2, w3, activation)
    pre = einsum(x, w1, "n d, e d h -> e n h")
    if b1 is not None:
        pre = pre + b1.unsqueeze(1)
    a = _act(activation, pre)
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
    result equals :func:`naive_moe` -- the benchmark sizes ``C`` that way. Cost: the dispatch/combine einsums
    are ``O(N * E * C * d) = O(N^2 k d)``.
    """
    num_experts, _, _ = _check(x, w1, w2, b1, b2, w3, activation)
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
    a = _act(activation, pre)
    if w3 is not None:
        a = a * einsum(xe, w3, "e c d, e d h -> e c h")
    y = einsum(a, w2, "e c h, e h d -> e c d")
    if b2 is not None:
        y = y + b2.unsqueeze(1)
    return einsum(combine, y, "n e c, e c d -> n d")


def floor_matmul(
    x_rep: Tensor, w1_single: Tensor, w2_single: Tensor, *, activation: Activation = "gelu"
) -> Tensor:
    """Benchmark floor: ``act(x_rep @ w1) @ w2`` with ``x_rep`` ``(N*k, d)``, ``w1`` ``(d, h)``, ``w2`` ``(h, d)``.

    The same matmul FLOPs as the useful work of an MoE layer with ``N*k`` assignments, as one dense pair: no
    routing, no gather/scatter, no gates. Returns ``(N*k, d)``.
    """
    return _act(activation, x_rep @ w1_single) @ w2_single

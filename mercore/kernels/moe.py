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

* :func:`fused_moe` -- the kernel: one sort of the ``M`` valid (token, expert) assignments by expert, one gather
  of the tokens into expert-grouped rows, every expert's two (three with ``w3``) matmuls as one batched matmul
  over all experts (``torch.bmm`` over ``(E, C, .)`` padded groups, or ``torch._grouped_mm`` over compact groups),
  the activation once over all rows, one un-permutation that combines with the gate (gather + batched gate
  matmul over ``k``; ``index_add_`` for arbitrary flat routing). On CPU, problems whose ``(rows, h)``
  intermediates outgrow the cache run the gather, matmuls and activation in a few cache-sized blocks of
  consecutive experts (one bmm per matmul per block; see ``CPU_BLOCK_BYTES``). A hand-written backward reuses
  the sort and the layout, keeps the pre-activation, the activation (only until its one use) and the ``(., d)``
  expert output, recomputes the gathered input, and works in place.
* :func:`naive_moe` -- the usual Hugging Face (Mixtral-style) loop over experts with ``index_select`` /
  ``index_add_``; the correctness reference.
* :func:`dense_moe` -- every expert on every token, then masked/combined by the gate (``E / k`` times the FLOPs).
* :func:`capacity_moe` -- GShard-style fixed-capacity dispatch/combine with one-hot einsums.
* :func:`floor_matmul` -- one dense matmul pair of the same size as the useful work; the speed floor.
"""

from __future__ import annotations

import itertools
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
# Activations and their backward.
# ---------------------------------------------------------------------------------------------------------------


def _act(name: str, pre: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(pre)
    if name == "relu":
        return F.relu(pre)
    if name == "silu":
        return F.silu(pre)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _act_backward_(name: str, grad: Tensor, pre: Tensor) -> Tensor:
    """``grad * act'(pre)`` written over ``grad`` (saves an ``(R, h)`` allocation). The aten backward ops do it in
    one pass over memory straight from the saved pre-activation, which is what lets the fused backward skip
    storing ``act(pre)``."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, grad_input=grad)
    if name == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, pre, 0, grad_input=grad)
    if name == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, pre, grad_input=grad)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _act_(name: str, pre: Tensor) -> Tensor:
    """In-place activation (inference forward, where the pre-activation is not needed afterwards)."""
    if name == "gelu":
        return torch.ops.aten.gelu_(pre)
    if name == "relu":
        return pre.relu_()
    if name == "silu":
        return F.silu(pre, inplace=True)
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
        slots_per_token: ``k`` when the flat list is the padded form (assignment ``a`` is slot ``a % k`` of token
            ``a // k``), which lets the combine un-permute with a gather and a sum over ``k`` instead of a
            scatter-add; ``None`` for arbitrary flat lists.
    """

    order: Tensor
    token: Tensor
    expert: Tensor
    offs: Tensor
    counts: list[int]
    num_tokens: int
    slots_per_token: int | None = None

    @property
    def num_experts(self) -> int:
        return len(self.counts)

    @property
    def num_assignments(self) -> int:
        return int(self.order.numel())

    @property
    def capacity(self) -> int:
        """Largest expert load ``C`` (at least 1): the row count per expert of the padded layout."""
        return max(max(self.counts, default=0), 1)


def sort_assignments(
    token_idx: Tensor, expert_idx: Tensor, num_experts: int, num_tokens: int, slots_per_token: int | None = None
) -> MoERouting:
    """Sort flat assignments by expert, dropping ``expert_idx == -1`` entries.

    Args:
        token_idx: ``(A,)`` long token of each assignment.
        expert_idx: ``(A,)`` long expert of each assignment, ``-1`` for none.
        num_experts: ``E``.
        num_tokens: ``N``.
        slots_per_token: ``k`` if ``token_idx == arange(N).repeat_interleave(k)`` (the padded form), else None.
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
    return MoERouting(order=order, token=token, expert=sorted_e, offs=offs, counts=counts, num_tokens=num_tokens,
                      slots_per_token=slots_per_token)


def padded_to_flat(expert_idx: Tensor, gate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Convert padded routing ``(N, k)`` to flat ``(token_idx, expert_idx, weight)`` each ``(N*k,)``.

    ``-1`` entries are kept (and ignored by :func:`fused_moe_flat`); drop them with ``mask = expert_idx >= 0``
    if a compact list is wanted.
    """
    n, k = expert_idx.shape
    token_idx = torch.arange(n, device=expert_idx.device).repeat_interleave(k)
    return token_idx, expert_idx.reshape(-1), gate.reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# Row layouts: where the M sorted assignments live while every expert runs, and the batched matmuls over them.
#
# Two layouts, one kernel (the autograd Function below only talks to the layout):
#
# * ``_PaddedLayout``: expert-grouped rows in an ``(E, C, .)`` buffer (``C`` = the largest expert load, zero rows
#   after each group); every matmul is ONE ``torch.bmm`` (the weight gradients one bmm of the transposed
#   operands), biases are broadcast adds and per-expert sums one reduction. It wastes ``E*C/M - 1`` of the FLOPs
#   on zero rows (~11% for the balanced top-2 routing of the benchmark at N=2048, E=16), but on the 2-core CPU a
#   bmm runs within ~3% of one dense matmul of the same size, it is one parallel region per matmul, and it
#   degrades gracefully when the cores are shared (with other jobs on the box a 16-group ``_grouped_mm`` slowed
#   down 4-10x, the bmm about as much as the dense floor).
#   Large problems on CPU are cut into blocks of consecutive experts (``CPU_BLOCK_BYTES``), each its own
#   ``(E_b, C_b, .)`` bmm group padded only to its own largest load; the kernel runs the gather, both matmuls and
#   the activation block by block, so the ``(rows, h)`` intermediates stay in cache between their uses.
#   Padding rows are zero on every gather (input and output gradient), so every gradient row of a padding row is
#   exactly zero: nothing leaks into weight or bias gradients; in the forward their gate is zero.
#
# * ``_GroupedLayout``: the sorted rows stay compact; every matmul is one ``torch._grouped_mm`` (on CPU in torch
#   2.13 it exists for float32/bfloat16/float16 and runs each group's GEMM inside one ATen call; on H100 it is
#   the CUTLASS grouped GEMM for bfloat16). No padding at all, but on CPU each group is its own small GEMM
#   (~9% slower than one dense GEMM at 256-row groups, and one thread barrier per group).
#
# ``impl="auto"`` takes the padded layout on CPU unless its padding rows would exceed ``PADDED_MAX_WASTE`` of
# the assignments (very imbalanced routing, e.g. most tokens on one expert), and the grouped one on CUDA where
# ``_grouped_mm`` works (and on CPU dtypes/shapes it refuses, the padded one). A lower threshold was tried: in
# one interleaved run at N=512 (13-41 % padding) the grouped layout was 2-11 % faster, in the next, with the box
# busier, 15-50 % slower at the same cells (padding up to 62 %); the padded bmm is the robust choice. Large
# problems are cut into blocks of a few experts, each padded only to its own largest load. A
# block-diagonal variant (pad every group to a multiple of a small block and bmm over blocks) was not used: a
# bmm needs one weight matrix per block, i.e. copying ``n_blocks * d * h`` weights per matmul, more memory
# traffic at these sizes than the padded rows it would save.
# ---------------------------------------------------------------------------------------------------------------

PADDED_MAX_WASTE = 1.0  # CPU auto: padded layout while its rows R <= (1 + this) * M
# CPU cache blocking: the padded layout holds its experts in runs whose (rows, h) intermediates take at most this
# many bytes, and the kernel walks the runs: each run's gathered input, pre-activation and activation stay in
# cache from the first matmul into the second (in the backward, the activation gradient from its matmul through
# the activation backward into the two matmuls that read it), and only one run's temporaries are alive at a
# time. Each run is still one bmm per matmul over all of its experts. On the 2-core EPYC (2 MiB L2 per core,
# 32 MiB shared L3), at N=8192 where one (R, h) buffer is 32-72 MiB, 4 MiB runs made the forward 10-25% faster
# than one block (2-8 MiB were within noise of each other); MERC-sized problems (R*h*4 <= 4 MiB) are one block.
CPU_BLOCK_BYTES = 4 << 20

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
            offs = torch.tensor([16, 16, 48], device=device, dtype=torch.int32)  # middle group empty
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
        except Exception:  # noqa: BLE001 -- any failure means "use the padded layout"
            ok = False
    _GROUPED_OK[key] = ok
    return ok


def _aligned(*ts: Tensor) -> bool:
    """``torch._grouped_mm`` wants 16-byte aligned base pointers and strides (CPU and CUDA alike)."""
    return all(
        t.data_ptr() % 16 == 0 and all((st * t.element_size()) % 16 == 0 for st in t.stride() if st != 1)
        for t in ts
    )


class _Combine:
    """The un-permutation shared by both layouts: ``(R, f)`` rows -> ``(N, f)`` per-token sums.

    For the padded routing form every token owns ``k`` consecutive flat assignments, so the combine gathers each
    assignment's row into ``(N, k, f)`` and reduces over ``k`` -- the forward one with the gates as a batched
    ``(1, k) @ (k, f)`` matmul per token (the gating and the sum in one op), the gradient one with a sum. No
    scatter, a fixed summation order (deterministic on CUDA too, where ``index_add_`` uses atomics), and on CPU
    several times faster than ``index_add_``. ``-1`` slots read a padding row (their gate is zero; gradient
    padding rows are exactly zero) or, without one, an appended zero row. Arbitrary flat routing falls back to
    ``index_add_`` over the row tokens.
    """

    routing: MoERouting
    num_rows: int
    row_token: Tensor  # (R,) token of every row (index_add_ fallback)

    def _init_combine(self, row_of_sorted: Tensor, spare_row: int | None) -> None:
        r = self.routing
        self._inv: Tensor | None = None
        self._append_zero = False
        k = r.slots_per_token
        if k is None:
            return
        n_assign = r.num_tokens * k
        if r.num_assignments < n_assign and spare_row is None:
            spare_row, self._append_zero = self.num_rows, True
        fill = spare_row if spare_row is not None else 0
        self._inv = torch.full((n_assign,), fill, dtype=torch.long, device=row_of_sorted.device)
        self._inv.index_copy_(0, r.order, row_of_sorted)

    def _per_slot(self, rows: Tensor) -> Tensor:
        """``(R, f)`` -> ``(N, k, f)`` the row of every (token, slot)."""
        if self._append_zero:
            rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        k = self.routing.slots_per_token
        return rows.index_select(0, self._inv).view(self.routing.num_tokens, k, rows.shape[1])

    def combine_gated(self, rows: Tensor, gate_sorted: Tensor, dtype: torch.dtype) -> Tensor:
        """Forward combine: ``out[t] = sum over t's slots of gate * row`` -> ``(N, f)`` in ``dtype``."""
        n = self.routing.num_tokens
        if self._inv is None:
            src = rows.to(dtype) * self.to_rows(gate_sorted).to(dtype).unsqueeze(1)
            return torch.zeros(n, rows.shape[1], device=rows.device, dtype=dtype).index_add_(0, self.row_token, src)
        k = self.routing.slots_per_token
        gate_nk = gate_sorted.new_zeros(n * k).index_copy_(0, self.routing.order, gate_sorted)  # 0 on -1 slots
        per_slot = self._per_slot(rows).to(dtype)
        if k == 1:  # a (1, 1) @ (1, f) bmm per token is ~10x slower than the broadcast multiply it amounts to
            return per_slot.view(n, -1).mul_(gate_nk.to(dtype).unsqueeze(1))
        return torch.bmm(gate_nk.to(dtype).view(n, 1, k), per_slot).view(n, -1)

    def combine(self, rows: Tensor, dtype: torch.dtype) -> Tensor:
        """Gradient combine: ``out[t] = sum over t's slots of row`` -> ``(N, f)`` in ``dtype``; padding rows of
        ``rows`` must be zero (gradient rows are)."""
        if self._inv is None:
            out = torch.zeros(self.routing.num_tokens, rows.shape[1], device=rows.device, dtype=dtype)
            return out.index_add_(0, self.row_token, rows.to(dtype))
        per_slot = self._per_slot(rows)
        if per_slot.shape[1] == 1:
            return per_slot.view(per_slot.shape[0], -1).to(dtype)
        return per_slot.sum(1, dtype=dtype)


class _PaddedLayout(_Combine):
    """Rows ``(R, f)`` in blocks of consecutive experts (see :data:`CPU_BLOCK_BYTES`). In the block of experts
    ``e0 .. e1 - 1``, whose capacity ``C_b`` is the largest load among them, expert ``e``'s assignments sit at
    rows ``start_b + (e - e0) * C_b + rank``, followed by ``C_b - count_e`` padding rows. One block (the usual
    case at MERC sizes) is the plain ``(E, C)`` padded layout; one-expert blocks have no padding at all."""

    def __init__(self, routing: MoERouting, spans: _Spans) -> None:
        """``spans``: the blocks, from :func:`_block_spans` (one span of all experts: no cache blocking)."""
        self.routing = routing
        counts, num_e = routing.counts, routing.num_experts
        dev = routing.token.device
        # Host-side bookkeeping from the counts (no device sync): each expert's first row and padding.
        base, n_pad = [0] * num_e, [0] * num_e
        for e0, e1, cap, start in spans.blocks:
            for e in range(e0, e1):
                base[e], n_pad[e] = start + (e - e0) * cap, cap - counts[e]
        self.num_rows = spans.num_rows
        # Row of every sorted assignment: base[expert] + its rank among that expert's assignments.
        base_t = torch.tensor(base, device=dev)
        counts_t = torch.tensor(counts, device=dev)
        first_t = routing.offs.to(torch.long) - counts_t  # (E,) first sorted position of each expert
        self.slot = (base_t - first_t).index_select(0, routing.expert) + torch.arange(
            routing.num_assignments, device=dev)  # (M,)
        # Token of every row (padding rows: token 0, zeroed right after every gather).
        self.row_token = torch.zeros(self.num_rows, dtype=torch.long, device=dev)
        self.row_token.index_copy_(0, self.slot, routing.token)
        # Padding rows, ascending: expert e's rows base[e] + count_e .. base[e] + C_b - 1.
        total_pad = self.num_rows - routing.num_assignments
        self.pad_rows: Tensor | None = None
        if total_pad:
            n_pad_t = torch.tensor(n_pad, device=dev)
            pad_e = torch.repeat_interleave(torch.arange(num_e, device=dev), n_pad_t, output_size=total_pad)
            first = (n_pad_t.cumsum(0) - n_pad_t).index_select(0, pad_e)
            end_t = base_t + counts_t
            self.pad_rows = end_t.index_select(0, pad_e) + torch.arange(total_pad, device=dev) - first
        pad_start = list(itertools.accumulate(n_pad, initial=0))  # where expert e's padding rows start
        self.blocks: list[_Block] = []
        for e0, e1, cap, start in spans.blocks:
            lo, hi = pad_start[e0], pad_start[e1]
            pad = None
            if hi > lo:  # then pad_rows exists
                pad = self.pad_rows[lo:hi] - start if start else self.pad_rows[lo:hi]  # block-relative
            self.blocks.append(_Block(slice(start, start + (e1 - e0) * cap), slice(e0, e1),
                                      _PaddedGroups(e1 - e0, cap), pad))
        spare = next((base[e] + c for e, c in enumerate(counts) if n_pad[e]), None)
        self._init_combine(self.slot, spare)

    def gather(self, src: Tensor, blk: _Block | None = None) -> Tensor:
        """``(N, f)`` -> ``(R, f)`` rows ``src[token]`` (of one block's rows if given), zero on padding rows. Zero
        input rows give zero gradient rows all the way through the backward, so padding never leaks into weight
        or bias gradients."""
        idx, pad = (self.row_token, self.pad_rows) if blk is None else (self.row_token[blk.rows], blk.pad_rows)
        rows = src.index_select(0, idx)
        if pad is not None:
            rows.index_fill_(0, pad, 0)  # touches only the padding rows
        return rows

    def to_rows(self, v: Tensor) -> Tensor:
        """``(M,)`` per sorted assignment -> ``(R,)`` per row, zero on padding."""
        return v.new_zeros(self.num_rows).index_copy_(0, self.slot, v)

    def from_rows(self, v: Tensor) -> Tensor:
        """``(R,)`` per row -> ``(M,)`` per sorted assignment."""
        return v.index_select(0, self.slot)


@dataclass
class _Spans:
    """The blocks of the padded layout: ``(e0, e1, capacity, first row)`` each, and the total row count ``R``."""

    blocks: list[tuple[int, int, int, int]]
    num_rows: int


def _block_spans(routing: MoERouting, row_bytes: int = 0) -> _Spans:
    """Cut the experts into blocks of :func:`_experts_per_block` consecutive experts (``row_bytes = 0``: one
    block); a block's capacity is the largest load among its experts (at least 1)."""
    counts = routing.counts
    per_block = _experts_per_block(len(counts), routing.capacity, row_bytes, routing.token.device)
    blocks, start = [], 0
    for e0 in range(0, len(counts), per_block):
        e1 = min(e0 + per_block, len(counts))
        cap = max(max(counts[e0:e1]), 1)
        blocks.append((e0, e1, cap, start))
        start += (e1 - e0) * cap
    return _Spans(blocks, start)


def _experts_per_block(num_experts: int, capacity: int, row_bytes: int, device: torch.device) -> int:
    """How many consecutive experts one block of the padded layout holds (see :data:`CPU_BLOCK_BYTES`)."""
    if device.type != "cpu" or row_bytes <= 0:
        return max(num_experts, 1)
    per_block = max(1, CPU_BLOCK_BYTES // (capacity * row_bytes))
    if per_block >= num_experts:
        return max(num_experts, 1)
    # A CPU bmm splits its batch over the threads: a run of 3 experts on 2 threads leaves one thread idle for a
    # third of the time (measured 30% slower), so runs are a multiple of the thread count, or 1.
    threads = torch.get_num_threads()
    return max(1, per_block - per_block % threads)


class _PaddedGroups:
    """Batched per-expert ops over ``e`` experts' padded ``(e * c, .)`` rows: every matmul is one ``torch.bmm``."""

    def __init__(self, e: int, c: int) -> None:
        self.e, self.c = e, c

    def mm(self, a: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
        """Per-expert ``rows @ w[e]``: ``(e*c, K)`` x ``(e, K, P)`` (any strides) -> ``(e*c, P)``, one bmm."""
        if out is None:
            return torch.bmm(a.view(self.e, self.c, -1), w).view(self.e * self.c, -1)
        torch.bmm(a.view(self.e, self.c, -1), w, out=out.view(self.e, self.c, -1))
        return out

    def mm_wgrad(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        """Per-expert ``rows_a.T @ rows_b``: ``(e*c, K)``, ``(e*c, P)`` -> ``(e, K, P)``, one bmm."""
        return torch.bmm(a.view(self.e, self.c, -1).transpose(1, 2), b.view(self.e, self.c, -1), out=out)

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        rows.view(self.e, self.c, -1).add_(bias.unsqueeze(1))
        return rows

    def segment_sum(self, rows: Tensor) -> Tensor:
        """``(e*c, f)`` -> ``(e, f)`` per-expert sums (padding rows are zero in every gradient summed here)."""
        return rows.view(self.e, self.c, -1).sum(1, dtype=_acc_dtype(rows.dtype))


@dataclass
class _Block:
    """A run of consecutive experts and their rows: the unit the kernel walks so that the ``(rows, h)``
    intermediates of a block stay in cache between the two matmuls and the activation."""

    rows: slice  # rows of the layout
    experts: slice  # experts (first dim of w1, w2, b1, b2, w3)
    ops: _PaddedGroups | _GroupedLayout  # mm / mm_wgrad / add_bias_ / segment_sum over the block's rows
    pad_rows: Tensor | None = None  # block-relative padding rows (padded layout), zeroed by every gather


class _GroupedLayout(_Combine):
    """Rows ``(M, f)`` compact in expert order; matmuls with ``torch._grouped_mm`` (padded bmm per call if a
    call is refused, e.g. for alignment)."""

    def __init__(self, routing: MoERouting, strict: bool) -> None:
        self.routing = routing
        self.num_rows = routing.num_assignments
        self.strict = strict
        self._padded: _PaddedLayout | None = None
        self.row_token = routing.token
        # One block: grouped GEMMs already work group by group.
        self.blocks = [_Block(slice(0, self.num_rows), slice(0, routing.num_experts), self)]
        self._init_combine(torch.arange(self.num_rows, device=routing.token.device), None)

    def _fallback(self) -> _PaddedLayout:
        if self._padded is None:
            self._padded = _PaddedLayout(self.routing, _block_spans(self.routing))
        return self._padded

    def gather(self, src: Tensor, blk: _Block | None = None) -> Tensor:
        return src.index_select(0, self.routing.token)  # one block: it is all the rows

    def to_rows(self, v: Tensor) -> Tensor:
        return v

    def from_rows(self, v: Tensor) -> Tensor:
        return v

    def _grouped_ok(self, *ts: Tensor) -> bool:
        if _aligned(*ts):
            return True
        if self.strict:
            raise RuntimeError("torch._grouped_mm needs 16-byte aligned strides (d, h multiples of 16 bytes)")
        return False


    def mm(self, a: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
        res = self._mm(a, w)
        return res if out is None else out.copy_(res)

    def mm_wgrad(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        res = self._mm_wgrad(a, b)
        return res if out is None else out.copy_(res)

    def _mm(self, a: Tensor, w: Tensor) -> Tensor:
        if self._grouped_ok(a, w):
            try:
                return torch._grouped_mm(a, w, offs=self.routing.offs)
            except RuntimeError:
                if self.strict:
                    raise
        pad = self._fallback()
        rows = a.new_zeros(pad.num_rows, a.shape[1]).index_copy_(0, pad.slot, a)
        return pad.blocks[0].ops.mm(rows, w).index_select(0, pad.slot)

    def _mm_wgrad(self, a: Tensor, b: Tensor) -> Tensor:
        if self._grouped_ok(a, b):
            try:
                return torch._grouped_mm(a.t(), b, offs=self.routing.offs)
            except RuntimeError:
                if self.strict:
                    raise
        pad = self._fallback()
        ra = a.new_zeros(pad.num_rows, a.shape[1]).index_copy_(0, pad.slot, a)
        rb = b.new_zeros(pad.num_rows, b.shape[1]).index_copy_(0, pad.slot, b)
        return pad.blocks[0].ops.mm_wgrad(ra, rb)

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        return rows.add_(bias.index_select(0, self.routing.expert))

    def segment_sum(self, rows: Tensor) -> Tensor:
        acc = _acc_dtype(rows.dtype)
        out = torch.zeros(self.routing.num_experts, rows.shape[1], device=rows.device, dtype=acc)
        return out.index_add_(0, self.routing.expert, rows.to(acc))


_Layout = _PaddedLayout | _GroupedLayout


def _make_layout(routing: MoERouting, x: Tensor, impl: str, row_bytes: int) -> _Layout:
    """Pick the row layout (see the comment above ``PADDED_MAX_WASTE``); ``row_bytes`` is the size of one row of
    the ``(R, h)`` intermediates, which sizes the padded layout's cache blocks."""
    if impl not in ("auto", "grouped", "padded"):
        raise ValueError(f"impl must be 'auto', 'grouped' or 'padded', got {impl!r}")
    if impl == "padded":
        return _PaddedLayout(routing, _block_spans(routing, row_bytes))
    available = grouped_mm_available(x.device, x.dtype)
    if impl == "grouped":
        if not available:
            raise RuntimeError(f"torch._grouped_mm is not usable for {x.device.type}/{x.dtype}")
        return _GroupedLayout(routing, strict=True)
    if not available:
        return _PaddedLayout(routing, _block_spans(routing, row_bytes))
    if x.device.type == "cpu":
        spans = _block_spans(routing, row_bytes)
        if spans.num_rows <= (1 + PADDED_MAX_WASTE) * routing.num_assignments:
            return _PaddedLayout(routing, spans)
    return _GroupedLayout(routing, strict=False)


# ---------------------------------------------------------------------------------------------------------------
# The fused kernel.
# ---------------------------------------------------------------------------------------------------------------


class _FusedMoEFunction(torch.autograd.Function):
    """Expert MLPs over expert-sorted rows + gated combine, with a memory-lean hand-written backward.

    Forward inputs: ``x`` (N, d), ``gate_sorted`` (M,) (the gates already permuted into the sort order; autograd
    of that gather is a cheap M-element scatter), ``w1``, ``w2``, ``b1``, ``b2``, ``w3``, the row layout (which
    holds the sort), the activation name and whether to save for backward.

    Saved for backward: the pre-activation(s) ``(R, h)``, the un-gated expert output ``y`` ``(R, d)`` and, with
    one block and non-GLU experts, the activation ``act(pre)`` ``(R, h)`` (held on ``ctx`` and dropped as soon as
    the ``w2`` gradient is taken, before the ``(R, h)`` activation gradient is allocated: the backward skips one
    activation pass and the peak does not grow).
    Recomputed instead of stored: the gathered input ``x[token]`` ``(R, d)`` (one gather) and, for GLU experts or
    several cache blocks, the activation (block by block, from the cache-resident pre-activation). Keeping ``y`` (``d/h`` the size of ``pre``) buys a cheap gate gradient
    ``<grad_out[token], y>`` on ``(R, d)`` and lets the gate scale ``grad_out[token]`` ``(R, d)`` rather than the
    ``(R, h)`` activation gradient: two ``(R, h)`` passes fewer. The naive loop keeps ``x[token]``, ``pre``,
    ``act(pre)`` and ``y`` alive through autograd (and its per-expert weight slices make full ``(E, d, h)``
    gradient buffers per expert), so at the benchmark's proportions the fused peak stays below the naive one.
    The backward works in place wherever a buffer is dead (the activation gradient is written over
    ``grad_out[token] @ w2.T``), so it allocates two ``(R, h)`` buffers in all (two per block with several).
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
        layout: _Layout,
        activation: str,
        save: bool,
    ) -> Tensor:
        acc = _acc_dtype(x.dtype)
        ctx.layout, ctx.activation = layout, activation
        ctx.act_out = None  # act(pre) (R, h), kept with one block; see below
        if layout.routing.num_assignments == 0:
            ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, None, None, None)
            return torch.zeros_like(x)

        h = w1.shape[-1]
        blocks = layout.blocks
        # Whole-layout buffers are only allocated when there are several blocks (each block writes its rows
        # with out=); with one block they are simply that block's results.
        many = len(blocks) > 1
        # act(pre) is kept for the backward only with one block (non-GLU), as a ctx attribute rather than via
        # save_for_backward so the backward can drop it right after its only use (the w2 gradient), before the
        # activation gradient exists: the backward skips one activation pass (an erf per element for gelu) and
        # its peak does not grow. With several blocks the backward recomputes it block by block from the
        # cache-resident pre-activation: measured as fast, and one (R, h) buffer less at the peak (0.70-0.85x
        # the naive loop's peak instead of 0.85-1.01x at N=2048-8192).
        keep_act = save and w3 is None and not many
        pre = _empty_if(many and save, x, layout.num_rows, h)
        pre3 = _empty_if(many and save and w3 is not None, x, layout.num_rows, h)
        y = _empty_if(many, x, layout.num_rows, x.shape[1])

        for blk in blocks:
            r, e, ops = blk.rows, blk.experts, blk.ops
            xs = layout.gather(x, blk)  # (rows, d): gathered per block, so the first matmul reads it from cache
            pre_b = ops.mm(xs, w1[e], out=_rows(pre, r))  # (rows, h)
            if b1 is not None:
                ops.add_bias_(pre_b, b1[e])
            pre3_b = ops.mm(xs, w3[e], out=_rows(pre3, r)) if w3 is not None else None
            del xs
            if save:
                a_b = _act(activation, pre_b)  # pre is saved: the activation needs its own buffer
                ctx.act_out = a_b if keep_act else None
            else:
                a_b = _act_(activation, pre_b)  # inference: in place, one block-sized (rows, h) buffer
            if pre3_b is not None:
                a_b.mul_(pre3_b)
            y_b = ops.mm(a_b, w2[e], out=_rows(y, r))  # (rows, d)
            if b2 is not None:
                ops.add_bias_(y_b, b2[e])
            if save:
                pre = pre_b if pre is None else pre
                pre3 = pre3_b if pre3 is None else pre3
            y = y_b if y is None else y
            del a_b, pre_b, pre3_b
        # The un-permutation and the gated sum over a token's experts (float32 for 16-bit), see _Combine.
        out = layout.combine_gated(y, gate_sorted, acc)
        if save:
            ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, pre, pre3, y)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, gate_sorted, w1, w2, b1, b2, w3, pre, pre3, y = ctx.saved_tensors
        layout: _Layout = ctx.layout
        act = ctx.activation
        need = ctx.needs_input_grad
        gx = gg = gw1 = gw2 = gb1 = gb2 = gw3 = None
        if layout.routing.num_assignments == 0:
            def zeros(i: int, t: Tensor | None) -> Tensor | None:
                return torch.zeros_like(t) if need[i] and t is not None else None

            return (*(zeros(i, t) for i, t in enumerate((x, gate_sorted, w1, w2, b1, b2, w3))), None, None, None)

        acc = _acc_dtype(x.dtype)
        grad_out = grad_out.to(x.dtype)
        gate_rows = layout.to_rows(gate_sorted).to(x.dtype)  # (R,), zero on padding rows
        dots = y.new_empty(layout.num_rows, dtype=acc) if need[1] else None  # (R,) d loss / d gate per row
        act_out = ctx.act_out
        ctx.act_out = None  # freed when this frame ends (a retained graph's second backward recomputes it)
        blocks: list[_Block] = layout.blocks
        many = len(blocks) > 1
        gw2 = _empty_like_if(many and need[3], w2)
        gw1 = _empty_like_if(many and need[2], w1)
        gw3 = _empty_like_if(many and need[6], w3)
        gb1 = _empty_like_if(many and need[4], b1)
        gb2 = _empty_like_if(many and need[5], b2)
        gxs = _empty_if(many and need[0], x, layout.num_rows, x.shape[1])
        # Per block, every temporary is block-sized and cache-resident between its uses. "buf = part if buf is
        # None else buf": with one block its results are the outputs; with several each writes its slice (out=).
        for blk in blocks:
            r, e, ops = blk.rows, blk.experts, blk.ops
            gy = layout.gather(grad_out, blk)  # (rows, d); d loss / d y = gate * gy
            if dots is not None:
                # d loss / d gate = <gy, y> per row, as tiny (1, d) @ (d, 1) matmuls: one op, no (rows, d) temporary.
                torch.bmm(gy.to(acc).unsqueeze(1), y[r].to(acc).unsqueeze(2), out=dots[r].view(-1, 1, 1))
            gy.mul_(gate_rows[r].unsqueeze(1))  # gate-scaled in place, on (rows, d) rather than (rows, h)
            if need[5] and b2 is not None:
                gb2_b = ops.segment_sum(gy).to(b2.dtype)
                gb2 = gb2_b if gb2 is None else _assign(gb2, e, gb2_b)
            act_b = act_out[r] if act_out is not None else _act(act, pre[r])  # GLU: recomputed, never stored
            if need[3]:
                gw2_b = ops.mm_wgrad(act_b * pre3[r] if pre3 is not None else act_b, gy, out=_rows(gw2, e))
                gw2 = gw2_b if gw2 is None else gw2
            if pre3 is None:
                del act_b  # its only use was the w2 gradient (GLU keeps it for d loss / d pre3)
                act_out = None  # (kept with one block only) freed before the (R, h) activation gradient exists
            ga = ops.mm(gy, w2[e].transpose(-2, -1))  # (rows, h) d loss / d a
            del gy
            if pre3 is not None:
                g3 = ga * act_b  # d loss / d pre3
                ga.mul_(pre3[r])
                del act_b
            else:
                g3 = None
            gpre = _act_backward_(act, ga, pre[r])  # (rows, h) d loss / d pre, written over ga
            del ga
            if need[4] and b1 is not None:
                gb1_b = ops.segment_sum(gpre).to(b1.dtype)
                gb1 = gb1_b if gb1 is None else _assign(gb1, e, gb1_b)
            if need[2] or (g3 is not None and need[6]):
                xs = layout.gather(x, blk)  # recomputed gather instead of a saved (R, d) copy
                if need[2]:
                    gw1_b = ops.mm_wgrad(xs, gpre, out=_rows(gw1, e))
                    gw1 = gw1_b if gw1 is None else gw1
                if need[6] and g3 is not None:
                    gw3_b = ops.mm_wgrad(xs, g3, out=_rows(gw3, e))
                    gw3 = gw3_b if gw3 is None else gw3
                del xs
            if need[0]:
                gxs_b = ops.mm(gpre, w1[e].transpose(-2, -1), out=_rows(gxs, r))  # (rows, d)
                if g3 is not None:
                    gxs_b += ops.mm(g3, w3[e].transpose(-2, -1))
                gxs = gxs_b if gxs is None else gxs
            del gpre, g3
        if dots is not None:
            gg = layout.from_rows(dots).to(gate_sorted.dtype)
        if need[0]:
            gx = layout.combine(gxs, acc).to(x.dtype)
        return gx, gg, gw1, gw2, gb1, gb2, gw3, None, None, None


def _assign(buf: Tensor, sl: slice, part: Tensor) -> Tensor:
    buf[sl] = part
    return buf


def _empty_if(cond: bool, like: Tensor, *shape: int) -> Tensor | None:
    """A whole-layout buffer that the blocks write into, or None (one block: its result is the buffer)."""
    return like.new_empty(shape) if cond else None


def _empty_like_if(cond: bool, t: Tensor | None) -> Tensor | None:
    """A gradient buffer shaped like ``t`` that the blocks write their experts' slices into, or None."""
    return torch.empty_like(t) if cond and t is not None else None


def _rows(buf: Tensor | None, sl: slice) -> Tensor | None:
    """The block's part of a whole-layout buffer (a contiguous view), or None."""
    return None if buf is None else buf[sl]


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
    _check(x, w1, w2, b1, b2, w3, activation)
    routing = sort_assignments(token_idx, expert_idx, w1.shape[0], x.shape[0], slots_per_token)
    layout = _make_layout(routing, x, impl, w1.shape[-1] * x.element_size())
    # Gates in sort order; autograd turns this gather into an M-element scatter in backward.
    gate_sorted = weight.reshape(-1).index_select(0, routing.order)
    inputs = (x, gate_sorted, w1, w2, b1, b2, w3)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _FusedMoEFunction.apply(*inputs, layout, activation, save)


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
    instead of ``index_add_``).

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
        impl: row layout / matmul strategy: ``"auto"``, ``"padded"`` (one bmm per matmul over ``(E, C, .)``
            padded groups) or ``"grouped"`` (``torch._grouped_mm`` over compact groups; raises where it cannot
            run). See the comment on ``PADDED_MAX_WASTE``.

    Returns:
        ``(N, d)`` in ``x.dtype``; sums of several experts are accumulated in float32 for 16-bit inputs.
    """
    if expert_idx.shape != gate.shape or expert_idx.dim() != 2 or expert_idx.shape[0] != x.shape[0]:
        raise ValueError(f"expert_idx and gate must both be (N, k); got {tuple(expert_idx.shape)}, {tuple(gate.shape)}")
    token_idx, flat_e, flat_g = padded_to_flat(expert_idx, gate)
    return _fused(x, w1, w2, token_idx, flat_e, flat_g, b1, b2, w3, activation, impl, expert_idx.shape[1])


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

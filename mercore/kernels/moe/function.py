"""The autograd Function of the fused kernel: expert MLPs over a layout's rows plus the gated combine, with a
memory-lean hand-written backward. What is saved, recomputed and freed when, and why: ``DESIGN.md``, "Autograd".

Shapes: ``x`` ``(N, d)``; ``gate_sorted`` ``(M,)`` (or ``(A,)`` for the sync-free layout); ``w1``, ``w3``
``(E, d, h)``; ``w2`` ``(E, h, d)``; ``b1`` ``(E, h)``; ``b2`` ``(E, d)``; layout rows ``R``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .activations import acc_dtype, act, act_, act_backward_
from .block import Block, BlockResult
from .layout import RowLayout

__all__ = ["FusedMoEFunction"]


class _Saved(NamedTuple):
    """What the forward saves (``save_for_backward`` order). ``pre``/``pre3`` ``(R, h)``, ``y`` ``(R, d)``."""

    x: Tensor
    gate_sorted: Tensor
    w1: Tensor
    w2: Tensor
    b1: Tensor | None
    b2: Tensor | None
    w3: Tensor | None
    pre: Tensor | None
    pre3: Tensor | None
    y: Tensor | None


class _Needs(NamedTuple):
    """``ctx.needs_input_grad`` of the seven tensor inputs, by name."""

    x: bool
    gate: bool
    w1: bool
    w2: bool
    b1: bool
    b2: bool
    w3: bool


def _new_empty_if(cond: bool, like: Tensor | None, *shape: int) -> Tensor | None:
    """A whole-layout buffer (``like``'s dtype and device) shaped ``shape`` (``like``'s shape if none), or None."""
    if not cond or like is None:
        return None
    return like.new_empty(shape) if shape else torch.empty_like(like)


@dataclass
class _Grads:
    """The gradients being assembled block by block (each a :class:`BlockResult`; ``xs`` over rows, the others
    over experts), and the per-row gate gradients ``dots`` ``(R,)``."""

    w1: BlockResult
    w2: BlockResult
    w3: BlockResult
    b1: BlockResult
    b2: BlockResult
    xs: BlockResult
    dots: Tensor | None

    @classmethod
    def allocate(cls, s: _Saved, need: _Needs, num_rows: int, many: bool) -> _Grads:
        """With several blocks each whole gradient is preallocated and the blocks write their slices; with one
        block nothing is (its results are the gradients)."""
        acc = acc_dtype(s.x.dtype)
        return cls(
            w2=BlockResult(_new_empty_if(many and need.w2, s.w2)),
            w1=BlockResult(_new_empty_if(many and need.w1, s.w1)),
            w3=BlockResult(_new_empty_if(many and need.w3, s.w3)),
            b1=BlockResult(_new_empty_if(many and need.b1, s.b1)),
            b2=BlockResult(_new_empty_if(many and need.b2, s.b2)),
            xs=BlockResult(_new_empty_if(many and need.x, s.x, num_rows, s.x.shape[1])),
            dots=s.y.new_empty(num_rows, dtype=acc) if need.gate else None,  # (R,) d loss / d gate per row
        )


@dataclass
class _BackwardState:
    """Everything one block's backward reads. ``act_out`` (``act(pre)``, kept by the forward with one block)
    lives here so that the block can drop the only reference right after its one use."""

    saved: _Saved
    need: _Needs
    activation: str
    grad_out: Tensor  # (N, d)
    gate_rows: Tensor  # (R,) gate of every row, zero on padding rows
    act_out: Tensor | None
    grads: _Grads


class FusedMoEFunction(torch.autograd.Function):
    """Expert MLPs over expert-sorted rows + gated combine, with a memory-lean hand-written backward.

    Forward inputs: ``x``, ``gate_sorted`` (the gates already permuted into the sort order), ``w1``, ``w2``,
    ``b1``, ``b2``, ``w3``, the row layout (which holds the sort), the activation name and whether to save for
    backward. Saves the pre-activation(s) and the un-gated expert output ``y``; with one block and non-GLU
    experts also ``act(pre)`` (on ``ctx``, dropped right after the ``w2`` gradient). Recomputes the gathered
    input and, for GLU or several blocks, the activation.
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
        layout: RowLayout,
        activation: str,
        save: bool,
    ) -> Tensor:
        ctx.layout, ctx.activation = layout, activation
        ctx.act_out = None  # act(pre) (R, h), kept with one block
        if layout.is_empty:
            ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, None, None, None)
            return torch.zeros_like(x)

        h, rows = w1.shape[-1], layout.num_rows
        # Whole-layout buffers only with several blocks (each writes its rows with out=).
        many = len(layout.blocks) > 1
        keep_act = save and w3 is None and not many
        pre = BlockResult(_new_empty_if(many and save, x, rows, h))
        pre3 = BlockResult(_new_empty_if(many and save and w3 is not None, x, rows, h))
        y = BlockResult(_new_empty_if(many, x, rows, x.shape[1]))

        for blk in layout.blocks:
            r, e, ops = blk.rows, blk.experts, blk.ops
            xs = layout.gather(x, blk)  # (rows, d): gathered per block, so the first matmul reads it from cache
            pre_b = ops.mm(xs, w1[e], out=pre.slice_of(r))  # (rows, h)
            if b1 is not None:
                ops.add_bias_(pre_b, b1[e])
            pre3_b = ops.mm(xs, w3[e], out=pre3.slice_of(r)) if w3 is not None else None
            del xs
            if save:
                a_b = act(activation, pre_b)  # pre is saved: the activation needs its own buffer
                ctx.act_out = a_b if keep_act else None
            else:
                a_b = act_(activation, pre_b)  # inference: in place, one block-sized (rows, h) buffer
            if pre3_b is not None:
                a_b.mul_(pre3_b)
            y_b = ops.mm(a_b, w2[e], out=y.slice_of(r))  # (rows, d)
            if b2 is not None:
                ops.add_bias_(y_b, b2[e])
            if save:
                pre.put(r, pre_b)
                pre3.put(r, pre3_b)
            y.put(r, y_b)
            del a_b, pre_b, pre3_b
        y_rows = layout.clear_unused_rows_(y.whole)
        # The un-permutation and the gated sum over a token's experts (float32 for 16-bit), see Combine.
        out = layout.combiner.gated(y_rows, gate_sorted, acc_dtype(x.dtype))
        if save:
            ctx.save_for_backward(x, gate_sorted, w1, w2, b1, b2, w3, pre.whole, pre3.whole, y_rows)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        s = _Saved(*ctx.saved_tensors)
        layout: RowLayout = ctx.layout
        need = _Needs(*ctx.needs_input_grad[:7])
        if layout.is_empty:
            return (*_zero_grads(s, need), None, None, None)

        acc = acc_dtype(s.x.dtype)
        st = _BackwardState(
            saved=s, need=need, activation=ctx.activation, grad_out=grad_out.to(s.x.dtype),
            gate_rows=layout.to_rows(s.gate_sorted).to(s.x.dtype), act_out=ctx.act_out,
            grads=_Grads.allocate(s, need, layout.num_rows, len(layout.blocks) > 1),
        )
        ctx.act_out = None  # freed once the block drops it (a retained graph's second backward recomputes it)
        for blk in layout.blocks:
            _block_backward(st, layout, blk)
        g = st.grads
        gg = layout.from_rows(g.dots).to(s.gate_sorted.dtype) if g.dots is not None else None
        gx = layout.combiner.summed(layout.clear_unused_rows_(g.xs.whole), acc).to(s.x.dtype) if need.x else None
        return gx, gg, g.w1.whole, g.w2.whole, g.b1.whole, g.b2.whole, g.w3.whole, None, None, None


def _zero_grads(s: _Saved, need: _Needs) -> tuple[Tensor | None, ...]:
    """Gradients of a layer with no assignment: zeros for every input that needs one."""
    inputs = (s.x, s.gate_sorted, s.w1, s.w2, s.b1, s.b2, s.w3)
    return tuple(torch.zeros_like(t) if n and t is not None else None for n, t in zip(need, inputs))


def _block_backward(st: _BackwardState, layout: RowLayout, blk: Block) -> None:
    """One block's share of every gradient. Every temporary is block-sized and cache-resident between its uses;
    dead buffers are reused in place (the activation gradient is written over ``grad_out[token] @ w2.T``)."""
    s, need, g = st.saved, st.need, st.grads
    acc = acc_dtype(s.x.dtype)
    r, e, ops = blk.rows, blk.experts, blk.ops
    gy = layout.gather(st.grad_out, blk)  # (rows, d); d loss / d y = gate * gy
    if g.dots is not None:
        # d loss / d gate = <gy, y> per row, as tiny (1, d) @ (d, 1) matmuls: one op, no (rows, d) temporary.
        torch.bmm(gy.to(acc).unsqueeze(1), s.y[r].to(acc).unsqueeze(2), out=g.dots[r].view(-1, 1, 1))
    gy.mul_(st.gate_rows[r].unsqueeze(1))  # gate-scaled in place, on (rows, d) rather than (rows, h)
    if need.b2 and s.b2 is not None:
        g.b2.put(e, ops.segment_sum(gy).to(s.b2.dtype))
    # GLU: act(pre) recomputed, never stored.
    act_b = st.act_out[r] if st.act_out is not None else act(st.activation, s.pre[r])
    if need.w2:
        g.w2.put(e, ops.mm_wgrad(act_b * s.pre3[r] if s.pre3 is not None else act_b, gy, out=g.w2.slice_of(e)))
    if s.pre3 is None:
        del act_b  # its only use was the w2 gradient (GLU keeps it for d loss / d pre3)
        st.act_out = None  # (kept with one block only) freed before the (R, h) activation gradient exists
    ga = ops.mm(gy, s.w2[e].transpose(-2, -1))  # (rows, h) d loss / d a
    del gy
    if s.pre3 is not None:
        g3 = ga * act_b  # d loss / d pre3
        ga.mul_(s.pre3[r])
        del act_b
    else:
        g3 = None
    gpre = act_backward_(st.activation, ga, s.pre[r])  # (rows, h) d loss / d pre, written over ga
    del ga
    if need.b1 and s.b1 is not None:
        g.b1.put(e, ops.segment_sum(gpre).to(s.b1.dtype))
    if need.w1 or (g3 is not None and need.w3):
        xs = layout.gather(s.x, blk)  # recomputed gather instead of a saved (R, d) copy
        if need.w1:
            g.w1.put(e, ops.mm_wgrad(xs, gpre, out=g.w1.slice_of(e)))
        if need.w3 and g3 is not None:
            g.w3.put(e, ops.mm_wgrad(xs, g3, out=g.w3.slice_of(e)))
        del xs
    if need.x:
        gxs_b = ops.mm(gpre, s.w1[e].transpose(-2, -1), out=g.xs.slice_of(r))  # (rows, d)
        if g3 is not None:
            gxs_b += ops.mm(g3, s.w3[e].transpose(-2, -1))
        g.xs.put(r, gxs_b)

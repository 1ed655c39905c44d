"""The grouped layout: the sorted rows stay compact, every matmul one ``torch._grouped_mm`` over the expert
groups. :class:`GroupedOps` is shared by the host-counts layout here and the sync-free CUDA layout."""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import acc_dtype
from .block import Block
from .combine import Combine
from .padded import PaddedLayout, block_spans
from .routing import MoERouting

__all__ = ["GroupedLayout", "GroupedOps", "aligned", "grouped_mm_available"]

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


def aligned(*ts: Tensor) -> bool:
    """``torch._grouped_mm`` wants 16-byte aligned base pointers and strides (CPU and CUDA alike). Reads only
    pointers and strides: no device sync."""
    return all(
        t.data_ptr() % 16 == 0 and all((st * t.element_size()) % 16 == 0 for st in t.stride() if st != 1)
        for t in ts
    )


class GroupedOps:
    """``torch._grouped_mm`` over compact expert groups ending at the device offsets ``offs`` (``(E,)`` int32);
    rows past ``offs[-1]`` belong to no group. ``expert`` (rows,) is each row's expert, for biases and sums."""

    def __init__(self, offs: Tensor, expert: Tensor, num_experts: int) -> None:
        self.offs, self.expert, self.num_experts = offs, expert, num_experts

    def mm(self, a: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
        res = torch._grouped_mm(a, w, offs=self.offs)
        return res if out is None else out.copy_(res)

    def mm_wgrad(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        res = torch._grouped_mm(a.t(), b, offs=self.offs)
        return res if out is None else out.copy_(res)

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        return rows.add_(bias.index_select(0, self.expert))

    def segment_sum(self, rows: Tensor) -> Tensor:
        acc = acc_dtype(rows.dtype)
        out = torch.zeros(self.num_experts, rows.shape[1], device=rows.device, dtype=acc)
        return out.index_add_(0, self.expert, rows.to(acc))


class _GroupedOpsWithFallback(GroupedOps):
    """:class:`GroupedOps` that runs a call the grouped GEMM refuses (alignment) as a padded bmm instead, unless
    ``strict`` (then it raises)."""

    def __init__(self, layout: GroupedLayout, strict: bool) -> None:
        r = layout.routing
        super().__init__(r.offs, r.expert, r.num_experts)
        self.layout, self.strict = layout, strict
        self._padded: PaddedLayout | None = None

    def _fallback(self) -> PaddedLayout:
        if self._padded is None:
            self._padded = PaddedLayout(self.layout.routing, block_spans(self.layout.routing))
        return self._padded

    def _grouped_ok(self, *ts: Tensor) -> bool:
        if aligned(*ts):
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
                return torch._grouped_mm(a, w, offs=self.offs)
            except RuntimeError:
                if self.strict:
                    raise
        pad = self._fallback()
        rows = a.new_zeros(pad.num_rows, a.shape[1]).index_copy_(0, pad.slot, a)
        return pad.blocks[0].ops.mm(rows, w).index_select(0, pad.slot)

    def _mm_wgrad(self, a: Tensor, b: Tensor) -> Tensor:
        if self._grouped_ok(a, b):
            try:
                return torch._grouped_mm(a.t(), b, offs=self.offs)
            except RuntimeError:
                if self.strict:
                    raise
        pad = self._fallback()
        ra = a.new_zeros(pad.num_rows, a.shape[1]).index_copy_(0, pad.slot, a)
        rb = b.new_zeros(pad.num_rows, b.shape[1]).index_copy_(0, pad.slot, b)
        return pad.blocks[0].ops.mm_wgrad(ra, rb)


class GroupedLayout:
    """Rows ``(M, f)`` compact in expert order, from host-counted routing; matmuls with ``torch._grouped_mm``
    (a padded bmm per call if a call is refused and not ``strict``). One block: grouped GEMMs already work group
    by group."""

    def __init__(self, routing: MoERouting, strict: bool) -> None:
        self.routing = routing
        self.num_rows = routing.num_assignments
        self.row_token = routing.token
        ops = _GroupedOpsWithFallback(self, strict)
        self.blocks = [Block(slice(0, self.num_rows), slice(0, routing.num_experts), ops)]
        self.combiner = Combine.for_compact_rows(routing, row_token=self.row_token, gate_rows=self.to_rows,
                                                 num_rows=self.num_rows)

    @property
    def is_empty(self) -> bool:
        return self.routing.num_assignments == 0

    def gather(self, src: Tensor, blk: Block | None = None) -> Tensor:
        return src.index_select(0, self.routing.token)  # one block: it is all the rows

    def to_rows(self, v: Tensor) -> Tensor:
        return v

    def from_rows(self, v: Tensor) -> Tensor:
        return v

    def clear_unused_rows_(self, rows: Tensor) -> Tensor:
        return rows  # every row is a real assignment

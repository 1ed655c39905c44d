"""What the autograd Function needs from a row layout, and the choice among the three layouts."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .block import Block
from .combine import Combine
from .grouped import GroupedLayout, aligned, grouped_mm_available
from .padded import PaddedLayout, block_spans
from .routing import MoERouting

__all__ = ["IMPLS", "PADDED_MAX_WASTE", "RowLayout", "host_layout", "sync_free_eligible"]

IMPLS: tuple[str, ...] = ("auto", "grouped", "padded", "sync_free")
PADDED_MAX_WASTE = 1.0  # CPU auto: padded layout while its rows R <= (1 + this) * M (DESIGN.md, "Layouts")


class RowLayout(Protocol):
    """Where the sorted assignments live while every expert runs: ``num_rows`` rows in ``blocks``."""

    num_rows: int
    blocks: list[Block]
    combiner: Combine

    @property
    def is_empty(self) -> bool: ...

    def gather(self, src: Tensor, blk: Block | None = None) -> Tensor:
        """``(N, f)`` -> the block's ``(rows, f)`` (all rows without a block)."""

    def to_rows(self, v: Tensor) -> Tensor:
        """``(M,)`` per sorted assignment -> ``(R,)`` per row."""

    def from_rows(self, v: Tensor) -> Tensor:
        """``(R,)`` per row -> ``(M,)`` per sorted assignment."""

    def clear_unused_rows_(self, rows: Tensor) -> Tensor:
        """Zero, in place, rows that hold no assignment and may be garbage, before the combine reads them."""


def sync_free_eligible(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor | None) -> bool:
    """Whether the sync-free grouped layout can run: ``torch._grouped_mm`` works for this device/dtype and every
    operand it sees is 16-byte aligned (decided from shapes, strides and pointers only: no device read)."""
    if not grouped_mm_available(x.device, x.dtype):
        return False
    h = w1.shape[-1]
    rows_ok = (x.shape[1] * x.element_size()) % 16 == 0 and (h * x.element_size()) % 16 == 0
    return rows_ok and aligned(x, w1, w2, w2.transpose(-2, -1), *([w3] if w3 is not None else []))


def host_layout(routing: MoERouting, x: Tensor, impl: str, row_bytes: int) -> PaddedLayout | GroupedLayout:
    """Pick the layout for host-counted routing (``impl`` ``auto`` / ``grouped`` / ``padded``; DESIGN.md,
    "Layouts"); ``row_bytes`` is the size of one row of the ``(R, h)`` intermediates, which sizes the padded
    layout's cache blocks."""
    if impl == "padded":
        return PaddedLayout(routing, block_spans(routing, row_bytes))
    available = grouped_mm_available(x.device, x.dtype)
    if impl == "grouped":
        if not available:
            raise RuntimeError(f"torch._grouped_mm is not usable for {x.device.type}/{x.dtype}")
        return GroupedLayout(routing, strict=True)
    if not available:
        return PaddedLayout(routing, block_spans(routing, row_bytes))
    if x.device.type == "cpu":
        spans = block_spans(routing, row_bytes)
        if spans.num_rows <= (1 + PADDED_MAX_WASTE) * routing.num_assignments:
            return PaddedLayout(routing, spans)
    return GroupedLayout(routing, strict=False)

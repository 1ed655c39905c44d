"""The unit of work the kernel walks: a run of consecutive experts and their rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

__all__ = ["Block", "BlockResult", "GroupOps"]


class GroupOps(Protocol):
    """Per-expert batched ops over one block's expert-grouped rows (``rows`` = the block's row count)."""

    def mm(self, a: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
        """``(rows, K)`` x ``(e, K, P)`` -> ``(rows, P)``: each expert's rows times its weight."""

    def mm_wgrad(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        """``(rows, K)``, ``(rows, P)`` -> ``(e, K, P)``: each expert's ``a_rows.T @ b_rows``."""

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        """``rows += bias[expert of the row]`` in place, ``bias`` ``(e, f)``."""

    def segment_sum(self, rows: Tensor) -> Tensor:
        """``(rows, f)`` -> ``(e, f)`` per-expert sums (accumulated in float32 for 16-bit rows)."""


@dataclass
class Block:
    """A run of consecutive experts and their rows: the unit the kernel walks so that the ``(rows, h)``
    intermediates of a block stay in cache between the two matmuls and the activation."""

    rows: slice  # rows of the layout
    experts: slice  # experts (first dim of w1, w2, b1, b2, w3)
    ops: GroupOps  # mm / mm_wgrad / add_bias_ / segment_sum over the block's rows
    pad_rows: Tensor | None = None  # block-relative padding rows (padded layout), zeroed by every gather


class BlockResult:
    """A whole-layout result (over all rows or all experts) put together from per-block parts.

    With several blocks, ``whole`` is a preallocated buffer: each block writes its slice (``out=`` into
    :meth:`slice_of`, or copied by :meth:`put`). With one block there is no buffer: the block's part *is* the
    result, so nothing is allocated or copied twice.
    """

    def __init__(self, whole: Tensor | None = None) -> None:
        self.whole = whole

    def slice_of(self, sl: slice) -> Tensor | None:
        """The block's part of the buffer (a contiguous view) to write into with ``out=``, or None."""
        return None if self.whole is None else self.whole[sl]

    def put(self, sl: slice, part: Tensor | None) -> None:
        """Record the block's ``part`` for slice ``sl`` (a no-op copy when it was written there with ``out=``)."""
        if self.whole is None:
            self.whole = part
            return
        dst = self.whole[sl]
        if part is not None and part.data_ptr() != dst.data_ptr():
            dst.copy_(part)

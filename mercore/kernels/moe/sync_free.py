"""The sync-free layout (the CUDA path): every one of the ``A = N*k`` assignments owns a row, sorted by expert
with the invalid ones last; the expert groups end at device offsets, so nothing in the forward or the backward
reads a value back to the host and the whole layer can be captured in a CUDA graph.

Rows ``M .. A-1`` (the invalid assignments, ``M`` known only on the device) belong to no ``torch._grouped_mm``
group: the grouped GEMM leaves those output rows unwritten (garbage, possibly NaN), the weight-gradient GEMMs
never read them, per-expert sums send them to a discarded bucket, and :meth:`SyncFreeLayout.clear_unused_rows_`
zeroes them in every tensor the combine reads.

Every function in this file is checked by ``tests/kernels/test_moe_sync_free.py`` for host reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import acc_dtype
from .block import Block
from .combine import Combine
from .grouped import GroupedOps
from .routing import DeviceRouting

__all__ = ["SyncFreeLayout"]


class _SyncFreeOps(GroupedOps):
    """:class:`GroupedOps` over rows whose tail belongs to no expert (expert id ``E``)."""

    def __init__(self, routing: DeviceRouting) -> None:
        super().__init__(routing.offs, routing.expert, routing.num_experts)
        # The bias of a tail row does not matter (the row is cleared); any valid index will do.
        self.bias_expert = routing.expert.clamp(max=routing.num_experts - 1)

    def add_bias_(self, rows: Tensor, bias: Tensor) -> Tensor:
        return rows.add_(bias.index_select(0, self.bias_expert))

    def segment_sum(self, rows: Tensor) -> Tensor:
        """``(A, f)`` -> ``(E, f)``; the tail rows (garbage) go to an extra bucket ``E`` that is dropped."""
        acc = acc_dtype(rows.dtype)
        out = torch.zeros(self.num_experts + 1, rows.shape[1], device=rows.device, dtype=acc)
        return out.index_add_(0, self.expert, rows.to(acc))[: self.num_experts]


class SyncFreeLayout:
    """Rows ``(A, f)`` in expert order, invalid assignments last; one block of all experts."""

    def __init__(self, routing: DeviceRouting) -> None:
        self.routing = routing
        self.num_rows = routing.num_assignments  # A: a shape, not a count
        self.row_token = routing.token
        self.unused = (~routing.valid).unsqueeze(1)  # (A, 1) rows that belong to no expert
        self.blocks = [Block(slice(0, self.num_rows), slice(0, routing.num_experts), _SyncFreeOps(routing))]
        # Every (token, slot) has a row, so the combine never needs a spare zero row: a -1 slot reads its own
        # tail row, which clear_unused_rows_ has zeroed.
        self.combiner = Combine.for_compact_rows(routing, row_token=self.row_token, gate_rows=self.to_rows,
                                                 num_rows=self.num_rows)

    @property
    def is_empty(self) -> bool:
        """No row at all (``A = 0``: a shape). Routings whose every slot is ``-1`` run through the kernel and
        give zeros: whether any slot is valid is only known on the device."""
        return self.num_rows == 0

    def gather(self, src: Tensor, blk: Block | None = None) -> Tensor:
        return src.index_select(0, self.row_token)

    def to_rows(self, v: Tensor) -> Tensor:
        return v

    def from_rows(self, v: Tensor) -> Tensor:
        return v

    def clear_unused_rows_(self, rows: Tensor) -> Tensor:
        """Zero the rows of invalid assignments in place (the grouped GEMM left them unwritten)."""
        return rows.masked_fill_(self.unused, 0)

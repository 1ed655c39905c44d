"""The un-permutation: ``(R, f)`` layout rows -> ``(N, f)`` per-token sums. A component every layout holds."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Combine"]


class Combine:
    """Sums each token's rows, optionally weighted by the gates.

    For the padded routing form every token owns ``k`` consecutive flat assignments, so the combine gathers each
    assignment's row into ``(N, k, f)`` and reduces over ``k``: the forward one with the gates as a batched
    ``(1, k) @ (k, f)`` matmul per token (the gating and the sum in one op), the gradient one with a sum. No
    scatter, a fixed summation order (deterministic on CUDA too, where ``index_add_`` uses atomics). ``-1``
    slots read a row whose value is zero (a padding row, or an appended zero row). Arbitrary flat routing falls
    back to ``index_add_`` over the row tokens.

    Args:
        num_tokens: ``N``.
        slots_per_token: ``k`` for the padded form, ``None`` for arbitrary flat routing (``index_add_``).
        order: ``(M,)`` flat position of every sorted assignment.
        row_of_sorted: ``(M,)`` layout row of every sorted assignment.
        row_token: ``(R,)`` token of every row (the ``index_add_`` path).
        gate_rows: maps ``(M,)`` per sorted assignment to ``(R,)`` per row, zero on padding (``index_add_`` path).
        num_rows: ``R``.
        zero_row: a row that is zero in every combined tensor, for the ``-1`` slots; ``None``: append one if
            some slot needs it (``M < N*k``).
    """

    @classmethod
    def for_compact_rows(cls, routing, *, row_token: Tensor, gate_rows, num_rows: int) -> "Combine":
        """The combine of a layout whose row ``i`` is sorted assignment ``i`` (no padding rows: the grouped and
        sync-free layouts); ``routing`` gives ``num_tokens``, ``slots_per_token``, ``order`` and the device."""
        return cls(num_tokens=routing.num_tokens, slots_per_token=routing.slots_per_token, order=routing.order,
                   row_of_sorted=torch.arange(num_rows, device=routing.token.device), row_token=row_token,
                   gate_rows=gate_rows, num_rows=num_rows, zero_row=None)

    def __init__(
        self,
        *,
        num_tokens: int,
        slots_per_token: int | None,
        order: Tensor,
        row_of_sorted: Tensor,
        row_token: Tensor,
        gate_rows,
        num_rows: int,
        zero_row: int | None,
    ) -> None:
        self.num_tokens = num_tokens
        self.slots_per_token = slots_per_token
        self.order = order
        self.row_token = row_token
        self._gate_rows = gate_rows
        self.inv: Tensor | None = None  # (N*k,) layout row of every (token, slot)
        self.append_zero = False
        k = slots_per_token
        if k is None:
            return
        n_assign = num_tokens * k
        if order.shape[0] < n_assign and zero_row is None:
            zero_row, self.append_zero = num_rows, True
        fill = zero_row if zero_row is not None else 0
        self.inv = torch.full((n_assign,), fill, dtype=torch.long, device=row_of_sorted.device)
        self.inv.index_copy_(0, order, row_of_sorted)

    def per_slot(self, rows: Tensor) -> Tensor:
        """``(R, f)`` -> ``(N, k, f)`` the row of every (token, slot)."""
        if self.append_zero:
            rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        return rows.index_select(0, self.inv).view(self.num_tokens, self.slots_per_token, rows.shape[1])

    def gated(self, rows: Tensor, gate_sorted: Tensor, dtype: torch.dtype) -> Tensor:
        """Forward combine: ``out[t] = sum over t's slots of gate * row`` -> ``(N, f)`` in ``dtype``."""
        n = self.num_tokens
        if self.inv is None:
            src = rows.to(dtype) * self._gate_rows(gate_sorted).to(dtype).unsqueeze(1)
            return torch.zeros(n, rows.shape[1], device=rows.device, dtype=dtype).index_add_(0, self.row_token, src)
        k = self.slots_per_token
        gate_nk = gate_sorted.new_zeros(n * k).index_copy_(0, self.order, gate_sorted)  # 0 on -1 slots
        per_slot = self.per_slot(rows).to(dtype)
        if k == 1:  # a (1, 1) @ (1, f) bmm per token is ~10x slower than the broadcast multiply it amounts to
            return per_slot.view(n, -1).mul_(gate_nk.to(dtype).unsqueeze(1))
        return torch.bmm(gate_nk.to(dtype).view(n, 1, k), per_slot).view(n, -1)

    def summed(self, rows: Tensor, dtype: torch.dtype) -> Tensor:
        """Gradient combine: ``out[t] = sum over t's slots of row`` -> ``(N, f)`` in ``dtype``; rows of ``-1``
        slots and padding rows must be zero (gradient rows are)."""
        if self.inv is None:
            out = torch.zeros(self.num_tokens, rows.shape[1], device=rows.device, dtype=dtype)
            return out.index_add_(0, self.row_token, rows.to(dtype))
        per_slot = self.per_slot(rows)
        if per_slot.shape[1] == 1:
            return per_slot.view(per_slot.shape[0], -1).to(dtype)
        return per_slot.sum(1, dtype=dtype)

"""``BlockResult`` and ``Combine`` (``block.py``, ``combine.py``): results assembled from blocks, and the
un-permutation of layout rows to per-token sums."""

from __future__ import annotations

import torch

from mercore.kernels.moe.block import BlockResult
from mercore.kernels.moe.combine import Combine


def test_one_block_result_is_the_part_itself() -> None:
    res, part = BlockResult(), torch.arange(6.0)
    assert res.slice_of(slice(0, 6)) is None
    res.put(slice(0, 6), part)
    assert res.whole is part


def test_several_blocks_write_their_slices() -> None:
    res = BlockResult(torch.zeros(6))
    res.slice_of(slice(0, 3)).copy_(torch.tensor([1.0, 2.0, 3.0]))  # written in place with out=
    res.put(slice(0, 3), res.slice_of(slice(0, 3)))  # no-op copy
    res.put(slice(3, 6), torch.tensor([4.0, 5.0, 6.0]))  # copied
    assert res.whole.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def _combine(k: int | None) -> tuple[Combine, torch.Tensor, torch.Tensor]:
    # 3 tokens x 2 slots, slot (1, 1) empty: sorted assignments 0..4 at flat positions `order`, rows 0..4 + a
    # zero row 5.
    order = torch.tensor([0, 3, 1, 2, 4])
    row_token = torch.tensor([0, 1, 0, 1, 2, 0])
    gate_sorted = torch.tensor([0.5, 0.25, 2.0, 1.0, 3.0])

    def gate_rows(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, v.new_zeros(1)])

    c = Combine(num_tokens=3, slots_per_token=k, order=order, row_of_sorted=torch.arange(5), row_token=row_token,
                gate_rows=gate_rows, num_rows=6, zero_row=5)
    return c, gate_sorted, torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [0.0]])


def test_combine_padded_form_and_flat_fallback_agree() -> None:
    # token 0: rows 0 (gate .5) and 2 (gate 2); token 1: rows 3 (gate 1) and 1 (gate .25); token 2: row 4 (3).
    expected_gated = [[0.5 * 1 + 2 * 3], [1 * 4 + 0.25 * 2], [3 * 5]]
    expected_sum = [[1 + 3], [4 + 2], [5]]
    for k in (2, None):
        c, gate, rows = _combine(k)
        assert c.gated(rows, gate, torch.float32).tolist() == expected_gated, k
        assert c.summed(rows, torch.float32).tolist() == expected_sum, k

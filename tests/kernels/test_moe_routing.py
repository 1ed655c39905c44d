"""Routing (``mercore/kernels/moe/routing.py``): the sort by expert, counts and offsets, host and device forms."""

from __future__ import annotations

import pytest
import torch

from mercore.kernels.moe import padded_to_flat, sort_assignments, sort_assignments_on_device


def test_host_routing_sorts_drops_and_counts() -> None:
    idx = torch.tensor([[2, 0], [-1, 2], [1, -1], [2, 1]])
    tok, flat_e, _ = padded_to_flat(idx, torch.ones(4, 2))
    r = sort_assignments(tok, flat_e, 4, 4, 2)
    assert r.counts == [1, 2, 3, 0]
    assert r.offs.tolist() == [1, 3, 6, 6]
    assert r.expert.tolist() == [0, 1, 1, 2, 2, 2]
    assert r.order.tolist() == [1, 4, 7, 0, 3, 6]  # stable: token order within an expert
    assert r.token.tolist() == [0, 2, 3, 0, 1, 3]
    assert r.capacity == 3 and r.num_experts == 4 and r.num_assignments == 6


def test_device_routing_agrees_with_host_routing() -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(-1, 5, (40,), generator=g)
    tok = torch.arange(40) // 2
    host = sort_assignments(tok, idx, 5, 20, 2)
    dev = sort_assignments_on_device(tok, idx, 5, 20, 2)
    m = host.num_assignments
    assert dev.num_assignments == 40 and int(dev.valid.sum()) == m and bool(dev.valid[:m].all())
    assert torch.equal(dev.offs, host.offs)
    assert torch.equal(dev.order[:m], host.order) and torch.equal(dev.token[:m], host.token)
    assert torch.equal(dev.expert[:m], host.expert) and bool((dev.expert[m:] == 5).all())


@pytest.mark.parametrize("sort", [sort_assignments, sort_assignments_on_device])
def test_routing_rejects_out_of_range_experts(sort) -> None:
    tok = torch.arange(3)
    with pytest.raises((ValueError, RuntimeError), match=r"expert_idx"):
        sort(tok, torch.tensor([0, 3, 1]), 3, 3)
    with pytest.raises((ValueError, RuntimeError), match=r"\[-1, E\)"):
        sort(tok, torch.tensor([0, -2, 1]), 3, 3)
    with pytest.raises(ValueError, match="same number of entries"):
        sort(tok, torch.tensor([0, 1]), 3, 3)

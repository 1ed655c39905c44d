"""Routing: the one permutation. Flat ``(A,)`` assignments sorted by expert, in two forms.

* :func:`sort_assignments` -> :class:`MoERouting`: the ``M`` valid assignments only, with per-expert counts on
  the host (one device read). The padded layout needs them to size its ``(E, C, .)`` groups; on the CPU the
  read is free.
* :func:`sort_assignments_on_device` -> :class:`DeviceRouting`: all ``A`` assignments, the invalid ones
  (``expert_idx == -1``) sorted last, counts and offsets only on the device. Nothing is read back to the host,
  so a CUDA forward/backward built on it can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DeviceRouting", "MoERouting", "padded_to_flat", "sort_assignments", "sort_assignments_on_device"]


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


def _flatten_checked(token_idx: Tensor, expert_idx: Tensor) -> tuple[Tensor, Tensor]:
    expert_idx = expert_idx.reshape(-1).to(torch.long)
    token_idx = token_idx.reshape(-1).to(torch.long)
    if expert_idx.numel() != token_idx.numel():
        raise ValueError("token_idx and expert_idx must have the same number of entries")
    return token_idx, expert_idx


def sort_assignments(
    token_idx: Tensor, expert_idx: Tensor, num_experts: int, num_tokens: int, slots_per_token: int | None = None
) -> MoERouting:
    """Sort flat assignments by expert, dropping ``expert_idx == -1`` entries; reads the counts to the host.

    Args:
        token_idx: ``(A,)`` long token of each assignment.
        expert_idx: ``(A,)`` long expert of each assignment, ``-1`` for none.
        num_experts: ``E``.
        num_tokens: ``N``.
        slots_per_token: ``k`` if ``token_idx == arange(N).repeat_interleave(k)`` (the padded form), else None.
    """
    token_idx, expert_idx = _flatten_checked(token_idx, expert_idx)
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


@dataclass
class DeviceRouting:
    """All ``A`` flat assignments sorted by expert, the invalid ones last; every field that depends on the
    routing's values lives on the device, every host-side field depends only on shapes.

    Attributes:
        order: ``(A,)`` long, flat positions sorted by expert (stable: token order within an expert).
        token: ``(A,)`` long, token of each sorted assignment.
        expert: ``(A,)`` long, expert of each sorted assignment; ``E`` for the invalid tail.
        valid: ``(A,)`` bool, whether a sorted position holds a real assignment (a prefix of ``M`` Trues).
        offs: ``(E,)`` int32 cumulative group ends on the device (``offs[-1] = M``); rows ``M .. A-1`` belong
            to no group, so ``torch._grouped_mm`` leaves them out.
        num_tokens: ``N``; num_experts: ``E``; slots_per_token: ``k`` for the padded form, else ``None``.
    """

    order: Tensor
    token: Tensor
    expert: Tensor
    valid: Tensor
    offs: Tensor
    num_tokens: int
    num_experts: int
    slots_per_token: int | None = None

    @property
    def num_assignments(self) -> int:
        """``A``, the bound every buffer is sized by (a shape, not a count: no device read)."""
        return self.order.shape[0]


def sort_assignments_on_device(
    token_idx: Tensor, expert_idx: Tensor, num_experts: int, num_tokens: int, slots_per_token: int | None = None
) -> DeviceRouting:
    """Sort flat assignments by expert with no host read (same arguments as :func:`sort_assignments`).

    The range check runs on the device (``torch._assert_async``): on the CPU it raises at once; on CUDA a bad
    index is a device-side assert, reported at the next synchronizing call.
    """
    token_idx, expert_idx = _flatten_checked(token_idx, expert_idx)
    if expert_idx.numel():
        in_range = ((expert_idx >= -1) & (expert_idx < num_experts)).all()
        torch._assert_async(in_range, f"expert_idx entries must be in [-1, E) with E = num_experts={num_experts}")
    valid_flat = expert_idx >= 0
    # Invalid entries get key E, so they sort after every expert and the valid assignments are a prefix.
    key = torch.where(valid_flat, expert_idx, num_experts)
    sorted_e, order = torch.sort(key, stable=True)
    token = token_idx.index_select(0, order)
    # Group ends: how many sorted keys are <= e, for every expert e (a binary search per expert, on the device).
    experts = torch.arange(num_experts, device=expert_idx.device, dtype=sorted_e.dtype)
    offs = torch.searchsorted(sorted_e, experts, right=True).to(torch.int32)
    return DeviceRouting(order=order, token=token, expert=sorted_e, valid=sorted_e < num_experts, offs=offs,
                         num_tokens=num_tokens, num_experts=num_experts, slots_per_token=slots_per_token)


def padded_to_flat(expert_idx: Tensor, gate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Convert padded routing ``(N, k)`` to flat ``(token_idx, expert_idx, weight)`` each ``(N*k,)``.

    ``-1`` entries are kept (and ignored by :func:`~mercore.kernels.moe.fused_moe_flat`); drop them with
    ``mask = expert_idx >= 0`` if a compact list is wanted.
    """
    n, k = expert_idx.shape
    # [0]*k + [1]*k + ...: an expand, not repeat_interleave (which may size its output from a device read).
    token_idx = torch.arange(n, device=expert_idx.device).unsqueeze(1).expand(n, k).reshape(-1)
    return token_idx, expert_idx.reshape(-1), gate.reshape(-1)

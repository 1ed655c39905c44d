"""Helpers for padded dialogue batches: ``(B, T, ...)`` tensors with a bool ``mask (B, T)``, True = real utterance."""

from __future__ import annotations

import torch


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x (B, T, D)`` with the padded positions set to 0 (also where they held NaN or inf)."""
    return x.masked_fill(~mask.bool().unsqueeze(-1), 0.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values (B, T)`` over the True entries of ``mask (B, T)``; 0 (with a graph) when there are none."""
    mask = mask.bool()
    total = values.masked_fill(~mask, 0.0).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


__all__ = ["masked_mean", "zero_padding"]

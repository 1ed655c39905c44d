"""SDT's gates (Ma et al., TMM 2024): a per-feature sigmoid gate on one view, and a softmax over M views.

Shared by SUMMER's HCMF and the SDT baseline fusion.
"""

from __future__ import annotations

import torch
from torch import nn


class UnimodalGate(nn.Module):
    """SDT's unimodal-level gated fusion: ``sigmoid(W x) * x`` per feature, ``W`` a bias-free ``Linear(D, D)``.

    ``identity=True`` fixes ``W`` to the identity (SDT freezes it so on MELD), i.e. ``sigmoid(x) * x``.
    ``(B, T, D) -> (B, T, D)``.
    """

    def __init__(self, dim: int, identity: bool = False):
        super().__init__()
        self.fc = None if identity else nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.fc is None else self.fc(x)
        return torch.sigmoid(z) * x


class ModalityGate(nn.Module):
    """SDT's multimodal-level gated fusion: a softmax over the M inputs, per feature, of ``W x_m``.

    ``y = sum_m softmax_m(W x_m) * x_m`` with ``W`` a bias-free ``Linear(D, D)`` shared by the inputs.
    ``list of M (B, T, D) -> ((B, T, D), weights (B, T, M, D))``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack(xs, dim=-2)  # (B, T, M, D)
        weights = self.fc(stacked).softmax(dim=-2)
        return (weights * stacked).sum(dim=-2), weights


__all__ = ["ModalityGate", "UnimodalGate"]

"""Task losses over padded dialogue batches."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

from mercore.config import option
from mercore.data.types import PAD_LABEL


class CrossEntropyLoss(torch.nn.Module):
    """Cross-entropy over real utterances, plain or class-weighted, with optional label smoothing.

    ``class_weights: inverse_frequency`` weights class c by ``N / (C * n_c)`` counted on the training split,
    as SDT does on IEMOCAP; ``none`` is plain cross-entropy.

    Shapes: logits ``(B, T, C)``, labels ``(B, T)`` with ``PAD_LABEL`` at padding -> scalar.
    """

    @attrs.define
    class Config:
        class_weights: Literal["none", "inverse_frequency"] = option("none", help="per-class weighting")
        label_smoothing: float = option(0.0, help="label smoothing epsilon in [0, 1)")

    def __init__(self, config: Config, *, num_classes: int, train_label_counts: torch.Tensor | None = None, **_: object):
        super().__init__()
        self.config = config
        weight = None
        if config.class_weights == "inverse_frequency":
            if train_label_counts is None:
                raise ValueError("class_weights=inverse_frequency needs the training label counts")
            counts = train_label_counts.float().clamp_min(1.0)
            weight = counts.sum() / (num_classes * counts)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            weight=self.weight,
            ignore_index=PAD_LABEL,
            label_smoothing=self.config.label_smoothing,
        )

"""Task losses over padded dialogue batches."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F

from mercore.config import option
from mercore.data.types import PAD_LABEL
from mercore.errors import ConfigError


class CrossEntropyLoss(torch.nn.Module):
    """Cross-entropy over real utterances, plain or class-weighted, with optional label smoothing.

    ``class_weights: inverse_frequency`` weights class c by ``N / (C * n_c)`` counted on the training split;
    ``given`` takes the C weights of ``weights`` (SDT's IEMOCAP script hard-codes ``1 / f_c``, f_c the class
    frequencies of its whole training set, which a dev carve-out changes slightly); ``none`` is plain
    cross-entropy. A weighted loss is the weighted mean ``sum w_y l / sum w_y`` over real utterances (SDT's
    ``MaskedNLLLoss``), so only the ratios of the weights matter.

    Shapes: logits ``(B, T, C)``, labels ``(B, T)`` with ``PAD_LABEL`` at padding -> scalar.
    """

    @attrs.define
    class Config:
        class_weights: Literal["none", "inverse_frequency", "given"] = option("none", help="per-class weighting")
        weights: list[float] | None = option(None, help="the per-class weights of class_weights: given "
                                                        "(one per class, in label order, each > 0)")
        label_smoothing: float = option(0.0, help="label smoothing epsilon in [0, 1)")

        def __attrs_post_init__(self) -> None:
            if self.class_weights == "given":
                if not self.weights:
                    raise ValueError("class_weights: given needs weights: [w_0, ..., w_{C-1}]")
                if any(not w > 0 for w in self.weights):
                    raise ValueError(f"weights must all be > 0, got {list(self.weights)}")
            elif self.weights is not None:
                raise ValueError(f"weights is set but class_weights is {self.class_weights!r}; "
                                 "set class_weights: given to use them")

    def __init__(self, config: Config, *, num_classes: int, train_label_counts: torch.Tensor | None = None, **_: object):
        super().__init__()
        self.config = config
        weight = None
        if config.class_weights == "given":
            if len(config.weights) != num_classes:
                raise ConfigError(f"loss.weights has {len(config.weights)} values but the data has {num_classes} "
                                  "classes; give one weight per class, in label order")
            weight = torch.tensor([float(w) for w in config.weights])
        elif config.class_weights == "inverse_frequency":
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

"""Classifier heads (kind ``head``), built as ``Head(config, hidden=H, num_classes=C)``; ``(B, T, H) -> (B, T, C)``."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import option


class LinearHead(nn.Module):
    """Dropout then ``Linear(H, C)``. Shapes: ``(B, T, H) -> (B, T, C)``."""

    @attrs.define
    class Config:
        dropout: float = option(0.0, help="dropout on the input features")

    def __init__(self, config: Config, *, hidden: int, num_classes: int, **_: object):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ReluLinearHead(nn.Module):
    """SDT's unimodal classifier: ``ReLU -> Dropout -> Linear(H, C)`` (no hidden layer).

    SDT (``model.py``, ``Transformer_Based_Model.{t,a,v}_output_layer``) puts this on each modality's fused
    representation; its fused classifier is a bare ``Linear(H, C)`` (``linear`` with dropout 0 here).
    Shapes: ``(B, T, H) -> (B, T, C)``.
    """

    @attrs.define
    class Config:
        dropout: float = option(0.0, help="dropout between the ReLU and the linear layer (SDT: 0.5)")

    def __init__(self, config: Config, *, hidden: int, num_classes: int, **_: object):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPHead(nn.Module):
    """A two-layer classifier: ``Linear(H, inner) -> ReLU (or GELU) -> Dropout -> Linear(inner, C)``.

    Not SDT's: SDT's classifiers have no hidden layer (see :class:`ReluLinearHead` and ``linear``).
    Shapes: ``(B, T, H) -> (B, T, C)``. ``inner`` defaults to H.
    """

    @attrs.define
    class Config:
        inner: int | None = option(None, help="hidden width of the MLP (null: the model's hidden size)")
        activation: Literal["relu", "gelu"] = option("relu", help="activation")
        dropout: float = option(0.1, help="dropout before the output layer")

    def __init__(self, config: Config, *, hidden: int, num_classes: int, **_: object):
        super().__init__()
        self.config = config
        inner = config.inner if config.inner is not None else hidden
        if inner < 1:
            raise ValueError(f"mlp head: inner must be >= 1, got {inner}")
        act = nn.ReLU() if config.activation == "relu" else nn.GELU()
        self.net = nn.Sequential(nn.Linear(hidden, inner), act, nn.Dropout(config.dropout), nn.Linear(inner, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


__all__ = ["LinearHead", "MLPHead", "ReluLinearHead"]

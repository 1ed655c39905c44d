"""Modality encoders (kind ``encoder``): utterance embedding + a context encoder over the dialogue.

The encoder contract is :class:`mercore.nn.Encoder`. The ``transformer`` encoder also has the optional
capability :class:`mercore.nn.AttentionEncoder`: ``forward_with_attention`` returns the last layer's attention,
which a teacher exposes to guide a student's attention (SUMMER's teacher-guided HCMF).

The ``bigru`` and ``linear`` baselines live in :mod:`mercore_baselines.encoders`.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from mercore.config import option
from mercore.nn import EmbeddingConfig, TransformerLayer, UtteranceEmbedding, zero_padding


class TransformerEncoder(nn.Module):
    """Utterance embedding + a pre-norm Transformer over the dialogue, exposing the last attention weights.

    Shapes: ``x (B, T, D_m)``, ``speakers (B, T)``, ``mask (B, T)`` -> ``(B, T, H)``;
    :meth:`forward_with_attention` also returns the last layer's attention ``(B, heads, T, T)``.

    ``layers`` pre-norm layers (self-attention with a key-padding mask, GELU feed-forward of width
    ``ff_mult * H``) and a final LayerNorm, as is usual for pre-norm stacks. SDT uses one layer, 8 heads and a
    feed-forward as wide as the hidden size (``ff_mult: 1``), which are the defaults.
    """

    @attrs.define
    class Config(EmbeddingConfig):
        layers: int = option(1, help="number of Transformer layers")
        heads: int = option(8, help="attention heads (hidden must be divisible by it)")
        ff_mult: float = option(1.0, help="feed-forward width as a multiple of hidden (SDT: 1)")

    def __init__(self, config: Config, *, input_dim: int, hidden: int, num_speakers: int, name: str = "encoder",
                 **_: object):
        super().__init__()
        if config.layers < 1:
            raise ValueError(f"{name} encoder: layers must be >= 1, got {config.layers}")
        if config.heads < 1 or hidden % config.heads:
            raise ValueError(f"{name} encoder: hidden {hidden} is not divisible by heads={config.heads}")
        self.config = config
        self.name = name
        self.embed = UtteranceEmbedding(config, input_dim=input_dim, hidden=hidden, num_speakers=num_speakers,
                                        name=name)
        self.layers = nn.ModuleList(
            TransformerLayer(hidden, config.heads, config.ff_mult, config.dropout, name=f"{name} encoder")
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(hidden)

    def forward_with_attention(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h (B, T, H), attn (B, heads, T, T))``: the encoding and the last layer's attention."""
        mask = mask.bool()
        h = self.embed(x, speakers, mask)  # (B, T, H)
        for layer in self.layers:
            h, attn = layer(h, mask)  # attn (B, heads, T, T)
        return zero_padding(self.norm(h), mask), attn

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x, speakers, mask)[0]


__all__ = ["TransformerEncoder"]

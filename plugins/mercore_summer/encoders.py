"""Modality encoders (kind ``encoder``): utterance embedding + a context encoder over the dialogue.

Every encoder is built as ``Encoder(config, input_dim=D_m, hidden=H, num_speakers=S, name="text")`` and called
as ``encoder(x (B, T, D_m), speakers (B, T), mask (B, T)) -> (B, T, H)``, zero at padded positions.
Encoders with ``returns_attention = True`` also accept ``return_attention=True`` and then return
``(h (B, T, H), attn (B, heads, T, T))``: the last layer's attention, which a teacher exposes to guide a
student's attention (SUMMER's teacher-guided HCMF).

This module holds the shared utterance embedding and the ``transformer`` encoder; the ``bigru`` and ``linear``
baselines live in :mod:`mercore_baselines.encoders`.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import option

from .layers import TransformerLayer, sinusoidal_positions, zero_padding


@attrs.define
class EmbeddingConfig:
    """Options of the utterance embedding every encoder starts with."""

    position: Literal["sinusoidal", "learned", "none"] = option(
        "sinusoidal", help="position embedding of the utterance index in the dialogue")
    max_len: int = option(512, help="longest dialogue (utterances) for learned positions")
    speaker_embedding: bool = option(True, help="add a learned speaker embedding")
    dropout: float = option(0.1, help="dropout on the embedded utterances (and inside the context encoder)")
    input_norm: Literal["none", "layernorm"] = option(
        "none", help="normalize each utterance's features before the projection (for unit-norm sentence embeddings)")


class UtteranceEmbedding(nn.Module):
    """Projection of the utterance features + speaker embedding + position embedding, then dropout.

    As in SDT: a 1x1 ``Conv1d`` without bias over the utterance axis, which is a bias-free
    ``Linear(D_m, H)``; a learned ``Embedding(S, H)`` of the speaker index; the sinusoidal encoding of the
    utterance index (or a learned ``Embedding(max_len, H)``). The three are summed (SDT adds them without
    scaling), then dropout.

    ``input_norm: layernorm`` (not in SDT, off by default) puts a ``LayerNorm(D_m)`` before the projection.
    Why: sentence-transformer embeddings such as the shared data's MiniLM are unit-norm, about 0.05 per
    dimension, so their projection starts some 30x smaller than the speaker and position embeddings it is
    summed with, and a pre-norm context encoder then mostly sees where and who, not what. RoBERTa/openSMILE
    features of the paper's pickles are O(1) per dimension and do not need it.

    Shapes: ``x (B, T, D_m)``, ``speakers (B, T)`` long, ``mask (B, T)`` bool -> ``(B, T, H)``, zero at padding.
    """

    def __init__(self, config: EmbeddingConfig, *, input_dim: int, hidden: int, num_speakers: int,
                 name: str = "encoder"):
        super().__init__()
        self.config = config
        self.name = name
        self.input_norm = nn.LayerNorm(input_dim) if config.input_norm == "layernorm" else None
        self.proj = nn.Linear(input_dim, hidden, bias=False)
        self.speaker = nn.Embedding(max(1, num_speakers), hidden) if config.speaker_embedding else None
        if config.position == "learned":
            if config.max_len < 1:
                raise ValueError(f"{name} encoder: max_len must be >= 1, got {config.max_len}")
            self.position = nn.Embedding(config.max_len, hidden)
        else:
            self.position = None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        x = zero_padding(x, mask)  # (B, T, D_m)
        if self.input_norm is not None:
            x = self.input_norm(x)
        h = self.proj(x)  # (B, T, H)
        t = h.shape[1]
        if self.speaker is not None:
            speakers = speakers.masked_fill(~mask, 0)
            if speakers.device.type == "cpu" and speakers.numel():  # on an accelerator: a host sync per step
                lo, hi = int(speakers.min()), int(speakers.max())
                if lo < 0 or hi >= self.speaker.num_embeddings:
                    raise ValueError(f"{self.name} encoder: speaker index {lo if lo < 0 else hi} is outside the "
                                     f"speaker table of {self.speaker.num_embeddings} (num_speakers of the data)")
            h = h + self.speaker(speakers)
        if self.config.position == "sinusoidal":
            h = h + sinusoidal_positions(t, h.shape[-1], device=h.device, dtype=h.dtype)
        elif self.position is not None:
            if t > self.config.max_len:
                raise ValueError(f"{self.name} encoder: a dialogue of {t} utterances is longer than max_len="
                                 f"{self.config.max_len} of the learned position embedding; raise max_len")
            h = h + self.position.weight[:t]
        return zero_padding(self.dropout(h), mask)


class TransformerEncoder(nn.Module):
    """Utterance embedding + a pre-norm Transformer over the dialogue, exposing the last attention weights.

    Shapes: ``x (B, T, D_m)``, ``speakers (B, T)``, ``mask (B, T)`` -> ``(B, T, H)``; with
    ``return_attention=True`` also the last layer's attention ``(B, heads, T, T)``.

    ``layers`` pre-norm layers (self-attention with a key-padding mask, GELU feed-forward of width
    ``ff_mult * H``) and a final LayerNorm, as is usual for pre-norm stacks. SDT uses one layer, 8 heads and a
    feed-forward as wide as the hidden size (``ff_mult: 1``), which are the defaults.
    """

    returns_attention = True

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

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor, *,
                return_attention: bool = False):
        mask = mask.bool()
        h = self.embed(x, speakers, mask)  # (B, T, H)
        attn = None
        for layer in self.layers:
            h, attn = layer(h, mask)  # attn (B, heads, T, T)
        h = zero_padding(self.norm(h), mask)
        return (h, attn) if return_attention else h


__all__ = ["EmbeddingConfig", "TransformerEncoder", "UtteranceEmbedding"]

"""The utterance embedding every encoder of the first-party plugins starts with (and a plugin's may)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import option
from mercore.nn.layers import sinusoidal_positions
from mercore.nn.masking import zero_padding


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


__all__ = ["EmbeddingConfig", "UtteranceEmbedding"]

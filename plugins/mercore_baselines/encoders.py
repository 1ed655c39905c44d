"""Baseline encoders (kind ``encoder``): a bidirectional GRU over the dialogue, and no context at all.

Built and called like every encoder (the contract :class:`mercore.nn.Encoder`):
``Encoder(config, input_dim=D_m, hidden=H, num_speakers=S, name="text")``,
``encoder(x (B, T, D_m), speakers (B, T), mask (B, T)) -> (B, T, H)``, zero at padded positions.
Neither has attention weights to expose (neither is a :class:`mercore.nn.AttentionEncoder`).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mercore.config import option
from mercore.nn import EmbeddingConfig, UtteranceEmbedding, zero_padding


class BiGRUEncoder(nn.Module):
    """Utterance embedding + a bidirectional GRU over the dialogue (DialogueRNN/DialogueGCN-style context).

    Shapes: ``x (B, T, D_m)``, ``speakers (B, T)``, ``mask (B, T)`` -> ``(B, T, H)``.

    Each direction has ``H // 2`` units, so the concatenation is ``H`` wide (``hidden`` must be even). The
    real utterances of each dialogue are moved to the front of their row (a no-op for the usual prefix mask)
    and packed with ``pack_padded_sequence``, so padding never enters the recurrence, in either direction.
    """

    @attrs.define
    class Config(EmbeddingConfig):
        layers: int = option(1, help="stacked GRU layers")

    def __init__(self, config: Config, *, input_dim: int, hidden: int, num_speakers: int, name: str = "encoder",
                 **_: object):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"{name} bigru encoder: hidden must be even (two directions of hidden/2), got {hidden}")
        if config.layers < 1:
            raise ValueError(f"{name} bigru encoder: layers must be >= 1, got {config.layers}")
        self.config = config
        self.embed = UtteranceEmbedding(config, input_dim=input_dim, hidden=hidden, num_speakers=num_speakers,
                                        name=name)
        self.gru = nn.GRU(hidden, hidden // 2, num_layers=config.layers, batch_first=True, bidirectional=True,
                          dropout=config.dropout if config.layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        h = self.embed(x, speakers, mask)  # (B, T, H)
        t = h.shape[1]
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # real utterances first, in order
        index = order.unsqueeze(-1).expand_as(h)
        h_c = h.gather(1, index)
        lengths = mask.sum(dim=1).clamp_min(1).cpu()  # an empty row packs one (padded, later zeroed) step
        packed = pack_padded_sequence(h_c, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, H), compacted order
        out = torch.zeros_like(out).scatter(1, index, out)  # back to the original positions
        return zero_padding(out, mask)


class LinearEncoder(nn.Module):
    """Utterance embedding only (projection + speaker + position, dropout): no context over the dialogue.

    Shapes: ``x (B, T, D_m)``, ``speakers (B, T)``, ``mask (B, T)`` -> ``(B, T, H)``. This is SDT's input layer,
    whose context modelling happens in its fusion (``sdt_gated``).
    """

    @attrs.define
    class Config(EmbeddingConfig):
        pass

    def __init__(self, config: Config, *, input_dim: int, hidden: int, num_speakers: int, name: str = "encoder",
                 **_: object):
        super().__init__()
        self.config = config
        self.embed = UtteranceEmbedding(config, input_dim=input_dim, hidden=hidden, num_speakers=num_speakers,
                                        name=name)

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embed(x, speakers, mask)


__all__ = ["BiGRUEncoder", "LinearEncoder"]

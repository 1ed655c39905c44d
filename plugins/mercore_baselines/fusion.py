"""Baseline fusions (kind ``fusion``): concatenation, and SDT's transformer + gated fusion.

Built and called like every fusion (the contract :class:`mercore.nn.Fusion`):
``Fusion(config, modalities=[...], hidden=H, num_classes=C)``,
``fusion(views {m: (B, T, H)}, mask (B, T)) -> FusionOutput``. Neither takes a teacher's guidance (neither is
a :class:`mercore.nn.GuidableFusion`).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import option
from mercore.errors import ConfigError
from mercore.nn import FusionOutput, ModalityGate, TransformerLayer, UnimodalGate, check_fusion_modalities, zero_padding
from mercore.nn.layers import AttentionNorm


def _need_two(kind: str, modalities: list[str]) -> None:
    if len(modalities) < 2:
        raise ConfigError(f"{kind} fusion needs 2 or more modalities, got {list(modalities)}; a one-modality "
                          "model takes no fusion (set fusion: null)")


class ConcatFusion(nn.Module):
    """Concatenation baseline: ``Linear(M*H, H)(dropout(concat_m views_m))``.

    Shapes: ``views {m: (B, T, H)}`` -> ``fused (B, T, H)``, in the order the fusion was built with.
    """

    @attrs.define
    class Config:
        dropout: float = option(0.0, help="dropout on the concatenated views")

    def __init__(self, config: Config, *, modalities: list[str], hidden: int, **_: object):
        super().__init__()
        _need_two("concat", modalities)
        self.config = config
        self.modalities = list(modalities)
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(len(self.modalities) * hidden, hidden)

    def forward(self, views: dict[str, torch.Tensor], mask: torch.Tensor) -> FusionOutput:
        check_fusion_modalities("concat", self.modalities, views)
        x = torch.cat([views[m] for m in self.modalities], dim=-1)  # (B, T, M*H)
        return FusionOutput(fused=zero_padding(self.proj(self.dropout(x)), mask))


class SDTGatedFusion(nn.Module):
    """SDT's fusion (Ma et al., TMM 2024): intra- and inter-modal Transformers, unimodal and multimodal gates.

    Shapes: ``views {m: (B, T, H)}``, ``mask (B, T)`` -> :class:`FusionOutput` with ``fused (B, T, H)`` and
    ``features {m: (B, T, H)}`` (per-modality representations for SDT's self-distillation heads).

    For each target modality m: an intra-modal stack (m attends to m) and one inter-modal stack per other
    modality o (m as query, o as key/value), ``layers`` Transformer layers each (SDT: 1 layer, 8 heads, GELU
    feed-forward of width H); each stack's output x goes through the unimodal gate ``sigmoid(W x) * x``
    (``unimodal_gate: identity`` fixes W = I as SDT does on MELD); the M gated views of m are concatenated
    (intra first, then the others in modality order, as SDT's ``features_reduce_*``) and reduced by
    ``Linear(M*H, H)`` to ``f_m``. The multimodal gate then fuses the ``f_m``: ``sum_m softmax_m(W f_m) * f_m``
    per feature. SDT adds positions and speakers inside each of its nine Transformers (with a dropout each);
    here the encoder (``linear`` for SDT) adds them once, with one dropout, before the fusion.

    ``attention_norm: pre`` (default) pre-norms every attention's query and context. ``attention_norm: sdt`` is
    SDT's ``TransformerEncoderLayer``: no norm before the first layer's attention (it attends over the embedded
    inputs as they are), later layers norm the query (and self-attention's keys) but never a cross-attention's
    context; the feed-forward stays pre-normed. ``norm_eps`` and ``gelu`` give SDT's LayerNorm eps (1e-6) and
    tanh-approximated GELU.
    """

    @attrs.define
    class Config:
        layers: int = option(1, help="Transformer layers per intra/inter stack")
        heads: int = option(8, help="attention heads")
        ff_mult: float = option(1.0, help="feed-forward width as a multiple of hidden (SDT: 1)")
        dropout: float = option(0.1, help="dropout inside the Transformer layers")
        unimodal_gate: Literal["learned", "identity"] = option(
            "learned", help="W of the unimodal gate sigmoid(W x) * x: learned, or fixed to I (SDT on MELD)")
        attention_norm: Literal["pre", "sdt"] = option(
            "pre", help="pre: pre-norm every attention's inputs; sdt: as SDT (none before the first layer's "
                        "attention, the query only after)")
        norm_eps: float = option(1e-5, help="LayerNorm epsilon (SDT: 1e-6)")
        gelu: Literal["exact", "tanh"] = option("exact", help="GELU of the feed-forward: exact (erf) or tanh (SDT)")

    def __init__(self, config: Config, *, modalities: list[str], hidden: int, **_: object):
        super().__init__()
        _need_two("sdt_gated", modalities)
        if config.layers < 1:
            raise ConfigError(f"sdt_gated fusion: layers must be >= 1, got {config.layers}")
        if config.heads < 1 or hidden % config.heads:
            raise ConfigError(f"sdt_gated fusion: hidden {hidden} is not divisible by heads={config.heads}")
        self.config = config
        self.modalities = list(modalities)
        h, ff, d = config.heads, config.ff_mult, config.dropout

        def norm_of(i: int) -> AttentionNorm:
            if config.attention_norm == "pre":
                return "pre"
            return "none" if i == 0 else "query"  # SDT: TransformerEncoderLayer norms its input only for iter != 0

        def stack(cross: bool, name: str) -> nn.ModuleList:
            return nn.ModuleList(TransformerLayer(hidden, h, ff, d, cross=cross, name=name, attention_norm=norm_of(i),
                                                  norm_eps=config.norm_eps, gelu=config.gelu)
                                 for i in range(config.layers))

        self.intra = nn.ModuleDict({m: stack(False, f"sdt_gated {m}") for m in self.modalities})
        self.inter = nn.ModuleDict({
            m: nn.ModuleDict({o: stack(True, f"sdt_gated {m}<-{o}") for o in self.modalities if o != m})
            for m in self.modalities
        })
        identity = config.unimodal_gate == "identity"
        self.gates = nn.ModuleDict({
            m: nn.ModuleDict({o: UnimodalGate(hidden, identity) for o in self.modalities}) for m in self.modalities
        })
        self.reduce = nn.ModuleDict({m: nn.Linear(len(self.modalities) * hidden, hidden) for m in self.modalities})
        self.modality_gate = ModalityGate(hidden)

    def forward(self, views: dict[str, torch.Tensor], mask: torch.Tensor) -> FusionOutput:
        check_fusion_modalities("sdt_gated", self.modalities, views)
        mask = mask.bool()
        attentions: dict[str, torch.Tensor] = {}
        features: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            y = views[m]
            for layer in self.intra[m]:
                y, attentions[m] = layer(y, mask)
            gated = [self.gates[m][m](y)]
            for o in self.modalities:
                if o == m:
                    continue
                y = views[m]
                for layer in self.inter[m][o]:
                    y, attentions[f"{m}<-{o}"] = layer(y, mask, context=views[o])
                gated.append(self.gates[m][o](y))
            features[m] = zero_padding(self.reduce[m](torch.cat(gated, dim=-1)), mask)  # (B, T, H)
        fused, _ = self.modality_gate([features[m] for m in self.modalities])
        return FusionOutput(fused=zero_padding(fused, mask), attentions=attentions, features=features)


__all__ = ["ConcatFusion", "SDTGatedFusion"]

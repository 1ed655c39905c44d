"""The ``encoder`` contract: per-modality context encoders over a dialogue.

A factory is called as ``factory(config, input_dim=D_m, hidden=H, num_speakers=S, name=m)`` (one encoder per
modality ``m``, separate weights) and returns a module that satisfies :class:`Encoder`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoder(Protocol):
    """``encoder(x (B, T, D_m), speakers (B, T) long, mask (B, T) bool) -> h (B, T, H)``, zero at padding."""

    def __call__(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AttentionEncoder(Encoder, Protocol):
    """Optional capability: an encoder that exposes its attention over the dialogue's utterances.

    Declared by implementing :meth:`forward_with_attention`. The ``multimodal`` model then records the map as
    ``attentions["encoder.{m}"]``, and the anchor modality's as ``attentions["anchor"]``, which is what a
    teacher's output hands to a student's :class:`~mercore.nn.fusion.GuidableFusion`.
    """

    def forward_with_attention(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h (B, T, H), attn (B, heads, T, T))``: the encoding and its last attention map."""
        ...


__all__ = ["AttentionEncoder", "Encoder"]

"""The ``fusion`` contract: combine the per-modality views of a dialogue into one sequence.

A factory is called as ``factory(config, modalities=[...], hidden=H, num_classes=C, name="fusion")`` and
returns a module that satisfies :class:`Fusion` (and optionally :class:`GuidableFusion`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs
import torch


@attrs.define
class FusionOutput:
    """What a ``fusion`` component returns.

    Attributes:
        fused: ``(B, T, H)`` the fused utterance representations, zero at padding.
        attentions: named attention maps ``(B, heads, T, T)`` (e.g. ``"anchor"``, ``"text<-audio"``).
        aux_losses: named scalar losses, already weighted (e.g. a global MoE's balance loss).
        features: modality -> ``(B, T, H)`` per-modality features after fusion, for per-modality heads
            (SDT's self-distillation). Absent modalities fall back to the model's encoder output.
        stats: named floats for logging.
    """

    fused: torch.Tensor
    attentions: dict[str, torch.Tensor] = attrs.Factory(dict)
    aux_losses: dict[str, torch.Tensor] = attrs.Factory(dict)
    features: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: dict[str, float] = attrs.Factory(dict)


def check_fusion_modalities(kind: str, modalities: list[str], views: dict[str, torch.Tensor]) -> None:
    """Refuse views that are not exactly the modalities the fusion was built for."""
    if set(views) != set(modalities):
        raise ValueError(f"{kind} fusion was built for modalities {list(modalities)} but got views of "
                         f"{list(views)}")


@runtime_checkable
class Fusion(Protocol):
    """``fusion(views {m: (B, T, H)}, mask (B, T) bool) -> FusionOutput`` (a bare ``(B, T, H)`` tensor is
    accepted too and read as ``FusionOutput(fused=tensor)``)."""

    def __call__(self, views: dict[str, torch.Tensor], mask: torch.Tensor) -> FusionOutput | torch.Tensor: ...


@runtime_checkable
class GuidableFusion(Fusion, Protocol):
    """Optional capability: a fusion anchored on one modality whose attention a teacher's attention can guide.

    Declared by an ``anchor`` attribute (the modality whose utterances query the others) and the method
    :meth:`forward_guided`. The ``multimodal`` model calls ``forward_guided`` with the teacher's
    ``attentions["anchor"]`` (``(B, heads, T, T)``) while training (or with ``guide_at_eval``) and with
    ``None`` otherwise; it takes its own anchor from the fusion's, and IKD refuses a teacher of another
    modality than the anchor.
    """

    anchor: str

    def forward_guided(self, views: dict[str, torch.Tensor], mask: torch.Tensor,
                       guidance: torch.Tensor | None) -> FusionOutput:
        """As ``__call__``, with the teacher's attention over the anchor, or None for no guidance."""
        ...


__all__ = ["Fusion", "FusionOutput", "GuidableFusion", "check_fusion_modalities"]

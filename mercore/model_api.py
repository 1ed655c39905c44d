"""What models, losses and distillers exchange. Kept tiny so plugins depend on nothing else."""

from __future__ import annotations

import attrs
import torch


@attrs.define
class ModelOutput:
    """The output of a ``model`` component's ``forward(batch, teacher=None)``.

    Attributes:
        logits: ``(B, T, C)`` class scores of the final prediction.
        features: named intermediate representations ``(B, T, D)``; ``"final"`` is what the head read.
            Distillers read these (for example the latent-space term of IKD).
        unimodal_logits: modality -> ``(B, T, C)`` scores of per-modality heads, where the model has them.
        attentions: named attention maps ``(B, H, T, T)`` (or ``(B, T, T)``), exposed so a teacher can guide
            a student's attention.
        aux_losses: named scalar losses, already weighted, that the trainer adds to the task loss
            (MoE load balancing per layer, router z-loss, self-distillation ...).
        stats: named floats for logging (router entropy, expert load ...), never differentiated.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = attrs.Factory(dict)
    unimodal_logits: dict[str, torch.Tensor] = attrs.Factory(dict)
    attentions: dict[str, torch.Tensor] = attrs.Factory(dict)
    aux_losses: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: dict[str, float] = attrs.Factory(dict)

"""The ``model`` and ``head`` contracts, and :class:`ModelOutput`, what models, losses and distillers exchange.

* a ``model`` factory is called as ``factory(config, modality_dims={m: D_m}, num_classes=C, num_speakers=S,
  label_names=[...])`` and returns a :class:`Model`;
* a ``head`` factory as ``factory(config, hidden=H, num_classes=C)`` and returns a :class:`Head`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs
import torch

if TYPE_CHECKING:
    from mercore.data.types import DialogueBatch


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
        task_loss_logits: name -> ``(weight, logits (B, T, C))``: further predictions that the recipe's task
            ``loss`` scores too; the trainer adds ``weight * loss(logits, labels)`` as the term ``name`` (SDT's
            unimodal heads under its class-weighted loss).
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = attrs.Factory(dict)
    unimodal_logits: dict[str, torch.Tensor] = attrs.Factory(dict)
    attentions: dict[str, torch.Tensor] = attrs.Factory(dict)
    aux_losses: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: dict[str, float] = attrs.Factory(dict)
    task_loss_logits: dict[str, tuple[float, torch.Tensor]] = attrs.Factory(dict)


@runtime_checkable
class Model(Protocol):
    """``model(batch: DialogueBatch, teacher: ModelOutput | None = None) -> ModelOutput``.

    ``teacher`` is a distiller's teacher output on the same batch (see :class:`mercore.nn.Distiller`), passed
    while training; a model may use it (the ``multimodal`` model's guided fusion) or ignore it. Models are
    ``torch.nn.Module`` s: the trainer optimises ``named_parameters()`` and checkpoints ``state_dict()``.
    """

    def __call__(self, batch: DialogueBatch, teacher: ModelOutput | None = None) -> ModelOutput: ...


@runtime_checkable
class Head(Protocol):
    """``head(x (B, T, H)) -> logits (B, T, C)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


__all__ = ["Head", "Model", "ModelOutput"]

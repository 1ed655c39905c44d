"""The contracts of what the trainer consumes besides the model: ``dataset``, ``loss`` and ``distiller``.

* a ``dataset`` factory is called as ``factory(config)`` (no context) and returns a :class:`Dataset`;
* a ``loss`` factory as ``factory(config, num_classes=C, train_label_counts=(C,) long)`` and returns a :class:`Loss`;
* a ``distiller`` factory as ``factory(config, student=model, modality_dims=..., num_classes=C,
  num_speakers=S, label_names=[...])`` and returns a :class:`Distiller`.

Optimizers and schedulers are torch's own types (``torch.optim.Optimizer``, ``torch.optim.lr_scheduler.LRScheduler``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from mercore.nn.model import ModelOutput

if TYPE_CHECKING:
    from mercore.data.types import Corpus, DialogueBatch


@runtime_checkable
class Dataset(Protocol):
    """``dataset.load() -> Corpus``: every split's dialogues, the label names and the modality dims."""

    def load(self) -> Corpus: ...


@runtime_checkable
class FeatureFileDataset(Dataset, Protocol):
    """Optional capability: a dataset that reads each modality's features from a file an extractor wrote.

    Declared by implementing :meth:`feature_files`. A run records each file's extractor identity (its
    metadata) in ``run_info.json``, which is how ``mercore predict`` computes the same features for new
    conversations; a dataset without it (a pickle reader) trains runs that cannot predict on new text.
    """

    def feature_files(self) -> dict[str, Path]:
        """Modality -> the feature file it is read from (a path as configured, not opened)."""
        ...


@runtime_checkable
class Loss(Protocol):
    """``loss(logits (B, T, C), labels (B, T) long, PAD_LABEL at padding) -> scalar``."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Distiller(Protocol):
    """A frozen teacher and the distillation terms (a ``torch.nn.Module``; its own parameters are trained).

    ``teacher_output(batch)`` runs the teacher (no gradient); the trainer passes it to the student model as
    ``teacher=`` and then calls ``distiller(student_out, teacher_out, batch) -> {name: weighted scalar}``.
    """

    def teacher_output(self, batch: DialogueBatch) -> ModelOutput: ...

    def __call__(self, student_out: ModelOutput, teacher_out: ModelOutput, batch: DialogueBatch
                 ) -> dict[str, torch.Tensor]: ...


__all__ = ["Dataset", "Distiller", "FeatureFileDataset", "Loss"]

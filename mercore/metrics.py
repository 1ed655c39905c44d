"""Classification metrics as reported in the MERC literature: accuracy, weighted F1, macro F1, per-class F1.

Weighted F1 weights each class's F1 by its support in the gold labels (sklearn's ``average="weighted"``),
which is the headline metric of IEMOCAP and MELD papers.
"""

from __future__ import annotations

from typing import Sequence

import torch


def confusion_matrix(gold: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts; row = gold class, column = predicted class."""
    idx = gold.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(gold: torch.Tensor, pred: torch.Tensor, label_names: Sequence[str]) -> dict:
    """Accuracy, weighted/macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        gold: ``(N,)`` gold class indices of real utterances (no padding).
        pred: ``(N,)`` predicted class indices.
        label_names: class index -> name.
    """
    C = len(label_names)
    cm = confusion_matrix(gold, pred, C).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    n = support.sum().clamp_min(1)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / n),
        "weighted_f1": float((f1 * support).sum() / n),
        # macro over classes present in the gold labels (a class absent from a split has no defined F1)
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {name: float(f1[i]) for i, name in enumerate(label_names)},
        "per_class_precision": {name: float(precision[i]) for i, name in enumerate(label_names)},
        "per_class_recall": {name: float(recall[i]) for i, name in enumerate(label_names)},
        "support": {name: int(support[i]) for i, name in enumerate(label_names)},
        "confusion_matrix": cm.long().tolist(),
        "num_utterances": int(n),
    }

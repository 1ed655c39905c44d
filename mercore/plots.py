"""Figures a researcher wants from a run. matplotlib is optional (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def save_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: Path, title: str = "") -> bool:
    """Draw a row-normalised confusion matrix with counts to ``path`` (PNG). Returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of gold class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

"""Argument checks shared by the kernel and the reference variants."""

from __future__ import annotations

from torch import Tensor

from .activations import check_activation

__all__ = ["check_shapes"]


def check_shapes(
    x: Tensor, w1: Tensor, w2: Tensor, b1: Tensor | None, b2: Tensor | None, w3: Tensor | None, activation: str
) -> tuple[int, int, int]:
    """Validate the expert arguments (``ValueError`` naming the argument and the shapes); return ``(E, d, h)``."""
    check_activation(activation)
    if x.dim() != 2 or w1.dim() != 3 or w2.dim() != 3:
        raise ValueError("expected x (N, d), w1 (E, d, h), w2 (E, h, d)")
    e, d, h = w1.shape
    if x.shape[1] != d or w2.shape != (e, h, d):
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    if b1 is not None and b1.shape != (e, h):
        raise ValueError(f"b1 must be (E, h) = {(e, h)}, got {tuple(b1.shape)}")
    if b2 is not None and b2.shape != (e, d):
        raise ValueError(f"b2 must be (E, d) = {(e, d)}, got {tuple(b2.shape)}")
    if w3 is not None and w3.shape != w1.shape:
        raise ValueError(f"w3 must be (E, d, h) = {(e, d, h)}, got {tuple(w3.shape)}")
    return e, d, h

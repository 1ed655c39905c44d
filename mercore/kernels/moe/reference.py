"""The correctness reference: the Hugging Face (Mixtral) style Python loop over experts, plain autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import Activation, act
from .checks import check_shapes

__all__ = ["expert_mlp", "naive_moe"]


def expert_mlp(
    xe: Tensor, w1: Tensor, w2: Tensor, b1: Tensor | None, b2: Tensor | None, w3: Tensor | None, activation: str
) -> Tensor:
    """One expert on its tokens: ``(act(xe @ w1 + b1) [* (xe @ w3)]) @ w2 + b2``, ``xe`` ``(n, d)``."""
    pre = xe @ w1
    if b1 is not None:
        pre = pre + b1
    a = act(activation, pre)
    if w3 is not None:
        a = a * (xe @ w3)
    y = a @ w2
    return y + b2 if b2 is not None else y


def naive_moe(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    expert_idx: Tensor,
    gate: Tensor,
    *,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    w3: Tensor | None = None,
    activation: Activation = "gelu",
) -> Tensor:
    """Reference: Hugging Face (Mixtral) style Python loop over experts, plain autograd.

    Same arguments and result as :func:`~mercore.kernels.moe.fused_moe`. Accumulates in ``x.dtype`` like the
    HF code.
    """
    num_experts, _, _ = check_shapes(x, w1, w2, b1, b2, w3, activation)
    out = torch.zeros_like(x)
    for e in range(num_experts):
        tok, slot = torch.where(expert_idx == e)
        if tok.numel() == 0:
            continue
        xe = x.index_select(0, tok)
        ye = expert_mlp(
            xe, w1[e], w2[e], None if b1 is None else b1[e], None if b2 is None else b2[e],
            None if w3 is None else w3[e], activation,
        )
        # In place on a zeros buffer that needs no grad, exactly as the HF code does.
        out.index_add_(0, tok, ye * gate[tok, slot].unsqueeze(1).to(ye.dtype))
    return out

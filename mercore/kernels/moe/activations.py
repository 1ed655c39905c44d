"""The expert activations: forward, in-place forward (inference) and in-place backward, plus the accumulation
dtype rule. Shapes: any; the kernel calls them on ``(rows, h)`` pre-activations."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATIONS", "Activation", "acc_dtype", "act", "act_", "act_backward_", "check_activation"]

Activation = Literal["gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "relu", "silu")


def check_activation(name: str) -> None:
    """Raise ``ValueError`` naming the allowed activations unless ``name`` is one of them."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def act(name: str, pre: Tensor) -> Tensor:
    """``act(pre)`` in a new tensor (``pre`` is kept: the backward needs it)."""
    if name == "gelu":
        return F.gelu(pre)
    if name == "relu":
        return F.relu(pre)
    if name == "silu":
        return F.silu(pre)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def act_backward_(name: str, grad: Tensor, pre: Tensor) -> Tensor:
    """``grad * act'(pre)`` written over ``grad`` (saves a ``(rows, h)`` allocation). The aten backward ops do it
    in one pass straight from the saved pre-activation, so the kernel need not store ``act(pre)``."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, grad_input=grad)
    if name == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, pre, 0, grad_input=grad)
    if name == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, pre, grad_input=grad)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def act_(name: str, pre: Tensor) -> Tensor:
    """In-place activation (inference forward, where the pre-activation is not needed afterwards)."""
    if name == "gelu":
        return torch.ops.aten.gelu_(pre)
    if name == "relu":
        return pre.relu_()
    if name == "silu":
        return F.silu(pre, inplace=True)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype to accumulate sums of several experts / tokens in: float32 for 16-bit inputs."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

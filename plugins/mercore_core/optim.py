"""Optimizers and learning-rate schedulers."""

from __future__ import annotations

import math
from typing import Iterable

import attrs
import torch

from mercore.config import option


def _check_lr(lr: float) -> None:
    # torch would refuse these only when the optimizer is built, after the data is loaded
    if not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")


@attrs.define
class AdamWConfig:
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = option(0.01, help="decoupled weight decay (not applied to biases and norms)")
    betas: list[float] = option(factory=lambda: [0.9, 0.999], help="Adam betas")
    eps: float = option(1e-8)

    def __attrs_post_init__(self) -> None:
        _check_lr(self.lr)


def adamw(config: AdamWConfig, *, params: Iterable[tuple[str, torch.nn.Parameter]], **_: object) -> torch.optim.Optimizer:
    """AdamW; biases, norms and embeddings (1-D parameters) get no weight decay, as is usual for transformers."""
    decay, no_decay = [], []
    for _name, p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


@attrs.define
class AdamConfig:
    lr: float = option(1e-4, help="learning rate")
    weight_decay: float = option(1e-5, help="L2 penalty (coupled, as in SDT's Adam)")

    def __attrs_post_init__(self) -> None:
        _check_lr(self.lr)


def adam(config: AdamConfig, *, params: Iterable[tuple[str, torch.nn.Parameter]], **_: object) -> torch.optim.Optimizer:
    """Adam with coupled L2 weight decay, the optimizer of SDT's scripts."""
    return torch.optim.Adam([p for _, p in params if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)


@attrs.define
class WarmupCosineConfig:
    warmup_ratio: float = option(0.1, help="fraction of all steps spent in linear warm-up")
    min_lr_ratio: float = option(0.0, help="final learning rate as a fraction of the peak")

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1) (a fraction of all steps), got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (a fraction of the peak), got {self.min_lr_ratio}")


def warmup_cosine(config: WarmupCosineConfig, *, optimizer: torch.optim.Optimizer, total_steps: int, **_: object):
    """Linear warm-up then cosine decay, stepped once per optimizer step."""
    warmup = max(1, int(config.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant(config: object, *, optimizer: torch.optim.Optimizer, **_: object):
    """A constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

"""The mixture-of-experts contracts: ``router``, ``experts`` and ``moe`` components and what they exchange.

* a ``router`` factory is called as ``factory(config, dim=D, num_experts=E)``; the module maps the real tokens
  ``(N, D)`` of a batch (``x[mask]``, row-major) to a :class:`Routing` (:class:`Router`);
* an ``experts`` factory as ``factory(config, dim=D, num_experts=E)``; the module computes
  ``(B, T, D)`` from the features, the mask and a :class:`Routing` (:class:`Experts`);
* a ``moe`` factory as ``factory(config, dim=D, name=...)``; the module maps ``(B, T, D)`` to a
  :class:`MoEOutput` (:class:`MoE`). ``name`` (e.g. ``"text.moe"``) prefixes its loss and stat keys.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import attrs
import torch


class Routing(NamedTuple):
    """What a router returns for ``N`` tokens and ``E`` experts.

    Attributes:
        expert_idx: ``(N, k)`` long; the experts each token is sent to, ``-1`` in an unused slot. ``k`` is
            fixed per router (top-k: k; top-p: ``max_k``; sigma_gumbel: E) so a variable number of experts
            per token is expressed by ``-1`` padding.
        gate: ``(N, k)`` float weights of those experts, exactly 0 in unused slots. Rows sum to 1 over the
            used slots unless the router documents otherwise (``topk`` with ``normalize: false``).
        probs: ``(N, E)`` the router's full distribution over experts (the ``P_e`` of balance losses, and
            router entropy); differentiable.
        logits: ``(N, E)`` the raw router logits, before any mask or noise (for the router z-loss).
    """

    expert_idx: torch.Tensor
    gate: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor

    @property
    def used(self) -> torch.Tensor:
        """``(N, k)`` bool: the slots that name an expert."""
        return self.expert_idx >= 0

    def dense_gate(self, num_experts: int) -> torch.Tensor:
        """The gate scattered to ``(N, E)``: weight of expert e for token n, 0 where e is not selected.

        Differentiable with respect to ``gate``. Unused slots (``-1``) contribute nothing.
        """
        n = self.gate.shape[0]
        idx = self.expert_idx.clamp_min(0)
        weights = torch.where(self.used, self.gate, torch.zeros_like(self.gate))
        return torch.zeros(n, num_experts, dtype=self.gate.dtype, device=self.gate.device).scatter_add(1, idx, weights)

    def selection(self, num_experts: int) -> torch.Tensor:
        """``(N, E)`` bool: expert e is in token n's selection (whatever its gate value)."""
        n = self.expert_idx.shape[0]
        idx = self.expert_idx.clamp_min(0)
        counts = torch.zeros(n, num_experts, dtype=torch.long, device=self.expert_idx.device)
        return counts.scatter_add(1, idx, self.used.long()) > 0


@attrs.define
class MoEOutput:
    """What a ``moe`` component returns.

    Attributes:
        y: ``(B, T, D)`` the block's output; at padded positions the residual input (``residual``) or zeros.
        aux_losses: named scalar losses, already weighted, only those whose weight is > 0
            (``"{name}.balance"``, ``"{name}.z_loss"``); the model passes them on in ``ModelOutput.aux_losses``.
        stats: named floats for logging: ``"{name}.load.{e}"`` share of the used routing slots that went to
            expert e, ``"{name}.entropy"`` mean router entropy (nats), ``"{name}.experts_per_token"`` mean
            number of used slots (active experts) per real token, ``"{name}.top_masked"`` the fraction of real
            tokens whose top expert (argmax of the raw router logits) is not in their selection (0 for top-k
            and top-p; with ``noisy_topk`` in training, the noise moved it out; with ``sigma_gumbel``, the band
            switched it off).
        routing: the router's :class:`Routing` over the ``N`` real tokens (``x[mask]`` order), for analysis.
    """

    y: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = attrs.Factory(dict)
    stats: dict[str, float] = attrs.Factory(dict)
    routing: Routing | None = None


@runtime_checkable
class Router(Protocol):
    """``router(x (N, D)) -> Routing`` over the ``N`` real tokens of a batch."""

    def __call__(self, x: torch.Tensor) -> Routing: ...


@runtime_checkable
class Experts(Protocol):
    """``experts(x (B, T, D), mask (B, T) bool, routing) -> (B, T, D)``, zero at padding; ``routing`` holds one
    row per real token in ``x[mask]`` order."""

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, routing: Routing) -> torch.Tensor: ...


@runtime_checkable
class MoE(Protocol):
    """``moe(x (B, T, D), mask (B, T) bool) -> MoEOutput``."""

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> MoEOutput: ...


__all__ = ["Experts", "MoE", "MoEOutput", "Router", "Routing"]

"""The MoE block (kind ``moe``): router + experts, pre-norm and residual, auxiliary losses and statistics."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import component, option
from mercore.nn.moe import MoEOutput, Routing
from mercore.registry import Node

from .routing import router_entropy


def expert_fractions(routing: Routing, num_experts: int, mode: str = "count") -> torch.Tensor:
    """``(E,)`` the dispatch fractions ``f_e`` of a balance loss, summing to 1; never differentiated.

    ``count``: share of the used (token, slot) assignments that name expert e (Switch Transformer for k = 1;
    GShard / Mixtral's ``tokens_per_expert`` divided by k, so that perfect balance gives a loss of 1 for any k,
    including a variable k). ``gate``: share of the total gate mass on expert e, the meaningful reading for
    soft gates (``sigma_gumbel``) whose selection covers (almost) every expert.
    """
    with torch.no_grad():
        if mode == "gate":
            mass = routing.dense_gate(num_experts).sum(dim=0)
        elif mode == "count":
            idx = routing.expert_idx[routing.used]
            mass = torch.bincount(idx, minlength=num_experts).to(routing.probs.dtype)
        else:
            raise ValueError(f"unknown balance fraction mode {mode!r}")
        return mass / mass.sum().clamp_min(torch.finfo(mass.dtype).tiny)


def balance_loss(routing: Routing, num_experts: int, mode: str = "count") -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_e f_e * P_e`` (Fedus et al. 2021, eq. 4).

    ``f_e`` from :func:`expert_fractions` (no gradient), ``P_e`` the mean router probability of expert e over
    the real tokens (the gradient path). Equals 1 under perfect balance; 0 for no tokens.
    """
    if routing.probs.shape[0] == 0:
        return routing.probs.sum() * 0.0
    f = expert_fractions(routing, num_experts, mode)
    p = routing.probs.mean(dim=0)
    return num_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss of ST-MoE (Zoph et al. 2022, eq. 5): mean over tokens of ``logsumexp(logits)^2``."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return torch.logsumexp(logits.float(), dim=-1).square().mean().to(logits.dtype)


class SDMoE(nn.Module):
    """Sparse Dynamic Mixture of Experts (SUMMER): a router over the real utterances, experts, combination.

    Shapes: ``x (B, T, D)``, ``mask (B, T)`` bool (True = real utterance) -> :class:`MoEOutput` with
    ``y (B, T, D)``.

    ``y = x + dropout(experts(LN(x), mask, router(LN(x)[mask])))`` with ``norm`` (pre-LayerNorm) and
    ``residual`` on (the defaults), where the router sees only the real tokens. The paper's choices are the
    defaults: the (mean +/- 2 std) Gumbel-softmax router (``sigma_gumbel``), bi-GRU context experts
    (``bigru``), 4 experts, no auxiliary losses. Pre-norm, residual and dropout are not described by the
    paper; they are the usual Transformer sub-layer wrapping, and configurable.

    Auxiliary losses (already weighted, only present when their weight is > 0): ``balance_weight`` times the
    Switch load-balancing loss ``E * sum_e f_e * P_e`` (:func:`balance_loss`, ``f_e`` per
    ``balance_fraction``), and ``z_loss_weight`` times the router z-loss (:func:`router_z_loss`).
    Built as ``SDMoE(config, dim=D, name="text.moe")``; ``name`` prefixes the loss and stat keys.
    """

    @attrs.define
    class Config:
        num_experts: int = option(4, help="number of experts E")
        router: Node = component("router", default={"type": "sigma_gumbel"}, help="the gate")
        experts: Node = component("experts", default={"type": "bigru"}, help="the expert networks")
        residual: bool = option(True, help="add the input back: y = x + moe(x)")
        norm: bool = option(True, help="pre-LayerNorm on the block's input")
        dropout: float = option(0.1, help="dropout on the experts' combined output")
        balance_weight: float = option(0.0, help="weight of the Switch load-balancing loss (0: off, as in the paper)")
        balance_fraction: Literal["count", "gate"] = option(
            "count", help="f_e of the balance loss: share of routing slots, or of gate mass"
        )
        z_loss_weight: float = option(0.0, help="weight of the router z-loss (0: off)")

    def __init__(self, config: Config, *, dim: int, name: str = "moe", **_: object):
        super().__init__()
        if config.num_experts < 1:
            raise ValueError(f"sdmoe: num_experts must be >= 1, got {config.num_experts}")
        self.config = config
        self.name = name
        self.dim = dim
        self.num_experts = config.num_experts
        self.norm = nn.LayerNorm(dim) if config.norm else nn.Identity()
        self.router = config.router.build(dim=dim, num_experts=config.num_experts)
        self.experts = config.experts.build(dim=dim, num_experts=config.num_experts)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> MoEOutput:
        cfg, e = self.config, self.num_experts
        mask = mask.bool()
        h = self.norm(x)  # (B, T, D)
        routing: Routing = self.router(h[mask])  # over the N real tokens
        out = self.dropout(self.experts(h, mask, routing))  # (B, T, D), zero at padding
        y = x + out if cfg.residual else out

        aux: dict[str, torch.Tensor] = {}
        if cfg.balance_weight > 0:
            aux[f"{self.name}.balance"] = cfg.balance_weight * balance_loss(routing, e, cfg.balance_fraction)
        if cfg.z_loss_weight > 0:
            aux[f"{self.name}.z_loss"] = cfg.z_loss_weight * router_z_loss(routing.logits)
        return MoEOutput(y=y, aux_losses=aux, stats=self._stats(routing), routing=routing)

    @torch.no_grad()
    def _stats(self, routing: Routing) -> dict[str, float]:
        e = self.num_experts
        n = routing.probs.shape[0]
        if n == 0:
            return {}
        load = expert_fractions(routing, e, "count")
        top = routing.logits.argmax(dim=1, keepdim=True)  # (N, 1) each token's strongest expert
        top_masked = ~routing.selection(e).gather(1, top).squeeze(1)  # (N,) it is not among the used ones
        values = torch.cat(
            [
                load.float(),
                router_entropy(routing.probs).float().reshape(1),
                routing.used.sum(dim=1).float().mean().reshape(1),
                top_masked.float().mean().reshape(1),
            ]
        ).tolist()  # one host sync for all stats
        stats = {f"{self.name}.load.{i}": values[i] for i in range(e)}
        stats[f"{self.name}.entropy"] = values[e]
        stats[f"{self.name}.experts_per_token"] = values[e + 1]
        stats[f"{self.name}.top_masked"] = values[e + 2]
        return stats


__all__ = ["SDMoE", "balance_loss", "expert_fractions", "router_z_loss"]

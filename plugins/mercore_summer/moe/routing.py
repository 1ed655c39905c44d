"""Routers (kind ``router``): from token features to a per-token choice of experts and their weights.

Every router is built as ``Router(config, dim=D, num_experts=E)`` and maps the *real* tokens of a batch,
flattened to ``(N, D)`` (``x[mask]`` in row-major order), to a :class:`mercore.nn.Routing`.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mercore.config import option
from mercore.nn.moe import Routing


def _gate_linear(dim: int, num_experts: int, bias: bool) -> nn.Linear:
    return nn.Linear(dim, num_experts, bias=bias)


class SigmaGumbelRouter(nn.Module):
    """The SUMMER/SDMoE gate: a (mean +/- c std) band on the gate logits, then a Gumbel-softmax.

    Shapes: ``x (N, D) -> Routing`` with ``expert_idx, gate (N, E)`` (all E slots; ``-1`` where switched off),
    ``probs, logits (N, E)``.

    1. ``logits = x W + b`` (a linear layer).
    2. Entries with ``|logit - mean| > c * std`` are switched off (set to ``-inf``); the band is closed so a
       zero std switches off nothing. Mean and (population) std are taken over ``stat_axis``:

       - ``tokens`` (default): per expert, over the batch's real tokens. Each expert is switched off for the
         utterances whose affinity to it is atypical.
       - ``experts``: per token, over its E logits ("per utterance"). With the population std used here, no
         z-score among E values can exceed sqrt(E-1) (reached by one logit standing out from E-1 equal ones):
         1.73 for E=4, 2.0 for E=5, 2.24 for E=6, 2.65 for E=8. So at c=2 the mask never fires for E <= 5 (the
         band is closed) and can fire from E = 6 on, only for a token with one (or few) logit(s) far from
         the rest (at E=8, one logit more than 2.65 std out switches that expert off: usually the token's
         strongest). It is not the default because at the paper's E=4 it is a no-op.
       - ``batch``: one mean and std over all N*E logits.

       The paper does not say which; ``tokens`` is the default because it is the reading under which the
       mask actually sparsifies the gate at E=4 and it does not favour experts with a large logit bias.
       Under ``tokens`` the mask is mild (most tokens keep every expert) and can switch off a token's
       strongest expert (its logit is atypically high for that expert); ``SDMoE`` logs both as
       ``experts_per_token`` and ``top_masked``.
       For ``tokens`` and ``batch`` the statistics depend on the other tokens of the batch; with
       ``eval_stats: running`` (default) evaluation uses running estimates kept during training (as
       BatchNorm does, with ``momentum``), so a prediction does not depend on the eval batch.
       If every expert of a token is switched off, its argmax is kept.
    3. Training: Gumbel-softmax ``softmax((masked + g) / tau)``, ``g ~ Gumbel(0, 1)``. Evaluation: the noise-free
       ``softmax(masked / tau)`` (deterministic). ``hard: true`` makes the forward weight one-hot (argmax of
       the noisy, resp. clean, scores) with the straight-through gradient of the soft weights.

    Selection: every expert that survives the mask stays in the token's selection, in its own slot
    (``expert_idx[n, e] = e``, ``-1`` where masked): the soft gate gives each of them weight, and with
    ``hard`` the zero-weight survivors must still be computed for the straight-through gradient to reach
    them. ``probs`` is the noise-free ``softmax(masked / tau)``; ``logits`` the raw, unmasked logits.
    """

    @attrs.define
    class Config:
        c: float = option(2.0, help="half-width of the kept band in standard deviations")
        stat_axis: Literal["tokens", "experts", "batch"] = option(
            "tokens", help="where mean/std are taken: per expert over tokens, per token over experts, or all"
        )
        tau: float = option(1.0, help="Gumbel-softmax temperature (also divides the logits at evaluation)")
        hard: bool = option(False, help="straight-through one-hot gate")
        eval_stats: Literal["running", "batch"] = option(
            "running", help="tokens/batch axes at evaluation: running estimates from training, or the eval batch"
        )
        momentum: float = option(0.1, help="update rate of the running mean/std (as in BatchNorm)")
        bias: bool = option(True, help="bias in the gate's linear layer")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        if config.tau <= 0:
            raise ValueError(f"sigma_gumbel: tau must be > 0, got {config.tau}")
        if config.c <= 0:
            raise ValueError(f"sigma_gumbel: c must be > 0, got {config.c}")
        self.config = config
        self.num_experts = num_experts
        self.gate = _gate_linear(dim, num_experts, config.bias)
        shape = (num_experts,) if config.stat_axis == "tokens" else (1,)
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_std", torch.ones(shape))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def band_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, E)`` bool: True where the logit lies inside the band (kept). Updates running stats in training."""
        axis, c = self.config.stat_axis, self.config.c
        if logits.shape[0] == 0:
            return torch.ones_like(logits, dtype=torch.bool)
        if axis == "experts":
            mean = logits.mean(dim=1, keepdim=True)
            std = logits.std(dim=1, keepdim=True, unbiased=False)
        else:
            use_running = not self.training and self.config.eval_stats == "running" and int(self.num_batches_tracked) > 0
            if use_running:
                mean, std = self.running_mean, self.running_std
            else:
                dims = (0,) if axis == "tokens" else (0, 1)
                mean = logits.mean(dim=dims).reshape(-1)
                std = logits.std(dim=dims, unbiased=False).reshape(-1)
                if self.training:
                    m = self.config.momentum if int(self.num_batches_tracked) > 0 else 1.0
                    self.running_mean.lerp_(mean.to(self.running_mean), m)
                    self.running_std.lerp_(std.to(self.running_std), m)
                    self.num_batches_tracked += 1
        keep = (logits - mean).abs() <= c * std
        # Guard: a token with every expert switched off keeps its argmax.
        none_left = ~keep.any(dim=1, keepdim=True)
        argmax = F.one_hot(logits.argmax(dim=1), self.num_experts).bool()
        return keep | (none_left & argmax)

    def route_logits(self, logits: torch.Tensor) -> Routing:
        """Route from given logits ``(N, E)`` (split out so tests can hand-construct logits)."""
        cfg = self.config
        keep = self.band_mask(logits)
        masked = logits.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(masked / cfg.tau, dim=-1)
        if self.training:
            gumbel = -torch.empty_like(logits).exponential_().log()
            soft = torch.softmax((masked + gumbel) / cfg.tau, dim=-1)
        else:
            soft = probs
        if cfg.hard:
            hard = F.one_hot(soft.argmax(dim=-1), self.num_experts).to(soft.dtype)
            weights = hard - soft.detach() + soft
        else:
            weights = soft
        n = logits.shape[0]
        slots = torch.arange(self.num_experts, device=logits.device).expand(n, -1)
        expert_idx = torch.where(keep, slots, torch.full_like(slots, -1))
        gate = torch.where(keep, weights, torch.zeros_like(weights))
        return Routing(expert_idx=expert_idx, gate=gate, probs=probs, logits=logits)

    def forward(self, x: torch.Tensor) -> Routing:
        return self.route_logits(self.gate(x))


class TopKRouter(nn.Module):
    """Softmax top-k routing (Shazeer et al. 2017 without noise; Switch Transformer for k=1; GShard/Mixtral k=2).

    Shapes: ``x (N, D) -> Routing`` with ``expert_idx, gate (N, k)``, ``probs, logits (N, E)``.
    ``probs = softmax(x W)``; each token takes the k most probable experts. With ``normalize`` (default) the k
    weights are renormalised to sum to 1 (Mixtral); without, the gate is the raw probabilities (Switch,
    GShard), and rows sum to less than 1.
    """

    @attrs.define
    class Config:
        k: int = option(2, help="experts per token")
        normalize: bool = option(True, help="renormalise the k weights to sum to 1")
        bias: bool = option(False, help="bias in the gate's linear layer")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        if not 1 <= config.k <= num_experts:
            raise ValueError(f"topk: k must be in [1, num_experts={num_experts}], got {config.k}")
        self.config = config
        self.num_experts = num_experts
        self.gate = _gate_linear(dim, num_experts, config.bias)

    def route_logits(self, logits: torch.Tensor) -> Routing:
        probs = torch.softmax(logits, dim=-1)
        top, idx = probs.topk(self.config.k, dim=-1)
        if self.config.normalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return Routing(expert_idx=idx, gate=top, probs=probs, logits=logits)

    def forward(self, x: torch.Tensor) -> Routing:
        return self.route_logits(self.gate(x))


class NoisyTopKRouter(nn.Module):
    """Noisy top-k gating of Shazeer et al. 2017 ("Outrageously large neural networks"), eqs. 3-5.

    Shapes: ``x (N, D) -> Routing`` with ``expert_idx, gate (N, k)``, ``probs, logits (N, E)``.
    ``H = x W_g + eps * softplus(x W_noise)``, ``eps ~ N(0, 1)`` in training only; the gate is the softmax over
    the k largest entries of ``H`` (others -inf), i.e. renormalised top-k, rows sum to 1. ``W_noise`` starts
    at zero as in the paper (noise std softplus(0) = 0.69 at first). ``logits`` is the clean ``x W_g``;
    ``probs`` is ``softmax(H)``, the distribution the routing actually used (clean at evaluation).
    """

    @attrs.define
    class Config:
        k: int = option(2, help="experts per token")
        bias: bool = option(False, help="bias in the gate and noise linear layers")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        if not 1 <= config.k <= num_experts:
            raise ValueError(f"noisy_topk: k must be in [1, num_experts={num_experts}], got {config.k}")
        self.config = config
        self.num_experts = num_experts
        self.gate = _gate_linear(dim, num_experts, config.bias)
        self.noise = _gate_linear(dim, num_experts, config.bias)
        nn.init.zeros_(self.noise.weight)
        if self.noise.bias is not None:
            nn.init.zeros_(self.noise.bias)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x)
        scores = logits
        if self.training:
            scores = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        probs = torch.softmax(scores, dim=-1)
        top, idx = scores.topk(self.config.k, dim=-1)
        gate = torch.softmax(top, dim=-1)
        return Routing(expert_idx=idx, gate=gate, probs=probs, logits=logits)


class TopPRouter(nn.Module):
    """Dynamic top-p routing (Huang et al. 2024, "Harder tasks need more experts: dynamic routing in MoE").

    Shapes: ``x (N, D) -> Routing`` with ``expert_idx, gate (N, max_k)`` (``-1`` / 0 padded), ``probs, logits
    (N, E)``. ``probs = softmax(x W)``; each token takes experts in descending probability until their
    cumulative probability reaches ``p`` (the minimal such prefix: an expert is taken while the mass before
    it is below p), at least one and at most ``max_k`` (default E). Slots are sorted by probability, used
    slots first. With ``normalize`` (default) the weights are renormalised over the taken experts; without,
    they are the raw probabilities (as in Huang et al.). p = 0.4 is their setting.
    """

    @attrs.define
    class Config:
        p: float = option(0.4, help="cumulative probability threshold in (0, 1]")
        max_k: int | None = option(None, help="most experts per token (null: all)")
        normalize: bool = option(True, help="renormalise the taken weights to sum to 1")
        bias: bool = option(False, help="bias in the gate's linear layer")

    def __init__(self, config: Config, *, dim: int, num_experts: int, **_: object):
        super().__init__()
        if not 0.0 < config.p <= 1.0:
            raise ValueError(f"top_p: p must be in (0, 1], got {config.p}")
        if config.max_k is not None and config.max_k < 1:
            raise ValueError(f"top_p: max_k must be >= 1, got {config.max_k}")
        self.config = config
        self.num_experts = num_experts
        self.max_k = num_experts if config.max_k is None else min(config.max_k, num_experts)
        self.gate = _gate_linear(dim, num_experts, config.bias)

    def route_logits(self, logits: torch.Tensor) -> Routing:
        probs = torch.softmax(logits, dim=-1)
        sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
        sorted_p, sorted_idx = sorted_p[:, : self.max_k], sorted_idx[:, : self.max_k]
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the experts ranked above
        take = before < self.config.p
        take[:, 0] = True
        gate = torch.where(take, sorted_p, torch.zeros_like(sorted_p))
        if self.config.normalize:
            gate = gate / gate.sum(dim=-1, keepdim=True)
        expert_idx = torch.where(take, sorted_idx, torch.full_like(sorted_idx, -1))
        return Routing(expert_idx=expert_idx, gate=gate, probs=probs, logits=logits)

    def forward(self, x: torch.Tensor) -> Routing:
        return self.route_logits(self.gate(x))


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of ``probs (N, E)``; 0 for N = 0."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


__all__ = [
    "SigmaGumbelRouter",
    "TopKRouter",
    "NoisyTopKRouter",
    "TopPRouter",
    "router_entropy",
]

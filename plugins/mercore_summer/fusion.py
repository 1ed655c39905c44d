"""SUMMER's Hierarchical Cross-Modal Fusion (kind ``fusion``, name ``hcmf``) with teacher-guided attention.

The fusion contract is :class:`mercore.nn.Fusion`; HCMF also has the optional capability
:class:`mercore.nn.GuidableFusion`: ``forward_guided(views, mask, guidance)`` takes a teacher's attention over
the anchor modality ``(B, heads, T, T)``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import nn

from mercore.config import component, option
from mercore.errors import ConfigError
from mercore.nn import FusionOutput, ModalityGate, TransformerLayer, UnimodalGate, check_fusion_modalities, zero_padding
from mercore.registry import Node


def teacher_attention_like(guidance: torch.Tensor, heads: int, t: int) -> torch.Tensor:
    """Bring a teacher's attention to ``(B, heads or 1, T, T)``.

    ``(B, T, T)`` gains a head axis; a teacher with a different head count is averaged over its heads (its
    mean attention then guides every student head).
    """
    if guidance.dim() == 3:
        guidance = guidance.unsqueeze(1)
    if guidance.dim() != 4 or guidance.shape[-1] != t or guidance.shape[-2] != t:
        raise ValueError(f"teacher guidance must be (B, heads, {t}, {t}) attention over the anchor's "
                         f"utterances, got shape {tuple(guidance.shape)}")
    if guidance.shape[1] not in (1, heads):
        guidance = guidance.mean(dim=1, keepdim=True)
    return guidance


class AttentionGuide(nn.Module):
    """Teacher-guided attention: corrects the student's attention logits where it disagrees with the teacher.

    With the student's logits ``L (B, h, T, T)`` (padded keys masked), its attention ``A_s = softmax(L)``, the
    teacher's attention ``A_t`` (``(B, h or 1, T, T)``, no gradient), threshold ``tau`` (``guide_threshold``),
    scale ``s`` (``guide_scale``), a learned per-head parameter ``beta_h`` (initialised to 0) and
    ``eps = 1e-6``::

        D     = A_t - sg(A_s)                                 disagreement (sg = stop-gradient)
        M     = 1[|D| > tau]                                  hard disagreement mask (no gradient)
        lam_h = s * 2 * sigmoid(beta_h)                       dynamic factor: s at start, learned in (0, 2 s)
                                                              (lam_h = s, fixed, when guide_learnable is off)
        L'    = L + lam_h * M * (log(A_t + eps) - log(sg(A_s) + eps))
        A     = softmax(L')                                   (padded keys masked again)

    At ``lam = 1`` the masked entries' logits become ``log A_t + logsumexp(L)``: where they disagree by more
    than ``tau`` the student attends as the teacher does (up to renormalisation), elsewhere as itself; at
    ``lam = 0`` the attention is unchanged. The correction is a constant w.r.t. the student's logits, so the
    gradient reaches the query/key projections unchanged (through ``L``) and ``beta`` through ``lam``; nothing
    flows into the teacher. The paper states the mask (threshold 0.5) and a "dynamic factor"; the log-ratio
    correction and the learned per-head factor are our reading.
    """

    def __init__(self, heads: int, threshold: float = 0.5, scale: float = 1.0, learnable: bool = True):
        super().__init__()
        self.heads = heads
        self.threshold = threshold
        self.scale = scale
        self.beta = nn.Parameter(torch.zeros(heads)) if learnable else None
        self.eps = 1e-6
        self.last_fraction: torch.Tensor | None = None  # share of guided entries in the last call, for stats

    def factor(self) -> torch.Tensor | float:
        """``lam_h`` as ``(1, h, 1, 1)`` (or the float ``s``)."""
        if self.beta is None:
            return self.scale
        return (self.scale * 2.0 * torch.sigmoid(self.beta)).view(1, -1, 1, 1)

    def hook(self, teacher: torch.Tensor):
        """The logit hook for :class:`mercore.nn.MultiHeadAttention` given the teacher's ``(B, h|1, T, T)``."""

        def apply(logits: torch.Tensor) -> torch.Tensor:
            a_t = teacher.to(logits.dtype).detach()
            a_s = logits.detach().softmax(dim=-1)
            flag = ((a_t - a_s).abs() > self.threshold).to(logits.dtype)  # (B, h, T, T)
            correction = torch.log(a_t + self.eps) - torch.log(a_s + self.eps)
            self.last_fraction = flag.mean().detach()
            return logits + self.factor() * flag * correction

        return apply


class HCMF(nn.Module):
    """SUMMER's Hierarchical Cross-Modal Fusion, teacher-guided.

    Shapes: ``views {m: (B, T, H)}`` for the M >= 2 modalities it was built for, ``mask (B, T)``,
    ``guidance (B, heads, T, T)`` or None -> :class:`FusionOutput` with ``fused (B, T, H)``.

    Levels (the paper names the branches, the residual and the guidance; the gates are SDT's, as SUMMER
    builds on SDT):

    1. Branches anchored on the ``anchor`` modality (text by default): an **anchor branch** (pre-norm
       self-attention layer over the anchor) and one **cross-modal branch** per other modality m (pre-norm
       cross-attention layer, the anchor as query and m as key/value). With ``guidance`` (the teacher's
       attention over the anchor) the anchor branch's attention, and with ``guide_cross`` the cross branches'
       attention too (same utterance axis), is corrected by :class:`AttentionGuide`. Without guidance (None)
       nothing changes: ablations run without a teacher.
    2. **Unimodal-level gates**: each branch output ``z_m = sigmoid(W_m b_m) * b_m`` (SDT).
    3. **Modality-level gate**: ``g = sum_m softmax_m(W z_m) * z_m`` per feature (SDT).
    4. **Residual** around the fusion: ``fused = LN(g + r)``, ``r`` the mean input view (``residual: mean``,
       the default), the anchor's input view (``anchor``) or 0 (``none``). Why ``mean``: every branch is
       anchored on the text, so an utterance's *own* audio and visual reach ``g`` only through the weight
       its position happens to get in the cross-attention. With ``anchor`` that information is easily lost;
       on the synthetic conversations (where audio separates classes that text confuses) ``anchor`` scored
       68.4 test weighted F1 against 78.4 for ``mean`` (3 seeds, benchmarks/RESULTS_synthetic.md).
    5. Optional **global MoE** (``global_moe``, e.g. ``sdmoe``) over the fused sequence, for the cross-modal
       global context the paper draws inside HCMF; its aux losses and stats are passed on.

    ``features`` holds the gated branch outputs by modality (the anchor's under its own name), so per-modality
    heads can read them; ``attentions`` holds ``"anchor"`` and ``"anchor<-m"`` maps.

    **Guidance at evaluation.** The model passes ``guidance`` while training, and at evaluation only with
    ``model.guide_at_eval: true`` (default false). What the paper describes implies true: it presents the
    teacher-guided attention as how HCMF computes its attention (a mask from where teacher and student
    attention disagree, scaled by a dynamic factor), not as a training loss, and its teacher is frozen and
    reads only the text, so it is there at test time too. Guiding in training only means the test-time
    attention is one the model never trained with (at the guided positions). Which of the two is better is
    an empirical question: choose it on dev (e.g. ``mercore sweep`` over ``model.guide_at_eval=[false, true]``).
    With true, evaluation (and ``mercore eval``) needs the teacher run.
    """

    @attrs.define
    class Config:
        anchor: str = option("text", help="the modality that queries the others (one of the model's modalities)")
        heads: int = option(8, help="attention heads")
        ff_mult: float = option(1.0, help="feed-forward width as a multiple of hidden (SDT: 1)")
        dropout: float = option(0.1, help="dropout inside the attention layers")
        guide_threshold: float = option(0.5, help="teacher/student attention gap above which guidance acts")
        guide_scale: float = option(1.0, help="strength s of the guidance (0: off); the dynamic factor starts at s")
        guide_learnable: bool = option(True, help="learn the per-head dynamic factor (else fixed at guide_scale)")
        guide_cross: bool = option(True, help="guide the cross-modal branches' attention too")
        residual: Literal["mean", "anchor", "none"] = option(
            "mean", help="residual path around the fusion: the mean of all input views, the anchor's, or none")
        global_moe: Node | None = component("moe", default=None, help="a global MoE over the fused sequence")

    def __init__(self, config: Config, *, modalities: list[str], hidden: int, name: str = "fusion", **_: object):
        super().__init__()
        modalities = list(modalities)
        if len(modalities) < 2:
            raise ConfigError(f"hcmf fusion needs 2 or more modalities, got {modalities}; a one-modality model "
                              "takes no fusion (set fusion: null)")
        if config.anchor not in modalities:
            raise ConfigError(f"hcmf fusion: anchor {config.anchor!r} is not among the model's modalities "
                              f"{modalities}; set fusion.anchor to one of them")
        if config.heads < 1 or hidden % config.heads:
            raise ConfigError(f"hcmf fusion: hidden {hidden} is not divisible by heads={config.heads}")
        self.config = config
        self.name = name
        self.modalities = modalities
        self.anchor = config.anchor
        self.others = [m for m in modalities if m != config.anchor]
        h, d = config.heads, config.dropout
        self.anchor_layer = TransformerLayer(hidden, h, config.ff_mult, d, name="hcmf anchor branch")
        self.cross_layers = nn.ModuleDict({
            m: TransformerLayer(hidden, h, config.ff_mult, d, cross=True, name=f"hcmf {m} branch") for m in self.others
        })
        self.guides = nn.ModuleDict({
            m: AttentionGuide(h, config.guide_threshold, config.guide_scale, config.guide_learnable)
            for m in [self.anchor, *self.others]
        })
        self.unimodal_gates = nn.ModuleDict({m: UnimodalGate(hidden) for m in modalities})
        self.modality_gate = ModalityGate(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.global_moe = (config.global_moe.build(dim=hidden, name=f"{name}.global_moe")
                           if config.global_moe is not None else None)

    def forward(self, views: dict[str, torch.Tensor], mask: torch.Tensor) -> FusionOutput:
        """The fusion without guidance (as the ablations without a teacher run)."""
        return self.forward_guided(views, mask, None)

    def forward_guided(self, views: dict[str, torch.Tensor], mask: torch.Tensor,
                       guidance: torch.Tensor | None) -> FusionOutput:
        """The fusion with the teacher's attention over the anchor ``guidance (B, heads, T, T)``, or None."""
        check_fusion_modalities("hcmf", self.modalities, views)
        mask = mask.bool()
        cfg = self.config
        x_a = views[self.anchor]  # (B, T, H)
        teacher = None
        if guidance is not None and cfg.guide_scale != 0:
            teacher = teacher_attention_like(guidance, cfg.heads, x_a.shape[1])

        guided = [] if teacher is None else [self.anchor, *(self.others if cfg.guide_cross else [])]

        def hook(m: str):
            return self.guides[m].hook(teacher) if m in guided else None

        branches: dict[str, torch.Tensor] = {}
        attentions: dict[str, torch.Tensor] = {}
        branches[self.anchor], attentions["anchor"] = self.anchor_layer(x_a, mask, logit_hook=hook(self.anchor))
        for m in self.others:
            branches[m], attentions[f"{self.anchor}<-{m}"] = self.cross_layers[m](
                x_a, mask, context=views[m], logit_hook=hook(m))

        gated = {m: zero_padding(self.unimodal_gates[m](b), mask) for m, b in branches.items()}
        order = [self.anchor, *self.others]
        g, _weights = self.modality_gate([gated[m] for m in order])  # (B, T, H)
        if cfg.residual == "anchor":
            g = g + x_a
        elif cfg.residual == "mean":
            g = g + torch.stack([views[m] for m in order]).mean(0)
        fused = zero_padding(self.norm(g), mask)

        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        if self.global_moe is not None:
            out = self.global_moe(fused, mask)
            fused = zero_padding(out.y, mask)
            aux.update(out.aux_losses)
            stats.update(out.stats)
        if guided:  # share of attention entries the teacher corrected, over the guided branches
            stats[f"{self.name}.guided_fraction"] = float(torch.stack([self.guides[m].last_fraction for m in guided]).mean())
        return FusionOutput(fused=fused, attentions=attentions, aux_losses=aux, features=gated, stats=stats)


__all__ = ["AttentionGuide", "HCMF", "teacher_attention_like"]

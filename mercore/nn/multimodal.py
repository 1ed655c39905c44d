"""The model assembler (kind ``model``, name ``multimodal``): encoders -> MoE -> fusion -> head.

One assembler serves SUMMER's student, its unimodal teacher and the baselines: which encoder, MoE, fusion and
head it is built from is the recipe's choice. It lives in the engine, not in a component plugin, because it
depends only on the contracts of :mod:`mercore.nn` (``mercore_core`` registers it).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mercore.config import component, option
from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.errors import ConfigError
from mercore.nn.encoder import AttentionEncoder
from mercore.nn.fusion import FusionOutput, GuidableFusion
from mercore.nn.masking import masked_mean, zero_padding
from mercore.nn.model import ModelOutput
from mercore.registry import Node


class MultimodalModel(nn.Module):
    """A dialogue model over one or more modalities: per-modality encoder (+ SDMoE), fusion, classifier head.

    Built as ``MultimodalModel(config, modality_dims={m: D_m}, num_classes=C, num_speakers=S,
    label_names=[...])``; called as ``model(batch: DialogueBatch, teacher: ModelOutput | None = None) ->
    ModelOutput``.

    Per modality m of ``modalities`` (separate weights, same config): ``h_m = encoder_m(x_m, speakers, mask)``
    ``(B, T, H)``, then, if ``moe`` is set, ``h_m = moe_m(h_m, mask).y`` (SUMMER's SDMoE). With 2+ modalities a
    ``fusion`` combines the views into ``(B, T, H)``; with one modality there is none and the head reads
    ``h_m`` (the text teacher and the text-only baselines). The head gives ``logits (B, T, C)``.

    Optional capabilities are read from the components' declared protocols, nothing else: an encoder that is an
    :class:`~mercore.nn.AttentionEncoder` contributes its attention map; a fusion that is a
    :class:`~mercore.nn.GuidableFusion` sets the anchor modality and is called through ``forward_guided``.
    When ``teacher`` (a teacher's :class:`ModelOutput`) is given and the model is training (or
    ``guide_at_eval``), ``teacher.attentions["anchor"]`` guides such a fusion's attention.

    SDT's self-distillation (``unimodal_heads: true``): one head per modality (``unimodal_head``, default the
    ``head`` config; SDT: ``relu_linear``, its fused head a bare ``linear``) on the fusion's per-modality
    features (or on ``h_m`` where the fusion has none) gives ``unimodal_logits``; the losses, averaged over
    real utterances and already weighted, are

    * ``self_distill.ce.{m}`` = ``unimodal_ce_weight`` * CE(unimodal_m, labels) (SDT's g2 term): with
      ``unimodal_loss: plain_ce`` an unweighted cross-entropy in ``aux_losses``; with ``unimodal_loss: task``
      the recipe's ``loss`` (class weights, smoothing), returned in ``task_loss_logits`` for the trainer to
      score, as SDT applies its class-weighted loss to the fused and the three unimodal terms alike;
    * ``self_distill.kl.{m}`` = ``self_distill_weight`` * KL(softmax(fused / T) || softmax(unimodal_m / T))
      (SDT's g3 term: its ``KLDivLoss(log_softmax(unimodal/T), softmax(fused/T))``; the fused distribution is
      the target and is not detached, and there is no T^2 factor, both as in SDT's code).

    Output: ``features`` holds ``"final"`` (what the head read), each modality's ``h_m`` and the fusion's
    per-modality features as ``"fusion.{m}"``; ``attentions`` holds ``"anchor"`` (the anchor encoder's last
    attention, which guides a student when this model is the teacher), ``"encoder.{m}"`` and the fusion's
    maps as ``"fusion.{name}"``; ``aux_losses`` collects every MoE layer's and the fusion's aux losses and the
    self-distillation terms.
    """

    @attrs.define
    class Config:
        modalities: list[str] = option(factory=lambda: ["text", "audio", "visual"],
                                       help="the modalities the model reads (a subset of the data's)")
        hidden: int = option(256, help="width H of every modality's representation")
        encoder: Node = component("encoder", default={"type": "transformer"},
                                  help="the encoder of each modality (same config, separate weights)")
        moe: Node | None = component("moe", default=None, help="a MoE after each modality's encoder (SDMoE)")
        fusion: Node | None = component("fusion", default=None,
                                        help="the fusion of the modalities (required with 2+ modalities)")
        head: Node = component("head", default={"type": "mlp"}, help="the classifier on the fused features")
        unimodal_heads: bool = option(False, help="one classifier per modality (SDT's self-distillation)")
        unimodal_head: Node | None = component("head", default=None,
                                               help="the per-modality classifier (null: the same config as head)")
        unimodal_ce_weight: float = option(0.0, help="weight g2 of each unimodal head's cross-entropy")
        unimodal_loss: Literal["plain_ce", "task"] = option(
            "plain_ce", help="the unimodal g2 term: plain_ce (unweighted cross-entropy) or task (the recipe's loss, "
                             "class weights included, as SDT)")
        self_distill_weight: float = option(0.0, help="weight g3 of KL(fused at T || unimodal at T)")
        self_distill_temperature: float = option(1.0, help="temperature T of the self-distillation KL")
        anchor: str | None = option(None, help="the anchor modality (null: the fusion's anchor, else text, else "
                                                 "the first modality)")
        guide_at_eval: bool = option(False, help="use a teacher's attention guidance in evaluation too (as the "
                                                 "paper's description of HCMF implies; choose on dev)")

        def __attrs_post_init__(self) -> None:
            problems = []
            mods = list(self.modalities)
            if not mods:
                problems.append("modalities must name at least one modality")
            if len(set(mods)) != len(mods):
                problems.append(f"modalities {mods} names a modality twice")
            bad = [m for m in mods if not m or "." in m]
            if bad:
                problems.append(f"modality names must be non-empty and contain no '.', got {bad}")
            if self.hidden < 1:
                problems.append(f"hidden must be >= 1, got {self.hidden}")
            if len(mods) >= 2 and self.fusion is None:
                problems.append(f"a model over {len(mods)} modalities {mods} needs a fusion (e.g. fusion: hcmf, "
                                "concat or sdt_gated); only a one-modality model takes none")
            if len(mods) == 1 and self.fusion is not None:
                problems.append(f"a one-modality model ({mods}) takes no fusion, got fusion {self.fusion.name!r}; "
                                "set fusion: null")
            if (self.unimodal_ce_weight > 0 or self.self_distill_weight > 0) and not self.unimodal_heads:
                problems.append("unimodal_ce_weight / self_distill_weight need unimodal_heads: true")
            if self.unimodal_head is not None and not self.unimodal_heads:
                problems.append("unimodal_head is set but unimodal_heads is false; set unimodal_heads: true")
            if self.self_distill_temperature <= 0:
                problems.append(f"self_distill_temperature must be > 0, got {self.self_distill_temperature}")
            if self.anchor is not None and self.anchor not in mods:
                problems.append(f"anchor {self.anchor!r} is not among modalities {mods}")
            # Checks across nodes, at validate time (not when --build or the run constructs the layers).
            fusion_anchor = getattr(getattr(self.fusion, "config", None), "anchor", None)
            if isinstance(fusion_anchor, str) and fusion_anchor not in mods:
                problems.append(f"fusion.anchor {fusion_anchor!r} is not among modalities {mods}")
            for part in ("encoder", "fusion"):
                heads = getattr(getattr(getattr(self, part), "config", None), "heads", None)
                if isinstance(heads, int) and (heads < 1 or self.hidden % heads):
                    problems.append(f"hidden {self.hidden} is not divisible by {part}.heads={heads}")
            if problems:
                raise ValueError("; ".join(problems))

    def __init__(self, config: Config, *, modality_dims: dict[str, int], num_classes: int, num_speakers: int = 1,
                 label_names: list[str] | None = None, **_: object):
        super().__init__()
        missing = [m for m in config.modalities if m not in modality_dims]
        if missing:
            raise ConfigError(
                f"model.modalities asks for {', '.join(repr(m) for m in missing)} but the data provides only "
                f"{list(modality_dims)}; drop it from model.modalities or load a dataset with it"
            )
        self.config = config
        self.modalities: list[str] = list(config.modalities)
        self.modality_dims: dict[str, int] = {m: int(modality_dims[m]) for m in self.modalities}
        self.hidden = config.hidden
        self.num_classes = num_classes
        self.num_speakers = num_speakers
        self.label_names = list(label_names) if label_names is not None else None
        H = config.hidden

        self.encoders = nn.ModuleDict({
            m: config.encoder.build(input_dim=self.modality_dims[m], hidden=H, num_speakers=num_speakers, name=m)
            for m in self.modalities
        })
        self.moes = (nn.ModuleDict({m: config.moe.build(dim=H, name=f"{m}.moe") for m in self.modalities})
                     if config.moe is not None else None)
        self.fusion = (config.fusion.build(modalities=list(self.modalities), hidden=H, num_classes=num_classes,
                                           name="fusion")
                       if config.fusion is not None else None)
        fusion_anchor = self.fusion.anchor if isinstance(self.fusion, GuidableFusion) else None
        if config.anchor is not None:
            if fusion_anchor is not None and fusion_anchor != config.anchor:
                raise ConfigError(f"model.anchor is {config.anchor!r} but the fusion's anchor is {fusion_anchor!r}; "
                                  "make them agree")
            self.anchor = config.anchor
        elif fusion_anchor is not None:
            self.anchor = fusion_anchor
        else:
            self.anchor = "text" if "text" in self.modalities else self.modalities[0]
        self.head = config.head.build(hidden=H, num_classes=num_classes)
        unimodal_head = config.unimodal_head if config.unimodal_head is not None else config.head
        self.unimodal_heads = (nn.ModuleDict({m: unimodal_head.build(hidden=H, num_classes=num_classes)
                                              for m in self.modalities})
                               if config.unimodal_heads else None)

    # ------------------------------------------------------------------------------------------------------
    def _guidance(self, teacher: ModelOutput | None) -> torch.Tensor | None:
        if teacher is None or not isinstance(self.fusion, GuidableFusion):
            return None
        if not (self.training or self.config.guide_at_eval):
            return None
        return teacher.attentions.get("anchor")

    def forward(self, batch: DialogueBatch, teacher: ModelOutput | None = None) -> ModelOutput:
        mask = batch.mask.bool()  # (B, T)
        absent = [m for m in self.modalities if m not in batch.features]
        if absent:
            raise ValueError(f"the batch has no {absent} features (it has {list(batch.features)}); the model reads "
                             f"{self.modalities}")
        views: dict[str, torch.Tensor] = {}
        features: dict[str, torch.Tensor] = {}
        attentions: dict[str, torch.Tensor] = {}
        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}

        for m in self.modalities:
            enc = self.encoders[m]
            if isinstance(enc, AttentionEncoder):
                h, attn = enc.forward_with_attention(batch.features[m], batch.speakers, mask)
                attentions[f"encoder.{m}"] = attn
                if m == self.anchor:
                    attentions["anchor"] = attn  # (B, heads, T, T)
            else:
                h = enc(batch.features[m], batch.speakers, mask)  # (B, T, H)
            if self.moes is not None:
                out = self.moes[m](h, mask)
                h = zero_padding(out.y, mask)
                aux.update(out.aux_losses)
                stats.update(out.stats)
            views[m] = h
            features[m] = h

        fusion_features: dict[str, torch.Tensor] = {}
        if self.fusion is not None:
            if isinstance(self.fusion, GuidableFusion):
                guidance = self._guidance(teacher)
                fo = self.fusion.forward_guided(views, mask, guidance)
                stats["guided"] = float(guidance is not None)
            else:
                fo = self.fusion(views, mask)
            if isinstance(fo, torch.Tensor):
                fo = FusionOutput(fused=fo)
            final = fo.fused
            fusion_features = dict(fo.features)
            features.update({f"fusion.{m}": f for m, f in fo.features.items()})
            attentions.update({f"fusion.{k}": a for k, a in fo.attentions.items()})
            aux.update(fo.aux_losses)
            stats.update(fo.stats)
        else:
            final = views[self.modalities[0]]
        features["final"] = final
        logits = self.head(final)  # (B, T, C)

        unimodal_logits: dict[str, torch.Tensor] = {}
        task_loss_logits: dict[str, tuple[float, torch.Tensor]] = {}
        if self.unimodal_heads is not None:
            for m in self.modalities:
                unimodal_logits[m] = self.unimodal_heads[m](fusion_features.get(m, views[m]))
            aux.update(self._self_distillation(logits, unimodal_logits, batch))
            if self.config.unimodal_loss == "task" and self.config.unimodal_ce_weight > 0:
                task_loss_logits = {f"self_distill.ce.{m}": (self.config.unimodal_ce_weight, u)
                                    for m, u in unimodal_logits.items()}
        return ModelOutput(logits=logits, features=features, unimodal_logits=unimodal_logits,
                           attentions=attentions, aux_losses=aux, stats=stats, task_loss_logits=task_loss_logits)

    def _self_distillation(self, logits: torch.Tensor, unimodal: dict[str, torch.Tensor],
                           batch: DialogueBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        mask = batch.mask.bool()
        terms: dict[str, torch.Tensor] = {}
        if cfg.unimodal_ce_weight > 0 and cfg.unimodal_loss == "plain_ce":
            labelled = mask & (batch.labels != PAD_LABEL)
            labels = batch.labels.masked_fill(~labelled, 0)
            for m, u in unimodal.items():
                ce = F.cross_entropy(u.transpose(1, 2), labels, reduction="none")  # (B, T)
                terms[f"self_distill.ce.{m}"] = cfg.unimodal_ce_weight * masked_mean(ce, labelled)
        if cfg.self_distill_weight > 0:
            t = cfg.self_distill_temperature
            log_p = F.log_softmax(logits / t, dim=-1)  # the fused distribution is the target, as in SDT
            for m, u in unimodal.items():
                kl = (log_p.exp() * (log_p - F.log_softmax(u / t, dim=-1))).sum(-1)  # (B, T)
                terms[f"self_distill.kl.{m}"] = cfg.self_distill_weight * masked_mean(kl, mask)
        return terms


__all__ = ["MultimodalModel"]

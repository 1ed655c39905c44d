"""SUMMER's Interactive Knowledge Distillation (kind ``distiller``, name ``ikd``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mercore.config import option
from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.errors import ConfigError
from mercore.nn import GuidableFusion, ModelOutput, masked_mean


class IKDistiller(nn.Module):
    """Interactive Knowledge Distillation from a frozen, pre-trained unimodal teacher.

    Built as ``IKDistiller(config, student=model, num_classes=C, label_names=[...], modality_dims={...})``.
    The teacher is the model of the run directory ``teacher`` (``mercore.load(teacher, checkpoint)``), or a
    model passed as ``teacher_model=`` (tests, notebooks); either is frozen in place (eval mode,
    ``requires_grad_(False)``) and kept out of this module's tree: it is not in ``parameters()`` (so no
    optimizer sees it) nor in ``state_dict()`` (so checkpoints do not copy it), yet ``.to(device)`` moves it
    and ``.train()`` leaves it in eval mode.

    ``teacher_output(batch) -> ModelOutput`` runs the teacher without gradient. ``forward(student_out,
    teacher_out, batch) -> {name: scalar}`` returns the weighted terms, each averaged over real utterances
    (``mask``; the judge term over labelled ones):

    * ``ikd.logit`` = ``logit_weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` on the logits
      (Hinton et al. 2015; the T^2 keeps the gradient scale independent of T).
    * ``ikd.latent`` = ``latent_weight * MSE(P(s_feat), t_final)``: ``P`` a learned ``Linear(H_s, H_t)`` (the
      identity with ``projection: false``), ``s_feat`` the student's ``features[student_feature]``
      (``"final"``: what its head read), ``t_final`` the teacher's ``features["final"]``; the squared error is
      averaged over the feature axis.
    * ``ikd.judge`` = ``judge_weight * CE(teacher_head(P(s_feat)), labels)``: the teacher's frozen classifier
      judges the student's representation; the gradient flows through the frozen head into ``P`` and the
      student.

    The task loss (cross-entropy with label smoothing) is the recipe's ``loss``. Terms whose weight is 0 are
    not computed. The paper gives neither T nor the weights (SDT used T = 1 on IEMOCAP and 8 on MELD).

    **The teacher is only loaded, never trained here.** ``teacher`` must hold a finished run (its
    ``results.json``); otherwise building the distiller raises a :class:`~mercore.errors.ConfigError` naming the
    folder and the command that makes it. To train teacher and student in one command, declare the teacher
    as a stage of the student's recipe (the engine trains it first, see :mod:`mercore.stages`)::

        stages:
          teacher: {recipe: text_sdmoe_iemocap.yaml, output_dir: "${output_dir}/teacher"}
        distiller:
          type: ikd
          teacher: ${stages.teacher.output_dir}

    Evaluating a student needs no teacher unless its model lets the teacher guide at evaluation
    (``guide_at_eval``); ``mercore eval`` builds the distiller only then.

    The teacher is refused, with both values named, when its number of classes or label names differ from the
    student's, when ``teacher_modality`` is not among the student's modalities or the teacher was built on
    other modalities than ``[teacher_modality]``, when its input feature dim of that modality differs from the
    student's data, when ``projection: false`` and the hidden sizes differ, or when the student's fusion takes
    the teacher's attention guidance (HCMF) but is anchored on another modality than ``teacher_modality``
    (the teacher's attention over its modality would guide the attention over another).
    """

    @attrs.define
    class Config:
        teacher: str | None = option(None, help="run directory of the trained unimodal teacher")
        checkpoint: str = option("best", help="which checkpoint of the teacher run: best, latest or a folder")
        teacher_modality: str = option("text", help="the modality the teacher was trained on")
        temperature: float = option(1.0, help="softmax temperature T of the logit KL")
        logit_weight: float = option(1.0, help="weight of T^2 * KL(teacher || student) on the logits")
        latent_weight: float = option(1.0, help="weight of the MSE between projected student and teacher features")
        judge_weight: float = option(1.0, help="weight of the CE of the teacher's head on the projected student features")
        student_feature: str = option("final", help="the student's features[...] entry that is projected")
        projection: bool = option(True, help="learn Linear(H_student, H_teacher) (false: identity, equal sizes)")
        # Read, never acted on: run directories written before stages moved into the engine record these.
        teacher_recipe: str | None = option(
            None, help="deprecated, ignored: declare the teacher as a stage of the recipe (stages.teacher)")
        teacher_overrides: list[str] = option(factory=list, help="deprecated, ignored (see teacher_recipe)")

        def __attrs_post_init__(self) -> None:
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            for name in ("logit_weight", "latent_weight", "judge_weight"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def __init__(self, config: Config, *, student: nn.Module, num_classes: int, label_names: list[str] | None = None,
                 modality_dims: dict[str, int] | None = None, teacher_model: nn.Module | None = None, **_: object):
        super().__init__()
        self.config = config
        teacher_labels: list[str] | None = None
        teacher_dims: dict[str, int] | None = None
        source: str
        if teacher_model is not None:
            teacher = teacher_model
            source = "the given teacher model"
        elif config.teacher:
            import mercore

            _require_finished_teacher(Path(config.teacher), config.teacher_recipe)
            loaded = mercore.load(config.teacher, checkpoint=config.checkpoint)
            teacher = loaded.model
            teacher_labels = list(loaded.label_names)
            teacher_dims = dict(loaded.modality_dims)
            source = f"teacher run {config.teacher}"
        else:
            raise ConfigError("distiller.teacher: ikd needs the run directory of a trained teacher "
                              "(distiller.teacher=runs/<teacher run>)")
        if teacher_labels is None:
            teacher_labels = getattr(teacher, "label_names", None)
        own_dims = getattr(teacher, "modality_dims", None)
        if own_dims is not None:
            teacher_dims = dict(own_dims)
        self._check(teacher, source, student, num_classes, label_names, modality_dims, teacher_labels, teacher_dims)

        teacher.eval()
        teacher.requires_grad_(False)
        # Outside the module tree: not in parameters(), state_dict(), nor touched by train()/eval().
        object.__setattr__(self, "_teacher", teacher)
        self.student_hidden = int(student.hidden)
        self.teacher_hidden = int(teacher.hidden)
        self.proj = (nn.Linear(self.student_hidden, self.teacher_hidden) if config.projection else nn.Identity())

    # ------------------------------------------------------------------------------------------------------
    def _check(self, teacher: nn.Module, source: str, student: nn.Module, num_classes: int,
               label_names: list[str] | None, modality_dims: dict[str, int] | None,
               teacher_labels: list[str] | None, teacher_dims: dict[str, int] | None) -> None:
        cfg = self.config
        problems: list[str] = []
        for attr in ("num_classes", "hidden", "modalities", "head"):
            if not hasattr(teacher, attr):
                problems.append(f"{source} is a {type(teacher).__name__} without .{attr}; ikd needs a "
                                "'multimodal' model as teacher")
        if not hasattr(student, "hidden") or not hasattr(student, "modalities"):
            problems.append(f"the student ({type(student).__name__}) lacks .hidden / .modalities; ikd needs a "
                            "'multimodal' model as student")
        if problems:
            raise ConfigError(problems)
        if teacher.num_classes != num_classes:
            problems.append(f"{source} predicts {teacher.num_classes} classes but the student {num_classes}")
        if label_names is not None and teacher_labels is not None and list(teacher_labels) != list(label_names):
            problems.append(f"{source} was trained on labels {list(teacher_labels)} but the student's data has "
                            f"{list(label_names)}")
        m = cfg.teacher_modality
        if m not in student.modalities:
            problems.append(f"teacher_modality {m!r} is not among the student's modalities {list(student.modalities)}")
        if list(teacher.modalities) != [m]:
            problems.append(f"{source} was built on modalities {list(teacher.modalities)} but teacher_modality is "
                            f"{m!r} (ikd needs a unimodal teacher of that modality)")
        student_dims = dict(modality_dims) if modality_dims is not None else dict(getattr(student, "modality_dims", {}))
        if teacher_dims is not None and m in teacher_dims and m in student_dims and teacher_dims[m] != student_dims[m]:
            problems.append(f"{source} reads {m!r} features of dim {teacher_dims[m]} but the student's data has "
                            f"dim {student_dims[m]}")
        if not cfg.projection and teacher.hidden != student.hidden:
            problems.append(f"projection is off but the teacher's hidden size {teacher.hidden} differs from the "
                            f"student's {student.hidden}")
        fusion = getattr(student, "fusion", None)
        anchor = getattr(student, "anchor", None)
        if isinstance(fusion, GuidableFusion) and anchor is not None and anchor != m:
            problems.append(f"the student's fusion is anchored on {anchor!r} but teacher_modality is {m!r}: the "
                            f"teacher's {m!r} attention would guide the {anchor!r} attention (set the fusion's "
                            f"anchor to {m!r})")
        if problems:
            raise ConfigError([f"ikd: {p}" for p in problems])

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher model (not a submodule)."""
        return self._teacher

    def _apply(self, fn: Any, recurse: bool = True):  # .to(), .cuda(), .double() move the teacher too
        super()._apply(fn, recurse)
        self._teacher._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.eval()  # the teacher is frozen: dropout off, whatever the trainer's mode
        return self

    @torch.no_grad()
    def teacher_output(self, batch: DialogueBatch) -> ModelOutput:
        """The frozen teacher's :class:`ModelOutput` on ``batch`` (eval mode, no gradient)."""
        self._teacher.eval()
        return self._teacher(batch)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput, batch: DialogueBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        mask = batch.mask.bool()
        terms: dict[str, torch.Tensor] = {}
        if cfg.logit_weight > 0:
            t = cfg.temperature
            log_pt = F.log_softmax(teacher_out.logits.detach() / t, dim=-1)
            log_ps = F.log_softmax(student_out.logits / t, dim=-1)
            kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (B, T)
            terms["ikd.logit"] = cfg.logit_weight * t * t * masked_mean(kl, mask)
        if cfg.latent_weight > 0 or cfg.judge_weight > 0:
            if cfg.student_feature not in student_out.features:
                raise KeyError(f"ikd: the student's output has no features[{cfg.student_feature!r}] "
                               f"(it has {sorted(student_out.features)})")
            z = self.proj(student_out.features[cfg.student_feature])  # (B, T, H_t)
            if cfg.latent_weight > 0:
                target = teacher_out.features["final"].detach()
                mse = (z - target).pow(2).mean(-1)  # (B, T)
                terms["ikd.latent"] = cfg.latent_weight * masked_mean(mse, mask)
            if cfg.judge_weight > 0:
                labelled = mask & (batch.labels != PAD_LABEL)
                judged = self._teacher.head(z)  # (B, T, C), the frozen head (eval mode), gradient to z
                ce = F.cross_entropy(judged.transpose(1, 2), batch.labels.masked_fill(~labelled, 0), reduction="none")
                terms["ikd.judge"] = cfg.judge_weight * masked_mean(ce, labelled)
        return terms


def _require_finished_teacher(folder: Path, deprecated_recipe: str | None) -> None:
    """Raise a ConfigError naming ``folder`` and the command that makes it, unless it holds a finished run."""
    if (folder / "results.json").exists():
        return
    has_checkpoints = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    if has_checkpoints and (folder / "recipe.yaml").exists():
        state = "holds an interrupted run (checkpoints, no results.json)"
        make = f"continue it with `mercore run {folder / 'recipe.yaml'} resume=true`"
    else:
        state = "does not exist" if not folder.exists() else "holds no finished run (no results.json)"
        make = f"train it with `mercore run TEACHER_RECIPE output_dir={folder}`"
    moved = (f" distiller.teacher_recipe ({deprecated_recipe}) no longer trains it: the engine trains stages now "
             "(stages: {teacher: {recipe: ..., output_dir: ...}})." if deprecated_recipe else "")
    raise ConfigError([
        f"distiller.teacher: the teacher run {str(folder)!r} {state}; ikd only loads a finished teacher and never "
        f"trains one. Run the recipe that declares it as a stage with `mercore run` (its stage plan names it), or "
        f"{make}.{moved}"])


__all__ = ["IKDistiller"]

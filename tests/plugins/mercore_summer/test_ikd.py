"""SUMMER's IKD distiller: the frozen teacher, the three terms, refusals of mismatched teachers, a teacher run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support import write_recipe
from mercore.config import validate_node
from mercore.data.types import PAD_LABEL, DialogueBatch
from mercore.errors import ConfigError
from mercore.plugins import get_registry

B, T, C, H = 2, 5, 3, 16
DIMS = {"text": 12, "audio": 10}
LABELS = ["a", "b", "c"]
ENC = {"type": "transformer", "heads": 2, "dropout": 0.0}


def make_batch(seed: int = 0) -> DialogueBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None] < torch.tensor([5, 3])[:, None]
    feats = {m: torch.randn(B, T, d, generator=g) * mask[..., None] for m, d in DIMS.items()}
    labels = torch.randint(0, C, (B, T), generator=g).masked_fill(~mask, PAD_LABEL)
    return DialogueBatch(features=feats, mask=mask, speakers=torch.zeros(B, T, dtype=torch.long), labels=labels,
                         dialogue_ids=["x", "y"])


def model(modalities=("text",), hidden=H, dims=DIMS, num_classes=C, labels=LABELS, seed=0, **cfg):
    torch.manual_seed(seed)
    data = {"type": "multimodal", "modalities": list(modalities), "hidden": hidden, "encoder": ENC,
            "head": {"type": "mlp", "dropout": 0.0}, **cfg}
    if len(modalities) > 1:
        data.setdefault("fusion", {"type": "hcmf", "heads": 2, "dropout": 0.0})
    node, problems = validate_node("model", data, get_registry())
    assert not problems, problems
    return node.build(modality_dims=dict(dims), num_classes=num_classes, num_speakers=2, label_names=list(labels))


def distiller(student, teacher, num_classes=C, labels=LABELS, dims=DIMS, **cfg):
    node, problems = validate_node("distiller", {"type": "ikd", **cfg}, get_registry())
    assert not problems, problems
    return node.build(student=student, num_classes=num_classes, label_names=list(labels), modality_dims=dict(dims),
                      num_speakers=2, teacher_model=teacher)


def test_terms_and_gradients():
    teacher, student = model(seed=1), model(("text", "audio"), hidden=8)
    ikd = distiller(student, teacher, temperature=2.0, logit_weight=1.0, latent_weight=0.5, judge_weight=0.3)
    batch = make_batch()
    t_out = ikd.teacher_output(batch)
    assert not t_out.logits.requires_grad
    s_out = student(batch, teacher=t_out)
    terms = ikd(s_out, t_out, batch)
    assert set(terms) == {"ikd.logit", "ikd.latent", "ikd.judge"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v >= 0 for v in terms.values())
    sum(terms.values()).backward()
    assert ikd.proj.weight.grad.abs().sum() > 0
    assert student.head.net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    # judge = CE of the teacher's frozen head on the projected student features, over labelled utterances
    with torch.no_grad():
        judged = teacher.head(ikd.proj(s_out.features["final"]))
        keep = batch.mask
        expected = 0.3 * torch.nn.functional.cross_entropy(judged[keep], batch.labels[keep])
    torch.testing.assert_close(terms["ikd.judge"].detach(), expected)


def test_zero_weights_skip_terms():
    student = model(("text", "audio"))
    ikd = distiller(student, model(seed=1), latent_weight=0.0, judge_weight=0.0)
    batch = make_batch()
    assert set(ikd(student(batch), ikd.teacher_output(batch), batch)) == {"ikd.logit"}


def test_student_equal_to_teacher_gives_zero_logit_and_latent_terms():
    teacher = model(seed=1)
    student = copy.deepcopy(teacher)
    ikd = distiller(student, teacher, projection=False, temperature=4.0)
    student.eval()
    batch = make_batch()
    terms = ikd(student(batch), ikd.teacher_output(batch), batch)
    assert abs(terms["ikd.logit"].item()) < 1e-6
    assert abs(terms["ikd.latent"].item()) < 1e-10


def test_teacher_frozen_outside_parameters_and_state_dict():
    teacher, student = model(seed=1), model(("text", "audio"))
    ikd = distiller(student, teacher)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert teacher_ids.isdisjoint(id(p) for p in ikd.parameters())
    assert set(ikd.state_dict()) == {"proj.weight", "proj.bias"}
    assert all(not p.requires_grad for p in teacher.parameters())
    ikd.train()
    assert not teacher.training and ikd.training
    ikd.to(torch.float64)  # moving the distiller moves its teacher
    assert next(teacher.parameters()).dtype == torch.float64 and ikd.proj.weight.dtype == torch.float64
    assert ikd.teacher is teacher
    assert not any(k.startswith("teacher") or "_teacher" in k for k in student.state_dict())


@pytest.mark.parametrize("teacher_kwargs, student_kwargs, ikd_cfg, message", [
    ({"num_classes": 4, "labels": ["a", "b", "c", "d"]}, {}, {}, "predicts 4 classes but the student 3"),
    ({"labels": ["x", "y", "z"]}, {}, {}, "trained on labels ['x', 'y', 'z'] but the student's data has ['a', 'b', 'c']"),
    ({"modalities": ("audio",)}, {}, {}, "built on modalities ['audio'] but teacher_modality is 'text'"),
    ({}, {"modalities": ("audio",)}, {}, "teacher_modality 'text' is not among the student's modalities ['audio']"),
    ({"dims": {"text": 7, "audio": 10}}, {}, {}, "reads 'text' features of dim 7 but the student's data has dim 12"),
    ({"hidden": 8}, {}, {"projection": False}, "teacher's hidden size 8 differs from the student's 16"),
    ({}, {"modalities": ("text", "audio"), "fusion": {"type": "hcmf", "heads": 2, "dropout": 0.0, "anchor": "audio"}},
     {}, "the student's fusion is anchored on 'audio' but teacher_modality is 'text'"),
])
def test_mismatched_teachers_are_refused(teacher_kwargs, student_kwargs, ikd_cfg, message):
    teacher = model(**teacher_kwargs)
    student = model(**student_kwargs)
    with pytest.raises(ConfigError) as info:
        distiller(student, teacher, **ikd_cfg)
    assert message in str(info.value)


def test_student_anchored_on_the_teacher_modality_is_accepted():
    student = model(("text", "audio"), fusion={"type": "hcmf", "heads": 2, "dropout": 0.0, "anchor": "text"})
    distiller(student, model(seed=1))


def test_an_unfinished_teacher_is_refused_naming_the_folder_and_the_command(tmp_path: Path):
    # ikd only loads a teacher; training one is the engine's stage (tests/engine/test_stages.py).
    node, _ = validate_node("distiller", {"type": "ikd", "teacher": str(tmp_path / "t"),
                                          "teacher_recipe": "old.yaml"}, get_registry())
    with pytest.raises(ConfigError) as info:
        node.build(student=model(), num_classes=C, label_names=LABELS, modality_dims=DIMS)
    msg = str(info.value)
    assert f"the teacher run '{tmp_path / 't'}' does not exist" in msg and "never trains one" in msg
    assert f"mercore run TEACHER_RECIPE output_dir={tmp_path / 't'}" in msg
    assert "distiller.teacher_recipe (old.yaml) no longer trains it" in msg
    assert not (tmp_path / "t").exists()


def test_no_teacher_is_a_clear_error():
    node, _ = validate_node("distiller", {"type": "ikd"}, get_registry())
    with pytest.raises(ConfigError, match="needs the run directory of a trained teacher"):
        node.build(student=model(), num_classes=C, label_names=LABELS, modality_dims=DIMS)


TEACHER = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 8, dim: 6, modalities: [text, audio]}}
model:
  type: multimodal
  modalities: [text]
  hidden: 8
  encoder: {{type: transformer, heads: 2}}
optimizer: {{type: adam, lr: 1e-2}}
trainer: {{epochs: 1, batch_size: 4, progress: false}}
output_dir: {out}
"""

STUDENT = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 8, dim: 6, modalities: [text, audio]}}
model:
  type: multimodal
  modalities: [text, audio]
  hidden: 8
  encoder: {{type: transformer, heads: 2}}
  fusion: {{type: hcmf, heads: 2}}
distiller: {{type: ikd, teacher: {teacher}, temperature: 2.0}}
loss: {{type: cross_entropy, label_smoothing: 0.1}}
optimizer: {{type: adam, lr: 1e-2}}
trainer: {{epochs: 1, batch_size: 4, progress: false}}
output_dir: {out}
"""


@pytest.mark.slow
def test_teacher_run_directory_end_to_end(tmp_path: Path):
    from mercore.recipe import load_recipe
    from mercore.train import Trainer

    teacher_dir = tmp_path / "teacher"
    recipe = load_recipe(write_recipe(tmp_path / "t.yaml", TEACHER.format(out=teacher_dir)))
    Trainer(recipe, log=lambda m: None).run()
    student_dir = tmp_path / "student"
    recipe = load_recipe(write_recipe(tmp_path / "s.yaml", STUDENT.format(out=student_dir, teacher=teacher_dir)))
    results = Trainer(recipe, log=lambda m: None).run()
    assert "test" in results
    best = student_dir / "checkpoints" / "best"
    assert set(load_file(str(best / "extra.safetensors"))) == {"proj.weight", "proj.bias"}
    student_keys = set(load_file(str(best / "model.safetensors")))
    assert "fusion.anchor_layer.attn.to_q.weight" in student_keys and "encoders.audio.embed.proj.weight" in student_keys
    assert not any("teacher" in k for k in student_keys)

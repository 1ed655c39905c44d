"""Multi-stage runs (mercore.stages): the plan, the inheritance rule, reuse and resume, and that validate and
eval never train a stage."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mercore.cli import main
from mercore.errors import ConfigError
from mercore.recipe import load_recipe
from mercore.stages import format_plan, kept_global_state, plan_stages, run_with_stages
from mercore.train import Trainer

TEACHER = """\
data: {type: "toy_components:ToyDataset", num_dialogues: 8, dim: 6, modalities: [text, audio]}
model:
  type: multimodal
  modalities: [text]
  hidden: 8
  encoder: {type: transformer, heads: 2}
optimizer: {type: adam, lr: 1e-2}
trainer: {epochs: 2, batch_size: 4, progress: false}
seed: 0
output_dir: runs/never_used
"""

STUDENT = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 8, dim: 6, modalities: [text, audio]}}
model:
  type: multimodal
  modalities: [text, audio]
  hidden: 8
  encoder: {{type: transformer, heads: 2}}
  fusion: {{type: hcmf, heads: 2}}
stages:
  teacher: {{recipe: teacher.yaml, output_dir: "${{output_dir}}/teacher", overrides: {stage_overrides}}}
distiller: {{type: ikd, teacher: "${{stages.teacher.output_dir}}"}}
optimizer: {{type: adam, lr: 1e-2}}
trainer: {{epochs: 1, batch_size: 4, progress: false}}
seed: 3
output_dir: {out}
"""


def _recipes(tmp_path: Path, stage_overrides: str = "[]", out: str = "student") -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir(exist_ok=True)
    (folder / "teacher.yaml").write_text(TEACHER)
    student = folder / "student.yaml"
    student.write_text(STUDENT.format(stage_overrides=stage_overrides, out=tmp_path / out))
    return student


def test_the_plan_states_the_inherited_keys_and_resolves_the_recipe_beside_its_declarer(tmp_path, monkeypatch):
    student = _recipes(tmp_path, stage_overrides='["seed=7", "trainer.epochs=5"]')
    monkeypatch.chdir(tmp_path / "recipes")  # any folder: the stage recipe is found beside student.yaml
    loaded = load_recipe(student, ["trainer.device=cpu", "trainer.threads=1", "trainer.epochs=9"])
    (stage,) = plan_stages(loaded)
    assert stage.recipe_path == student.parent / "teacher.yaml" and stage.state == "new"
    # The rule: seed (set by the stage itself here, so not inherited), trainer.device/precision/threads/progress.
    assert stage.inherited == ["trainer.device=cpu", "trainer.precision=fp32", "trainer.threads=1",
                               "trainer.progress=false"]
    r = stage.loaded.recipe
    assert (r.seed, r.trainer.epochs, r.trainer.threads, r.output_dir) == (7, 5, 1, str(tmp_path / "student" / "teacher"))
    lines = format_plan([stage], loaded)
    assert lines[0] == "stage plan (2 runs, in this order):"
    assert lines[1] == f"  - stage teacher: {stage.recipe_path} -> {tmp_path / 'student' / 'teacher'}  [new, trained]"
    assert lines[2] == "      inherited: trainer.device=cpu trainer.precision=fp32 trainer.threads=1 trainer.progress=false"
    assert lines[3] == "      own overrides: seed=7 trainer.epochs=5"
    assert lines[4] == f"  - run: {student} -> {tmp_path / 'student'}"

    # Without its own seed the stage inherits the declaring run's; epochs stay the stage recipe's own.
    (stage,) = plan_stages(load_recipe(_recipes(tmp_path), ["trainer.epochs=9"]))
    assert stage.inherited[0] == "seed=3" and stage.loaded.recipe.trainer.epochs == 2


def test_a_missing_stage_recipe_and_a_cycle_are_named(tmp_path):
    student = _recipes(tmp_path)
    with pytest.raises(ConfigError, match=r"stages.teacher.recipe: '.*nope.yaml' does not exist .*relative to the folder"):
        plan_stages(load_recipe(student, ["stages.teacher.recipe=nope.yaml"]))
    loop = tmp_path / "recipes" / "loop.yaml"
    loop.write_text(TEACHER + "stages: {again: {recipe: loop.yaml, output_dir: x}}\n")
    with pytest.raises(ConfigError, match="the stages form a cycle"):
        plan_stages(load_recipe(student, ["stages.teacher.recipe=loop.yaml"]))


def test_kept_global_state_restores_every_generator_and_the_thread_count():
    torch.manual_seed(123), random.seed(4), np.random.seed(5)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads())
    with kept_global_state():
        torch.manual_seed(0), random.seed(0), np.random.seed(0), torch.rand(3), np.random.rand(2)
        torch.set_num_threads(1)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2]) and torch.get_num_threads() == before[3]


def test_validate_and_validate_build_never_train_a_stage(tmp_path, capsys):
    student = _recipes(tmp_path)
    assert main(["validate", str(student)]) == 0
    out = capsys.readouterr().out
    assert "stage teacher" in out and "[new, trained]" in out and "validate trains nothing" in out
    assert main(["validate", "--build", str(student)]) == 2
    err = capsys.readouterr().err
    assert f"stages.teacher: {tmp_path / 'student' / 'teacher'} is not finished (new)" in err
    assert f"mercore run {student.parent / 'teacher.yaml'} seed=3" in err
    assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_a_stage_is_trained_first_then_reused_and_eval_of_a_copy_needs_no_teacher(tmp_path, capsys):
    student = _recipes(tmp_path)
    logs: list[str] = []
    results = run_with_stages(load_recipe(student), log=logs.append)
    teacher_dir = tmp_path / "student" / "teacher"
    assert logs[0] == "stage plan (2 runs, in this order):" and "[new, trained]" in logs[1]
    assert any(m.startswith("[teacher] epoch   2/2") for m in logs)
    teacher = json.loads((teacher_dir / "results.json").read_text())
    assert teacher["epochs_run"] == 2 and teacher["seed"] == 3  # inherited seed, the stage's own epochs

    # A finished stage is reused, not retrained; training the teacher in the same process left the student's
    # random stream as if the teacher had been trained beforehand (same results without training it).
    logs.clear()
    again = run_with_stages(load_recipe(student, [f"output_dir={tmp_path / 'student2'}",
                                                  f"stages.teacher.output_dir={teacher_dir}"]), log=logs.append)
    assert "[finished, reused]" in logs[1] and not any(m.startswith("[teacher]") for m in logs)
    assert again["test"] == results["test"]
    assert json.loads((teacher_dir / "results.json").read_text()) == teacher

    # eval of a copied run without its teacher/ (and from another folder) trains nothing and needs no teacher.
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "student", copy, ignore=shutil.ignore_patterns("teacher"))
    shutil.rmtree(teacher_dir)
    capsys.readouterr()
    assert main(["eval", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == results["test"]["accuracy"]
    assert not teacher_dir.exists() and not (copy / "teacher").exists()
    # A model that the teacher guides at evaluation needs it: said, and refused clearly, still without training.
    saved = (copy / "recipe.yaml").read_text()
    assert saved.count("guide_at_eval: false") == 1
    (copy / "recipe.yaml").write_text(saved.replace("guide_at_eval: false", "guide_at_eval: true"))
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "the model lets the teacher guide at evaluation" in err
    assert f"the teacher run '{teacher_dir}' does not exist; ikd only loads a finished teacher" in err
    assert not teacher_dir.exists()


@pytest.mark.slow
def test_an_interrupted_stage_is_resumed(tmp_path):
    student = _recipes(tmp_path)
    teacher_dir = tmp_path / "student" / "teacher"

    def die_after_epoch_1(msg: str) -> None:
        if msg.startswith("epoch   1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(load_recipe(tmp_path / "recipes" / "teacher.yaml", [f"output_dir={teacher_dir}", "seed=3"]),
                log=die_after_epoch_1).run()
    logs: list[str] = []
    run_with_stages(load_recipe(student), log=logs.append)
    assert "[interrupted, resumed]" in logs[1]
    assert any(m.startswith("[teacher] resumed from") for m in logs)
    metrics = [json.loads(line) for line in (teacher_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]  # epoch 1 kept, only epoch 2 trained


def test_a_teacher_stage_reads_the_same_pickle_files_as_its_student(tmp_path):
    """data.layout / data.text_file / data.text_layout are inherited: with text from COSMIC's file beside
    MMGCN's, the teacher stage of summer_iemocap reads the student's RoBERTa text, not MMGCN's 100-d text."""
    from mercore_data.fake_pickles import write_fake_pickle

    from support import ROOT

    dims = {"text": 8, "audio": 6, "visual": 4}
    mmgcn = write_fake_pickle(tmp_path / "IEMOCAP_features.pkl", "iemocap", "mmgcn", num_dialogues=8, seed=1,
                              dims={**dims, "text": 5})
    roberta = write_fake_pickle(tmp_path / "iemocap_features_roberta.pkl", "iemocap", "cosmic", num_dialogues=8,
                                seed=1, dims=dims)
    tiny = ["model.hidden=16", "~data.expected_dims", "trainer.device=cpu"]
    loaded = load_recipe(ROOT / "recipes" / "summer_iemocap.yaml",
                         [f"data.path={mmgcn}", "data.layout=mmgcn", f"data.text_file={roberta}",
                          "data.text_layout=cosmic", *tiny, f"output_dir={tmp_path / 'student'}",
                          f"stages.teacher.overrides={json.dumps(['~data.expected_dims', 'model.hidden=16'])}"])
    (stage,) = plan_stages(loaded)
    assert stage.inherited[:5] == ["seed=0", f"data.path={mmgcn}", "data.layout=mmgcn", f"data.text_file={roberta}",
                                   "data.text_layout=cosmic"]
    data = stage.loaded.recipe.data.config
    assert (data.path, data.layout, data.text_file, data.text_layout) == (str(mmgcn), "mmgcn", str(roberta), "cosmic")
    # The teacher's text features are the student's, utterance by utterance (RoBERTa's 8-d, not MMGCN's 5-d).
    student = loaded.recipe.data.build().load()
    teacher = stage.loaded.recipe.data.build().load()
    assert teacher.modality_dims == {"text": 8}
    for split in ("train", "dev", "test"):
        s, t = student.split(split), teacher.split(split)
        assert [d.id for d in s] == [d.id for d in t]
        for a, b in zip(s, t):
            assert torch.equal(a.features["text"], b.features["text"]) and torch.equal(a.labels, b.labels)

    # The stage's own overrides still win over the inherited keys.
    loaded = load_recipe(ROOT / "recipes" / "summer_iemocap.yaml",
                         [f"data.path={mmgcn}", f"data.text_file={roberta}", *tiny,
                          f"stages.teacher.overrides={json.dumps([f'data.path={roberta}', 'data.text_file=null'])}"])
    (stage,) = plan_stages(loaded)
    assert not any(o.startswith(("data.path=", "data.text_file=")) for o in stage.inherited)
    assert stage.loaded.recipe.data.config.text_file is None

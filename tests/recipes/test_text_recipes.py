"""The real-text recipes train end to end on ../shared/data (one epoch each), the IKD one in its one-command form.

Skipped, with the reason, where ../shared/data is absent (a user's fresh clone).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT, SHARED_DATA
LABELS = {
    "iemocap": ["happy", "sad", "neutral", "angry", "excited", "frustrated"],
    "meld": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
}


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mercore", "run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["iemocap", "meld"])
def test_summer_text_trains_teacher_then_student_in_one_command(corpus, tmp_path, subprocess_env):
    root = SHARED_DATA / corpus
    if not (root / "dialogues.jsonl").exists():
        pytest.skip(f"{root} is absent: the real-text recipes need ../shared/data beside the project")
    out = tmp_path / "run"
    proc = _run([f"recipes/summer_text_{corpus}.yaml", f"data.root={root}", f"output_dir={out}", "seed=0",
                 "trainer.epochs=1", "stages.teacher.overrides=[trainer.epochs=1]"], subprocess_env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for run_dir in (out / "teacher", out):  # the teacher was trained first, into OUTPUT_DIR/teacher
        results = json.loads((run_dir / "results.json").read_text())
        assert list(results["test"]["per_class_f1"]) == LABELS[corpus]
        assert 0.0 < results["test"]["weighted_f1"] <= 1.0
    assert "stage plan" in proc.stdout and f"data.root={root}" in proc.stdout  # the teacher inherits data.root
    teacher_dev = json.loads((out / "teacher" / "results.json").read_text())["dev"]["weighted_f1"]
    assert f"[teacher] done: dev weighted F1 {teacher_dev:.4f}" in proc.stdout + proc.stderr  # its test: not printed
    assert "weighted F1" in proc.stdout or "weighted_f1" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", ["text_bigru", "text_transformer", "text_sdmoe"])
def test_text_recipes_train_one_epoch_on_iemocap(config, tmp_path, subprocess_env):
    root = SHARED_DATA / "iemocap"
    if not (root / "dialogues.jsonl").exists():
        pytest.skip(f"{root} is absent: the real-text recipes need ../shared/data beside the project")
    out = tmp_path / "run"
    proc = _run([f"recipes/{config}_iemocap.yaml", f"data.root={root}", f"output_dir={out}", "trainer.epochs=1"],
                subprocess_env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["num_utterances"] == 1623 and results["dataset"] == "iemocap"

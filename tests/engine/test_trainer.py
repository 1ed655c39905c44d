"""Training end to end on toy components: run directory, exact resume, faults and their messages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mercore
from support import write_recipe
from mercore.errors import CheckpointError, ConfigError, TrainingError
from mercore.recipe import load_recipe
from mercore.train import Trainer

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 16}}
model: {{type: "toy_components:ToyModel", dropout: 0.2}}
optimizer: {{type: adamw, lr: 1e-2}}
scheduler: {{type: warmup_cosine}}
trainer: {{epochs: 3, batch_size: 4, progress: false}}
seed: 3
output_dir: {out}
"""


def run(tmp_path: Path, name: str, overrides=(), recipe=RECIPE) -> tuple[dict, Path]:
    out = tmp_path / name
    path = write_recipe(tmp_path / f"{name}.yaml", recipe.format(out=out))
    loaded = load_recipe(path, list(overrides))
    return Trainer(loaded, log=lambda m: None).run(), out


def weights(run_dir: Path, folder: str = "best") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / folder / "model.safetensors"))


def metric_lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def start_run_past_first_checkpoint(recipe: Path, out: Path, env: dict, delay: float) -> subprocess.Popen:
    """Start ``mercore run`` in a subprocess; return once its first checkpoint exists plus ``delay`` seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "mercore", "run", str(recipe)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "checkpoints" / "LATEST").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)  # into the next epoch
    return proc


def test_run_directory_layout(tmp_path):
    results, out = run(tmp_path, "a")
    for name in ("recipe.yaml", "metrics.jsonl", "results.json", "predictions_test.jsonl", "checkpoints/LATEST",
                 "checkpoints/best/model.safetensors", "checkpoints/best/meta.json"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["test"]) >= {"accuracy", "weighted_f1", "macro_f1", "per_class_f1", "confusion_matrix"}
    assert saved["test"]["per_class_f1"].keys() == {"c0", "c1", "c2"}
    assert len(metric_lines(out)) == 3 and saved == results
    assert "resume" not in (out / "recipe.yaml").read_text()


def test_same_seed_same_result(tmp_path):
    a, out_a = run(tmp_path, "a")
    b, out_b = run(tmp_path, "b")
    assert a["test"] == b["test"]
    assert all(torch.equal(weights(out_a)[k], weights(out_b)[k]) for k in weights(out_a))


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    full, out_full = run(tmp_path, "full")
    steps = {"n": 0}
    original = Trainer._train_step

    def stop_after_six(self, *args, **kwargs):  # Ctrl-C in the middle of epoch 2 (4 steps per epoch)
        result = original(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 6:
            self._stop_requested = True
        return result

    monkeypatch.setattr(Trainer, "_train_step", stop_after_six)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut")
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert (tmp_path / "cut" / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001-step-000002"
    resumed, out_cut = run(tmp_path, "cut", ["resume=true"])
    for folder in ("best", (out_full / "checkpoints/LATEST").read_text().strip()):
        wa, wb = weights(out_full, folder), weights(out_cut, folder)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), folder
    assert metric_lines(out_full) == metric_lines(out_cut)
    for r in (full, resumed):
        r.pop("train_seconds"), r.pop("recipe")
    assert full == resumed


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, subprocess_env):
    recipe = RECIPE.replace('dropout: 0.2}', 'dropout: 0.2, step_delay: 0.05}').replace("epochs: 3", "epochs: 4")
    full, out_full = run(tmp_path, "full", recipe=recipe)
    out = tmp_path / "killed"
    path = write_recipe(tmp_path / "killed.yaml", recipe.format(out=out))
    proc = start_run_past_first_checkpoint(path, out, subprocess_env, delay=0.12)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists(), "the run finished before it was killed; the test proves nothing"
    done = subprocess.run([sys.executable, "-m", "mercore", "run", str(path), "resume=true"], env=subprocess_env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wa, wb = weights(out_full), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metric_lines(out_full) == metric_lines(out)


def test_existing_run_is_not_overwritten(tmp_path):
    run(tmp_path, "a")
    with pytest.raises(ConfigError, match="already holds a run.*resume=true"):
        run(tmp_path, "a")


def test_resume_with_a_different_recipe_is_refused(tmp_path):
    run(tmp_path, "a")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        run(tmp_path, "a", ["resume=true", "optimizer.lr=0.5"])


def test_nan_loss_stops_naming_step_and_terms_and_keeps_checkpoint(tmp_path):
    recipe = RECIPE.replace("num_dialogues: 16}", "num_dialogues: 16, nan_in: train_5}")
    with pytest.raises(TrainingError) as e:
        run(tmp_path, "nan", recipe=recipe)
    msg = str(e.value)
    assert "non-finite loss at epoch 1, step" in msg and "task=nan" in msg and "train_5" in msg


def test_nan_after_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    original = Trainer._train_step
    calls = {"n": 0}

    def poison(self, setup, batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            batch.features["text"][:] = float("nan")
        return original(self, setup, batch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", poison)
    with pytest.raises(TrainingError, match="last good checkpoint is kept: .*epoch-0001"):
        run(tmp_path, "nan2")
    from mercore.checkpoint import verify_checkpoint

    verify_checkpoint(tmp_path / "nan2" / "checkpoints" / "epoch-0001")


def test_corrupted_checkpoint_is_named_and_previous_good_one_offered(tmp_path):
    _, out = run(tmp_path, "a")
    latest = out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
    blob = latest / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        run(tmp_path, "a", ["resume=true"])
    assert str(blob) in str(e.value) and "sha256" in str(e.value) and "epoch-0002" in str(e.value)
    blob.write_bytes(bytes(data[:100]))
    with pytest.raises(CheckpointError, match="truncated"):
        run(tmp_path, "a", ["resume=true"])


def test_interrupted_write_leaves_previous_checkpoint_usable(tmp_path):
    _, out = run(tmp_path, "a")
    ck = out / "checkpoints"
    partial = ck / ".epoch-0004.tmp-99999"  # what a kill during a write leaves behind
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    from mercore.checkpoint import latest_folder, prune, verify_checkpoint

    verify_checkpoint(latest_folder(ck))
    prune(ck, keep=2)
    assert not partial.exists()


def test_mercore_load_rebuilds_the_model(tmp_path):
    results, out = run(tmp_path, "a")
    loaded = mercore.load(out)
    from mercore.data.types import iterate_batches
    from mercore.metrics import classification_report

    corpus = loaded.recipe.data.build().load()
    golds, preds = [], []
    with torch.no_grad():
        for batch in iterate_batches(corpus.split("test"), ["text"], 8):
            pred = loaded.model(batch).logits.argmax(-1)
            golds.append(batch.labels[batch.mask]), preds.append(pred[batch.mask])
    report = classification_report(torch.cat(golds), torch.cat(preds), loaded.label_names)
    assert report["weighted_f1"] == pytest.approx(results["test"]["weighted_f1"])


def test_eval_cli(tmp_path, subprocess_env):
    results, out = run(tmp_path, "a")
    shown = subprocess.run([sys.executable, "-m", "mercore", "eval", str(out), "--json"], env=subprocess_env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["weighted_f1"] == pytest.approx(results["test"]["weighted_f1"])


def test_load_names_a_missing_plugin(tmp_path):
    _, out = run(tmp_path, "a")
    text = (out / "recipe.yaml").read_text().replace("type: adamw", "type: fancy_optimizer_from_elsewhere")
    (out / "recipe.yaml").write_text(text)
    with pytest.raises(mercore.errors.RegistryError, match="fancy_optimizer_from_elsewhere.*Install the plugin"):
        mercore.load(out)


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_exactly(tmp_path, subprocess_env):
    recipe = RECIPE.replace('dropout: 0.2}', 'dropout: 0.2, step_delay: 0.05}').replace("epochs: 3", "epochs: 4")
    full, out_full = run(tmp_path, "full", recipe=recipe)
    out = tmp_path / "ctrlc"
    path = write_recipe(tmp_path / "ctrlc.yaml", recipe.format(out=out))
    proc = start_run_past_first_checkpoint(path, out, subprocess_env, delay=0.08)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "saved a checkpoint" in stdout and "resume=true" in stdout
    assert "-step-" in (out / "checkpoints" / "LATEST").read_text(), "Ctrl-C mid-epoch saves a mid-epoch checkpoint"
    done = subprocess.run([sys.executable, "-m", "mercore", "run", str(path), "resume=true"], env=subprocess_env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wa, wb = weights(out_full), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

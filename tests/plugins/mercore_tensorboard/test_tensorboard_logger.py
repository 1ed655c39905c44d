"""The ``tensorboard`` logger plugin: the scalars equal metrics.jsonl's numbers, epoch by epoch, also after an
interrupted run is resumed. Needs the optional extra (``pip install 'mercore[tensorboard]'``); without it the
tests that read event files skip, and building the logger is a clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mercore.errors import ConfigError
from mercore.plugins import get_registry
from mercore.config import validate_node
from mercore.recipe import load_recipe
from mercore.train import Trainer
from mercore_tensorboard.logger import scalars

from support import write_recipe

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 12}}
model: {{type: "toy_components:ToyModel", dropout: 0.2}}
optimizer: {{type: adamw, lr: 1e-2}}
trainer: {{epochs: 3, batch_size: 4, progress: false}}
logger: [jsonl, tensorboard]
seed: 3
output_dir: {out}
"""

NO_TENSORBOARD = "tensorboard is not installed (the optional extra: pip install 'mercore[tensorboard]')"


def event_scalars(log_dir: Path) -> dict[int, dict[str, float]]:
    """step -> {tag: value} as TensorBoard reads the folder (purged events dropped, as its UI does)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator", reason=NO_TENSORBOARD)
    acc = accumulator.EventAccumulator(str(log_dir), size_guidance={accumulator.SCALARS: 0})
    acc.Reload()
    out: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            assert tag not in out.setdefault(event.step, {}), f"step {event.step} of {tag} is there twice"
            out[event.step][tag] = event.value
    return out


def jsonl_scalars(run_dir: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: scalars(r) for r in records}


def run(tmp_path: Path, name: str, overrides=()) -> Path:
    out = tmp_path / name
    Trainer(load_recipe(write_recipe(tmp_path / f"{name}.yaml", RECIPE.format(out=out)), list(overrides)),
            log=lambda m: None).run()
    return out


def test_scalars_flatten_the_record():
    record = {"epoch": 2, "train_loss": 0.5, "selected": True, "dev": {"weighted_f1": 0.25, "per_class_f1": {"a": 1.0}},
              "stats": {"text.moe.experts_per_token": 3.5}, "note": "text"}
    assert scalars(record) == {"train_loss": 0.5, "selected": 1.0, "dev/weighted_f1": 0.25, "dev/per_class_f1/a": 1.0,
                               "stats/text.moe.experts_per_token": 3.5}


def test_event_scalars_equal_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    out = run(tmp_path, "a")
    tb, js = event_scalars(out / "tensorboard"), jsonl_scalars(out)
    assert sorted(tb) == [1, 2, 3] and set(tb[1]) >= {"train_loss", "lr", "dev/weighted_f1", "test/accuracy",
                                                      "dev/per_class_f1/c0", "selected", "seconds"}
    for step in js:
        assert tb[step] == pytest.approx(js[step], rel=1e-6)  # TensorBoard stores float32


def test_a_resumed_run_replaces_the_redone_epochs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    original = Trainer._end_epoch

    def stop_after_epoch_2(self, setup, state, t):
        done = original(self, setup, state, t)
        if state.epoch == 2:
            raise KeyboardInterrupt  # after epoch 2's record and checkpoint
        return done

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut")
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    out = tmp_path / "cut"
    from torch.utils.tensorboard import SummaryWriter

    # A kill between epoch 3's record and its checkpoint leaves a record of an epoch the resumed run redoes.
    with SummaryWriter(str(out / "tensorboard")) as stale:
        stale.add_scalar("train_loss", 123.0, global_step=3)
    run(tmp_path, "cut", ["resume=true"])
    tb, js = event_scalars(out / "tensorboard"), jsonl_scalars(out)
    assert sorted(tb) == [1, 2, 3]
    for step in js:
        assert tb[step] == pytest.approx(js[step], rel=1e-6)
    assert tb[3]["train_loss"] != 123.0


def test_without_tensorboard_the_logger_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    node, problems = validate_node("logger", {"type": "tensorboard"}, get_registry())
    assert not problems
    with pytest.raises(ConfigError, match=r"the tensorboard package is not installed; pip install 'mercore\[tensorboard\]'"):
        node.build(run_dir=tmp_path, log=print)


def test_dir_must_stay_inside_the_run(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    node, _ = validate_node("logger", {"type": "tensorboard", "dir": "../elsewhere"}, get_registry())
    with pytest.raises(ConfigError, match="dir must be a folder inside the run directory"):
        node.build(run_dir=tmp_path, log=print)

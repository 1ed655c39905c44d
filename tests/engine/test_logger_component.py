"""The ``logger`` kind: ``jsonl`` by default (metrics.jsonl as before), a list of loggers, the records each gets,
resume semantics, and resuming a run whose recipe.yaml predates options added since."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from mercore.errors import ConfigError
from mercore.recipe import load_recipe
from mercore.train import Trainer

from support import write_recipe

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 12}}
model: {{type: "toy_components:ToyModel", dropout: 0.2}}
optimizer: {{type: adamw, lr: 1e-2}}
trainer: {{epochs: 3, batch_size: 4, progress: false}}
seed: 3
output_dir: {out}
"""

#: Every record a RecordingLogger received, per run directory: (event, payload).
SEEN: dict[str, list[tuple[str, object]]] = {}


class RecordingLogger:
    """A third-party logger: keeps what the trainer hands it (by run directory)."""

    @attrs.define
    class Config:
        tag: str = "r"

    def __init__(self, config: Config, *, run_dir: Path, log, **_: object):
        self.events = SEEN.setdefault(f"{run_dir}:{config.tag}", [])

    def start(self, epoch: int) -> None:
        self.events.append(("start", epoch))

    def log_epoch(self, record: dict) -> None:
        self.events.append(("record", json.loads(json.dumps(record))))

    def close(self) -> None:
        self.events.append(("close", None))


def run(tmp_path: Path, name: str, overrides=()) -> tuple[dict, Path]:
    out = tmp_path / name
    path = write_recipe(tmp_path / f"{name}.yaml", RECIPE.format(out=out))
    return Trainer(load_recipe(path, list(overrides)), log=lambda m: None).run(), out


RECORDER = f"{{type: '{__name__}:RecordingLogger'}}"


def test_default_is_jsonl_and_a_list_gives_every_logger_the_same_records(tmp_path):
    assert load_recipe(write_recipe(tmp_path / "r.yaml", RECIPE.format(out=tmp_path / "x"))).recipe.logger.name == "jsonl"
    results, out = run(tmp_path, "both", [f"logger=[jsonl, {RECORDER}]"])
    events = SEEN[f"{out}:r"]
    assert events[0] == ("start", 0) and events[-1] == ("close", None)
    records = [payload for event, payload in events if event == "record"]
    # metrics.jsonl holds json.dumps(record) per line, the very records every other logger gets.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert lines == [json.dumps(r) for r in records] and [r["epoch"] for r in records] == [1, 2, 3]
    assert set(records[0]) >= {"epoch", "train_loss", "lr", "dev", "test", "selected", "seconds"}
    assert results["reference_best_test_epoch"]["epoch"] == max(records, key=lambda r: r["test"]["weighted_f1"])["epoch"]
    assert (out / "recipe.yaml").read_text().count("type: jsonl") == 1


def test_without_a_logger_that_reads_back_there_is_no_reference_best_test_epoch(tmp_path):
    results, out = run(tmp_path, "only", [f"logger={RECORDER}"])
    assert not (out / "metrics.jsonl").exists()
    assert results["reference_best_test_epoch"] is None and results["best_epoch"] >= 1
    assert sum(event == "record" for event, _ in SEEN[f"{out}:r"]) == 3


def test_an_interrupted_run_restarts_its_loggers_at_the_checkpoint_epoch(tmp_path, monkeypatch):
    original = Trainer._end_epoch

    def stop_after_epoch_2(self, setup, state, t):
        done = original(self, setup, state, t)
        if state.epoch == 2:
            raise KeyboardInterrupt  # after epoch 2's record and checkpoint
        return done

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", [f"logger=[jsonl, {RECORDER}]"])
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    out = tmp_path / "cut"
    assert SEEN[f"{out}:r"][-1] == ("close", None)  # closed on the way out, too
    run(tmp_path, "cut", [f"logger=[jsonl, {RECORDER}]", "resume=true"])
    starts = [payload for event, payload in SEEN[f"{out}:r"] if event == "start"]
    assert starts == [0, 2]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_bad_logger_nodes_are_named(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", RECIPE.format(out=tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"logger.*an empty list: give at least one logger component"):
        load_recipe(path, ["logger=[]"])
    with pytest.raises(ConfigError, match=r"logger\[1\].type.*'nope'"):
        load_recipe(path, ["logger=[jsonl, nope]"])


def test_resume_of_a_run_saved_before_new_options_existed(tmp_path, monkeypatch):
    """A recipe.yaml written before an option existed (here: without logger, and a model without a key it has
    today) resumes: the missing keys take today's defaults instead of counting as a change."""
    original = Trainer._end_epoch

    def stop_after_epoch_1(self, setup, state, t):
        original(self, setup, state, t)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "old")
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    saved = tmp_path / "old" / "recipe.yaml"
    text = saved.read_text()
    assert "logger:" in text and "dropout: 0.2" in text
    lines = text.splitlines()
    start = lines.index("logger:") if "logger:" in lines else next(i for i, l in enumerate(lines) if l.startswith("logger:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    saved.write_text("\n".join(lines[:start] + lines[end:]) + "\n")
    assert "logger" not in saved.read_text()
    results, out = run(tmp_path, "old", ["resume=true"])
    assert results["epochs_run"] == 3
    # A real change is still refused.
    with pytest.raises(ConfigError, match="optimizer.lr"):
        run(tmp_path, "old", ["resume=true", "optimizer.lr=0.5", "trainer.epochs=3"])

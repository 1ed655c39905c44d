"""benchmarks/text_protocol.py's ``--grid``: widening a swept key, and refusing a key no step sweeps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT, benchmark_module


def test_grid_replaces_only_the_named_key() -> None:
    protocol = benchmark_module("text_protocol")
    values = protocol.parse_grid_values(["optimizer.lr=1e-3,2e-3,4e-3"])
    assert values == {"optimizer.lr": ["1e-3", "2e-3", "4e-3"]}
    shared = next(grid for step, _, grid in protocol.STEPS if step == "shared")
    assert protocol.widened_grid(shared, values) == [
        ("optimizer.lr", ["1e-3", "2e-3", "4e-3"]), ("model.encoder.dropout", ["0.3", "0.5"]),
        ("optimizer.weight_decay", ["0.1"])]
    loss = next(grid for step, _, grid in protocol.STEPS if step == "loss")
    assert protocol.widened_grid(loss, values) == loss


@pytest.mark.parametrize("arg, message", [
    ("optimizer.lrr=1e-3", "no step sweeps 'optimizer.lrr' (the swept keys: "),
    ("optimizer.lr", "expected KEY=V1,V2,..."),
])
def test_grid_refuses_a_typo_before_training(arg: str, message: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "benchmarks/text_protocol.py", "iemocap", "--out", str(tmp_path),
                           "--grid", arg], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and message in done.stderr
    assert not (tmp_path / "choices.json").exists()

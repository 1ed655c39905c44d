"""The README's demo gives exactly the results recorded before the engine refactors (stages, Trainer split).

``demo_results_before.json`` is ``results.json`` of ``mercore run recipes/demo_synthetic.yaml`` from the code
before issue 8's refactor; on CPU every dev and test figure must be equal, not close.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mercore.cli import main

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent.parent / "recipes" / "demo_synthetic.yaml"


@pytest.mark.slow
def test_demo_results_equal_the_recording_from_before_the_refactor(tmp_path):
    assert main(["run", str(DEMO), f"output_dir={tmp_path / 'demo'}", "trainer.progress=false"]) == 0
    now = json.loads((tmp_path / "demo" / "results.json").read_text())
    before = json.loads((HERE / "demo_results_before.json").read_text())
    assert (now["best_epoch"], now["epochs_run"]) == (before["best_epoch"], before["epochs_run"])
    assert now["dev"] == before["dev"]
    assert now["test"] == before["test"]

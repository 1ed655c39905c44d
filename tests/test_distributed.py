"""Two CPU processes under torchrun (gloo) train to the same weights as one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_recipe

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 16}}
model: {{type: "toy_components:ToyModel", dropout: 0.0}}
optimizer: {{type: adamw, lr: 1e-2}}
trainer: {{epochs: 3, batch_size: 4, progress: false}}
seed: 3
output_dir: {out}
"""

#: Stated tolerance: gradients are summed in a different order across two processes, so weights may differ
#: by float32 rounding (measured: about 3e-8), far below anything that could change a prediction.
WEIGHT_ATOL = 1e-5


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_process_ddp_matches_single_process(tmp_path, subprocess_env):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "mercore", "run", str(write_recipe(tmp_path / "1.yaml", RECIPE.format(out=one)))],
                            env=subprocess_env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "mercore", "run", str(write_recipe(tmp_path / "2.yaml", RECIPE.format(out=two)))],
                         env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("run directory:") == 1, "only rank 0 reports"
    wa = load_file(str(one / "checkpoints/best/model.safetensors"))
    wb = load_file(str(two / "checkpoints/best/model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=WEIGHT_ATOL, rtol=0)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert ra["test"]["confusion_matrix"] == rb["test"]["confusion_matrix"]
    la, lb = ([json.loads(line)["train_loss"] for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert la == pytest.approx(lb, abs=1e-5)

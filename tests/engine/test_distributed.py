"""Two CPU processes under torchrun (gloo) train to the same weights as one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from support import write_recipe

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


# A torchrun worker whose rank 1 is SIGKILLed right after the checkpoint of epoch 1 is complete on disk.
KILL_RANK_1_AFTER_EPOCH_1 = """\
import os, signal, sys
from mercore.cli import main
from mercore.train import Trainer

original = Trainer._save

def save_then_die(self, setup, state, reason):
    original(self, setup, state, reason)
    if self.rank == 1 and state.epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer._save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_process_run_killed_on_one_rank_resumes_bit_identical(tmp_path, subprocess_env):
    # Dropout, and global batches of 3 dialogues (2 on rank 0, 1 on rank 1): each rank draws a different number
    # of random numbers, so the ranks' random states differ, and an exact resume must restore each rank's own.
    recipe = (RECIPE.replace("dropout: 0.0", "dropout: 0.3").replace("batch_size: 4", "batch_size: 3")
              .replace("num_dialogues: 16", "num_dialogues: 15"))
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(_torchrun("-m", "mercore", "run", str(write_recipe(tmp_path / "f.yaml", recipe.format(out=full)))),
                          env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    cut_recipe = str(write_recipe(tmp_path / "c.yaml", recipe.format(out=cut)))
    worker = write_recipe(tmp_path / "worker.py", KILL_RANK_1_AFTER_EPOCH_1)
    killed = subprocess.run(_torchrun(str(worker), "run", cut_recipe), env=subprocess_env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode != 0 and not (cut / "results.json").exists()
    assert (cut / "checkpoints" / "LATEST").read_text().strip() == "epoch-0001"
    saved = torch.load(cut / "checkpoints" / "epoch-0001" / "trainer_state.pt", weights_only=True)
    assert len(saved["rng_ranks"]) == 2
    assert not torch.equal(saved["rng_ranks"][0]["torch"], saved["rng_ranks"][1]["torch"])

    resumed = subprocess.run(_torchrun("-m", "mercore", "run", cut_recipe, "resume=true"), env=subprocess_env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "epoch-0001" in resumed.stdout
    for folder in ("best", "epoch-0003"):
        wa = load_file(str(full / "checkpoints" / folder / "model.safetensors"))
        wb = load_file(str(cut / "checkpoints" / folder / "model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), folder

    def metrics(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metrics(full) == metrics(cut)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    assert ra["dev"] == rb["dev"] and ra["test"] == rb["test"]

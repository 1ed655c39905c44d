"""Where and how a run computes: ``trainer.device: auto``, ``trainer.precision``, host reads per step, the
thread policy, ``mercore eval --device``. Everything runs on the CPU; the CUDA checks skip without a GPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch

from mercore import threads
from mercore.data.types import iterate_batches
from mercore.errors import ConfigError
from mercore.recipe import load_recipe
from mercore.train import LoopState, Trainer, apply_thread_policy, autocast, resolve_device
from support import write_recipe

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 16}}
model: {{type: "toy_components:ToyModel", dropout: 0.2, tensor_stats: {tensor_stats}}}
optimizer: {{type: adamw, lr: 1e-2}}
scheduler: {{type: warmup_cosine}}
trainer: {{epochs: 2, batch_size: 4, progress: false, threads: 1}}
seed: 3
output_dir: {out}
"""


def _loaded(tmp_path: Path, name: str, overrides=(), tensor_stats: bool = False):
    out = tmp_path / name
    path = write_recipe(tmp_path / f"{name}.yaml", RECIPE.format(out=out, tensor_stats=str(tensor_stats).lower()))
    return load_recipe(path, list(overrides)), out


def _run(tmp_path: Path, name: str, overrides=(), tensor_stats: bool = False) -> tuple[dict, Path]:
    loaded, out = _loaded(tmp_path, name, overrides, tensor_stats)
    return Trainer(loaded, log=lambda m: None).run(), out


def _metric_lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


# ------------------------------------------------------------------------------------------- host reads per step

_READS = ("item", "tolist", "numpy", "__int__", "__bool__", "__float__", "__index__")


@contextlib.contextmanager
def counting_host_reads(reads: list[str]) -> Iterator[None]:
    """Record every Python-level read of a tensor's value (``.item()``, ``.tolist()``, ``float()``, ``bool()``
    ...) as ``"name at file:line"`` of the nearest caller outside torch. On CUDA each is a device sync.

    Reads made inside ``torch/optim`` are left out: torch's CPU optimizers read their step counter, which they
    keep on the host on CUDA too (no device sync)."""

    def counter(name: str, original):
        def read(self, *args, **kwargs):
            stack = traceback.extract_stack()[:-1]
            if not any(f"{os.sep}torch{os.sep}optim{os.sep}" in f.filename for f in stack):
                outside = [f for f in stack if f"{os.sep}torch{os.sep}" not in f.filename]
                where = outside[-1]
                reads.append(f"{name} at {Path(where.filename).name}:{where.lineno}")
            return original(self, *args, **kwargs)

        return read

    with contextlib.ExitStack() as stack:
        for name in _READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, counter(name, getattr(torch.Tensor, name))))
        yield


def test_a_training_step_reads_one_value_back_and_stats_stay_on_the_device(tmp_path):
    """With a model whose stats are tensors (no host read of its own), a step reads the device once: the logged
    loss with the gradient norm (grad_clip is on by default); the stat sums are read only at a flush."""
    loaded, _ = _loaded(tmp_path, "count", tensor_stats=True)
    assert loaded.recipe.trainer.grad_clip is not None
    trainer = Trainer(loaded, log=lambda m: None)
    setup = trainer._set_up()
    state = LoopState()
    c = setup.components
    c.model.train()
    batches = list(iterate_batches(setup.train_set, c.modalities, 4))
    per_step = []
    for step, batch in enumerate(batches[:3]):
        reads: list[str] = []
        with counting_host_reads(reads):
            trainer._train_step(setup, batch.to(setup.device), step, state)
        per_step.append(reads)
    assert all(len(r) == 1 and r[0].startswith("tolist at train.py:") for r in per_step), per_step
    assert state.stat_sums["toy.mean_logit"][1] == 3  # counted on the host, summed on the device

    reads = []
    with counting_host_reads(reads):
        trainer._stat_sums.flush(state)
    assert len(reads) == 1 and reads[0].startswith("tolist at train.py:")
    assert state.stat_sums["toy.mean_logit"][0] != 0.0


def test_stats_summed_on_the_device_log_exactly_what_float_stats_log(tmp_path):
    """The same run with the stat as a tensor (summed on the device) and as a float (read every step) writes the
    same metrics.jsonl, stats included, bit for bit."""
    _, as_float = _run(tmp_path, "float")
    _, as_tensor = _run(tmp_path, "tensor", tensor_stats=True)
    a, b = _metric_lines(as_float), _metric_lines(as_tensor)
    assert [r["stats"] for r in a] == [r["stats"] for r in b] and a == b


def test_a_mid_epoch_checkpoint_flushes_the_device_stat_sums(tmp_path):
    """A checkpoint written mid-epoch holds the stat sums of the steps before it (read from the device)."""
    loaded, _ = _loaded(tmp_path, "flush", tensor_stats=True)
    trainer = Trainer(loaded, log=lambda m: None)
    setup = trainer._set_up()
    state = LoopState()
    batch = next(iterate_batches(setup.train_set, setup.components.modalities, 4))
    trainer._train_step(setup, batch, 0, state)
    assert isinstance(state.stat_sums["toy.mean_logit"][0], float) and state.stat_sums["toy.mean_logit"][0] == 0.0
    trainer._save(setup, state, reason="interrupted")
    total, count = state.stat_sums["toy.mean_logit"]
    assert count == 1 and total != 0.0 and isinstance(total, float)


# ------------------------------------------------------------------------------------------- device and precision

def test_auto_is_the_default_and_the_resolved_device_is_recorded(tmp_path):
    loaded, _ = _loaded(tmp_path, "auto")
    assert loaded.recipe.trainer.device == "auto" and loaded.recipe.trainer.precision == "fp32"
    results, _ = _run(tmp_path, "auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert results["device"].split(":")[0] == expected
    assert (results["precision"], results["threads"]) == ("fp32", 1)


def test_fp32_is_no_autocast_at_all():
    assert isinstance(autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with pytest.raises(ConfigError, match="trainer.precision: 'fp8' is not a precision; valid choices: fp32, bf16"):
        autocast(torch.device("cpu"), "fp8")


def test_bf16_trains_with_finite_losses_on_the_cpu(tmp_path):
    """bf16 autocast runs forward and loss in bfloat16 (so the losses differ from fp32's), trains, and records it."""
    fp32, fp32_dir = _run(tmp_path, "fp32")
    bf16, bf16_dir = _run(tmp_path, "bf16", ["trainer.precision=bf16"])
    losses = [r["train_loss"] for r in _metric_lines(bf16_dir)]
    assert all(torch.isfinite(torch.tensor(losses))) and len(losses) == 2
    assert losses != [r["train_loss"] for r in _metric_lines(fp32_dir)]
    assert bf16["precision"] == "bf16" and 0.0 <= bf16["test"]["weighted_f1"] <= 1.0


def test_bf16_trains_a_summer_model_with_bigru_experts_on_the_cpu(tmp_path):
    """The demo's SUMMER model (transformer encoders, SDMoE with bi-GRU experts, HCMF) under bf16 autocast:
    one step on the CPU with a finite loss, and the weights change."""
    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo_synthetic.yaml"
    loaded = load_recipe(demo, [f"output_dir={tmp_path / 'summer'}", "trainer.precision=bf16", "trainer.threads=1",
                                "model.hidden=16", "trainer.progress=false"])
    trainer = Trainer(loaded, log=lambda m: None)
    setup = trainer._set_up()
    before = {n: p.detach().clone() for n, p in setup.components.model.named_parameters()}
    batch = next(iterate_batches(setup.train_set, setup.components.modalities, 4))
    setup.components.model.train()
    loss = trainer._train_step(setup, batch, 0, LoopState())
    assert torch.isfinite(torch.tensor(loss))
    changed = [n for n, p in setup.components.model.named_parameters() if not torch.equal(before[n], p)]
    assert any(".experts.grus." in n for n in changed), changed


@NO_CUDA
def test_cuda_without_cuda_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match=r"trainer.device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"--device: 'gpu' is not a device; valid choices: cpu, cuda, cuda:N, auto"):
        resolve_device("gpu", where="--device")
    assert resolve_device("auto") == torch.device("cpu")


def test_a_run_saved_before_precision_existed_resumes(tmp_path):
    """recipe.yaml of a run saved before trainer.precision existed lacks the key: it meant fp32, so resume goes on."""
    _, out = _run(tmp_path, "old", ["trainer.epochs=1"])
    saved = out / "recipe.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(keepends=True) if "precision:" not in line))
    loaded, _ = _loaded(tmp_path, "old", ["trainer.epochs=2", "resume=true"])
    with pytest.raises(ConfigError, match=r"trainer.epochs: 1 -> 2"):  # only epochs differs, not precision
        Trainer(loaded, log=lambda m: None).run()
    loaded, _ = _loaded(tmp_path, "old", ["trainer.epochs=1", "resume=true", "trainer.precision=bf16"])
    with pytest.raises(ConfigError, match=r"trainer.precision: 'fp32' -> 'bf16'"):
        Trainer(loaded, log=lambda m: None).run()


def test_eval_runs_on_the_device_it_is_given(tmp_path, subprocess_env):
    results, out = _run(tmp_path, "eval")
    cmd = [sys.executable, "-m", "mercore", "eval", str(out), "--json"]
    shown = subprocess.run([*cmd, "--device", "cpu"], env=subprocess_env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["weighted_f1"] == pytest.approx(results["test"]["weighted_f1"])
    bad = subprocess.run([*cmd, "--device", "gpu"], env=subprocess_env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--device: 'gpu' is not a device" in bad.stderr
    if not torch.cuda.is_available():
        missing = subprocess.run([*cmd, "--device", "cuda"], env=subprocess_env, capture_output=True, text=True)
        assert missing.returncode == 2 and "--device: 'cuda' requested but CUDA is not available" in missing.stderr


@CUDA
def test_cuda_run_in_bf16_with_pinned_batches(tmp_path):
    """On a GPU: pinned collation, and a bf16 run on CUDA that records where it ran."""
    batch = next(iterate_batches(load_recipe_corpus_dialogues(), ["text"], 4, pin_memory=True))
    assert batch.features["text"].is_pinned() and batch.labels.is_pinned()
    results, _ = _run(tmp_path, "cuda", ["trainer.device=cuda", "trainer.precision=bf16"])
    assert results["device"].startswith("cuda") and results["precision"] == "bf16"


def load_recipe_corpus_dialogues():
    from toy_components import ToyDataset

    return ToyDataset(ToyDataset.Config()).load().split("train")


# ------------------------------------------------------------------------------------------- the thread policy

@pytest.mark.parametrize("cores,processes,expected", [(1, 1, 1), (2, 1, 1), (4, 1, 3), (16, 1, 15), (2, 2, 1),
                                                      (16, 2, 8), (3, 4, 1)])
def test_default_threads_leave_a_core_and_share_the_node_among_torchrun_processes(cores, processes, expected):
    assert threads.default_threads(cores=cores, local_processes=processes) == expected


def test_default_threads_read_the_affinity_and_local_world_size(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.available_cores() == 4 and threads.default_threads() == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.default_threads() == 3


def test_the_wait_policy_never_overrides_the_users_setting():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.set_wait_policy_env(env) == {"KMP_BLOCKTIME": "0"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    assert threads.set_wait_policy_env(env) == {}


def test_apply_thread_policy(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert apply_thread_policy(1) == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "default_threads", lambda: 2)
        assert apply_thread_policy(None) == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's: torch's own choice stays
        torch.set_num_threads(1)
        assert apply_thread_policy(None) == 1
    finally:
        torch.set_num_threads(before)


def test_the_cli_sets_the_passive_wait_policy_before_torch_loads(subprocess_env):
    """``mercore`` started fresh: OMP_WAIT_POLICY=PASSIVE is in the environment when torch initialises OpenMP
    (a user's own value is kept)."""
    code = ("import os, sys; import mercore.cli as cli; assert 'torch' not in sys.modules; "
            "cli.main(['list', 'loss']); print(os.environ['OMP_WAIT_POLICY'], os.environ['KMP_BLOCKTIME'])")
    env = {k: v for k, v in subprocess_env.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == "PASSIVE 0"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert shown.stdout.splitlines()[-1] == "ACTIVE 0"

"""Run-time faults (issue 12): two runs on one folder, stop signals, full disk, hostile checkpoint files.

Every fault is real where it can be (subprocesses, signals, SIGKILL); a full disk and a read-only folder are
injected at the one function that writes bytes (no tmpfs here, and tests run as root, who ignores modes).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mercore import checkpoint as ckpt
from mercore import metrics_log
from mercore.cli import main as cli_main
from mercore.errors import CheckpointError, OutputDirError, StorageError
from mercore.recipe import load_recipe
from mercore.run_lock import LOCK_FILE, RunLock
from mercore.train import Trainer

RECIPE = """\
data: {{type: "toy_components:ToyDataset", num_dialogues: 16}}
model: {{type: "toy_components:ToyModel", dropout: 0.2{extra}}}
optimizer: {{type: adamw, lr: 1e-2}}
scheduler: {{type: warmup_cosine}}
trainer: {{epochs: {epochs}, batch_size: 4, progress: false}}
seed: 3
output_dir: {out}
"""


def recipe_file(tmp_path: Path, name: str, *, epochs: int = 3, delay: float = 0.0, out: Path | None = None) -> Path:
    extra = f", step_delay: {delay}" if delay else ""
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(out=out or tmp_path / name, epochs=epochs, extra=extra))
    return path


def train(path: Path, overrides=(), logs: list | None = None) -> dict:
    loaded = load_recipe(path, list(overrides))
    return Trainer(loaded, log=(logs.append if logs is not None else lambda m: None)).run()


def weights(run_dir: Path, folder: str = "best") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / folder / "model.safetensors"))


def same_weights(a: Path, b: Path, folder: str = "best") -> bool:
    wa, wb = weights(a, folder), weights(b, folder)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metric_lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def cli(args: list[str], env: dict, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mercore", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def start(path: Path, env: dict, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mercore", "run", str(path), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run, the result every fault below must resume to."""
    tmp = tmp_path_factory.mktemp("reference")
    train(recipe_file(tmp, "full", epochs=4))
    return tmp / "full"


# -- item 1: two runs on one output_dir --------------------------------------------------------------------

def test_second_run_on_a_busy_folder_is_refused_naming_the_holder(tmp_path, subprocess_env, reference):
    out = tmp_path / "shared"
    first = start(recipe_file(tmp_path, "a", epochs=4, delay=0.05, out=out), subprocess_env)
    wait_for(out / LOCK_FILE, first)
    other = recipe_file(tmp_path, "b", epochs=4, out=out)  # the case: a different seed, same folder
    t0 = time.time()
    second = cli(["run", str(other), "seed=1"], subprocess_env)
    assert second.returncode == 2, second.stderr
    assert time.time() - t0 < 30
    assert f"is in use by another run (pid {first.pid} on host" in second.stderr and str(out / LOCK_FILE) in second.stderr
    assert "Traceback" not in second.stderr
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert [r["epoch"] for r in metric_lines(out)] == [1, 2, 3, 4]
    assert json.loads((out / "results.json").read_text())["seed"] == 3
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)
    assert not (out / LOCK_FILE).exists(), "the lock file is removed when the run ends"


def test_lock_of_a_sigkilled_run_is_taken_over_with_a_note(tmp_path, subprocess_env, reference):
    out = tmp_path / "killed"
    path = recipe_file(tmp_path, "killed", epochs=4, delay=0.05)
    proc = start(path, subprocess_env)
    wait_for(out / "checkpoints" / ckpt.LATEST, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    holder = json.loads((out / LOCK_FILE).read_text())
    assert holder["pid"] == proc.pid
    done = cli(["run", str(path), "resume=true"], subprocess_env)
    assert done.returncode == 0, done.stderr
    assert f"took over the stale lock {out / LOCK_FILE} of pid {proc.pid}" in done.stdout
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path / "r") as held:
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {os.getpid()} on host"):
            RunLock(tmp_path / "r").acquire()
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    with RunLock(tmp_path / "r"):  # free again
        pass


# -- item 4: SIGTERM and SIGHUP --------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_the_current_step_exit_128_plus_signum_and_resume_exactly(
        tmp_path, subprocess_env, reference, sig):
    out = tmp_path / "stopped"
    path = recipe_file(tmp_path, "stopped", epochs=4, delay=0.05)
    proc = start(path, subprocess_env)
    wait_for(out / "checkpoints" / ckpt.LATEST, proc)
    time.sleep(0.08)  # into epoch 2
    t0 = time.time()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.time() - t0 < 10, "the stop must come within a step and a checkpoint write"
    assert proc.returncode == 128 + sig, stderr
    assert f"{signal.Signals(sig).name}: finishing this step" in stdout and "saved a checkpoint" in stdout
    assert "-step-" in (out / "checkpoints" / ckpt.LATEST).read_text(), "the current step is saved, not only the epoch"
    assert not (out / "results.json").exists()
    done = cli(["run", str(path), "resume=true"], subprocess_env)
    assert done.returncode == 0, done.stderr
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


# -- item 5: disk full and other OS errors on write -------------------------------------------------------

class FullDisk:
    """Lets ``budget`` bytes reach the disk through ``checkpoint._write_all``, then fails like a full disk."""

    def __init__(self, budget: int, err: int = errno.ENOSPC):
        self.budget, self.err, self.tripped = budget, err, False
        self.original = ckpt._write_all

    def __call__(self, path: Path, data: bytes) -> None:
        if len(data) > self.budget:
            with open(path, "wb") as f:  # the partial file a real full disk leaves
                f.write(data[: self.budget])
            self.budget, self.tripped = 0, True
            raise OSError(self.err, os.strerror(self.err), str(path))
        self.budget -= len(data)
        self.original(path, data)


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("budget", [0, 3000, 9000, 20000])
def test_disk_full_names_path_and_bytes_removes_the_partial_write_and_resumes_exactly(
        tmp_path, monkeypatch, reference, budget):
    path = recipe_file(tmp_path, "full_disk", epochs=4)
    out = tmp_path / "full_disk"
    disk = FullDisk(budget)
    monkeypatch.setattr(ckpt, "_write_all", disk)
    with pytest.raises(StorageError) as e:
        train(path)
    assert disk.tripped
    msg = str(e.value)
    assert "disk full while writing" in msg and str(out) in msg and "No space left on device" in msg
    assert re.search(r"it needs \d+ bytes \([\d.]+ \w+\), \d+ bytes \([\d.]+ \w+\) are free there", msg), msg
    assert "resume=true" in msg
    if (out / "checkpoints").exists():
        assert leftovers(out) == [], "the failed write's temporary folder is removed at once"
    monkeypatch.setattr(ckpt, "_write_all", disk.original)  # space freed: resume with no manual step
    train(path, ["resume=true"])
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


def test_disk_full_on_metrics_append_leaves_no_half_line_and_resumes(tmp_path, monkeypatch, reference):
    path = recipe_file(tmp_path, "metrics_full", epochs=4)
    out = tmp_path / "metrics_full"
    original, calls = metrics_log._write_fd, {"n": 0}

    def fail_third(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:
            os.write(fd, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(fd, data)

    monkeypatch.setattr(metrics_log, "_write_fd", fail_third)
    with pytest.raises(StorageError, match=r"disk full while writing .*metrics\.jsonl"):
        train(path)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.setattr(metrics_log, "_write_fd", original)
    train(path, ["resume=true"])
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


def test_read_only_folder_mid_run_is_a_storage_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "_write_all", FullDisk(5000, errno.EROFS))
    with pytest.raises(StorageError, match=r"cannot write .*checkpoints.*Read-only file system.*resume=true"):
        train(recipe_file(tmp_path, "ro"))
    assert leftovers(tmp_path / "ro") == []


def test_unwritable_output_dir_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    code = cli_main(["run", str(recipe_file(tmp_path, "ro"))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"output_dir {str(out)!r} is not writable: Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; covered by injection above")
def test_read_only_output_dir_for_real(tmp_path, subprocess_env):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        done = cli(["run", str(recipe_file(tmp_path, "ro"))], subprocess_env)
    finally:
        out.chmod(0o755)
    assert done.returncode == 2 and "is not writable" in done.stderr, done.stderr


# -- item 9 rows: empty output_dir, truncated metrics line, another recipe's checkpoint --------------------

def test_empty_output_dir_is_refused_by_validate_and_run(tmp_path, monkeypatch, capsys):
    path = recipe_file(tmp_path, "empty")
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "run"):
        code = cli_main([command, str(path), "output_dir="])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "output_dir is empty: it would write into the current folder" in err
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(OutputDirError, match="output_dir is empty"):
        RunLock("  ")


def interrupt_after(monkeypatch, steps: int) -> None:
    """Ask the trainer to stop after ``steps`` training steps, as a signal would."""
    original, calls = Trainer._train_step, {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps:
            self._stop_requested, self._stop_signum = True, signal.SIGTERM
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", step)


def copy_run(template: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the run ``template`` as ``tmp_path/name``, with its recipe pointing at the copy."""
    out = tmp_path / name
    shutil.copytree(template, out, symlinks=True)
    for f in (out / "recipe.yaml", template.parent / f"{template.name}.yaml"):
        text = f.read_text().replace(str(template), str(out))
        (out / "recipe.yaml" if f.parent == out else tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path / f"{name}.yaml", out


@pytest.fixture(scope="module")
def interrupted_template(tmp_path_factory) -> Path:
    """A 4-epoch run stopped (as by a signal) after 10 steps: epoch 3, step 2."""
    tmp = tmp_path_factory.mktemp("interrupted")
    path = recipe_file(tmp, "cut", epochs=4)
    mp = pytest.MonkeyPatch()
    interrupt_after(mp, 10)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(path)
    finally:
        mp.undo()
    return tmp / "cut"


def interrupted_run(tmp_path: Path, template: Path, name: str) -> tuple[Path, Path]:
    return copy_run(template, tmp_path, name)


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    train(recipe_file(tmp, "done", epochs=1))
    return tmp / "done"


@pytest.fixture
def finished_run(tmp_path, finished_template) -> Path:
    """A copy of a finished 1-epoch run, free to damage."""
    return copy_run(finished_template, tmp_path, "done")[1]


def test_truncated_metrics_line_on_resume_is_dropped_and_resume_is_exact(tmp_path, interrupted_template, reference):
    path, out = interrupted_run(tmp_path, interrupted_template, "trunc")
    with open(out / "metrics.jsonl", "a") as f:  # what a kill in the middle of the epoch-3 line leaves
        f.write('{"epoch": 3, "train_loss": 0.9')
    logs: list[str] = []
    train(path, ["resume=true"], logs)
    assert any(f"{out / 'metrics.jsonl'} line 3 is truncated" in m for m in logs), logs
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


def test_corrupted_metrics_line_in_the_middle_is_named(tmp_path, interrupted_template):
    path, out = interrupted_run(tmp_path, interrupted_template, "corrupt")
    m = out / "metrics.jsonl"
    lines = m.read_text().splitlines()
    m.write_text("{oops\n" + lines[1] + "\n")
    with pytest.raises(CheckpointError, match=rf"{m} line 1 is not valid JSON"):
        train(path, ["resume=true"])
    m.write_text("[1, 2]\n" + lines[1] + "\n")
    with pytest.raises(CheckpointError, match=rf"{m} line 1 is not a metrics record"):
        metrics_log.read_records(m)


def test_checkpoint_of_another_recipe_is_a_clear_error(finished_run, capsys):
    out = finished_run
    text = (out / "recipe.yaml").read_text()
    assert "hidden: 16" in text
    (out / "recipe.yaml").write_text(text.replace("hidden: 16", "hidden: 32"))
    code = cli_main(["eval", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"{out / 'checkpoints/best/model.safetensors'} was written by a different model than the one built " \
           "from the recipe" in err
    assert "net.0.weight: (16, 8) in the checkpoint, (32, 8) in the model" in err


# -- item 6: checkpoint pointers and metadata ------------------------------------------------------------

@pytest.mark.parametrize("pointer", ["../../other/checkpoints/epoch-0001", "/tmp/x/epoch-0001", "epoch-0099",
                                     "best", "epoch-0001/../../x", ""])
def test_latest_must_name_an_epoch_folder_of_this_run(tmp_path, interrupted_template, pointer):
    path, out = interrupted_run(tmp_path, interrupted_template, "hostile")
    (out / "checkpoints" / ckpt.LATEST).write_text(pointer + "\n")
    with pytest.raises(CheckpointError) as e:
        train(path, ["resume=true"])
    assert str(out / "checkpoints" / ckpt.LATEST) in str(e.value)
    assert "is not" in str(e.value) and "delete" in str(e.value)


def test_missing_latest_resumes_from_the_newest_valid_folder_exactly(tmp_path, interrupted_template, reference):
    path, out = interrupted_run(tmp_path, interrupted_template, "nolatest")
    (out / "checkpoints" / ckpt.LATEST).unlink()
    logs: list[str] = []
    train(path, ["resume=true"], logs)
    assert any("LATEST is missing: resuming from the newest valid epoch folder, epoch-0002-step-000002" in m
               for m in logs), logs
    assert same_weights(out, reference) and metric_lines(out) == metric_lines(reference)


def test_restart_over_invalid_folders_keeps_the_checkpoint_just_written(tmp_path, interrupted_template, reference):
    path, out = interrupted_run(tmp_path, interrupted_template, "restart")
    ck = out / "checkpoints"
    (ck / ckpt.LATEST).unlink()
    for p in ck.glob("epoch-*"):
        (p / ckpt.META).unlink()  # nothing valid left: the run starts over
    train(path, ["resume=true"])
    latest = ckpt.latest_folder(ck)
    ckpt.verify_checkpoint(latest)
    assert latest.name == "epoch-0004"
    assert same_weights(out, reference) and same_weights(out, reference, "epoch-0004")


def test_prune_never_deletes_the_folder_just_written(tmp_path):
    for name in ("epoch-0001", "epoch-0005", "epoch-0006"):
        (tmp_path / name).mkdir()
    ckpt.prune(tmp_path, keep=2, protect=tmp_path / "epoch-0001")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]


def test_best_moved_aside_by_a_kill_is_restored(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt.write_checkpoint(tmp_path / "best", model=model)
    os.replace(tmp_path / "best", tmp_path / ".best.old-12345")  # killed between the two renames
    ckpt.resume_folder(tmp_path, log=lambda m: None)
    ckpt.verify_checkpoint(tmp_path / "best")


@pytest.mark.parametrize("meta, message", [
    ([], "must be a JSON object with 'files', got list"),
    ({"files": []}, "'files' must be an object"),
    ({"files": {}}, "does not list model.safetensors"),
    ({"files": {"model.safetensors": {"bytes": 10, "sha256": "0" * 64}, "/dev/zero": {"bytes": 10, "sha256": "0" * 64}}},
     "lists '/dev/zero', which is not a checkpoint file"),
    ({"files": {"model.safetensors": {"bytes": 10, "sha256": "0" * 64}, "../x": {"bytes": 1, "sha256": "0" * 64}}},
     "lists '../x', which is not a checkpoint file"),
    ({"files": {"model.safetensors": {"bytes": "10", "sha256": "0" * 64}}}, "must be {\"bytes\": INT"),
    ({"files": {"model.safetensors": {"bytes": True, "sha256": "0" * 64}}}, "must be {\"bytes\": INT"),
])
def test_meta_json_is_schema_checked(finished_run, meta, message):
    best = finished_run / "checkpoints" / "best"
    (best / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(best)
    assert message in str(e.value) and str(best) in str(e.value)


def test_eval_refuses_a_device_in_place_of_a_checkpoint_file(finished_run, subprocess_env):
    best = finished_run / "checkpoints" / "best"
    (best / "model.safetensors").unlink()
    (best / "model.safetensors").symlink_to("/dev/zero")
    done = cli(["eval", str(best.parent.parent)], subprocess_env, timeout=60)  # it used to hang
    assert done.returncode == 1, done.stderr
    assert f"checkpoint file {best / 'model.safetensors'} is not a regular file" in done.stderr


def test_eval_refuses_an_unlisted_checkpoint_file(finished_run):
    best = finished_run / "checkpoints" / "best"
    (best / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extra.safetensors is not listed in meta.json"):
        ckpt.verify_checkpoint(best)


def test_nan_weights_with_matching_hashes_are_refused_naming_the_tensor(finished_run, capsys):
    out = finished_run
    best = out / "checkpoints" / "best"
    state = load_file(str(best / "model.safetensors"))
    state["net.3.bias"][1] = float("nan")
    save_file(state, str(best / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((best / ckpt.META).read_text())
    data = (best / "model.safetensors").read_bytes()
    meta["files"]["model.safetensors"] = {"bytes": len(data), "sha256": ckpt._sha256_bytes(data)}
    (best / ckpt.META).write_text(json.dumps(meta))
    ckpt.verify_checkpoint(best)  # the hashes match: only the finiteness check can catch it
    code = cli_main(["eval", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "tensor 'net.3.bias' holds 1 non-finite value(s)" in err and str(best) in err


def test_full_disk_while_taking_the_lock_is_a_storage_error(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(StorageError, match=rf"disk full while writing {tmp_path / 'r' / LOCK_FILE}"):
        RunLock(tmp_path / "r").acquire()


def test_stop_during_the_last_evaluation_finishes_the_run_and_stops_the_caller(tmp_path, monkeypatch):
    """A signal while the last epoch is evaluated: the run completes (results written), then the caller stops.

    Found in a sweep: SIGTERM during the final evaluation was swallowed and the sweep started its next run.
    """
    path = recipe_file(tmp_path, "last", epochs=2)
    original, calls = Trainer._end_epoch, {"n": 0}

    def end_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the last epoch's evaluation, as a SIGTERM arriving then would
            self._stop_requested, self._stop_signum = True, signal.SIGTERM
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch)
    assert cli_main(["run", str(path)]) == 128 + signal.SIGTERM
    out = tmp_path / "last"
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 2

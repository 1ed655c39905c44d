"""Soak test of crash safety (not run in CI): random SIGKILL / SIGTERM / disk-full faults over a demo run.

Each trial trains the (shortened) demo recipe into its own folder; every launch of ``mercore run`` may get one
fault, and the trial is resumed (``resume=true``) until it finishes. Its final ``results.json``,
``metrics.jsonl`` and the weights of ``best`` and of the ``LATEST`` epoch folder must equal an uninterrupted
run's exactly. Faults:

* ``sigkill``: SIGKILL at a random moment (anything may be half written);
* ``sigterm``: SIGTERM at a random moment (must exit 143 after saving the current step, or die by the signal
  if it came before the training loop or after it, where nothing is left to save);
* ``diskfull``: the launch's writes fail with ENOSPC once a random byte budget is spent (injected in a child
  harness at ``checkpoint._write_all`` and ``metrics_log._write_fd``); it must exit 1 naming the disk-full
  write, and leave no temporary folder behind.

    python benchmarks/soak_faults.py --faults 100 --workdir /tmp/soak
    python benchmarks/soak_faults.py --faults 10 --recipe recipes/demo_synthetic.yaml trainer.epochs=2

Prints one line per launch and a closing summary: faults injected (by kind), resumes, exact trials.
Exit code 0 only if every trial ended exactly at the uninterrupted result.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The demo, shortened: fewer dialogues and epochs (still SDMoE + HCMF, dropout and Gumbel noise on).
SHORT_DEMO = ["trainer.epochs=3", "trainer.progress=false", "trainer.threads=1",
              "data.num_dialogues={train: 48, dev: 12, test: 12}"]
BUDGET_ENV = "MERCORE_SOAK_ENOSPC_BUDGET"


def child_main(argv: list[str]) -> int:
    """``mercore`` with a full disk after ``$MERCORE_SOAK_ENOSPC_BUDGET`` bytes (when set)."""
    budget = os.environ.get(BUDGET_ENV)
    if budget is not None:
        from mercore import checkpoint, metrics_log

        left = {"bytes": int(budget)}
        write_all, write_fd = checkpoint._write_all, metrics_log._write_fd

        def spend(n: int) -> int:
            """How many of ``n`` bytes still fit; raises nothing."""
            fit = min(n, left["bytes"])
            left["bytes"] -= fit
            return fit

        def full_write_all(path, data):
            fit = spend(len(data))
            if fit < len(data):
                with open(path, "wb") as f:
                    f.write(data[:fit])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            write_all(path, data)

        def full_write_fd(fd, data):
            fit = spend(len(data))
            if fit < len(data):
                os.write(fd, data[:fit])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write_fd(fd, data)

        checkpoint._write_all, metrics_log._write_fd = full_write_all, full_write_fd
    from mercore.cli import main

    return main(argv)


def launch(args: list[str], env: dict, budget: int | None = None) -> subprocess.Popen:
    env = dict(env)
    env.pop(BUDGET_ENV, None)
    if budget is not None:
        env[BUDGET_ENV] = str(budget)
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lock(run_dir: Path, proc: subprocess.Popen) -> float:
    """Wait until the run holds its lock (or has ended); return the time then."""
    while proc.poll() is None and not (run_dir / "run.lock").exists():
        time.sleep(0.01)
    return time.time()


def strip_results(path: Path) -> dict:
    r = json.loads(path.read_text())
    r.pop("train_seconds"), r.pop("recipe")
    return r


def metric_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("seconds")
    return rows


def same_run(a: Path, b: Path) -> tuple[bool, str]:
    """Whether run ``b`` ended exactly where run ``a`` did: results, metrics, best and LATEST weights."""
    import torch
    from safetensors.torch import load_file

    if strip_results(a / "results.json") != strip_results(b / "results.json"):
        return False, "results.json differs"
    if metric_rows(a / "metrics.jsonl") != metric_rows(b / "metrics.jsonl"):
        return False, "metrics.jsonl differs"
    latest_a = (a / "checkpoints" / "LATEST").read_text().strip()
    latest_b = (b / "checkpoints" / "LATEST").read_text().strip()
    if latest_a != latest_b:
        return False, f"LATEST {latest_b} != {latest_a}"
    for folder in ("best", latest_a):
        wa = load_file(str(a / "checkpoints" / folder / "model.safetensors"))
        wb = load_file(str(b / "checkpoints" / folder / "model.safetensors"))
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            return False, f"weights of {folder} differ"
    return True, "exact"


def bytes_written(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faults", type=int, default=100, help="faults to inject in all (default 100)")
    p.add_argument("--max-per-trial", type=int, default=3, help="at most this many faults before a trial is let finish")
    p.add_argument("--recipe", default="recipes/demo_synthetic.yaml")
    p.add_argument("--workdir", default="/tmp/mercore-soak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default="sigkill,sigterm,diskfull")
    p.add_argument("--minutes", type=float, default=None, help="stop starting new trials after this long")
    p.add_argument("overrides", nargs="*", help="extra overrides (default: the shortened demo)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    kinds = a.kinds.split(",")
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    overrides = SHORT_DEMO + list(a.overrides)

    t0 = time.time()
    ref = work / "reference"
    proc = launch(["run", a.recipe, *overrides, f"output_dir={ref}"], env)
    locked_at = wait_for_lock(ref, proc)
    out, err = proc.communicate()
    full_seconds = time.time() - t0
    run_seconds = full_seconds - (locked_at - t0)  # from taking the lock (imports done) to the end
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return 1
    ref_bytes = bytes_written(ref)
    print(f"reference: {full_seconds:.1f}s wall, {run_seconds:.1f}s of it after start-up, {ref_bytes} bytes written")

    injected = {k: 0 for k in kinds}
    missed = resumes = trials = exact = 0
    problems: list[str] = []
    started = time.time()
    while sum(injected.values()) < a.faults:
        if a.minutes is not None and time.time() - started > a.minutes * 60:
            break
        trials += 1
        run_dir = work / f"trial-{trials:03d}"
        quota = min(rng.randint(1, a.max_per_trial), a.faults - sum(injected.values()))
        faults_here = 0
        launches = 0
        while True:
            base = ["run", a.recipe, *overrides, f"output_dir={run_dir}"] + (["resume=true"] if launches else [])
            launches += 1
            resumes += launches > 1
            kind = rng.choice(kinds) if faults_here < quota else "none"
            budget = rng.randint(0, ref_bytes) if kind == "diskfull" else None
            proc = launch(base, env, budget)
            if kind in ("sigkill", "sigterm"):
                # a random moment of the run proper (start-up, mostly imports, is not worth faulting)
                wait_for_lock(run_dir, proc)
                try:
                    proc.wait(timeout=rng.uniform(0.0, run_seconds))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                problems.append(f"trial {trials}: launch {launches} hung ({kind})")
            rc = proc.returncode
            hit = False
            if kind == "sigkill":
                hit = rc == -signal.SIGKILL
            elif kind == "sigterm":
                hit = rc in (143, -signal.SIGTERM)
                if rc == 143 and "saved a checkpoint" not in out:
                    problems.append(f"trial {trials}: exit 143 without 'saved a checkpoint'")
            elif kind == "diskfull":
                hit = rc == 1 and "disk full while writing" in err
                if rc == 1 and not hit:
                    problems.append(f"trial {trials}: disk-full launch failed otherwise: {err.strip()[-300:]}")
                if hit and "Traceback" in err:
                    problems.append(f"trial {trials}: disk full printed a traceback")
                ck = run_dir / "checkpoints"
                left = [x.name for x in ck.iterdir() if ".tmp-" in x.name] if ck.exists() else []
                if hit and left:
                    problems.append(f"trial {trials}: disk full left {left}")
            if kind != "none":
                if hit:
                    injected[kind] += 1
                    faults_here += 1
                else:
                    missed += 1  # finished before the fault fired (or the budget was not reached)
            print(f"trial {trials:3d} launch {launches}: {kind:<8} rc {rc:4d} {'fault' if hit else ''}", flush=True)
            if rc == 0:
                break
            if not hit:
                problems.append(f"trial {trials}: launch {launches} ({kind}) exited {rc}: {err.strip()[-400:]}")
                break
        if (run_dir / "results.json").exists():
            ok, why = same_run(ref, run_dir)
            exact += ok
            if not ok:
                problems.append(f"trial {trials}: {why}")
        shutil.rmtree(run_dir, ignore_errors=True)

    total = sum(injected.values())
    print(f"\nfaults injected: {total} ({', '.join(f'{k} {v}' for k, v in injected.items())}); "
          f"launches that finished before their fault: {missed}")
    print(f"resumes: {resumes}; trials: {trials}; exact results: {exact}/{trials}; "
          f"wall {time.time() - t0:.0f}s")
    for line in problems:
        print("PROBLEM:", line)
    return 0 if exact == trials and not problems else 1


if __name__ == "__main__":
    sys.exit(main())

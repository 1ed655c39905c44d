"""Wall time of the demo under each CPU thread option, alone and with a second demo beside it (issue 11, point 3).

    python benchmarks/thread_policy.py                   # 2 epochs per demo, every option (the lead's measurement)
    python benchmarks/thread_policy.py --epochs 1 --options policy   # a quick check of the script

Each option runs ``mercore run recipes/demo_synthetic.yaml trainer.epochs=E`` as a fresh process (OpenMP reads its
wait policy when torch loads), first alone, then as two identical runs started together (the second demo is
the "other work" on the machine; both wall times are given). Run it on an otherwise quiet machine: the
figures are only comparable within one invocation. Prints a Markdown table.

The options (``cores`` = the cores this process may use, ``os.sched_getaffinity``):

* ``torch-default``: what mercore did before the policy: one thread per core, OpenMP's own wait policy (spin);
* ``all-cores-passive``: one thread per core, ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
* ``one-thread``: ``trainer.threads=1`` (OpenMP's own wait policy; a single thread never waits);
* ``cores-minus-one-spin``: the policy's thread count without the passive wait policy;
* ``policy``: today's default (``trainer.threads: null``): cores minus one, ``OMP_WAIT_POLICY=PASSIVE``,
  ``KMP_BLOCKTIME=0`` (mercore/threads.py).

An empty ``OMP_WAIT_POLICY`` is how an option asks for OpenMP's own default: the CLI sets the passive policy
only where the variable is absent, and GNU OpenMP ignores an empty value.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo_synthetic.yaml"
sys.path.insert(0, str(ROOT))

from mercore.threads import available_cores, default_threads  # noqa: E402  (imports no torch)


@dataclass(frozen=True)
class Option:
    name: str
    threads: int | None  # trainer.threads (None: the policy's default)
    wait_policy: str | None  # OMP_WAIT_POLICY/KMP_BLOCKTIME: None = the CLI's default (PASSIVE), "" = OpenMP's own

    def describe(self) -> str:
        threads = f"{self.threads}" if self.threads is not None else f"{default_threads()} (policy)"
        wait = "PASSIVE (policy)" if self.wait_policy is None else (self.wait_policy or "OpenMP default")
        return f"| {self.name} | {threads} | {wait} |"


def options(cores: int) -> dict[str, Option]:
    return {o.name: o for o in (
        Option("torch-default", cores, ""),
        Option("all-cores-passive", cores, "PASSIVE"),
        Option("one-thread", 1, ""),
        Option("cores-minus-one-spin", max(1, cores - 1), ""),
        Option("policy", None, None),
    )}


def start(option: Option, epochs: int, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    if option.wait_policy is not None:
        env["OMP_WAIT_POLICY"] = option.wait_policy
        env["KMP_BLOCKTIME"] = "" if option.wait_policy == "" else "0"
    cmd = [sys.executable, "-m", "mercore", "run", str(DEMO), f"trainer.epochs={epochs}", f"output_dir={out}",
           "trainer.progress=false", "trainer.device=cpu"]
    if option.threads is not None:
        cmd.append(f"trainer.threads={option.threads}")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wall(procs: list[subprocess.Popen], limit: float) -> list[float]:
    """Seconds until each of ``procs`` (started just now) exits; a failed run is an error. A run still going
    after ``limit`` seconds is killed and reported as ``inf`` (the collapse this script exists to show)."""
    t0, times, pending = time.perf_counter(), [None] * len(procs), set(range(len(procs)))
    while pending:
        if time.perf_counter() - t0 > limit:
            for i in pending:
                procs[i].kill()
                procs[i].wait()
                times[i] = float("inf")
            break
        for i in list(pending):
            if procs[i].poll() is not None:
                times[i] = time.perf_counter() - t0
                pending.discard(i)
                if procs[i].returncode != 0:
                    raise RuntimeError(f"demo failed (exit {procs[i].returncode}): {procs[i].stderr.read()[-2000:]}")
        time.sleep(0.05)
    return times


def measure(option: Option, epochs: int, folder: Path, limit: float) -> tuple[float, list[float]]:
    alone = wall([start(option, epochs, folder / f"{option.name}-alone")], limit)[0]
    beside = wall([start(option, epochs, folder / f"{option.name}-{i}") for i in (1, 2)], limit)
    return alone, beside


def seconds(t: float, limit: float) -> str:
    return f"> {limit:.0f} (killed)" if t == float("inf") else f"{t:.1f}"


def main(argv: list[str] | None = None) -> int:
    cores = available_cores()
    known = options(cores)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per demo run (the issue measured 2)")
    ap.add_argument("--options", nargs="+", choices=list(known), default=list(known))
    ap.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    ap.add_argument("--limit", type=float, default=300.0, help="seconds after which a demo is killed and shown as '> LIMIT'")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Demo ({DEMO.name}, {args.epochs} epoch(s)) wall time in seconds, including start-up; {cores} cores "
             f"available; load average {load:.2f} at the start.", "",
             "| option | threads | OMP_WAIT_POLICY | alone (s) | beside a second demo (s, both runs) |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="thread_policy_") as tmp:
        for name in args.options:
            alone, beside = measure(known[name], args.epochs, Path(tmp), args.limit)
            lines.append(f"{known[name].describe()} {seconds(alone, args.limit)} | "
                         f"{' / '.join(seconds(t, args.limit) for t in beside)} |")
            print(lines[-1], file=sys.stderr, flush=True)  # progress: the row as soon as it is measured
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

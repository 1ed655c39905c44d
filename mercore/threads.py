"""The CPU thread policy: how many intra-op threads a run uses, and how idle OpenMP threads wait.

Why: on a machine whose cores are shared (other jobs, a second run), torch's default of one OpenMP thread per
core collapses: the threads of a parallel region spin-wait for each other, and a thread that the kernel has
descheduled keeps its siblings spinning at 100 % system time. Measured on a shared 2-core machine, the demo
took 132-206 s for 2 epochs with the defaults against 10 s with one thread (issue 11).

The policy, applied only where the user has not decided:

* :func:`set_wait_policy_env` (called by the CLI entry before torch is imported, since OpenMP reads its
  environment once, when the library loads): ``OMP_WAIT_POLICY=PASSIVE`` (GNU OpenMP, which pip's torch
  uses: waiting threads sleep instead of spinning) and ``KMP_BLOCKTIME=0`` (the same for Intel OpenMP).
* :func:`default_threads` (``trainer.threads: null``): the cores this process may run on
  (``os.sched_getaffinity``, which honours ``taskset`` and container CPU sets, unlike ``os.cpu_count``),
  minus one left for the Python thread's own work and everything else on the machine, at least one;
  under ``torchrun`` the cores are divided among the processes of this node (``LOCAL_WORLD_SIZE``), so a
  data-parallel job on P processes never asks for more than the node has (one thread each on a small node).

This module imports nothing heavy: the CLI imports it before torch.
"""

from __future__ import annotations

import os
from typing import MutableMapping

#: Environment variables set to these values when unset (never overriding the user's own).
WAIT_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def set_wait_policy_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the passive OpenMP wait policy in ``environ`` (``os.environ``) where the user has not set it.

    Must run before ``import torch`` to take effect (GNU OpenMP reads it when it initialises). Returns the
    variables it set (empty when the user had set them all).
    """
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in WAIT_POLICY_ENV.items() if k not in env}
    env.update(applied)
    return applied


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, local_processes: int | None = None) -> int:
    """Intra-op threads for ``trainer.threads: null``: ``cores // local_processes`` (torchrun's processes on
    this node), minus one when that leaves a spare core for the rest of the machine, at least 1."""
    cores = available_cores() if cores is None else cores
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    share = max(1, cores // max(1, local_processes))
    return share - 1 if share > 1 and local_processes == 1 else share


__all__ = ["WAIT_POLICY_ENV", "available_cores", "default_threads", "set_wait_policy_env"]

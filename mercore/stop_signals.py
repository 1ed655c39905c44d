"""Stopping a run cleanly on SIGINT (Ctrl-C), SIGTERM and SIGHUP (what SLURM and Kubernetes send before SIGKILL).

The first signal only sets a flag; the trainer finishes the current step, saves a checkpoint at that step and
raises :class:`RunInterrupted`, so the process exits with ``128 + signum`` (130, 143, 129) within one training
step plus one checkpoint write. A second signal stops at once without saving.
"""

from __future__ import annotations

import signal
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``; ``exit_code`` is the shell's convention, ``128 + signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped by {signal_name(signum)}")
        self.signum = signum
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def install(handler: Callable[[int, object], None]) -> Callable[[], None]:
    """Route SIGINT, SIGTERM and SIGHUP to ``handler``; return a function that restores the previous handlers.

    Outside the main thread (where Python cannot install handlers) nothing is installed.
    """
    previous = {}
    for sig in STOP_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread, or a platform without this signal
            pass

    def restore() -> None:
        for sig, old in previous.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError):
                pass

    return restore

"""The ``tensorboard`` logger: each epoch's record as TensorBoard scalars (``pip install 'mercore[tensorboard]'``).

Tags are the record's numeric entries with ``/`` between levels, the step is the epoch: ``train_loss``, ``lr``,
``seconds``, ``selected`` (1 when the epoch became the best on dev), ``dev/weighted_f1``, ``test/accuracy``,
``dev/per_class_f1/<label>``, ``stats/<name>`` ... Written to ``RUN_DIR/tensorboard`` (``dir``); view with
``tensorboard --logdir runs``. The ``tensorboard`` package is needed only when this logger is built.

A resumed run redoes the epochs after its checkpoint: the writer is opened with ``purge_step = epoch + 1``, so
TensorBoard discards what the interrupted run wrote for those epochs, as ``jsonl`` drops their lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs

from mercore.config import option
from mercore.errors import ConfigError

INSTALL_HINT = "pip install 'mercore[tensorboard]' (or pip install tensorboard)"


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of ``record`` by ``/``-joined tag (bools as 0/1; ``epoch`` is the step, not a tag)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if not prefix and key == "epoch":
            continue
        if isinstance(value, dict):
            out.update(scalars(value, tag))
        elif isinstance(value, (bool, int, float)):
            out[tag] = float(value)
    return out


class TensorBoardLogger:
    """Writes every epoch's record as scalars to an event file under ``RUN_DIR/dir``, flushed per epoch."""

    @attrs.define
    class Config:
        dir: str = option("tensorboard", help="folder of the event files, inside the run directory")

    def __init__(self, config: Config, *, run_dir: Path, log: Callable[[str], None] = print, **_: object):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError([f"logger tensorboard: the tensorboard package is not installed; {INSTALL_HINT}, "
                               "or use logger: jsonl"]) from None
        if not config.dir.strip() or Path(config.dir).is_absolute() or ".." in Path(config.dir).parts:
            raise ConfigError([f"logger tensorboard: dir must be a folder inside the run directory, got {config.dir!r}"])
        self.config = config
        self.log_dir = Path(run_dir) / config.dir
        self._writer_cls = SummaryWriter
        self._writer: Any = None

    def start(self, epoch: int) -> None:
        # purge_step: TensorBoard drops this folder's earlier events of steps >= epoch + 1 (the redone epochs)
        self._writer = self._writer_cls(log_dir=str(self.log_dir), purge_step=epoch + 1)

    def log_epoch(self, record: dict) -> None:
        step = int(record["epoch"])
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()  # on disk before the epoch's checkpoint, as metrics.jsonl

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["TensorBoardLogger", "scalars"]

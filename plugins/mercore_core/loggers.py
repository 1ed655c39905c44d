"""The default ``logger``: ``jsonl``, one JSON line per finished epoch in the run's ``metrics.jsonl``.

The file is what the trainer wrote before loggers were components, byte for byte: ``json.dumps(record)`` and a
newline per epoch, appended with one write and fsync, cut back on a failed write, a truncated last line dropped
with a note (see :mod:`mercore.metrics_log`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import attrs

from mercore import metrics_log

#: The file name every tool reads (``mercore report``, ``sweep``, the benchmarks' summaries).
METRICS_FILE = "metrics.jsonl"


class JsonlLogger:
    """Appends each epoch's record to ``RUN_DIR/metrics.jsonl``; a resumed run first drops the records of the
    epochs it redoes (and a truncated last line). It gives its records back (:class:`mercore.nn.RecordReader`)."""

    @attrs.define
    class Config:
        pass

    def __init__(self, config: Config, *, run_dir: Path, log: Callable[[str], None] = print, **_: object):
        self.config = config
        self.path = Path(run_dir) / METRICS_FILE
        self._log = log

    def start(self, epoch: int) -> None:
        metrics_log.keep_records_through(self.path, epoch, log=self._log)

    def log_epoch(self, record: dict) -> None:
        metrics_log.append_record(self.path, record)  # no half line on a full disk

    def read_records(self) -> list[dict]:
        return metrics_log.read_records(self.path, log=self._log)

    def close(self) -> None:
        """Nothing to do: every record is on disk when ``log_epoch`` returns."""


__all__ = ["JsonlLogger", "METRICS_FILE"]

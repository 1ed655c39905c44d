"""The ``logger`` contract: where a run's per-epoch metrics records go.

A ``logger`` factory is called as ``factory(config, run_dir=Path, log=print-like)`` by the trainer, on rank 0
only, once per run (fresh or resumed), after the run directory exists; it returns a :class:`Logger`. A recipe
names one logger or a list of them in its ``logger:`` node (default ``jsonl``: ``metrics.jsonl``).

A record is the dict the trainer writes per finished epoch: ``epoch`` (int, from 1), ``train_loss``, ``lr``,
``dev`` and ``test`` (``accuracy``, ``weighted_f1``, ``macro_f1``, ``per_class_f1: {label: f1}``),
``selected`` (bool: this epoch became the best on dev), ``seconds`` and, where the model reports them,
``stats: {name: epoch mean}``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Logger(Protocol):
    """Receives the run's records. The trainer calls, in this order:

    * ``start(epoch)`` once before training: ``epoch`` epochs are finished (0 for a fresh run; a resumed run's
      checkpoint epoch). Records of later epochs, which a resumed run redoes, must be forgotten.
    * ``log_epoch(record)`` after each epoch, before that epoch's checkpoint is written (so a record may exist
      for an epoch whose checkpoint does not: ``start`` of the resumed run drops it);
    * ``close()`` when the run ends, also by an error or an interruption.
    """

    def start(self, epoch: int) -> None: ...

    def log_epoch(self, record: dict) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class RecordReader(Logger, Protocol):
    """A logger that can give its records back (``jsonl``): the trainer reads the run's history from the first
    such logger, for ``results.json``'s ``reference_best_test_epoch``."""

    def read_records(self) -> list[dict]: ...


__all__ = ["Logger", "RecordReader"]

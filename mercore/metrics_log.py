"""``metrics.jsonl``: one JSON line per finished epoch, appended safely and read back tolerantly; and the run's
``logger`` components (:func:`open_loggers`), of which ``jsonl`` (the default) writes that file.

A line is appended with one write and fsync; if the write fails (disk full) the file is cut back to its
previous length, so no half line stays. A kill in the middle of a write can still leave a truncated last
line: it always belongs to an epoch after the last checkpoint (the line is written before that epoch's
checkpoint), so readers drop it with a note. Any other unreadable line is an error naming file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from mercore import checkpoint as ckpt
from mercore.errors import CheckpointError


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and fsync (the one place metrics bytes reach the disk; tests inject here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` as one line. Raises :class:`StorageError` (the file unchanged) when the write fails."""
    path = Path(path)
    data = (json.dumps(record) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise ckpt.storage_error(exc, path, len(data)) from None
    try:
        size = os.fstat(fd).st_size
        try:
            _write_fd(fd, data)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise ckpt.storage_error(exc, path, len(data)) from None
    finally:
        os.close(fd)


def _parse(path: Path, log: Callable[[str], None]) -> list[tuple[str, dict]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    out = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if k == len(numbered) - 1:
                log(f"note: {path} line {lineno} is truncated (the run was stopped while writing it): dropped")
                continue
            raise CheckpointError(f"{path} line {lineno} is not valid JSON ({exc}); the file was altered: "
                                  "repair or delete that line") from None
        except RecursionError:
            raise CheckpointError(f"{path} line {lineno} is nested too deeply; the file was altered") from None
        if not isinstance(record, dict) or type(record.get("epoch")) is not int:
            raise CheckpointError(f"{path} line {lineno} is not a metrics record (a JSON object with an integer "
                                  "'epoch'); the file was altered: repair or delete that line")
        out.append((line, record))
    return out


def read_records(path: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Every record of ``path`` (none when it does not exist); a truncated last line is dropped with a note.

    Raises:
        CheckpointError: a line other than the last is not JSON, or a line is not an object with an integer
            ``epoch``; the message names file and line.
    """
    path = Path(path)
    return [r for _, r in _parse(path, log)] if path.exists() else []


def keep_records_through(path: Path, epoch: int, log: Callable[[str], None] = print) -> None:
    """Drop the records of epochs after ``epoch`` (a resumed run redoes them) and any truncated last line."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line, r in _parse(path, log) if r["epoch"] <= epoch]
    ckpt.atomic_write_text(path, "".join(line + "\n" for line in keep))


# -- the run's loggers (kind ``logger``, the contract :class:`mercore.nn.Logger`) ------------------------------

def open_loggers(node: Any, run_dir: Path, epoch: int, log: Callable[[str], None] = print) -> list:
    """Build the recipe's ``logger`` node (or list of nodes) for ``run_dir`` and start each at ``epoch``
    (the epochs already finished: their records are kept, later ones dropped)."""
    loggers = [n.build(run_dir=Path(run_dir), log=log) for n in (node if isinstance(node, list) else [node])]
    for logger in loggers:
        logger.start(epoch)
    return loggers


def log_epoch(loggers: list, record: dict) -> None:
    """Give one epoch's record to every logger, in the recipe's order."""
    for logger in loggers:
        logger.log_epoch(record)


def read_history(loggers: list) -> list[dict] | None:
    """The records of the first logger that gives them back (:class:`mercore.nn.RecordReader`); None if none does."""
    from mercore.nn.logger import RecordReader

    for logger in loggers:
        if isinstance(logger, RecordReader):
            return logger.read_records()
    return None


def close_loggers(loggers: list) -> None:
    """Close every logger, even when one of them fails (the first failure is raised after all are closed)."""
    error: BaseException | None = None
    for logger in loggers:
        try:
            logger.close()
        except Exception as exc:  # noqa: BLE001 - close the others first
            error = error or exc
    if error is not None:
        raise error

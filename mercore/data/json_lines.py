"""Reading JSON Lines files of objects (``dialogues.jsonl``), every problem named ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mercore.errors import DataError


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``json.loads`` hook: a key written twice in one object is an error (json keeps the last silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def json_object(line: str, where: str) -> dict:
    """The JSON object on one line; ``where`` (``file:line``) prefixes every error."""
    try:
        row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from None
    except _DuplicateKey as exc:
        raise DataError(f"{where}: key {exc.key!r} is written twice in one object; JSON readers "
                        "silently keep the last, so which value is meant is unclear") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def read_json_objects(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of ``path`` (UTF-8, as JSON requires)."""
    try:
        raw_lines = path.read_bytes().split(b"\n")
    except OSError as exc:  # PermissionError, or the file vanished after a check
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows = []
    for line_no, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # a Latin-1 or cp1252 byte means the file was written in another encoding: say where, don't guess
            raise DataError(f"{path}:{line_no}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not "
                            "UTF-8; JSON Lines files must be UTF-8 (re-save the file as UTF-8)") from None
        if line.strip():
            rows.append((line_no, json_object(line, f"{path}:{line_no}")))
    return rows

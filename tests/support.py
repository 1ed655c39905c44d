"""Helpers that tests import (``from support import ...``): the repository's paths and small utilities.

``tests/conftest.py`` puts this folder on ``sys.path``; fixtures live there, plain helpers here (a test never
imports ``conftest``, which pytest loads itself).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from mercore.errors import DataError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository: recipes/, benchmarks/, README.md
SHARED_DATA = ROOT.parent / "shared" / "data"  # the real corpora beside the checkout (absent in some clones)


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` loaded as a module (the benchmarks folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_recipe(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` and return the path (recipes, and small scripts, written by a test)."""
    path.write_text(text)
    return path


def data_error(load: Callable[[], object], *needles: str) -> str:
    """Call ``load``, expect a :class:`DataError` whose message holds every needle, and return the message."""
    with pytest.raises(DataError) as info:
        load()
    msg = str(info.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message: {msg}"
    return msg

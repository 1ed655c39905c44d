"""Shared fixtures. ``tests/`` is on sys.path so recipes can name ``toy_components:ToyModel``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture
def registry():
    from mercore.plugins import get_registry

    return get_registry()


@pytest.fixture
def subprocess_env():
    """Environment for CLI subprocesses: tests/ importable for the toy components, one thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

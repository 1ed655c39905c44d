"""Shared fixtures. ``tests/`` is on sys.path so recipes can name ``toy_components:ToyModel``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests (hypothesis) draw the same examples on every run, CI included, so a test result never depends
# on the draw. MERCORE_FUZZ_RANDOM=1 draws fresh examples (and MERCORE_FUZZ_EXAMPLES=N more of them per test)
# to hunt for new failures; a failure prints the example and a @reproduce_failure line to pin it.
settings.register_profile("mercore", derandomize=os.environ.get("MERCORE_FUZZ_RANDOM") != "1")
settings.load_profile("mercore")

# The engine tests name local toy components (toy_components:ToyModel), which a recipe may import only when
# local code is allowed; the tests of that guard (tests/engine/test_code_guard.py) remove this again.
os.environ["MERCORE_ALLOW_LOCAL_CODE"] = "1"

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

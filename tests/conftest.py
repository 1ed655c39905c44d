"""Shared fixtures. ``tests/`` is on sys.path so recipes can name ``toy_components:ToyModel``."""

from __future__ import annotations

import os
import sys
import textwrap
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
if str(TESTS) not in sys.path:  # support.py (helpers) and toy_components.py (local components) are imported
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


def _make_site(tmp_path: Path, plugins: dict[str, str], dist: str = "mercore-fakeplug", version: str = "1.2.3") -> Path:
    """A folder with modules and one ``.dist-info`` whose entry points name them, as pip would install."""
    site = tmp_path / "site"
    site.mkdir()
    for module, source in plugins.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "".join(f"{m.removeprefix('mercore_')} = {m}\n" for m in plugins)
    (info / "entry_points.txt").write_text(f"[mercore]\n{eps}")
    return site


@pytest.fixture
def plugin_site():
    """``plugin_site(tmp_path, {module: source}, dist=..., version=...)``: a folder that, put on sys.path or
    PYTHONPATH, installs the modules as one third-party distribution with ``mercore`` entry points."""
    return _make_site

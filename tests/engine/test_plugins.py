"""Third-party plugin discovery through entry points, with nothing installed: a fake dist-info on sys.path
(the ``plugin_site`` fixture of conftest.py)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mercore.errors import RegistryError
from mercore.plugins import PluginLoadWarning, load_plugins

GOOD = '''
import attrs
from mercore import hookimpl

class FakeEncoder:
    """An encoder from a third-party package."""
    @attrs.define
    class Config:
        width: int = 7
    def __init__(self, config, **_):
        self.config = config

@hookimpl
def register_components(register):
    register("encoder", "fake_encoder", FakeEncoder)
'''

BROKEN = "raise ImportError('this plugin needs a package that is not installed')\n"

MISSPELLED = '''
from mercore import hookimpl

@hookimpl
def register_component(register):   # no such hook: must be an error, not silently ignored
    pass
'''


@pytest.fixture
def on_sys_path(monkeypatch):
    def add(site: Path):
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()

    return add


def test_third_party_plugin_is_found_through_its_entry_point(tmp_path, plugin_site, on_sys_path):
    on_sys_path(plugin_site(tmp_path, {"mercore_fakeplug": GOOD}))
    ps = load_plugins()
    info = next(p for p in ps.plugins if p.name == "fakeplug")
    assert (info.distribution, info.version, info.error) == ("mercore-fakeplug", "1.2.3", None)
    assert info.hooks == ["register_components"] and info.components == {"encoder": 1}
    spec = ps.registry.get("encoder", "fake_encoder")
    assert spec.plugin == "fakeplug" and spec.factory(spec.config_cls()).config.width == 7


def test_broken_plugin_is_skipped_with_a_warning_and_others_still_load(tmp_path, plugin_site, on_sys_path):
    on_sys_path(plugin_site(tmp_path, {"mercore_fakeplug": GOOD, "mercore_broken": BROKEN}))
    with pytest.warns(PluginLoadWarning, match="broken"):
        ps = load_plugins()
    broken = next(p for p in ps.plugins if p.name == "broken")
    assert "needs a package that is not installed" in broken.error
    assert ps.registry.get("encoder", "fake_encoder")
    assert ps.registry.get("optimizer", "adamw")  # first-party plugins unaffected


def test_strict_mode_makes_a_broken_plugin_fatal(tmp_path, plugin_site, on_sys_path, monkeypatch):
    on_sys_path(plugin_site(tmp_path, {"mercore_broken": BROKEN}))
    monkeypatch.setenv("MERCORE_STRICT_PLUGINS", "1")
    with pytest.raises(RegistryError, match="plugin 'broken'.*failed to load"):
        load_plugins()


def test_misspelled_hook_is_reported_as_a_load_error(tmp_path, plugin_site, on_sys_path):
    on_sys_path(plugin_site(tmp_path, {"mercore_misspelled": MISSPELLED}))
    with pytest.warns(PluginLoadWarning):
        ps = load_plugins()
    info = next(p for p in ps.plugins if p.name == "misspelled")
    assert "register_component" in info.error


def test_only_env_restricts_loading(monkeypatch):
    monkeypatch.setenv("MERCORE_PLUGINS", "core")
    ps = load_plugins()
    assert [p.name for p in ps.plugins] == ["core"]


def test_mercore_plugins_cli_survives_a_broken_plugin(tmp_path, plugin_site, subprocess_env):
    site = plugin_site(tmp_path, {"mercore_fakeplug": GOOD, "mercore_broken": BROKEN})
    env = dict(subprocess_env, PYTHONPATH=f"{site}:{subprocess_env['PYTHONPATH']}")
    out = subprocess.run([sys.executable, "-m", "mercore", "plugins", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listing = {p["name"]: p for p in json.loads(out.stdout)}
    assert listing["fakeplug"]["version"] == "1.2.3" and listing["fakeplug"]["components"] == {"encoder": 1}
    assert "not installed" in listing["broken"]["error"]
    text = subprocess.run([sys.executable, "-m", "mercore", "plugins"], env=env, capture_output=True, text=True)
    assert text.returncode == 0 and "FAILED TO LOAD" in text.stdout
    strict = subprocess.run([sys.executable, "-m", "mercore", "list"], env=dict(env, MERCORE_STRICT_PLUGINS="1"),
                            capture_output=True, text=True)
    assert strict.returncode == 2 and "broken" in strict.stderr

"""Recipes are code: what ``type: module:attr`` may import (mercore.code_guard), through the CLI and the registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mercore import code_guard
from mercore.cli import main
from mercore.errors import RegistryError
from mercore.registry import Registry

RECIPE = """\
data: {type: synthetic}
model:
  type: multimodal
  hidden: 16
  encoder: {type: transformer, heads: 2}
  fusion: {type: hcmf, heads: 2}
"""

# A local module that, once imported, leaves a file behind: the proof that its code ran.
EVIL = textwrap.dedent("""\
    import attrs
    open("IMPORTED", "w").write("the module's code ran")

    class Loss:
        @attrs.define
        class Config:
            pass

        def __init__(self, config, **context):
            raise SystemExit("built")
""")


@pytest.fixture
def local_folder(tmp_path, monkeypatch):
    """A current folder holding ``evil_mod.py``, importable from there (as under ``python -m mercore``)."""
    monkeypatch.delenv(code_guard.ALLOW_LOCAL_CODE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "evil_mod.py").write_text(EVIL)
    sys.modules.pop("evil_mod", None)
    yield tmp_path
    sys.modules.pop("evil_mod", None)
    code_guard.allow_local_code(False)


def _validate(folder: Path, recipe_text: str, *extra: str, capsys) -> tuple[int, str]:
    (folder / "r.yaml").write_text(recipe_text)
    code = main(["validate", str(folder / "r.yaml"), *extra])
    return code, capsys.readouterr().err


def test_local_module_is_not_imported_by_validate_without_the_flag(local_folder, capsys):
    code, err = _validate(local_folder, RECIPE + "loss: {type: 'evil_mod:Loss'}\n", capsys=capsys)
    assert code == 2
    assert not (local_folder / "IMPORTED").exists()
    assert "loss.type (line 7): loss 'evil_mod:Loss': module 'evil_mod'" in err
    assert "would be imported from the current folder" in err or "not provided by an installed distribution" in err
    assert "it was NOT imported" in err and "--allow-local-code" in err


def test_flag_and_environment_variable_allow_local_code(local_folder, capsys, monkeypatch):
    code, err = _validate(local_folder, RECIPE + "loss: {type: 'evil_mod:Loss'}\n", "--allow-local-code",
                          capsys=capsys)
    assert code == 0, err
    assert (local_folder / "IMPORTED").read_text() == "the module's code ran"
    (local_folder / "IMPORTED").unlink()
    sys.modules.pop("evil_mod", None)
    code_guard.allow_local_code(False)
    monkeypatch.setenv(code_guard.ALLOW_LOCAL_CODE_ENV, "1")
    assert Registry().get("loss", "evil_mod:Loss").factory.__name__ == "Loss"
    assert (local_folder / "IMPORTED").exists()


@pytest.mark.parametrize("ref", ["os:system", "builtins:eval", "subprocess:run", "antigravity:x"])
def test_standard_library_callables_are_refused_at_validate(local_folder, capsys, ref):
    code, err = _validate(local_folder, RECIPE + f"loss: {{type: '{ref}'}}\n", "--allow-local-code", capsys=capsys)
    assert code == 2
    assert f"loss.type (line 7): loss '{ref}': module '{ref.split(':')[0]}' is part of Python's standard library" in err


def test_standard_library_module_is_not_imported(local_folder):
    sys.modules.pop("antigravity", None)  # importing it opens a web browser
    with pytest.raises(RegistryError, match="standard library"):
        Registry().get("loss", "antigravity:geohash")
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("ref, what", [
    ("attrs:define", "a function, not a class"),
    ("numpy:ndarray", "a class without an attrs Config class"),
    ("numpy:pi", "a float, not a class"),
])
def test_installed_attributes_must_be_component_classes(ref, what, monkeypatch):
    monkeypatch.delenv(code_guard.ALLOW_LOCAL_CODE_ENV, raising=False)
    with pytest.raises(RegistryError) as info:
        Registry().get("loss", ref)
    assert f"loss {ref!r}: {ref} is {what}; module:attr may only name a component class" in str(info.value)


def test_installed_component_class_resolves_without_the_flag(monkeypatch, tmp_path):
    monkeypatch.delenv(code_guard.ALLOW_LOCAL_CODE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    spec = Registry().get("model", "mercore.nn.multimodal:MultimodalModel")
    assert spec.config_cls.__qualname__ == "MultimodalModel.Config"


def test_a_module_in_the_current_folder_shadowing_an_installed_one_is_local(local_folder):
    assert code_guard.why_local("evil_mod") is not None
    # 'yaml' is installed; a yaml.py next to the recipe would be imported instead of it
    (local_folder / "yaml.py").write_text("raise SystemExit('shadow ran')\n")
    saved = sys.modules.pop("yaml")
    try:
        reason = code_guard.why_local("yaml")
    finally:
        sys.modules["yaml"] = saved
    assert reason is not None and "current folder" in reason


def test_eval_and_run_accept_the_flag():
    from mercore.cli import build_parser

    parser = build_parser()
    for argv in (["run", "r.yaml", "--allow-local-code"], ["eval", "runs/x", "--allow-local-code"]):
        assert parser.parse_args(argv).allow_local_code is True


def test_cli_subprocess_in_a_folder_with_local_code(tmp_path):
    """End to end, as a user would run it: ``python -m mercore validate`` in the folder holding the module."""
    (tmp_path / "evil_mod.py").write_text(EVIL)
    (tmp_path / "r.yaml").write_text(RECIPE + "loss: {type: 'evil_mod:Loss'}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != code_guard.ALLOW_LOCAL_CODE_ENV}
    proc = subprocess.run([sys.executable, "-m", "mercore", "validate", "r.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--allow-local-code" in proc.stderr
    assert not (tmp_path / "IMPORTED").exists()

"""Recipe parsing, overrides, interpolation and validation: every problem at once, with paths and lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT, write_recipe
from mercore.errors import ConfigError
from mercore.recipe import apply_overrides, build_recipe, interpolate, load_recipe
from mercore.yaml_io import parse_yaml

TOY = """\
data:
  type: toy_components:ToyDataset
  num_dialogues: 8
model:
  type: toy_components:ToyModel
  hidden: 8
optimizer:
  type: adamw
  lr: 1e-3
trainer:
  epochs: 2
"""


def test_pyyaml_traps_are_handled():
    data, lines = parse_yaml("lr: 1e-3\nswitch: on\nflag: true\nneg: -2.5E+2\nn: 7\n")
    assert data == {"lr": 0.001, "switch": "on", "flag": True, "neg": -250.0, "n": 7}
    assert lines["n"] == "line 5"


def test_duplicate_keys_are_errors_with_both_lines():
    with pytest.raises(ConfigError) as e:
        parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    msg = str(e.value)
    assert "b.c (line 4): duplicate key 'c', first written at line 3" in msg
    assert "a (line 5): duplicate key 'a', first written at line 1" in msg


def test_invalid_yaml_names_line_and_column():
    with pytest.raises(ConfigError, match=r"line 2, column \d+: invalid YAML"):
        parse_yaml("a: [1, 2\nb: 3\n")


def test_all_problems_reported_with_paths_lines_and_suggestions(tmp_path, registry):
    bad = TOY.replace("  hidden: 8", "  hiden: 8").replace("type: adamw", "type: adamx").replace("epochs: 2", "epochs: many")
    path = write_recipe(tmp_path / "r.yaml", bad)
    with pytest.raises(ConfigError) as e:
        load_recipe(path, registry=registry)
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert any("model.hiden (line 6)" in p and "did you mean 'hidden'" in p for p in problems)
    assert any("optimizer.type (line 8)" in p and "did you mean 'adam' or 'adamw'" in p for p in problems)
    assert any("trainer.epochs (line 11)" in p and "expected an integer" in p for p in problems)


def test_missing_required_component(registry):
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        build_recipe({"data": {"type": "toy_components:ToyDataset"}}, registry)


def test_overrides_set_remove_and_parse_values():
    data = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    lines: dict = {}
    apply_overrides(data, ["a.b=1e-4", "~a.c", "x.y.z=[1, 2]", "flag=true", "l.1=5"], lines)
    assert data == {"a": {"b": 1e-4}, "l": [1, 5], "x": {"y": {"z": [1, 2]}}, "flag": True}
    assert lines["a.b"] == "override 'a.b=1e-4'"


def test_override_errors_are_collected():
    with pytest.raises(ConfigError) as e:
        apply_overrides({"a": 1}, ["novalue", "~a.b", "~zz"], {})
    assert len(e.value.problems) == 3


def test_type_override_resets_node_and_reports_dropped_keys(tmp_path, registry):
    path = write_recipe(tmp_path / "r.yaml", TOY.replace("  lr: 1e-3", "  lr: 1e-3\n  betas: [0.9, 0.98]"))
    loaded = load_recipe(path, ["optimizer.type=adam"], registry=registry)
    assert loaded.recipe.optimizer.name == "adam"
    assert loaded.data["optimizer"] == {"type": "adam"}
    assert "dropped its old keys: lr, betas" in loaded.notes[0].message


def test_interpolation_of_keys_and_environment(monkeypatch):
    monkeypatch.setenv("MERCORE_TEST_LR", "3e-4")
    data = {"a": {"n": 4}, "b": "${a.n}", "c": "run-${a.n}", "lr": "${env:MERCORE_TEST_LR}", "d": "${env:NOPE_X,7}"}
    out = interpolate(data, {})
    assert out == {"a": {"n": 4}, "b": 4, "c": "run-4", "lr": 3e-4, "d": 7}
    with pytest.raises(ConfigError, match="refers to a key that does not exist"):
        interpolate({"b": "${a.missing}"}, {})
    with pytest.raises(ConfigError, match="not set"):
        interpolate({"b": "${env:SURELY_NOT_SET_VAR}"}, {})
    with pytest.raises(ConfigError, match="interpolation loop"):
        interpolate({"a": "${b}", "b": "${a}"}, {})


def test_validate_cli_exits_2_with_both_problems(tmp_path, subprocess_env):
    bad = TOY.replace("  hidden: 8", "  hiden: 8").replace("type: adamw", "type: adamww")
    path = write_recipe(tmp_path / "bad.yaml", bad)
    out = subprocess.run([sys.executable, "-m", "mercore", "validate", str(path)], env=subprocess_env,
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "model.hiden" in out.stderr and "line" in out.stderr and "did you mean 'hidden'" in out.stderr
    assert "optimizer.type (line 8)" in out.stderr and "did you mean" in out.stderr


def test_validate_build_runs_one_batch(tmp_path, subprocess_env):
    path = write_recipe(tmp_path / "ok.yaml", TOY)
    out = subprocess.run([sys.executable, "-m", "mercore", "validate", str(path), "--build"], env=subprocess_env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "one batch of 2 dialogues" in out.stdout and "task=" in out.stdout


def test_every_shipped_recipe_validates(registry):
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))  # recipes/ and its subfolders (recipes/synthetic/...)
    assert recipes, "no recipes shipped"
    for path in recipes:
        if path.parent == ROOT / "recipes" / "extract":  # `mercore extract` recipes
            from mercore.extract import load_extract_recipe

            load_extract_recipe(path, registry=registry)
        else:
            load_recipe(path, registry=registry)  # raises ConfigError listing every problem
        name = path.relative_to(ROOT / "recipes")
        assert path.read_text().startswith("#"), f"{name} must open with a comment showing how to run it"

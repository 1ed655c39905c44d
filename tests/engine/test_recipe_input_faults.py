"""Fault injection for recipes and the command line: bombs, odd digits, out-of-range values, cross-field
checks at validate time, every problem in one report, options in any order, closed pipes. All in-process and
fast, except one subprocess for the closed pipe."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import pytest

from mercore.cli import _parse_args, build_parser, main
from mercore.errors import ConfigError
from mercore.recipe import load_recipe
from mercore.yaml_io import MAX_DEPTH, parse_yaml

RECIPE = """\
data: {type: synthetic}
model:
  type: multimodal
  hidden: 16
  encoder: {type: transformer, heads: 2}
  fusion: {type: hcmf, heads: 2}
"""


def _alias_bomb() -> str:
    """The classic 'billion laughs': 9 levels of 9 aliases, 9**9 (387 million) strings once expanded."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, source="bomb.yaml")
    return info.value.problems


def test_alias_bomb_fails_fast_in_little_memory():
    text = _alias_bomb()
    assert len(text) < 1400
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        problems = _problems(text)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # line 6 is the first anchor past the limit (9**6 values)
    assert problems == ["line 6: the document expands to more than 100,000 values (aliases that repeat aliases, "
                        "a 'billion laughs' bomb?); a recipe has a few hundred"]
    assert seconds < 1.0 and peak < 20e6, (seconds, peak)


def test_merge_key_bomb_is_bounded_too():
    text = "a0: &a0 {x: 1, y: 2}\n" + "".join(
        f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: 1}}\n" for i in range(1, 30))
    assert "expands to more than" in _problems(text)[0]


@pytest.mark.parametrize("text", [
    "x: " + "[" * 500 + "]" * 500,
    "\n".join("  " * i + f"k{i}:" for i in range(500)) + " 1\n",
])
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    (problem,) = _problems(text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in problem and problem.startswith("line ")


def test_nesting_via_a_chain_of_aliases_is_bounded():
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    assert "nesting deeper than 64 levels once aliases are expanded" in _problems(text)[0]


def test_recursive_alias():
    assert _problems("a: &a [1, *a]\n") == ["line 1: a recursive alias (a node that contains itself)"]


def test_interpolation_bomb(tmp_path, registry):
    text = "a: [" + ",".join(["1"] * 50) + "]\n" + "".join(
        f"b{i}: [" + ",".join([f"'${{{'a' if i == 0 else f'b{i - 1}'}}}'"] * 50) + "]\n" for i in range(4))
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"references expand the recipe to more than 100,000 values"):
        load_recipe(tmp_path / "r.yaml", registry=registry)


def _validate(tmp_path, capsys, text: str, *overrides: str) -> tuple[int, str]:
    (tmp_path / "r.yaml").write_text(text)
    code = main(["validate", str(tmp_path / "r.yaml"), *overrides])
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize("override, needle", [
    ("model.hidden=١٢", "model.hidden (override 'model.hidden=١٢'): expected an integer in ASCII digits 0-9, got '١٢'"),
    ("optimizer.lr=١e-3", "optimizer.lr (override 'optimizer.lr=١e-3'): expected a number in ASCII digits 0-9"),
    ("seed=99999999999999999999999", "seed must be an integer from 0 to 4294967295, got 99999999999999999999999"),
    ("optimizer.lr=nan", "optimizer.lr (override 'optimizer.lr=nan'): must be a number, got NaN ('nan')"),
    ("optimizer.lr=-1", "optimizer 'adamw': lr must be a finite number >= 0, got -1.0"),
    ("trainer.device=gpu", "device 'gpu' is not a device; valid choices: cpu, cuda, cuda:N, auto"),
    ("trainer.max_dialogue_length=0", "max_dialogue_length must be at least 1 (or null), got 0"),
])
def test_bad_values_are_caught_at_validate(tmp_path, capsys, override, needle):
    code, err = _validate(tmp_path, capsys, RECIPE + "optimizer: {type: adamw}\n", override)
    assert code == 2 and needle in err, err
    assert "Traceback" not in err


def test_ascii_digits_only_in_list_indices(tmp_path, capsys):
    code, err = _validate(tmp_path, capsys, RECIPE + "x: [1, 2]\n", "x.١=5")
    assert code == 2 and "'١' is not an index of the list at x" in err


@pytest.mark.parametrize("text, needle", [
    (RECIPE + "scheduler: {type: warmup_cosine, warmup_ratio: 1.5}\n",
     "scheduler (line 7): scheduler 'warmup_cosine': warmup_ratio must be in [0, 1) (a fraction of all steps), got 1.5"),
    (RECIPE.replace("{type: hcmf, heads: 2}", "{type: hcmf, heads: 2, anchor: txt}"),
     "model (line 2): model 'multimodal': fusion.anchor 'txt' is not among modalities ['text', 'audio', 'visual']"),
    (RECIPE.replace("hidden: 16", "hidden: 60").replace("heads: 2", "heads: 8"),
     "hidden 60 is not divisible by encoder.heads=8; hidden 60 is not divisible by fusion.heads=8"),
])
def test_cross_field_checks_at_validate(tmp_path, capsys, text, needle):
    code, err = _validate(tmp_path, capsys, text)
    assert code == 2 and needle in err, err
    assert "valid\n" not in err


def test_every_problem_in_one_report(tmp_path, capsys):
    text = RECIPE + "seed: 1\nseed: 2\nname: ${nowhere.key}\ntrainer: {epochs: 0}\n"
    code, err = _validate(tmp_path, capsys, text, "~not_there")
    assert code == 2
    assert "4 problem(s)" in err, err
    assert "seed (line 8): duplicate key 'seed', first written at line 7" in err
    assert "name (line 9): ${nowhere.key} refers to a key that does not exist" in err
    assert "override '~not_there': cannot remove not_there: no such key" in err
    assert "trainer (line 10): TrainerConfig: epochs, batch_size and eval_batch_size must be at least 1" in err


def test_options_and_overrides_in_any_order():
    parser = build_parser()
    args = _parse_args(parser, ["validate", "r.yaml", "--build", "trainer.epochs=1", "seed=3"])
    assert args.build and args.overrides == ["trainer.epochs=1", "seed=3"]
    args = _parse_args(parser, ["run", "r.yaml", "a=1", "--allow-local-code", "b=2"])
    assert args.allow_local_code and args.overrides == ["a=1", "b=2"]
    assert main(["validate", "r.yaml", "--build", "a=1", "--bogus"]) == 2


def test_broken_pipe_in_process(monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise ValueError("not a file")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["show", "model", "multimodal"]) == 141


def test_show_into_a_closed_pipe_has_no_traceback():
    """``mercore show ... | head``: the reader closes the pipe before the output is written."""
    read_fd, write_fd = __import__("os").pipe()
    __import__("os").close(read_fd)
    proc = subprocess.run([sys.executable, "-m", "mercore", "show", "model", "multimodal"], stdout=write_fd,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    __import__("os").close(write_fd)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_an_unwrapped_os_error_is_named_not_a_traceback(monkeypatch, capsys):
    import mercore.cli as cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/iemocap")

    monkeypatch.setattr(cli, "cmd_list", denied)
    assert main(["list"]) == 1
    assert capsys.readouterr().err == "error: cannot access '/data/iemocap': Permission denied\n"

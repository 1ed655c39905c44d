"""Property test: malformed YAML and random overrides end in a config error (exit 2) or success, never a traceback."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercore.cli import main

BASE = """\
data: {type: "toy_components:ToyDataset"}
model:
  type: "toy_components:ToyModel"
  hidden: 8
optimizer: {type: adamw, lr: 1e-3}
trainer: {epochs: 2}
"""

yaml_noise = st.text(alphabet=list("ab:{}[]-,'\"\n #&*!|>%@`=$.1e\t"), max_size=80)
keys = st.sampled_from(["data", "model", "model.hidden", "model.type", "optimizer.lr", "trainer.epochs",
                        "trainer", "seed", "x.y", "model.hidden.deep", "optimizer", "trainer.grad_clip", ""])
values = st.one_of(st.text(max_size=12), st.sampled_from(["1e-3", "null", "[1,", "{a: 1}", "true", "-1", "nan", "${x}",
                                                          "${env:NOPE}", "adam", "~", "&a", "*a"]))
override = st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.builds(lambda k: f"~{k}", keys), st.text(max_size=20))


def run_validate(tmp_path, text: str, overrides: list[str]) -> int:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        return main(["validate", str(path), *overrides])


@settings(max_examples=int(os.environ.get("MERCORE_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=yaml_noise, at=st.integers(0, len(BASE)))
def test_malformed_yaml_is_a_config_error(tmp_path, noise, at):
    assert run_validate(tmp_path, BASE[:at] + noise + BASE[at:], []) in (0, 2)


@settings(max_examples=int(os.environ.get("MERCORE_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(override, max_size=4))
def test_random_overrides_are_config_errors_or_success(tmp_path, overrides):
    assert run_validate(tmp_path, BASE, overrides) in (0, 2)


def test_option_like_override_is_a_usage_error_not_an_exception(tmp_path, capsys):
    """Found by the fuzz in CI: an override such as `-:` is parsed by argparse as an unknown option."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(BASE)
    assert main(["validate", str(path), "-:"]) == 2
    assert "unrecognized arguments: -:" in capsys.readouterr().err

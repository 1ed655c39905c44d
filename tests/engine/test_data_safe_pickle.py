"""The restricted unpickler: admits the numpy/builtin globals feature pickles use, refuses everything else."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from mercore.data.safe_pickle import safe_load
from mercore.errors import DataError


class _RunsShell:
    """A payload that would run a shell command when unpickled by a plain ``pickle.load``."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_refuses_a_pickle_that_would_run_a_shell_command(tmp_path, protocol):
    target = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    # The payload sits inside the kind of tuple a feature pickle holds, after harmless items.
    path.write_bytes(pickle.dumps(({"a": np.zeros(3)}, [_RunsShell(str(target))]), protocol=protocol))
    with pytest.raises(DataError) as info:
        safe_load(path)
    assert not target.exists(), "the payload ran"
    msg = str(info.value)
    assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg
    assert "evil.pkl" in msg


def test_refuses_builtins_eval(tmp_path):
    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps([_CallsEval()], protocol=2))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        safe_load(path)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_loads_numpy_arrays_scalars_sets_and_ordered_dicts(tmp_path, protocol):
    obj = (
        {"Ses01F_impro01": [np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)]},
        {"v": np.zeros((2, 3), dtype=np.float64), "s": np.float32(1.5), "i": np.int64(3), "u": np.array(["a", "b"])},
        {"Ses01F_impro01", "Ses05M_script02"},
        frozenset([1, 2]),
        collections.OrderedDict(b=1, a=2),
        [[1.0, 0.0], [0.0, 1.0]],
        b"raw bytes",
    )
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = safe_load(path)
    np.testing.assert_array_equal(out[0]["Ses01F_impro01"][0], np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(out[1]["v"], np.zeros((2, 3)))
    assert out[1]["s"] == np.float32(1.5) and out[1]["i"] == 3 and list(out[1]["u"]) == ["a", "b"]
    assert out[2] == {"Ses01F_impro01", "Ses05M_script02"} and out[3] == frozenset([1, 2])
    assert list(out[4]) == ["b", "a"] and out[6] == b"raw bytes"


def test_python2_names_are_mapped_before_the_check(tmp_path):
    # Protocol-0 text as Python 2 writes a set: c__builtin__\nset\n ... ; must load as builtins.set.
    path = tmp_path / "py2.pkl"
    path.write_bytes(b"c__builtin__\nset\np0\n((lp1\nS'x'\np2\natp3\nRp4\n.")
    assert safe_load(path) == {"x"}
    # ... and Python 2's os.system spelling is still refused.
    bad = tmp_path / "py2_evil.pkl"
    marker = tmp_path / "PWNED2"
    bad.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(DataError, match=r"os\.system"):
        safe_load(bad)
    assert not marker.exists()


def test_missing_truncated_and_garbage_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        safe_load(tmp_path / "absent.pkl")
    full = pickle.dumps({"a": np.zeros(100)}, protocol=2)
    (tmp_path / "cut.pkl").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cut.pkl"):
        safe_load(tmp_path / "cut.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="junk.pkl"):
        safe_load(tmp_path / "junk.pkl")

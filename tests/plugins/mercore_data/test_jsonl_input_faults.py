"""Silent wrong data and unreadable data, injected into a tiny ``jsonl`` corpus: each must be a DataError
naming the file, line or dialogue, and the CLI must say it without a traceback."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mercore.cli import main
from mercore.data import checks
from mercore.errors import DataError
from mercore.train import Components, evaluate
from mercore_data.jsonl import JsonlConfig, JsonlDataset

FEATURES = "text_minilm_l6.safetensors"
ROWS = [
    {"dialogue": "tr0", "split": "train", "speakers": ["A", "B", "A"], "labels": ["happy", "sad", None]},
    {"dialogue": "tr1", "split": "train", "speakers": ["B", "A"], "labels": ["angry", "neutral"]},
    {"dialogue": "dv0", "split": "dev", "speakers": ["C", "D"], "labels": ["excited", "sad"]},
    {"dialogue": "te0", "split": "test", "speakers": ["A", "A"], "labels": ["frustrated", "happy"]},
]


def _corpus_folder(root: Path, rows: list[dict] = ROWS, lines: list[bytes] | None = None,
                   dtype: torch.dtype = torch.float32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = lines if lines is not None else [json.dumps(r).encode() for r in rows]
    (root / "dialogues.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    g = torch.Generator().manual_seed(0)
    save_file({r["dialogue"]: torch.randn(len(r["labels"]), 4, generator=g).to(dtype) for r in rows},
              str(root / FEATURES))
    return root


def _error(root: Path, **options) -> str:
    with pytest.raises(DataError) as info:
        JsonlDataset(JsonlConfig(root=str(root), **options)).load()
    return str(info.value)


def test_mixed_integer_and_string_labels_name_the_dialogue(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2] = {**rows[2], "labels": [4, 1]}
    msg = _error(_corpus_folder(tmp_path / "iemocap", rows))
    assert msg == (f"{tmp_path / 'iemocap' / 'dialogues.jsonl'}:3: dialogue 'dv0': field 'labels': utterance 0: "
                   "label 4 is a class index, but dialogue 'tr0' "
                   f"({tmp_path / 'iemocap' / 'dialogues.jsonl'}:1) has class names; a corpus must use one label "
                   "type: all names (e.g. 'happy') or all class indices (0, 1, ...)")


def test_integer_labels_alone_are_still_fine(tmp_path):
    rows = [{**r, "labels": [i % 6 if y is not None else None for i, y in enumerate(r["labels"])]} for r in ROWS]
    corpus = JsonlDataset(JsonlConfig(root=str(_corpus_folder(tmp_path / "iemocap", rows)))).load()
    assert corpus.splits["train"][0].labels.tolist() == [0, 1, -100]


def test_duplicate_key_on_one_line_is_an_error(tmp_path):
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[1] = lines[1][:-1] + b', "split": "test"}'  # tr1 would silently move to test
    msg = _error(_corpus_folder(tmp_path / "c", lines=lines))
    assert msg.startswith(f"{tmp_path / 'c' / 'dialogues.jsonl'}:2: key 'split' is written twice in one object")


def test_latin1_byte_names_line_and_column(tmp_path):
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[3] = lines[3][:-1] + b', "texts": ["caf\xe9", "x"]}'
    msg = _error(_corpus_folder(tmp_path / "c", lines=lines))
    col = lines[3].index(b"\xe9") + 1
    assert msg == (f"{tmp_path / 'c' / 'dialogues.jsonl'}:4: byte 0xe9 at column {col} is not UTF-8; JSON Lines "
                   "files must be UTF-8 (re-save the file as UTF-8)")


def test_deeply_nested_json_line(tmp_path):
    lines = [json.dumps(r).encode() for r in ROWS] + [b"[" * 100_000 + b"]" * 100_000]
    assert _error(_corpus_folder(tmp_path / "c", lines=lines)).endswith(":5: JSON nested too deeply")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.float8_e4m3fn])
def test_features_must_be_floating_point(tmp_path, dtype):
    msg = _error(_corpus_folder(tmp_path / "c", dtype=dtype))
    name = str(dtype).replace("torch.", "")
    assert msg == (f"{tmp_path / 'c' / FEATURES}: dialogue 'tr0': field 'text': features must be floating point "
                   f"(float16, bfloat16, float32 or float64), got {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_features_are_widened(tmp_path, dtype):
    corpus = JsonlDataset(JsonlConfig(root=str(_corpus_folder(tmp_path / "c", dtype=dtype)))).load()
    assert corpus.splits["test"][0].features["text"].dtype == torch.float32


def _deny(monkeypatch, denied: Path, fn_name: str = "open") -> None:
    """Fault injection: the OS refuses to open ``denied`` (tests often run as root, where chmod 000 does not)."""
    real = getattr(builtins, fn_name) if fn_name == "open" else getattr(os, fn_name)

    def guarded(path, *args, **kwargs):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    if fn_name == "open":
        monkeypatch.setattr(builtins, "open", guarded)
    else:
        monkeypatch.setattr(os, fn_name, guarded)


def test_unreadable_feature_file_is_reported_as_unreadable_not_missing(tmp_path, monkeypatch):
    root = _corpus_folder(tmp_path / "c")
    _deny(monkeypatch, root / FEATURES)
    msg = _error(root)
    assert msg.startswith(f"{root / FEATURES}: 'text' feature file cannot be read: Permission denied")
    assert "not found" not in msg


def test_unreadable_dialogues_file(tmp_path, monkeypatch):
    root = _corpus_folder(tmp_path / "c")
    _deny(monkeypatch, root / "dialogues.jsonl")
    assert _error(root).startswith(f"{root / 'dialogues.jsonl'}: dialogues file cannot be read: Permission denied")


def test_unreadable_data_folder(tmp_path, monkeypatch):
    root = _corpus_folder(tmp_path / "c")
    _deny(monkeypatch, root, "scandir")
    assert _error(root).startswith(f"{root}: dataset root folder cannot be read: Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_feature_file_with_real_permissions(tmp_path):
    root = _corpus_folder(tmp_path / "c")
    (root / FEATURES).chmod(0)
    assert "cannot be read: Permission denied" in _error(root)


def test_split_without_labels_is_refused_for_evaluation(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[3] = {**rows[3], "labels": [None, None]}
    corpus = JsonlDataset(JsonlConfig(root=str(_corpus_folder(tmp_path / "c", rows)))).load()
    c = Components(corpus=corpus, model=torch.nn.Identity(), loss_fn=None, distiller=None, modalities=["text"])
    with pytest.raises(DataError) as info:
        evaluate(c, "test", 4, torch.device("cpu"))
    assert str(info.value) == (f"{tmp_path / 'c'}: split 'test' has no labelled utterances (1 dialogues, every label "
                               "null); it cannot be evaluated. Give it labels, or evaluate another split")


def test_dialogue_longer_than_the_limit_is_named(tmp_path):
    corpus = JsonlDataset(JsonlConfig(root=str(_corpus_folder(tmp_path / "c")))).load()
    checks.check_dialogue_lengths(corpus.splits, 3, corpus.source)
    with pytest.raises(DataError) as info:
        checks.check_dialogue_lengths(corpus.splits, 2, corpus.source)
    assert str(info.value).startswith(f"{tmp_path / 'c'}: dialogue 'tr0' (train) has 3 utterances, more than "
                                      "trainer.max_dialogue_length=2")


RECIPE = """\
data: {{type: jsonl, root: "{root}"}}
model: {{type: multimodal, modalities: [text], hidden: 8, encoder: {{type: transformer, heads: 2}}}}
"""


@pytest.mark.parametrize("inject, needle", [
    ("latin1", ":4: byte 0xe9 at column"),
    ("length", "dialogue 'tr0' (train) has 3 utterances, more than trainer.max_dialogue_length=2"),
])
def test_cli_reports_data_faults_without_a_traceback(tmp_path, capsys, inject, needle):
    lines = [json.dumps(r).encode() for r in ROWS]
    if inject == "latin1":
        lines[3] = lines[3][:-1] + b', "note": "\xe9"}'
    root = _corpus_folder(tmp_path / "c", lines=lines)
    (tmp_path / "r.yaml").write_text(RECIPE.format(root=root))
    code = main(["validate", str(tmp_path / "r.yaml"), "--build", "trainer.max_dialogue_length=2"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err

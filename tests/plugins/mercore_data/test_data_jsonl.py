"""The ``jsonl`` reader: small files in tmp_path, every bad input, and the real ../shared/data corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mercore.data.types import PAD_LABEL, collate
from support import data_error
from mercore_data.jsonl import JsonlConfig, JsonlDataset

from support import SHARED_DATA
FEATURE_FILE = "text_minilm_l6.safetensors"


def _rows() -> list[dict]:
    return [
        {"dialogue": "d_train_0", "split": "train", "speakers": ["A", "B", "A"], "texts": ["x", "y", "z"],
         "labels": ["happy", "sad", None]},
        {"dialogue": "d_train_1", "split": "train", "speakers": ["B", "A"], "labels": ["angry", "neutral"]},
        {"dialogue": "d_dev_0", "split": "dev", "speakers": ["C", "D", "E"], "labels": ["excited", "sad", "sad"]},
        {"dialogue": "d_test_0", "split": "test", "speakers": ["A", "A"], "labels": ["frustrated", "happy"]},
    ]


def _write(root: Path, rows: list[dict] | None = None, tensors: dict[str, torch.Tensor] | None = None,
           dim: int = 8) -> Path:
    rows = _rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    (root / "dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if tensors is None:
        g = torch.Generator().manual_seed(0)
        tensors = {r["dialogue"]: torch.randn(len(r["labels"]), dim, generator=g).half() for r in rows}
    save_file(tensors, str(root / FEATURE_FILE), metadata={"encoder": "test"})
    return root


def _load(root: Path, **options) -> object:
    return JsonlDataset(JsonlConfig(root=str(root), **options)).load()


def _raises(root: Path, *needles: str, **options) -> str:
    return data_error(lambda: _load(root, **options), *needles)


def test_reads_a_small_corpus(tmp_path):
    root = _write(tmp_path / "iemocap")
    corpus = _load(root)
    assert corpus.name == "iemocap"
    assert corpus.label_names == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert corpus.modality_dims == {"text": 8}
    assert {s: len(v) for s, v in corpus.splits.items()} == {"train": 2, "dev": 1, "test": 1}
    d = corpus.splits["train"][0]
    assert d.id == "d_train_0" and d.features["text"].dtype == torch.float32 and d.features["text"].shape == (3, 8)
    assert d.speakers.tolist() == [0, 1, 0]
    assert d.labels.tolist() == [0, 1, PAD_LABEL]  # null label: kept for context, not scored
    assert corpus.splits["train"][1].speakers.tolist() == [0, 1]  # per-dialogue order of first appearance
    assert corpus.num_speakers == 3  # the dev dialogue has three speakers
    batch = collate(corpus.splits["train"], corpus.modalities)
    assert batch.features["text"].shape == (2, 3, 8) and batch.mask.sum() == 5


def test_label_order_defaults_and_overrides(tmp_path):
    root = _write(tmp_path / "mydata")
    assert _load(root).label_names == sorted({"happy", "sad", "angry", "neutral", "excited", "frustrated"})
    labels = ["sad", "happy", "neutral", "angry", "excited", "frustrated"]
    corpus = _load(root, labels=labels)
    assert corpus.label_names == labels and corpus.splits["train"][0].labels.tolist()[:2] == [1, 0]


def test_num_speakers_clips_later_speakers(tmp_path):
    root = _write(tmp_path / "iemocap")
    with pytest.warns(UserWarning, match="share speaker index 1"):
        corpus = _load(root, num_speakers=2)
    assert corpus.num_speakers == 2
    assert corpus.splits["dev"][0].speakers.tolist() == [0, 1, 1]


def test_dev_carved_from_train_when_the_file_has_none(tmp_path):
    rows = [r for r in _rows() if r["split"] != "dev"]
    rows += [dict(r, dialogue=r["dialogue"] + "_b") for r in rows if r["split"] == "train"]
    root = _write(tmp_path / "iemocap", rows)
    _raises(root, "dialogues.jsonl", "'dev'")
    corpus = _load(root, dev_ratio=0.25)
    assert len(corpus.splits["dev"]) == 1 and len(corpus.splits["train"]) == 3


# -- bad input: each names the file, the dialogue and the field --------------------------------------------------

def test_missing_root_and_missing_feature_file(tmp_path):
    _raises(tmp_path / "nowhere", "nowhere", "not found")
    root = _write(tmp_path / "iemocap")
    (root / FEATURE_FILE).unlink()
    _raises(root, FEATURE_FILE, "not found")
    (root / "dialogues.jsonl").unlink()
    _raises(root, "dialogues.jsonl", "not found")


def test_requested_modality_the_source_does_not_have(tmp_path):
    root = _write(tmp_path / "iemocap")
    _raises(root, str(root), "'audio'", modalities=["text", "audio"])


def test_wrong_feature_dim_in_one_dialogue(tmp_path):
    rows = _rows()
    tensors = {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows}
    tensors["d_dev_0"] = torch.zeros(3, 9)
    root = _write(tmp_path / "iemocap", rows, tensors)
    _raises(root, FEATURE_FILE, "'d_dev_0'", "'text'", "dim is 9")


def test_expected_dims_is_checked(tmp_path):
    root = _write(tmp_path / "iemocap")
    _raises(root, FEATURE_FILE, "'d_train_0'", "'text'", "expected_dims", expected_dims={"text": 384})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features(tmp_path, bad):
    rows = _rows()
    tensors = {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows}
    tensors["d_test_0"][1, 5] = bad
    root = _write(tmp_path / "iemocap", rows, tensors)
    _raises(root, FEATURE_FILE, "'d_test_0'", "'text'", "utterance 1, dim 5")


def test_label_outside_the_label_set(tmp_path):
    rows = _rows()
    rows[1]["labels"] = ["angry", "joy"]
    root = _write(tmp_path / "iemocap", rows)
    _raises(root, "dialogues.jsonl", "'d_train_1'", "'labels'", "'joy'")


def test_empty_dialogue(tmp_path):
    rows = _rows()
    rows[2].update(speakers=[], labels=[])
    tensors = {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows}
    root = _write(tmp_path / "iemocap", rows, tensors)
    _raises(root, "'d_dev_0'", "empty dialogue")


def test_lengths_disagree(tmp_path):
    rows = _rows()
    rows[0]["speakers"] = ["A", "B"]
    root = _write(tmp_path / "iemocap", rows, {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows})
    _raises(root, "dialogues.jsonl", "'d_train_0'", "'speakers'", "speakers has 2")
    rows = _rows()
    tensors = {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows}
    tensors["d_train_1"] = torch.zeros(5, 8)
    root = _write(tmp_path / "iemocap2", rows, tensors)
    _raises(root, "dialogues.jsonl", "'d_train_1'", f"text ({FEATURE_FILE})", "has 5")


def test_dialogue_missing_from_feature_file(tmp_path):
    rows = _rows()
    tensors = {r["dialogue"]: torch.zeros(len(r["labels"]), 8) for r in rows if r["dialogue"] != "d_test_0"}
    root = _write(tmp_path / "iemocap", rows, tensors)
    _raises(root, FEATURE_FILE, "'d_test_0'", "'text'", "missing from")


def test_corrupt_files(tmp_path):
    root = _write(tmp_path / "iemocap")
    (root / FEATURE_FILE).write_bytes(b"\x00\x01garbage")
    _raises(root, FEATURE_FILE, "'text'", "safetensors")
    root = _write(tmp_path / "iemocap2")
    with open(root / "dialogues.jsonl", "a") as fh:
        fh.write("{not json\n")
    _raises(root, "dialogues.jsonl:5", "not valid JSON")
    rows = _rows()
    del rows[3]["speakers"]
    _raises(_write(tmp_path / "iemocap3", rows), "dialogues.jsonl:4", "'d_test_0'", "'speakers'")
    rows = _rows()
    rows[3]["dialogue"] = "d_train_0"
    _raises(_write(tmp_path / "iemocap4", rows, {"d_train_0": torch.zeros(3, 8)}), "duplicate", "'d_train_0'")


# -- the real corpora ------------------------------------------------------------------------------------------------

REAL = {
    "iemocap": ({"train": (108, 5163), "dev": (12, 647), "test": (31, 1623)},
                ["happy", "sad", "neutral", "angry", "excited", "frustrated"]),
    "meld": ({"train": (1038, 9989), "dev": (114, 1109), "test": (280, 2610)},
             ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_shared_data_counts(name):
    root = SHARED_DATA / name
    if not (root / "dialogues.jsonl").is_file():
        pytest.skip(f"{root} is absent (the shared reference data exists only in developer checkouts and CI)")
    counts, labels = REAL[name]
    corpus = _load(root)
    assert corpus.label_names == labels
    assert corpus.modality_dims == {"text": 384}
    found = {s: (len(ds), sum(len(d) for d in ds)) for s, ds in corpus.splits.items()}
    assert found == counts
    used = {int(y) for ds in corpus.splits.values() for d in ds for y in d.labels.tolist()}
    assert used == set(range(len(labels)))  # every class occurs, no PAD_LABEL
    assert corpus.num_speakers == (2 if name == "iemocap" else 9)

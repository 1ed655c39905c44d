"""``meld_csv``: tiny official-format CSVs plus a feature file, both key layouts, and every bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from support import data_error
from mercore_data.meld_csv import MeldCsvConfig, MeldCsvDataset

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]
# split -> rows of (Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID); deliberately out of order.
ROWS = {
    "train": [("Oh my God, he\u2019s lost it.", "Phoebe", "surprise", "negative", 0, 1),
              ("also I was the point person", "Chandler", "neutral", "neutral", 0, 0),
              ("You must\u2019ve had your hands full,\n\"really\".", "The Interviewer", "neutral", "neutral", 0, 2),
              ("Great.", "Joey", "joy", "positive", 1, 0),
              ("No!", "Ross", "anger", "negative", 1, 1)],
    "dev": [("Hi.", "Monica", "neutral", "neutral", 0, 0), ("Hey.", "Rachel", "joy", "positive", 0, 1)],
    "test": [("Why?", "Ross", "sadness", "negative", 3, 0)],
}
DIM = 6


def _write(root: Path, rows: dict | None = None, layout: str = "utterance", encoding: str = "utf-8",
           tensors: dict[str, torch.Tensor] | None = None, header: list[str] = HEADER) -> Path:
    rows = ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    made: dict[str, torch.Tensor] = {}
    for split, items in rows.items():
        with open(root / f"{split}_sent_emo.csv", "w", newline="", encoding=encoding, errors="replace") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i, (utt, spk, emo, senti, dia, uid) in enumerate(items):
                w.writerow([i + 1, utt, spk, emo, senti, dia, uid, 3, 7, "00:14:38,127", "00:14:40,378"])
        for dia in sorted({r[4] for r in items}):
            n = sum(1 for r in items if r[4] == dia)
            if layout == "dialogue":
                made[f"{split}/{dia}"] = torch.randn(n, DIM, generator=g)
            else:
                for r in items:
                    if r[4] == dia:
                        made[f"{split}/{dia}/{r[5]}"] = torch.randn(DIM, generator=g)
    save_file(made if tensors is None else tensors, str(root / "text.safetensors"))
    return root


def _load(root: Path, **options):
    options.setdefault("features", {"text": "text.safetensors"})
    return MeldCsvDataset(MeldCsvConfig(root=str(root), **options)).load()


def _raises(root: Path, *needles: str, **options) -> str:
    return data_error(lambda: _load(root, **options), *needles)


@pytest.mark.parametrize("layout", ["utterance", "dialogue"])
def test_reads_both_feature_layouts(tmp_path, layout):
    root = _write(tmp_path, layout=layout)
    corpus = _load(root, feature_keys=layout)
    assert corpus.name == "meld" and corpus.num_classes == 7
    assert {s: [d.id for d in v] for s, v in corpus.splits.items()} == {
        "train": ["train_0", "train_1"], "dev": ["dev_0"], "test": ["test_3"]}
    d = corpus.splits["train"][0]
    # rows sorted by Utterance_ID: Chandler (neutral), Phoebe (surprise), The Interviewer (neutral)
    assert d.labels.tolist() == [0, 1, 0] and d.speakers.tolist() == [0, 1, 2]
    assert d.features["text"].shape == (3, DIM) and corpus.num_speakers == 3
    from safetensors.torch import load_file
    stored = load_file(str(root / "text.safetensors"))
    expect = stored["train/0"][0] if layout == "dialogue" else stored["train/0/0"]
    torch.testing.assert_close(d.features["text"][0], expect)


def test_sentiment_target_and_cp1252_file(tmp_path):
    root = _write(tmp_path, encoding="cp1252")
    corpus = _load(root, target="sentiment")
    assert corpus.label_names == ["neutral", "positive", "negative"]
    assert corpus.splits["train"][1].labels.tolist() == [1, 2]


# -- bad input ---------------------------------------------------------------------------------------------------

def test_missing_folder_split_file_and_feature_file(tmp_path):
    _raises(tmp_path / "absent", "absent", "not found")
    root = _write(tmp_path / "a")
    (root / "dev_sent_emo.csv").unlink()
    _raises(root, "dev_sent_emo.csv", "not found")
    _raises(_write(tmp_path / "b"), "'dev'", files={"train": "train_sent_emo.csv", "test": "test_sent_emo.csv"})
    root = _write(tmp_path / "c")
    (root / "text.safetensors").unlink()
    _raises(root, "text.safetensors", "not found")
    _raises(_write(tmp_path / "d", rows={**ROWS, "dev": []}), "dev_sent_emo.csv", "'dev'", "no rows")


def test_requested_modality_missing(tmp_path):
    _raises(_write(tmp_path), "'audio'", "does not have", modalities=["text", "audio"])


def test_missing_column_and_bad_ids(tmp_path):
    header = [h if h != "Emotion" else "Emo" for h in HEADER]
    _raises(_write(tmp_path / "a", header=header), "train_sent_emo.csv", "'Emotion'", "column missing")
    rows = {**ROWS, "test": [("Why?", "Ross", "sadness", "negative", "three", 0)]}
    _raises(_write(tmp_path / "b", rows=rows, tensors={"x": torch.zeros(1)}), "test_sent_emo.csv:2", "'Dialogue_ID'",
            "'three'")
    rows = {**ROWS, "test": [("Why?", "Ross", "sadness", "negative", 3, 0), ("So?", "Ross", "joy", "positive", 3, 0)]}
    _raises(_write(tmp_path / "c", rows=rows, tensors={"x": torch.zeros(1)}), "test_sent_emo.csv:3", "'3'",
            "appears twice")


def test_label_outside_label_set(tmp_path):
    rows = {**ROWS, "dev": [("Hi.", "Monica", "bored", "neutral", 0, 0)]}
    _raises(_write(tmp_path, rows=rows), "dev_sent_emo.csv", "'dev_0'", "'Emotion'", "'bored'")


def test_missing_feature_key_wrong_dim_and_non_finite(tmp_path):
    root = _write(tmp_path / "a")
    from safetensors.torch import load_file
    tensors = load_file(str(root / "text.safetensors"))
    good = dict(tensors)
    del tensors["train/1/1"]
    save_file(tensors, str(root / "text.safetensors"))
    _raises(root, "text.safetensors", "'train_1'", "'text'", "'train/1/1'")

    bad_dim = dict(good)
    bad_dim["test/3/0"] = torch.zeros(DIM + 1)
    save_file(bad_dim, str(root / "text.safetensors"))
    _raises(root, "text.safetensors", "'test_3'", "'text'", "dim is 7")
    _raises(_write(tmp_path / "b"), "text.safetensors", "'train_0'", "'text'", "expected_dims",
            expected_dims={"text": 1024})

    nan = dict(good)
    nan["dev/0/1"] = torch.full((DIM,), float("nan"))
    save_file(nan, str(root / "text.safetensors"))
    _raises(root, "text.safetensors", "'dev_0'", "'text'", "NaN")


def test_dialogue_layout_length_mismatch_and_empty_key(tmp_path):
    root = _write(tmp_path, layout="dialogue")
    from safetensors.torch import load_file
    tensors = load_file(str(root / "text.safetensors"))
    tensors["train/1"] = torch.zeros(5, DIM)
    save_file(tensors, str(root / "text.safetensors"))
    _raises(root, "train_sent_emo.csv", "'train_1'", "'text'", "different lengths", feature_keys="dialogue")
    del tensors["train/1"]
    save_file(tensors, str(root / "text.safetensors"))
    _raises(root, "text.safetensors", "'train_1'", "'text'", "'train/1'", feature_keys="dialogue")

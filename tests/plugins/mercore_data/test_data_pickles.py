"""``iemocap_pickle`` / ``meld_pickle`` on fake pickles of exactly the standard layouts, and every bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from support import data_error
from mercore.data.safe_pickle import safe_load
from mercore_data.fake_pickles import write_fake_iemocap_pickle, write_fake_meld_pickle
from mercore_data.pickles import IemocapPickleConfig, IemocapPickleDataset, MeldPickleConfig, MeldPickleDataset

SMALL = {"text": 12, "audio": 10, "visual": 6}


def _iemocap(path: Path, **options):
    return IemocapPickleDataset(IemocapPickleConfig(path=str(path), **options)).load()


def _meld(path: Path, **options):
    return MeldPickleDataset(MeldPickleConfig(path=str(path), **options)).load()


def _raises(fn, path: Path, *needles: str, **options) -> str:
    return data_error(lambda: fn(path, **options), *needles)


def _tamper(path: Path, edit) -> Path:
    """Load a fake pickle as a list, let ``edit`` change it, write it back (protocol 2, like the originals)."""
    obj = list(safe_load(path))
    edit(obj)
    path.write_bytes(pickle.dumps(tuple(obj), protocol=2))
    return path


def test_iemocap_standard_layout_and_dims(tmp_path):
    path = write_fake_iemocap_pickle(tmp_path / "IEMOCAP_features.pkl", num_dialogues=10, seed=1, utterances=(3, 5), layout="sdt")
    corpus = _iemocap(path)
    assert corpus.name == "iemocap" and corpus.num_classes == 6
    assert corpus.modality_dims == {"text": 1024, "audio": 1582, "visual": 342}
    sizes = {s: len(v) for s, v in corpus.splits.items()}
    assert sizes == {"train": 7, "dev": 1, "test": 2}  # 8 train ids, int(0.1 * 8) -> at least 1 dev
    assert all(d.id.startswith("Ses05") for d in corpus.splits["test"])
    assert corpus.num_speakers == 2
    d = corpus.splits["train"][0]
    assert d.features["audio"].shape == (len(d), 1582) and d.speakers[0] == 0


def test_iemocap_dev_selection_seed_and_speaker_order(tmp_path):
    path = write_fake_iemocap_pickle(tmp_path / "f.pkl", num_dialogues=25, seed=2, dims=SMALL, layout="mmgcn")
    train_ids = sorted(safe_load(path)[7])
    head = _iemocap(path, dev_selection="head", dev_ratio=0.1)
    assert [d.id for d in head.splits["dev"]] == train_ids[:2]  # int(0.1 * 20) = 2, first in (sorted) order
    a, b = _iemocap(path, dev_seed=0), _iemocap(path, dev_seed=0)
    assert [d.id for d in a.splits["dev"]] == [d.id for d in b.splits["dev"]]
    seeds = {tuple(d.id for d in _iemocap(path, dev_seed=s).splits["dev"]) for s in range(5)}
    assert len(seeds) > 1
    raw_speakers = safe_load(path)[1]
    by_file = _iemocap(path, speaker_order="file", modalities=["text"])
    d = by_file.splits["test"][0]
    assert d.speakers.tolist() == [0 if s == "M" else 1 for s in raw_speakers[d.id]]


@pytest.mark.parametrize("variant, modalities", [("mmgcn", ["text", "audio", "visual"]),
                                                 ("dialoguegcn", ["text", "audio"]),
                                                 ("sdt", ["text", "audio", "visual"])])
def test_meld_layouts(tmp_path, variant, modalities):
    path = write_fake_meld_pickle(tmp_path / "meld.pkl", num_dialogues=10, seed=0, layout=variant,
                                  dims={"text": 600})
    corpus = _meld(path, modalities=modalities)
    assert corpus.label_names == ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    assert corpus.modality_dims == {m: {"text": 600, "audio": 300, "visual": 342}[m] for m in modalities}
    assert {s: len(v) for s, v in corpus.splits.items()} == {"train": 7, "dev": 1, "test": 2}
    raw = safe_load(path)
    d = corpus.splits["train"][0]
    first_seen: dict[int, int] = {}
    expected = [first_seen.setdefault(int(np.argmax(v)), len(first_seen)) for v in raw[1][int(d.id)]]
    assert d.speakers.tolist() == expected


def test_meld_sentiment_target_and_file_speaker_order(tmp_path):
    path = write_fake_meld_pickle(tmp_path / "meld.pkl", num_dialogues=6, dims=SMALL, layout="mmgcn")
    corpus = _meld(path, target="sentiment", speaker_order="file", modalities=["text"])
    raw = safe_load(path)
    d = corpus.splits["test"][0]
    assert corpus.label_names == ["neutral", "positive", "negative"]
    assert d.labels.tolist() == raw[9][int(d.id)]
    assert d.speakers.tolist() == [int(np.argmax(v)) for v in raw[1][int(d.id)]]


def test_dict_layout_with_validation_list_and_multiemo_feature_files(tmp_path):
    path = write_fake_iemocap_pickle(tmp_path / "f.pkl", num_dialogues=12, dims=SMALL, layout="mmgcn")
    items = safe_load(path)
    names = ["videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence",
             "trainVid", "testVid"]
    table = dict(zip(names, items))
    train = sorted(table["trainVid"])
    table["validVid"] = train[:3]
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps(table, protocol=4))
    # MultiEMO: features in their own {vid: (T, D)} pickle.
    text = {vid: np.asarray(v) * 2 for vid, v in table["videoText"].items()}
    (tmp_path / "TextFeatures.pkl").write_bytes(pickle.dumps(text, protocol=4))
    corpus = _iemocap(tmp_path / "dict.pkl", feature_files={"text": str(tmp_path / "TextFeatures.pkl")})
    assert [d.id for d in corpus.splits["dev"]] == train[:3]
    assert len(corpus.splits["train"]) == len(train) - 3
    d = corpus.splits["dev"][0]
    np.testing.assert_allclose(d.features["text"].numpy(), np.asarray(table["videoText"][d.id]) * 2)


# -- bad input ---------------------------------------------------------------------------------------------------

@pytest.fixture
def fake(tmp_path) -> Path:
    return write_fake_iemocap_pickle(tmp_path / "iemocap.pkl", num_dialogues=8, seed=3, dims=SMALL,
                                     utterances=(3, 6), layout="mmgcn")


def _some_train_id(path: Path) -> str:
    return sorted(safe_load(path)[7])[-1]


def test_missing_file(tmp_path):
    _raises(_iemocap, tmp_path / "absent.pkl", "absent.pkl", "not found")


def test_unknown_layout_and_missing_split(tmp_path, fake):
    (tmp_path / "five.pkl").write_bytes(pickle.dumps((1, 2, 3, 4, 5), protocol=2))
    _raises(_iemocap, tmp_path / "five.pkl", "five.pkl", "5 items")
    table = dict(zip(["videoIDs", "videoSpeakers", "videoLabels", "videoText"], safe_load(fake)[:4]))
    table["trainVid"] = ["x"]
    (tmp_path / "no_test.pkl").write_bytes(pickle.dumps(table, protocol=2))
    _raises(_iemocap, tmp_path / "no_test.pkl", "no_test.pkl", "'testVid'", "missing")
    _tamper(fake, lambda o: o.__setitem__(8, set()))
    _raises(_iemocap, fake, "iemocap.pkl", "'test'")


def test_requested_modality_missing(tmp_path):
    path = write_fake_meld_pickle(tmp_path / "meld.pkl", num_dialogues=5, dims=SMALL, layout="dialoguegcn")
    _raises(_meld, path, "meld.pkl", "'visual'", "does not have")
    _raises(_meld, path, "meld.pkl", "'depth'", modalities=["text", "depth"])


def test_wrong_dim_and_expected_dims(fake):
    vid = _some_train_id(fake)
    _raises(_iemocap, fake, "iemocap.pkl", "expected_dims", "'videoText'", expected_dims={"text": 1024})

    def edit(o):
        o[4][vid] = [np.zeros(11, np.float32) for _ in o[4][vid]]
    _tamper(fake, edit)
    _raises(_iemocap, fake, "iemocap.pkl", repr(vid), "'videoAudio'", "dim is 11")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite(fake, bad):
    vid = _some_train_id(fake)
    _tamper(fake, lambda o: o[5][vid][1].__setitem__(2, bad))
    _raises(_iemocap, fake, "iemocap.pkl", repr(vid), "'videoVisual'", "utterance 1, dim 2")


def test_label_outside_label_set(fake):
    vid = _some_train_id(fake)
    _tamper(fake, lambda o: o[2][vid].__setitem__(0, 6))
    _raises(_iemocap, fake, "iemocap.pkl", repr(vid), "'videoLabels'", "label 6")


def test_empty_dialogue_and_length_mismatch(fake, tmp_path):
    vid = _some_train_id(fake)

    def empty(o):
        for k in range(7):
            o[k][vid] = []
    _raises(_iemocap, _tamper(fake, empty), "iemocap.pkl", repr(vid), "empty")

    path = write_fake_iemocap_pickle(tmp_path / "b.pkl", num_dialogues=8, seed=3, dims=SMALL, utterances=(3, 6), layout="mmgcn")
    _tamper(path, lambda o: o[1][vid].pop())
    _raises(_iemocap, path, "b.pkl", repr(vid), "'videoSpeakers'", "different lengths")
    path = write_fake_iemocap_pickle(tmp_path / "c.pkl", num_dialogues=8, seed=3, dims=SMALL, utterances=(3, 6), layout="mmgcn")
    _tamper(path, lambda o: o[3][vid].pop())
    _raises(_iemocap, path, "c.pkl", repr(vid), "'videoText'", "different lengths")


def test_dialogue_missing_from_features_and_bad_speakers(fake, tmp_path):
    vid = _some_train_id(fake)
    _tamper(fake, lambda o: o[4].pop(vid))
    _raises(_iemocap, fake, "iemocap.pkl", repr(vid), "'videoAudio'", "missing")
    path = write_fake_iemocap_pickle(tmp_path / "b.pkl", num_dialogues=8, seed=3, dims=SMALL, utterances=(3, 6), layout="mmgcn")
    _tamper(path, lambda o: o[1][vid].__setitem__(0, "X"))
    _raises(_iemocap, path, "b.pkl", repr(vid), "'videoSpeakers'", "'X'", speaker_order="file")
    mpath = write_fake_meld_pickle(tmp_path / "m.pkl", num_dialogues=5, dims=SMALL, layout="mmgcn")
    _tamper(mpath, lambda o: o[1][0].__setitem__(0, [1.0, 1.0] + [0.0] * 7))
    _raises(_meld, mpath, "m.pkl", "'0'", "'videoSpeakers'", "one-hot")


def test_ragged_and_non_numeric_features(fake, tmp_path):
    vid = _some_train_id(fake)
    _tamper(fake, lambda o: o[3][vid].__setitem__(0, np.zeros(5, np.float32)))
    _raises(_iemocap, fake, "iemocap.pkl", repr(vid), "'videoText'", "different shapes")
    path = write_fake_iemocap_pickle(tmp_path / "b.pkl", num_dialogues=8, seed=3, dims=SMALL, utterances=(3, 6), layout="mmgcn")
    _tamper(path, lambda o: o[4].__setitem__(vid, ["not", "numbers"]))
    _raises(_iemocap, path, "b.pkl", repr(vid), "'videoAudio'", "not numeric")

"""Every public feature-pickle layout, by name: auto-detection, exact items, the text_file combination, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mercore.data.safe_pickle import safe_load
from mercore.errors import DataError
from mercore_data.fake_pickles import DIMS, write_fake_pickle
from mercore_data.pickles import (LAYOUTS, IemocapPickleConfig, IemocapPickleDataset, MeldPickleConfig,
                                  MeldPickleDataset, layouts_of)

READERS = {"iemocap": (IemocapPickleDataset, IemocapPickleConfig), "meld": (MeldPickleDataset, MeldPickleConfig)}
ALL = [(lay.corpus, lay.name) for lay in LAYOUTS]


def load(corpus: str, path: Path, **options):
    cls, cfg = READERS[corpus]
    return cls(cfg(path=str(path), **options)).load()


def multiemo_files(folder: Path) -> dict[str, str]:
    return {m: str(folder / f"{m.capitalize()}Features.pkl") for m in ("text", "audio", "visual")}


# -- the fakes are the public layouts ----------------------------------------------------------------------------

@pytest.mark.parametrize("corpus, layout", ALL)
def test_fake_has_the_layouts_items_types_and_dims(tmp_path, corpus, layout):
    path = write_fake_pickle(tmp_path / "f.pkl", corpus, layout, num_dialogues=6, utterances=(2, 3))
    obj = safe_load(path)
    lay = layouts_of(corpus)[layout]
    assert isinstance(obj, list if layout == "cosmic" else tuple) and len(obj) == len(lay.items)
    items = dict(zip(lay.items, obj))
    ids = {"iemocap": set, "meld": list}[corpus] if layout != "cosmic" else list
    for name, value in items.items():
        if name.startswith(("train", "test", "valid")):
            assert isinstance(value, ids), name
        else:
            assert isinstance(value, dict) and len(value) == 6, name
    feats = {"videoText": "text", "roberta1": "text", "videoAudio": "audio", "videoVisual": "visual"}
    inner = DIMS[(corpus, "mmgcn")] if layout == "multiemo" else DIMS[(corpus, layout)]
    for name, modality in feats.items():
        if name in items:
            first = next(iter(items[name].values()))
            assert np.asarray(first).shape[1] == inner[modality] and np.asarray(first).dtype == np.float32
    if layout == "multiemo":
        for m, file in multiemo_files(tmp_path).items():
            table = safe_load(Path(file))
            assert np.asarray(next(iter(table.values()))).shape[1] == DIMS[(corpus, layout)][m]


@pytest.mark.parametrize("corpus, layout", ALL)
def test_each_layout_loads_auto_detected_and_named(tmp_path, corpus, layout):
    path = write_fake_pickle(tmp_path / "f.pkl", corpus, layout, num_dialogues=10, utterances=(2, 3))
    modalities = sorted(DIMS[(corpus, layout)], key=["text", "audio", "visual"].index)
    extra = {"feature_files": multiemo_files(tmp_path)} if layout == "multiemo" else {}
    named = load(corpus, path, layout=layout, modalities=modalities, **extra)
    auto = load(corpus, path, modalities=modalities, **extra)  # multiemo: auto reads the same items as mmgcn
    assert named.modality_dims == auto.modality_dims == {m: DIMS[(corpus, layout)][m] for m in modalities}
    assert named.num_classes == (6 if corpus == "iemocap" else 7)
    for split in ("train", "dev", "test"):
        assert [d.id for d in named.splits[split]] == [d.id for d in auto.splits[split]]
    raw = dict(zip(layouts_of(corpus)[layout].items, safe_load(path)))
    if layout == "cosmic":  # the official validation list is the dev split
        assert [d.id for d in named.splits["dev"]] == [str(v) for v in raw["validIds"]]
        assert [d.id for d in named.splits["train"]] == [str(v) for v in raw["trainIds"]]
        assert [d.id for d in named.splits["test"]] == [str(v) for v in raw["testIds"]]
        vid = raw["validIds"][0]
        d = named.splits["dev"][0]
        np.testing.assert_array_equal(d.features["text"].numpy(), np.stack(raw["roberta1"][vid]))
        assert d.labels.tolist() == raw["labels" if corpus == "iemocap" else "emotion_labels"][vid]
    else:  # no validation list: dev carved out of trainVid
        train = {str(v) for v in raw["trainVid"]}
        assert {d.id for s in ("train", "dev") for d in named.splits[s]} == train
    if layout == "sdt":  # SDT's text is videoText (item 3), not roberta2..4
        d, vid = named.splits["test"][0], sorted(raw["testVid"])[0]
        assert d.id == str(vid)
        np.testing.assert_array_equal(d.features["text"].numpy(), np.stack(list(raw["videoText"][vid])))


def test_meld_cosmic_sentiment_target(tmp_path):
    path = write_fake_pickle(tmp_path / "m.pkl", "meld", "cosmic", num_dialogues=8)
    corpus = load("meld", path, modalities=["text"], target="sentiment")
    raw = safe_load(path)
    d = corpus.splits["train"][0]
    assert corpus.label_names == ["neutral", "positive", "negative"] and d.labels.tolist() == raw[2][raw[8][0]]


# -- text from the RoBERTa file, audio and visual from MMGCN's ---------------------------------------------------

@pytest.mark.parametrize("corpus", ["iemocap", "meld"])
def test_text_file_combination(tmp_path, corpus):
    main = write_fake_pickle(tmp_path / "mmgcn.pkl", corpus, "mmgcn", num_dialogues=12, seed=4, utterances=(2, 4))
    text = write_fake_pickle(tmp_path / "roberta.pkl", corpus, "cosmic", num_dialogues=12, seed=4, utterances=(2, 4))
    c = load(corpus, main, text_file=str(text), text_layout="cosmic")
    assert c.modality_dims == {"text": 1024, **{m: DIMS[(corpus, "mmgcn")][m] for m in ("audio", "visual")}}
    raw_text, raw_main = safe_load(text), dict(zip(layouts_of(corpus)["mmgcn"].items, safe_load(main)))
    lay = dict(zip(layouts_of(corpus)["cosmic"].items, raw_text))
    # the RoBERTa file's official validation list is the dev split
    assert [d.id for d in c.splits["dev"]] == [str(v) for v in lay["validIds"]]
    assert [d.id for d in c.splits["train"]] == [str(v) for v in lay["trainIds"]]
    d, vid = c.splits["train"][1], lay["trainIds"][1]
    np.testing.assert_array_equal(d.features["text"].numpy(), np.stack(lay["roberta1"][vid]))
    np.testing.assert_array_equal(d.features["audio"].numpy(), np.stack(list(raw_main["videoAudio"][vid])))


def _rewrite(path: Path, edit) -> None:
    obj = safe_load(path)
    edit(obj)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def test_text_file_disagreements_name_the_first_dialogue(tmp_path):
    main = write_fake_pickle(tmp_path / "mmgcn.pkl", "iemocap", "mmgcn", num_dialogues=12, seed=4)
    text = write_fake_pickle(tmp_path / "roberta.pkl", "iemocap", "cosmic", num_dialogues=12, seed=4)
    train_ids = safe_load(text)[7]
    victim = train_ids[2]

    def relabel(o):
        o[1][victim] = [(x + 1) % 6 for x in o[1][victim]]
    _rewrite(text, relabel)
    with pytest.raises(DataError) as info:
        load("iemocap", main, text_file=str(text))
    msg = str(info.value)
    assert f"disagree on dialogue {victim!r}: labels" in msg and "roberta.pkl (text_file)" in msg and "mmgcn.pkl" in msg

    text = write_fake_pickle(tmp_path / "roberta2.pkl", "iemocap", "cosmic", num_dialogues=12, seed=4)
    _rewrite(text, lambda o: o[0].__setitem__(victim, ["M" if s == "F" else "F" for s in o[0][victim]]))
    with pytest.raises(DataError, match=f"disagree on dialogue {victim!r}: speakers"):
        load("iemocap", main, text_file=str(text))

    text = write_fake_pickle(tmp_path / "roberta3.pkl", "iemocap", "cosmic", num_dialogues=12, seed=4)
    moved = safe_load(text)[8][0]  # a test dialogue listed as train in the text file

    def move(o):
        o[8].remove(moved)
        o[7].append(moved)
    _rewrite(text, move)
    with pytest.raises(DataError, match=f"disagree on dialogue {moved!r}: in the test dialogues of .*mmgcn.pkl"):
        load("iemocap", main, text_file=str(text))


# -- unknown, ambiguous, mismatched ------------------------------------------------------------------------------

def test_unknown_layout_lists_the_known_ones_with_their_items(tmp_path):
    (tmp_path / "seven.pkl").write_bytes(pickle.dumps([{}] * 7, protocol=2))
    with pytest.raises(DataError) as info:
        load("meld", tmp_path / "seven.pkl")
    msg = str(info.value)
    assert "seven.pkl: not a known MELD feature pickle layout: got a list of 7 items" in msg
    for lay in layouts_of("meld").values():
        assert f"{lay.name} ({len(lay.items)} items: {', '.join(lay.items)}" in msg


def test_named_layout_that_does_not_fit(tmp_path):
    path = write_fake_pickle(tmp_path / "sdt.pkl", "iemocap", "sdt", num_dialogues=6)
    with pytest.raises(DataError, match=r"sdt.pkl: layout 'cosmic' expects 10 items \(speakers, labels, roberta1.*got "
                                        r"a tuple of 12 items"):
        load("iemocap", path, layout="cosmic")
    # the right number of items in the wrong places (a COSMIC list with an id list where the speakers go)
    bad = list(safe_load(write_fake_pickle(tmp_path / "c.pkl", "iemocap", "cosmic", num_dialogues=6)))
    bad[0], bad[7] = bad[7], bad[0]
    (tmp_path / "shuffled.pkl").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="not a known IEMOCAP feature pickle layout: got a list of 10 items"):
        load("iemocap", tmp_path / "shuffled.pkl", modalities=["text"])


def test_multiemo_needs_feature_files(tmp_path):
    path = write_fake_pickle(tmp_path / "Speakers.pkl", "meld", "multiemo", num_dialogues=6)
    with pytest.raises(DataError, match="layout 'multiemo' holds no features: give feature_files for text, audio, visual"):
        load("meld", path, layout="multiemo")


def test_text_only_layout_refuses_audio(tmp_path):
    path = write_fake_pickle(tmp_path / "r.pkl", "iemocap", "cosmic", num_dialogues=6)
    with pytest.raises(DataError, match="'audio'"):
        load("iemocap", path)

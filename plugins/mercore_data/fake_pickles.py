"""Write feature pickles with exactly the public layouts (item order, container types, dims), random values.

The real MMGCN/SDT/COSMIC/MultiEMO pickles are hundreds of MB and not redistributable; tests use these fakes to
prove that the pickle readers and every recipe run unchanged on those layouts. See :mod:`mercore_data.pickles`
for the layouts. What is reproduced, per layout (from the authors' loaders and extraction scripts):

* ``mmgcn``, ``sdt``, ``dialoguegcn`` and ``multiemo`` (``Speakers.pkl``): a tuple; IEMOCAP ``trainVid``/
  ``testVid`` are ``set`` (sessions 1-4 / session 5), features lists of ``T`` float32 vectors; MELD ids are
  ints, ``trainVid``/``testVid`` lists, features ``(T, D)`` float32 arrays, speakers 9-dim one-hot lists.
* ``cosmic``: a *list* (COSMIC's script pickles a list), ids lists (``trainIds``, ``testIds``, ``validIds``),
  features lists of ``T`` float32 rows of 1024 (``roberta1..4``), labels ints, speakers as above.
* ``multiemo``: ``Speakers.pkl`` plus ``TextFeatures.pkl``/``AudioFeatures.pkl``/``VisualFeatures.pkl``
  (``{vid: (T, D)}``) in the same folder. MultiEMO's loader ignores items 0 and 3-6 of ``Speakers.pkl``;
  what they hold in the real file, and the real dims of its feature files, are not known here: the fake puts
  the MMGCN features there and uses the SDT dims for the feature files.

Dims default to the public files' (``DIMS``). The dialogues (ids, lengths, speakers, labels, splits) depend only
on ``corpus``, ``num_dialogues``, ``seed`` and ``utterances``, not on the layout, so two fakes written with the
same arguments agree as COSMIC's and MMGCN's files do (``text_file``). Written with pickle protocol 2, as the
Python 2-era originals were (so ``set`` is stored as ``__builtin__.set``, exercising the restricted unpickler).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

#: (corpus, layout) -> the feature dims of the public file (``text`` of cosmic = roberta1..4).
DIMS: dict[tuple[str, str], dict[str, int]] = {
    ("iemocap", "mmgcn"): {"text": 100, "audio": 1582, "visual": 342},
    ("iemocap", "sdt"): {"text": 1024, "audio": 1582, "visual": 342},
    ("iemocap", "cosmic"): {"text": 1024},
    ("iemocap", "multiemo"): {"text": 1024, "audio": 1582, "visual": 342},
    ("meld", "mmgcn"): {"text": 600, "audio": 300, "visual": 342},
    ("meld", "dialoguegcn"): {"text": 600, "audio": 300},
    ("meld", "sdt"): {"text": 1024, "audio": 300, "visual": 342},
    ("meld", "cosmic"): {"text": 1024},
    ("meld", "multiemo"): {"text": 1024, "audio": 300, "visual": 342},
}
#: The dims the shipped multimodal recipes expect (SDT's files).
IEMOCAP_DIMS = DIMS[("iemocap", "sdt")]
MELD_DIMS = DIMS[("meld", "sdt")]
_UTTERANCES = {"iemocap": (4, 12), "meld": (2, 10)}


def _dialogues(corpus: str, num_dialogues: int, seed: int, utterances: tuple[int, int]) -> dict[str, Any]:
    """The layout-independent part: ids, lengths, speakers, labels, sentiments, splits (train/valid/test)."""
    if num_dialogues < 3:
        raise ValueError("num_dialogues must be at least 3 (train, dev and test each need one)")
    lo, hi = utterances
    if not 1 <= lo <= hi:
        raise ValueError(f"utterances must be (min, max) with 1 <= min <= max, got {utterances}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi + 1, size=num_dialogues).tolist()
    n_test = max(1, num_dialogues // 5)
    n_valid = max(1, (num_dialogues - n_test) // 10)
    d: dict[str, Any] = {"ids": [], "lengths": {}, "utt_ids": {}, "speakers": {}, "labels": {}, "sentiments": {},
                         "sentences": {}, "train": [], "valid": [], "test": []}
    for i, T in enumerate(lengths):
        is_test = i >= num_dialogues - n_test
        if corpus == "iemocap":
            session = 5 if is_test else 1 + i % 4  # the last fifth is session 5 = test, as in the real split
            vid: Any = f"Ses0{session}{'FM'[i % 2]}_impro{i:02d}"
            speakers: list = [("F", "M")[int(b)] for b in rng.integers(0, 2, size=T)]
            d["utt_ids"][vid] = [f"{vid}_{s}{j:03d}" for j, s in enumerate(speakers)]
            labels = rng.integers(0, 6, size=T).tolist()
        else:
            vid = i
            n_spk = int(rng.integers(1, 5))
            speakers = [[1.0 if k == w else 0.0 for k in range(9)] for w in rng.integers(0, n_spk, size=T)]
            d["utt_ids"][vid] = list(range(T))
            labels = rng.integers(0, 7, size=T).tolist()
        d["ids"].append(vid)
        d["lengths"][vid] = T
        d["speakers"][vid] = speakers
        d["labels"][vid] = labels
        d["sentiments"][vid] = rng.integers(0, 3, size=T).tolist()
        d["sentences"][vid] = [f"utterance {j} of {vid}" for j in range(T)]
        split = "test" if is_test else ("valid" if i >= num_dialogues - n_test - n_valid else "train")
        d[split].append(vid)
    return d


def _features(d: dict[str, Any], dims: dict[str, int], seed: int, as_rows: bool) -> dict[str, dict]:
    rng = np.random.default_rng(seed + 7919)
    out: dict[str, dict] = {m: {} for m in dims}
    for vid in d["ids"]:
        for m, dim in dims.items():
            x = rng.standard_normal((d["lengths"][vid], dim), dtype=np.float32)
            out[m][vid] = list(x) if as_rows else x
    return out


def write_fake_pickle(
    path: str | os.PathLike[str],
    corpus: str,
    layout: str,
    num_dialogues: int = 12,
    seed: int = 0,
    *,
    utterances: tuple[int, int] | None = None,
    dims: dict[str, int] | None = None,
) -> Path:
    """Write a fake ``corpus`` (``iemocap``/``meld``) pickle of ``layout`` (a name of :data:`DIMS`) to ``path``.

    ``dims`` overrides some of the layout's feature dims (tests use tiny ones). For ``multiemo`` the three
    feature files are written beside ``path``. Returns ``path``.
    """
    if (corpus, layout) not in DIMS:
        raise ValueError(f"unknown {corpus} layout {layout!r} (known: {sorted(lay for c, lay in DIMS if c == corpus)})")
    d = _dialogues(corpus, num_dialogues, seed, utterances or _UTTERANCES[corpus])
    dims = {**DIMS[(corpus, layout)], **{k: v for k, v in (dims or {}).items() if k in DIMS[(corpus, layout)]}}
    iemocap = corpus == "iemocap"
    train_all = d["train"] + d["valid"]  # MMGCN/SDT files have no validation list: dev is inside trainVid
    if iemocap:
        trainvid: Any = set(train_all)
        testvid: Any = set(d["test"])
    else:
        trainvid, testvid = sorted(train_all), list(d["test"])
    head = (d["utt_ids"], d["speakers"], d["labels"])
    obj: Any
    if layout == "cosmic":
        f = _features(d, {"text": dims["text"]}, seed, as_rows=True)
        rng = np.random.default_rng(seed + 104729)
        layers = [f["text"]] + [{v: [r + np.float32(rng.standard_normal()) for r in rows] for v, rows in f["text"].items()}
                                for _ in range(3)]
        labels = [d["labels"], d["sentiments"]] if not iemocap else [d["labels"]]
        obj = [d["speakers"], *labels, *layers, d["sentences"], list(d["train"]), list(d["test"]), list(d["valid"])]
    elif layout == "sdt":
        f = _features(d, dims, seed, as_rows=iemocap)
        extra = _features(d, {"r2": dims["text"], "r3": dims["text"], "r4": dims["text"]}, seed + 1, as_rows=iemocap)
        obj = (*head, f["text"], extra["r2"], extra["r3"], extra["r4"], f["audio"], f["visual"], d["sentences"],
               trainvid, testvid) + (() if iemocap else (d["sentiments"],))
    elif layout == "dialoguegcn":
        f = _features(d, dims, seed, as_rows=False)
        obj = (*head, f["text"], f["audio"], d["sentences"], trainvid, testvid, d["sentiments"])
    else:  # mmgcn, multiemo (Speakers.pkl has the mmgcn items)
        inner = DIMS[(corpus, "mmgcn")] if layout == "multiemo" else dims
        f = _features(d, inner, seed, as_rows=iemocap)
        obj = (*head, f["text"], f["audio"], f["visual"], d["sentences"], trainvid, testvid) + (
            () if iemocap else (d["sentiments"],))
        if layout == "multiemo":
            files = _features(d, dims, seed + 2, as_rows=False)
            for m, name in (("text", "TextFeatures.pkl"), ("audio", "AudioFeatures.pkl"), ("visual", "VisualFeatures.pkl")):
                _dump(Path(path).parent / name, files[m])
    return _dump(path, obj)


def write_fake_iemocap_pickle(path: str | os.PathLike[str], num_dialogues: int = 12, seed: int = 0, *,
                              layout: str = "sdt", utterances: tuple[int, int] = (4, 12),
                              dims: dict[str, int] | None = None) -> Path:
    """An IEMOCAP pickle of ``layout`` (default SDT's 12 items, text 1024 / audio 1582 / visual 342).

    Dialogue ids look like ``Ses01F_impro00``; sessions 1-4 train, session 5 (the last fifth) test; speakers
    ``'M'``/``'F'``, labels ints 0..5. See :func:`write_fake_pickle`.
    """
    return write_fake_pickle(path, "iemocap", layout, num_dialogues, seed, utterances=utterances, dims=dims)


def write_fake_meld_pickle(path: str | os.PathLike[str], num_dialogues: int = 12, seed: int = 0, *,
                           layout: str = "sdt", utterances: tuple[int, int] = (2, 10),
                           dims: dict[str, int] | None = None) -> Path:
    """A MELD pickle of ``layout`` (default SDT's 13 items, text 1024 / audio 300 / visual 342).

    Dialogue ids are ints (train, then test, as in the real files); speakers 9-dim one-hot lists, labels ints
    0..6, sentiments ints 0..2. See :func:`write_fake_pickle`.
    """
    return write_fake_pickle(path, "meld", layout, num_dialogues, seed, utterances=utterances, dims=dims)


def _dump(path: str | os.PathLike[str], obj: object) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return p

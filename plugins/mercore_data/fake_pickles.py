"""Write feature pickles with exactly the standard layouts and shapes, filled with random numbers.

The real MMGCN/SDT/MultiEMO pickles are hundreds of MB and not redistributable; tests use these fakes to prove
that the pickle readers and every recipe run unchanged on those layouts. See :mod:`mercore_data.pickles` for
the layouts. Written with pickle protocol 2, as the Python 2-era originals were (so ``set`` is stored as the
global ``__builtin__.set``, exercising the restricted unpickler's name mapping).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Literal

import numpy as np

#: Feature dims of the public files.
IEMOCAP_DIMS = {"text": 1024, "audio": 1582, "visual": 342}
MELD_DIMS = {"text": 1024, "audio": 300, "visual": 342}


def _lengths(rng: np.random.Generator, n: int, utterances: tuple[int, int]) -> list[int]:
    lo, hi = utterances
    if not 1 <= lo <= hi:
        raise ValueError(f"utterances must be (min, max) with 1 <= min <= max, got {utterances}")
    return rng.integers(lo, hi + 1, size=n).tolist()


def write_fake_iemocap_pickle(
    path: str | os.PathLike[str],
    num_dialogues: int = 12,
    seed: int = 0,
    *,
    utterances: tuple[int, int] = (4, 12),
    dims: dict[str, int] | None = None,
) -> Path:
    """Write an IEMOCAP pickle: the 9-tuple ``videoIDs, videoSpeakers, videoLabels, videoText, videoAudio,
    videoVisual, videoSentence, trainVid, testVid``.

    Dialogue ids look like ``Ses01F_impro00``; sessions 1-4 go to ``trainVid``, session 5 to ``testVid`` (both
    ``set``), as in the real file. Per dialogue of ``T`` utterances: speakers ``'M'``/``'F'``, labels ints
    0..5, features lists of ``T`` float32 vectors of ``dims`` (default text 1024 / audio 1582 / visual 342).
    """
    if num_dialogues < 3:
        raise ValueError("num_dialogues must be at least 3 (train, dev and test each need one)")
    dims = {**IEMOCAP_DIMS, **(dims or {})}
    rng = np.random.default_rng(seed)
    ids, spk, lab, txt, aud, vis, sent = {}, {}, {}, {}, {}, {}, {}
    train, test = set(), set()
    for i, T in enumerate(_lengths(rng, num_dialogues, utterances)):
        # the last fifth (at least one) of the dialogues is session 5 = test
        session = 5 if i >= num_dialogues - max(1, num_dialogues // 5) else 1 + i % 4
        vid = f"Ses0{session}{'FM'[i % 2]}_impro{i:02d}"
        speakers = [("F", "M")[int(b)] for b in rng.integers(0, 2, size=T)]
        ids[vid] = [f"{vid}_{s}{j:03d}" for j, s in enumerate(speakers)]
        spk[vid] = speakers
        lab[vid] = rng.integers(0, 6, size=T).tolist()
        txt[vid] = list(rng.standard_normal((T, dims["text"]), dtype=np.float32))
        aud[vid] = list(rng.standard_normal((T, dims["audio"]), dtype=np.float32))
        vis[vid] = list(rng.standard_normal((T, dims["visual"]), dtype=np.float32))
        sent[vid] = [f"utterance {j} of {vid}" for j in range(T)]
        (test if session == 5 else train).add(vid)
    return _dump(path, (ids, spk, lab, txt, aud, vis, sent, train, test))


def write_fake_meld_pickle(
    path: str | os.PathLike[str],
    num_dialogues: int = 12,
    seed: int = 0,
    *,
    utterances: tuple[int, int] = (2, 10),
    dims: dict[str, int] | None = None,
    variant: Literal["sdt", "dialoguegcn", "roberta"] = "sdt",
    max_speakers: int = 9,
) -> Path:
    """Write a MELD pickle.

    ``variant`` picks the layout: ``"sdt"`` the 10-tuple ``videoIDs, videoSpeakers, videoLabels, videoText,
    videoAudio, videoVisual, videoSentence, trainVid, testVid, videoSentiments`` (MMGCN/SDT/MultiEMO);
    ``"dialoguegcn"`` the 9-tuple without ``videoVisual``; ``"roberta"`` the 13-tuple with ``roberta1..4`` in
    place of ``videoText``. Dialogue ids are ints; ``trainVid``/``testVid`` lists (train then test, as the real
    file). Per dialogue of ``T``: speakers as 9-dim one-hot lists, labels ints 0..6, sentiments ints 0..2,
    features ``(T, D)`` float32 arrays of ``dims`` (default text 1024 / audio 300 / visual 342).
    """
    if num_dialogues < 3:
        raise ValueError("num_dialogues must be at least 3 (train, dev and test each need one)")
    dims = {**MELD_DIMS, **(dims or {})}
    rng = np.random.default_rng(seed)
    ids, spk, lab, txt, aud, vis, sent, senti = {}, {}, {}, {}, {}, {}, {}, {}
    n_test = max(1, num_dialogues // 5)
    for vid, T in enumerate(_lengths(rng, num_dialogues, utterances)):
        n_spk = int(rng.integers(1, min(max_speakers, 4) + 1))
        who = rng.integers(0, n_spk, size=T)
        ids[vid] = list(range(T))
        spk[vid] = [[1.0 if k == w else 0.0 for k in range(9)] for w in who]
        lab[vid] = rng.integers(0, 7, size=T).tolist()
        senti[vid] = rng.integers(0, 3, size=T).tolist()
        txt[vid] = rng.standard_normal((T, dims["text"]), dtype=np.float32)
        aud[vid] = rng.standard_normal((T, dims["audio"]), dtype=np.float32)
        vis[vid] = rng.standard_normal((T, dims["visual"]), dtype=np.float32)
        sent[vid] = [f"utterance {j} of dialogue {vid}" for j in range(T)]
    train = list(range(num_dialogues - n_test))
    test = list(range(num_dialogues - n_test, num_dialogues))
    if variant == "sdt":
        obj: tuple = (ids, spk, lab, txt, aud, vis, sent, train, test, senti)
    elif variant == "dialoguegcn":
        obj = (ids, spk, lab, txt, aud, sent, train, test, senti)
    elif variant == "roberta":
        layers = [txt] + [{k: v + np.float32(0.01 * i) for k, v in txt.items()} for i in (1, 2, 3)]
        obj = (ids, spk, lab, *layers, aud, vis, sent, train, test, senti)
    else:
        raise ValueError(f"unknown MELD pickle variant {variant!r} (sdt, dialoguegcn, roberta)")
    return _dump(path, obj)


def _dump(path: str | os.PathLike[str], obj: object) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return p

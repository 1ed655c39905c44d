"""The ``iemocap_pickle`` and ``meld_pickle`` datasets: the feature pickles of MMGCN, SDT, MultiEMO, DialogueGCN.

Layouts read (all unpickled through :mod:`mercore.data.safe_pickle`, ``encoding='latin1'``). Every item except
the id lists is a dict keyed by dialogue id (IEMOCAP: ``'Ses01F_impro01'``; MELD: ints ``0..1432``):

IEMOCAP, a 9-item tuple/list (MMGCN ``IEMOCAP_features.pkl``, SDT ``iemocap_multimodal_features.pkl``,
MultiEMO ``Speakers.pkl``)::

    videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid

MELD, a tuple/list of
  * 10 items (MMGCN ``MELD_features_raw1.pkl``, SDT ``meld_multimodal_features.pkl``, MultiEMO ``Speakers.pkl``)::

        videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid,
        videoSentiments

  * 9 items, no visual (DialogueGCN ``MELD_features_raw.pkl``)::

        videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoSentence, trainVid, testVid, videoSentiments

  * 13 items, four RoBERTa layers (MM-DFN-style ``meld_features_roberta``; ``text`` = the first)::

        videoIDs, videoSpeakers, videoLabels, roberta1, roberta2, roberta3, roberta4, videoAudio, videoVisual,
        videoSentence, trainVid, testVid, videoSentiments

Either corpus may also be a dict holding those names as keys, optionally with a validation list under
``validVid``/``devVid``/``valVid``. Per dialogue: ``videoSpeakers[vid]`` is a list of ``'M'``/``'F'`` (IEMOCAP)
or of 9-dim one-hot vectors (MELD); ``videoLabels[vid]`` a list of class ints (IEMOCAP ``hap, sad, neu, ang,
exc, fru``; MELD ``neutral, surprise, fear, sadness, joy, disgust, anger``; MELD sentiment ``neutral, positive,
negative``); features ``videoText[vid]`` etc. a ``(T, D)`` array or a list of ``T`` vectors ``(D,)``. Usual dims:
IEMOCAP text 1024 (RoBERTa; 100 in MMGCN's CNN version) / audio 1582 / visual 342; MELD text 1024 (600 in
MMGCN's) / audio 300 / visual 342. The dims are not fixed: they must only agree across dialogues (and with
``expected_dims`` when set).

``feature_files`` reads a modality from a separate pickle ``{vid: (T, D)}`` instead, as MultiEMO ships
``TextFeatures.pkl``/``AudioFeatures.pkl``/``VisualFeatures.pkl`` beside ``Speakers.pkl``.

The dev split: the file's validation list when it has one; otherwise ``int(dev_ratio * len(trainVid))``
dialogues of ``trainVid`` (``dev_ratio=0.1`` as MMGCN/SDT), picked by a permutation seeded with ``dev_seed``
(``dev_selection: random``) or the first ones in file order (``head``, exactly MMGCN/SDT's
``get_train_valid_sampler``). Id sets (unordered in the file) are sorted first so both are deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from mercore.config import option
from mercore.data import checks
from mercore.data.safe_pickle import safe_load
from mercore.data.types import Corpus, Dialogue
from mercore.errors import DataError
from mercore_data.labels import IEMOCAP_LABELS, MELD_LABELS, MELD_SENTIMENTS

_IEMOCAP_9 = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
              "videoSentence", "trainVid", "testVid")
_MELD_10 = _IEMOCAP_9 + ("videoSentiments",)
_MELD_9 = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoSentence", "trainVid",
           "testVid", "videoSentiments")
_MELD_13 = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "roberta2", "roberta3", "roberta4",
            "videoAudio", "videoVisual", "videoSentence", "trainVid", "testVid", "videoSentiments")
_POSITIONAL = {"iemocap": {9: _IEMOCAP_9}, "meld": {10: _MELD_10, 9: _MELD_9, 13: _MELD_13}}
#: modality -> the pickle's key for it.
_MODALITY_KEYS = {"text": "videoText", "audio": "videoAudio", "visual": "videoVisual"}
_DEV_KEYS = ("validVid", "devVid", "valVid")


@attrs.define
class _PickleConfig:
    """Options both pickle readers share."""

    path: str = option(help="the feature pickle (e.g. iemocap_multimodal_features.pkl, MELD_features_raw1.pkl)")
    modalities: list[str] = option(factory=lambda: ["text", "audio", "visual"],
                                   help="modalities to load: text, audio, visual (or a feature_files key)")
    feature_files: dict[str, str] = option(
        factory=dict, help="modality -> separate pickle {dialogue id: (T, D)} (MultiEMO's TextFeatures.pkl ...)")
    dev_ratio: float = option(0.1, help="fraction of trainVid held out as dev when the file has no validation list")
    dev_seed: int = option(0, help="seed of the dev carve-out")
    dev_selection: Literal["random", "head"] = option(
        "random", help="random: seeded permutation; head: the first ones in file order (MMGCN/SDT)")
    speaker_order: Literal["appearance", "file"] = option(
        "appearance", help="appearance: per-dialogue order of first appearance; file: the file's ids "
                           "(IEMOCAP M=0, F=1 as SDT; MELD the one-hot position)")
    num_speakers: int | None = option(
        None, help="speaker-table size; default: enough for every dialogue. Higher ids are clipped to the last")
    expected_dims: dict[str, int] | None = option(None, help="modality -> feature dim every dialogue must have")

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.dev_ratio < 1.0:
            raise ValueError(f"dev_ratio must be in [0, 1), got {self.dev_ratio}")


@attrs.define
class IemocapPickleConfig(_PickleConfig):
    """Options of ``iemocap_pickle``."""


@attrs.define
class MeldPickleConfig(_PickleConfig):
    """Options of ``meld_pickle``."""

    target: Literal["emotion", "sentiment"] = option(
        "emotion", help="emotion: videoLabels (7 classes); sentiment: videoSentiments (neutral/positive/negative)")


class _PickleDataset:
    corpus: str = ""
    default_labels: list[str] = []

    def __init__(self, config: Any, **_: Any):
        self.config = config

    # -- hooks the two corpora differ in --------------------------------------------------------------
    def _fixed_speakers(self) -> dict | None:
        """Speaker name -> index for ``speaker_order: file`` (None: one-hot positions are the ids)."""
        return None

    def _label_key(self) -> str:
        return "videoLabels"

    def _label_names(self) -> list[str]:
        return list(self.default_labels)

    # -- reading ----------------------------------------------------------------------------------------------
    def load(self) -> Corpus:
        cfg = self.config
        path = checks.require_file(checks.resolve_path(cfg.path), f"{self.corpus.upper()} feature pickle")
        tables = self._tables(path)
        sources: dict[str, tuple[Path, dict]] = {}
        available = [m for m, k in _MODALITY_KEYS.items() if k in tables] + [m for m in cfg.feature_files
                                                                             if m not in _MODALITY_KEYS]
        for m, file in cfg.feature_files.items():
            fpath = checks.require_file(checks.resolve_path(file), f"{m!r} feature pickle")
            table = safe_load(fpath)
            if not isinstance(table, dict):
                raise checks.error(fpath, None, m, f"expected a dict {{dialogue id: features}}, got {type(table).__name__}")
            sources[m] = (fpath, table)
            if m not in available:
                available.append(m)
        checks.check_modalities(cfg.modalities, available, path)
        for m in cfg.modalities:
            if m not in sources:
                sources[m] = (path, tables[_MODALITY_KEYS[m]])

        train_ids = _id_list(tables, "trainVid", path)
        test_ids = _id_list(tables, "testVid", path)
        dev_key = next((k for k in _DEV_KEYS if k in tables), None)
        if dev_key is not None:
            dev_ids = _id_list(tables, dev_key, path)
            dev_set = set(dev_ids)
            train_ids = [v for v in train_ids if v not in dev_set]  # some files list dev inside trainVid too
        else:
            train_ids, dev_ids = checks.carve_dev(train_ids, cfg.dev_ratio, cfg.dev_seed, cfg.dev_selection, str(path))

        label_key = self._label_key()
        label_names = self._label_names()
        fixed = self._fixed_speakers() if cfg.speaker_order == "file" else None
        dims = checks.DimTracker(cfg.expected_dims)
        splits: dict[str, list[Dialogue]] = {}
        for split, ids in (("train", train_ids), ("dev", dev_ids), ("test", test_ids)):
            splits[split] = [self._dialogue(vid, tables, sources, label_key, label_names, fixed, dims, path)
                             for vid in ids]
        checks.require_splits(splits, str(path))
        num_speakers = checks.finalize_speakers(splits, cfg.num_speakers, str(path))
        return Corpus(name=self.corpus, label_names=label_names,
                      modality_dims={m: dims.dims[m] for m in cfg.modalities}, num_speakers=num_speakers,
                      splits=splits, source=str(path))

    def _tables(self, path: Path) -> dict[str, Any]:
        """Name the items of the unpickled object by the layouts in the module docstring."""
        obj = safe_load(path)
        if isinstance(obj, dict) and "videoLabels" in obj:
            tables = dict(obj)
        elif isinstance(obj, (tuple, list)) and len(obj) in _POSITIONAL[self.corpus]:
            names = _POSITIONAL[self.corpus][len(obj)]
            tables = dict(zip(names, obj))
        else:
            shape = f"a {type(obj).__name__} of {len(obj)} items" if isinstance(obj, (tuple, list, dict)) else type(obj).__name__
            known = " or ".join(f"{n} items" for n in _POSITIONAL[self.corpus])
            raise DataError(f"{path}: not a known {self.corpus.upper()} feature pickle layout: got {shape}; expected a "
                            f"tuple of {known}, or a dict with 'videoLabels' (see the {type(self).__name__} docs)")
        if "videoText" not in tables and "roberta1" in tables:  # a dict re-export of the RoBERTa layout
            tables["videoText"] = tables["roberta1"]
        for key in ("videoSpeakers", self._label_key(), "trainVid", "testVid"):
            if key not in tables:
                raise checks.error(path, None, key, "missing from the pickle")
        for key, value in tables.items():
            if key.startswith("video") and not isinstance(value, dict):
                raise checks.error(path, None, key, f"expected a dict keyed by dialogue id, got {type(value).__name__}")
        return tables

    def _dialogue(self, vid: Any, tables: dict[str, Any], sources: dict[str, tuple[Path, dict]], label_key: str,
                  label_names: list[str], fixed: dict | None, dims: checks.DimTracker, path: Path) -> Dialogue:
        for key in (label_key, "videoSpeakers"):
            if vid not in tables[key]:
                raise checks.error(path, vid, key, "dialogue id (listed in the split lists) has no entry")
        labels = checks.encode_labels(tables[label_key][vid], label_names, file=path, dialogue_id=vid, field=label_key)
        speakers = checks.speaker_indices(tables["videoSpeakers"][vid], file=path, dialogue_id=vid,
                                          field="videoSpeakers", order=self.config.speaker_order, names=fixed)
        feats: dict[str, torch.Tensor] = {}
        fields = {"labels": label_key, "speakers": "videoSpeakers"}
        for m in self.config.modalities:
            fpath, table = sources[m]
            key = _MODALITY_KEYS.get(m, m) if fpath == path else m
            fields[m] = key
            if vid not in table:
                raise checks.error(fpath, vid, key, f"dialogue id is missing from the {m} features")
            feats[m] = checks.as_feature_matrix(table[vid], file=fpath, dialogue_id=vid, field=key)
            dims.check(m, feats[m], file=fpath, dialogue_id=vid, field=key)
        return checks.make_dialogue(vid, features=feats, speakers=speakers, labels=labels, file=path, fields=fields)


def _id_list(tables: dict[str, Any], key: str, path: Path) -> list[Any]:
    ids = tables.get(key)
    if isinstance(ids, (set, frozenset)):
        return sorted(ids, key=lambda v: (str(type(v)), v))  # set order varies with PYTHONHASHSEED
    if isinstance(ids, dict):
        return list(ids)
    try:
        return list(ids)  # list, tuple, numpy array
    except TypeError:
        raise checks.error(path, None, key, f"expected a list of dialogue ids, got {type(ids).__name__}") from None


class IemocapPickleDataset(_PickleDataset):
    """IEMOCAP from the MMGCN/SDT/MultiEMO feature pickle (6 classes; speakers 'M'/'F').

    Reads (through the restricted unpickler, ``encoding='latin1'``) the 9-tuple ``videoIDs, videoSpeakers,
    videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid`` of MMGCN's
    ``IEMOCAP_features.pkl``, SDT's ``iemocap_multimodal_features.pkl`` and MultiEMO's ``Speakers.pkl``, or a
    dict with those keys (plus an optional ``validVid``/``devVid``/``valVid``). Items are dicts keyed by dialogue
    id (``'Ses01F_impro01'``): speakers ``'M'``/``'F'``, labels ints ``hap, sad, neu, ang, exc, fru``, features
    ``(T, D)`` or ``T`` vectors ``(D,)`` (usually text 1024 / audio 1582 / visual 342; they need only agree across
    dialogues). ``feature_files`` takes a modality from a separate ``{vid: (T, D)}`` pickle (MultiEMO). Dev:
    the validation list if any, else ``int(dev_ratio * len(trainVid))`` train dialogues (seeded, or the first
    ones with ``dev_selection: head`` as MMGCN/SDT). Full details: :mod:`mercore_data.pickles`.
    """

    Config = IemocapPickleConfig
    corpus = "iemocap"
    default_labels = IEMOCAP_LABELS

    def _fixed_speakers(self) -> dict:
        return {"M": 0, "F": 1}  # SDT/MMGCN one-hot: [1, 0] for M, [0, 1] for F


class MeldPickleDataset(_PickleDataset):
    """MELD from the MMGCN/SDT/MultiEMO/DialogueGCN feature pickle (7 emotions or 3 sentiments; one-hot speakers).

    Reads (through the restricted unpickler, ``encoding='latin1'``) the 10-tuple ``videoIDs, videoSpeakers,
    videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid, videoSentiments`` (MMGCN
    ``MELD_features_raw1.pkl``, SDT ``meld_multimodal_features.pkl``, MultiEMO ``Speakers.pkl``), the 9-tuple
    without ``videoVisual`` (DialogueGCN ``MELD_features_raw.pkl``), the 13-tuple with ``roberta1..4`` in place
    of ``videoText`` (text = ``roberta1``), or a dict with those keys (plus an optional ``validVid``). Items are
    dicts keyed by int dialogue id: speakers 9-dim one-hot vectors, labels ints ``neutral, surprise, fear,
    sadness, joy, disgust, anger`` (``target: sentiment``: ``videoSentiments``, ``neutral, positive,
    negative``), features ``(T, D)`` (usually text 1024 or 600 / audio 300 / visual 342). Dev as in
    ``iemocap_pickle``. Full details: :mod:`mercore_data.pickles`.
    """

    Config = MeldPickleConfig
    corpus = "meld"
    default_labels = MELD_LABELS

    def _label_key(self) -> str:
        return "videoSentiments" if self.config.target == "sentiment" else "videoLabels"

    def _label_names(self) -> list[str]:
        return list(MELD_SENTIMENTS if self.config.target == "sentiment" else MELD_LABELS)

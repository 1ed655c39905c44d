"""The ``iemocap_pickle`` and ``meld_pickle`` datasets: the public feature pickles of MERC, by layout name.

Every file is unpickled through :mod:`mercore.data.safe_pickle` (``encoding='latin1'``) and is a tuple or list
of items; the per-dialogue items are dicts keyed by dialogue id (IEMOCAP ``'Ses01F_impro01'``, MELD ints),
the split items are collections of ids. ``layout:`` names the item order (``auto``: by the number of items,
which differs between the layouts of one corpus). The layouts, with the item names their authors' loaders
give them (``LAYOUTS`` below holds the same table):

=============  ======  ====  =====================================================================================
layout         corpus  n     items (file as its authors ship it)
=============  ======  ====  =====================================================================================
``mmgcn``      IEMOCAP 9     videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual,
                             videoSentence, trainVid, testVid  (MMGCN ``IEMOCAP_features.pkl``; text 100-d)
``sdt``        IEMOCAP 12    videoIDs, videoSpeakers, videoLabels, videoText, roberta2, roberta3, roberta4,
                             videoAudio, videoVisual, videoSentence, trainVid, testVid
                             (SDT ``iemocap_multimodal_features.pkl``; text 1024 / audio 1582 / visual 342)
``cosmic``     IEMOCAP 10    speakers, labels, roberta1, roberta2, roberta3, roberta4, sentences, trainIds,
                             testIds, validIds  (COSMIC ``iemocap_features_roberta.pkl``; text only, 1024-d)
``multiemo``   IEMOCAP 9     the ``mmgcn`` items (MultiEMO ``Speakers.pkl``); the features come from
                             ``feature_files`` (``TextFeatures.pkl``/``AudioFeatures.pkl``/``VisualFeatures.pkl``)
``mmgcn``      MELD    10    videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual,
                             videoSentence, trainVid, testVid, videoSentiments  (MMGCN ``MELD_features_raw1.pkl``;
                             text 600 / audio 300 / visual 342)
``dialoguegcn`` MELD   9     videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoSentence, trainVid,
                             testVid, videoSentiments  (DialogueGCN ``MELD_features_raw.pkl``; no visual)
``sdt``        MELD    13    videoIDs, videoSpeakers, videoLabels, videoText, roberta2, roberta3, roberta4,
                             videoAudio, videoVisual, videoSentence, trainVid, testVid, videoSentiments
                             (SDT ``meld_multimodal_features.pkl``; text 1024 / audio 300 / visual 342)
``cosmic``     MELD    11    speakers, emotion_labels, sentiment_labels, roberta1, roberta2, roberta3, roberta4,
                             sentences, trainIds, testIds, validIds  (COSMIC ``meld_features_roberta.pkl``)
``multiemo``   MELD    10    the MELD ``mmgcn`` items (MultiEMO ``Speakers.pkl``); features from ``feature_files``
=============  ======  ====  =====================================================================================

The last MELD item of ``dialoguegcn`` is the sentiment labels (DialogueGCN's loader reads it as
``videoLabelsSentiment``); MMGCN's and SDT's loaders discard their last item (``_``). It is read here as the
sentiment labels, and only with ``target: sentiment``. ``multiemo`` has
the same items as ``mmgcn``, so ``auto`` reads MultiEMO's ``Speakers.pkl`` as ``mmgcn``; naming ``multiemo``
makes ``feature_files`` required for every modality. The text of ``sdt`` is ``videoText`` (SDT's loader feeds
it, not roberta2..4), of ``cosmic`` ``roberta1`` (the last RoBERTa layer in COSMIC's extraction script).
A dict holding any of these item names as keys (one name per role) is read by name (``layout: dict``).

Per dialogue: speakers ``'M'``/``'F'`` (IEMOCAP) or 9-dim one-hot vectors (MELD); labels class ints (IEMOCAP
``hap, sad, neu, ang, exc, fru``; MELD ``neutral, surprise, fear, sadness, joy, disgust, anger``; sentiment
``neutral, positive, negative``); features a ``(T, D)`` array or ``T`` vectors ``(D,)``, whose dims need only
agree across dialogues (and with ``expected_dims`` when set).

**Text from one file, audio and visual from another** (``text_file:``, the combination of MultiEMO, MM-DFN and
others: RoBERTa text from COSMIC's file, audio/visual from MMGCN's): ``text`` is read from ``text_file`` (its
own ``text_layout``), the rest from ``path``. The two must list the same dialogues (same test set, same
train + dev set), and every dialogue must have the same labels and speakers in both; the first disagreeing
dialogue is named in the error. ``feature_files`` reads a modality from a separate ``{vid: (T, D)}`` pickle.

**The dev split**: the official validation list where a file has one (``cosmic``: ``validIds``; a dict:
``validVid``/``devVid``/``valVid``/``validIds``; with ``text_file``, the text file's list first, then the main
file's), removed from the train list. Where neither has one (``mmgcn``, ``sdt``, ``dialoguegcn``, ``multiemo``)
``int(dev_ratio * len(trainVid))`` train dialogues are held out, picked by a permutation seeded with ``dev_seed``
(``dev_selection: random``) or the first ones in file order (``head``, as MMGCN/SDT's
``get_train_valid_sampler``); id sets are sorted first so both are deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch

from mercore.config import option
from mercore.data import checks
from mercore.data.safe_pickle import safe_load
from mercore.data.types import Corpus, Dialogue
from mercore.errors import DataError
from mercore_data.labels import IEMOCAP_LABELS, MELD_LABELS, MELD_SENTIMENTS

#: Item name -> the role the reader gives it; names not listed (videoIDs, sentences, roberta2..4) are not read.
ROLES = {
    "videoSpeakers": "speakers", "speakers": "speakers",
    "videoLabels": "labels", "labels": "labels", "emotion_labels": "labels",
    "videoSentiments": "sentiments", "sentiment_labels": "sentiments",
    "videoText": "text", "roberta1": "text",
    "videoAudio": "audio", "videoVisual": "visual",
    "trainVid": "train", "trainIds": "train",
    "testVid": "test", "testIds": "test",
    "validVid": "dev", "devVid": "dev", "valVid": "dev", "validIds": "dev",
}
_ID_ROLES = ("train", "test", "dev")
MODALITIES = ("text", "audio", "visual")

_MMGCN_IEMOCAP = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
                  "videoSentence", "trainVid", "testVid")
_SDT_IEMOCAP = ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "roberta2", "roberta3", "roberta4",
                "videoAudio", "videoVisual", "videoSentence", "trainVid", "testVid")
_COSMIC_IEMOCAP = ("speakers", "labels", "roberta1", "roberta2", "roberta3", "roberta4", "sentences", "trainIds",
                   "testIds", "validIds")


@attrs.frozen
class Layout:
    """One public pickle layout: the item names in file order and the file its authors ship."""

    name: str
    corpus: str
    items: tuple[str, ...]
    shipped_as: str
    features_from_files: bool = False  # MultiEMO: the modalities come from feature_files
    auto: bool = True  # picked by layout: auto (False: same items as another layout, named only)

    def describe(self) -> str:
        return f"{self.name} ({len(self.items)} items: {', '.join(self.items)}; {self.shipped_as})"


LAYOUTS: tuple[Layout, ...] = (
    Layout("mmgcn", "iemocap", _MMGCN_IEMOCAP, "MMGCN IEMOCAP_features.pkl"),
    Layout("sdt", "iemocap", _SDT_IEMOCAP, "SDT iemocap_multimodal_features.pkl"),
    Layout("cosmic", "iemocap", _COSMIC_IEMOCAP, "COSMIC iemocap_features_roberta.pkl"),
    Layout("multiemo", "iemocap", _MMGCN_IEMOCAP, "MultiEMO Speakers.pkl + feature_files", True, False),
    Layout("mmgcn", "meld", _MMGCN_IEMOCAP + ("videoSentiments",), "MMGCN MELD_features_raw1.pkl"),
    Layout("dialoguegcn", "meld", ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio",
                                   "videoSentence", "trainVid", "testVid", "videoSentiments"),
           "DialogueGCN MELD_features_raw.pkl"),
    Layout("sdt", "meld", _SDT_IEMOCAP + ("videoSentiments",), "SDT meld_multimodal_features.pkl"),
    Layout("cosmic", "meld", ("speakers", "emotion_labels", "sentiment_labels", "roberta1", "roberta2", "roberta3",
                              "roberta4", "sentences", "trainIds", "testIds", "validIds"),
           "COSMIC meld_features_roberta.pkl"),
    Layout("multiemo", "meld", _MMGCN_IEMOCAP + ("videoSentiments",), "MultiEMO Speakers.pkl + feature_files",
           True, False),
)


def layouts_of(corpus: str) -> dict[str, Layout]:
    """The layouts of ``corpus`` (``iemocap``/``meld``) by name."""
    return {lay.name: lay for lay in LAYOUTS if lay.corpus == corpus}


IemocapLayoutName = Literal["auto", "mmgcn", "sdt", "cosmic", "multiemo", "dict"]
MeldLayoutName = Literal["auto", "mmgcn", "dialoguegcn", "sdt", "cosmic", "multiemo", "dict"]


@attrs.define
class _PickleConfig:
    """Options both pickle readers share."""

    path: str = option(help="the feature pickle (e.g. iemocap_multimodal_features.pkl, MELD_features_raw1.pkl)")
    modalities: list[str] = option(factory=lambda: ["text", "audio", "visual"],
                                   help="modalities to load: text, audio, visual (or a feature_files key)")
    text_file: str | None = option(
        None, help="read text from this pickle instead (e.g. COSMIC's *_features_roberta.pkl beside MMGCN's file); "
                   "its dialogues, labels and speakers must agree with path's")
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

    layout: IemocapLayoutName = option(
        "auto", help="item order of path: mmgcn (9 items), sdt (12), cosmic (10), multiemo, dict; auto: by count")
    text_layout: IemocapLayoutName = option("auto", help="item order of text_file (usually cosmic)")


@attrs.define
class MeldPickleConfig(_PickleConfig):
    """Options of ``meld_pickle``."""

    layout: MeldLayoutName = option(
        "auto", help="item order of path: mmgcn (10 items), dialoguegcn (9), sdt (13), cosmic (11), multiemo, "
                     "dict; auto: by count")
    text_layout: MeldLayoutName = option("auto", help="item order of text_file (usually cosmic)")
    target: Literal["emotion", "sentiment"] = option(
        "emotion", help="emotion: the emotion labels (7 classes); sentiment: the sentiment labels "
                        "(neutral/positive/negative)")


@attrs.define
class PickleFile:
    """One unpickled feature file: its layout and its items by role (speakers, labels, text, train, ...)."""

    path: Path
    layout: str
    roles: dict[str, Any]
    names: dict[str, str]  # role -> the item's name in the file (for error messages)
    features_from_files: bool = False


def read_pickle_file(path: Path, corpus: str, layout: str = "auto") -> PickleFile:
    """Unpickle ``path`` and name its items by ``layout`` (see the module docstring); errors name the file."""
    obj = safe_load(path)
    known = layouts_of(corpus)
    if isinstance(obj, dict):
        if layout not in ("auto", "dict"):
            raise DataError(f"{path}: layout {layout!r} is a tuple of {len(known[layout].items)} items, but the file "
                            f"holds a dict (use layout: dict or auto)")
        return _by_name(path, obj)
    if not isinstance(obj, (tuple, list)):
        raise DataError(f"{path}: not a {corpus.upper()} feature pickle: got a {type(obj).__name__}; "
                        + _known_layouts(corpus))
    if layout == "dict":
        raise DataError(f"{path}: layout 'dict' but the file holds a {type(obj).__name__} of {len(obj)} items")
    if layout == "auto":
        fits = [lay for lay in known.values() if lay.auto and len(lay.items) == len(obj) and _shape_fits(lay, obj)]
        if not fits:
            raise DataError(f"{path}: not a known {corpus.upper()} feature pickle layout: got a {type(obj).__name__} "
                            f"of {len(obj)} items; " + _known_layouts(corpus))
        if len(fits) > 1:
            raise DataError(f"{path}: ambiguous layout ({type(obj).__name__} of {len(obj)} items fits "
                            f"{', '.join(f.name for f in fits)}); name it with layout: NAME. " + _known_layouts(corpus))
        chosen = fits[0]
    else:
        chosen = known[layout]
        if len(obj) != len(chosen.items) or not _shape_fits(chosen, obj):
            got = f"a {type(obj).__name__} of {len(obj)} items"
            why = "" if len(obj) != len(chosen.items) else " whose id lists or per-dialogue dicts are not where it puts them"
            raise DataError(f"{path}: layout {layout!r} expects {len(chosen.items)} items "
                            f"({', '.join(chosen.items)}), got {got}{why}; " + _known_layouts(corpus))
    roles, names = {}, {}
    for name, value in zip(chosen.items, obj):
        role = ROLES.get(name)
        if role is not None:
            roles[role], names[role] = value, name
    return PickleFile(path, chosen.name, roles, names, chosen.features_from_files)


def _known_layouts(corpus: str) -> str:
    return ("known layouts (layout: NAME): " + "; ".join(lay.describe() for lay in layouts_of(corpus).values())
            + "; or dict: a dict with those item names as keys")


def _shape_fits(layout: Layout, obj: tuple | list) -> bool:
    """Per-dialogue items are dicts and id lists are not, where ``layout`` puts them."""
    for name, value in zip(layout.items, obj):
        role = ROLES.get(name)
        if role in _ID_ROLES and isinstance(value, dict):
            return False
        if role is not None and role not in _ID_ROLES and not isinstance(value, dict):
            return False
    return True


def _by_name(path: Path, obj: dict) -> PickleFile:
    roles, names = {}, {}
    for name, value in obj.items():
        role = ROLES.get(name) if isinstance(name, str) else None
        if role is None:
            continue
        if role in roles:
            raise checks.error(path, None, name, f"both {names[role]!r} and {name!r} are keys; a dict layout may "
                                                 f"hold one item per role")
        roles[role], names[role] = value, name
    if "labels" not in roles and "sentiments" not in roles:
        raise DataError(f"{path}: a dict pickle needs labels under one of "
                        f"{sorted(k for k, r in ROLES.items() if r == 'labels')}; its keys: {sorted(map(str, obj))[:12]}")
    return PickleFile(path, "dict", roles, names)


def _id_list(file: PickleFile, role: str) -> list[Any]:
    ids = file.roles.get(role)
    key = file.names.get(role, role)
    if isinstance(ids, (set, frozenset)):
        return sorted(ids, key=lambda v: (str(type(v)), v))  # set order varies with PYTHONHASHSEED
    if isinstance(ids, dict):
        return list(ids)
    try:
        return list(ids)  # list, tuple, numpy array
    except TypeError:
        raise checks.error(file.path, None, key, f"expected a list of dialogue ids, got {type(ids).__name__}") from None


def _require(file: PickleFile, *roles: str) -> None:
    for role in roles:
        if role not in file.roles:
            keys = ", ".join(repr(k) for k, r in ROLES.items() if r == role)
            raise DataError(f"{file.path}: the {role} item is missing (layout {file.layout!r}; a dict names it "
                            f"one of {keys})")
        if role not in _ID_ROLES and not isinstance(file.roles[role], dict):
            raise checks.error(file.path, None, file.names[role],
                               f"expected a dict keyed by dialogue id, got {type(file.roles[role]).__name__}")


def _plain(value: Any) -> Any:
    """Labels or speakers as plain nested lists, for comparing two files."""
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - ragged: compare as given
        return value
    return arr.tolist() if arr.dtype != object else [str(v) for v in value]


def check_agreement(main: PickleFile, other: PickleFile, label_role: str) -> None:
    """``other`` lists the same dialogues (same test set, same train + dev set) with the same labels and speakers.

    Raises a :class:`DataError` naming both files and the first disagreeing dialogue.
    """
    def split_sets(f: PickleFile) -> tuple[set, set]:
        test = set(_id_list(f, "test"))
        rest = set(_id_list(f, "train")) | (set(_id_list(f, "dev")) if "dev" in f.roles else set())
        return rest - test, test

    (a_rest, a_test), (b_rest, b_test) = split_sets(main), split_sets(other)
    both = f"{other.path} (text_file) and {main.path}"
    for what, a, b in (("test", a_test, b_test), ("train + dev", a_rest, b_rest)):
        if a != b:
            first = sorted(a ^ b, key=lambda v: (str(type(v)), v))[0]
            holder, lacker = (main.path, other.path) if first in a else (other.path, main.path)
            raise DataError(f"{both} disagree on dialogue {str(first)!r}: in the {what} dialogues of {holder}, "
                            f"not of {lacker}")
    order = _id_list(main, "train") + _id_list(main, "test")
    for vid in order:
        for role in (label_role, "speakers"):
            a_tab, b_tab = main.roles[role], other.roles[role]
            if vid not in b_tab:
                raise DataError(f"{both} disagree on dialogue {str(vid)!r}: {other.names[role]!r} has no entry")
            if vid not in a_tab:
                raise DataError(f"{both} disagree on dialogue {str(vid)!r}: {main.names[role]!r} has no entry")
            a, b = _plain(a_tab[vid]), _plain(b_tab[vid])
            if a != b:
                raise DataError(f"{both} disagree on dialogue {str(vid)!r}: {role} {_short(b)} ({other.names[role]}) "
                                f"vs {_short(a)} ({main.names[role]})")


def _short(values: Any, n: int = 8) -> str:
    if isinstance(values, list) and len(values) > n:
        return repr(values[:n])[:-1] + f", ... ({len(values)} in all)]"
    return repr(values)


class _PickleDataset:
    corpus: str = ""
    default_labels: list[str] = []

    def __init__(self, config: Any, **_: Any):
        self.config = config

    # -- hooks the two corpora differ in --------------------------------------------------------------
    def _fixed_speakers(self) -> dict | None:
        """Speaker name -> index for ``speaker_order: file`` (None: one-hot positions are the ids)."""
        return None

    def _label_role(self) -> str:
        return "labels"

    def _label_names(self) -> list[str]:
        return list(self.default_labels)

    # -- reading ----------------------------------------------------------------------------------------------
    def load(self) -> Corpus:
        cfg = self.config
        path = checks.require_file(checks.resolve_path(cfg.path), f"{self.corpus.upper()} feature pickle")
        label_role = self._label_role()
        main = read_pickle_file(path, self.corpus, cfg.layout)
        _require(main, "speakers", label_role, "train", "test")

        # modality -> (file, its per-dialogue table, the item's name there)
        sources: dict[str, tuple[Path, dict, str]] = {}
        if not main.features_from_files:
            for m in MODALITIES:
                if m in main.roles:
                    _require(main, m)
                    sources[m] = (path, main.roles[m], main.names[m])
        dev_file = main if "dev" in main.roles else None
        if cfg.text_file is not None:
            tpath = checks.require_file(checks.resolve_path(cfg.text_file), "text feature pickle (text_file)")
            text = read_pickle_file(tpath, self.corpus, cfg.text_layout)
            _require(text, "text", "speakers", label_role, "train", "test")
            check_agreement(main, text, label_role)
            sources["text"] = (tpath, text.roles["text"], text.names["text"])
            if "dev" in text.roles:
                dev_file = text
        for m, file in cfg.feature_files.items():
            fpath = checks.require_file(checks.resolve_path(file), f"{m!r} feature pickle")
            table = safe_load(fpath)
            if not isinstance(table, dict):
                raise checks.error(fpath, None, m, f"expected a dict {{dialogue id: features}}, got {type(table).__name__}")
            sources[m] = (fpath, table, m)
        if main.features_from_files:
            missing = [m for m in cfg.modalities if m not in sources]
            if missing:
                raise DataError(f"{path}: layout {main.layout!r} holds no features: give feature_files for "
                                f"{', '.join(missing)} (e.g. feature_files: {{{missing[0]}: "
                                f"{missing[0].capitalize()}Features.pkl}})")
        checks.check_modalities(cfg.modalities, list(sources), path)

        train_ids, test_ids = _id_list(main, "train"), _id_list(main, "test")
        if dev_file is not None:
            dev_ids = _id_list(dev_file, "dev")
            dev_set = set(dev_ids)
            train_ids = [v for v in train_ids if v not in dev_set]  # some files list dev inside trainVid too
            if dev_file is not main:  # the main file's train list may lack them (train + dev agree, checked)
                train_ids = [v for v in _id_list(dev_file, "train") if v not in dev_set]
        else:
            train_ids, dev_ids = checks.carve_dev(train_ids, cfg.dev_ratio, cfg.dev_seed, cfg.dev_selection, str(path))

        label_names = self._label_names()
        fixed = self._fixed_speakers() if cfg.speaker_order == "file" else None
        dims = checks.DimTracker(cfg.expected_dims)
        splits: dict[str, list[Dialogue]] = {}
        for split, ids in (("train", train_ids), ("dev", dev_ids), ("test", test_ids)):
            splits[split] = [self._dialogue(vid, main, sources, label_role, label_names, fixed, dims) for vid in ids]
        checks.require_splits(splits, str(path))
        num_speakers = checks.finalize_speakers(splits, cfg.num_speakers, str(path))
        return Corpus(name=self.corpus, label_names=label_names,
                      modality_dims={m: dims.dims[m] for m in cfg.modalities}, num_speakers=num_speakers,
                      splits=splits, source=str(path))

    def _dialogue(self, vid: Any, main: PickleFile, sources: dict[str, tuple[Path, dict, str]], label_role: str,
                  label_names: list[str], fixed: dict | None, dims: checks.DimTracker) -> Dialogue:
        path = main.path
        label_key, speaker_key = main.names[label_role], main.names["speakers"]
        for role, key in ((label_role, label_key), ("speakers", speaker_key)):
            if vid not in main.roles[role]:
                raise checks.error(path, vid, key, "dialogue id (listed in the split lists) has no entry")
        labels = checks.encode_labels(main.roles[label_role][vid], label_names, file=path, dialogue_id=vid,
                                      field=label_key)
        speakers = checks.speaker_indices(main.roles["speakers"][vid], file=path, dialogue_id=vid,
                                          field=speaker_key, order=self.config.speaker_order, names=fixed)
        feats: dict[str, torch.Tensor] = {}
        fields = {"labels": label_key, "speakers": speaker_key}
        for m in self.config.modalities:
            fpath, table, key = sources[m]
            fields[m] = key
            if vid not in table:
                raise checks.error(fpath, vid, key, f"dialogue id is missing from the {m} features")
            feats[m] = checks.as_feature_matrix(table[vid], file=fpath, dialogue_id=vid, field=key)
            dims.check(m, feats[m], file=fpath, dialogue_id=vid, field=key)
        return checks.make_dialogue(vid, features=feats, speakers=speakers, labels=labels, file=path, fields=fields)


class IemocapPickleDataset(_PickleDataset):
    """IEMOCAP from a public feature pickle: MMGCN's, SDT's, COSMIC's or MultiEMO's (6 classes; speakers 'M'/'F').

    ``layout`` names the item order: ``mmgcn`` (9 items, MMGCN ``IEMOCAP_features.pkl``), ``sdt`` (12,
    ``iemocap_multimodal_features.pkl``), ``cosmic`` (10, ``iemocap_features_roberta.pkl``, text only, with
    ``validIds``), ``multiemo`` (``Speakers.pkl``, the ``mmgcn`` items, features from ``feature_files``),
    ``dict``; ``auto`` tells them apart by the number of items. ``text_file`` takes the text from a second
    file (COSMIC's RoBERTa file beside MMGCN's audio/visual), checked to agree on dialogues, labels and
    speakers. Dev: the file's validation list if any, else ``int(dev_ratio * len(trainVid))`` train
    dialogues (seeded, or the first ones with ``dev_selection: head``). Full details: :mod:`mercore_data.pickles`.
    """

    Config = IemocapPickleConfig
    corpus = "iemocap"
    default_labels = IEMOCAP_LABELS

    def _fixed_speakers(self) -> dict:
        return {"M": 0, "F": 1}  # SDT/MMGCN one-hot: [1, 0] for M, [0, 1] for F


class MeldPickleDataset(_PickleDataset):
    """MELD from a public feature pickle: MMGCN's, DialogueGCN's, SDT's, COSMIC's or MultiEMO's (one-hot speakers).

    ``layout`` names the item order: ``mmgcn`` (10 items, MMGCN ``MELD_features_raw1.pkl``), ``dialoguegcn``
    (9, no visual), ``sdt`` (13, ``meld_multimodal_features.pkl``), ``cosmic`` (11,
    ``meld_features_roberta.pkl``, text only, emotion and sentiment labels, ``validIds``), ``multiemo``,
    ``dict``; ``auto`` by the number of items. ``target: sentiment`` reads the sentiment labels (``neutral,
    positive, negative``) instead of the 7 emotions. ``text_file`` and dev as in ``iemocap_pickle``. Full
    details: :mod:`mercore_data.pickles`.
    """

    Config = MeldPickleConfig
    corpus = "meld"
    default_labels = MELD_LABELS

    def _label_role(self) -> str:
        return "sentiments" if self.config.target == "sentiment" else "labels"

    def _label_names(self) -> list[str]:
        return list(MELD_SENTIMENTS if self.config.target == "sentiment" else MELD_LABELS)

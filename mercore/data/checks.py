"""Validation shared by every dataset reader.

Readers convert raw values (numpy arrays, lists, tensors, label strings, speaker names) through these helpers,
so that every bad input ends in one :class:`~mercore.errors.DataError` whose message starts with
``<file>: dialogue '<id>': field '<field>': ...`` instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch

from mercore.data.types import PAD_LABEL, SPLITS, Dialogue
from mercore.errors import DataError


def where(file: str | os.PathLike[str], dialogue_id: Any = None, field: str | None = None) -> str:
    """``"<file>: dialogue '<id>': field '<field>'"`` (the parts that are known)."""
    parts = [str(file)]
    if dialogue_id is not None:
        parts.append(f"dialogue {str(dialogue_id)!r}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ": ".join(parts)


def error(file: str | os.PathLike[str], dialogue_id: Any, field: str | None, message: str) -> DataError:
    """A :class:`DataError` located by file, dialogue and field."""
    return DataError(f"{where(file, dialogue_id, field)}: {message}")


def resolve_path(path: str) -> Path:
    """``~`` and ``$VARS`` expanded; relative paths stay relative to the working directory."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _denied(p: Path, what: str, exc: OSError) -> DataError:
    return DataError(f"{p}: {what} cannot be read: {exc.strerror or exc} (check its permissions and those of "
                     "the folders above it)")


def require_dir(path: str | os.PathLike[str], what: str = "data folder") -> Path:
    """``path`` as a folder whose listing can be read; a missing, non-folder or unreadable one is a DataError."""
    p = Path(path)
    try:
        if not p.is_dir():
            hint = " (it is a file, not a folder)" if p.exists() else ""
            raise DataError(f"{p}: {what} not found{hint} (working directory: {Path.cwd()})")
        os.scandir(p).close()  # a folder without read (r) or search (x) permission fails here, not later
    except PermissionError as exc:
        raise _denied(p, what, exc) from None
    return p


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a file that can be opened for reading. An unreadable file is reported as unreadable (not
    as missing), a missing one as missing."""
    p = Path(path)
    try:
        if not p.is_file():
            if p.is_dir():
                raise DataError(f"{p}: {what} is a folder, expected a file")
            missing = f"; folder {p.parent} does not exist either" if not p.parent.is_dir() else ""
            raise DataError(f"{p}: {what} not found{missing}")
        with open(p, "rb"):
            pass
    except PermissionError as exc:
        raise _denied(p, what, exc) from None
    return p


def check_modalities(requested: Sequence[str], available: Iterable[str], source: str | os.PathLike[str]) -> None:
    """Every requested modality must be one the source provides; at least one must be requested."""
    available = list(available)
    if not requested:
        raise DataError(f"{source}: no modality requested (set 'modalities', e.g. {available[:3]})")
    missing = [m for m in requested if m not in available]
    if missing:
        raise DataError(
            f"{source}: requested modality {', '.join(repr(m) for m in missing)} which this source does not have "
            f"(it has: {', '.join(available) if available else 'none'})"
        )
    dup = sorted({m for m in requested if list(requested).count(m) > 1})
    if dup:
        raise DataError(f"{source}: modality {', '.join(map(repr, dup))} is requested twice")


_FLOAT8 = tuple(getattr(torch, n) for n in dir(torch) if n.startswith("float8_"))


def as_feature_matrix(value: Any, *, file: str | os.PathLike[str], dialogue_id: Any, field: str) -> torch.Tensor:
    """Convert one dialogue's features to a finite float32 tensor ``(T, D)``.

    Accepts a 2-D array/tensor, or a list of 1-D per-utterance vectors (the usual pickle form).
    """
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu")
        else:
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
                shapes = {v.shape for v in value}
                if len(shapes) > 1:
                    raise error(file, dialogue_id, field, f"utterance vectors have different shapes {sorted(shapes)}")
                value = np.stack(value)
            arr = np.asarray(value)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise error(file, dialogue_id, field, f"features are not numeric (dtype {arr.dtype})")
            t = torch.from_numpy(np.ascontiguousarray(arr))
    except DataError:
        raise
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise error(file, dialogue_id, field, f"features are not a rectangular array ({exc})") from exc
    if t.is_complex():
        raise error(file, dialogue_id, field, "features are complex numbers")
    if not t.is_floating_point() or t.dtype in _FLOAT8:
        # integer or boolean "features" are nearly always a wrong file or key (labels, ids, a mask), and
        # float8 has too few bits to be a model input as stored; refuse rather than silently cast
        raise error(file, dialogue_id, field, f"features must be floating point (float16, bfloat16, float32 or "
                                              f"float64), got {str(t.dtype).replace('torch.', '')}")
    if t.ndim == 1 and t.numel() == 0:
        raise error(file, dialogue_id, field, "features are empty")
    if t.ndim != 2:
        raise error(file, dialogue_id, field, f"features have shape {tuple(t.shape)}; expected (utterances, dim)")
    t = t.to(torch.float32)
    if t.shape[1] == 0:
        raise error(file, dialogue_id, field, f"features have shape {tuple(t.shape)}: feature dim 0")
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        kind = "NaN" if math.isnan(float(t[bad[0], bad[1]])) else "inf"
        n_bad = int((~finite).sum())
        raise error(file, dialogue_id, field,
                    f"{n_bad} non-finite value(s), first a {kind} at utterance {bad[0]}, dim {bad[1]}")
    return t


class DimTracker:
    """Checks that each modality has one feature dim across all dialogues (and the configured one, if any).

    Args:
        expected: modality -> required dim (e.g. a config's ``expected_dims``); others are fixed by the
            first dialogue seen.
    """

    def __init__(self, expected: Mapping[str, int] | None = None):
        self.expected = dict(expected or {})
        self.dims: dict[str, int] = {}
        self._first: dict[str, str] = {}

    def check(self, modality: str, features: torch.Tensor, *, file: str | os.PathLike[str], dialogue_id: Any,
              field: str) -> None:
        dim = int(features.shape[-1])
        if modality in self.expected and dim != self.expected[modality]:
            raise error(file, dialogue_id, field,
                        f"feature dim is {dim}, but the config's expected_dims says {modality}: {self.expected[modality]}")
        if modality not in self.dims:
            self.dims[modality] = dim
            self._first[modality] = str(dialogue_id)
        elif dim != self.dims[modality]:
            raise error(file, dialogue_id, field,
                        f"feature dim is {dim}, but dialogue {self._first[modality]!r} has {modality} dim "
                        f"{self.dims[modality]}; all dialogues must agree")


def label_index(names: Sequence[str]) -> dict[str, int]:
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise DataError(f"label list {list(names)} repeats {dup}")
    return {str(n): i for i, n in enumerate(names)}


def encode_labels(raw: Any, names: Sequence[str], *, file: str | os.PathLike[str], dialogue_id: Any,
                  field: str) -> torch.Tensor:
    """Labels -> ``(T,)`` long class indices.

    Each item may be a label name (looked up in ``names``), an integer class index (checked against
    ``len(names)``), or ``None``, which becomes :data:`PAD_LABEL` (an utterance without a gold label is kept for
    context but never scored).
    """
    index = label_index(names)
    items = _as_list(raw, file=file, dialogue_id=dialogue_id, field=field)
    out = []
    for i, y in enumerate(items):
        if y is None:
            out.append(PAD_LABEL)
        elif isinstance(y, str):
            if y not in index:
                raise error(file, dialogue_id, field,
                            f"utterance {i}: label {y!r} is not in the label set {list(names)}")
            out.append(index[y])
        elif isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
            if not 0 <= int(y) < len(names):
                raise error(file, dialogue_id, field,
                            f"utterance {i}: label {int(y)} is outside 0..{len(names) - 1} ({list(names)})")
            out.append(int(y))
        elif isinstance(y, (float, np.floating)) and float(y).is_integer() and 0 <= float(y) < len(names):
            out.append(int(y))
        else:
            raise error(file, dialogue_id, field,
                        f"utterance {i}: label {y!r} is neither a label name nor a class index of {list(names)}")
    return torch.tensor(out, dtype=torch.long)


def check_label_types(rows: Iterable[tuple[str, Any, Sequence[Any]]]) -> None:
    """One label type per corpus: names (strings) or class indices (integers), never both.

    A corpus that mixes them would map the integers onto the sorted names, silently changing classes.

    Args:
        rows: ``(where, dialogue id, raw labels)`` for every dialogue, in file order.

    Raises:
        DataError: naming the first dialogue whose labels are of the other type, and where the first type came
            from.
    """
    first: tuple[str, str, Any] | None = None  # (type, where, dialogue id)
    for where_row, did, labels in rows:
        for i, y in enumerate(labels):
            if y is None:
                continue
            kind = "name" if isinstance(y, str) else "index" if isinstance(y, (int, np.integer)) and not isinstance(
                y, (bool, np.bool_)) else None
            if kind is None:
                continue  # encode_labels reports other values with their utterance
            if first is None:
                first = (kind, where_row, did)
            elif kind != first[0]:
                raise error(where_row, did, "labels",
                            f"utterance {i}: label {y!r} is a class {kind}, but dialogue {str(first[2])!r} "
                            f"({first[1]}) has class {first[0]}s; a corpus must use one label type: all names "
                            "(e.g. 'happy') or all class indices (0, 1, ...)")


def check_dialogue_lengths(splits: Mapping[str, list[Dialogue]], limit: int | None, source: str) -> None:
    """Refuse a dialogue longer than ``limit`` utterances, naming it, before a model runs out of memory on it."""
    if limit is None:
        return
    for split, dialogues in splits.items():
        for d in dialogues:
            if len(d) > limit:
                raise DataError(
                    f"{source}: dialogue {d.id!r} ({split}) has {len(d)} utterances, more than "
                    f"trainer.max_dialogue_length={limit}; attention memory grows with the square of the length. "
                    "Split the dialogue in the data, or raise the limit if memory allows")


def require_labels(dialogues: Sequence[Dialogue], split: str, source: str) -> None:
    """A split to evaluate must have at least one labelled utterance (else every metric would read 0.0)."""
    if not any(bool((d.labels != PAD_LABEL).any()) for d in dialogues):
        raise DataError(f"{source}: split {split!r} has no labelled utterances ({len(dialogues)} dialogues, every "
                        "label null); it cannot be evaluated. Give it labels, or evaluate another split")


def speaker_indices(raw: Any, *, file: str | os.PathLike[str], dialogue_id: Any, field: str,
                    order: str = "appearance", names: Mapping[Hashable, int] | None = None) -> torch.Tensor:
    """Speakers -> ``(T,)`` long indices.

    Items may be names (``'M'``, ``'Chandler'``), integer ids, or one-hot vectors (MELD pickles; read as the
    position of their 1).

    Args:
        order: ``"appearance"`` (default) numbers speakers per dialogue in order of first appearance
            (0 = first to speak): names differ across dialogues, and a conversation model's speaker table only
            needs to tell the parties of one dialogue apart. ``"file"`` keeps the file's ids: ``names`` maps
            names to indices (IEMOCAP ``{'M': 0, 'F': 1}`` as in the SDT/MMGCN loaders); integers and one-hot
            positions are used as they are.
        names: name -> index, for ``order="file"``.
    """
    items = _as_list(raw, file=file, dialogue_id=dialogue_id, field=field)
    keys: list[Hashable] = []
    for i, s in enumerate(items):
        if isinstance(s, (list, tuple, np.ndarray, torch.Tensor)):
            try:
                vec = np.asarray(s, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise error(file, dialogue_id, field, f"utterance {i}: speaker {s!r} is not a one-hot vector") from None
            if vec.size == 0 or not np.isfinite(vec).all() or np.count_nonzero(vec) != 1:
                raise error(file, dialogue_id, field, f"utterance {i}: speaker {vec.tolist()} is not a one-hot vector")
            s = int(np.argmax(vec))
        elif isinstance(s, np.generic):
            s = s.item()
        if s is None or isinstance(s, (bool, float)) or (isinstance(s, str) and not s.strip()):
            raise error(file, dialogue_id, field, f"utterance {i}: speaker is missing or invalid ({s!r})")
        keys.append(s)
    if order == "file":
        out = []
        for i, k in enumerate(keys):
            if names is not None and k in names:
                out.append(int(names[k]))
            elif isinstance(k, int) and k >= 0:
                out.append(k)
            else:
                expected = f"one of {list(names)}" if names else "a non-negative integer or one-hot vector"
                raise error(file, dialogue_id, field, f"utterance {i}: unknown speaker {k!r}; expected {expected}")
        return torch.tensor(out, dtype=torch.long)
    if order != "appearance":
        raise DataError(f"{file}: unknown speaker order {order!r} (appearance or file)")
    first: dict[Hashable, int] = {}
    return torch.tensor([first.setdefault(k, len(first)) for k in keys], dtype=torch.long)


def _as_list(raw: Any, *, file: str | os.PathLike[str], dialogue_id: Any, field: str) -> list:
    if isinstance(raw, (np.ndarray, torch.Tensor)):
        return list(raw) if raw.ndim >= 1 else [raw]
    if isinstance(raw, (list, tuple)):
        return list(raw)
    raise error(file, dialogue_id, field, f"expected a list, got {type(raw).__name__}")


def make_dialogue(
    dialogue_id: Any,
    *,
    features: Mapping[str, torch.Tensor],
    speakers: torch.Tensor,
    labels: torch.Tensor,
    file: str | os.PathLike[str],
    fields: Mapping[str, str] | None = None,
) -> Dialogue:
    """Build a :class:`Dialogue` after checking that it is non-empty and every per-utterance field agrees.

    Args:
        features: modality -> ``(T, D_m)`` (already converted by :func:`as_feature_matrix`).
        speakers, labels: ``(T,)`` long.
        fields: how the file calls each field, for messages (``{"labels": "videoLabels", "text": "videoText"}``).
    """
    fields = dict(fields or {})
    lengths = {fields.get("labels", "labels"): int(labels.shape[0]), fields.get("speakers", "speakers"): int(speakers.shape[0])}
    for m, f in features.items():
        lengths[fields.get(m, m)] = int(f.shape[0])
    if lengths[fields.get("labels", "labels")] == 0:
        raise error(file, dialogue_id, fields.get("labels", "labels"), "empty dialogue (no utterances)")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        first_bad = next(k for k, v in lengths.items() if v != lengths[fields.get("labels", "labels")])
        raise error(file, dialogue_id, first_bad, f"per-utterance fields have different lengths: {detail}")
    return Dialogue(id=str(dialogue_id), features=dict(features), speakers=speakers, labels=labels)


def finalize_speakers(splits: Mapping[str, list[Dialogue]], num_speakers: int | None, source: str) -> int:
    """Fix the speaker-table size and clip speaker indices to it.

    ``num_speakers=None`` sizes the table to the most speakers any dialogue has (so nothing is clipped).
    With an explicit ``num_speakers``, speakers ``>= num_speakers`` are clipped to ``num_speakers - 1``: the
    last row of the table then stands for "one of the other speakers". We clip rather than refuse because a
    handful of MELD dialogues have up to 9 speakers and a recipe may deliberately use a small table; a warning
    says how many utterances were affected.
    """
    needed = max((int(d.speakers.max()) + 1 for ds in splits.values() for d in ds if len(d)), default=1)
    if num_speakers is None:
        return max(1, needed)
    if num_speakers < 1:
        raise DataError(f"{source}: num_speakers must be at least 1, got {num_speakers}")
    if needed > num_speakers:
        clipped = 0
        for ds in splits.values():
            for d in ds:
                over = d.speakers >= num_speakers
                clipped += int(over.sum())
                d.speakers = d.speakers.clamp(max=num_speakers - 1)
        warnings.warn(
            f"{source}: some dialogues have up to {needed} speakers but num_speakers={num_speakers}; "
            f"{clipped} utterance(s) of later speakers share speaker index {num_speakers - 1}",
            stacklevel=3,
        )
    return num_speakers


def carve_dev(train_ids: Sequence[Any], ratio: float, seed: int, selection: str = "random",
              source: str = "") -> tuple[list[Any], list[Any]]:
    """Split a train id list into ``(train, dev)`` with ``int(ratio * N)`` dev dialogues.

    ``selection="random"`` picks them with a seeded permutation (independent of torch's global RNG);
    ``"head"`` takes the first ones in file order, exactly as MMGCN/SDT's ``get_train_valid_sampler`` does.
    """
    ids = list(train_ids)
    if not 0.0 <= ratio < 1.0:
        raise DataError(f"{source}: dev_ratio must be in [0, 1), got {ratio}")
    n_dev = int(ratio * len(ids))
    if ratio > 0 and n_dev == 0 and len(ids) > 1:
        n_dev = 1  # a tiny file still gets a dev split to select checkpoints on
    if n_dev >= len(ids):
        raise DataError(f"{source}: dev_ratio={ratio} leaves no training dialogues out of {len(ids)}")
    if selection == "head":
        dev_pos = set(range(n_dev))
    elif selection == "random":
        dev_pos = set(np.random.default_rng(seed).permutation(len(ids))[:n_dev].tolist())
    else:
        raise DataError(f"{source}: unknown dev selection {selection!r} (random or head)")
    train = [x for i, x in enumerate(ids) if i not in dev_pos]
    dev = [x for i, x in enumerate(ids) if i in dev_pos]
    return train, dev


def require_splits(splits: Mapping[str, list[Dialogue]], source: str, detail: str = "") -> None:
    """Each of train/dev/test must hold at least one dialogue."""
    for s in SPLITS:
        if not splits.get(s):
            raise DataError(f"{source}: split {s!r} is missing or empty{detail} "
                            f"(found: {', '.join(f'{k}={len(v)}' for k, v in splits.items() if v) or 'nothing'})")

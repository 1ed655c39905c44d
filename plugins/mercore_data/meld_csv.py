"""The ``meld_csv`` dataset: the official MELD CSVs plus one safetensors feature file per modality.

CSV files (declare-lab/MELD): ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv`` with columns
``Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime,
EndTime``. Only ``Speaker``, ``Emotion`` (or ``Sentiment``), ``Dialogue_ID`` and ``Utterance_ID`` are used;
rows are grouped by ``Dialogue_ID`` and ordered by ``Utterance_ID``.

Feature files (safetensors, one per modality), in one of two key layouts (``feature_keys``):

* ``utterance`` (default): one tensor ``(D,)`` (or ``(1, D)``) per utterance under ``"{split}/{Dialogue_ID}/
  {Utterance_ID}"``, e.g. ``"train/0/3"``; the natural output of a per-clip audio/visual extractor.
* ``dialogue``: one tensor ``(T, D)`` per dialogue under ``"{split}/{Dialogue_ID}"``, rows in ascending
  ``Utterance_ID`` order.

Dialogue ids in the corpus are ``"{split}_{Dialogue_ID}"`` (``"train_0"``), as in ../shared/data/meld.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from mercore.config import option
from mercore.data import checks
from mercore.data.types import SPLITS, Corpus, Dialogue
from mercore.errors import DataError
from mercore_data.jsonl import _open_all
from mercore_data.labels import MELD_LABELS, MELD_SENTIMENTS

_REQUIRED_COLUMNS = ("Speaker", "Dialogue_ID", "Utterance_ID")
#: tried in order when ``encoding`` is not set; latin-1 decodes any byte, so it is the last resort.
_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


@attrs.define
class MeldCsvConfig:
    """Options of ``meld_csv``."""

    root: str = option(help="folder holding the CSVs and the feature files")
    features: dict[str, str] = option(help="modality -> safetensors file (relative to root); see feature_keys")
    modalities: list[str] = option(factory=lambda: ["text"], help="modalities to load (keys of 'features')")
    feature_keys: Literal["utterance", "dialogue"] = option(
        "utterance", help="utterance: '{split}/{Dialogue_ID}/{Utterance_ID}' -> (D,); dialogue: "
                          "'{split}/{Dialogue_ID}' -> (T, D)")
    files: dict[str, str] = option(
        factory=lambda: {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"},
        help="split -> CSV file (relative to root)")
    target: Literal["emotion", "sentiment"] = option("emotion", help="which column is the label")
    labels: list[str] | None = option(None, help="class order; default: the MELD pickles' order")
    encoding: str | None = option(None, help="CSV encoding; default: utf-8, else cp1252, else latin-1")
    num_speakers: int | None = option(
        None, help="speaker-table size; default: most speakers in one dialogue. Later speakers are clipped to the last")
    expected_dims: dict[str, int] | None = option(None, help="modality -> feature dim every dialogue must have")
    name: str = option("meld", help="corpus name")

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.files) - set(SPLITS))
        if unknown:
            raise ValueError(f"files: unknown split(s) {unknown}; splits are {list(SPLITS)}")


class MeldCsvDataset:
    """MELD from the official ``{train,dev,test}_sent_emo.csv`` and per-modality safetensors features.

    See :mod:`mercore_data.meld_csv` for the file and key layouts. Features ``(T, D)`` per dialogue.
    """

    Config = MeldCsvConfig

    def __init__(self, config: MeldCsvConfig, **_: Any):
        self.config = config

    def load(self) -> Corpus:
        cfg = self.config
        root = checks.require_dir(checks.resolve_path(cfg.root), "MELD folder")
        checks.check_modalities(cfg.modalities, cfg.features, root)
        missing = [s for s in SPLITS if s not in cfg.files]
        if missing:
            raise DataError(f"{root}: no CSV configured for split {', '.join(map(repr, missing))} (files: {cfg.files})")
        csvs = {s: checks.require_file(root / cfg.files[s], f"MELD {s} CSV") for s in SPLITS}
        feature_files = {m: checks.require_file(root / cfg.features[m], f"{m!r} feature file") for m in cfg.modalities}
        label_names = list(cfg.labels) if cfg.labels is not None else (
            list(MELD_SENTIMENTS) if cfg.target == "sentiment" else list(MELD_LABELS))
        label_column = "Sentiment" if cfg.target == "sentiment" else "Emotion"
        dims = checks.DimTracker(cfg.expected_dims)
        # All CSVs first: their problems are cheaper to find than the features'.
        grouped = {s: _read_csv(csvs[s], label_column, cfg.encoding) for s in SPLITS}
        for split, dialogues in grouped.items():
            if not dialogues:
                raise DataError(f"{csvs[split]}: split {split!r} has no rows")
        splits: dict[str, list[Dialogue]] = {}
        with _open_all(feature_files) as handles:
            for split, dialogues in grouped.items():
                splits[split] = [
                    self._dialogue(split, dia, rows, csvs[split], handles, label_names, label_column, dims)
                    for dia, rows in dialogues.items()
                ]
        checks.require_splits(splits, str(root))
        num_speakers = checks.finalize_speakers(splits, cfg.num_speakers, str(root))
        return Corpus(name=cfg.name, label_names=label_names,
                      modality_dims={m: dims.dims[m] for m in cfg.modalities}, num_speakers=num_speakers,
                      splits=splits, source=str(root))

    def _dialogue(self, split: str, dia: int, rows: list[dict], csv_path: Path,
                  handles: dict[str, tuple[Path, Any, set[str]]], label_names: list[str], label_column: str,
                  dims: checks.DimTracker) -> Dialogue:
        did = f"{split}_{dia}"
        by_lower = {n.lower(): n for n in label_names}  # the CSVs write 'joy', a recipe may say 'Joy'
        raw_labels = [r[label_column].strip() for r in rows]
        labels = checks.encode_labels([by_lower.get(y.lower(), y) for y in raw_labels], label_names,
                                      file=csv_path, dialogue_id=did, field=label_column)
        speakers = checks.speaker_indices([r["Speaker"].strip() for r in rows], file=csv_path, dialogue_id=did,
                                          field="Speaker")
        feats: dict[str, torch.Tensor] = {}
        for m in self.config.modalities:
            path, handle, keys = handles[m]
            if self.config.feature_keys == "dialogue":
                key = f"{split}/{dia}"
                if key not in keys:
                    raise checks.error(path, did, m, f"no tensor under key {key!r} (layout 'dialogue': "
                                                     "'{split}/{Dialogue_ID}' -> (T, D))")
                raw = _get(handle, key, path, did, m)
            else:
                vectors = []
                for r in rows:
                    key = f"{split}/{dia}/{r['_utt']}"
                    if key not in keys:
                        raise checks.error(path, did, m, f"no tensor under key {key!r} for utterance {r['_utt']} "
                                                         "(layout 'utterance': '{split}/{Dialogue_ID}/{Utterance_ID}')")
                    v = _get(handle, key, path, did, m)
                    if v.ndim == 2 and v.shape[0] == 1:
                        v = v[0]
                    if v.ndim != 1:
                        raise checks.error(path, did, m, f"tensor {key!r} has shape {tuple(v.shape)}; expected (D,)")
                    vectors.append(v)
                if len({tuple(v.shape) for v in vectors}) > 1:
                    shapes = sorted({v.shape[0] for v in vectors})
                    raise checks.error(path, did, m, f"utterance vectors of one dialogue have different dims {shapes}")
                raw = torch.stack(vectors)
            feats[m] = checks.as_feature_matrix(raw, file=path, dialogue_id=did, field=m)
            dims.check(m, feats[m], file=path, dialogue_id=did, field=m)
        return checks.make_dialogue(did, features=feats, speakers=speakers, labels=labels, file=csv_path,
                                    fields={"labels": label_column, "speakers": "Speaker"})


def _get(handle: Any, key: str, path: Path, did: str, field: str) -> torch.Tensor:
    try:
        return handle.get_tensor(key)
    except Exception as exc:  # a corrupt tensor inside a valid header
        raise checks.error(path, did, field, f"cannot read tensor {key!r}: {exc}") from exc


def _read_text(path: Path, encoding: str | None) -> str:
    data = path.read_bytes()
    for enc in ([encoding] if encoding else _ENCODINGS):
        try:
            return data.decode(enc)
        except UnicodeDecodeError as exc:
            if encoding:
                raise DataError(f"{path}: cannot decode as {encoding} ({exc}); set encoding to the file's") from exc
        except LookupError as exc:
            raise DataError(f"{path}: unknown encoding {encoding!r}") from exc
    raise AssertionError("latin-1 decodes every byte string")


def _read_csv(path: Path, label_column: str, encoding: str | None) -> dict[int, list[dict]]:
    """Rows grouped by integer ``Dialogue_ID``, each group sorted by ``Utterance_ID`` (stored under ``_utt``)."""
    # newline="": quoted utterances may contain line breaks
    reader = csv.DictReader(io.StringIO(_read_text(path, encoding), newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns  # some exports pad header names with spaces
    for col in (*_REQUIRED_COLUMNS, label_column):
        if col not in columns:
            raise checks.error(path, None, col, f"column missing from the CSV header (columns: {columns})")
    groups: dict[int, list[dict]] = {}
    seen: dict[tuple[int, int], int] = {}
    for row in reader:
        line_no = reader.line_num
        ids = []
        for col in ("Dialogue_ID", "Utterance_ID"):
            value = (row.get(col) or "").strip()
            try:
                ids.append(int(value))
            except ValueError:
                raise checks.error(f"{path}:{line_no}", row.get("Dialogue_ID"), col,
                                   f"{value!r} is not an integer") from None
        dia, utt = ids
        if (dia, utt) in seen:
            raise checks.error(f"{path}:{line_no}", f"{dia}", "Utterance_ID",
                               f"utterance {utt} appears twice (first on line {seen[(dia, utt)]})")
        seen[(dia, utt)] = line_no
        if row.get(label_column) is None or row.get("Speaker") is None:
            raise checks.error(f"{path}:{line_no}", f"{dia}", label_column, "row has fewer fields than the header")
        row["_utt"] = utt
        groups.setdefault(dia, []).append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: r["_utt"])
    return dict(sorted(groups.items()))

"""The ``jsonl`` dataset: ``dialogues.jsonl`` plus one safetensors file per modality (the ../shared/data layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from mercore.config import option
from mercore.data import checks
from mercore.data.json_lines import read_json_objects
from mercore.data.types import SPLITS, Corpus, Dialogue
from mercore.errors import DataError
from mercore_data.labels import KNOWN_LABELS


@attrs.define
class JsonlConfig:
    """Options of ``jsonl``."""

    root: str = option(help="folder holding dialogues.jsonl and the feature files")
    modalities: list[str] = option(factory=lambda: ["text"], help="modalities to load (keys of 'features')")
    features: dict[str, str] = option(
        factory=lambda: {"text": "text_minilm_l6.safetensors"},
        help="modality -> safetensors file (relative to root) with one (T, D) tensor per dialogue id")
    labels: list[str] | None = option(
        None, help="class order; default: the IEMOCAP/MELD order when name is iemocap/meld, else sorted labels found")
    name: str = option("", help="corpus name; default: the root folder's name (iemocap, meld, ...)")
    dialogues_file: str = option("dialogues.jsonl", help="the JSONL file, relative to root")
    num_speakers: int | None = option(
        None, help="speaker-table size; default: most speakers in one dialogue. Later speakers are clipped to the last")
    expected_dims: dict[str, int] | None = option(None, help="modality -> feature dim every dialogue must have")
    dev_ratio: float | None = option(
        None, help="if the file has no dev dialogues: carve this fraction of train (seeded by dev_seed)")
    dev_seed: int = option(0, help="seed of the dev carve-out")

    def __attrs_post_init__(self) -> None:
        if self.dev_ratio is not None and not 0.0 < self.dev_ratio < 1.0:
            raise ValueError(f"dev_ratio must be in (0, 1), got {self.dev_ratio}")


class JsonlDataset:
    """Dialogues from ``<root>/dialogues.jsonl`` with features from one safetensors file per modality.

    Each JSONL line is ``{"dialogue": id, "split": "train"|"dev"|"test", "speakers": [...], "labels": [...],
    ...}`` (other keys such as ``texts`` are ignored); lists are aligned by utterance. Labels are names from
    the label set (``null`` = unlabelled, kept for context but not scored). Each feature file holds one tensor
    ``(T, D)`` per dialogue id (float16 is widened to float32). Speakers are numbered per dialogue in order of
    first appearance.
    """

    Config = JsonlConfig

    def __init__(self, config: JsonlConfig, **_: Any):
        self.config = config

    def feature_files(self) -> dict[str, Path]:
        """Modality -> the feature file it is read from (what a run records, with the extractor that made it,
        so that ``mercore predict`` can compute the same features for new conversations)."""
        root = checks.resolve_path(self.config.root)
        return {m: root / self.config.features[m] for m in self.config.modalities if m in self.config.features}

    def load(self) -> Corpus:
        cfg = self.config
        root = checks.require_dir(checks.resolve_path(cfg.root), "dataset root folder")
        name = cfg.name or root.resolve().name
        checks.check_modalities(cfg.modalities, cfg.features, root)
        jsonl = checks.require_file(root / cfg.dialogues_file, "dialogues file")
        rows = _read_rows(jsonl)

        if cfg.labels is not None:
            label_names = list(cfg.labels)
        elif name.lower() in KNOWN_LABELS:
            label_names = list(KNOWN_LABELS[name.lower()])
        else:
            found = {y for _, r in rows for y in r["labels"] if isinstance(y, str)}
            label_names = sorted(found)
        checks.label_index(label_names)
        checks.check_label_types((f"{jsonl}:{n}", r["dialogue"], r["labels"]) for n, r in rows)

        feature_files = {m: checks.require_file(root / cfg.features[m], f"{m!r} feature file") for m in cfg.modalities}
        dims = checks.DimTracker(cfg.expected_dims)
        splits: dict[str, list[Dialogue]] = {s: [] for s in SPLITS}
        with _open_all(feature_files) as handles:
            for line_no, row in rows:
                did = row["dialogue"]
                where_row = f"{jsonl}:{line_no}"
                labels = checks.encode_labels(row["labels"], label_names, file=where_row, dialogue_id=did, field="labels")
                speakers = checks.speaker_indices(row["speakers"], file=where_row, dialogue_id=did, field="speakers")
                feats: dict[str, torch.Tensor] = {}
                for m in cfg.modalities:
                    path, handle, keys = handles[m]
                    if did not in keys:
                        raise checks.error(path, did, m, f"dialogue id is missing from the {m!r} feature file "
                                                         f"({len(keys)} dialogues in it; listed in {where_row})")
                    try:
                        raw = handle.get_tensor(did)
                    except Exception as exc:  # a corrupt tensor inside a valid header
                        raise checks.error(path, did, m, f"cannot read tensor: {exc}") from exc
                    feats[m] = checks.as_feature_matrix(raw, file=path, dialogue_id=did, field=m)
                    dims.check(m, feats[m], file=path, dialogue_id=did, field=m)
                fields = {m: f"{m} ({feature_files[m].name})" for m in cfg.modalities}
                dialogue = checks.make_dialogue(did, features=feats, speakers=speakers, labels=labels,
                                                file=where_row, fields=fields)
                splits[row["split"]].append(dialogue)

        if not splits["dev"] and cfg.dev_ratio is not None and splits["train"]:
            train, dev = checks.carve_dev(splits["train"], cfg.dev_ratio, cfg.dev_seed, "random", str(jsonl))
            splits["train"], splits["dev"] = train, dev
        checks.require_splits(splits, str(jsonl), detail=" (no line has that 'split')")
        num_speakers = checks.finalize_speakers(splits, cfg.num_speakers, str(jsonl))
        return Corpus(name=name, label_names=label_names, modality_dims={m: dims.dims[m] for m in cfg.modalities},
                      num_speakers=num_speakers, splits=splits, source=str(root))


def _read_rows(jsonl: Path) -> list[tuple[int, dict]]:
    """Parse and shape-check every line; returns ``(line number, row)`` pairs."""
    rows: list[tuple[int, dict]] = []
    seen: dict[str, int] = {}
    for line_no, row in read_json_objects(jsonl):
        did = row.get("dialogue")
        if not isinstance(did, (str, int)) or isinstance(did, bool):
            raise checks.error(f"{jsonl}:{line_no}", None, "dialogue", f"missing or invalid dialogue id {did!r}")
        did = str(did)
        row["dialogue"] = did
        for key in ("split", "speakers", "labels"):
            if key not in row:
                raise checks.error(f"{jsonl}:{line_no}", did, key, "missing")
        if row["split"] not in SPLITS:
            raise checks.error(f"{jsonl}:{line_no}", did, "split", f"{row['split']!r} is not one of {list(SPLITS)}")
        for key in ("speakers", "labels"):
            if not isinstance(row[key], list):
                raise checks.error(f"{jsonl}:{line_no}", did, key, f"expected a list, got {type(row[key]).__name__}")
        if did in seen:
            raise checks.error(f"{jsonl}:{line_no}", did, "dialogue", f"duplicate dialogue id (first on line {seen[did]})")
        seen[did] = line_no
        rows.append((line_no, row))
    if not rows:
        raise DataError(f"{jsonl}: no dialogues in the file")
    return rows


class _open_all:
    """Open each modality's safetensors file once; ``{modality: (path, handle, set of keys)}``."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.ctx: list[Any] = []

    def __enter__(self) -> dict[str, tuple[Path, Any, set[str]]]:
        from safetensors import safe_open

        out = {}
        try:
            for m, path in self.files.items():
                try:
                    cm = safe_open(str(path), framework="pt")
                    handle = cm.__enter__()
                except Exception as exc:  # SafetensorError: header too large, invalid JSON, truncated file
                    raise checks.error(path, None, m, f"not a readable safetensors file ({exc})") from exc
                self.ctx.append(cm)
                out[m] = (path, handle, set(handle.keys()))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return out

    def __exit__(self, *exc: Any) -> None:
        for cm in reversed(self.ctx):
            cm.__exit__(None, None, None)
        self.ctx.clear()

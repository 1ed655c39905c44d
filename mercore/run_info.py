"""``run_info.json``: what a run directory needs besides its recipe and weights to be used on its own.

The trainer writes it once at set-up (atomically; a resumed run keeps the first one). It records the shape of
the data the model was built for (label names, feature dims per modality, speaker-table size), where the data
was (absolute paths, and the working directory of training, so that a relative ``data.root`` still resolves
from elsewhere), which extractor made each modality's features (``None`` where they cannot be recomputed,
e.g. a pickle), and the versions of Python, mercore, torch and every plugin distribution.

With it, :func:`mercore.load` rebuilds the model from the run folder alone (no data), from any working
directory and on a copied folder, and ``mercore predict`` knows which extractor to rebuild.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import attrs

from mercore import checkpoint as ckpt
from mercore.errors import CheckpointError, DataError

RUN_INFO = "run_info.json"
FORMAT = 1
#: Options of a dataset config that name a file or folder (a relative one is relative to where training ran):
#: jsonl and meld_csv `root`, the pickle readers' `path` and `text_file`.
PATH_OPTIONS = ("root", "path", "text_file")


@attrs.frozen
class FeatureSource:
    """Where one modality's features came from.

    Attributes:
        file: the absolute path of the feature file (None when the dataset does not say).
        identity: the extractor identity of the file's metadata (see :meth:`mercore.nn.extractor.Extractor.identity`),
            or None when the features cannot be recomputed (a pickle, or a file that names no extractor).
        reason: why ``identity`` is None (empty otherwise).
    """

    file: str | None
    identity: dict[str, str] | None
    reason: str = ""


@attrs.frozen
class RunInfo:
    """The contents of ``run_info.json`` (see the module docstring)."""

    label_names: list[str]
    modality_dims: dict[str, int]
    num_speakers: int
    dataset: str
    features: dict[str, FeatureSource]
    data_paths: dict[str, str]  # dataset option -> absolute path ("root": "/.../iemocap")
    trained_in: str  # the working directory of training
    versions: dict[str, Any]
    created: str = ""
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "RunInfo":
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: expected a JSON object")
        try:
            features = {m: FeatureSource(**f) for m, f in data["features"].items()}
            return cls(**{**data, "features": features})
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{where}: not a run_info.json this mercore can read ({exc})") from None


def read_run_info(run_dir: str | Path) -> RunInfo | None:
    """The run's :class:`RunInfo`; None for a run written before run_info.json existed.

    Raises:
        CheckpointError: the file exists but cannot be read.
    """
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    return RunInfo.from_dict(data, str(path))


def versions() -> dict[str, Any]:
    """Python, mercore, torch, and every plugin's distribution and version (``None`` for one not installed
    from a distribution)."""
    import torch

    import mercore
    from mercore.plugins import get_plugins

    plugins = {p.name: {"distribution": p.distribution, "version": p.version} for p in get_plugins().plugins}
    return {"python": platform.python_version(), "mercore": mercore.__version__, "torch": torch.__version__,
            "plugins": plugins}


def _identity_of(path: Path) -> tuple[dict[str, str] | None, str]:
    """The extractor identity recorded in a feature file, and why there is none."""
    from mercore.extract import feature_identity

    try:
        identity = feature_identity(path)
    except DataError as exc:
        return None, f"its metadata cannot be read ({exc})"
    if identity is None:
        return None, f"{path} names no extractor in its metadata"
    return identity, ""


def feature_sources(dataset: Any, modalities: list[str]) -> dict[str, FeatureSource]:
    """Each modality's feature file and extractor identity, from the dataset's optional ``feature_files()``
    (``{modality: path}``); a dataset without it (the pickle readers) has features that cannot be recomputed."""
    from mercore.nn.training import FeatureFileDataset

    files = dataset.feature_files() if isinstance(dataset, FeatureFileDataset) else {}
    out: dict[str, FeatureSource] = {}
    for m in modalities:
        path = files.get(m)
        if path is None:
            out[m] = FeatureSource(file=None, identity=None,
                                   reason=f"the dataset ({type(dataset).__name__}) reads {m!r} features that no "
                                          "extractor made (e.g. a pickle)")
            continue
        path = Path(os.path.abspath(path))  # normalised: no "..", as the user would write it
        identity, reason = _identity_of(path)
        out[m] = FeatureSource(file=str(path), identity=identity, reason=reason)
    return out


def data_paths(data_config: Any) -> dict[str, str]:
    """The absolute form of each path option of a dataset config (:data:`PATH_OPTIONS`) that is set."""
    out = {}
    for name in PATH_OPTIONS:
        value = getattr(data_config, name, None)
        if isinstance(value, str) and value:
            out[name] = os.path.abspath(os.path.expandvars(os.path.expanduser(value)))
    return out


def make_run_info(recipe: Any, corpus: Any) -> RunInfo:
    """The :class:`RunInfo` of a run about to train ``recipe`` on ``corpus`` (its loaded data)."""
    dataset = recipe.data.build()  # cheap: only load() reads files
    modalities = list(corpus.modality_dims)
    return RunInfo(
        label_names=list(corpus.label_names), modality_dims={m: int(d) for m, d in corpus.modality_dims.items()},
        num_speakers=int(corpus.num_speakers), dataset=corpus.name,
        features=feature_sources(dataset, modalities), data_paths=data_paths(recipe.data.config),
        trained_in=str(Path.cwd()), versions=versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write_run_info(run_dir: Path, recipe: Any, corpus: Any, *, keep_existing: bool) -> None:
    """Write ``run_dir/run_info.json`` atomically; with ``keep_existing`` (a resumed run) an existing one is kept,
    so it records what the run's first start saw."""
    path = Path(run_dir) / RUN_INFO
    if keep_existing and path.exists():
        return
    ckpt.atomic_write_text(path, make_run_info(recipe, corpus).to_json())


__all__ = ["RUN_INFO", "FeatureSource", "RunInfo", "read_run_info", "write_run_info", "make_run_info", "versions"]

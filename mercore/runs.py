"""Reopening a finished (or interrupted) run: rebuild its model from ``recipe.yaml`` through the registry.

A run directory is self-contained: ``run_info.json`` (see :mod:`mercore.run_info`) records the data's shape
(label names, feature dims, speaker-table size), so the model is rebuilt without the training data, from any
working directory and on a copied folder. Only a run written before run_info.json existed loads its data.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from mercore import checkpoint as ckpt
from mercore.errors import CheckpointError, ConfigError, DataError, RegistryError
from mercore.recipe import Recipe, build_recipe
from mercore.run_info import RunInfo, read_run_info
from mercore.yaml_io import parse_yaml


@attrs.define
class LoadedRun:
    """A rebuilt run: its recipe, its model (in eval mode) with the chosen checkpoint's weights, the data's
    shape, and its ``run_info.json`` (None for a run written before it existed).

    :meth:`predict` gives the emotions of new conversations (see :mod:`mercore.predict`).
    """

    run_dir: Path
    checkpoint: Path
    recipe: Recipe
    recipe_data: dict
    model: torch.nn.Module
    label_names: list[str]
    modality_dims: dict[str, int]
    num_speakers: int
    info: RunInfo | None = None
    # modality -> the extractor rebuilt from the run's record, built on the first predict() and reused
    _extractors: dict = attrs.field(factory=dict, repr=False)

    def predict(self, conversations):
        """Per-utterance labels and probabilities of one :class:`~mercore.nn.extractor.Conversation` (returns
        a :class:`~mercore.predict.ConversationPrediction`) or of a list of them (returns a list).

        Features are computed by the extractor each modality's training features were made with (rebuilt from
        ``run_info.json``; the same weights, or a DataError). A run with a distiller predicts with its student.

        Raises:
            DataError: the run's features cannot be recomputed (a pickle, or a file naming no extractor), or the
                extractor's weights differ from those the features were made with.
        """
        from mercore.predict import predict_run

        return predict_run(self, conversations)


def _missing_plugin_hint(data: dict, registry) -> list[str]:
    """Names of components in a saved recipe that no installed plugin provides."""
    from mercore.registry import KINDS

    missing = []

    def visit(node, path):
        if isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str) and ":" not in t and not any(t in registry.names(k) for k in KINDS):
                missing.append(f"{path}.type = {t!r}")
            for k, v in node.items():
                visit(v, f"{path}.{k}" if path else str(k))

    visit(data, "")
    return missing


def resolve_checkpoint(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The folder of ``checkpoint`` in ``run_dir``: ``best``, ``latest`` (LATEST's folder), a folder name of
    ``RUN/checkpoints``, or a path (absolute, or relative to the working directory when it exists there).

    Raises:
        CheckpointError: the run has no such checkpoint (yet).
    """
    ckpts = Path(run_dir) / "checkpoints"
    if checkpoint == "best":
        folder = ckpts / "best"
    elif checkpoint == "latest":
        latest = ckpt.latest_folder(ckpts)
        if latest is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet")
        folder = latest
    else:
        folder = Path(checkpoint)
        if not folder.is_absolute() and not folder.exists():
            folder = ckpts / checkpoint
    if not folder.exists():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    return folder


def locate_checkpoint(target: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint folder)`` of what a user names: a run directory (its best checkpoint) or a
    checkpoint folder ``RUN/checkpoints/NAME``."""
    target = Path(target)
    if (target / ckpt.META).exists():
        return target.parent.parent, target
    return target, resolve_checkpoint(target, "best")


def load_run_weights(folder: Path, model: torch.nn.Module, distiller: torch.nn.Module | None = None,
                     verify: bool = True) -> None:
    """Load a checkpoint's model weights and, when both exist, the distiller's (``extra.safetensors``)."""
    ckpt.load_weights(folder, model, verify=verify)
    if distiller is not None and (Path(folder) / "extra.safetensors").exists():
        ckpt.load_weights(folder, distiller, file="extra.safetensors", verify=verify)


def read_run_recipe(run_dir: Path) -> dict:
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a mercore run directory: {path.name} is missing")
    data, _ = parse_yaml(path.read_text(), source=str(path))
    return data


def load_run_recipe(run_dir: str | Path) -> tuple[Recipe, dict]:
    """The validated recipe of a run directory (its ``recipe.yaml``) and the plain data it was read from.

    Its dataset's paths are those recorded at training where they still exist (see
    :func:`with_recorded_data_paths`), so a relative ``data.root`` works from any working directory.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory.
        RegistryError: the recipe names a component whose plugin is not installed (named in the message).
    """
    from mercore.plugins import get_registry

    run_dir = Path(run_dir)
    data = read_run_recipe(run_dir)
    registry = get_registry()
    try:
        recipe = build_recipe(data, registry, source=str(run_dir / "recipe.yaml"))
    except ConfigError as exc:
        missing = _missing_plugin_hint(data, registry)
        if missing:
            raise RegistryError(
                f"the run in {run_dir} needs components that no installed plugin provides: {'; '.join(missing)}. "
                "Install the plugin package that provides them (see `mercore plugins`)."
            ) from exc
        raise
    return with_recorded_data_paths(recipe, read_run_info(run_dir)), data


def with_recorded_data_paths(recipe: Recipe, info: RunInfo | None) -> Recipe:
    """``recipe`` with each path option of its dataset (``data.root``, ``data.path``, ...) replaced by the absolute
    path recorded at training where that still exists, so that a relative one resolves from where the run was
    trained rather than from the working directory. Unchanged for a run without ``run_info.json``."""
    if info is None:
        return recipe
    config = recipe.data.config
    changes = {k: v for k, v in info.data_paths.items() if getattr(config, k, None) is not None and Path(v).exists()}
    if not changes:
        return recipe
    return attrs.evolve(recipe, data=attrs.evolve(recipe.data, config=attrs.evolve(config, **changes)))


def require_run_data(run_dir: str | Path, recipe: Recipe) -> None:
    """Check that the data of ``recipe`` (as :func:`load_run_recipe` resolved it) exists, before ``mercore eval``
    loads it.

    Raises:
        DataError: a data path is missing both where the run was trained and from the working directory; the
            message says that ``mercore predict`` and ``mercore.load`` do not need the data.
    """
    from mercore.data.checks import resolve_path

    info = read_run_info(run_dir)
    if info is None:
        return
    for key, recorded in info.data_paths.items():
        given = getattr(recipe.data.config, key, None)
        if isinstance(given, str) and not resolve_path(given).exists():
            raise DataError(
                f"{run_dir}: the run's data is missing: data.{key} {given!r} was {recorded} where the run was "
                f"trained (in {info.trained_in}), and neither that nor {Path.cwd() / given} exists. "
                "`mercore eval` needs the data set the run was trained on; `mercore predict` and "
                "mercore.load(RUN_DIR) need only the run folder.")


def model_context_of(info: RunInfo) -> dict:
    """What the model was built with besides its config (as :func:`mercore.train.model_context`), from the
    run's record instead of its data."""
    return dict(modality_dims=dict(info.modality_dims), num_classes=len(info.label_names),
                num_speakers=info.num_speakers, label_names=list(info.label_names))


def load_run(run_dir: str | Path, checkpoint: str = "best") -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load the weights of ``checkpoint`` (``best``, ``latest`` or a folder).

    The feature dims, label set and speaker-table size come from ``run_info.json``; only a run written before
    it existed loads its data set to learn them.

    Raises:
        CheckpointError: the run or checkpoint is missing, corrupted or does not match the recipe.
        RegistryError: the recipe names a component whose plugin is not installed (named in the message).
    """
    run_dir = Path(run_dir)
    recipe, data = load_run_recipe(run_dir)
    folder = resolve_checkpoint(run_dir, checkpoint)
    info = read_run_info(run_dir)
    if info is not None:
        context = model_context_of(info)
    else:  # a run from before run_info.json: its data set tells the shape
        from mercore.train import model_context

        context = model_context(recipe.data.build().load())
    model = recipe.model.build(**context)
    ckpt.load_weights(folder, model)
    model.eval()
    return LoadedRun(run_dir=run_dir, checkpoint=folder, recipe=recipe, recipe_data=data, model=model,
                     label_names=list(context["label_names"]), modality_dims=dict(context["modality_dims"]),
                     num_speakers=context["num_speakers"], info=info)

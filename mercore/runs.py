"""Reopening a finished (or interrupted) run: rebuild its model from ``recipe.yaml`` through the registry."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from mercore import checkpoint as ckpt
from mercore.errors import CheckpointError, ConfigError, RegistryError
from mercore.recipe import Recipe, build_recipe
from mercore.yaml_io import parse_yaml


@attrs.define
class LoadedRun:
    """A rebuilt run: its recipe, its model with the chosen checkpoint's weights, and the data's shape."""

    run_dir: Path
    checkpoint: Path
    recipe: Recipe
    recipe_data: dict
    model: torch.nn.Module
    label_names: list[str]
    modality_dims: dict[str, int]
    num_speakers: int


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

    Raises:
        CheckpointError: ``run_dir`` is not a run directory.
        RegistryError: the recipe names a component whose plugin is not installed (named in the message).
    """
    from mercore.plugins import get_registry

    run_dir = Path(run_dir)
    data = read_run_recipe(run_dir)
    registry = get_registry()
    try:
        return build_recipe(data, registry, source=str(run_dir / "recipe.yaml")), data
    except ConfigError as exc:
        missing = _missing_plugin_hint(data, registry)
        if missing:
            raise RegistryError(
                f"the run in {run_dir} needs components that no installed plugin provides: {'; '.join(missing)}. "
                "Install the plugin package that provides them (see `mercore plugins`)."
            ) from exc
        raise


def load_run(run_dir: str | Path, checkpoint: str = "best") -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load the weights of ``checkpoint`` (``best``, ``latest`` or a folder).

    The data set is loaded to learn the feature dims and label set the model was built with.

    Raises:
        CheckpointError: the run or checkpoint is missing, corrupted or does not match the recipe.
        RegistryError: the recipe names a component whose plugin is not installed (named in the message).
    """
    run_dir = Path(run_dir)
    recipe, data = load_run_recipe(run_dir)
    folder = resolve_checkpoint(run_dir, checkpoint)
    from mercore.train import model_context

    corpus = recipe.data.build().load()
    model = recipe.model.build(**model_context(corpus))
    ckpt.load_weights(folder, model)
    model.eval()
    return LoadedRun(run_dir=run_dir, checkpoint=folder, recipe=recipe, recipe_data=data, model=model,
                     label_names=list(corpus.label_names), modality_dims=dict(corpus.modality_dims),
                     num_speakers=corpus.num_speakers)

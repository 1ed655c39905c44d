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


def read_run_recipe(run_dir: Path) -> dict:
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a mercore run directory: {path.name} is missing")
    data, _ = parse_yaml(path.read_text(), source=str(path))
    return data


def load_run(run_dir: str | Path, checkpoint: str = "best") -> LoadedRun:
    """Rebuild the model of ``run_dir`` and load the weights of ``checkpoint`` (``best``, ``latest`` or a folder).

    The data set is loaded to learn the feature dims and label set the model was built with.

    Raises:
        CheckpointError: the run or checkpoint is missing, corrupted or does not match the recipe.
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
    if checkpoint == "best":
        folder = run_dir / "checkpoints" / "best"
    elif checkpoint == "latest":
        folder = ckpt.latest_folder(run_dir / "checkpoints")
        if folder is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet")
    else:
        folder = Path(checkpoint)
        if not folder.is_absolute() and not folder.exists():
            folder = run_dir / "checkpoints" / checkpoint
    if not folder.exists():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    corpus = recipe.data.build().load()
    model = recipe.model.build(modality_dims=dict(corpus.modality_dims), num_classes=corpus.num_classes,
                               num_speakers=corpus.num_speakers, label_names=list(corpus.label_names))
    ckpt.load_weights(folder, model)
    model.eval()
    return LoadedRun(run_dir=run_dir, checkpoint=folder, recipe=recipe, recipe_data=data, model=model,
                     label_names=list(corpus.label_names), modality_dims=dict(corpus.modality_dims),
                     num_speakers=corpus.num_speakers)

"""Recipes: loading, command-line overrides, ``${...}`` interpolation, and validation into typed configs.

The order is: parse YAML (with lines) -> apply overrides -> interpolate -> validate against :class:`Recipe`
and each component's attrs config. Every problem is collected and raised at once as a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import attrs

from mercore.config import LineMap, component, option, validate_config
from mercore.errors import ConfigError
from mercore.registry import Node, Registry
from mercore.yaml_io import parse_scalar, parse_yaml


@attrs.define
class TrainerConfig:
    """How to train: epochs, batch sizes, clipping, model selection, checkpointing."""

    epochs: int = option(10, help="number of passes over the training dialogues")
    batch_size: int = option(16, help="dialogues per optimizer step")
    eval_batch_size: int = option(64, help="dialogues per evaluation batch")
    grad_clip: float | None = option(1.0, help="max global gradient norm (null: no clipping)")
    select_metric: Literal["weighted_f1", "accuracy", "macro_f1"] = option(
        "weighted_f1", help="dev metric that picks the checkpoint whose test score is reported")
    patience: int | None = option(None, help="stop after this many epochs without a dev improvement")
    device: str = option("cpu", help="cpu, cuda, cuda:N or auto")
    threads: int | None = option(None, help="torch intra-op threads (null: torch's default)")
    progress: bool = option(True, help="show a progress bar when stderr is a terminal")
    keep_checkpoints: int = option(2, help="epoch checkpoints kept besides the best one")
    resume_from: str | None = option(None, help="checkpoint folder to resume from (default: the latest)")

    def __attrs_post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be at least 1")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be at least 1 (the run must stay resumable)")


@attrs.define
class Recipe:
    """A whole run: data, model, training objective, optimizer, and where to write results."""

    data: Node = component("dataset", required=True, help="the dataset component")
    model: Node = component("model", required=True, help="the model component")
    loss: Node = component("loss", {"type": "cross_entropy"}, help="the task loss")
    distiller: Node | None = component("distiller", None, help="a distiller (e.g. IKD from a teacher run)")
    optimizer: Node = component("optimizer", {"type": "adamw"})
    scheduler: Node | None = component("scheduler", {"type": "constant"})
    trainer: TrainerConfig = option(factory=TrainerConfig)
    seed: int = option(0, help="seed of every random number generator")
    output_dir: str = option("runs/default", help="run directory (recipe.yaml, metrics, checkpoints); a recipe file "
                                                  "without one gets runs/{name}/seed{seed}")
    resume: bool = option(False, help="continue the run in output_dir from its latest checkpoint")
    name: str = option("", help="a name for logs")
    description: str = option("", help="free text")


# -- overrides ---------------------------------------------------------------------------------------------

_OVERRIDE = re.compile(r"^(?P<del>~)?(?P<key>[A-Za-z_][\w\-]*(?:\.[\w\-]+)*)(?:=(?P<value>.*))?$", re.S)


@attrs.define
class OverrideNote:
    """Something an override did that the user should hear about (e.g. keys dropped on a type change)."""

    override: str
    message: str


def apply_overrides(data: dict, overrides: list[str], lines: dict[str, str]) -> list[OverrideNote]:
    """Apply ``key.sub=value`` and ``~key.sub`` (delete) overrides to ``data`` in place.

    Setting ``X.type`` to a different component resets node ``X`` to the new component's defaults: the
    old options are dropped (and reported) instead of being silently kept as stale keys.
    """
    problems: list[str] = []
    notes: list[OverrideNote] = []
    for raw in overrides:
        m = _OVERRIDE.match(raw.strip())
        if not m or (m["del"] is None and m["value"] is None) or (m["del"] and m["value"] is not None):
            problems.append(f"override {raw!r}: expected key.sub=value, or ~key.sub to remove a key")
            continue
        keys = m["key"].split(".")
        origin = f"override {raw!r}"
        parent: Any = data
        for i, k in enumerate(keys[:-1]):
            key: Any = int(k) if isinstance(parent, list) and k.isdigit() else k
            if isinstance(parent, dict):
                if parent.get(key) is None and m["del"] is None:
                    parent[key] = {}
                child = parent.get(key)
            elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
                child = parent[key]
            else:
                child = None
            if not isinstance(child, (dict, list)):
                where = ".".join(keys[: i + 1])
                problems.append(f"{origin}: {where} is {'missing' if child is None else repr(child)}, not a mapping")
                break
            parent = child
        else:
            last: Any = keys[-1]
            path = m["key"]
            if isinstance(parent, list):
                if not last.isdigit() or int(last) >= len(parent):
                    problems.append(f"{origin}: {last!r} is not an index of the list at {'.'.join(keys[:-1])}")
                    continue
                last = int(last)
            if m["del"]:
                if isinstance(parent, dict) and last in parent:
                    del parent[last]
                elif isinstance(parent, list):
                    parent.pop(last)
                else:
                    close = difflib.get_close_matches(str(last), [str(k) for k in parent], n=1) if isinstance(parent, dict) else []
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    problems.append(f"{origin}: cannot remove {path}: no such key{hint}")
                continue
            value = parse_scalar(m["value"])
            if last == "type" and isinstance(parent, dict) and parent.get("type") not in (None, value):
                dropped = [k for k in parent if k != "type"]
                if dropped:
                    notes.append(OverrideNote(raw, f"{'.'.join(keys[:-1])}: type changed from {parent['type']!r} to "
                                                   f"{value!r}; dropped its old keys: {', '.join(map(str, dropped))}"))
                parent.clear()
            parent[last] = value
            lines[path] = origin
            for sub in list(lines):  # the old node's lines no longer describe it
                if sub.startswith(path + ".") or sub.startswith(path + "["):
                    lines[sub] = origin
    if problems:
        raise ConfigError(problems, source="command-line overrides")
    return notes


# -- interpolation -----------------------------------------------------------------------------------------

_REF = re.compile(r"\$\{([^{}]+)\}")
_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    cur = data
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def interpolate(data: dict, lines: dict[str, str]) -> dict:
    """Resolve ``${a.b}`` (another key) and ``${env:NAME}`` / ``${env:NAME,default}`` in string values.

    A value that is exactly one reference keeps the referenced value's type (``${trainer.epochs}`` is an int).
    """
    problems: list[str] = []
    where = LineMap(lines)

    def resolve_ref(expr: str, path: str, depth: int) -> Any:
        expr = expr.strip()
        if expr.startswith("env:"):
            name, comma, default = expr[4:].partition(",")
            value = os.environ.get(name.strip())
            if value is None:
                if not comma:
                    problems.append(f"{where.where(path)}: environment variable {name.strip()!r} is not set "
                                    f"(give a default with ${{env:{name.strip()},DEFAULT}})")
                    return None
                return parse_scalar(default.strip())
            return parse_scalar(value)
        target = _lookup(data, expr)
        if target is _MISSING:
            problems.append(f"{where.where(path)}: ${{{expr}}} refers to a key that does not exist")
            return None
        return resolve(target, expr, depth + 1)

    def resolve(value: Any, path: str, depth: int) -> Any:
        if depth > 20:
            problems.append(f"{where.where(path)}: interpolation loop")
            return None
        if isinstance(value, dict):
            return {k: resolve(v, f"{path}.{k}" if path else str(k), depth) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{path}[{i}]", depth) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            whole = _REF.fullmatch(value)
            if whole:
                return resolve_ref(whole[1], path, depth)
            return _REF.sub(lambda mm: str(resolve_ref(mm[1], path, depth)), value)
        return value

    out = resolve(data, "", 0)
    if problems:
        raise ConfigError(problems)
    return out


# -- the whole pipeline -------------------------------------------------------------------------------------


@attrs.define
class LoadedRecipe:
    """A validated recipe with the plain data it came from (saved as the run's ``recipe.yaml``)."""

    recipe: Recipe
    data: dict
    source: str
    notes: list[OverrideNote]


def load_recipe_data(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, dict[str, str], list[OverrideNote]]:
    """Parse a recipe file and apply overrides and interpolation; no validation yet."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"recipe file {str(path)!r} does not exist"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read recipe file {str(path)!r}: {exc}"], source=str(path)) from None
    data, lines = parse_yaml(text, source=str(path))
    if not isinstance(data, dict):
        raise ConfigError([f"a recipe must be a mapping of keys, got {type(data).__name__}"], source=str(path))
    notes = apply_overrides(data, list(overrides or []), lines)
    if "output_dir" not in data:  # one folder per recipe and seed, so a seed loop needs no hand-made paths
        data["output_dir"] = default_output_dir(data, path)
    data = interpolate(data, lines)
    return data, lines, notes


def default_output_dir(data: dict, path: Path) -> str:
    """``runs/{name}/seed{seed}`` for a recipe without ``output_dir`` (name: the recipe's, else the file stem)."""
    name = "${name}" if data.get("name") else path.stem
    seed = "${seed}" if "seed" in data else "0"
    return f"runs/{name}/seed{seed}"


def build_recipe(data: dict, registry: Registry, lines: dict[str, str] | None = None, source: str = "<recipe>") -> Recipe:
    """Validate plain recipe data into a :class:`Recipe`, raising every problem at once."""
    recipe, problems = validate_config(Recipe, copy.deepcopy(data), registry, LineMap(lines or {}))
    if problems:
        raise ConfigError(problems, source=source)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None, registry: Registry | None = None) -> LoadedRecipe:
    """Parse, override, interpolate and validate a recipe file."""
    if registry is None:
        from mercore.plugins import get_registry

        registry = get_registry()
    data, lines, notes = load_recipe_data(path, overrides)
    recipe = build_recipe(data, registry, lines, source=str(path))
    return LoadedRecipe(recipe=recipe, data=data, source=str(path), notes=notes)

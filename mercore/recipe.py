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
from mercore.stages import StageConfig
from mercore.yaml_io import parse_scalar, parse_yaml_collecting

#: Devices a recipe may name; ``cuda:N`` picks one GPU. Checked at validate time, availability at run time.
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto")
_DEVICE = re.compile(r"^(?:cpu|cuda|auto|cuda:[0-9]+)$")
#: Seeds go to numpy (which takes 0 .. 2**32 - 1) and, times 1_000_003, to torch generators (64 bits).
MAX_SEED = 2**32 - 1


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
    device: str = option("auto", help="cpu, cuda, cuda:N or auto (CUDA when available, else the CPU); the device "
                                      "used is written to the log and results.json")
    precision: Literal["fp32", "bf16"] = option(
        "fp32", help="fp32, or bf16: forward and loss under torch.autocast(bfloat16) on the run's device, weights "
                     "and optimizer state stay fp32")
    threads: int | None = option(None, help="torch intra-op threads (null: the cores this process may use minus "
                                            "one, shared among torchrun's processes; OMP_NUM_THREADS if set)")
    progress: bool = option(True, help="show a progress bar when stderr is a terminal")
    keep_checkpoints: int = option(2, help="epoch checkpoints kept besides the best one")
    resume_from: str | None = option(None, help="checkpoint folder to resume from (default: the latest)")
    max_dialogue_length: int | None = option(
        1000, help="refuse a dialogue with more utterances than this, naming it, before the model runs out of "
                   "memory on it (attention grows with the square of the length; the longest IEMOCAP dialogue "
                   "has 110 utterances, MELD's 33); null: no limit")

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("epochs, batch_size and eval_batch_size must be at least 1")
        if self.keep_checkpoints < 1:
            problems.append("keep_checkpoints must be at least 1 (the run must stay resumable)")
        if not _DEVICE.match(self.device):
            problems.append(f"device {self.device!r} is not a device; valid choices: {', '.join(DEVICE_CHOICES)}")
        if self.max_dialogue_length is not None and self.max_dialogue_length < 1:
            problems.append(f"max_dialogue_length must be at least 1 (or null), got {self.max_dialogue_length}")
        if problems:
            raise ValueError("; ".join(problems))


@attrs.define
class Recipe:
    """A whole run: data, model, training objective, optimizer, and where to write results."""

    data: Node = component("dataset", required=True, help="the dataset component")
    model: Node = component("model", required=True, help="the model component")
    loss: Node = component("loss", {"type": "cross_entropy"}, help="the task loss")
    distiller: Node | None = component("distiller", None, help="a distiller (e.g. IKD from a teacher run)")
    optimizer: Node = component("optimizer", {"type": "adamw"})
    scheduler: Node | None = component("scheduler", {"type": "constant"})
    logger: Node | list[Node] = component("logger", {"type": "jsonl"},
                                          help="where the per-epoch metrics go: one logger or a list (jsonl: "
                                               "metrics.jsonl; tensorboard: mercore[tensorboard])")
    trainer: TrainerConfig = option(factory=TrainerConfig)
    seed: int = option(0, help="seed of every random number generator")
    output_dir: str = option("runs/default", help="run directory (recipe.yaml, metrics, checkpoints); a recipe file "
                                                  "without one gets runs/{name}/seed{seed}")
    stages: dict[str, StageConfig] = option(
        factory=dict, help="runs of other recipes trained first (e.g. an IKD teacher); see mercore.stages")
    resume: bool = option(False, help="continue the run in output_dir from its latest checkpoint")
    name: str = option("", help="a name for logs")
    description: str = option("", help="free text")

    def __attrs_post_init__(self) -> None:
        if not self.output_dir.strip():  # an empty output_dir would write into the current folder
            raise ValueError("output_dir is empty: it would write into the current folder and overwrite its "
                             "results.json and metrics.jsonl; give a folder, e.g. output_dir=runs/NAME")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")


# -- overrides ---------------------------------------------------------------------------------------------

_OVERRIDE = re.compile(r"^(?P<del>~)?(?P<key>[A-Za-z_][\w\-]*(?:\.[\w\-]+)*)(?:=(?P<value>.*))?$", re.S)


def _is_index(text: str) -> bool:
    """A list index written in ASCII digits (``str.isdigit`` also accepts ``'١٢'`` and ``'²'``)."""
    return text.isascii() and text.isdigit()


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
            key: Any = int(k) if isinstance(parent, list) and _is_index(k) else k
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
                if not _is_index(last) or int(last) >= len(parent):
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
        elif isinstance(cur, list) and _is_index(part) and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def interpolate(data: dict, lines: dict[str, str]) -> dict:
    """Resolve ``${a.b}`` (another key) and ``${env:NAME}`` / ``${env:NAME,default}`` in string values.

    A value that is exactly one reference keeps the referenced value's type (``${trainer.epochs}`` is an int).
    """
    out, problems, _ = _interpolate_collecting(data, lines)
    if problems:
        raise ConfigError(problems)
    return out


class _TooLarge(Exception):
    pass


def _interpolate_collecting(data: dict, lines: dict[str, str]) -> tuple[dict, list[str], list[str]]:
    """:func:`interpolate`, returning ``(data, problems, paths of the problems)``; a bad reference becomes None.

    References copy sub-trees, so a few lines of ``${...}`` could expand like an alias bomb: the output is
    bounded by the YAML reader's :data:`~mercore.yaml_io.MAX_VALUES` too.
    """
    from mercore.yaml_io import MAX_VALUES

    problems: list[str] = []
    bad_paths: list[str] = []
    where = LineMap(lines)
    count = 0

    def resolve_ref(expr: str, path: str, depth: int) -> Any:
        expr = expr.strip()
        if expr.startswith("env:"):
            name, comma, default = expr[4:].partition(",")
            value = os.environ.get(name.strip())
            if value is None:
                if not comma:
                    bad_paths.append(path)
                    problems.append(f"{where.where(path)}: environment variable {name.strip()!r} is not set "
                                    f"(give a default with ${{env:{name.strip()},DEFAULT}})")
                    return None
                return parse_scalar(default.strip())
            return parse_scalar(value)
        target = _lookup(data, expr)
        if target is _MISSING:
            bad_paths.append(path)
            problem = f"{where.where(path)}: ${{{expr}}} refers to a key that does not exist"
            if problem not in problems:  # a key that others refer to (e.g. the default output_dir) is named once
                problems.append(problem)
            return None
        return resolve(target, expr, depth + 1)

    def resolve(value: Any, path: str, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise _TooLarge
        if depth > 20:
            bad_paths.append(path)
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

    try:
        out = resolve(data, "", 0)
    except _TooLarge:
        return data, [f"the ${{...}} references expand the recipe to more than {MAX_VALUES:,} values"], [""]
    return out, problems, bad_paths


# -- the whole pipeline -------------------------------------------------------------------------------------


@attrs.define
class LoadedRecipe:
    """A validated recipe with the plain data it came from (saved as the run's ``recipe.yaml``)."""

    recipe: Recipe
    data: dict
    source: str
    notes: list[OverrideNote]


def load_recipe_data(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, dict[str, str], list[OverrideNote]]:
    """Parse a recipe file and apply overrides and interpolation; no validation yet.

    Raises:
        ConfigError: with every problem of the three steps (duplicate keys, overrides, ``${...}``).
    """
    data, lines, notes, problems, _ = _load_recipe_data_collecting(Path(path), list(overrides or []))
    if problems:
        raise ConfigError(problems, source=str(path))
    return data, lines, notes


def read_recipe_file(path: Path, overrides: list[str]) -> tuple[dict, dict[str, str], list[OverrideNote], list[str]]:
    """Read and parse a recipe file and apply ``key.sub=value`` overrides, collecting their problems (unreadable
    files and invalid YAML raise). Returns ``(data, lines, notes, problems)``; nothing is interpolated yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"recipe file {str(path)!r} does not exist"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read recipe file {str(path)!r}: {exc}"], source=str(path)) from None
    data, lines, problems = parse_yaml_collecting(text, source=str(path))
    if not isinstance(data, dict):
        raise ConfigError([f"a recipe must be a mapping of keys, got {type(data).__name__}"], source=str(path))
    notes: list[OverrideNote] = []
    try:
        notes = apply_overrides(data, overrides, lines)
    except ConfigError as exc:
        problems += exc.problems
    return data, lines, notes, problems


def _load_recipe_data_collecting(path: Path, overrides: list[str]
                                 ) -> tuple[dict, dict[str, str], list[OverrideNote], list[str], list[str]]:
    """The steps of :func:`load_recipe_data`, each step's problems collected instead of raised, so that one
    report lists them all (a duplicate key *and* a bad ``${...}``). Unreadable files and invalid YAML still
    raise: nothing after them can be checked.

    Returns ``(data, lines, notes, problems, paths whose ${...} could not be resolved)``.
    """
    data, lines, notes, problems = read_recipe_file(path, overrides)
    if "output_dir" not in data:  # one folder per recipe and seed, so a seed loop needs no hand-made paths
        data["output_dir"] = default_output_dir(data, path)
    data, more, bad_paths = _interpolate_collecting(data, lines)
    problems += more
    return data, lines, notes, problems, bad_paths


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
    data, lines, notes, problems, unresolved = _load_recipe_data_collecting(Path(path), list(overrides or []))
    # Validation runs even when earlier steps found problems, so one report lists everything; its own
    # complaints about a key an earlier step already flagged are still worth reading (they are rare).
    where = LineMap(lines)
    recipe, more = validate_config(Recipe, copy.deepcopy(data), registry, where)
    # a bad ${...} already said why its key is null: no second problem about that null
    problems += [p for p in more if not any(p.startswith(where.where(b) + ":") for b in unresolved if b)]
    if problems:
        raise ConfigError(problems, source=str(path))
    return LoadedRecipe(recipe=recipe, data=data, source=str(path), notes=notes)

"""Multi-stage runs: a recipe's ``stages`` are other recipes' runs that must be finished before it trains.

Today's stage is IKD's teacher; feature extraction is the next. A stage is declared in the recipe::

    stages:
      teacher:
        recipe: text_sdmoe_iemocap.yaml      # relative to THIS recipe's folder
        output_dir: ${output_dir}/teacher     # relative to the working directory, like output_dir
        overrides: ["trainer.epochs=10"]      # optional, for the stage's recipe
    distiller: {type: ikd, teacher: "${stages.teacher.output_dir}", ...}

Each stage is a normal run directory, in one of three states:

* ``finished`` (it holds ``results.json``): reused as it is, never retrained;
* ``resume`` (checkpoints but no ``results.json``: an interrupted run): continued with ``resume=true``;
* ``new``: trained from the start.

**The inheritance rule.** A stage's recipe gets, in this order: the declaring run's values of
:data:`INHERITED_KEYS` (``seed``; the data's files: ``data.root`` or ``data.path``, and for the feature
pickles ``data.layout``, ``data.text_file`` and ``data.text_layout``, so that a teacher stage reads the very
files its student reads; each when the declaring run's data set it and the stage's dataset has that option;
``trainer.device``, ``trainer.precision``, ``trainer.threads``, ``trainer.progress``: an IKD teacher trains on
the run's device at its precision) except the keys that the stage's own
``overrides`` set; then the stage's ``overrides``; then ``output_dir`` (always the stage's); then
``resume=true`` for an interrupted stage. Everything else, epochs included, is the stage recipe's own.
Stages run in declaration order before the declaring run, each after its own stages (a stage may declare
stages; a cycle is refused). Every rank of a torchrun job runs every stage, as it runs the main run.

Only ``mercore run`` trains stages (:func:`run_with_stages`); ``validate`` plans them (their recipes are
checked) and ``eval`` ignores them: neither trains anything.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import attrs
import numpy as np
import torch

from mercore.config import option
from mercore.errors import ConfigError

#: The declaring run's keys that a stage inherits unless its ``overrides`` set them (see the module docstring).
INHERITED_KEYS = ("seed", "data.root", "data.path", "data.layout", "data.text_file", "data.text_layout",
                  "trainer.device", "trainer.precision", "trainer.threads", "trainer.progress")

StageState = Literal["finished", "resume", "new"]


@attrs.define
class StageConfig:
    """One stage of a recipe: another recipe trained into its own run directory before this one."""

    recipe: str = option(help="the stage's recipe file; a relative path is relative to the declaring recipe's folder")
    output_dir: str = option(help="the stage's run directory (a relative path is relative to the working directory)")
    overrides: list[str] = option(factory=list, help="overrides of the stage's recipe, applied after the inherited "
                                                     "keys (seed, data.root/path/layout/text_file/text_layout, "
                                                     "trainer.device/precision/threads/progress)")


@attrs.define
class PlannedStage:
    """A stage resolved for this invocation: its validated recipe, its run directory and what will happen."""

    name: str
    recipe_path: Path
    run_dir: Path
    state: StageState
    inherited: list[str]  # the inherited overrides, "key=value"
    overrides: list[str]  # the stage's own overrides
    loaded: Any  # mercore.recipe.LoadedRecipe of the stage, with every override applied
    stages: list["PlannedStage"]  # the stage's own stages (empty when it is finished: nothing of it runs)

    @property
    def command(self) -> str:
        """The command line that makes this stage's run on its own."""
        args = [str(self.recipe_path), *self.inherited, *self.overrides, f"output_dir={self.run_dir}"]
        if self.state == "resume":
            args.append("resume=true")
        return "mercore run " + " ".join(_shell_word(a) for a in args)


def stage_state(run_dir: Path) -> StageState:
    """``finished`` (results.json), ``resume`` (checkpoints, no results.json) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").exists():
        return "finished"
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        return "resume"
    return "new"


def _shell_word(text: str) -> str:
    return text if text and all(ch.isalnum() or ch in "-_.,/=:+[]@%" for ch in text) else "'" + text.replace("'", "'\\''") + "'"


def _override_value(value: Any) -> str:
    """A value written so that the override parser (YAML scalars) reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    from mercore.yaml_io import parse_scalar

    text = str(value)
    bare = text and text.strip() == text and all(ch.isalnum() or ch in "-_./:+@%" for ch in text)
    return text if bare and parse_scalar(text) == text else json.dumps(text)


def _dataset_has_option(data: dict, option_name: str, registry) -> bool:
    node = data.get("data")
    kind = node.get("type") if isinstance(node, dict) else node
    if not isinstance(kind, str):
        return False
    try:
        cls = registry.get("dataset", kind).config_cls
    except Exception:  # an unknown dataset: the stage recipe's validation reports it
        return False
    return any(f.name == option_name for f in attrs.fields(cls))


def inherited_overrides(parent_data: dict, parent_recipe, stage_data: dict, own: list[str], registry) -> list[str]:
    """The overrides that pass :data:`INHERITED_KEYS` from the declaring run to a stage (the stated rule)."""
    from mercore.recipe import _MISSING, _lookup  # recipe.py imports this module: look up at call time

    own_keys = {o.lstrip("~").split("=", 1)[0].strip() for o in own}
    out = []
    for key in INHERITED_KEYS:
        if key in own_keys:
            continue
        if key.startswith("data."):
            value = _lookup(parent_data, key)
            if value is _MISSING or value is None or not _dataset_has_option(stage_data, key.split(".", 1)[1], registry):
                continue
        elif key.startswith("trainer."):
            value = getattr(parent_recipe.trainer, key.split(".", 1)[1])
        else:
            value = getattr(parent_recipe, key)
        out.append(f"{key}={_override_value(value)}")
    return out


def plan_stages(loaded, registry=None, _chain: tuple[Path, ...] = ()) -> list[PlannedStage]:
    """Resolve and validate the stages of ``loaded`` (a :class:`~mercore.recipe.LoadedRecipe`), recursively.

    Raises:
        ConfigError: a stage recipe is missing or invalid (named with the stage), or the stages form a cycle.
    """
    from mercore.recipe import load_recipe, load_recipe_data

    if registry is None:
        from mercore.plugins import get_registry

        registry = get_registry()
    here = Path(loaded.source).resolve()
    chain = (*_chain, here)
    plan = []
    for name, stage in loaded.recipe.stages.items():
        where = f"stages.{name}"
        path = Path(stage.recipe)
        if not path.is_absolute():
            path = Path(loaded.source).parent / path
        if not path.is_file():
            raise ConfigError([f"{where}.recipe: {str(path)!r} does not exist (a relative stage recipe is relative "
                               f"to the folder of {loaded.source})"], source=loaded.source)
        if path.resolve() in chain:
            shown = " -> ".join(str(p) for p in (*chain, path.resolve()))
            raise ConfigError([f"{where}.recipe: the stages form a cycle: {shown}"], source=loaded.source)
        run_dir = Path(stage.output_dir)
        state = stage_state(run_dir)
        try:
            stage_data, _, _ = load_recipe_data(path, list(stage.overrides))
            inherited = inherited_overrides(loaded.data, loaded.recipe, stage_data, list(stage.overrides), registry)
            full = [*inherited, *stage.overrides, f"output_dir={_override_value(str(run_dir))}"]
            if state == "resume":
                full.append("resume=true")
            stage_loaded = load_recipe(path, full, registry=registry)
        except ConfigError as exc:
            raise ConfigError([f"{where} ({path}): {p}" for p in exc.problems], source=loaded.source) from None
        sub = [] if state == "finished" else plan_stages(stage_loaded, registry, chain)
        plan.append(PlannedStage(name=name, recipe_path=path, run_dir=run_dir, state=state, inherited=inherited,
                                 overrides=list(stage.overrides), loaded=stage_loaded, stages=sub))
    return plan


_STATE_WORDS = {"finished": "finished, reused", "resume": "interrupted, resumed", "new": "new, trained"}


def format_plan(plan: list[PlannedStage], loaded, indent: str = "") -> list[str]:
    """The lines ``mercore run`` prints before it starts: every stage, then the run itself."""
    lines = [] if indent else [f"stage plan ({_count(plan) + 1} run{'s' if _count(plan) else ''}, in this order):"]
    for st in plan:
        lines += format_plan(st.stages, st.loaded, indent + "    ")
        lines.append(f"{indent}  - stage {st.name}: {st.recipe_path} -> {st.run_dir}  [{_STATE_WORDS[st.state]}]")
        if st.state != "finished":
            lines.append(f"{indent}      inherited: {' '.join(st.inherited) or '(none)'}")
            lines.append(f"{indent}      own overrides: {' '.join(st.overrides) or '(none)'}")
    if not indent:
        lines.append(f"  - run: {loaded.source} -> {loaded.recipe.output_dir}")
    return lines


def _count(plan: list[PlannedStage]) -> int:
    return sum(1 + _count(st.stages) for st in plan)


def unfinished(plan: list[PlannedStage]) -> list[PlannedStage]:
    """The stages (not nested ones) that are not finished yet."""
    return [st for st in plan if st.state != "finished"]


@contextmanager
def kept_global_state() -> Iterator[None]:
    """Restore every global random state (torch, CUDA, Python, NumPy) and torch's thread count afterwards.

    A stage trains in the same process as the run that declares it; this keeps the declaring run's random
    stream and threads exactly as they would be had the stage been trained beforehand.
    """
    py, npy, threads = random.getstate(), np.random.get_state(), torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_num_threads(threads)


def run_stages(plan: list[PlannedStage], log: Callable[[str], None] = print) -> None:
    """Train every unfinished stage of ``plan`` (each after its own stages) into its run directory."""
    from mercore import distributed as dist
    from mercore.train import Trainer

    for st in plan:
        if st.state == "finished":
            continue
        run_stages(st.stages, log)

        def stage_log(msg: str, _name: str = st.name) -> None:
            log(f"[{_name}] {msg}")

        stage_log(f"{'resuming the interrupted' if st.state == 'resume' else 'training the'} stage "
                  f"{st.recipe_path} into {st.run_dir}")
        with kept_global_state():
            results = Trainer(st.loaded, log=stage_log).run()
        dist.barrier()  # every rank goes on only once rank 0 has written the stage's results
        # the dev score that selected the stage's checkpoint: a stage is an intermediate (a sweep's teachers
        # too), so its test score stays in its results.json and is not printed
        stage_log(f"done: dev weighted F1 {results['dev']['weighted_f1']:.4f} (epoch {results['best_epoch']})")


def run_with_stages(loaded, log: Callable[[str], None] = print) -> dict:
    """``mercore run``: print the stage plan, train the unfinished stages, then the run itself; its results."""
    from mercore import distributed as dist
    from mercore.train import Trainer

    plan = plan_stages(loaded)
    if plan and dist.rank() == 0:
        for line in format_plan(plan, loaded):
            log(line)
    run_stages(plan, log if dist.rank() == 0 else (lambda msg: None))
    return Trainer(loaded, log=log).run()


__all__ = ["INHERITED_KEYS", "PlannedStage", "StageConfig", "format_plan", "inherited_overrides", "kept_global_state",
           "plan_stages", "run_stages", "run_with_stages", "stage_state", "unfinished"]

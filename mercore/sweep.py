"""``mercore sweep RECIPE --grid key=v1,v2 ... --seeds 0,1,2``: choose settings on dev, read test once.

Runs every combination of the grid's values times every seed, each into ``OUT/<setting>/seed<seed>`` (``OUT``
defaults to ``runs/sweep/<recipe file stem>``). Resumable: a run with a ``results.json`` is finished and
skipped; a run with checkpoints but no results is resumed (``resume=true``); the others start. Then it ranks the
settings by their mean dev score over seeds (the recipe's ``trainer.select_metric``, the same dev score that
selected each run's checkpoint) and writes ``OUT/sweep.md`` and ``OUT/sweep.csv``. Test scores are read for the
selected (top) setting only; the other rows have none, and the table says so. The trainer's epoch lines are
shown without their test scores (each run's ``metrics.jsonl`` and ``results.json`` still hold them).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Callable, Sequence

import attrs

from mercore.errors import ConfigError
from mercore.report import mean_std, percent_mean_std, to_csv, to_markdown

# The trainer's epoch line shows test scores; a sweep shows only dev (metrics.jsonl keeps both, as for any run).
_TEST_IN_LOG = re.compile(r"\s+test acc \S+ wF1 \S+")
_GRID = re.compile(r"^(?P<key>[A-Za-z_~][\w\-.]*)=(?P<values>.+)$", re.S)


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["a.b=1,2", "c=x,y"]`` -> ``[("a.b", ["1", "2"]), ("c", ["x", "y"])]`` (values stay override text)."""
    grid, problems = [], []
    for spec in specs:
        m = _GRID.match(spec.strip())
        values = [v.strip() for v in m["values"].split(",")] if m else []
        if not m or not all(values):
            problems.append(f"--grid {spec!r}: expected key.sub=value1,value2,...")
            continue
        if any(k == m["key"] for k, _ in grid):
            problems.append(f"--grid {spec!r}: {m['key']} is given twice")
            continue
        grid.append((m["key"], values))
    if problems:
        raise ConfigError(problems, source="command line")
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError([f"--seeds {text!r}: expected integers separated by commas (e.g. 0,1,2)"],
                          source="command line") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError([f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2"], source="command line")
    return seeds


def settings(grid: Sequence[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination of the grid, as lists of ``key=value`` overrides (the first key varies slowest)."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(vs for _, vs in grid))]


def setting_dir(overrides: Sequence[str]) -> str:
    """A folder name for a setting: its overrides joined by ``__``, path characters replaced."""
    if not overrides:
        return "default"
    return "__".join(re.sub(r"[^\w.=+\-]", "_", o) for o in overrides)


@attrs.define
class SettingResult:
    overrides: list[str]
    run_dirs: list[Path]
    dev_scores: list[float]

    @property
    def dev_mean(self) -> float:
        return mean_std(self.dev_scores)[0]


def run_one(recipe: str, overrides: Sequence[str], run_dir: Path, log: Callable[[str], None]) -> str:
    """Run (or resume, or skip) one run; returns what was done: ``finished``, ``resumed`` or ``ran``."""
    from mercore.recipe import load_recipe
    from mercore.stages import run_with_stages, stage_state

    state = stage_state(run_dir)
    if state == "finished":
        return "finished"
    resume = state == "resume"
    loaded = load_recipe(recipe, [*overrides, f"output_dir={run_dir}", *(["resume=true"] if resume else [])])
    for note in loaded.notes:
        log(f"note: {note.message}")
    run_with_stages(loaded, log=lambda msg: log(_TEST_IN_LOG.sub("", msg)))  # its stages (an IKD teacher) first
    return "resumed" if resume else "ran"


def sweep(recipe: str, grid: Sequence[tuple[str, list[str]]], seeds: Sequence[int], overrides: Sequence[str] = (),
          out_dir: str | Path | None = None, log: Callable[[str], None] = print) -> tuple[list[SettingResult], Path]:
    """Run the grid x seeds (resumably) and write the dev-ranked table; returns the ranked settings and OUT."""
    import json

    out = Path(out_dir) if out_dir is not None else Path("runs") / "sweep" / Path(recipe).stem
    results: list[SettingResult] = []
    for setting in settings(grid):
        res = SettingResult(list(setting), [], [])
        for seed in seeds:
            run_dir = out / setting_dir(setting) / f"seed{seed}"
            log(f"sweep: {' '.join(setting) or '(recipe as is)'} seed {seed} -> {run_dir}")
            done = run_one(recipe, [*overrides, *setting, f"seed={seed}"], run_dir, log)
            if done == "finished":
                log("sweep:   finished before: skipped")
            summary = json.loads((run_dir / "results.json").read_text())
            metric = summary["selected_on"].split()[-1]
            res.run_dirs.append(run_dir)
            res.dev_scores.append(float(summary["dev"][metric]))
        results.append(res)
    ranked = sorted(results, key=lambda r: -r.dev_mean)  # stable: ties keep the grid order
    write_table(ranked, out, recipe, seeds, overrides)
    return ranked, out


def write_table(ranked: Sequence[SettingResult], out: Path, recipe: str, seeds: Sequence[int],
                overrides: Sequence[str]) -> None:
    """``OUT/sweep.md`` and ``OUT/sweep.csv``: ranked by mean dev score; test for the top row only."""
    import json

    metric = json.loads((ranked[0].run_dirs[0] / "results.json").read_text())["selected_on"].split()[-1]
    rows = []
    for rank, r in enumerate(ranked, 1):
        row = {"rank": str(rank), "setting": " ".join(r.overrides) or "(recipe as is)", "seeds": str(len(r.dev_scores)),
               f"dev {metric}": percent_mean_std(r.dev_scores), f"test {metric}": "not read"}
        if rank == 1:
            tests = [json.loads((d / "results.json").read_text())["test"][metric] for d in r.run_dirs]
            row[f"test {metric}"] = percent_mean_std(tests)
        row["run dirs"] = str(r.run_dirs[0].parent)
        rows.append(row)
    note = (f"Sweep of {recipe}{' with ' + ' '.join(overrides) if overrides else ''}, seeds "
            f"{','.join(map(str, seeds))}: settings ranked by mean dev {metric} over seeds (mean ± sample std, "
            f"percent). Test was read for the selected (rank 1) setting only.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(to_markdown(rows, note))
    (out / "sweep.csv").write_text(to_csv(rows))


def cmd_sweep(args) -> int:
    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    ranked, out = sweep(args.recipe, grid, seeds, list(args.overrides), args.out)
    print((out / "sweep.md").read_text(), end="")
    print(f"selected on dev: {' '.join(ranked[0].overrides) or '(recipe as is)'}; wrote {out / 'sweep.md'} and "
          f"{out / 'sweep.csv'}")
    return 0


def add_parser(sub) -> None:
    """The ``sweep`` sub-command (called from :func:`mercore.cli.build_parser`)."""
    p = sub.add_parser("sweep", help="run a grid of overrides x seeds (resumable), rank by mean dev score; "
                                     "test read for the selected setting only")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value applied to every run")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a key and its values (repeatable)")
    p.add_argument("--seeds", default="0", help="seeds, comma-separated (default 0)")
    p.add_argument("--out", help="sweep folder (default runs/sweep/RECIPE_STEM)")
    p.set_defaults(func=cmd_sweep)

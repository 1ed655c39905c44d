"""``mercore report RUN_DIRS...``: aggregate finished runs over seeds into a Markdown and a CSV table.

Runs are grouped by their saved ``recipe.yaml`` with ``seed`` and ``output_dir`` removed: runs that differ only
in the seed form one row. A stage's ``output_dir`` (an IKD teacher trained per seed) is removed too, and a value
that names it (``distiller.teacher``) reads as ``<stage NAME>``: two seeds of a distilled student, each with its
own teacher run of the same recipe, are one setting. Each row gives the number of seeds, the mean and the
sample standard deviation (``ddof=1``; none shown for one seed) of the dev score that selected the checkpoint, of test accuracy, weighted F1 and
macro F1, and the mean test F1 of every class, all in percent.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import attrs

from mercore.errors import DataError


@attrs.define
class RunResult:
    """What the report reads of one finished run."""

    run_dir: Path
    name: str
    config_key: str  # the recipe minus seed and output_dirs (see seedless_recipe), canonical JSON
    seed: int
    results: dict


def seedless_recipe(recipe: dict) -> dict:
    """``recipe`` without what changes from seed to seed of one setting: ``seed``, ``output_dir``, ``resume``,
    each stage's ``output_dir``, and the paths that point at those stage outputs (replaced by ``<stage NAME>``)."""
    stages = recipe.get("stages") or {}
    stage_dirs = {str(st["output_dir"]): f"<stage {name}>" for name, st in stages.items()
                  if isinstance(st, dict) and st.get("output_dir")}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return stage_dirs.get(value, value) if isinstance(value, str) else value

    out = {k: strip(v) for k, v in recipe.items() if k not in ("seed", "output_dir", "resume", "stages")}
    if stages:
        out["stages"] = {name: ({k: v for k, v in st.items() if k != "output_dir"} if isinstance(st, dict) else st)
                         for name, st in stages.items()}
    return out


def read_run(run_dir: str | Path) -> RunResult:
    """Read a finished run's ``results.json`` and ``recipe.yaml``; a clear error if it is not finished."""
    from mercore.runs import read_run_recipe

    d = Path(run_dir)
    res = d / "results.json"
    if not res.is_file():
        raise DataError(f"{d}: no results.json (not a finished run; resume it with resume=true)")
    results = json.loads(res.read_text())
    recipe = seedless_recipe(read_run_recipe(d))
    name = str(recipe.get("name") or d.parent.name or d.name)
    return RunResult(d, name, json.dumps(recipe, sort_keys=True, default=str), int(results.get("seed", 0)), results)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for fewer than two values)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def percent_mean_std(values: list[float]) -> str:
    """``"61.00 ± 1.19"`` (x 100, sample std); one value has no spread to show: ``"61.00"``."""
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}" if len(values) > 1 else f"{m:.2f}"


@attrs.define
class ReportRow:
    label: str
    runs: list[RunResult]

    def cells(self, split: str = "test") -> dict[str, str]:
        first = self.runs[0].results
        select = first.get("selected_on", "dev weighted_f1").split()[-1]
        out = {"recipe": self.label, "seeds": ",".join(str(r.seed) for r in self.runs),
               f"dev {select}": percent_mean_std([r.results["dev"][select] for r in self.runs])}
        for metric in ("accuracy", "weighted_f1", "macro_f1"):
            out[f"{split} {metric}"] = percent_mean_std([r.results[split][metric] for r in self.runs])
        for cls in first.get("label_names", []):
            vals = [100 * r.results[split]["per_class_f1"][cls] for r in self.runs]
            out[f"F1 {cls}"] = f"{sum(vals) / len(vals):.2f}"
        return out


def group_runs(run_dirs: Sequence[str | Path]) -> list[ReportRow]:
    """Read and group runs (identical recipes up to the seed), in the order their groups first appear."""
    groups: dict[str, list[RunResult]] = {}
    for d in run_dirs:
        r = read_run(d)
        groups.setdefault(r.config_key, []).append(r)
    names: dict[str, int] = {}
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in runs]
        if len(set(seeds)) != len(seeds):
            dup = next(s for s in seeds if seeds.count(s) > 1)
            raise DataError(f"runs {', '.join(str(r.run_dir) for r in runs if r.seed == dup)} have the same recipe "
                            f"and seed {dup}: pass each run once")
        name = runs[0].name
        names[name] = names.get(name, 0) + 1
        rows.append(ReportRow(name if names[name] == 1 else f"{name} (config {names[name]})", runs))
    return rows


def to_markdown(rows: Sequence[dict[str, str]], note: str = "") -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return (note + "\n\n" if note else "") + "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def report(run_dirs: Sequence[str | Path], split: str = "test") -> list[dict[str, str]]:
    """One table row per group of seeds (see the module docstring)."""
    rows = [row.cells(split) for row in group_runs(run_dirs)]
    cols: list[str] = []
    for r in rows:  # union of columns (groups of different corpora have different classes)
        cols += [c for c in r if c not in cols]
    return [{c: r.get(c, "") for c in cols} for r in rows]


def cmd_report(args) -> int:
    rows = report(args.runs, split=args.split)
    note = (f"{len(args.runs)} runs; mean ± sample std (ddof=1) over seeds, in percent; per-class F1: mean "
            f"over seeds; {args.split}: the checkpoint selected on dev.")
    md = to_markdown(rows, note)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".csv").write_text(to_csv(rows))
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


def add_parser(sub) -> None:
    """The ``report`` sub-command (called from :func:`mercore.cli.build_parser`)."""
    p = sub.add_parser("report", help="aggregate finished runs over seeds (mean, std, per-class F1) into "
                                      "Markdown/CSV")
    p.add_argument("runs", nargs="+", help="run directories (runs differing only in the seed form one row)")
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--out", help="also write OUT.md and OUT.csv")
    p.set_defaults(func=cmd_report)

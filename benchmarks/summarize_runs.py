"""Summarize mercore runs: read every ``results.json`` under a folder and print markdown tables.

    python benchmarks/summarize_runs.py runs/text
    python benchmarks/summarize_runs.py runs/text --include-nested    # also the IKD teachers (RUN/teacher)

Runs are grouped by their path below the folder with the ``seed<N>`` parts removed, so
``runs/text/iemocap/sdmoe/seed0`` and ``.../seed1`` are one group, named by its last part (``sdmoe``) and the
corpus in ``results.json`` (``iemocap``). A run directory inside another run (the teacher that ``ikd`` trains
into ``RUN/teacher``) is left out unless ``--include-nested``; it is then its own group (``summer/teacher``).

Printed: one table with, per group, the number of seeds, test accuracy and weighted F1 (mean ± sample std over
seeds, ddof=1; the test score of the checkpoint selected on dev), macro F1, the selected dev weighted F1, the
``reference_best_test_epoch`` weighted F1 (the best test epoch, as SDT's scripts report: for comparison with the
literature only, never a selection) and the seconds per run (``train_seconds`` of ``results.json``); then one
per-class test F1 table (means over seeds) per corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

SEED_PART = re.compile(r"^seed[_-]?\d+$")


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([v * scale for v in values])
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def find_runs(root: Path, include_nested: bool = False) -> list[tuple[Path, dict]]:
    files = sorted(root.rglob("results.json"))
    run_dirs = {f.parent for f in files}
    runs = []
    for f in files:
        d = f.parent
        nested = any(parent in run_dirs for parent in d.parents)
        if nested and not include_nested:
            continue
        runs.append((d, json.loads(f.read_text())))
    return runs


def group_key(root: Path, run_dir: Path) -> str:
    parts = [p for p in run_dir.relative_to(root).parts if not SEED_PART.match(p)]
    return "/".join(parts) if parts else run_dir.name


def config_name(key: str, dataset: str) -> str:
    parts = key.split("/")
    if parts and parts[0] == dataset and len(parts) > 1:  # runs/text/<dataset>/<config>
        parts = parts[1:]
    return "/".join(parts)


def summarize(root: Path, include_nested: bool = False, order: list[str] | None = None) -> str:
    runs = find_runs(root, include_nested)
    if not runs:
        raise SystemExit(f"no results.json under {root}")
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = {}
    for run_dir, r in runs:
        dataset = str(r.get("dataset", "?"))
        groups.setdefault((dataset, group_key(root, run_dir)), []).append((run_dir, r))

    lines = ["| config | dataset | seeds | test accuracy | test weighted F1 | test macro F1 "
             "| dev weighted F1 (selected) | reference_best_test_epoch weighted F1 | train seconds per run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_class: dict[str, list[tuple[str, dict[str, float], int]]] = {}
    labels_of: dict[str, list[str]] = {}
    rank = {name: i for i, name in enumerate(order or [])}

    def sort_key(item: tuple[tuple[str, str], list]) -> tuple:
        dataset, key = item[0]
        name = config_name(key, dataset)
        return dataset, rank.get(name, len(rank)), name

    for (dataset, key), members in sorted(groups.items(), key=sort_key):
        rs = [r for _, r in members]
        seeds = sorted(r.get("seed") for r in rs)
        test = [r["test"] for r in rs]
        ref = [r["reference_best_test_epoch"]["weighted_f1"] for r in rs if r.get("reference_best_test_epoch")]
        train_s = [r["train_seconds"] for r in rs if "train_seconds" in r]
        secs = f"{statistics.fmean(train_s):.0f}" if train_s else "-"
        name = config_name(key, dataset)
        lines.append(
            f"| {name} | {dataset} | {len(rs)} ({', '.join(map(str, seeds))}) | {fmt([t['accuracy'] for t in test])} "
            f"| {fmt([t['weighted_f1'] for t in test])} | {fmt([t['macro_f1'] for t in test])} "
            f"| {fmt([r['dev']['weighted_f1'] for r in rs])} | {fmt(ref)} | {secs} |")
        labels = list(rs[0].get("label_names") or test[0]["per_class_f1"])
        labels_of.setdefault(dataset, labels)
        means = {c: statistics.fmean(t["per_class_f1"][c] for t in test) for c in labels}
        per_class.setdefault(dataset, []).append((name, means, len(rs)))

    out = ["Test scores x 100, mean ± sample std over seeds; the checkpoint is selected on dev weighted F1. "
           "reference_best_test_epoch: the best test epoch (the literature's practice), for comparison only.", "",
           *lines]
    for dataset, rows in per_class.items():
        labels = labels_of[dataset]
        out += ["", f"Per-class test F1 x 100 on {dataset} (mean over seeds, dev-selected checkpoint):", "",
                "| config | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
        for name, means, _ in rows:
            out.append(f"| {name} | " + " | ".join(f"{100 * means[c]:.1f}" for c in labels) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder searched (recursively) for results.json")
    parser.add_argument("--include-nested", action="store_true",
                        help="also runs inside other runs (the teachers ikd trains into RUN/teacher)")
    parser.add_argument("--order", nargs="*", default=[], metavar="CONFIG",
                        help="configs to list first, in this order (the rest follow alphabetically)")
    args = parser.parse_args(argv)
    sys.stdout.write(summarize(args.folder, args.include_nested, args.order))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

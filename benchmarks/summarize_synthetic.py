"""Summarise the synthetic ablation study: ``runs/synthetic/<config>/seed<N>/results.json`` -> Markdown tables.

    python benchmarks/summarize_synthetic.py                 # all configs found under runs/synthetic
    python benchmarks/summarize_synthetic.py --root runs/synthetic --configs summer no_ikd text_only

Per configuration: the number of seeds, test accuracy and weighted F1 (mean +- sample std over seeds, in %),
macro F1, per-class test F1 means, and time per run (the trainer's ``train_seconds``, which includes the final
evaluation, and the median seconds of one epoch from ``metrics.jsonl``, which is less sensitive to other load
on the machine). The scores are those of the epoch selected on dev (``results.json["test"]``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from summarize_runs import fmt  # mean ± sample std over seeds, x 100 (same folder)

#: Display order (configs found but not listed come after, alphabetically).
ORDER = ["summer", "no_sdmoe", "no_hcmf", "no_ikd", "text_only", "concat", "sdt", "summer_teacher"]


def load(root: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for res in sorted(root.glob("*/seed*/results.json")):
        r = json.loads(res.read_text())
        metrics = res.parent / "metrics.jsonl"
        epochs = [json.loads(line)["seconds"] for line in metrics.read_text().splitlines() if line.strip()] \
            if metrics.exists() else []
        r["_epoch_seconds"] = statistics.median(epochs) if epochs else float("nan")
        r["_seed_dir"] = res.parent.name
        runs.setdefault(res.parent.parent.name, []).append(r)
    return runs


def table(runs: dict[str, list[dict]], configs: list[str]) -> str:
    labels = next(iter(runs.values()))[0]["label_names"]
    head = ["config", "seeds", "accuracy", "weighted F1", "macro F1", *labels, "s/run", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for cfg in configs:
        rs = runs[cfg]
        row = [cfg, ",".join(r["_seed_dir"].removeprefix("seed") for r in rs),
               fmt([r["test"]["accuracy"] for r in rs], digits=1),
               fmt([r["test"]["weighted_f1"] for r in rs], digits=1),
               fmt([r["test"]["macro_f1"] for r in rs], digits=1)]
        for c in labels:
            row.append(f"{100 * statistics.fmean(r['test']['per_class_f1'][c] for r in rs):.1f}")
        row.append(f"{statistics.fmean(r['train_seconds'] for r in rs):.0f}")
        row.append(f"{statistics.fmean(r['_epoch_seconds'] for r in rs):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_seed(runs: dict[str, list[dict]], configs: list[str]) -> str:
    lines = ["| config | seed | accuracy | weighted F1 | best epoch | s/run |", "|---|---|---|---|---|---|"]
    for cfg in configs:
        for r in runs[cfg]:
            lines.append(f"| {cfg} | {r['seed']} | {100 * r['test']['accuracy']:.1f} | "
                         f"{100 * r['test']['weighted_f1']:.1f} | {r['best_epoch']} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/synthetic", type=Path)
    ap.add_argument("--configs", nargs="*", default=None)
    ap.add_argument("--per-seed", action="store_true", help="also print one row per run")
    args = ap.parse_args(argv)
    runs = load(args.root)
    if not runs:
        raise SystemExit(f"no results.json under {args.root}/*/seed*/")
    configs = args.configs or ([c for c in ORDER if c in runs] + sorted(c for c in runs if c not in ORDER))
    missing = [c for c in configs if c not in runs]
    if missing:
        raise SystemExit(f"no runs for {missing} under {args.root}")
    print(table(runs, configs))
    if args.per_seed:
        print()
        print(per_seed(runs, configs))


if __name__ == "__main__":
    main()

"""The dev-only protocol behind benchmarks/RESULTS_text.md: choose every setting on dev, then read test once.

Coordinate descent over the four text recipes of one corpus, each step a ``mercore sweep`` (grid x seeds,
ranked by mean dev weighted F1; resumable, so a killed protocol restarts where it stopped):

1. ``shared``: lr x dropout, on text_bigru (the cheapest model; the text recipes share these).
2. ``loss``: class weighting, on text_bigru with step 1's choice.
3. ``sdmoe``: text_sdmoe with steps 1-2 (nothing swept: these runs are step 4's teachers).
4. ``summer``: the IKD temperature, on summer_text (student = step 3's SDMoE), the teacher being step 3's
   selected text_sdmoe run of the same seed (reused, not retrained).

The grid is small because the machine is (2 CPU cores): weight decay 0.1, label smoothing 0.1, the gate's
c = 2 and its statistic axis (tokens), and the encoders' sizes stay as the recipes set them (single-value grid
entries keep the keys visible; ``--grid KEY=V1,V2`` replaces one key's values). ``--steps`` runs some steps only
and ``--step-seeds summer=0`` gives one step its own seeds; a step left out can take another corpus's choice by
copying it into ``choices.json``.

``--final`` then trains each recipe (text_bigru, text_sdmoe, summer_text by default) with every choice on fresh seeds (100-104 by default, never used for a
choice) and writes the runs to ``OUT/final/<recipe>/seed<N>`` (summer_text's teacher: the final text_sdmoe run of
its seed), for ``mercore report`` and ``mercore compare``. Run from the repository root::

    python benchmarks/text_protocol.py iemocap            # the sweeps (dev only)
    python benchmarks/text_protocol.py iemocap --final    # then the final seeds

Choices are written to ``OUT/choices.json`` as they are made. ``--features FILE`` runs the same protocol on other
text features of the corpus (a ``mercore extract`` output, e.g. mpnet or a fine-tuned encoder) in place of the
shipped MiniLM file::

    python benchmarks/text_protocol.py iemocap --features /feat/text_mpnet.safetensors --out runs/protocol/iemocap_mpnet \
        --steps shared,loss --final --final-recipes text_bigru --final-seeds 100,101,102
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mercore.sweep import sweep

STEPS: list[tuple[str, str, list[tuple[str, list[str]]]]] = [
    ("shared", "text_bigru", [("optimizer.lr", ["5e-4", "1e-3", "2e-3"]),
                              ("model.encoder.dropout", ["0.3", "0.5"]),
                              ("optimizer.weight_decay", ["0.1"])]),
    ("loss", "text_bigru", [("loss.class_weights", ["none", "inverse_frequency"])]),
    ("sdmoe", "text_sdmoe", [("model.moe.router.stat_axis", ["tokens"])]),  # the recipe's model; summer's teachers
    ("summer", "summer_text", [("distiller.temperature", ["1.0", "2.0", "4.0"])]),
]
# which earlier steps' choices each recipe takes
USES = {"text_bigru": ["shared", "loss"], "text_transformer": ["shared", "loss"],
        "text_sdmoe": ["shared", "loss", "sdmoe"], "summer_text": ["shared", "loss", "sdmoe", "summer"]}


def recipe_path(recipe: str, corpus: str) -> str:
    return f"recipes/{recipe}_{corpus}.yaml"


def chosen_overrides(choices: dict[str, list[str]], steps: list[str]) -> list[str]:
    return [o for s in steps for o in choices.get(s, [])]


def widened_grid(grid: list[tuple[str, list[str]]], values: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """``grid`` with the values of any key named in ``values`` replaced (``--grid optimizer.lr=1e-3,2e-3,4e-3``)."""
    return [(key, values.get(key, vals)) for key, vals in grid]


def parse_grid_values(args: list[str]) -> dict[str, list[str]]:
    """``["optimizer.lr=1e-3,4e-3"]`` -> ``{"optimizer.lr": ["1e-3", "4e-3"]}``; a key no step sweeps is an error
    (a typo would otherwise silently sweep the default grid)."""
    known = {key for _, _, grid in STEPS for key, _ in grid}
    values: dict[str, list[str]] = {}
    for arg in args:
        key, eq, vals = arg.partition("=")
        if not eq or not vals:
            raise SystemExit(f"--grid {arg!r}: expected KEY=V1,V2,...")
        if key not in known:
            raise SystemExit(f"--grid {arg!r}: no step sweeps {key!r} (the swept keys: {', '.join(sorted(known))})")
        values[key] = vals.split(",")
    return values


def run_sweeps(corpus: str, out: Path, seeds: list[int], base: list[str], steps: list[str],
               step_seeds: dict[str, list[int]], grid_values: dict[str, list[str]]) -> dict[str, list[str]]:
    choices_file = out / "choices.json"
    choices: dict[str, list[str]] = json.loads(choices_file.read_text()) if choices_file.exists() else {}
    for step, recipe, grid in STEPS:
        if step not in steps:
            continue
        grid = widened_grid(grid, grid_values)
        uses = [s for s in USES[recipe] if s != step]
        overrides = [*base, *chosen_overrides(choices, uses)]
        if recipe == "summer_text":  # the teacher: step sdmoe's selected run of the same seed
            teacher = out / "sdmoe" / choices["sdmoe_dir"]
            overrides.append(f"stages.teacher.output_dir={teacher.resolve()}/seed${{seed}}")
        ranked, _ = sweep(recipe_path(recipe, corpus), grid, step_seeds.get(step, seeds), overrides, out / step,
                          log=lambda m: print(m, flush=True) if m.startswith("sweep") else None)
        choices[step] = ranked[0].overrides
        choices[f"{step}_dir"] = ranked[0].run_dirs[0].parent.name
        choices_file.write_text(json.dumps(choices, indent=2))
        print(f"== {corpus} {step}: chose {' '.join(ranked[0].overrides)} (dev {100 * ranked[0].dev_mean:.2f})",
              flush=True)
    return choices


def run_final(corpus: str, out: Path, seeds: list[int], base: list[str], recipes: list[str]) -> None:
    from mercore.sweep import run_one

    choices = json.loads((out / "choices.json").read_text())
    for seed in seeds:
        for recipe in recipes:
            overrides = [*base, *chosen_overrides(choices, USES[recipe]), f"seed={seed}"]
            if recipe == "summer_text":
                overrides.append(f"stages.teacher.output_dir={(out / 'final' / 'text_sdmoe' / f'seed{seed}').resolve()}")
            run_dir = out / "final" / recipe / f"seed{seed}"
            print(f"final: {recipe} seed {seed} -> {run_dir}", flush=True)
            run_one(recipe_path(recipe, corpus), overrides, run_dir, log=lambda m: None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", choices=["iemocap", "meld"])
    p.add_argument("--data", default=None, help="data root (default ../shared/data/CORPUS)")
    p.add_argument("--out", default=None, help="default runs/protocol/CORPUS")
    p.add_argument("--seeds", default="0,1", help="sweep seeds")
    p.add_argument("--steps", default=",".join(s for s, _, _ in STEPS), help="the steps to run, comma-separated")
    p.add_argument("--step-seeds", action="append", default=[], metavar="STEP=S1,S2",
                   help="seeds of one step (default --seeds); repeatable")
    p.add_argument("--features", default=None,
                   help="text features to use instead of the corpus's MiniLM file (a safetensors file, e.g. from "
                        "mercore extract)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="replace the values a step sweeps for KEY (e.g. optimizer.lr=1e-3,2e-3,4e-3 when a choice "
                        "lands on the grid's edge); repeatable")
    p.add_argument("--final", action="store_true", help="train the final seeds with the choices (running the "
                                                          "sweeps of --steps first when OUT has no choices.json)")
    p.add_argument("--final-seeds", default="100,101,102,103,104")
    p.add_argument("--final-recipes", default="text_bigru,text_sdmoe,summer_text",
                   help="comma-separated (summer_text needs text_sdmoe before it: its teacher)")
    args = p.parse_args()
    grid_values = parse_grid_values(args.grid)  # a typo fails now, before any training
    out = Path(args.out or f"runs/protocol/{args.corpus}")
    base = [f"data.root={args.data or f'../shared/data/{args.corpus}'}", "trainer.threads=1", "trainer.progress=false"]
    if args.features:
        base.append(f"data.features={{text: {Path(args.features).resolve()}}}")
    if not args.final or not (out / "choices.json").exists():
        step_seeds = {k: [int(v) for v in vs.split(",")] for k, _, vs in (a.partition("=") for a in args.step_seeds)}
        run_sweeps(args.corpus, out, [int(s) for s in args.seeds.split(",")], base, args.steps.split(","), step_seeds,
                   grid_values)
    if args.final:
        run_final(args.corpus, out, [int(s) for s in args.final_seeds.split(",")], base,
                  args.final_recipes.split(","))


if __name__ == "__main__":
    main()

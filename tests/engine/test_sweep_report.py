"""``mercore sweep`` (grid x seeds, resumable, dev-ranked, test read once), ``mercore report``, default output_dir."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mercore.cli import main
from mercore.errors import ConfigError
from mercore.recipe import load_recipe
from mercore.report import mean_std, report
from mercore.sweep import parse_grid, settings, setting_dir, sweep

RECIPE = """\
name: tiny_sweep
seed: 0
data: {type: synthetic, modalities: [text], seed: 0, num_dialogues: {train: 8, dev: 4, test: 4}, utterances: [3, 5]}
model: {type: multimodal, modalities: [text], hidden: 8, encoder: {type: linear}, head: {type: linear}}
optimizer: {type: adam, lr: 1e-2}
trainer: {epochs: 1, batch_size: 4, device: cpu, progress: false, threads: 1}
"""


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(RECIPE)
    return path


def test_default_output_dir_has_name_and_seed(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe(recipe, ["seed=3"]).recipe.output_dir == "runs/tiny_sweep/seed3"
    assert load_recipe(recipe, ["output_dir=elsewhere"]).recipe.output_dir == "elsewhere"  # explicit still wins
    nameless = tmp_path / "no_name.yaml"
    nameless.write_text(RECIPE.replace("name: tiny_sweep\nseed: 0\n", ""))
    assert load_recipe(nameless).recipe.output_dir == "runs/no_name/seed0"


def test_grid_parsing():
    grid = parse_grid(["optimizer.lr=1e-2,1e-3", "model.hidden=8,16"])
    assert settings(grid) == [["optimizer.lr=1e-2", "model.hidden=8"], ["optimizer.lr=1e-2", "model.hidden=16"],
                              ["optimizer.lr=1e-3", "model.hidden=8"], ["optimizer.lr=1e-3", "model.hidden=16"]]
    assert setting_dir(["optimizer.lr=1e-2", "data.path=a/b"]) == "optimizer.lr=1e-2__data.path=a_b"
    with pytest.raises(ConfigError, match=r"--grid 'lr': expected key.sub=value1,value2"):
        parse_grid(["lr"])


def test_sweep_ranks_on_dev_reads_test_once_and_resumes(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    logs: list[str] = []
    grid = parse_grid(["optimizer.lr=1e-2,1e-4"])
    ranked, _ = sweep(str(recipe), grid, [0, 1], out_dir=out, log=logs.append)
    runs = sorted(p.parent for p in out.glob("*/seed*/results.json"))
    assert len(runs) == 4 and {p.name for p in runs} == {"seed0", "seed1"}
    for r in ranked:  # ranked by the mean dev score read from each run's results.json
        devs = [json.loads((d / "results.json").read_text())["dev"]["weighted_f1"] for d in r.run_dirs]
        assert r.dev_scores == devs
    assert ranked[0].dev_mean >= ranked[1].dev_mean
    assert any("dev acc" in line for line in logs) and not any("test acc" in line for line in logs)
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [row["setting"] for row in rows] == [" ".join(r.overrides) for r in ranked]
    tests = [json.loads((d / "results.json").read_text())["test"]["weighted_f1"] for d in ranked[0].run_dirs]
    m, s = mean_std([100 * t for t in tests])
    assert rows[0]["test weighted_f1"] == f"{m:.2f} ± {s:.2f}" and rows[1]["test weighted_f1"] == "not read"
    assert "Test was read for the selected (rank 1) setting only." in (out / "sweep.md").read_text()

    # resumable: finished runs are skipped; an interrupted one (checkpoints, no results) is resumed
    victim = ranked[1].run_dirs[0]
    (victim / "results.json").unlink()
    logs.clear()
    sweep(str(recipe), grid, [0, 1], out_dir=out, log=logs.append)
    assert sum("finished before: skipped" in line for line in logs) == 3
    assert (victim / "results.json").exists()


def test_report_and_cli(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        assert main(["run", str(recipe), f"seed={seed}"]) == 0
    assert main(["run", str(recipe), "optimizer.lr=1e-4", "output_dir=runs/other"]) == 0
    runs = ["runs/tiny_sweep/seed0", "runs/tiny_sweep/seed1", "runs/other"]
    rows = report(runs)
    assert [r["seeds"] for r in rows] == ["0,1", "0"]  # grouped by recipe up to the seed
    results = [json.loads((Path(d) / "results.json").read_text()) for d in runs[:2]]
    m, s = mean_std([100 * r["test"]["weighted_f1"] for r in results])
    assert rows[0]["test weighted_f1"] == f"{m:.2f} ± {s:.2f}" and rows[1]["recipe"] == "tiny_sweep (config 2)"
    cls = results[0]["label_names"][0]
    assert rows[0][f"F1 {cls}"] == f"{sum(100 * r['test']['per_class_f1'][cls] for r in results) / 2:.2f}"
    capsys.readouterr()
    assert main(["report", *runs, "--out", "tables/report"]) == 0
    assert "| tiny_sweep | 0,1 |" in capsys.readouterr().out
    assert (tmp_path / "tables/report.csv").exists() and (tmp_path / "tables/report.md").exists()
    assert main(["report", "runs/missing"]) == 2
    assert "runs/missing: no results.json" in capsys.readouterr().err
    assert main(["sweep", str(recipe), "--grid", "optimizer.lr=1e-2", "--seeds", "0", "--out", "sw"]) == 0
    assert "selected on dev: optimizer.lr=1e-2" in capsys.readouterr().out
    assert main(["sweep", str(recipe), "--seeds", "a,b"]) == 2


def test_one_seed_shows_no_spread():
    from mercore.report import percent_mean_std

    assert percent_mean_std([0.61]) == "61.00"  # one value: no "± 0.00" that reads like a measured spread
    assert percent_mean_std([0.60, 0.62]) == "61.00 ± 1.41"


def test_seeds_of_a_distilled_student_with_per_seed_teachers_are_one_setting():
    from mercore.report import seedless_recipe

    def student(seed: int, lr: float = 1e-3) -> dict:
        teacher = f"/runs/final/teacher/seed{seed}"
        return {"seed": seed, "output_dir": f"/runs/final/student/seed{seed}", "optimizer": {"lr": lr},
                "distiller": {"type": "ikd", "teacher": teacher, "weights": [teacher, 1.0]},
                "stages": {"teacher": {"recipe": "t.yaml", "output_dir": teacher, "overrides": []}}}

    assert seedless_recipe(student(100)) == seedless_recipe(student(101))
    assert seedless_recipe(student(100))["distiller"]["teacher"] == "<stage teacher>"
    assert seedless_recipe(student(100))["stages"] == {"teacher": {"recipe": "t.yaml", "overrides": []}}
    assert seedless_recipe(student(100)) != seedless_recipe(student(100, lr=2e-3))
    # a teacher path that is not a stage's output is a real difference between settings
    other = student(100)
    other["distiller"]["teacher"] = "/elsewhere/teacher"
    assert seedless_recipe(other) != seedless_recipe(student(100))

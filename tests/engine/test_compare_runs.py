"""``mercore compare``: paired bootstrap CI and permutation p-value, against a slow explicit reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mercore.cli import main
from mercore.compare import bootstrap_indices, compare_runs, permutation_swaps
from mercore.errors import DataError
from mercore.metrics import classification_report

C = 4


def write_run(folder: Path, gold: np.ndarray, pred: np.ndarray) -> Path:
    """Dialogues of 10 utterances, written in reverse: the reader's (dialogue, index) order is the arrays' order."""
    folder.mkdir(parents=True)
    rows = [{"dialogue": f"d{i // 10:03d}", "index": i % 10, "gold": int(g), "pred": int(p)}
            for i, (g, p) in enumerate(zip(gold, pred))][::-1]
    (folder / "predictions_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def wf1(gold, pred) -> float:
    """The reference metric: mercore.metrics (torch), not the counts code under test."""
    return classification_report(torch.as_tensor(gold), torch.as_tensor(pred), [str(c) for c in range(C)])["weighted_f1"]


def reference(a_preds, b_preds, gold, resamples, seed, resample_runs=False):
    """Slow explicit loops over the same draws (the documented draw order) with the reference metric."""
    n = len(gold)
    rng = np.random.default_rng(seed)
    diffs = []
    for chunk in bootstrap_indices(rng, resamples, n):
        runs_a = runs_b = None
        if resample_runs:  # drawn after the chunk's utterance indices, A's then B's
            runs_a = rng.integers(0, len(a_preds), size=(len(chunk), len(a_preds)))
            runs_b = rng.integers(0, len(b_preds), size=(len(chunk), len(b_preds)))
        for r, idx in enumerate(chunk):
            pick_a = a_preds if runs_a is None else [a_preds[j] for j in runs_a[r]]
            pick_b = b_preds if runs_b is None else [b_preds[j] for j in runs_b[r]]
            diffs.append(np.mean([wf1(gold[idx], p[idx]) for p in pick_a]) -
                         np.mean([wf1(gold[idx], p[idx]) for p in pick_b]))
    observed = np.mean([wf1(gold, p) for p in a_preds]) - np.mean([wf1(gold, p) for p in b_preds])
    extreme = 0
    for chunk in permutation_swaps(rng, resamples, n):
        for swap in chunk:
            a_sw = [np.where(swap, pb, pa) for pa, pb in zip(a_preds, b_preds)]
            b_sw = [np.where(swap, pa, pb) for pa, pb in zip(a_preds, b_preds)]
            d = np.mean([wf1(gold, p) for p in a_sw]) - np.mean([wf1(gold, p) for p in b_sw])
            extreme += abs(d) >= abs(observed) - 1e-12
    return observed, np.quantile(diffs, [0.025, 0.975]), (1 + extreme) / (resamples + 1)


def noisy(gold: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    wrong = rng.random(gold.shape) > accuracy
    return np.where(wrong, (gold + rng.integers(1, C, gold.shape)) % C, gold)


@pytest.mark.parametrize("seeds_per_side", [1, 2])
def test_matches_the_slow_reference(tmp_path, seeds_per_side):
    rng = np.random.default_rng(0)
    gold = rng.integers(0, C, 60)
    a_preds = [noisy(gold, 0.75, rng) for _ in range(seeds_per_side)]
    b_preds = [noisy(gold, 0.6, rng) for _ in range(seeds_per_side)]
    a = [write_run(tmp_path / f"a{i}", gold, p) for i, p in enumerate(a_preds)]
    b = [write_run(tmp_path / f"b{i}", gold, p) for i, p in enumerate(b_preds)]
    got = compare_runs(a, b, resamples=300, seed=5, num_classes=C)
    observed, (lo, hi), p = reference(a_preds, b_preds, gold, 300, 5)
    assert got.diff == pytest.approx(observed, abs=1e-12)
    assert got.wf1_a == pytest.approx(np.mean([wf1(gold, q) for q in a_preds]), abs=1e-12)
    assert (got.ci_low, got.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert got.p_value == pytest.approx(p, abs=1e-12)


def test_two_level_bootstrap_matches_the_slow_reference(tmp_path):
    rng = np.random.default_rng(1)
    gold = rng.integers(0, C, 60)
    a_preds = [noisy(gold, acc, rng) for acc in (0.6, 0.7, 0.8)]
    b_preds = [noisy(gold, 0.65, rng) for _ in range(2)]
    a = [write_run(tmp_path / f"a{i}", gold, p) for i, p in enumerate(a_preds)]
    b = [write_run(tmp_path / f"b{i}", gold, p) for i, p in enumerate(b_preds)]
    got = compare_runs(a, b, resamples=200, seed=3, num_classes=C, resample_runs=True)
    observed, (lo, hi), _ = reference(a_preds, b_preds, gold, 200, 3, resample_runs=True)
    assert got.resample_runs and got.diff == pytest.approx(observed, abs=1e-12)
    assert (got.ci_low, got.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert got.p_value is None  # 3 runs against 2: no run-by-run pairing for the permutation


def test_two_level_interval_carries_the_seed_spread(tmp_path):
    """Side A's seeds disagree widely (accuracy 0.55 .. 0.95), B's do not: resampling A's runs widens the
    interval, and it is never narrower than the utterance-only one by more than resampling noise."""
    rng = np.random.default_rng(2)
    gold = rng.integers(0, C, 400)
    a = [write_run(tmp_path / f"a{i}", gold, noisy(gold, acc, rng)) for i, acc in enumerate((0.55, 0.75, 0.95))]
    b = [write_run(tmp_path / f"b{i}", gold, noisy(gold, 0.7, rng)) for i in range(3)]
    flat = compare_runs(a, b, resamples=2000, seed=0, num_classes=C)
    two = compare_runs(a, b, resamples=2000, seed=0, num_classes=C, resample_runs=True)
    assert two.diff == flat.diff
    assert (two.ci_high - two.ci_low) > 2 * (flat.ci_high - flat.ci_low)


def test_constructed_known_difference(tmp_path):
    # 400 utterances, balanced classes; A is right on all, B on the first 300 only (wrong ones shifted by one).
    gold = np.arange(400) % C
    b_pred = gold.copy()
    b_pred[300:] = (gold[300:] + 1) % C
    a = write_run(tmp_path / "a", gold, gold)
    b = write_run(tmp_path / "b", gold, b_pred)
    got = compare_runs([a], [b], resamples=2000, seed=0)
    # B: per class tp 75, predicted 100, support 100 -> F1 0.75 for every class
    assert got.wf1_a == 1.0 and got.wf1_b == pytest.approx(0.75)
    assert got.diff == pytest.approx(0.25)
    assert 0.19 < got.ci_low < 0.25 < got.ci_high < 0.31
    assert got.p_value == pytest.approx(1 / 2001)  # no swap reaches 0.25: the smallest p possible
    same = compare_runs([a], [write_run(tmp_path / "a_again", gold, gold)], resamples=200)
    assert same.diff == 0.0 and same.ci_low == same.ci_high == 0.0 and same.p_value == 1.0


def test_checks_same_utterances_and_gold(tmp_path):
    gold = np.arange(40) % C
    a = write_run(tmp_path / "a", gold, gold)
    b = write_run(tmp_path / "b", gold[:39], gold[:39])
    with pytest.raises(DataError, match=r"do not cover the same test utterances: dialogue 'd003' utterance 9 is only in .*a"):
        compare_runs([a], [b], resamples=10)
    other = gold.copy()
    other[5] = (other[5] + 1) % C
    c = write_run(tmp_path / "c", other, gold)
    with pytest.raises(DataError, match="disagree on the gold label of dialogue 'd000' utterance 5"):
        compare_runs([a], [c], resamples=10)
    with pytest.raises(DataError, match="absent: no such run directory or predictions file"):
        compare_runs([a], [tmp_path / "absent"], resamples=10)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(DataError, match="unfinished/predictions_test.jsonl: not found"):
        compare_runs([a], [tmp_path / "unfinished"], resamples=10)


def test_cli(tmp_path, capsys):
    gold = np.arange(200) % C
    b_pred = gold.copy()
    b_pred[:50] = (gold[:50] + 1) % C
    a1, a2 = write_run(tmp_path / "a1", gold, gold), write_run(tmp_path / "a2", gold, gold)
    b1, b2 = write_run(tmp_path / "b1", gold, b_pred), write_run(tmp_path / "b2", gold, b_pred)
    assert main(["compare", str(a1), str(b1), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "difference A - B: +25.00 points, paired bootstrap 95% CI [" in out and "permutation p = 0.0050" in out
    assert main(["compare", str(a1), str(a2), "--vs", str(b1), str(b2), "--resamples", "50", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["a_runs"]) == 2 and result["diff"] == pytest.approx(0.25, abs=1e-3)
    assert main(["compare", str(a1), str(a2), "--vs", str(b1), str(b2), "--resamples", "50", "--resample-runs"]) == 0
    assert "two-level bootstrap (runs and utterances) 95% CI" in capsys.readouterr().out
    assert main(["compare", str(a1), str(a2), str(b1)]) == 2  # three runs and no --vs: a user error, said so
    assert "give two runs" in capsys.readouterr().err

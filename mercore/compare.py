"""``mercore compare A B``: is the test weighted-F1 difference of two runs (or two groups of seeds) real?

Both sides are read from their runs' ``predictions_test.jsonl`` (one row ``{dialogue, index, gold, pred}`` per
test utterance), checked to cover the same utterances with the same gold labels. A side with several runs
(seeds) scores the mean of its runs' weighted F1. Two numbers are given, both paired over utterances:

* a **paired bootstrap** confidence interval: the test utterances are resampled with replacement ``R`` times
  (the same resample for every run of both sides) and the difference ``mean wF1(A) - mean wF1(B)`` is
  recomputed; the interval is its ``(alpha/2, 1 - alpha/2)`` percentiles;
* with ``resample_runs`` (``--resample-runs``), a **two-level bootstrap** instead: each resample also draws
  each side's runs with replacement (k of k), so the interval carries the seed-to-seed spread as well as the
  test set's; the difference of two recipes' seed means is then inside the noise when this interval holds 0;
* a **paired permutation** p-value (two-sided): per utterance, A's and B's predictions are swapped with
  probability 1/2 (run i of A with run i of B, so both sides need the same number of runs), ``R`` times;
  ``p = (1 + #{|d_perm| >= |d_observed|}) / (R + 1)``.

Random draws, for reproducibility (a reference implementation can replay them): ``rng =
numpy.random.default_rng(seed)``; first the bootstrap, in chunks of :data:`CHUNK` resamples, each
``rng.integers(0, n, size=(chunk, n))`` (with ``resample_runs``, followed by A's run draws
``rng.integers(0, k_a, size=(chunk, k_a))`` and B's ``rng.integers(0, k_b, size=(chunk, k_b))``); then the permutation, in chunks, each ``rng.random((chunk, n)) < 0.5``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import attrs
import numpy as np

from mercore.errors import DataError

CHUNK = 500
PREDICTIONS = "predictions_test.jsonl"


@attrs.define
class RunPredictions:
    """One run's test predictions, in the order of ``keys`` (sorted ``(dialogue, index)``)."""

    run_dir: Path
    keys: list[tuple[str, int]]
    gold: np.ndarray  # (n,) int
    pred: np.ndarray  # (n,) int


@attrs.define
class Comparison:
    """The result of :func:`compare_runs`; ``diff = wF1(A) - wF1(B)`` in [0, 1] units (means over runs)."""

    a_runs: list[str]
    b_runs: list[str]
    num_utterances: int
    wf1_a: float
    wf1_b: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float | None  # None when the sides have different numbers of runs
    resamples: int
    seed: int
    resample_runs: bool = False  # the interval also resamples each side's runs (seeds)

    def summary(self) -> str:
        ci = f"{100 * self.confidence:g}% CI [{100 * self.ci_low:+.2f}, {100 * self.ci_high:+.2f}]"
        kind = "two-level bootstrap (runs and utterances)" if self.resample_runs else "paired bootstrap"
        p = f"permutation p = {self.p_value:.4f}" if self.p_value is not None else \
            "permutation p: n/a (the sides have different numbers of runs)"
        return (f"test weighted F1: A {100 * self.wf1_a:.2f} ({len(self.a_runs)} run(s)) vs B {100 * self.wf1_b:.2f} "
                f"({len(self.b_runs)} run(s)) on {self.num_utterances} utterances\n"
                f"difference A - B: {100 * self.diff:+.2f} points, {kind} {ci} ({self.resamples} resamples), "
                f"{p}")


def read_predictions(run_dir: str | Path) -> RunPredictions:
    """Read ``RUN_DIR/predictions_test.jsonl`` (or the file itself), sorted by ``(dialogue, index)``."""
    path = Path(run_dir)
    if not path.exists():
        raise DataError(f"{path}: no such run directory or predictions file")
    if path.is_dir():
        path = path / PREDICTIONS
    if not path.is_file():
        raise DataError(f"{path}: not found (a finished run writes {PREDICTIONS} into its run directory)")
    rows = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (str(r["dialogue"]), int(r["index"]))
            rows[key] = (int(r["gold"]), int(r["pred"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: line {lineno}: expected {{dialogue, index, gold, pred}}: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no predictions")
    keys = sorted(rows)
    gold = np.array([rows[k][0] for k in keys], dtype=np.int64)
    pred = np.array([rows[k][1] for k in keys], dtype=np.int64)
    return RunPredictions(path.parent if path.name == PREDICTIONS else path, keys, gold, pred)


def _check_same_utterances(runs: Sequence[RunPredictions]) -> None:
    ref = runs[0]
    for r in runs[1:]:
        if r.keys != ref.keys:
            missing = sorted(set(ref.keys) ^ set(r.keys))[0]
            has = ref.run_dir if missing in set(ref.keys) else r.run_dir
            raise DataError(f"{r.run_dir} and {ref.run_dir} do not cover the same test utterances: dialogue "
                            f"{missing[0]!r} utterance {missing[1]} is only in {has}")
        bad = np.nonzero(r.gold != ref.gold)[0]
        if bad.size:
            k = ref.keys[int(bad[0])]
            raise DataError(f"{r.run_dir} and {ref.run_dir} disagree on the gold label of dialogue {k[0]!r} "
                            f"utterance {k[1]} ({int(r.gold[bad[0]])} vs {int(ref.gold[bad[0]])})")


def _one_hot(x: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((x.shape[0], c))
    out[np.arange(x.shape[0]), x] = 1.0
    return out


def weighted_f1_from_counts(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Weighted F1 from per-class counts ``(..., C)``: ``sum_c support_c F1_c / sum_c support_c``.

    ``F1_c = 2 tp_c / (predicted_c + support_c)`` (0 where both are 0), sklearn's ``average="weighted"``.
    """
    support = np.broadcast_to(support, np.broadcast_shapes(np.shape(tp), np.shape(support)))
    denom = predicted + support
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    total = support.sum(-1)
    return np.divide((f1 * support).sum(-1), total, out=np.zeros_like(total, dtype=float), where=total > 0)


class _Side:
    """One side's runs as one-hot matrices, so that reweighted or swapped counts are matrix products."""

    def __init__(self, runs: Sequence[RunPredictions], c: int):
        self.gold = _one_hot(runs[0].gold, c)  # (n, C)
        self.pred = np.stack([_one_hot(r.pred, c) for r in runs])  # (k, n, C)
        self.tp = self.pred * self.gold  # (k, n, C)

    def run_wf1(self, weights: np.ndarray) -> np.ndarray:
        """``(k, R)``: each run's weighted F1 under utterance weights ``(R, n)``."""
        support = weights @ self.gold  # (R, C)
        return np.stack([weighted_f1_from_counts(weights @ tp, weights @ pred, support)
                         for tp, pred in zip(self.tp, self.pred)])

    def wf1(self, weights: np.ndarray, runs: np.ndarray | None = None) -> np.ndarray:
        """``(R,)`` mean over runs of the weighted F1 under utterance weights ``(R, n)``; ``runs`` ``(R, k)``:
        which runs each resample averages (drawn with replacement), all of them once when None."""
        scores = self.run_wf1(weights)  # (k, R)
        if runs is None:
            return scores.mean(0)
        return np.take_along_axis(scores, runs.T, axis=0).mean(0)  # (R,)


def bootstrap_indices(rng: np.random.Generator, resamples: int, n: int) -> Iterator[np.ndarray]:
    """The bootstrap draws: chunks ``(chunk, n)`` of utterance indices (see the module docstring)."""
    done = 0
    while done < resamples:
        chunk = min(CHUNK, resamples - done)
        yield rng.integers(0, n, size=(chunk, n))
        done += chunk


def permutation_swaps(rng: np.random.Generator, resamples: int, n: int) -> Iterator[np.ndarray]:
    """The permutation draws: chunks ``(chunk, n)`` of booleans, True = swap A and B at that utterance."""
    done = 0
    while done < resamples:
        chunk = min(CHUNK, resamples - done)
        yield rng.random((chunk, n)) < 0.5
        done += chunk


def compare_runs(a: Sequence[str | Path], b: Sequence[str | Path], *, resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0, num_classes: int | None = None,
                 resample_runs: bool = False) -> Comparison:
    """Paired bootstrap CI (two-level with ``resample_runs``: runs and utterances) and permutation p-value of
    ``mean wF1(A) - mean wF1(B)`` on the test utterances."""
    if not a or not b:
        raise DataError("compare needs at least one run on each side")
    if resamples < 1 or not 0 < confidence < 1:
        raise DataError("compare: resamples must be >= 1 and confidence in (0, 1)")
    runs_a = [read_predictions(p) for p in a]
    runs_b = [read_predictions(p) for p in b]
    _check_same_utterances(runs_a + runs_b)
    n = len(runs_a[0].keys)
    c = num_classes or int(max(max(r.gold.max(), r.pred.max()) for r in runs_a + runs_b)) + 1
    side_a, side_b = _Side(runs_a, c), _Side(runs_b, c)
    ones = np.ones((1, n))
    wf1_a, wf1_b = float(side_a.wf1(ones)[0]), float(side_b.wf1(ones)[0])
    observed = wf1_a - wf1_b

    rng = np.random.default_rng(seed)
    diffs = []
    for idx in bootstrap_indices(rng, resamples, n):
        weights = np.zeros((idx.shape[0], n))
        np.add.at(weights, (np.arange(idx.shape[0])[:, None], idx), 1.0)  # how often each utterance was drawn
        drawn_a = rng.integers(0, len(runs_a), size=(idx.shape[0], len(runs_a))) if resample_runs else None
        drawn_b = rng.integers(0, len(runs_b), size=(idx.shape[0], len(runs_b))) if resample_runs else None
        diffs.append(side_a.wf1(weights, drawn_a) - side_b.wf1(weights, drawn_b))
    d = np.concatenate(diffs)
    lo, hi = np.quantile(d, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])

    p_value = None
    if len(runs_a) == len(runs_b):
        extreme = 0
        support = side_a.gold.sum(0)  # swapping predictions leaves the gold labels as they are
        for swap in permutation_swaps(rng, resamples, n):
            s = swap.astype(float)  # (R, n)
            score_a, score_b = [], []
            for i in range(len(runs_a)):
                # counts of A with B's predictions at the swapped utterances, and vice versa (linear in s)
                dtp = s @ (side_b.tp[i] - side_a.tp[i])
                dpred = s @ (side_b.pred[i] - side_a.pred[i])
                score_a.append(weighted_f1_from_counts(side_a.tp[i].sum(0) + dtp, side_a.pred[i].sum(0) + dpred, support))
                score_b.append(weighted_f1_from_counts(side_b.tp[i].sum(0) - dtp, side_b.pred[i].sum(0) - dpred, support))
            perm = np.mean(score_a, axis=0) - np.mean(score_b, axis=0)
            extreme += int((np.abs(perm) >= abs(observed) - 1e-12).sum())
        p_value = (1 + extreme) / (resamples + 1)
    return Comparison(a_runs=[str(r.run_dir) for r in runs_a], b_runs=[str(r.run_dir) for r in runs_b],
                      num_utterances=n, wf1_a=wf1_a, wf1_b=wf1_b, diff=observed, ci_low=float(lo), ci_high=float(hi),
                      confidence=confidence, p_value=p_value, resamples=resamples, seed=seed,
                      resample_runs=resample_runs)


def cmd_compare(args) -> int:
    """CLI: ``mercore compare A [A2 ...] --vs B [B2 ...]`` or ``mercore compare A B``."""
    a, b = list(args.a), list(args.b or [])
    if not b:
        if len(a) != 2:
            raise DataError("compare: give two runs (mercore compare A B) or two groups (A1 A2 ... --vs B1 B2 ...)")
        a, b = a[:1], a[1:]
    result = compare_runs(a, b, resamples=args.resamples, confidence=args.confidence, seed=args.seed,
                          resample_runs=args.resample_runs)
    if args.json:
        print(json.dumps(attrs.asdict(result), indent=2))
    else:
        print(result.summary())
    return 0


def add_parser(sub) -> None:
    """The ``compare`` sub-command (called from :func:`mercore.cli.build_parser`)."""
    p = sub.add_parser("compare", help="paired bootstrap CI and permutation p of the test weighted-F1 difference "
                                       "of two runs or two groups of seeds")
    p.add_argument("a", nargs="+", help="run directories of side A (or: A B, two single runs)")
    p.add_argument("--vs", dest="b", nargs="+", help="run directories of side B")
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--resample-runs", action="store_true",
                   help="two-level bootstrap: also draw each side's runs (seeds) with replacement, so the interval "
                        "carries the seed-to-seed spread")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

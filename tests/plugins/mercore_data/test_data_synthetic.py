"""The synthetic generator: deterministic per seed, fast, and with the structure it promises."""

from __future__ import annotations

import time

import pytest
import torch

from mercore.config import validate_node
from mercore.data.types import collate
from mercore_data.synthetic import SyntheticConfig, SyntheticDataset


def _gen(**options):
    return SyntheticDataset(SyntheticConfig(**options)).load()


def _flat(corpus, split: str, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = corpus.splits[split]
    return torch.cat([d.features[modality] for d in ds]), torch.cat([d.labels for d in ds])


def test_partial_num_dialogues_keeps_the_other_defaults():
    corpus = _gen(num_dialogues={"train": 7})
    assert {s: len(v) for s, v in corpus.splits.items()} == {"train": 7, "dev": 20, "test": 40}


def test_defaults_shapes_and_batching():
    corpus = _gen()
    assert corpus.label_names == ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
    assert corpus.modality_dims == {"text": 64, "audio": 32, "visual": 16} and corpus.num_speakers == 2
    assert {s: len(v) for s, v in corpus.splits.items()} == {"train": 120, "dev": 20, "test": 40}
    for d in corpus.splits["dev"]:
        assert 6 <= len(d) <= 20 and d.speakers[0] == 0 and set(d.speakers.tolist()) <= {0, 1}
        assert all(f.shape == (len(d), corpus.modality_dims[m]) and f.dtype == torch.float32
                   for m, f in d.features.items())
    batch = collate(corpus.splits["test"][:4], corpus.modalities)
    assert batch.features["audio"].shape[0] == 4


def test_deterministic_per_seed_and_stable_across_options():
    a, b, c = _gen(seed=3), _gen(seed=3), _gen(seed=4)
    for da, db in zip(a.splits["test"], b.splits["test"]):
        assert torch.equal(da.labels, db.labels) and torch.equal(da.speakers, db.speakers)
        assert all(torch.equal(da.features[m], db.features[m]) for m in da.features)
    assert any(not torch.equal(x.features["text"][:1], y.features["text"][:1])
               for x, y in zip(a.splits["test"], c.splits["test"]))
    # fewer modalities or a bigger train split leave the test split's labels and text unchanged
    d = _gen(seed=3, modalities=["text"], num_dialogues={"train": 200, "dev": 20, "test": 40})
    for da, dd in zip(a.splits["test"], d.splits["test"]):
        assert torch.equal(da.labels, dd.labels) and torch.equal(da.features["text"], dd.features["text"])


def test_paper_layouts():
    iem = _gen(layout="iemocap", num_dialogues={"train": 3, "dev": 1, "test": 1}, utterances=[2, 3])
    assert iem.modality_dims == {"text": 1024, "audio": 1582, "visual": 342} and iem.num_classes == 6
    meld = _gen(layout="meld", num_dialogues={"train": 30, "dev": 1, "test": 1})
    assert meld.modality_dims == {"text": 1024, "audio": 300, "visual": 342} and meld.num_speakers == 9
    assert meld.label_names == ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    assert max(int(d.speakers.max()) for d in meld.splits["train"]) >= 2  # 2-4 speakers per dialogue
    _, y = _flat(meld, "train", "text")
    counts = torch.bincount(y, minlength=7)
    assert counts[0] == counts.max()  # neutral dominates, as in MELD


def test_two_hundred_dialogues_well_under_a_second():
    cfg = SyntheticConfig(num_dialogues={"train": 160, "dev": 20, "test": 20})
    best = float("inf")
    for _ in range(2):  # best of two: the machine is shared
        t0 = time.perf_counter()
        SyntheticDataset(cfg).load()
        best = min(best, time.perf_counter() - t0)
    assert best < 0.5, best


def _nearest_mean(corpus, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _flat(corpus, "train", modality)
    means = torch.stack([x[y == c].mean(0) for c in range(corpus.num_classes)])
    xt, yt = _flat(corpus, "test", modality)
    return torch.cdist(xt, means).argmin(1), yt


def test_text_confuses_the_designated_pairs_that_audio_separates():
    corpus = _gen(num_dialogues={"train": 200, "dev": 5, "test": 100})
    idx = {n: i for i, n in enumerate(corpus.label_names)}
    pairs = [(idx["happy"], idx["excited"]), (idx["angry"], idx["frustrated"])]

    def pair_confusion(pred, gold):  # share of pair members predicted as their partner
        hits = total = 0
        for a, b in pairs:
            for u, v in ((a, b), (b, a)):
                hits += int(((gold == u) & (pred == v)).sum())
                total += int((gold == u).sum())
        return hits / total

    text = pair_confusion(*_nearest_mean(corpus, "text"))
    audio = pair_confusion(*_nearest_mean(corpus, "audio"))
    assert text > 0.25 and audio < 0.08 and text > 4 * audio, (text, audio)

    # ... and text beats audio on the other classes, where audio is weak
    pred_t, gold = _nearest_mean(corpus, "text")
    pred_a, _ = _nearest_mean(corpus, "audio")
    rest = (gold == idx["sad"]) | (gold == idx["neutral"])
    assert (pred_t == gold)[rest].float().mean() > (pred_a == gold)[rest].float().mean() + 0.2


def test_ambiguous_text_and_persistent_emotions():
    clear = _gen(ambiguous_text=0.0, num_dialogues={"train": 150, "dev": 5, "test": 60})
    vague = _gen(ambiguous_text=0.6, num_dialogues={"train": 150, "dev": 5, "test": 60})
    acc = [(lambda p, g: (p == g).float().mean().item())(*_nearest_mean(c, "text")) for c in (clear, vague)]
    assert acc[0] > acc[1] + 0.15, acc

    def same_as_own_previous(corpus) -> float:
        same = total = 0
        for d in corpus.splits["train"]:
            last: dict[int, int] = {}
            for s, y in zip(d.speakers.tolist(), d.labels.tolist()):
                if s in last:
                    same, total = same + (last[s] == y), total + 1
                last[s] = y
        return same / total

    persistent, memoryless = same_as_own_previous(clear), same_as_own_previous(_gen(inertia=0.0, contagion=0.0))
    assert persistent > 0.6 and memoryless < 0.35, (persistent, memoryless)


def test_bad_options_are_config_problems(registry):
    for options, needle in [({"confused_pairs": [["happy", "joy"]]}, "confused_pairs"),
                            ({"layout": "meld", "num_classes": 6}, "num_classes"),
                            ({"modalities": ["text", "depth"]}, "depth"),
                            ({"num_dialogues": {"train": 5, "valid": 5}}, "num_dialogues"),
                            ({"num_dialogues": {"test": 0}}, "num_dialogues"),
                            ({"inertia": 1.5}, "inertia")]:
        node, problems = validate_node("dataset", {"type": "synthetic", **options}, registry)
        assert node is None and any(needle in p for p in problems), (options, problems)


@pytest.mark.parametrize("num_classes", [3, 8])
def test_num_classes_generic(num_classes):
    corpus = _gen(num_classes=num_classes, num_dialogues={"train": 40, "dev": 2, "test": 2})
    assert corpus.num_classes == num_classes
    assert int(torch.cat([d.labels for d in corpus.splits["train"]]).max()) < num_classes

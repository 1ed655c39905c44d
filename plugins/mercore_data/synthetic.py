"""The ``synthetic`` dataset: seeded conversations with structure that fusion and context models can exploit.

So every recipe runs on a fresh clone without a download. The generative story, per dialogue:

1. **Speakers.** ``k`` speakers (``speakers_per_dialogue``); speaker 0 opens, and each next utterance goes to
   another speaker with probability ``switch`` (else the same one continues). Indices are in order of first
   appearance, as the real readers produce them.
2. **Emotions persist** (a Markov chain per speaker): a speaker keeps their own previous emotion with
   probability ``inertia``; otherwise, with probability ``contagion``, they take the emotion of the previous
   utterance (whoever said it); otherwise they draw a fresh one from the class prior (``class_weights``, by
   default as imbalanced as the real corpus). So the context (own and others' past turns) predicts the label.
3. **Features** ``x_m = s_m * p_m[y] + eps``, ``eps ~ N(0, I)``, prototypes ``p_m[c]`` random unit vectors
   (so the difficulty does not depend on the dim); ``s_m`` = ``signal[m]``.

   * **text** is informative (default ``s=2.5``) but the two classes of each ``confused_pairs`` entry share
     one text prototype (IEMOCAP: happy/excited, angry/frustrated; MELD: anger/disgust, fear/surprise), so
     text alone cannot tell them apart;
   * **audio** (``pair_modality``) is weak on the whole (``s=0.5``) but separates exactly those pairs: the first
     class of each pair sits at ``+pair_signal/2``, the second at ``-pair_signal/2`` along one shared axis
     (think arousal), which splits every pair but not the pairs from each other;
   * **visual** is weak (``s=0.5``); any other modality named in ``dims`` gets ``s=0.5`` too;
   * a fraction ``ambiguous_text`` of utterances has its text signal dropped (pure noise): only other
     modalities or the context can classify them.

``layout`` fixes the defaults of the paper's corpora: ``generic`` (6 IEMOCAP classes, small dims text 64 /
audio 32 / visual 16, 2 speakers), ``iemocap`` (6 classes, text 1024 / audio 1582 / visual 342, 2 speakers),
``meld`` (7 classes, text 1024 / audio 300 / visual 342, a 9-row speaker table, 2-4 speakers per dialogue).

Deterministic given ``seed``: prototypes, each split and each modality's noise come from their own
``numpy`` generators seeded with ``(seed, purpose, split, modality)``, so e.g. loading fewer modalities or
more train dialogues does not change the test split's labels.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import attrs
import numpy as np
import torch

from mercore.config import option
from mercore.data.types import SPLITS, Corpus, Dialogue
from mercore_data.labels import IEMOCAP_COUNTS, IEMOCAP_LABELS, MELD_COUNTS, MELD_LABELS

_LAYOUTS: dict[str, dict[str, Any]] = {
    "generic": dict(dims={"text": 64, "audio": 32, "visual": 16}, labels=IEMOCAP_LABELS, counts=IEMOCAP_COUNTS,
                    pairs=[["happy", "excited"], ["angry", "frustrated"]], num_speakers=2, per_dialogue=[2, 2]),
    "iemocap": dict(dims={"text": 1024, "audio": 1582, "visual": 342}, labels=IEMOCAP_LABELS, counts=IEMOCAP_COUNTS,
                    pairs=[["happy", "excited"], ["angry", "frustrated"]], num_speakers=2, per_dialogue=[2, 2]),
    "meld": dict(dims={"text": 1024, "audio": 300, "visual": 342}, labels=MELD_LABELS, counts=MELD_COUNTS,
                 pairs=[["anger", "disgust"], ["fear", "surprise"]], num_speakers=9, per_dialogue=[2, 4]),
}
_DEFAULT_COUNTS = {"train": 120, "dev": 20, "test": 40}
_DEFAULT_SIGNAL = {"text": 2.5, "audio": 0.5, "visual": 0.5}
_OTHER_SIGNAL = 0.5


@attrs.define
class SyntheticConfig:
    """Options of ``synthetic``; ``None`` means the layout's default (see the module docstring)."""

    modalities: list[str] = option(factory=lambda: ["text", "audio", "visual"], help="modalities to generate")
    layout: Literal["generic", "iemocap", "meld"] = option(
        "generic", help="defaults of dims/classes/speakers: generic (small dims), iemocap, meld (the papers' dims)")
    seed: int = option(0, help="seed of everything generated")
    num_dialogues: dict[str, int] = option(
        factory=lambda: dict(_DEFAULT_COUNTS), help="dialogues per split; a split left out keeps its default")
    utterances: list[int] = option(factory=lambda: [6, 20], help="[min, max] utterances per dialogue")
    num_classes: int | None = option(None, help="classes (generic only; names from IEMOCAP, then class6...)")
    num_speakers: int | None = option(None, help="speaker-table size (default: 2; meld: 9)")
    speakers_per_dialogue: list[int] | None = option(None, help="[min, max] speakers in one dialogue (default 2; meld 2-4)")
    dims: dict[str, int] | None = option(None, help="modality -> feature dim, overriding the layout's")
    signal: dict[str, float] | None = option(
        None, help="modality -> class-signal strength (default text 2.5, audio 0.5, visual 0.5; noise std is 1)")
    pair_signal: float = option(3.0, help="distance between the two classes of a confused pair in pair_modality")
    pair_modality: str = option("audio", help="the modality that separates the confused pairs")
    confused_pairs: list[list[str]] | None = option(
        None, help="class pairs sharing one text prototype (default: happy/excited + angry/frustrated; "
                   "meld: anger/disgust + fear/surprise)")
    ambiguous_text: float = option(0.2, help="fraction of utterances whose text carries no class signal")
    inertia: float = option(0.6, help="probability a speaker keeps their own previous emotion")
    contagion: float = option(0.15, help="otherwise, probability of taking the previous utterance's emotion")
    switch: float = option(0.8, help="probability that the next utterance is by another speaker")
    class_weights: list[float] | None = option(None, help="class prior of fresh emotions (default: the corpus' imbalance)")

    def __attrs_post_init__(self) -> None:
        _resolve(self)  # raises ValueError (reported as a config problem) on inconsistent options


@attrs.frozen
class _Resolved:
    labels: list[str]
    prior: np.ndarray
    pairs: list[tuple[int, int]]
    dims: dict[str, int]
    signal: dict[str, float]
    num_speakers: int
    per_dialogue: tuple[int, int]
    counts: dict[str, int]


def _resolve(cfg: SyntheticConfig) -> _Resolved:
    """The layout's defaults merged with the explicit options, checked."""
    base = _LAYOUTS[cfg.layout]
    labels = list(base["labels"])
    counts = [float(c) for c in base["counts"]]
    if cfg.num_classes is not None:
        if cfg.layout != "generic" and cfg.num_classes != len(labels):
            raise ValueError(f"layout {cfg.layout!r} has {len(labels)} classes; num_classes={cfg.num_classes} "
                             "needs layout: generic")
        if cfg.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {cfg.num_classes}")
        extra = cfg.num_classes - len(labels)
        labels = labels[:cfg.num_classes] + [f"class{i}" for i in range(len(labels), cfg.num_classes)]
        counts = counts[:cfg.num_classes] + [float(np.mean(counts))] * max(0, extra)
    C = len(labels)
    weights = np.asarray(cfg.class_weights if cfg.class_weights is not None else counts, dtype=np.float64)
    if weights.shape != (C,) or (weights < 0).any() or weights.sum() <= 0 or not np.isfinite(weights).all():
        raise ValueError(f"class_weights must be {C} non-negative numbers with a positive sum, got {cfg.class_weights}")

    index = {n: i for i, n in enumerate(labels)}
    if cfg.confused_pairs is None:
        pairs = [(index[a], index[b]) for a, b in base["pairs"] if a in index and b in index]
    else:
        pairs = []
        for pair in cfg.confused_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(n not in index for n in pair):
                raise ValueError(f"confused_pairs entry {pair} must name two different classes of {labels}")
            pairs.append((index[pair[0]], index[pair[1]]))
    used = [c for p in pairs for c in p]
    if len(used) != len(set(used)):
        raise ValueError(f"a class appears in two confused_pairs: {cfg.confused_pairs}")

    dims = {**base["dims"], **(cfg.dims or {})}
    if any(d < 1 for d in dims.values()):
        raise ValueError(f"dims must be positive, got {dims}")
    missing = [m for m in cfg.modalities if m not in dims]
    if missing:
        raise ValueError(f"modalities {missing} have no dim; add them to dims (have: {sorted(dims)})")
    if not cfg.modalities:
        raise ValueError("modalities must name at least one modality")
    signal = {m: float((cfg.signal or {}).get(m, _DEFAULT_SIGNAL.get(m, _OTHER_SIGNAL))) for m in dims}
    if cfg.signal and set(cfg.signal) - set(dims):
        raise ValueError(f"signal names unknown modalities {sorted(set(cfg.signal) - set(dims))}")

    num_speakers = cfg.num_speakers if cfg.num_speakers is not None else base["num_speakers"]
    lo_s, hi_s = cfg.speakers_per_dialogue if cfg.speakers_per_dialogue is not None else base["per_dialogue"]
    hi_s, lo_s = min(hi_s, num_speakers), min(lo_s, num_speakers)
    if num_speakers < 1 or not 1 <= lo_s <= hi_s:
        raise ValueError(f"need 1 <= speakers_per_dialogue min <= max and num_speakers >= 1, got "
                         f"{cfg.speakers_per_dialogue} / {num_speakers}")

    if len(cfg.utterances) != 2 or not 1 <= cfg.utterances[0] <= cfg.utterances[1]:
        raise ValueError(f"utterances must be [min, max] with 1 <= min <= max, got {cfg.utterances}")
    counts = {**_DEFAULT_COUNTS, **cfg.num_dialogues}
    if set(counts) - set(SPLITS) or any(n < 1 for n in counts.values()):
        raise ValueError(f"num_dialogues takes counts >= 1 for train, dev, test; got {cfg.num_dialogues}")
    for name in ("ambiguous_text", "inertia", "contagion", "switch"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(cfg, name)}")
    if cfg.pair_modality not in dims:
        raise ValueError(f"pair_modality {cfg.pair_modality!r} is not a modality of {sorted(dims)}")
    return _Resolved(labels=labels, prior=weights / weights.sum(), pairs=pairs, dims=dims, signal=signal,
                     num_speakers=num_speakers, per_dialogue=(lo_s, hi_s), counts=counts)


def _tag(name: str) -> int:
    """A stable integer for a modality name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class SyntheticDataset:
    """Seeded synthetic conversations: persistent, speaker-dependent emotions; text confuses designated class
    pairs that audio separates; some utterances have uninformative text.

    Per dialogue: speakers take turns (``switch``); each speaker keeps their previous emotion with probability
    ``inertia``, else takes the previous utterance's with probability ``contagion``, else draws one from the
    (imbalanced) class prior. Features ``x_m = signal[m] * p_m[y] + N(0, I)`` with unit-norm class prototypes
    ``p_m``: text strong (2.5) but each ``confused_pairs`` pair shares one text prototype; audio weak (0.5) except
    along one axis that puts the pairs' members at ``+-pair_signal/2``; visual weak (0.5); a fraction
    ``ambiguous_text`` of utterances carries no text signal. ``layout`` sets the papers' dims and classes
    (iemocap, meld) or small ones (generic). Deterministic given ``seed``. Details: :mod:`mercore_data.synthetic`.
    """

    Config = SyntheticConfig

    def __init__(self, config: SyntheticConfig, **_: Any):
        self.config = config
        self.resolved = _resolve(config)

    def prototypes(self) -> dict[str, np.ndarray]:
        """modality -> ``(C, D_m)`` class means (already scaled by the signal strengths)."""
        cfg, r = self.config, self.resolved
        C = len(r.labels)
        out = {}
        for m, d in r.dims.items():
            rng = np.random.default_rng([cfg.seed, 0, _tag(m)])
            p = _unit_rows(rng, C, d) * r.signal[m]
            if m == "text":
                for a, b in r.pairs:
                    p[b] = p[a]  # the pair is indistinguishable from text
            if m == cfg.pair_modality:
                # One shared axis (think arousal): the first class of every pair at +pair_signal/2, the second
                # at -pair_signal/2. It splits each pair but not pairs from each other (happy and angry are
                # both "+"), so this modality stays weak on its own.
                q = _unit_rows(rng, 1, d)[0]
                for a, b in r.pairs:
                    p[a] += 0.5 * cfg.pair_signal * q
                    p[b] -= 0.5 * cfg.pair_signal * q
            out[m] = p.astype(np.float32)
        return out

    def load(self) -> Corpus:
        cfg, r = self.config, self.resolved
        protos = self.prototypes()
        splits = {s: self._split(s, k, protos) for k, s in enumerate(SPLITS)}
        return Corpus(
            name=f"synthetic_{cfg.layout}" if cfg.layout != "generic" else "synthetic",
            label_names=list(r.labels),
            modality_dims={m: r.dims[m] for m in cfg.modalities},
            num_speakers=r.num_speakers,
            splits=splits,
            source=f"synthetic(seed={cfg.seed}, layout={cfg.layout})",
        )

    def _split(self, split: str, k: int, protos: dict[str, np.ndarray]) -> list[Dialogue]:
        cfg, r = self.config, self.resolved
        rng = np.random.default_rng([cfg.seed, 1, k])
        n = r.counts[split]
        lengths = rng.integers(cfg.utterances[0], cfg.utterances[1] + 1, size=n)
        n_spk = rng.integers(r.per_dialogue[0], r.per_dialogue[1] + 1, size=n)
        speakers, labels = [], []
        for T, K in zip(lengths.tolist(), n_spk.tolist()):
            s, y = self._conversation(rng, T, K, r.prior)
            speakers.append(s)
            labels.append(y)
        all_labels = np.concatenate(labels)
        ambiguous = rng.random(all_labels.shape[0]) < cfg.ambiguous_text  # (N,)
        feats: dict[str, np.ndarray] = {}
        for m in cfg.modalities:
            noise_rng = np.random.default_rng([cfg.seed, 2, k, _tag(m)])
            x = noise_rng.standard_normal((all_labels.shape[0], r.dims[m]), dtype=np.float32)  # (N, D_m)
            signal = protos[m][all_labels]
            if m == "text":
                signal[ambiguous] = 0.0
            feats[m] = x + signal
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        out = []
        for i in range(n):
            a, b = int(bounds[i]), int(bounds[i + 1])
            out.append(Dialogue(
                id=f"{split}_{i}",
                features={m: torch.from_numpy(feats[m][a:b].copy()) for m in cfg.modalities},
                speakers=torch.from_numpy(speakers[i]),
                labels=torch.from_numpy(labels[i]),
            ))
        return out

    def _conversation(self, rng: np.random.Generator, T: int, K: int, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Speakers ``(T,)`` and labels ``(T,)`` of one dialogue (see the module docstring, steps 1-2)."""
        cfg = self.config
        u = rng.random((T, 3))  # switch?, inertia?, contagion?
        hop = rng.integers(1, max(K, 2), size=T)  # which other speaker takes the turn
        fresh = rng.choice(len(prior), size=T, p=prior)
        speakers = np.zeros(T, dtype=np.int64)
        labels = np.zeros(T, dtype=np.int64)
        last = [-1] * K
        current = 0
        order: dict[int, int] = {}
        for t in range(T):
            if t > 0 and K > 1 and u[t, 0] < cfg.switch:
                current = (current + int(hop[t])) % K
            if last[current] >= 0 and u[t, 1] < cfg.inertia:
                y = last[current]
            elif t > 0 and u[t, 2] < cfg.contagion:
                y = int(labels[t - 1])
            else:
                y = int(fresh[t])
            last[current] = y
            labels[t] = y
            speakers[t] = order.setdefault(current, len(order))  # order of first appearance
        return speakers, labels

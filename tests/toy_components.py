"""Tiny local components for engine tests, reached through the ``module:attr`` escape hatch."""

from __future__ import annotations

import attrs
import torch

from mercore.config import option
from mercore.data.types import Corpus, Dialogue
from mercore.model_api import ModelOutput


class ToyDataset:
    """Dialogues whose label is readable from the features through a fixed random projection."""

    @attrs.define
    class Config:
        num_dialogues: int = 24
        dim: int = 8
        num_classes: int = 3
        seed: int = 0
        modalities: list[str] = option(factory=lambda: ["text"])
        nan_in: str | None = None  # dialogue id whose features are NaN

    def __init__(self, config: Config, **_):
        self.config = config

    def load(self) -> Corpus:
        c = self.config
        g = torch.Generator().manual_seed(c.seed)
        protos = torch.randn(c.num_classes, c.dim, generator=g)
        splits = {}
        for split, n in (("train", c.num_dialogues), ("dev", max(2, c.num_dialogues // 4)), ("test", max(2, c.num_dialogues // 4))):
            ds = []
            for i in range(n):
                T = int(torch.randint(2, 7, (1,), generator=g))
                labels = torch.randint(0, c.num_classes, (T,), generator=g)
                feats = {m: protos[labels] + 0.8 * torch.randn(T, c.dim, generator=g) for m in c.modalities}
                did = f"{split}_{i}"
                if did == c.nan_in:
                    feats = {m: torch.full_like(f, float("nan")) for m, f in feats.items()}
                ds.append(Dialogue(id=did, features=feats, speakers=torch.arange(T) % 2, labels=labels))
            splits[split] = ds
        return Corpus(name="toy", label_names=[f"c{i}" for i in range(c.num_classes)],
                      modality_dims={m: c.dim for m in c.modalities}, num_speakers=2, splits=splits,
                      source=f"toy(seed={c.seed})")


class ToyModel(torch.nn.Module):
    """A per-utterance MLP with dropout (so RNG state matters for exact resume)."""

    @attrs.define
    class Config:
        hidden: int = 16
        dropout: float = 0.1
        modalities: list[str] = option(factory=lambda: ["text"])
        step_delay: float = 0.0  # seconds slept per training forward, so a test can kill a run mid-epoch

    def __init__(self, config: Config, *, modality_dims, num_classes, **_):
        super().__init__()
        self.config = config
        d = sum(modality_dims[m] for m in config.modalities)
        self.net = torch.nn.Sequential(torch.nn.Linear(d, config.hidden), torch.nn.GELU(),
                                       torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden, num_classes))

    def forward(self, batch, teacher=None) -> ModelOutput:
        if self.training and self.config.step_delay:
            import time

            time.sleep(self.config.step_delay)
        x = torch.cat([batch.features[m] for m in self.config.modalities], -1)
        logits = self.net(x)
        # A per-step statistic, as an MoE's gate statistics: the trainer logs its epoch mean in metrics.jsonl,
        # so resume tests also check that a mid-epoch resume logs the same mean.
        return ModelOutput(logits=logits, stats={"toy.mean_logit": float(logits.detach().mean())})


class ToyExtractor:
    """Deterministic text features without weights: per utterance, a random vector seeded by its text's hash.

    ``salt`` changes the identity (another extractor); ``sleep`` (seconds per conversation) lets a test kill an
    extraction midway.
    """

    @attrs.define
    class Config:
        dim: int = 4
        salt: str = ""
        sleep: float = 0.0

    modality = "text"

    def __init__(self, config: Config, **_):
        self.config = config
        self.dim = config.dim

    def identity(self) -> dict[str, str]:
        from mercore.extract import canonical_json

        return {"extractor": "toy_components:ToyExtractor",
                "options": canonical_json({"dim": self.config.dim, "salt": self.config.salt}), "weights_sha256": "none"}

    def extract(self, conversations):
        import hashlib
        import time

        out = []
        for conv in conversations:
            time.sleep(self.config.sleep)
            rows = []
            for speaker, text in zip(conv.speakers, conv.texts):
                seed = int(hashlib.sha256(f"{self.config.salt}|{speaker}|{text}".encode()).hexdigest()[:8], 16)
                rows.append(torch.randn(self.config.dim, generator=torch.Generator().manual_seed(seed)))
            out.append(torch.stack(rows))
        return out
